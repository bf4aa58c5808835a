"""opt-tpu-tui: chat with Meta's OPT models on a Sophgo BM1684X TPU or the CPU."""

__version__ = "0.1.0"
