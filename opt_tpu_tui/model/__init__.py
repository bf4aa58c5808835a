"""OPT model: configuration, checkpoint loading and the numpy forward pass."""

from opt_tpu_tui.model.checkpoint import load_weights
from opt_tpu_tui.model.config import OPTConfig

__all__ = ["OPTConfig", "load_weights"]
