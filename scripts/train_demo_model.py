"""Train the shipped demo model: a ~5M-parameter OPT on the Python documentation.

    pip install -e ".[dev]" && sudo apt-get install python3.11-doc
    python scripts/train_demo_model.py --out opt_tpu_tui/demo_model

Reproducible: the data order, the initial weights and the batches are seeded, and
torch runs deterministically on the CPU. About 35 minutes on 2 cores. Writes a
complete Hugging Face OPT directory (config.json, model.safetensors in float16,
vocab.json, merges.txt) that the numpy backend and transformers both load, and the
held-out transcripts to scripts/demo_heldout.txt for scripts/perplexity.py.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from demo_data import samples
from perplexity import SEPARATOR
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids 0-3; </s> is both BOS and EOS
CONFIG = dict(
    vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024,
    max_position_embeddings=512, word_embed_proj_dim=256, do_layer_norm_before=True,
    bos_token_id=2, eos_token_id=2, pad_token_id=1, dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


def train_tokenizer(texts: list[str], out_dir: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"], special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))
    return tok


def token_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Every transcript as </s> text </s>, concatenated: the model learns to end its replies."""
    ids: list[int] = []
    for encoding in tok.encode_batch(texts):
        ids += [2, *encoding.ids, 2]
    return np.array(ids, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("opt_tpu_tui/demo_model"))
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    train_texts, held_out = samples(args.seed)
    (Path(__file__).parent / "demo_heldout.txt").write_text(SEPARATOR.join(held_out), encoding="utf-8")
    tok = train_tokenizer(train_texts, args.out)
    data = token_stream(tok, train_texts)
    print(f"{len(train_texts)} transcripts, {len(data)} training tokens")

    model = transformers.OPTForCausalLM(transformers.OPTConfig(**CONFIG))
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = args.steps // 20

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = np.random.default_rng(args.seed)
    model.train()
    started = time.time()
    for step in range(args.steps):
        starts = rng.integers(0, len(data) - args.seq - 1, size=args.batch)
        batch = torch.from_numpy(np.stack([data[s : s + args.seq] for s in starts]))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {schedule.get_last_lr()[0]:.2e}  {time.time() - started:.0f} s", flush=True)
    model.eval()
    model.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    print(f"saved to {args.out} after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
