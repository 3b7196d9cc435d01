"""qjax: quantization and perturbation studies of LLMs in JAX.

Rooms, bottom to top: `formats` (quantized array types), `ops` (the kernel seam; `native` C++ CPU
kernels behind it), `parallel`, `models`, `checkpoints`, `quant`, `perturb`, `eval`, `analysis`;
`data` (datasets, corpora, task declarations) imports nothing of qjax. WORKSPACE.md's "Layout" table
says what each holds; tests/test_architecture.py checks the import arrows.
"""

__version__ = "0.1.0"
