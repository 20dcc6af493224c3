"""aimc-ssm: S4D state-space models on analog in-memory computing hardware, with PTQ and QAT.

Subpackages along the pipeline (README, "Architecture"): `core` (the model, data, training), `quant`
(quantization, metrics, search, pruning), `analog` (devices, crossbars, the fused kernel, deployment),
`study` (what the study scripts share); beside them `cache` (train once) and `io` (files).
"""
from .core.model import ModelConfig, S4DModel
from .core.s4d import S4D

__version__ = "0.1.0"
__all__ = ["ModelConfig", "S4DModel", "S4D", "__version__"]
