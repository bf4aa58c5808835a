"""A numpy reference of TPU-MLIR's weight-only quantisation, to run the numpy model on the chip's weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from opt_tpu_tui.model.checkpoint import LayerWeights, OPTWeights


CHANNEL_TILE = 64


def group_quantize(w: np.ndarray, bits: int, group: int) -> np.ndarray:
    """The weights a W8/W4 MatMul computes with, for a torch-layout matrix ``w`` [out, in].

    TPU-MLIR quantises each output channel in groups of ``group`` consecutive input
    features (along K), asymmetrically: an unsigned ``bits``-bit code with a per-group
    scale and zero point spanning the group's min..max. The last ``out % 64`` output
    channels keep float16 weights (measured: a W8/W4 MatMul with 408 outputs computes
    with exactly these weights, to float16 precision, and its last 24 channels are
    unquantised; OPT's 50272-row lm_head keeps 32).
    """
    out, k = w.shape
    quantised = out - out % CHANNEL_TILE
    g = w[:quantised].reshape(quantised, k // group, group).astype(np.float32)
    low, high = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    levels = 2**bits - 1
    scale = np.maximum(high - low, 1e-10) / levels
    zero = np.clip(np.round(-low / scale), 0, levels)
    q = np.clip(np.round(g / scale) + zero, 0, levels)
    return np.concatenate([((q - zero) * scale).reshape(quantised, k), w[quantised:]]).astype(np.float32)


def quantized_weights(w: OPTWeights, bits: int, group: int) -> OPTWeights:
    """``w`` with every matrix a MatMul multiplies by replaced by its quantised form."""

    def q(m: np.ndarray) -> np.ndarray:
        return group_quantize(m, bits, group)

    layers = [
        LayerWeights(**{**vars(lw), **{n: q(getattr(lw, n)) for n in ("q_w", "k_w", "v_w", "o_w", "fc1_w", "fc2_w")}})
        for lw in w.layers
    ]
    project_out = q(w.project_out) if w.project_out is not None else None
    return replace(w, layers=layers, lm_head=q(w.lm_head), project_out=project_out)
