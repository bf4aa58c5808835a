"""Numpy backend vs transformers and CTranslate2 on the same OPT-125m-shaped random weights.

    python bench/decode_cpu.py [--runs 5] [--tokens 64] [--prompt 128]

Prints prefill latency for a 128-token prompt and greedy decode tokens/s (medians of
several runs) for each engine, with ratios to transformers and CTranslate2 float32.
Needs the [dev] extra (torch, transformers, ctranslate2). All engines use fp32
weights but CTranslate2 int8; all run on this machine's cores in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

OPT_125M = dict(
    vocab_size=50272, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
    max_position_embeddings=2048, word_embed_proj_dim=768, do_layer_norm_before=True,
)  # fmt: skip


def median_time(fn: Callable[[], object], runs: int, setup: Callable[[], object] = lambda: None) -> float:
    """Median seconds of ``fn`` over ``runs`` after one warm-up; ``setup`` runs untimed before each."""
    setup()
    fn()  # warm-up
    times = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_numpy(model_dir: Path, prompt: list[int], tokens: int, runs: int) -> tuple[float, float]:
    from opt_tpu_tui.model import load_weights
    from opt_tpu_tui.model.forward import OPTModel

    model = OPTModel(load_weights(model_dir))  # the model itself: each prefill runs the whole prompt
    prefill = median_time(lambda: model.prefill(prompt), runs)

    def decode() -> None:
        token = int(np.argmax(model.prefill(prompt)))
        start = time.perf_counter()
        for _ in range(tokens):
            token = int(np.argmax(model.decode(token)))
        decode_times.append(time.perf_counter() - start)

    decode_times: list[float] = []
    for _ in range(runs + 1):
        decode()
    return prefill, tokens / statistics.median(decode_times[1:])


def bench_transformers(model_dir: Path, prompt: list[int], tokens: int, runs: int) -> tuple[float, float]:
    import torch
    import transformers

    model = transformers.OPTForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        prefill = median_time(lambda: model(ids, use_cache=True), runs)
        decode_times = []
        for _ in range(runs + 1):
            out = model(ids, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(tokens):
                out = model(token, cache=out.cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            decode_times.append(time.perf_counter() - start)
    return prefill, tokens / statistics.median(decode_times[1:])


def bench_ctranslate2(model_dir: Path, prompt: list[int], tokens: int, runs: int, quantization: str) -> tuple[float, float]:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    out_dir = model_dir.parent / f"ct2-{quantization}"
    TransformersConverter(str(model_dir)).convert(str(out_dir), quantization=quantization, force=True)
    generator = ctranslate2.Generator(str(out_dir), device="cpu", compute_type=quantization, intra_threads=os.cpu_count() or 1)
    prompt_tokens = [VOCAB[i] for i in prompt]  # CTranslate2 takes token strings

    def generate(n: int) -> None:
        generator.generate_batch(
            [prompt_tokens], max_length=n, min_length=n, sampling_topk=1, include_prompt_in_result=False
        )

    prefill = median_time(lambda: generate(1), runs)
    full = median_time(lambda: generate(tokens + 1), runs)
    return prefill, tokens / (full - prefill)


VOCAB = ["<s>", "<pad>", "</s>", "<unk>"] + [f"tok{i}" for i in range(4, 50265)]


def write_synthetic_tokenizer(model_dir: Path) -> None:
    """CTranslate2's converter reads the vocabulary from a tokenizer; OPT's 50265 tokens, made up."""
    (model_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(VOCAB)}))
    (model_dir / "merges.txt").write_text("#version: 0.2\n")
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    args = parser.parse_args()

    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    prompt = [2, *rng.integers(4, 50265, size=args.prompt - 1).tolist()]
    with tempfile.TemporaryDirectory(prefix="bench-decode-cpu-") as scratch:
        model_dir = Path(scratch) / "opt-125m-random"
        model = transformers.OPTForCausalLM(transformers.OPTConfig(**OPT_125M))
        model.save_pretrained(model_dir, safe_serialization=True)
        del model
        write_synthetic_tokenizer(model_dir)
        rows = {
            "numpy (this project)": bench_numpy(model_dir, prompt, args.tokens, args.runs),
            "transformers fp32": bench_transformers(model_dir, prompt, args.tokens, args.runs),
            "CTranslate2 float32": bench_ctranslate2(model_dir, prompt, args.tokens, args.runs, "float32"),
            "CTranslate2 int8": bench_ctranslate2(model_dir, prompt, args.tokens, args.runs, "int8"),
        }
    hf_prefill, hf_decode = rows["transformers fp32"]
    _, ct2_decode = rows["CTranslate2 float32"]
    print(f"OPT-125m shape, random fp32 weights, {os.cpu_count()} cores, prompt {args.prompt} tokens, "
          f"{args.tokens} decode tokens, medians of {args.runs} runs")  # fmt: skip
    header = f"| {'engine':<22} | {'prefill ms':>10} | {'x transformers':>14} | {'decode tok/s':>12} | {'x transformers':>14} | {'x CT2 f32':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, (prefill, decode) in rows.items():
        print(
            f"| {name:<22} | {prefill * 1e3:>10.1f} | {hf_prefill / prefill:>14.2f} | {decode:>12.1f} | "
            f"{decode / hf_decode:>14.2f} | {decode / ct2_decode:>9.2f} |"
        )


if __name__ == "__main__":
    main()
