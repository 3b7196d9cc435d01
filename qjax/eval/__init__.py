"""Evaluation: perplexity, tasks, generation, efficiency; results store."""
