"""Held-out perplexity of an OPT model directory, with this project's numpy backend.

    python scripts/perplexity.py [--model opt_tpu_tui/demo_model] [--data scripts/demo_heldout.txt] [--check]

The held-out set is the demo model's: transcripts from documentation files that the
training never saw (``scripts/demo_data.py`` picks them; ``train_demo_model.py``
writes them out). Each transcript is scored as the model is trained on it,
``</s> text </s>``, truncated to the context. ``--check`` also scores with
transformers as an independent reference.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from opt_tpu_tui.backends.cpu import CPUBackend
from opt_tpu_tui.tokenizer import Tokenizer

HERE = Path(__file__).resolve().parent
SEPARATOR = "\n\x1e\n"  # record separator between transcripts in the held-out file


def read_heldout(path: Path) -> list[str]:
    return [t for t in path.read_text(encoding="utf-8").split(SEPARATOR) if t.strip()]


def sequences(tokenizer: Tokenizer, texts: list[str], context: int) -> list[list[int]]:
    return [[*tokenizer.encode(text), tokenizer.eos_id][:context] for text in texts]


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    top = float(logits.max())
    return float(logits[token]) - top - math.log(float(np.exp(logits - top).sum()))


def perplexity(model_dir: Path, texts: list[str]) -> float:
    """exp(mean negative log-likelihood) over every predicted token, decoding token by token."""
    backend = CPUBackend(model_dir)
    total, count = 0.0, 0
    for ids in sequences(Tokenizer.from_dir(model_dir), texts, backend.context_length):
        logits = backend.prefill(ids[:1])
        for token in ids[1:]:
            total -= log_softmax_at(logits, token)
            count += 1
            if backend.length < backend.context_length:
                logits = backend.decode(token)
    return math.exp(total / count)


def perplexity_transformers(model_dir: Path, texts: list[str]) -> float:
    import torch
    import transformers

    model = transformers.OPTForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for ids in sequences(Tokenizer.from_dir(model_dir), texts, model.config.max_position_embeddings):
        with torch.no_grad():
            loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        total += loss * (len(ids) - 1)
        count += len(ids) - 1
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=HERE.parent / "opt_tpu_tui" / "demo_model")
    parser.add_argument("--data", type=Path, default=HERE / "demo_heldout.txt")
    parser.add_argument("--check", action="store_true", help="also score with transformers")
    args = parser.parse_args()
    texts = read_heldout(args.data)
    print(f"{len(texts)} held-out transcripts; numpy backend perplexity {perplexity(args.model, texts):.2f}")
    if args.check:
        print(f"transformers perplexity {perplexity_transformers(args.model, texts):.2f}")


if __name__ == "__main__":
    main()
