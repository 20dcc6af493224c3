"""aimc-ssm: S4D state-space models on analog in-memory computing hardware, with PTQ and QAT."""
from .model import ModelConfig, S4DModel
from .s4d import S4D

__version__ = "0.1.0"
__all__ = ["ModelConfig", "S4DModel", "S4D", "__version__"]
