"""The TPU backend's logic, shared by the bmrt and sail drivers: a converted model on a BM1684X.

Per layer the KV cache is two device buffers [1, C, H, d] that stay on the device for the
whole conversation. Every block net reads the cache and gives the K/V of its new tokens
as outputs that are device views of their slots in the cache, so the runtime writes them
in place: no extra launch and no host copy per layer. Prefill runs the prompt in chunks
of T tokens through each layer's ``block_i``, after the start of the prompt that the cache
already holds (a chat's earlier turns); decode runs one token through ``block_cache_i_w``,
the net of the smallest window w (cache size) holding the positions in use, which reads
the first w slots of the cache only. The hidden state moves between two device buffers;
per chunk or token the host uploads the embedding rows and a mask, and downloads the
logits, or, for a greedy reply on a model converted with the greedy head, only the token
id that head picked on the device (``argmax_below``).

A driver supplies the few device primitives (``Driver``); everything else is here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, Tuple

import numpy as np

from opt_tpu_tui.converted import (
    BMODEL, CHIP, LM_HEAD, LM_HEAD_TOP1, HostEmbedding, Manifest, bmodel_chip, decode_net, prefill_net,
)  # fmt: skip
from opt_tpu_tui.backends.base import reusable_prefix
from opt_tpu_tui.convert.graphs import block_mask
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.sampling import argmax_token, not_a_number

Shape = Tuple[int, ...]  # evaluated at import: typing.Tuple, as tuple[...] needs Python 3.9
ACTIVATION_DTYPES = {"f16": "float16", "bf16": "bfloat16"}


class Driver(Protocol):
    """Device memory and net launches: what bmrt or sail provides. Buffers are the driver's own objects."""

    def io(self, net: str) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
        """(shape, dtype name) of each input and output of ``net``; UserError if the bmodel has no such net."""
        ...

    def net_names(self) -> list[str]:
        """Every net in the bmodel."""
        ...

    def stages(self, net: str) -> list[tuple[list[Shape], list[Shape]]] | None:
        """Input and output shapes of each stage of ``net``; None where the runtime does not tell them."""
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
    """The host form of a 16-bit (or float32) device array -> float32, into ``out``."""
    if dtype in ("float16", "float32"):
        out[...] = a
    else:
        out.view(np.uint32)[...] = a.astype(np.uint32) << 16
    return out


def host_dtype(dtype: str) -> np.dtype:
    """How the host holds a device dtype: bfloat16 as its uint16 bits."""
    return np.dtype({"float16": np.float16, "float32": np.float32, "int32": np.int32}.get(dtype, np.uint16))


def expected_io(manifest: Manifest) -> dict[str, tuple[list[Shape], list[Shape]]]:
    """The input and output shapes of every net a converted model's manifest implies, by net name."""
    cfg = manifest.config
    h = cfg.hidden_size

    def block(rows: int, cache: int) -> tuple[list[Shape], list[Shape]]:
        heads = (cfg.num_attention_heads, cfg.head_dim)
        kv, new = (1, cache, *heads), (1, rows, *heads)
        return [(1, rows, h), (1, 1, rows, cache + rows), kv, kv], [(1, rows, h), new, new]

    nets = {LM_HEAD: ([(1, 1, h)], [(1, 1, cfg.vocab_size)])}
    for i in range(cfg.num_hidden_layers):
        nets[prefill_net(i)] = block(manifest.chunk, manifest.context)
        for window in manifest.windows:
            nets[decode_net(i, window)] = block(1, window)
    return nets


def top1_io(manifest: Manifest) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    """The greedy head's inputs and outputs, (shape, dtype): hidden in; the token id (int32) and its logit out.

    The logit comes out in the activations' dtype, but as float32 under bfloat16 activations
    (tpu-mlir 1.30's lowering of ``top.Arg`` in BF16): either is taken (``TPUBackend._check_top1``).
    """
    dtype = ACTIVATION_DTYPES[manifest.activations]
    return [((1, 1, manifest.config.hidden_size), dtype)], [((1, 1, 1), "int32"), ((1, 1, 1), dtype)]


class TPUBackend:
    """A converted model directory run through ``driver``; implements ``backends.base.Backend``."""

    picks_argmax = True  # prefill and decode take ``argmax_below``: on the device where the bmodel has the greedy head

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
        self.ids: list[int] = []  # the tokens whose K/V the cache holds
        self.reused = 0
        self.embedding = HostEmbedding(model_dir, config, manifest.context)
        self.dtype = ACTIVATION_DTYPES[manifest.activations]
        self.driver = open_driver(bmodel)
        try:
            self._check_nets(bmodel)
            self._allocate()
        except BaseException:
            self.close()  # the buffers first: a sail tensor holds the device handle
            raise

    def _check_nets(self, bmodel: Path) -> None:
        """Every net the manifest implies is in the bmodel with its shapes and 16-bit activations."""
        for net, (ins, outs) in expected_io(self.manifest).items():
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
        self.top1 = LM_HEAD_TOP1 in self.driver.net_names()  # absent from conversions made before it
        if self.top1:
            self._check_top1(bmodel)

    def _check_top1(self, bmodel: Path) -> None:
        """The greedy head takes and gives what ``top1_io`` says (its logit maybe float32); sets ``top1_dtype``."""
        got = self.driver.io(LM_HEAD_TOP1)
        ins, outs = top1_io(self.manifest)
        logit = ((1, 1, 1), "float32") if got[1][1:] == [((1, 1, 1), "float32")] else outs[1]
        if got != (ins, [outs[0], logit]):
            raise UserError(
                f"{bmodel}: net {LM_HEAD_TOP1} takes and gives {got}, but manifest.json implies {(ins, outs)}; they "
                "come from different conversions"
            )
        self.top1_dtype = logit[1]

    def _allocate(self) -> None:
        cfg, c, t, d = self.config, self.manifest.context, self.manifest.chunk, self.driver
        h, kv = cfg.hidden_size, (1, c, cfg.num_attention_heads, cfg.head_dim)
        self.k = [d.alloc(kv, self.dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [d.alloc(kv, self.dtype) for _ in range(cfg.num_hidden_layers)]
        zeros = np.zeros(kv, host_dtype(self.dtype))
        for buffer in self.k + self.v:  # the nets read every slot, masked or not: no NaN bits may be left there
            d.upload(buffer, zeros)
        self.hidden = [d.alloc((1, t, h), self.dtype) for _ in range(2)]  # ping-pong between layers
        self.step = [d.view(b, 0, (1, 1, h)) for b in self.hidden]  # their first row, for decode
        self.token = d.alloc((1, 1, h), self.dtype)  # the new token's embedding, decode's first input
        self.chunk_mask = d.alloc((1, 1, t, c + t), self.dtype)
        self.decode_masks = {w: d.alloc((1, 1, 1, w + 1), self.dtype) for w in self.manifest.windows}
        self.windows = {  # each decode window's view of the caches: their first w slots
            w: ([d.view(k, 0, (1, w, *kv[2:])) for k in self.k], [d.view(v, 0, (1, w, *kv[2:])) for v in self.v])
            for w in self.manifest.windows
        }
        self.logits_device = d.alloc((1, 1, cfg.vocab_size), self.dtype, host=True)
        self.logits_host = np.zeros(cfg.vocab_size, host_dtype(self.dtype))  # no NaN bits before a download
        self.logits = np.empty(cfg.vocab_size, np.float32)
        if self.top1:
            value = self.top1_dtype
            self.top1_device = [d.alloc((1, 1, 1), "int32", host=True), d.alloc((1, 1, 1), value, host=True)]
            self.top1_host = [np.zeros(1, np.int32), np.zeros(1, host_dtype(value))]
            self.top1_logit = np.zeros(1, np.float32)
        self.slot = cfg.num_attention_heads * cfg.head_dim  # elements of one position in a K/V cache

    @property
    def length(self) -> int:
        return len(self.ids)

    def _check(self, ids: list[int], start: int) -> None:
        if start + len(ids) > self.context_length:
            raise UserError(f"context overflow: {start + len(ids)} tokens do not fit in a context of {self.context_length}")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")

    def prefill(self, ids: list[int], argmax_below: int | None = None) -> np.ndarray | int:
        """Run the prompt after the start the cache already holds, in chunks of T tokens.

        Returns the last position's logits, or with ``argmax_below`` the greedy token (``_head``).
        """
        n, c, t, h, d = len(ids), self.manifest.context, self.manifest.chunk, self.config.hidden_size, self.driver
        if n == 0:
            raise ValueError("no tokens to run")
        self._check(ids, 0)
        keep = reusable_prefix(self.ids, ids)
        del self.ids[keep:]  # what a failed run leaves past here is not to be trusted
        if n - keep == 1:  # one new token (a regenerated reply, a one-token prompt): a decode step is cheaper
            logits = self.decode(ids[-1], argmax_below)
        else:
            pos, x = keep, np.zeros((t, h), np.float32)
            while pos < n:
                # A chunk's K/V slots must lie inside the cache, so one near its end starts
                # earlier and runs some cached tokens again; rows past the prompt are padding.
                start = min(pos, c - t)
                rows = ids[start : start + t]
                x[: len(rows)] = self.embedding(rows, start)
                x[len(rows) :] = 0
                d.upload(self.hidden[0], to_device(x, self.dtype))
                d.upload(self.chunk_mask, to_device(block_mask(c, start, t), self.dtype))
                past = (self.k, self.v)
                out = self._layers(prefill_net, self.hidden[0], self.hidden[::-1], self.chunk_mask, past, start, t)
                pos = start + len(rows)
            self.ids = list(ids)
            logits = self._head(d.view(out, (n - 1 - start) * h, (1, 1, h)), argmax_below)
        self.reused = keep
        return logits

    def decode(self, token: int, argmax_below: int | None = None) -> np.ndarray | int:
        """Run one token at the next position, through the nets of the smallest window holding the cache in use.

        Returns its logits, or with ``argmax_below`` the greedy token (``_head``).
        """
        pos, d = self.length, self.driver
        self._check([token], pos)
        window = next(w for w in self.manifest.windows if w >= pos)
        mask = self.decode_masks[window]
        d.upload(self.token, to_device(self.embedding([token], pos), self.dtype))
        d.upload(mask, to_device(block_mask(window, pos, 1), self.dtype))
        out = self._layers(lambda i: decode_net(i, window), self.token, self.step, mask, self.windows[window], pos, 1)
        self.ids.append(token)
        return self._head(out, argmax_below)

    def _layers(
        self, net: Callable[[int], str], x: Any, outputs: list[Any], mask: Any, past: tuple[list[Any], list[Any]],
        start: int, rows: int,
    ) -> Any:  # fmt: skip
        """Run ``rows`` tokens at ``start`` through every layer, each writing its K/V into the cache slots itself.

        Layer i reads ``x`` or the previous layer's output, and the cache as ``past`` (the
        whole buffers, or a decode window's views of them); it writes ``outputs[i % 2]``.
        Returns the last layer's output.
        """
        d, cfg = self.driver, self.config
        new = (1, rows, cfg.num_attention_heads, cfg.head_dim)
        offset = start * self.slot
        for i in range(cfg.num_hidden_layers):
            out = outputs[i % 2]
            k_slots, v_slots = d.view(self.k[i], offset, new), d.view(self.v[i], offset, new)
            d.launch(net(i), [x, mask, past[0][i], past[1][i]], [out, k_slots, v_slots])
            x = out
        return x

    def _head(self, hidden: Any, argmax_below: int | None) -> np.ndarray | int:
        """The logits of ``hidden``; with ``argmax_below``, the first largest logit's id among ids below it.

        The greedy head picks it on the device, and only the id and its logit come back
        (6 or 8 bytes, where the logits are 100 kB for OPT's 50,272 rows, then widened to
        float32 on the host); a NaN logit is the sampler's error. Its argmax spans every
        row, so when it lands on a padding row past ``argmax_below`` (which no greedy
        sampler may pick) the logits come after all and the host picks; so it does for a
        model converted without the head.
        """
        if argmax_below is None or not self.top1:
            logits = self._logits(hidden)
            return logits if argmax_below is None else argmax_token(logits[:argmax_below])
        d, (token_device, logit_device), (token, logit) = self.driver, self.top1_device, self.top1_host
        d.launch(LM_HEAD_TOP1, [hidden], self.top1_device)
        d.download(token_device, token)
        d.download(logit_device, logit)
        if np.isnan(from_device(logit, self.top1_dtype, self.top1_logit)[0]):
            raise not_a_number()
        if token[0] < argmax_below:
            return int(token[0])
        return argmax_token(self._logits(hidden)[:argmax_below])

    def _logits(self, hidden: Any) -> np.ndarray:
        self.driver.launch(LM_HEAD, [hidden], [self.logits_device])
        self.driver.download(self.logits_device, self.logits_host)
        return from_device(self.logits_host, self.dtype, self.logits)

    def close(self) -> None:
        """Free the device memory (the KV cache first of all), then the nets and the device.

        Every buffer is dropped before the driver closes: under sail each tensor holds a
        reference to the device handle, so one left alive would keep the device open.
        """
        self.k, self.v, self.hidden, self.step = [], [], [], []
        self.windows, self.decode_masks = {}, {}
        self.token = self.chunk_mask = self.logits_device = None
        self.top1_device = []
        self.driver.close()
