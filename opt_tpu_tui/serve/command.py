"""``opt-tpu-tui serve``: its flags, the API key rule, and the start (imports no HTTP package until then).

The server itself is app.py; this module stays importable without the ``serve`` extra,
so the missing extra is one clear error, not an ImportError.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from opt_tpu_tui.cli import add_model_flags, named_model
from opt_tpu_tui.demo import DEMO_MODEL_DIR
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.serve.client import KEY_VARIABLE

EXTRA_INSTALL = "python3 -m pip install --user './opt-tpu-tui[serve]' (the folder you installed the app from)"
MAX_BODY = 1024 * 1024  # bytes of a request body
HEADER_SECONDS = 10.0  # from a connection's opening (or its last response) to a request's complete headers
BODY_SECONDS = 30.0  # from the headers to the end of the body


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opt-tpu-tui serve",
        description="Hold one model and serve it over HTTP with OpenAI's API (/v1/chat/completions, "
        "/v1/completions, /v1/models), plus /health and /metrics (Prometheus). Needs the extra: "
        f"{EXTRA_INSTALL}.",
        epilog=f"Limits: request bodies up to {MAX_BODY // 1024} KiB, chats up to 1024 messages, headers within "
        f"{HEADER_SECONDS:g} s and the body within {BODY_SECONDS:g} s. Any --host but a loopback one (127.0.0.1, "
        "::1, localhost) needs an "
        f"API key, from --api-key-file or the environment variable {KEY_VARIABLE}, sent by clients as "
        "'Authorization: Bearer KEY'. SIGINT or SIGTERM stops the running reply and exits 0.",
    )
    add_model_flags(parser, "the built-in demo model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0 picks a free one)")
    parser.add_argument(
        "--slots", metavar="N", type=int, default=1,
        help="conversations whose K/V are kept for the next turn (default: 1; more keep copies in RAM, cpu backend)",
    )  # fmt: skip
    parser.add_argument(
        "--queue", metavar="N", type=int, default=16, help="requests that may wait for the device (default: 16)"
    )
    parser.add_argument("--api-key-file", metavar="FILE", type=Path, help="file holding the API key clients must send")
    parser.add_argument("--log-requests", action="store_true", help="log prompts and replies (off by default)")
    return parser


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 in brackets or not) is this machine's loopback: no API key needed."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file or the environment; a UserError when a non-loopback host has none."""
    key = None
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{args.api_key_file}: cannot read the API key ({error})") from None
        if not key:
            raise UserError(f"{args.api_key_file}: the API key file is empty")
    elif os.environ.get(KEY_VARIABLE, "").strip():
        key = os.environ[KEY_VARIABLE].strip()
    if key is None and not is_loopback(args.host):
        raise UserError(
            f"--host {args.host} lets other machines connect, so it needs an API key: --api-key-file FILE, or the "
            f"environment variable {KEY_VARIABLE} (never on the command line, where ps shows it)"
        )
    return key


def check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--slots", args.slots, 1), ("--queue", args.queue, 0), ("--port", args.port, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    if args.port > 65535:
        raise UserError(f"--port {args.port}: must be at most 65535")
    args.model = (named_model(args.model) or (DEMO_MODEL_DIR, True))[0]


def run_serve(argv: list[str]) -> int:
    """The ``serve`` subcommand; returns the exit status."""
    args = build_serve_parser().parse_args(argv)
    check_args(args)
    key = api_key(args)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(f"serve needs its extra (starlette and uvicorn): {EXTRA_INSTALL}") from None
    from opt_tpu_tui.serve.app import serve

    return serve(args, key)
