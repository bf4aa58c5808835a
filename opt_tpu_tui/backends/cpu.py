"""The numpy backend: OPT on the host CPU, from a Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.forward import OPTModel


class CPUBackend:
    name = "cpu"

    def __init__(self, model_dir: Path, context: int | None = None) -> None:
        self.model_name = Path(model_dir).resolve().name
        self.model = OPTModel(load_weights(Path(model_dir)), context)
        self.context_length = self.model.context
        self.vocab_size = self.model.config.vocab_size

    @property
    def length(self) -> int:
        return self.model.length

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self.model.prefill(ids)

    def decode(self, token: int) -> np.ndarray:
        return self.model.decode(token)

    def close(self) -> None:
        pass
