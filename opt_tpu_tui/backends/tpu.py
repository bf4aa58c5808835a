"""The TPU backend's logic, shared by the bmrt and sail drivers: a converted model on a BM1684X.

Per layer the KV cache is two device buffers [1, C, H, d] that stay on the device for the
whole conversation. Prefill runs each layer's ``block_i`` over the padded prompt, and
its K/V outputs are written straight into that layer's cache. Decode runs
``block_cache_i`` with the cache as input, and its new K/V outputs are device views of
the cache slot of the new position, so the runtime writes them in place: no extra
launch and no host copy per layer. The hidden state moves between two device buffers;
per token the host uploads one embedding row and one mask, and downloads the logits.

A driver supplies the few device primitives (``Driver``); everything else is here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from opt_tpu_tui.converted import (
    BMODEL, CHIP, LM_HEAD, HostEmbedding, Manifest, bmodel_chip, decode_net, prefill_net,
)  # fmt: skip
from opt_tpu_tui.convert.graphs import decode_mask, prefill_mask
from opt_tpu_tui.errors import UserError

Shape = tuple[int, ...]
ACTIVATION_DTYPES = {"f16": "float16", "bf16": "bfloat16"}


class Driver(Protocol):
    """Device memory and net launches: what bmrt or sail provides. Buffers are the driver's own objects."""

    def io(self, net: str) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
        """(shape, dtype name) of each input and output of ``net``; UserError if the bmodel has no such net."""
        ...

    def alloc(self, shape: Shape, dtype: str, host: bool = False) -> Any:
        """Device memory for a whole tensor; ``host``: the host downloads it (sail keeps a host copy)."""
        ...

    def view(self, buffer: Any, offset: int, shape: Shape) -> Any:
        """A buffer sharing ``buffer``'s memory from element ``offset``."""
        ...

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        """Copy a host array of ``buffer``'s size into it (an allocated buffer, not a view)."""
        ...

    def download(self, buffer: Any, array: np.ndarray) -> None:
        """Copy a ``host=True`` buffer into a host array of its size."""
        ...

    def launch(self, net: str, inputs: list[Any], outputs: list[Any]) -> None:
        """Run ``net``; its outputs land in the memory of ``outputs``. Returns when done."""
        ...

    def close(self) -> None: ...


def to_device(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the host form of a 16-bit device dtype (bfloat16 as uint16 bits, rounded to nearest even)."""
    if dtype == "float16":
        return x.astype(np.float16)
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_device(a: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """The host form of a 16-bit device array -> float32, into ``out``."""
    if dtype == "float16":
        out[...] = a
    else:
        out.view(np.uint32)[...] = a.astype(np.uint32) << 16
    return out


def host_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float16 if dtype == "float16" else np.uint16)


class TPUBackend:
    """A converted model directory run through ``driver``; implements ``backends.base.Backend``."""

    def __init__(self, name: str, model_dir: Path, open_driver: Callable[[Path], Driver], context: int | None = None):
        model_dir = Path(model_dir)
        manifest = Manifest.load(model_dir)
        bmodel = model_dir / BMODEL
        if not bmodel.is_file():
            raise UserError(f"{bmodel}: not found (manifest.json is there, so the conversion is damaged)")
        chip = bmodel_chip(bmodel)
        if chip is not None and chip != CHIP:
            raise UserError(f"{bmodel}: compiled for {chip}, but this runtime runs {CHIP} bmodels; convert it again")
        if context is not None and not 2 <= context <= manifest.context:
            raise UserError(f"--context {context}: this bmodel was compiled for at most {manifest.context} tokens")
        config = manifest.config
        self.name, self.model_name = name, model_dir.resolve().name
        self.manifest, self.config = manifest, config
        self.context_length = context or manifest.context
        self.vocab_size = config.vocab_size
        self.length = 0
        self.embedding = HostEmbedding(model_dir, config, manifest.context)
        self.dtype = ACTIVATION_DTYPES[manifest.activations]
        self.driver = open_driver(bmodel)
        try:
            self._check_nets(bmodel)
            self._allocate()
        except BaseException:
            self.driver.close()
            raise

    def _expected_io(self) -> dict[str, tuple[list[Shape], list[Shape]]]:
        c, h, cfg = self.manifest.context, self.config.hidden_size, self.config
        kv, slot = (1, c, cfg.num_attention_heads, cfg.head_dim), (1, 1, cfg.num_attention_heads, cfg.head_dim)
        nets = {LM_HEAD: ([(1, 1, h)], [(1, 1, cfg.vocab_size)])}
        for i in range(cfg.num_hidden_layers):
            nets[prefill_net(i)] = ([(1, c, h), (1, 1, c, c)], [(1, c, h), kv, kv])
            nets[decode_net(i)] = ([(1, 1, h), (1, 1, 1, c + 1), kv, kv], [(1, 1, h), slot, slot])
        return nets

    def _check_nets(self, bmodel: Path) -> None:
        """Every net the manifest implies is in the bmodel with its shapes and 16-bit activations."""
        for net, (ins, outs) in self._expected_io().items():
            try:
                got_ins, got_outs = self.driver.io(net)
            except UserError:
                raise UserError(f"{bmodel}: has no net {net}, so it does not match manifest.json") from None
            got = ([s for s, _ in got_ins], [s for s, _ in got_outs])
            if got != (ins, outs):
                raise UserError(
                    f"{bmodel}: net {net} takes {got[0]} and gives {got[1]}, but manifest.json implies {ins} and "
                    f"{outs}; they come from different conversions"
                )
            dtypes = {t for _, t in got_ins + got_outs}
            if dtypes != {self.dtype}:
                raise UserError(f"{bmodel}: net {net} has {sorted(dtypes)} IO, but manifest.json says {self.dtype}")

    def _allocate(self) -> None:
        cfg, c, d = self.config, self.manifest.context, self.driver
        h, kv = cfg.hidden_size, (1, c, cfg.num_attention_heads, cfg.head_dim)
        self.k = [d.alloc(kv, self.dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [d.alloc(kv, self.dtype) for _ in range(cfg.num_hidden_layers)]
        self.hidden = [d.alloc((1, c, h), self.dtype) for _ in range(2)]  # ping-pong between layers
        self.step = [d.view(b, 0, (1, 1, h)) for b in self.hidden]  # their first row, for decode
        self.token = d.alloc((1, 1, h), self.dtype)  # the new token's embedding, decode's first input
        self.prefill_mask = d.alloc((1, 1, c, c), self.dtype)
        self.decode_mask = d.alloc((1, 1, 1, c + 1), self.dtype)
        self.logits_device = d.alloc((1, 1, cfg.vocab_size), self.dtype, host=True)
        self.logits_host = np.empty(cfg.vocab_size, host_dtype(self.dtype))
        self.logits = np.empty(cfg.vocab_size, np.float32)
        self.slot = cfg.num_attention_heads * cfg.head_dim  # elements of one position in a K/V cache
        self.slot_shape = (1, 1, cfg.num_attention_heads, cfg.head_dim)

    def _check(self, ids: list[int], start: int) -> None:
        if start + len(ids) > self.context_length:
            raise UserError(f"context overflow: {start + len(ids)} tokens do not fit in a context of {self.context_length}")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Forget the cache and run the prompt, padded to the compiled context, through every layer."""
        n, c, d = len(ids), self.manifest.context, self.driver
        if n == 0:
            raise ValueError("no tokens to run")
        self._check(ids, 0)
        x = np.zeros((c, self.config.hidden_size), np.float32)
        x[:n] = self.embedding(ids, 0)
        d.upload(self.hidden[0], to_device(x, self.dtype))
        d.upload(self.prefill_mask, to_device(prefill_mask(c, n), self.dtype))
        a, b = self.hidden
        for i in range(self.config.num_hidden_layers):
            d.launch(prefill_net(i), [a, self.prefill_mask], [b, self.k[i], self.v[i]])
            a, b = b, a
        self.length = n
        return self._logits(d.view(a, (n - 1) * self.config.hidden_size, (1, 1, self.config.hidden_size)))

    def decode(self, token: int) -> np.ndarray:
        """Run one token at the next position; each layer writes its K/V into the cache slot itself."""
        pos, d = self.length, self.driver
        self._check([token], pos)
        d.upload(self.token, to_device(self.embedding([token], pos), self.dtype))
        d.upload(self.decode_mask, to_device(decode_mask(self.manifest.context, pos), self.dtype))
        x, offset = self.token, pos * self.slot
        for i in range(self.config.num_hidden_layers):
            out = self.step[i % 2]
            k_slot = d.view(self.k[i], offset, self.slot_shape)
            v_slot = d.view(self.v[i], offset, self.slot_shape)
            d.launch(decode_net(i), [x, self.decode_mask, self.k[i], self.v[i]], [out, k_slot, v_slot])
            x = out
        self.length = pos + 1
        return self._logits(x)

    def _logits(self, hidden: Any) -> np.ndarray:
        self.driver.launch(LM_HEAD, [hidden], [self.logits_device])
        self.driver.download(self.logits_device, self.logits_host)
        return from_device(self.logits_host, self.dtype, self.logits)

    def close(self) -> None:
        """Free the device memory (the KV cache first of all) and the nets."""
        self.k, self.v, self.hidden, self.step = [], [], [], []
        self.token = self.prefill_mask = self.decode_mask = self.logits_device = None
        self.driver.close()
