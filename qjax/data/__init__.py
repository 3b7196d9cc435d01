"""Datasets: local original-format files under QJAX_DATA_DIR, or Hugging Face hub names."""
