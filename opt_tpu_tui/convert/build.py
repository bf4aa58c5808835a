"""``opt-tpu-tui convert``: a Hugging Face OPT checkpoint -> a converted model directory.

Each graph (a prefill-chunk and a decode block per layer, and the lm_head) is written
as Top-dialect MLIR, its weights streamed into tpuc-opt through a pipe, compiled to its
own bmodel (as many at once as there are cores), and each bmodel goes into the combined
one as soon as it is compiled, then is deleted, so the scratch disk is the result's size
plus the graphs being compiled (``combine``). The directory's result is built in a
folder beside ``--out`` and moved in only once complete, so a failed conversion leaves
an earlier one in ``--out`` working; the build folder is
removed on success, on ctrl+c and on any failure but a compile failure, where it is
kept with each graph's compile log (the error names the log). A build folder left by a
conversion that was killed (SIGKILL, a power cut) is removed by the next conversion
into the same ``--out``, which says so: its name holds the pid that built it.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable as Function  # subscriptable at run time on Python 3.8

from opt_tpu_tui import toolchain
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.converted import (
    ACTIVATIONS, BMODEL, DEFAULT_GROUP_SIZE, LM_HEAD, LM_HEAD_TOP1, MANIFEST, MODES, TOKENIZER_FILES, HostEmbedding, Manifest,
    conversion_files, decode_net, decode_windows, prefill_net, quantization,
)  # fmt: skip
from opt_tpu_tui.convert import graphs
from opt_tpu_tui.convert.combine import Combined
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.checkpoint import OPTWeights
from opt_tpu_tui.model.config import POSITION_OFFSET
from opt_tpu_tui.model.forward import PreparedLayer

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
Feed = Function[[BinaryIO], None]  # writes a graph's weights file (into the pipe its compile reads)


def return_large_frees_to_the_system() -> None:
    """Have malloc map each block over 1 MiB on its own, so that a layer's arrays, once its
    graphs are written, go back to the system at once.

    glibc raises that threshold to 32 MiB after the first large frees, and then keeps what
    each compile worker's thread frees in that thread's heap: the Python side's peak then
    varied by up to a layer from run to run (converting 4 layers of width 1024 peaked
    between 130 and 168 MiB). A no-op where the C library has no ``mallopt``.
    """
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 2**20)
    except (AttributeError, OSError):
        pass


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LayerReader:
    """Decoder layers read from the checkpoint and prepared as the graphs need them, one at a time.

    The graphs of a layer (the prefill chunk, each decode window) share one read of it,
    whether the compile workers write them one after another or at once; a worker that
    needs the next layer waits until the graphs of the last are written, so the
    conversion holds one layer, whatever the model's depth and the number of workers.
    """

    def __init__(self, w: OPTWeights) -> None:
        self.w = w
        self.changed = threading.Condition()
        self.index: int | None = None
        self.layer: PreparedLayer | None = None
        self.users = 0

    @contextlib.contextmanager
    def use(self, i: int) -> Iterator[PreparedLayer]:
        with self.changed:
            while self.index != i and self.users:
                self.changed.wait()
            if self.index != i:
                self.layer = None  # freed before the next one is read
                self.layer = PreparedLayer.from_weights(self.w.layers[i], self.w.config.head_dim)
                self.index = i
            self.users += 1
            layer = self.layer
        try:
            yield layer  # type: ignore[misc]
        finally:
            with self.changed:
                self.users -= 1
                self.changed.notify_all()

    def release(self) -> None:
        """Drop the layer held once no graph is being written from it (the lm_head needs none)."""
        with self.changed:
            while self.users:
                self.changed.wait()
            self.index, self.layer = None, None


def graph_writers(
    w: OPTWeights, context: int, chunk: int, windows: Sequence[int]
) -> dict[str, Callable[[Path], tuple[Path, Feed]]]:
    """Every net of the model by name: a function writing its MLIR under a folder, called when the net's
    compile starts, returning the .mlir and what writes its weights into the pipe tpuc-opt reads them from."""
    config = w.config
    reader = LayerReader(w)

    def block(name: str, i: int, cache: int, rows: int) -> Callable[[Path], tuple[Path, Feed]]:
        def write(folder: Path) -> tuple[Path, Feed]:
            with reader.use(i) as layer:
                graph, outputs = graphs.block(name, layer, config, cache, rows)
                mlir = graph.write_module(folder / name, outputs)
                del graph  # it holds the layer's arrays

            def feed(out: BinaryIO) -> None:
                with reader.use(i) as layer:
                    graphs.block(name, layer, config, cache, rows)[0].write_weights(out)

            return mlir, feed

        write.weights = i  # type: ignore[attr-defined] # the graphs of a layer stream the same weights
        return write

    def head(name: str, top1: bool) -> Callable[[Path], tuple[Path, Feed]]:
        def write(folder: Path) -> tuple[Path, Feed]:
            """The logits head, or the greedy one (``graphs.lm_head``): their first tpuc-opt steps are the
            conversion's largest (3.5 GiB for OPT-6.7B), so the gate (``OneLayerAtATime``, which each
            holds by its own name) runs them one after the other."""
            reader.release()  # the last graphs
            graph, outputs = graphs.lm_head(name, w, top1)
            return graph.write_module(folder / name, outputs), graph.write_weights

        return write

    writers: dict[str, Callable[[Path], tuple[Path, Feed]]] = {}
    for i in range(len(w.layers)):
        writers[prefill_net(i)] = block(prefill_net(i), i, context, chunk)
        for window in windows:
            writers[decode_net(i, window)] = block(decode_net(i, window), i, window, 1)
    writers[LM_HEAD] = head(LM_HEAD, False)
    writers[LM_HEAD_TOP1] = head(LM_HEAD_TOP1, True)
    return writers


def check_output_dir(out: Path) -> list[str]:
    """What an earlier conversion in ``out`` wrote (to replace), or [] if ``out`` is absent or empty.

    Anything else is refused before any work, so convert never deletes a user's files:
    a folder with other files (even one named manifest.json) is not an earlier conversion.
    """
    if not out.exists() and not out.is_symlink():
        return []
    if out.is_dir() and not any(out.iterdir()):
        return []
    previous = conversion_files(out) if out.is_dir() else None
    if previous is None:
        raise UserError(f"{out}: exists and is not an empty folder or a converted model; choose another --out")
    return previous


STAGING = ".converting-"  # OUT.converting-<pid>-<8 hex>: a conversion into OUT being built


def staging_dir(out: Path) -> Path:
    """A new folder beside ``out`` (same file system, so its files move into ``out`` by rename),
    named with this process's pid so that a later conversion can tell it was left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f"{out.name}{STAGING}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def clear_leftovers(out: Path, log: Callable[[str], None]) -> None:
    """Remove the build folders of conversions into ``out`` whose process is gone, saying which.

    One whose process runs (another convert into the same folder) is left alone, and so is
    one named without a pid (by an earlier version): it is named instead, for the user to remove.
    """
    for path in sorted(out.parent.glob(glob.escape(out.name + STAGING) + "*")):
        if path.is_symlink() or not path.is_dir():
            continue
        owner = re.fullmatch(r"(\d+)-[0-9a-f]{8}", path.name[len(out.name + STAGING) :])
        if owner is None:
            log(f"note: {path} may be left from an interrupted conversion; remove it if no convert is running")
        elif not process_alive(int(owner.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed {path}, left by a conversion that did not finish")


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a reused pid counts as alive: the folder then stays)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no pid can be
        return True
    return True


def swap_in(staging: Path, out: Path, previous: list[str]) -> None:
    """Move the finished conversion in ``staging`` into ``out``, replacing only the files ``previous`` lists.

    The new files are renamed over the old ones with the manifest last, so until then
    ``out`` still holds the old manifest, which lists every name a retry must replace;
    files of the old conversion the new one lacks go after. Other files in ``out`` stay.
    """
    if not previous:
        if out.is_dir():
            out.rmdir()  # empty, checked before the conversion
        os.replace(staging, out)
        return
    new = sorted((p.name for p in staging.iterdir()), key=lambda name: name == MANIFEST)  # the manifest last
    for name in new:
        os.replace(staging / name, out / name)
    for name in set(previous) - set(new):
        if (out / name).is_file() or (out / name).is_symlink():
            (out / name).unlink()
    staging.rmdir()


class Compiles:
    """The compiles running in the workers, so that a failure or ctrl+c can stop new ones and wait for the rest.

    Waiting on the pool itself is not enough: a ctrl+c can land while the pool starts a
    worker thread, which then runs without being joined at shutdown, and the build folder
    would be removed under it. A ctrl+c also reaches tpuc-opt (the terminal signals the whole
    process group), so it may arrive here while the wait is on: the wait goes on, and the
    interrupt is raised once nothing writes in the build folder any more.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.running = 0
        self.stopped = False

    def begin(self) -> bool:
        """Count a compile as running; False once stopped (the compile is then skipped)."""
        with self.changed:
            if self.stopped:
                return False
            self.running += 1
            return True

    def end(self) -> None:
        with self.changed:
            self.running -= 1
            self.changed.notify_all()

    def stop_and_wait(self) -> None:
        """No new compile begins; return when the running ones have ended (KeyboardInterrupt if one came)."""
        interrupted = False
        while True:
            try:
                with self.changed:
                    self.stopped = True
                    while self.running:
                        self.changed.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt


class OneLayerAtATime:
    """The compiles' first steps (tpuc-opt reading a graph's float32 weights) for one layer at a time, whatever
    the number of compile jobs.

    Each graph's weights are streamed into its first step (``toolchain.feed_weights``)
    from the layer the ``LayerReader`` holds, so the graphs of one layer may stream at
    once, but a graph of another layer waits until the last holder's first step is over:
    the reader then holds one layer, not two read again by turns; the later steps, on
    weights of the result's size, run beside it.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.owner: object = None
        self.holders = 0

    @contextlib.contextmanager
    def hold(self, weights: object) -> Iterator[Callable[[], None]]:
        """Wait until ``weights`` (a layer, or a graph's own) may be on disk; yields the release, callable once."""
        with self.changed:
            while self.holders and self.owner != weights:
                self.changed.wait()
            self.owner = weights
            self.holders += 1
        released = [False]

        def release() -> None:
            with self.changed:
                if not released[0]:
                    released[0] = True
                    self.holders -= 1
                    self.changed.notify_all()

        try:
            yield release
        finally:
            release()


def discard(staging: Path, error: BaseException, log: Callable[[str], None]) -> None:
    """Remove a failed or interrupted conversion's folder, unless a compile failure's message names a log in it."""
    if isinstance(error, UserError) and any(staging.rglob("*.log")):
        return
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(error, KeyboardInterrupt):
        log(f"interrupted: removed {staging}")


def convert(
    model_dir: Path, out: Path, mode: str = "int4", group_size: int = DEFAULT_GROUP_SIZE, context: int = 512,
    activations: str = "f16", jobs: int | None = None, log: Callable[[str], None] = say, chunk: int = 64,
    windows: Sequence[int] | None = None,
) -> Path:  # fmt: skip
    """Convert ``model_dir`` into the model directory ``out`` and return it.

    ``windows``: the cache sizes of the decode nets (default ``decode_windows(context)``);
    the context is always one of them.
    """
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if activations not in ACTIVATIONS:
        raise UserError(f"--activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    group_size = group_size if mode != "f16" else 0
    model_dir, out = Path(model_dir), Path(out)
    for name in TOKENIZER_FILES:
        if not (model_dir / name).is_file():
            raise UserError(f"{model_dir / name}: not found (the converted directory needs the tokenizer too)")
    previous = check_output_dir(out)
    w = load_weights(model_dir, upcast=False)
    config = w.config
    if not 2 <= context <= config.max_position_embeddings:
        raise UserError(f"--context {context} is out of range: this model allows 2 to {config.max_position_embeddings}")
    chunk = min(chunk, context)
    if chunk < 1:
        raise UserError(f"--chunk must be at least 1, got {chunk}")
    windows = sorted({*(windows or decode_windows(context)), context})  # the last window is the whole cache
    if windows[0] < 1 or windows[-1] != context:
        raise UserError(f"--decode-windows {','.join(map(str, windows))}: each must be 1 to the context {context}")
    if mode != "f16" and (group_size <= 0 or config.hidden_size % group_size):
        raise UserError(f"--group-size must divide the hidden size {config.hidden_size}, got {group_size}")

    return_large_frees_to_the_system()
    writers = graph_writers(w, context, chunk, windows)
    precision = quantization(mode, activations)
    toolchain.fetch()  # once, before the workers start: the only download besides `fetch-simulator`
    log(f"converting {model_dir} to {out} ({precision}, group {group_size}, context {context}, chunk {chunk}): "
        f"{len(writers)} graphs")
    clear_leftovers(out, log)
    staging = staging_dir(out)
    try:
        build_into(staging, writers, precision, group_size, jobs, log)
        HostEmbedding.write(staging, w.embed_tokens, w.embed_positions[: context + POSITION_OFFSET], w.project_in)
        for name in TOKENIZER_FILES:
            shutil.copyfile(model_dir / name, staging / name)
        files = [p.name for p in staging.iterdir()]
        source = model_dir.resolve().name
        manifest = Manifest(config, mode, activations, group_size, context, chunk, tuple(windows), source)
        atomic_write(staging / MANIFEST, manifest.to_json(files), mode=0o644)
    except BaseException as error:
        discard(staging, error, log)
        raise
    swap_in(staging, out, previous)
    size = (out / BMODEL).stat().st_size
    log(f"done: {out / BMODEL} is {size / 2**20:.1f} MiB")
    return out


def build_into(
    folder: Path, writers: dict[str, Callable[[Path], tuple[Path, Feed]]], precision: str, group_size: int,
    jobs: int | None, log: Callable[[str], None],
) -> None:  # fmt: skip
    """Write and compile every graph under ``folder/build`` (``jobs`` at once) and combine them into
    ``folder/model.bmodel``.

    The disk it takes is bounded by the result's size, not the graphs': a graph's float32
    weights never reach the disk (streamed into tpuc-opt), each later weight file is
    deleted once the next step has read it, and a compiled graph goes into the combined
    bmodel at once, its folder deleted (``combine.Combined``; its binaries that an earlier graph holds, the
    weights the sizes of a layer share and the kernel module, are not stored again).
    """
    build = folder / "build"
    build.mkdir(parents=True, exist_ok=True)
    combined = Combined(build / "binary.part")
    done: list[str] = []
    compiles = Compiles()

    gate = OneLayerAtATime()

    def compile_one(name: str) -> None:
        if not compiles.begin():
            return  # a compile failed or ctrl+c was pressed: the conversion is over
        try:
            with gate.hold(getattr(writers[name], "weights", name)) as release:
                if compiles.stopped:
                    return
                mlir, feed = writers[name](build)
                bmodel = toolchain.compile_top(mlir, precision, group_size, weights_read=release, feed=feed)
            combined.add(bmodel)
            shutil.rmtree(bmodel.parent)
            done.append(name)
            log(f"compiled {name} ({len(done)}/{len(writers)})")
        finally:
            compiles.end()

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        try:
            futures = [pool.submit(compile_one, name) for name in writers]
            for future in futures:
                future.result()  # the first failure names its graph
        except BaseException:
            compiles.stop_and_wait()
            combined.close()
            raise
    log(f"combining {len(writers)} graphs")
    combined.finish(folder / BMODEL, list(writers))
    shutil.rmtree(build)
