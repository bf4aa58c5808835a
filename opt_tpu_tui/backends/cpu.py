"""The numpy backend: OPT on the host CPU, from a Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from opt_tpu_tui.backends.base import reusable_prefix
from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.forward import OPTModel


class CPUBackend:
    name = "cpu"

    def __init__(self, model_dir: Path, context: int | None = None) -> None:
        self.model_name = Path(model_dir).resolve().name
        self.model = OPTModel(load_weights(Path(model_dir)), context)
        self.context_length = self.model.context
        self.vocab_size = self.model.config.vocab_size
        self.ids: list[int] = []  # the tokens whose K/V the cache holds
        self.reused = 0

    @property
    def length(self) -> int:
        return self.model.length

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.reused = reusable_prefix(self.ids, ids)
        del self.ids[self.reused :]  # what a failed run leaves past here is not to be trusted
        logits = self.model.prefill(ids[self.reused :], start=self.reused)
        self.ids = list(ids)
        return logits

    def decode(self, token: int) -> np.ndarray:
        logits = self.model.decode(token)
        self.ids.append(token)
        return logits

    def close(self) -> None:
        pass
