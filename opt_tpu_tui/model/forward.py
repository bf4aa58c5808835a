"""The OPT forward pass in numpy, with a KV cache preallocated to the context length.

The math lives in small functions named after what they compute (``layer_norm``,
``attention``, ``block``), as in picoGPT. One ``block`` serves prefill (n rows) and
decode (1 row): it writes into a ``Workspace`` of preallocated buffers, so a decode
step allocates no arrays, while prefill uses a workspace sized to its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model.checkpoint import LayerWeights, OPTWeights
from opt_tpu_tui.model.config import LAYER_NORM_EPS, POSITION_OFFSET, OPTConfig

Array = np.ndarray
# Row-wise dot product of two [n, h] arrays: numpy 2's vecdot ufunc; numpy 1.24, the newest on
# Python 3.8, has no vecdot, and einsum gives the same [n] with no [n, h] temporary either.
row_dot = getattr(np, "vecdot", None) or partial(np.einsum, "ij,ij->i")


def layer_norm(x: Array, w: Array, b: Array, out: Array) -> Array:
    """[n, h] -> [n, h], normalised over h; ``out`` may be ``x``."""
    mean = x.mean(-1, keepdims=True)  # [n, 1]
    np.subtract(x, mean, out=out)  # [n, h]
    var = row_dot(out, out)[:, None]  # [n, 1], sum of squares
    var *= 1.0 / x.shape[-1]
    var += LAYER_NORM_EPS
    np.sqrt(var, out=var)
    out /= var
    out *= w
    out += b
    return out


def softmax_(x: Array) -> Array:
    """Softmax over the last axis, in place."""
    x -= x.max(-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(-1, keepdims=True)
    return x


def causal_mask(n: int, start: int) -> Array | None:
    """[n, start + n] additive mask: query i (at position start + i) sees keys 0..start + i."""
    if n == 1:
        return None
    return np.triu(np.full((n, start + n), -np.inf, np.float32), k=start + 1)


def attention(q: Array, k: Array, v: Array, mask: Array | None, scores: Array, out: Array) -> Array:
    """q [H, n, d], k/v [H, t, d] -> out [H, n, d]; q is already scaled by d ** -0.5."""
    np.matmul(q, k.transpose(0, 2, 1), out=scores)  # [H, n, t]
    if mask is not None:
        scores += mask
    softmax_(scores)
    return np.matmul(scores, v, out=out)  # [H, n, d]


@dataclass
class PreparedLayer:
    """LayerWeights with q/k/v fused into one matrix and the 1/sqrt(d) scale folded into q."""

    qkv_w: Array  # [3h, h]
    qkv_b: Array  # [3h]
    o_w: Array
    o_b: Array
    ln1_w: Array
    ln1_b: Array
    fc1_w: Array
    fc1_b: Array
    fc2_w: Array
    fc2_b: Array
    ln2_w: Array
    ln2_b: Array

    @classmethod
    def from_weights(cls, w: LayerWeights, head_dim: int) -> PreparedLayer:
        scale = np.float32(head_dim**-0.5)
        return cls(
            qkv_w=np.ascontiguousarray(np.concatenate([w.q_w * scale, w.k_w, w.v_w])),
            qkv_b=np.concatenate([w.q_b * scale, w.k_b, w.v_b]),
            o_w=w.o_w, o_b=w.o_b, ln1_w=w.ln1_w, ln1_b=w.ln1_b,
            fc1_w=w.fc1_w, fc1_b=w.fc1_b, fc2_w=w.fc2_w, fc2_b=w.fc2_b, ln2_w=w.ln2_w, ln2_b=w.ln2_b,
        )  # fmt: skip


class Workspace:
    """Scratch buffers for ``rows`` tokens at once, attending over at most ``keys`` keys."""

    def __init__(self, config: OPTConfig, rows: int, keys: int) -> None:
        h, n_heads = config.hidden_size, config.num_attention_heads
        self.x = np.empty((rows, h), np.float32)  # the residual stream
        self.normed = np.empty((rows, h), np.float32)
        self.qkv = np.empty((rows, 3 * h), np.float32)
        self.scores = np.empty(n_heads * rows * keys, np.float32)  # viewed as [H, n, t] for each call
        self.attn = np.empty((rows, h), np.float32)
        self.proj = np.empty((rows, h), np.float32)
        self.ffn = np.empty((rows, config.ffn_dim), np.float32)
        self.embed = np.empty((rows, config.word_embed_proj_dim), np.float32)
        self.logits = np.empty((1, config.vocab_size), np.float32)


def block(x: Array, lw: PreparedLayer, k_cache: Array, v_cache: Array, start: int, pre_ln: bool, ws: Workspace) -> None:
    """One decoder layer over x [n, h] at positions start..start+n-1, in place; K/V go into the cache."""
    n, h = x.shape
    n_heads, _, d = k_cache.shape
    t = start + n
    # self-attention sublayer
    a = layer_norm(x, lw.ln1_w, lw.ln1_b, out=ws.normed[:n]) if pre_ln else x
    qkv = np.matmul(a, lw.qkv_w.T, out=ws.qkv[:n])  # [n, h] -> [n, 3h]
    qkv += lw.qkv_b
    heads = qkv.reshape(n, 3, n_heads, d).transpose(1, 2, 0, 3)  # [3, H, n, d]
    k_cache[:, start:t] = heads[1]
    v_cache[:, start:t] = heads[2]
    out = ws.attn[:n].reshape(n, n_heads, d).transpose(1, 0, 2)  # [H, n, d] view of [n, h]
    scores = ws.scores[: n_heads * n * t].reshape(n_heads, n, t)  # contiguous, so ufuncs need no buffering
    attention(heads[0], k_cache[:, :t], v_cache[:, :t], causal_mask(n, start), scores, out)
    o = np.matmul(ws.attn[:n], lw.o_w.T, out=ws.proj[:n])  # [n, h] -> [n, h]
    o += lw.o_b
    x += o
    if not pre_ln:
        layer_norm(x, lw.ln1_w, lw.ln1_b, out=x)
    # feed-forward sublayer
    a = layer_norm(x, lw.ln2_w, lw.ln2_b, out=ws.normed[:n]) if pre_ln else x
    f = np.matmul(a, lw.fc1_w.T, out=ws.ffn[:n])  # [n, h] -> [n, ffn]
    f += lw.fc1_b
    np.maximum(f, 0, out=f)
    o = np.matmul(f, lw.fc2_w.T, out=ws.proj[:n])  # [n, ffn] -> [n, h]
    o += lw.fc2_b
    x += o
    if not pre_ln:
        layer_norm(x, lw.ln2_w, lw.ln2_b, out=x)


class OPTModel:
    """OPT with its KV cache: ``prefill`` a prompt, then ``decode`` token by token.

    Logits are returned as a view into a preallocated buffer, valid until the next call.
    """

    def __init__(self, weights: OPTWeights, context: int | None = None) -> None:
        config = weights.config
        limit = config.max_position_embeddings
        context = limit if context is None else context
        if not 2 <= context <= limit:  # a prompt's one token and a reply's, at least
            raise UserError(f"--context {context} is out of range: this model allows 2 to {limit} tokens")
        self.config = config
        self.context = context
        self.layers = [PreparedLayer.from_weights(lw, config.head_dim) for lw in weights.layers]
        self.w = replace(weights, layers=[])  # the unfused q/k/v would double attention's memory
        shape = (config.num_hidden_layers, config.num_attention_heads, context, config.head_dim)
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)
        self.length = 0  # tokens in the cache
        self._step = Workspace(config, rows=1, keys=context)

    def prefill(self, ids: list[int] | Array, start: int = 0) -> Array:
        """Run ``ids`` in one pass at positions start.., keeping only the first ``start``
        cached positions (0: forget the cache); return the last position's logits."""
        if not 0 <= start <= self.length:
            raise ValueError(f"cannot keep {start} positions of a cache holding {self.length}")
        self.length = start
        return self._forward(np.asarray(ids, dtype=np.int64), Workspace(self.config, len(ids), start + len(ids)))

    def decode(self, token: int) -> Array:
        """Append one token at the next position and return its logits."""
        return self._forward(np.array([token], dtype=np.int64), self._step)

    def _forward(self, ids: Array, ws: Workspace) -> Array:
        n, start, c = len(ids), self.length, self.config
        if n == 0:
            raise ValueError("no tokens to run")
        if start + n > self.context:
            raise UserError(f"context overflow: {start + n} tokens do not fit in a context of {self.context}")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token id out of range 0..{c.vocab_size - 1}")
        x = ws.x[:n]
        if c.has_projections:
            np.take(self.w.embed_tokens, ids, axis=0, out=ws.embed[:n], mode="clip")  # [n, e]; ids are range-checked above
            np.matmul(ws.embed[:n], self.w.project_in.T, out=x)  # [n, e] -> [n, h]
        else:
            np.take(self.w.embed_tokens, ids, axis=0, out=x, mode="clip")  # [n, h]
        x += self.w.embed_positions[start + POSITION_OFFSET : start + n + POSITION_OFFSET]
        for i, lw in enumerate(self.layers):
            block(x, lw, self.k_cache[i], self.v_cache[i], start, c.do_layer_norm_before, ws)
        self.length = start + n
        last = x[n - 1 :]  # [1, h]: only the last position needs logits
        if self.w.final_ln_w is not None:
            last = layer_norm(last, self.w.final_ln_w, self.w.final_ln_b, out=ws.normed[:1])
        if self.w.project_out is not None:
            last = np.matmul(last, self.w.project_out.T, out=ws.embed[:1])  # [1, h] -> [1, e]
        np.matmul(last, self.w.lm_head.T, out=ws.logits)  # [1, e] -> [1, vocab]
        return ws.logits[0]
