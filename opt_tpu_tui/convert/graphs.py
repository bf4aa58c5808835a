"""OPT's graphs for the TPU, written as Top-dialect MLIR with numpy weights.

One graph shape serves prefill and decode: ``block`` runs one decoder layer for T new
tokens that attend over the K/V cache of the static context C and over themselves. The
hidden states [1, T, h], an additive mask [1, 1, T, C + T] (open for the cached positions
in use, causal among the new ones), the cached K and V [1, C, H, d] go in; the new hidden
states and the new tokens' K and V [1, T, H, d] come out, for the runtime to write into
their slots of the cache. Decode is T = 1, compiled for a few cache sizes C (see
``converted.decode_windows``); prefill runs the prompt in chunks of T, so a
short prompt costs one chunk instead of a pass over the whole context, and a chat's next
turn runs only its new tokens. The math is that of ``opt_tpu_tui.model.forward.block``,
from the same ``PreparedLayer`` (q/k/v with the 1/sqrt(d) scale folded into q), so the
numpy model is the reference. ``lm_head`` turns one position's hidden state into logits
(or, as the greedy head, into the id of the largest).

The token and position embeddings stay on the host (see ``backends.tpu``): a lookup of
one row there costs microseconds and one small copy, where a graph would cost a launch
and the table's room in device memory (412 MB in float16 for OPT-6.7B).
"""

from __future__ import annotations

import numpy as np

from opt_tpu_tui.convert.mlir import Graph
from opt_tpu_tui.model.config import LAYER_NORM_EPS, OPTConfig
from opt_tpu_tui.model.checkpoint import OPTWeights
from opt_tpu_tui.model.forward import PreparedLayer

MASKED = -1e4  # not -inf: it must survive float16, and exp(-1e4) is 0 all the same


def block(
    name: str, lw: PreparedLayer, config: OPTConfig, context: int, rows: int, fused_qkv: bool = False,
    head_major: bool = False, split_attention: bool = False,
) -> tuple[Graph, list[str]]:
    """One layer for ``rows`` new tokens over the cache; outputs hidden [1, T, h], new K and V [1, T, H, d].

    ``fused_qkv``: q, k and v as one MatMul of 3h columns, sliced after, instead of three.
    ``head_major``: the cache given as [1, H, C, d] (for ``bench/tpu_sweep.py``: the runtime
    writes a new token's K/V into the cache in place, which needs [1, C, H, d]).
    ``split_attention``: scores over the cache and over the new tokens as two MatMuls, so the
    cache is not concatenated with the new K/V (also for the sweep).
    """
    c, h, n_heads, d, f = context, config.hidden_size, config.num_attention_heads, config.head_dim, config.ffn_dim
    n, t = rows, context + rows  # query rows, keys attended over (the cache, then the new tokens)
    g = Graph(name)
    x = g.input("hidden", (1, n, h))
    mask = g.input("mask", (1, 1, n, t))
    cache_shape = (1, n_heads, c, d) if head_major else (1, c, n_heads, d)
    past_k, past_v = g.input("past_k", cache_shape), g.input("past_v", cache_shape)

    def layer_norm(v: str, w: np.ndarray, b: np.ndarray, tag: str) -> str:
        operands = [v, g.weight(f"{tag}.weight", w), g.weight(f"{tag}.bias", b)]
        return g.op("LayerNorm", tag, operands, (1, n, h), normalized_shape=[h], axis=(2, "si32"), eps=LAYER_NORM_EPS)

    def linear(v: str, w: np.ndarray, b: np.ndarray, tag: str) -> str:  # w is [out, in] as in torch
        operands = [v, g.weight(f"{tag}.weight", w.T), g.weight(f"{tag}.bias", b.reshape(1, 1, -1))]
        return g.op("MatMul", tag, operands, (1, n, w.shape[0]), do_relu=False)  # ReLU stays a separate op

    def heads(v: str, tag: str) -> str:
        return g.op("Reshape", tag, [v], (1, n, n_heads, d), shape=[1, n, n_heads, d])

    pre_ln = config.do_layer_norm_before
    a = layer_norm(x, lw.ln1_w, lw.ln1_b, "ln1") if pre_ln else x
    if fused_qkv:
        qkv = linear(a, lw.qkv_w, lw.qkv_b, "qkv_proj")  # [1, n, 3h]

        def part(i: int, tag: str) -> str:
            cut = g.op("Slice", f"{tag}_part", [qkv, None, None, None], (1, n, h),
                       offset=[0, 0, i * h], steps=[1, 1, 1], ends=[1, n, (i + 1) * h])  # fmt: skip
            return heads(cut, tag)

        q, k, v = part(0, "q"), part(1, "k"), part(2, "v")  # q: [1, n, H, d]
    else:
        q = heads(linear(a, lw.qkv_w[:h], lw.qkv_b[:h], "q_proj"), "q")  # [1, n, H, d]
        k = heads(linear(a, lw.qkv_w[h : 2 * h], lw.qkv_b[h : 2 * h], "k_proj"), "k")
        v = heads(linear(a, lw.qkv_w[2 * h :], lw.qkv_b[2 * h :], "v_proj"), "v")
    q_t = g.op("Permute", "q_t", [q], (1, n_heads, n, d), order=[0, 2, 1, 3])
    if split_attention:
        k_past = g.op("Permute", "k_past", [past_k], (1, n_heads, d, c), order=[0, 2, 3, 1])
        v_past = g.op("Permute", "v_past", [past_v], (1, n_heads, c, d), order=[0, 2, 1, 3])
        k_new = g.op("Permute", "k_new", [k], (1, n_heads, d, n), order=[0, 2, 3, 1])
        v_new = g.op("Permute", "v_new", [v], (1, n_heads, n, d), order=[0, 2, 1, 3])
        s_past = g.op("MatMul", "scores_past", [q_t, k_past, None], (1, n_heads, n, c), do_relu=False)
        s_new = g.op("MatMul", "scores_new", [q_t, k_new, None], (1, n_heads, n, n), do_relu=False)
        scores = g.op("Concat", "scores", [s_past, s_new], (1, n_heads, n, t), axis=(3, "si32"))
        scores = g.op("Add", "masked", [scores, mask], (1, n_heads, n, t))
        probs = g.op("Softmax", "probs", [scores], (1, n_heads, n, t), axis=(3, "si32"))
        p_past = g.op("Slice", "probs_past", [probs, None, None, None], (1, n_heads, n, c),
                      offset=[0, 0, 0, 0], steps=[1, 1, 1, 1], ends=[1, n_heads, n, c])  # fmt: skip
        p_new = g.op("Slice", "probs_new", [probs, None, None, None], (1, n_heads, n, n),
                     offset=[0, 0, 0, c], steps=[1, 1, 1, 1], ends=[1, n_heads, n, t])  # fmt: skip
        a_past = g.op("MatMul", "attn_past", [p_past, v_past, None], (1, n_heads, n, d), do_relu=False)
        a_new = g.op("MatMul", "attn_new", [p_new, v_new, None], (1, n_heads, n, d), do_relu=False)
        attn = g.op("Add", "attn", [a_past, a_new], (1, n_heads, n, d))
    else:
        if head_major:
            k_new = g.op("Permute", "k_new", [k], (1, n_heads, n, d), order=[0, 2, 1, 3])
            v_new = g.op("Permute", "v_new", [v], (1, n_heads, n, d), order=[0, 2, 1, 3])
            k_all = g.op("Concat", "k_all", [past_k, k_new], (1, n_heads, t, d), axis=(2, "si32"))
            v_t = g.op("Concat", "v_all", [past_v, v_new], (1, n_heads, t, d), axis=(2, "si32"))
            k_t = g.op("Permute", "k_t", [k_all], (1, n_heads, d, t), order=[0, 1, 3, 2])
        else:
            k_all = g.op("Concat", "k_all", [past_k, k], (1, t, n_heads, d), axis=(1, "si32"))  # the new ones last
            v_all = g.op("Concat", "v_all", [past_v, v], (1, t, n_heads, d), axis=(1, "si32"))
            k_t = g.op("Permute", "k_t", [k_all], (1, n_heads, d, t), order=[0, 2, 3, 1])
            v_t = g.op("Permute", "v_t", [v_all], (1, n_heads, t, d), order=[0, 2, 1, 3])
        scores = g.op("MatMul", "scores", [q_t, k_t, None], (1, n_heads, n, t), do_relu=False)
        scores = g.op("Add", "masked", [scores, mask], (1, n_heads, n, t))
        probs = g.op("Softmax", "probs", [scores], (1, n_heads, n, t), axis=(3, "si32"))
        attn = g.op("MatMul", "attn", [probs, v_t, None], (1, n_heads, n, d), do_relu=False)
    attn = g.op("Permute", "attn_t", [attn], (1, n, n_heads, d), order=[0, 2, 1, 3])
    attn = g.op("Reshape", "attn_flat", [attn], (1, n, h), shape=[1, n, h])
    x = g.op("Add", "residual1", [x, linear(attn, lw.o_w, lw.o_b, "out_proj")], (1, n, h))
    if not pre_ln:
        x = layer_norm(x, lw.ln1_w, lw.ln1_b, "ln1")
    a = layer_norm(x, lw.ln2_w, lw.ln2_b, "ln2") if pre_ln else x
    ffn = g.op("Relu", "relu", [linear(a, lw.fc1_w, lw.fc1_b, "fc1")], (1, n, f))
    x = g.op("Add", "residual2", [x, linear(ffn, lw.fc2_w, lw.fc2_b, "fc2")], (1, n, h))
    if not pre_ln:
        x = layer_norm(x, lw.ln2_w, lw.ln2_b, "ln2")
    return g, [x, k, v]


def lm_head(name: str, w: OPTWeights, top1: bool = False) -> tuple[Graph, list[str]]:
    """hidden [1, 1, h] -> logits [1, 1, vocab]: final LayerNorm, project_out, then the head.

    ``top1``: the greedy head instead, ending in an argmax over the logits, as the original
    OPT-TPU's lm_head does: the token id [1, 1, 1] (int32 once compiled) and its logit [1, 1, 1]
    come out, 6 bytes for the host to fetch instead of the whole vocabulary. ``top.Arg``,
    not ``top.TopK``: tpu-mlir 1.30 lowers TopK into a second, CPU subnet, Arg runs on the
    TPU; ``select_last_index = false`` takes the first of equal logits, as numpy's argmax.
    The weights are the logits head's, so the bmodel stores them once (``combine``).
    """
    config = w.config
    h, e, vocab = config.hidden_size, config.word_embed_proj_dim, config.vocab_size
    g = Graph(name)
    x = g.input("hidden", (1, 1, h))
    if w.final_ln_w is not None:
        operands = [x, g.weight("final_ln.weight", w.final_ln_w), g.weight("final_ln.bias", w.final_ln_b)]
        x = g.op("LayerNorm", "final_ln", operands, (1, 1, h), normalized_shape=[h], axis=(2, "si32"), eps=LAYER_NORM_EPS)
    if w.project_out is not None:
        x = g.op("MatMul", "project_out", [x, g.weight("project_out.weight", w.project_out.T), None], (1, 1, e), do_relu=False)
    logits = g.op("MatMul", "logits", [x, g.weight("lm_head.weight", w.lm_head.T), None], (1, 1, vocab), do_relu=False)
    if not top1:
        return g, [logits]
    top = g.ops("Arg", ["token", "token_logit"], [logits], [(1, 1, 1), (1, 1, 1)],
                axis=(2, "i64"), keepdims=True, mode="ArgMax", select_last_index=False)  # fmt: skip
    return g, top


def block_mask(context: int, cached: int, rows: int) -> np.ndarray:
    """[1, 1, T, C + T] additive mask for ``block``: each new row sees the first ``cached``
    positions of the cache and the new rows up to itself."""
    mask = np.full((rows, context + rows), MASKED, np.float32)
    mask[:, :cached] = 0
    new = mask[:, context:]
    new[np.tril_indices(rows)] = 0
    return mask[None, None]
