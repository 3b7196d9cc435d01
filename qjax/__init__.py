"""qjax: quantization and perturbation studies of LLMs in JAX.

Layering (see WORKSPACE.md): checkpoints -> models <- ops <- quant/perturb; eval on top; experiments at the edge.
"""

__version__ = "0.1.0"
