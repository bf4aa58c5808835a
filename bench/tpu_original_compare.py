"""The OPT-6.7B-wide layer compiled the original OPT-TPU way against this project's, by tpu-mlir's predicted time.

    nice python bench/tpu_original_compare.py [--modes int4 int8]

The original's nets for one random OPT-6.7B-wide layer (hidden 4096, 32 heads, FFN 16384;
a small vocabulary, which no block touches) are exported to ONNX and compiled with
tpu-mlir's own ``model_transform.py`` / ``model_deploy.py`` and ``compile.sh``'s flags
(W8F16 / W4F16, which model_deploy of tpu-mlir 1.30 quantises in groups of 64 along K
when not told otherwise; float32 I/O), as ``tests/original_build.py`` does for the tiny
model; needs Python 3.10 for those tools (the venv that file makes once). Its decode net
(``block_cache_0``: one token over 512 cached positions, the whole cache in and the cache
plus one out, float32) and its prefill net (``block_0``: the whole padded context of 512)
are set beside this project's decode layer over 512 and prefill chunk of 64 over 512, read
from ``bench/tpu_sweep.py``'s cache (compiled there if absent) for the variant ``--variant``
(default: what ``convert`` uses). A prompt of up to 64 tokens costs the original one 512-row
pass and this project one chunk; longer prompts cost this project a chunk per 64 tokens.
Results of the original's compiles are cached under ``~/.cache/opt-tpu-tui/bench-sweep/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import tpu_sweep  # noqa: E402
from convert_memory import make_checkpoint  # noqa: E402
from tpu_device_time import FFN, HEADS, HIDDEN  # noqa: E402

from opt_tpu_tui import toolchain  # noqa: E402

QUANTIZE = {"int8": "W8F16", "int4": "W4F16"}


def original(mode: str) -> dict[str, tpu_sweep.Breakdown]:
    """{"decode": ..., "prefill": ...}: the original's block_cache_0 and block_0 at ``mode``, cached."""
    entry = tpu_sweep.cache_dir() / f"original-{tpu_sweep.CACHE_VERSION}-{toolchain.VERSION}-{mode}.json"
    if entry.is_file():
        return {k: tpu_sweep.Breakdown(**v) for k, v in json.loads(entry.read_text()).items()}
    import original_build
    import original_export

    home = original_build.venv()
    package = next((home / "lib").glob("python3.10/site-packages/tpu_mlir"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-original-") as scratch_name:
        scratch = Path(scratch_name)
        checkpoint = make_checkpoint(scratch / "ckpt", HIDDEN, FFN, HEADS, 1, 1024)
        onnx = original_export.export(checkpoint, scratch / "onnx")
        shutil.rmtree(checkpoint)
        launcher = scratch / "launch.py"
        launcher.write_text(original_build.LAUNCHER)
        env = original_build.tool_environment(package, scratch)
        for label, net in (("decode", "block_cache_0"), ("prefill", "block_0")):
            work = scratch / net
            work.mkdir()

            def run(tool: str, *args: str) -> None:
                command = [str(home / "bin" / "python3"), str(launcher), str(package / "python" / "tools" / tool), *args]
                with (scratch / "build.log").open("a") as sink:
                    if subprocess.run(command, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode:
                        raise RuntimeError(f"{tool} {net} failed; see {scratch / 'build.log'}")

            print(f"compiling the original's {net} at {mode}", file=sys.stderr)
            run("model_transform.py", "--model_name", net, "--model_def", str(onnx[net]), "--mlir", f"{net}.mlir")
            run("model_deploy.py", "--mlir", f"{net}.mlir", "--quantize", QUANTIZE[mode], "--chip", "bm1684x",
                "--model", f"{net}.bmodel")  # fmt: skip
            results[label] = tpu_sweep.breakdown(work)
            shutil.rmtree(work)
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(json.dumps({k: v.__dict__ for k, v in results.items()}))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["int4", "int8"], choices=list(QUANTIZE))
    parser.add_argument("--variant", default=tpu_sweep.DEFAULT, help="this project's compile (a tpu_sweep variant)")
    args = parser.parse_args()
    toolchain.fetch()
    rows = []
    for mode in args.modes:
        theirs = original(mode)
        ours = {g: tpu_sweep.measure(g, mode, tpu_sweep.variant(args.variant)) for g in ("decode", "prefill")}
        rows.append((mode, theirs, ours))
    print(f"\nOne OPT-6.7B-wide layer, tpu-mlir {toolchain.VERSION}'s predicted device time: the original OPT-TPU "
          f"compile (model_deploy's defaults, float32 I/O) against this project's ({args.variant})")
    print("| weights | net | original | read | this project | read | original / this project |")
    print("|---|---|---|---|---|---|---|")
    for mode, theirs, ours in rows:
        for label, what in (("decode", "decode, 512 cached"), ("prefill", "prefill: original 512 rows, ours 64")):
            t, o = theirs[label], ours[label]
            print(f"| {mode} | {what} | {t.total / 1e6:.2f} ms | {t.read / 1e6:.0f} MB | {o.total / 1e6:.2f} ms | "  # type: ignore[union-attr]
                  f"{o.read / 1e6:.0f} MB | **{t.total / o.total:.2f}x** |")  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
