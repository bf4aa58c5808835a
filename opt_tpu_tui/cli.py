"""Command line: the TUI by default, or headless one-shot (-p) and line-mode chat (-c)."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from opt_tpu_tui import __version__, paths
from opt_tpu_tui.backends import BACKENDS, DEVICE_HELP, check_model_dir, device_index, open_model
from opt_tpu_tui.chat import Conversation
from opt_tpu_tui.config import Settings, SettingsNotSaved, changed_values, load_settings, update_settings_file
from opt_tpu_tui.demo import DEMO_MODEL_DIR, DEMO_NAME, DEMO_NOTICE, is_demo_model
from opt_tpu_tui.engine import Engine, LocalEngine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.export import run_export
from opt_tpu_tui.generation import GenerationStats, stop_words
from opt_tpu_tui.native_output import hold_closed_descriptors, native_stdout_to, park_native_stdout, terminal_size, to_devnull
from opt_tpu_tui.overrides import Overrides, resolve
from opt_tpu_tui.plain_text import plain_output
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.sampling import LIMITS, SamplingSettings, number

DEMO_PROMPT = "What is Python, and why do people like it?"
GREEDY_NOTICE = (  # an OPT-TPU bmodel's lm_head ends in top-1: it gives the token, not logits
    "opt-tpu-tui: this model decodes greedily (its bmodel picks each token on the TPU): "
    "--temperature, --top-p, --top-k, --repetition-penalty and --seed do not apply"
)
SAMPLING_FLAGS = {  # flag -> (SamplingSettings field, type, metavar, help)
    "--max-new-tokens": ("max_new_tokens", int, "N", "most tokens in a reply"),
    "--temperature": ("temperature", float, "T", "0 picks the likeliest token (greedy)"),
    "--top-p": ("top_p", float, "P", "nucleus sampling mass; 1 turns it off"),
    "--top-k": ("top_k", int, "K", "sample among the k likeliest tokens; 0 turns it off"),
    "--repetition-penalty": ("repetition_penalty", float, "R", "above 1 discourages repeating tokens"),
    "--seed": ("seed", int, "S", "seed of the sampler, for a repeatable reply"),
}


def build_parser(saved: SamplingSettings | None = None) -> argparse.ArgumentParser:
    """The parser; the sampling flags' help shows ``saved`` (the settings file's values) as defaults, with ranges."""
    saved = SamplingSettings() if saved is None else saved
    parser = argparse.ArgumentParser(
        prog="opt-tpu-tui",
        description="Chat with Meta's OPT models on a Sophgo BM1684X TPU or the CPU.",
        epilog="With neither -p nor -c the terminal UI starts. "
        "`opt-tpu-tui convert -h` tells how to compile a checkpoint for the TPU; "
        "`opt-tpu-tui fetch-simulator` fetches the BM1684X simulator that `--backend bmrt` uses on x86; "
        "`opt-tpu-tui export ID|--last [-o FILE]` writes a saved conversation as Markdown; "
        "`opt-tpu-tui doctor [--model DIR] [--json] [--run]` says what is wrong on a TPU box and how to fix it; "
        "`opt-tpu-tui serve -h` tells how to serve a model over HTTP (OpenAI's API). "
        "SIGHUP and SIGTERM end the UI and -c as ctrl+q does (a reply is stopped and saved), "
        "with exit code 128 + the signal's number (129, 143).",
    )
    add_model_flags(parser, "the last one used, else the demo model")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "-p", "--prompt", nargs="?", const=DEMO_PROMPT, metavar="TEXT",
        help="reply to TEXT on stdout and exit ('-' reads stdin; no TEXT uses a demonstration prompt)",
    )  # fmt: skip
    mode.add_argument("-c", "--chat", action="store_true", help="interactive chat in this terminal, line by line")
    parser.add_argument("--raw", action="store_true", help="with -p: continue TEXT as plain text, not as a chat")
    parser.add_argument(
        "--server", metavar="URL",
        help="use the model of a running `opt-tpu-tui serve` at URL instead of loading one (default: the saved "
        "setting server, unless --model, --backend or --context is given)",
    )  # fmt: skip
    parser.add_argument(
        "--preamble", metavar="TEXT",
        help="text that opens the chat transcript, for this run (default: the saved one; as the sampling flags)",
    )  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="no statistics on stderr")
    parser.add_argument(
        "--ascii", action="store_true",
        help="draw with ASCII only, for a terminal without the Unicode glyphs (a terminal that is not "
        "UTF-8 gets ASCII stand-ins for what its charset lacks anyway)",
    )
    parser.add_argument(
        "--no-mouse", action="store_true",
        help="the UI leaves the mouse to the terminal, so its own selection works (also the setting \"mouse\": false)",
    )  # fmt: skip
    sampling = parser.add_argument_group(
        "sampling",
        f"Defaults are the saved settings ({paths.settings_file()}), which the UI's settings pane changes. "
        "A flag given applies to this run only, in -p, -c and the UI alike: the UI's settings pane shows its "
        "value marked +, and saves it as a default only if it is changed there; a conversation's own "
        "settings still win for that conversation.",
    )
    for flag, (field, kind, metavar, help_text) in SAMPLING_FLAGS.items():
        help_text = f"{help_text}; default {saved_value(saved, field)}, range {flag_range(field)}"
        sampling.add_argument(flag, dest=field, type=kind, metavar=metavar, help=help_text.replace("%", "%%"))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def saved_value(saved: SamplingSettings, field: str) -> str:
    value = getattr(saved, field)
    return "a fresh draw each reply" if value is None else number(value)


def flag_range(field: str) -> str:
    low, high, _ = LIMITS[field]
    return f"{number(low)} to {number(high)}"


def build_convert_parser() -> argparse.ArgumentParser:
    from opt_tpu_tui.converted import ACTIVATIONS, DEFAULT_GROUP_SIZE, MODES

    parser = argparse.ArgumentParser(
        prog="opt-tpu-tui convert",
        description="Compile a Hugging Face OPT checkpoint into a BM1684X model directory (bmodel, manifest, "
        "tokenizer) with TPU-MLIR, which is fetched with pip into the user cache on first use (as "
        "`opt-tpu-tui fetch-simulator` does).",
    )
    parser.add_argument("--model", metavar="DIR", type=Path, required=True, help="the Hugging Face OPT checkpoint")
    parser.add_argument("--out", metavar="DIR", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--mode", choices=MODES, default="int4", help="weight precision (default: int4)")
    parser.add_argument(
        "--group-size", metavar="G", type=int, default=DEFAULT_GROUP_SIZE,
        help=f"int8/int4 quantisation group along K (default: {DEFAULT_GROUP_SIZE}; 64 is a little more precise, "
        "about 3 %% slower)",
    )
    parser.add_argument("--context", metavar="N", type=int, default=512, help="static context length (default: 512)")
    parser.add_argument(
        "--chunk", metavar="T", type=int, default=64, help="prompt tokens one prefill launch runs (default: 64)"
    )
    parser.add_argument(
        "--decode-windows", metavar="N,N", type=window_list,
        help="cache sizes the decode graphs are compiled for; each token runs the smallest that holds the cache "
        "(default: the context, its half, quarter... down to 128, at most 4)",
    )  # fmt: skip
    parser.add_argument(
        "--activations", choices=ACTIVATIONS, default="f16", help="16-bit activation type (default: f16, see README)"
    )
    parser.add_argument("--jobs", metavar="N", type=int, help="graphs compiled at once (default: one per core)")
    return parser


def window_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,256,512, got {text!r}") from None


def run_convert(argv: list[str]) -> int:
    from opt_tpu_tui.convert.build import convert

    args = build_convert_parser().parse_args(argv)
    convert(
        args.model, args.out, args.mode, args.group_size, args.context, args.activations, args.jobs,
        chunk=args.chunk, windows=args.decode_windows,
    )  # fmt: skip
    return 0


def run_fetch_simulator(argv: list[str]) -> int:
    """``opt-tpu-tui fetch-simulator``: the one command (besides ``convert``) that downloads tpu-mlir."""
    from opt_tpu_tui import toolchain

    argparse.ArgumentParser(
        prog="opt-tpu-tui fetch-simulator",
        description=f"Download tpu-mlir {toolchain.VERSION} (about 310 MB, checked against its pinned SHA-256) and "
        "unpack its BM1684X compiler, runtime and simulator into the user cache; chatting never downloads it.",
    ).parse_args(argv)
    print(toolchain.fetch())
    return 0


def session_settings(args: argparse.Namespace) -> Overrides:
    """The sampling flags and ``--preamble`` given on the command line: this run's values over the saved
    defaults, in every front end (overrides.resolve), checked against their ranges."""
    return Overrides.given({spec[0]: getattr(args, spec[0]) for spec in SAMPLING_FLAGS.values()}, args.preamble)


def format_stats(stats: GenerationStats, load_seconds: float | None = None) -> str:
    """The stats line: with ``load_seconds``, first how long the model took to load (a big bmodel: tens of seconds)."""
    stop = stop_words(stats.stop_reason)
    loaded = f"model loaded in {load_seconds:.1f} s, " if load_seconds is not None else ""
    return (
        f"[{loaded}{stats.prompt_tokens} prompt tokens ({stats.cached_tokens} cached) in {stats.prefill_seconds:.2f} s, "
        f"{stats.new_tokens} new at {stats.tokens_per_second:.1f} tok/s, stop: {stop}]"
    )


def stream_out(pieces: Iterable[str]) -> None:
    """Print a reply as it streams, with its control characters made visible (safe_text.py)."""
    for piece in pieces:
        write_out(terminal_safe(piece))


def terminal_width(stream: object) -> int | None:
    """The columns of the terminal ``stream`` is; None for a pipe or a file."""
    try:
        size = terminal_size((stream.fileno(),))  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):  # no descriptor at all (a replaced stream)
        return None
    return size[0] if size else None


def for_terminal(text: str, width: int | None) -> str:
    """``text`` wrapped between words at ``width`` columns (the terminal's own wrap breaks words); as it is
    for a pipe or a file (None), where one line a message is easier to read back."""
    if width is None:
        return text
    return textwrap.fill(text, width=max(20, width - 1), break_on_hyphens=False, break_long_words=False)


def write_out(text: str) -> None:
    """Write and flush ``text`` to stdout; a failed write (a full disk, a closed pipe) ends the run cleanly.

    The unwritten text is dropped (stdout is pointed at /dev/null) so Python's flush
    at exit does not fail again with a second message.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as error:
        to_devnull(sys.stdout)
        if isinstance(error, BrokenPipeError):
            raise
        raise UserError(f"stdout: cannot write the reply ({error.strerror or error})") from None


def plain_streams(ascii_only: bool) -> None:
    """Stand-ins for what the terminal's charset cannot show, on every stream the app writes (plain_text.py).

    Textual draws on the original stderr, ``-p`` and ``-c`` on stdout.
    """
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stderr__) if s is not None}.values():
        plain_output(stream, ascii_only=ascii_only)


def print_stats(stats: GenerationStats, load_seconds: float | None = None) -> None:
    """The stats line on stderr, on a line of its own: stdout is flushed first, as both may share a terminal."""
    sys.stdout.flush()
    print(format_stats(stats, load_seconds), file=sys.stderr)


def tolerate_bad_bytes(stream: object) -> None:
    """Let ``stream`` (stdin) decode invalid UTF-8 as surrogates, which ``valid_text`` then names, instead of raising."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")


def valid_text(text: str, source: str) -> str:
    """``text``, or a UserError naming ``source`` and the first byte that is not UTF-8 (the tokenizer needs UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = ord(text[error.start]) - 0xDC00 if 0xDC80 <= ord(text[error.start]) <= 0xDCFF else ord(text[error.start])
        raise UserError(f"{source}: not valid UTF-8 (byte 0x{bad:02x} at character {error.start})") from None
    return text


def looks_like_hub_id(model: Path) -> bool:
    """Whether ``model`` is nothing here but reads as a Hugging Face model id, ``owner/name`` (facebook/opt-125m)."""
    if model.exists() or model.is_symlink():
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", str(model)) is not None


def server_for(args: argparse.Namespace, settings: Settings) -> str | None:
    """The server to use instead of loading a model: ``--server``, else the saved setting ``server`` unless the
    command line picks a model to load here (``--model``, ``--backend``, ``--context`` or ``--device``).

    ``--server`` with one of those is refused, in every mode: the server's model answers.
    """
    picking = [flag for flag, given in (("--model", args.model is not None), ("--backend", args.backend != "auto"),
                                        ("--context", args.context is not None), ("--device", args.device != 0)) if given]  # fmt: skip
    if args.server is not None:
        if picking:
            raise UserError(f"{' and '.join(picking)} choose the model loaded here; with --server the server's model answers")
        return str(args.server)
    return None if picking else settings.server


def add_model_flags(parser: argparse.ArgumentParser, default_model: str) -> None:
    """--model, --backend, --context and --device: what picks the model to load (the app's modes and serve)."""
    parser.add_argument(
        "--model", metavar="DIR", type=Path,
        help=f"model directory: a Hugging Face OPT checkpoint or a converted bmodel; {DEMO_NAME} is the built-in "
        f"demo model (./{DEMO_NAME} a folder of that name) (default: {default_model})",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="inference backend, for this run (default: auto, which picks by what the model directory holds)",
    )  # fmt: skip
    parser.add_argument("--context", metavar="N", type=int, help="context length in tokens (default: the model's)")
    parser.add_argument("--device", metavar="N", type=device_index, default=0, help=DEVICE_HELP)


def named_model(model: Path | None) -> tuple[Path, bool] | None:
    """The folder ``--model`` names and whether it is the demo model; None without --model.

    A Hugging Face model id that is no folder here says how to fetch it; a folder that
    holds no model is refused before anything loads.
    """
    if model is None:
        return None
    if str(model) == DEMO_NAME:  # the keyword; ./demo is a folder of that name
        return DEMO_MODEL_DIR, True
    if looks_like_hub_id(model):
        raise UserError(
            f"{model}: no such model directory; as a Hugging Face model id it has to be downloaded into a "
            f"folder first (opt-tpu-tui downloads nothing), e.g. `hf download {model} --local-dir "
            f"{model.name}` (huggingface-cli in older huggingface_hub), then --model {model.name}"
        )
    check_model_dir(model)
    return model, is_demo_model(model)


def resolve_model(args: argparse.Namespace, settings: Settings) -> tuple[Path, str, bool]:
    """The model directory, backend and whether it is the demo: --model, else the last model used, else the demo.

    The backend is ``--backend`` for this run: the one an earlier run used is not
    reused (a bmrt run would otherwise pin every later one to the simulator).
    """
    named = named_model(args.model)
    if named is not None:
        return named[0], args.backend, named[1]
    if settings.last_model:
        last = Path(settings.last_model)
        if last.is_dir():
            return last, args.backend, False
        print(f"opt-tpu-tui: the last model used, {last}, is gone; using the demo model", file=sys.stderr)
    return DEMO_MODEL_DIR, args.backend, True


def remember_model(saved: Settings, model_dir: Path) -> None:
    """Remember ``model_dir`` as the last model used (not the backend: --backend is per run), best effort.

    Written only when it changed (several instances may share the file). A settings
    folder that cannot be written (a read-only home) must not cost the reply: one line says so.
    """
    remembered = replace(saved, last_model=str(model_dir.resolve()))
    try:
        update_settings_file(changed_values(saved, remembered))
    except SettingsNotSaved as error:
        print(f"opt-tpu-tui: warning: not remembered as the last model used: {error}", file=sys.stderr)


def read_prompt(prompt: str) -> str:
    """The text of ``-p``: ``prompt``, or stdin for ``-`` (saying so on a terminal), refused when empty.

    Called before the model loads, so that a mistake costs no loading time.
    """
    if prompt == "-":
        if sys.stdin.isatty():
            print("opt-tpu-tui: reading the prompt from stdin until ctrl+d", file=sys.stderr)
        tolerate_bad_bytes(sys.stdin)
        text = valid_text(sys.stdin.read(), "stdin")
    else:
        text = valid_text(prompt, "the prompt")
    if not text.strip():
        raise UserError("the prompt is empty")
    return text


def run_prompt(args: argparse.Namespace, engine: Engine, settings: SamplingSettings) -> int:
    text = args.prompt
    reply = engine.complete(text, settings) if args.raw else engine.session(Conversation(), args.preamble).send(text, settings)
    stats = reply.stats
    try:
        stream_out(reply)
    except KeyboardInterrupt:
        stats.stop_reason = "cancelled"
    write_out("\n")
    if not args.quiet:
        print_stats(stats, getattr(args, "load_seconds", None))
    return 130 if stats.stop_reason == "cancelled" else 0


def run_engine(args: argparse.Namespace, engine: Engine, settings: SamplingSettings) -> int:
    """``-p`` or ``-c`` with ``engine``, loaded here or a server's; the exit status."""
    if engine.greedy_only and not args.quiet:
        print(for_terminal(GREEDY_NOTICE, terminal_width(sys.stderr)), file=sys.stderr)
    if args.prompt is not None:
        return run_prompt(args, engine, settings)
    from opt_tpu_tui.line_chat import run_chat

    return run_chat(args, engine, settings)


def settings_for_parser() -> tuple[Settings, str | None, UserError | None]:
    """The saved settings (whose sampling values ``-h`` shows), a warning, and an error that keeps them unread.

    An unreadable settings file must not stop ``-h``: the error is raised after parsing.
    """
    try:
        saved, warning = load_settings()
    except UserError as error:
        return Settings(), None, error
    return saved, warning, None


def closed_streams(args: argparse.Namespace) -> None:
    """A UserError, before the model loads, where ``-p`` or ``-c`` needs a stream the shell closed (``>&-``)."""
    if sys.stdout is None:
        raise UserError("stdout is closed, so the reply has nowhere to go (redirect it to a file instead)")
    if sys.stdin is None and (args.chat or args.prompt == "-"):
        raise UserError(f"stdin is closed, so {'-c' if args.chat else '-p -'} has nothing to read")


def out_of_memory(model_dir: Path | None) -> str:
    """What running out of memory (numpy's MemoryError) is called, with the size of the model's files."""
    if model_dir is None:
        return "out of memory"
    try:
        size = sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file())
    except OSError:
        return f"out of memory loading or running the model {model_dir}"
    return (
        f"out of memory loading or running the model {model_dir} ({size / 2**20:.0f} MiB of files; the CPU backend "
        "holds the weights as float32); close other programs, raise `ulimit -v`, or choose a smaller model"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    hold_closed_descriptors()  # a closed stdout's number is not handed to the next file opened
    plain_streams(ascii_only="--ascii" in argv)  # before anything is printed, errors included
    model_dir: Path | None = None
    try:
        if argv[:1] == ["convert"]:
            return run_convert(argv[1:])
        if argv[:1] == ["fetch-simulator"]:
            return run_fetch_simulator(argv[1:])
        if argv[:1] == ["export"]:
            return run_export(argv[1:])
        if argv[:1] == ["doctor"]:
            from opt_tpu_tui.doctor import run_doctor

            return run_doctor(argv[1:])
        if argv[:1] == ["serve"]:
            from opt_tpu_tui.serve.command import run_serve

            return run_serve(argv[1:])
        saved, warning, unreadable = settings_for_parser()
        try:
            args = build_parser(saved.sampling).parse_args(argv)
        except SystemExit:  # -h, --version, a usage error: the settings' problem is said all the same
            if warning or unreadable:
                print(f"opt-tpu-tui: warning: {warning or unreadable}", file=sys.stderr)
            raise
        if unreadable is not None:
            raise unreadable
        if args.raw and args.prompt is None:
            raise UserError("--raw goes with -p/--prompt")
        args.server_setting = None if args.server is not None else paths.settings_file()  # where an address is from
        args.server = server_for(args, saved)
        model_dir, backend_kind, demo = (DEMO_MODEL_DIR, args.backend, False) if args.server else resolve_model(args, saved)
        session = session_settings(args)
        if args.prompt is None and not args.chat:
            from opt_tpu_tui.tui import run as run_tui

            if args.no_mouse:
                saved = replace(saved, mouse=False)  # for this run only: not saved
            return run_tui(
                model_dir, backend_kind, args.context, demo, saved, [warning] if warning else [], session=session,
                server=args.server, device=args.device, server_setting=args.server_setting,
            )  # fmt: skip
        if warning:
            print(f"opt-tpu-tui: warning: {warning}", file=sys.stderr)
        closed_streams(args)
        settings, args.preamble = resolve(saved.sampling, saved.preamble, session)
        if args.prompt is not None:  # after every check of the flags, before the model loads
            args.prompt = read_prompt(args.prompt)
        if args.server is not None:  # the model of a running server, none loaded here
            from opt_tpu_tui.serve.client import Origin, RemoteEngine

            return run_engine(args, RemoteEngine.connect(args.server, Origin(args.server_setting)), settings)
        if demo and not args.quiet:
            print(for_terminal(DEMO_NOTICE, terminal_width(sys.stderr)), file=sys.stderr)
        with native_stdout_to(paths.native_output_log()):  # what the TPU runtime prints, out of the replies
            started = time.perf_counter()
            backend, tokenizer = open_model(model_dir, backend_kind, args.context, args.device)
            args.load_seconds = time.perf_counter() - started  # for -p's stats line
        try:
            if not demo:
                remember_model(saved, model_dir)
            engine = LocalEngine(backend, tokenizer)
            if args.prompt is None:
                return run_engine(args, engine, settings)  # -c parks the runtime's output around each reply
            with native_stdout_to(paths.native_output_log(), append=True):
                return run_engine(args, engine, settings)
        finally:
            backend.close()
    except UserError as error:
        print(f"opt-tpu-tui: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"opt-tpu-tui: error: {out_of_memory(model_dir)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def run() -> None:
    """The console script: ``main``, then what C libraries print at process exit goes to the log, not stdout."""
    code = main()
    try:
        if sys.stdout is not None:  # None: started with stdout closed
            sys.stdout.flush()
    except OSError:
        to_devnull(sys.stdout)
    park_native_stdout(paths.native_output_log())
    sys.exit(code)
