"""Which of tpu-mlir's compile choices move OPT-6.7B's predicted device time, and what bounds the rest.

    nice python bench/tpu_sweep.py [--graphs decode prefill head] [--modes int4 int8]
                                   [--variants base io_alone g128 fused ...] [--list]

Each variant is the converter's graph and compile (``bench/tpu_device_time.py``'s
OPT-6.7B-wide decode layer over 512 cached positions, prefill chunk of 64 over 512, and
lm_head) with one or more choices changed; ``a+b`` combines variants. Every compile's
prediction (tpu-mlir's own cost model, ``compiler_profile_*.txt``) is cached under
``~/.cache/opt-tpu-tui/bench-sweep/`` by its parameters, so a rerun compiles only what is
new; compiles run one at a time (a 6.7B-wide layer takes minutes on a loaded core and up
to 4 GB of memory for the lm_head). For each it prints the predicted time, the bytes read
from DDR, the DDR busy share the profile reports, predicted / roofline, and where the time
above the bandwidth roofline goes, read from the profile's command timeline:

- ``DMA pace``: time the DMA engine is busy beyond what its bytes take at 68 GB/s (small or
  strided transfers: per-group scales and zero points, activations, K/V rows);
- ``compute only``: time the compute engine runs with no DMA under it (dequantising and
  multiplying a tile whose weights are already in, LayerNorm, Softmax, attention), by op;
- ``idle``: neither engine busy (synchronisation between them).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tpu_device_time import HIDDEN, LAYERS, config, random_head, random_layer, roofline_ms  # noqa: E402
from tpu_host_overhead import BANDWIDTH  # noqa: E402

from opt_tpu_tui import paths, toolchain  # noqa: E402
from opt_tpu_tui.convert import graphs  # noqa: E402
from opt_tpu_tui.converted import quantization  # noqa: E402

CACHE_VERSION = 2  # bump when the graphs or the parsing change what a cached entry means
DEFAULT = "g128"  # the variant `convert` compiles with (converted.DEFAULT_GROUP_SIZE)
GRAPHS = {"decode": (1, 512), "prefill": (64, 512), "head": (1, 0)}  # rows, cache


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: the compile options and graph choices ``convert`` could take."""

    group: int = 64
    options: toolchain.Options = toolchain.DEFAULT_OPTIONS  # tpuc-opt's choices (the CHANGES name its fields too)
    fused_qkv: bool = False
    head_major: bool = False
    split_attention: bool = False
    activations: str = "f16"

    def changed(self, **changes: object) -> Variant:
        """This variant with ``changes`` made, to its own fields or to its ``options``'."""
        own = {name: value for name, value in changes.items() if name in OWN_FIELDS}
        options = replace(self.options, **{name: value for name, value in changes.items() if name not in own})
        return replace(self, options=options, **own)  # type: ignore[arg-type]

    def flat(self) -> dict[str, object]:
        """Its fields and its options' (but ``keep``, which moves no figure) side by side: the cache's key."""
        fields = asdict(self)
        options = fields.pop("options")
        options.pop("keep")
        return {**fields, **options}


OWN_FIELDS = {f.name for f in dataclasses.fields(Variant)} - {"options"}


CHANGES = {  # name: what it changes against the converter's choice at the time of writing
    "base": {},
    "io_alone": {"addr_mode": "io_alone"},
    "g32": {"group": 32},
    "g128": {"group": 128},
    "g256": {"group": 256},
    "perchannel": {"perchannel": True, "group": 0},
    "sym": {"q_symmetric": True},
    "fused": {"fused_qkv": True},
    "kv_heads": {"head_major": True},  # the K/V cache as [1, H, C, d]: the runtime cannot write it in place
    "split_attn": {"split_attention": True},  # scores over the cache and the new tokens apart: no K/V Concat
    "lg1": {"layer_group": 1},
    "lg3": {"layer_group": 3},
    "bf16": {"activations": "bf16"},
    "hp": {"high_precision": True},
}


def variant(name: str) -> Variant:
    """``a+b+c``: the base with each named change applied in turn."""
    v = Variant()
    for part in name.split("+"):
        if part not in CHANGES:
            raise SystemExit(f"unknown variant {part!r}; known: {', '.join(CHANGES)}")
        v = v.changed(**CHANGES[part])
    return v


@dataclass
class Breakdown:
    """Where a net's predicted cycles go, from its profiles' command timelines (cycles = ns at 1 GHz)."""

    total: int = 0
    read: int = 0
    written: int = 0
    dma_busy: int = 0
    compute_only: int = 0
    idle: int = 0
    compute_only_by_op: dict[str, int] | None = None
    dma_by_op: dict[str, list[int]] | None = None  # op: [DMA cycles, bytes]
    ddr_usage: float = 0.0  # the profile's own "DDR BW USAGE", averaged over subnets by cycles

    @property
    def dma_pace(self) -> float:
        """DMA-busy cycles beyond the bytes' time at BANDWIDTH."""
        return self.dma_busy - (self.read + self.written) / BANDWIDTH * 1e9


COMMAND = re.compile(r"(\S+?)\|(\w+)\|s:(\d+)\|b:\d+\|g:\d+\|e:(\d+)\|t:(\d+)(\|dr:\d+\|sz:(\d+))?")


def breakdown(folder: Path) -> Breakdown:
    """Read every ``compiler_profile_*.txt`` of the net compiled in ``folder``."""
    result = Breakdown(compute_only_by_op={}, dma_by_op={})
    profiles = sorted(folder.glob("compiler_profile_*.txt"))
    if not profiles:
        raise RuntimeError(f"{folder}: tpuc-opt wrote no compiler_profile_*.txt")
    for path in profiles:
        text = path.read_text()
        total = int(re.search(r"TCYC : (\d+)", text).group(1))  # type: ignore[union-attr]
        loads = re.search(r"S2L:(\d+)\|dr\[1\] L2S:(\d+)", text)
        usage = re.search(r"DDR BW USAGE : ([\d.]+)%", text)
        if loads is None or usage is None:
            raise RuntimeError(f"{path}: no 'S2L:'/'L2S:' or 'DDR BW USAGE' (another tpu-mlir version?)")
        dma = np.zeros(total + 1, bool)
        bd = np.full(total + 1, -1, np.int32)
        kinds: list[str] = []
        for match in COMMAND.finditer(text):
            op, start, end = re.sub(r"_\d+$", "", match.group(1)), int(match.group(3)), int(match.group(4)) + 1
            if match.group(6):
                dma[start:end] = True
                spent = result.dma_by_op.setdefault(op, [0, 0])  # type: ignore[union-attr]
                spent[0] += int(match.group(5))
                spent[1] += int(match.group(7))
            else:
                if op not in kinds:
                    kinds.append(op)
                bd[start:end] = kinds.index(op)
        only = (bd >= 0) & ~dma
        counts = np.bincount(bd[only], minlength=len(kinds))
        for op, count in zip(kinds, counts):
            result.compute_only_by_op[op] = result.compute_only_by_op.get(op, 0) + int(count)  # type: ignore[index]
        result.ddr_usage += float(usage.group(1)) * total
        result.total += total
        result.read += int(loads.group(1))
        result.written += int(loads.group(2))
        result.dma_busy += int(dma.sum())
        result.compute_only += int(only.sum())
        result.idle += int(((bd < 0) & ~dma).sum())
    result.ddr_usage /= max(1, result.total)
    return result


def cache_dir() -> Path:
    return paths.cache_dir() / "bench-sweep"


# fields added after entries were cached: at their default, left out of the key
LATER = {"head_major": False, "split_attention": False}


def key(graph: str, mode: str, v: Variant) -> str:
    params = {k: value for k, value in v.flat().items() if k not in LATER or value != LATER[k]}
    text = json.dumps([CACHE_VERSION, toolchain.VERSION, graph, mode, params], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure(graph: str, mode: str, v: Variant) -> Breakdown | None:
    """The cached breakdown of ``graph`` at ``mode`` under ``v``, compiling it first if need be; None if it fails."""
    entry = cache_dir() / f"{key(graph, mode, v)}.json"
    if entry.is_file():
        data = json.loads(entry.read_text())
        return None if data.get("failed") else Breakdown(**data)
    rng = np.random.default_rng(0)
    rows, cache = GRAPHS[graph]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        name = f"{graph}_{mode}"
        if graph == "head":
            g, outputs = graphs.lm_head(name, random_head(rng))
        else:
            g, outputs = graphs.block(name, random_layer(rng), config(), cache, rows, fused_qkv=v.fused_qkv,
                                        head_major=v.head_major, split_attention=v.split_attention)
        path = g.write(Path(scratch) / name, outputs)
        del g
        start = time.perf_counter()
        try:
            toolchain.compile_top(path, quantization(mode, v.activations), v.group, options=v.options)
        except Exception as error:  # noqa: BLE001 - a variant tpu-mlir cannot compile is a result too
            print(f"  {graph} {mode} {v}: failed ({error})", file=sys.stderr)
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_text(json.dumps({"failed": str(error)}))
            return None
        print(f"  compiled {graph} {mode} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        result = breakdown(path.parent)
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(json.dumps(asdict(result)))
    return result


def roofline(graph: str, mode: str, v: Variant) -> float:
    rows, cache = GRAPHS[graph]
    group = v.group or HIDDEN  # per-channel: one scale per column, as a group the length of a column
    import tpu_device_time

    tpu_device_time.GROUP = group
    return roofline_ms(mode, rows, cache, graph == "head")


def top_ops(b: Breakdown, n: int = 3) -> str:
    ops = sorted((b.compute_only_by_op or {}).items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{op} {cycles / 1e6:.2f}" for op, cycles in ops if cycles >= 1e4)


def dma_ops(b: Breakdown, n: int = 2) -> str:
    """The ops whose DMA takes longest, with the bandwidth they get in the cost model."""
    ops = sorted((b.dma_by_op or {}).items(), key=lambda kv: -kv[1][0])[:n]
    return ", ".join(f"{op} {t / 1e6:.2f} ms at {size / max(t, 1):.0f} GB/s" for op, (t, size) in ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=list(GRAPHS))
    parser.add_argument("--modes", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    parser.add_argument("--variants", nargs="+", default=["base", "fused", "g128", "io_alone", "perchannel"])
    parser.add_argument("--cached-only", action="store_true", help="print what the cache holds, compile nothing")
    args = parser.parse_args()
    toolchain.fetch()
    results: dict[tuple[str, str, str], Breakdown | None] = {}
    for graph in args.graphs:  # the most telling first: every variant's decode layer before any prefill
        for mode in args.modes:
            for name in args.variants:
                v = variant(name)
                if args.cached_only and not (cache_dir() / f"{key(graph, mode, v)}.json").is_file():
                    continue
                print(f"{graph} {mode} {name}", file=sys.stderr)
                results[(graph, mode, name)] = measure(graph, mode, v)

    print(f"\nOPT-6.7B-wide nets, tpu-mlir {toolchain.VERSION}'s predicted device time per variant "
          "(decode: one token over 512 cached; prefill: a chunk of 64 over 512; head: lm_head, one position)")
    print("| net | weights | variant | predicted | read | DDR busy | roofline | pred / roof "
          "| DMA pace | DMA by op | compute only (top ops) | idle |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (graph, mode, name), b in results.items():
        roof = roofline(graph, mode, variant(name))
        if b is None:
            print(f"| {graph} | {mode} | {name} | failed | | | {roof:.2f} ms | | | | | |")
            continue
        ms = b.total / 1e6
        print(f"| {graph} | {mode} | {name} | {ms:.2f} ms | {b.read / 1e6:.0f} MB | {b.ddr_usage:.0f} % | "
              f"{roof:.2f} ms | {ms / roof:.2f} | {b.dma_pace / 1e6:.2f} ms | {dma_ops(b)} | {b.compute_only / 1e6:.2f} ms "
              f"({top_ops(b)}) | {b.idle / 1e6:.2f} ms |")
    print(f"\nPer token at window 512 ({LAYERS} decode layers + lm_head), where both were compiled; 'floor': its "
          "bytes at the fastest rate the cost model gives any DMA (its weight loads), 'prefill / decode': a chunk "
          "of 64 against a decode layer")
    print("| weights | variant | predicted per token | tok/s | floor at the model's DMA rate | prefill / decode |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        for name in args.variants:
            layer, head = results.get(("decode", mode, name)), results.get(("head", mode, name))
            prefill = results.get(("prefill", mode, name))
            if layer and head:
                ms = (LAYERS * layer.total + head.total) / 1e6
                rate = max(size / t for b in (layer, head) for t, size in (b.dma_by_op or {}).values() if size > 1e6)
                floor = (LAYERS * layer.read + head.read) / rate / 1e6
                ratio = f"{prefill.total / layer.total:.2f}" if prefill else ""
                print(f"| {mode} | {name} | {ms:.1f} ms | {1e3 / ms:.1f} | {floor:.1f} ms ({rate:.0f} GB/s) | {ratio} |")

    prefill_bounds(results, args.modes, args.variants)


def prefill_bounds(results: dict[tuple[str, str, str], Breakdown | None], modes: list[str], variants: list[str]) -> None:
    """What a prefill chunk of 64 costs beyond a decode layer, where both were compiled.

    A net's predicted time is DMA-busy time + compute with no DMA under it + idle (the
    breakdown's parts), so the difference splits the same way; the DMA part by op: the
    weight-only MatMuls (their weight tiles and the activations they move), the K/V cache
    loads, the rest (activations between ops, the new K/V).
    """
    rows = []
    for mode in modes:
        for name in variants:
            decode, prefill = results.get(("decode", mode, name)), results.get(("prefill", mode, name))
            if decode and prefill:
                rows.append((mode, name, decode, prefill))
    if not rows:
        return
    print("\nWhat bounds the prefill chunk: its time beyond the decode layer's, split as the profile splits "
          "the time (ms; bytes read in MB)")
    print("| weights | variant | prefill / decode | extra | weight-only MatMul DMA | K/V cache DMA | other DMA "
          "| compute only | extra read | weight MatMul DMA rate |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def dma(b: Breakdown, *ops: str) -> float:
        return sum((b.dma_by_op or {}).get(op, [0, 0])[0] for op in ops) / 1e6

    for mode, name, d, p in rows:
        matmul = dma(p, "A16MatMul") - dma(d, "A16MatMul")
        cache = dma(p, "Load", "Concat") - dma(d, "Load", "Concat")
        other = (p.dma_busy - d.dma_busy) / 1e6 - matmul - cache
        rates = "/".join(f"{b.dma_by_op['A16MatMul'][1] / max(1, b.dma_by_op['A16MatMul'][0]):.0f}"  # type: ignore[index]
                         for b in (d, p) if "A16MatMul" in (b.dma_by_op or {}))  # fmt: skip
        print(f"| {mode} | {name} | {p.total / d.total:.2f} | {(p.total - d.total) / 1e6:.2f} | {matmul:.2f} | "
              f"{cache:.2f} | {other:.2f} | {(p.compute_only - d.compute_only) / 1e6:.2f} ({top_ops(p, 1)}) | "
              f"{(p.read - d.read) / 1e6:.0f} | {rates} GB/s |")


if __name__ == "__main__":
    main()
