"""The numpy backend: OPT on the host CPU, from a Hugging Face checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opt_tpu_tui.backends.base import reusable_prefix
from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.forward import OPTModel


@dataclass(frozen=True)
class CacheSnapshot:
    """A copy of the first ``len(ids)`` positions of the K/V cache, and the tokens they hold."""

    ids: tuple[int, ...]
    k: np.ndarray  # [layers, heads, len(ids), head_dim]
    v: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


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

    def save_cache(self) -> CacheSnapshot:
        """A copy of what the cache holds, for ``restore_cache``: the server keeps one per conversation
        (serve/slots.py), a copy costing far less than running the tokens again."""
        n, model = self.model.length, self.model
        return CacheSnapshot(tuple(self.ids[:n]), model.k_cache[:, :, :n].copy(), model.v_cache[:, :, :n].copy())

    def restore_cache(self, snapshot: CacheSnapshot) -> None:
        """Put ``snapshot`` back into the cache; the next ``prefill`` reuses the start it shares."""
        n, model = len(snapshot.ids), self.model
        model.k_cache[:, :, :n] = snapshot.k
        model.v_cache[:, :, :n] = snapshot.v
        model.length = n
        self.ids = list(snapshot.ids)

    def close(self) -> None:
        pass
