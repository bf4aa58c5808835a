"""The backend for an OPT-TPU (original project) bmodel, through the bmrt or the sail driver.

Its nets give the greedy token id, not logits, so ``prefill`` and ``decode`` return that id
(``emits_tokens``). The KV cache is, per layer, K and V buffers [1, H, SEQ, d] in the
original's layout: tokens right-aligned, the newest in the last slot, shifted one slot per
decoded token by ``splitkv``. Nothing of it goes through the host:

- prefill runs the prompt *already right-aligned*: its n tokens in rows SEQ-n..SEQ-1 of the
  padded SEQ rows (the original's demo ran them at the top and moved every layer's K/V rows
  to the end through the host). Each ``block_i`` then writes its K and V straight into the
  layer's cache buffers, at the slots they keep; the padding rows and their slots are masked.
- decode runs ``block_cache_i`` into one shared [1, H, SEQ + 1, d] pair, and ``splitkv`` from
  there back into the layer's cache, with the oldest slot dropped.

Which slots hold the conversation's tokens is tracked on the host (``slots``); the mask makes
every other slot count for nothing. So a new turn can keep the K/V of the start it shares with
the cache even when the cache holds tokens past it (a reply tokenized differently, a
regenerated turn): those slots are masked from then on. Positions are the true 0-based ones
(the original's demo passed one too many).

A new turn runs either through the decode net token by token after the kept start, or the whole
prompt through prefill again, whichever the graphs' roofline makes faster (``NewTurn``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opt_tpu_tui import original_layout
from opt_tpu_tui.backends.base import reusable_prefix
from opt_tpu_tui.backends.tpu import Driver
from opt_tpu_tui.converted import CHIP, bmodel_chip
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.original_layout import EMBEDDING, LM_HEAD, MASKED, SPLITKV, Sizes, decode_net, prefill_net, strip_ones

# BM1684X figures for the roofline (../shared/notes/bm1684x.md): 16 TFLOPS float16 (the W8F16/W4F16
# blocks compute in float16 too), LPDDR4x at about 68 GB/s
FLOPS, BANDWIDTH = 16e12, 68e9
PAD_ID = 1  # OPT's <pad>, in the padding rows of a prefill (they are masked)


@dataclass(frozen=True)
class NewTurn:
    """The roofline of one decode step and of one prefill, to choose how a new turn runs.

    A decode step is memory bound: it reads every weight of the bmodel once (about the
    bmodel's size) and moves the float32 KV cache four times over (``block_cache_i`` reads it
    and writes it again with one slot more, ``splitkv`` reads that and writes it back). A
    prefill always runs SEQ rows: 2 FLOPs per weight of the blocks (12 h^2 per layer, OPT's
    ffn being 4 h) per row, unless reading the weights takes longer. For OPT-6.7B (a 0.54 GB
    cache) that is 0.41 s a prefill against about 0.25 s (f16), 0.15 s (int8) or 0.10 s
    (int4) a decoded token: a turn of 2 (f16), 3 (int8) or 4 (int4) new tokens or more runs
    faster as a new prefill, and a chat turn (a message and its framing) is longer than that.
    """

    decode_seconds: float
    prefill_seconds: float

    @classmethod
    def roofline(cls, sizes: Sizes, bmodel_bytes: int) -> NewTurn:
        cache_bytes = 2 * sizes.layers * sizes.heads * sizes.seq * sizes.head_dim * 4  # K and V, float32
        weights = bmodel_bytes / BANDWIDTH
        block_weights = sizes.layers * 12 * sizes.hidden**2
        return cls(weights + 4 * cache_bytes / BANDWIDTH, max(2 * block_weights * sizes.seq / FLOPS, weights))

    def decode_is_faster(self, new_tokens: int) -> bool:
        return new_tokens * self.decode_seconds < self.prefill_seconds


class OriginalBackend:
    """An original-layout model directory run through ``driver``; implements ``backends.base.Backend``."""

    emits_tokens = True  # prefill and decode return the greedy token id: the model decodes greedily only

    def __init__(self, name: str, model_dir: Path, open_driver: Callable[[Path], Driver], context: int | None = None):
        model_dir = Path(model_dir)
        bmodel = original_layout.find_bmodel(model_dir)
        chip = bmodel_chip(bmodel)
        if chip is not None and chip != CHIP:
            raise UserError(f"{bmodel}: compiled for {chip}, but this runtime runs {CHIP} bmodels")
        config = original_layout.read_config(model_dir)
        self.name, self.model_name = name, model_dir.resolve().name
        self.reused = 0
        self.ids: list[int] = []  # the tokens whose K/V the cache holds, in order
        self.driver = open_driver(bmodel)
        try:
            self.sizes = self._check_nets(bmodel, config, model_dir / original_layout.CONFIG)
            if context is not None and not 2 <= context <= self.sizes.seq:
                raise UserError(f"--context {context}: this bmodel holds at most {self.sizes.seq} tokens")
            self.context_length = context or self.sizes.seq
            self.vocab_size = config.vocab_size if config else original_layout.vocab_entries(model_dir)
            self.new_turn = NewTurn.roofline(self.sizes, bmodel.stat().st_size)
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _check_nets(self, bmodel: Path, config: Any, config_path: Path) -> Sizes:
        """The sizes the nets imply; a UserError for a missing net or one shape that disagrees."""
        d = self.driver
        names = set(d.net_names())
        for net in (EMBEDDING, SPLITKV, LM_HEAD):
            if net not in names:
                raise UserError(f"{bmodel}: has no net {net}, which the OPT-TPU layout needs")
        sizes = Sizes.from_nets(names, d.io, bmodel)
        if config is not None:
            sizes.check_config(config, config_path, bmodel)
        for net, (ins, outs) in sizes.expected().items():
            if net not in names:
                raise UserError(f"{bmodel}: has no net {net}, which a {sizes.layers}-layer OPT-TPU bmodel needs")
            got_ins, got_outs = d.io(net)
            got = ([strip_ones(s) for s, _ in got_ins], [strip_ones(s) for s, _ in got_outs])
            if got != (ins, outs):
                raise UserError(
                    f"{bmodel}: net {net} takes {got[0]} and gives {got[1]} (leading 1s left out), but block_0 "
                    f"implies {ins} and {outs}"
                )
            floats = {t for _, t in got_ins + got_outs} - ({"int32"} if net == LM_HEAD else set())
            if floats != {"float32"}:
                raise UserError(f"{bmodel}: net {net} has {sorted(floats)} I/O; OPT-TPU's bmodels have float32")
        ins, outs = d.io(EMBEDDING)
        if [t for _, t in ins] != ["int32", "int32"] or [t for _, t in outs] != ["float32"]:
            raise UserError(f"{bmodel}: net embedding is not OPT-TPU's (int32 ids and positions -> float32 hidden)")
        stages = d.stages(EMBEDDING)
        tokens = {strip_ones(stage_ins[0]) for stage_ins, _ in stages or []}
        if stages is not None and not {(sizes.seq,), ()} <= tokens:
            shown = sorted(math.prod(t) for t in tokens)
            raise UserError(f"{bmodel}: net embedding has stages for {shown} tokens, not for 1 and {sizes.seq}")
        return sizes

    def _allocate(self) -> None:
        s, h, d = self.sizes.seq, self.sizes.hidden, self.driver
        kv = (1, self.sizes.heads, s, self.sizes.head_dim)
        kv1 = (1, self.sizes.heads, s + 1, self.sizes.head_dim)
        self.k = [d.alloc(kv, "float32") for _ in range(self.sizes.layers)]
        self.v = [d.alloc(kv, "float32") for _ in range(self.sizes.layers)]
        zeros = np.zeros(kv, np.float32)
        for buffer in self.k + self.v:  # masked slots still enter the sums, times zero: no NaN bits may be there
            d.upload(buffer, zeros)
        self.k_next, self.v_next = d.alloc(kv1, "float32"), d.alloc(kv1, "float32")
        self.hidden = [d.alloc((s, h), "float32") for _ in range(2)]  # ping-pong between layers
        self.step = [d.view(b, 0, (1, h)) for b in self.hidden]  # their first row, for decode
        self.last = [d.view(b, (s - 1) * h, (1, h)) for b in self.hidden]  # their last row: the prompt's last token
        self.prompt_ids, self.prompt_positions = d.alloc((s,), "int32"), d.alloc((s,), "int32")
        self.token_id, self.token_position = d.alloc((1,), "int32"), d.alloc((1,), "int32")
        self.prefill_mask = d.alloc((1, 1, s, s), "float32")
        self.decode_mask = d.alloc((1, 1, 1, s + 1), "float32")
        self.token_device = d.alloc((1, 1), "int32", host=True)
        self.token_host = np.zeros((1, 1), np.int32)
        self.slots = np.zeros(s, bool)  # which cache slots hold the tokens of ``ids``

    @property
    def length(self) -> int:
        """Cache slots in use: from the oldest token held to the newest, masked ones between them included.

        That is ``len(ids)`` but after a turn that kept the cache and masked some of it; the
        slots, not the tokens, are what runs out at SEQ.
        """
        used = np.flatnonzero(self.slots)
        return self.sizes.seq - int(used[0]) if used.size else 0

    def _check(self, ids: list[int], count: int) -> None:
        if count > self.context_length:
            raise UserError(f"context overflow: {count} tokens do not fit in a context of {self.context_length}")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")

    def prefill(self, ids: list[int]) -> int:
        """The greedy next token after ``ids``: decoding after the start the cache holds, or a new prefill."""
        n = len(ids)
        if n == 0:
            raise ValueError("no tokens to run")
        self._check(ids, n)
        keep = reusable_prefix(self.ids, ids)
        self._forget_after(keep)
        fits = self.length + n - keep <= self.sizes.seq  # no kept token would be shifted out of the cache
        if keep and fits and self.new_turn.decode_is_faster(n - keep):
            for token in ids[keep:]:
                found = self.decode(token)
            self.reused = keep
            return found
        self.reused = 0
        return self._prefill(ids)

    def _forget_after(self, keep: int) -> None:
        """Mask the slots of the cached tokens past the first ``keep``: their K/V stay, unused from now on."""
        held = np.flatnonzero(self.slots)
        self.slots[held[keep:]] = False
        del self.ids[keep:]

    def _prefill(self, ids: list[int]) -> int:
        n, s, d = len(ids), self.sizes.seq, self.driver
        pad = s - n
        d.upload(self.prompt_ids, np.array([PAD_ID] * pad + list(ids), np.int32))
        d.upload(self.prompt_positions, np.concatenate([np.zeros(pad, np.int32), np.arange(n, dtype=np.int32)]))
        row, col = np.arange(s)[:, None], np.arange(s)[None, :]
        mask = np.where((col >= pad) & (col <= row), 0.0, MASKED).astype(np.float32)
        d.upload(self.prefill_mask, mask.reshape(1, 1, s, s))
        del self.ids[:]  # a failed run leaves the cache untrusted
        self.slots[:] = False
        d.launch(EMBEDDING, [self.prompt_ids, self.prompt_positions], [self.hidden[0]])
        for i in range(self.sizes.layers):
            out = self.hidden[(i + 1) % 2]
            d.launch(prefill_net(i), [self.hidden[i % 2], self.prefill_mask], [out, self.k[i], self.v[i]])
        self.ids = list(ids)
        self.slots[pad:] = True
        return self._token(self.last[self.sizes.layers % 2])

    def decode(self, token: int) -> int:
        """The greedy token after ``token``, run at the next position; the cache shifts one slot."""
        pos, d = len(self.ids), self.driver
        self._check([token], self.length + 1)
        d.upload(self.token_id, np.array([token], np.int32))
        d.upload(self.token_position, np.array([pos], np.int32))
        attend = np.append(self.slots, True)  # the cache's tokens and the new one, in slot SEQ
        d.upload(self.decode_mask, np.where(attend, 0.0, MASKED).astype(np.float32).reshape(1, 1, 1, -1))
        d.launch(EMBEDDING, [self.token_id, self.token_position], [self.step[0]])
        for i in range(self.sizes.layers):
            x, out = self.step[i % 2], self.step[(i + 1) % 2]
            d.launch(decode_net(i), [x, self.decode_mask, self.k[i], self.v[i]], [out, self.k_next, self.v_next])
            d.launch(SPLITKV, [self.k_next, self.v_next], [self.k[i], self.v[i]])
        self.slots = attend[1:].copy()
        self.ids.append(token)
        return self._token(self.step[self.sizes.layers % 2])

    def _token(self, hidden: Any) -> int:
        self.driver.launch(LM_HEAD, [hidden], [self.token_device])
        self.driver.download(self.token_device, self.token_host)
        return int(self.token_host.reshape(-1)[0])

    def close(self) -> None:
        """Drop every buffer before the driver (a sail tensor holds the device handle), then close it."""
        self.k, self.v, self.hidden, self.step, self.last = [], [], [], [], []
        self.k_next = self.v_next = self.prompt_ids = self.prompt_positions = None
        self.token_id = self.token_position = self.prefill_mask = self.decode_mask = self.token_device = None
        self.driver.close()


def graph_io(model_dir: Path) -> int:
    """About how many inputs and outputs the bmodel's graphs have in all (sail's EngineLLM opens a handle for each).

    Needed before the bmodel is loaded, so from config.json's layer count (or 64 layers without one).
    """
    config = original_layout.read_config(model_dir)
    layers = config.num_hidden_layers if config else 64
    return layers * ((2 + 3) + (4 + 3)) + (2 + 1) + (2 + 2) + (1 + 1)
