"""A pre-LN OPT checkpoint exported to ONNX the way the original OPT-TPU project's nets are laid out.

One ONNX file per net, as its (unpublished) ``export_to_onnx.py`` must have written them for
``compile.sh``, following ``../shared/notes/seed-bmodel.md``: ``embedding`` (ids and 0-based
position ids, int32; OPT's +2 position offset inside), ``block_i`` (prefill over SEQ rows with
an additive mask input; outputs hidden and K/V [1, H, SEQ, d]), ``block_cache_i`` (one token
over the SEQ-slot cache; outputs hidden and the concatenated cache [1, H, SEQ + 1, d]),
``splitkv`` (drops the oldest slot) and ``lm_head`` (final LayerNorm, lm_head, top-1: the
greedy token id). The math is written out in torch from the checkpoint's tensors, so what the
bmodel computes is TPU-MLIR's compilation of these graphs and nothing of this project's.

Test-only: torch and onnx are dev dependencies (Python 3.10+).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SEQ = 512  # the original's fixed sequence length (MAX_LEN)
POSITION_OFFSET = 2  # OPT's learned positions start at row 2


def export(checkpoint: Path, out_dir: Path, seq: int = SEQ) -> dict[str, Path]:
    """Write every net's ONNX file into ``out_dir``; returns net name -> file (embedding once, for both stages)."""
    import torch
    import transformers

    model = transformers.OPTForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    model.requires_grad_(False)  # weights the nets close over are traced as constants
    cfg, decoder = model.config, model.model.decoder
    if not cfg.do_layer_norm_before or cfg.word_embed_proj_dim != cfg.hidden_size:
        raise ValueError("the original's export handles pre-LN OPT without projections (as opt-6.7b)")
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    head_dim = hidden // heads
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def save(name: str, net: torch.nn.Module, args: tuple[Any, ...], ins: list[str], outs: list[str]) -> None:
        files[name] = out_dir / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                net, args, str(files[name]), input_names=ins, output_names=outs, opset_version=15, dynamo=False,
                do_constant_folding=True,
            )  # fmt: skip

    class Embedding(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
            tokens = decoder.embed_tokens.weight[input_ids]  # [N] -> [N, h]
            return tokens + decoder.embed_positions.weight[position_ids + POSITION_OFFSET]

    def attention(layer: Any, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None):
        """Self-attention of rows ``x`` [n, h]; returns (output [n, h], K, V [1, H, slots, d])."""
        a, n = layer.self_attn, x.shape[0]
        q = (a.q_proj(x) * head_dim**-0.5).view(n, heads, head_dim).transpose(0, 1)[None]  # [1, H, n, d]
        k = a.k_proj(x).view(n, heads, head_dim).transpose(0, 1)[None]
        v = a.v_proj(x).view(n, heads, head_dim).transpose(0, 1)[None]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [1, H, SEQ + 1, d]
        scores = torch.softmax(q @ k.transpose(2, 3) + mask, dim=-1)  # [1, H, n, slots]
        out = (scores @ v)[0].transpose(0, 1).reshape(n, hidden)
        return a.out_proj(out), k, v

    def block(layer: Any, x: torch.Tensor, mask: torch.Tensor, past: Any = None):
        attn, k, v = attention(layer, layer.self_attn_layer_norm(x), mask, past)
        x = x + attn
        x = x + layer.fc2(torch.relu(layer.fc1(layer.final_layer_norm(x))))
        return x, k, v

    class Block(torch.nn.Module):
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor):
            return block(self.layer, hidden_states, attention_mask)

    class BlockCache(Block):
        def forward(self, hidden_states, attention_mask, past_k, past_v):  # type: ignore[override]
            return block(self.layer, hidden_states, attention_mask, (past_k, past_v))

    class SplitKV(torch.nn.Module):
        def forward(self, k: torch.Tensor, v: torch.Tensor):
            return k[:, :, 1:], v[:, :, 1:]

    class LmHead(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            logits = model.lm_head(decoder.final_layer_norm(hidden_states))  # [1, h] -> [1, vocab]
            return torch.topk(logits, 1).indices.int()  # [1, 1]: the greedy token

    ids = torch.zeros(seq, dtype=torch.int32)
    save("embedding", Embedding(), (ids, ids), ["input_ids", "position_ids"], ["hidden_states"])
    x, mask = torch.zeros(seq, hidden), torch.zeros(1, 1, seq, seq)
    one, mask1 = torch.zeros(1, hidden), torch.zeros(1, 1, 1, seq + 1)
    kv = torch.zeros(1, heads, seq, head_dim)
    for i, layer in enumerate(decoder.layers):
        save(f"block_{i}", Block(layer), (x, mask), ["hidden_states", "attention_mask"], ["hidden", "k", "v"])
        save(
            f"block_cache_{i}", BlockCache(layer), (one, mask1, kv, kv),
            ["hidden_states", "attention_mask", "past_k", "past_v"], ["hidden", "k", "v"],
        )  # fmt: skip
    kv1 = torch.zeros(1, heads, seq + 1, head_dim)
    save("splitkv", SplitKV(), (kv1, kv1), ["k_in", "v_in"], ["k_out", "v_out"])
    save("lm_head", LmHead(), (one,), ["hidden_states"], ["token"])
    return files
