"""``--server URL``: the UI, ``-p`` and ``-c`` as clients of a running ``opt-tpu-tui serve`` (``RemoteEngine``).

Standard library only (http.client), so the clients need no extra. A chat goes to
``/v1/chat/completions`` as OpenAI messages (the preamble as the system message), a
``--raw`` prompt to ``/v1/completions``, both streamed; stopping a reply (ctrl+c in
``-c``) closes the stream, which stops the server's generation within a token. The chat
history stays here: ``RemoteSession`` is a ``ChatSession`` that counts with the server
model's own tokenizer, fetched once (``/tokenizer``: its vocab.json and merges.txt) and
run here, so the turns left out for lack of context and the context meter are the same
as in-process, without a round trip per count. ``RemoteEngine`` is the same for the UI
(engine.py): the UI's chat controller runs on it as on the model loaded in-process, and
its stats pane reads the server's ``/device``. An API key comes from the environment
variable OPT_TPU_TUI_API_KEY.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opt_tpu_tui.chat import Conversation, TranscriptSession, Turn
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.generation import GenerationStats, check_prompt_length
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

try:
    from ssl import SSLCertVerificationError, SSLError
except ImportError:  # a Python built without ssl: no https, so none of its errors either
    SSLError = SSLCertVerificationError = type("NoSSL", (OSError,), {})  # type: ignore[assignment,misc]

KEY_VARIABLE = "OPT_TPU_TUI_API_KEY"
TIMEOUT = 600.0  # seconds without a byte from the server (a long prefill on a slow device is minutes at most)
FINISH_WORDS = {"length": "max_new_tokens", "stop": "stop"}  # OpenAI's finish_reason -> the stats line's stop


@dataclass(frozen=True)
class Origin:
    """Where the server's address came from: ``--server``, or the saved setting ``server`` in ``setting``.

    The errors name it, and say what to do instead of using this server.
    """

    setting: Path | None = None  # the settings file whose "server" it is; None: --server

    def named(self, url: str) -> str:
        return f"--server {url}" if self.setting is None else f'the setting "server" ({url}) in {self.setting}'

    @property
    def source(self) -> str:
        """What follows the address in a message: nothing for --server, which the user just typed."""
        return "" if self.setting is None else f' (the setting "server" in {self.setting})'

    @property
    def fix(self) -> str:
        """What to do about an address that is not one."""
        if self.setting is None:
            return "give one such as http://127.0.0.1:8000"
        return "fix it there, or give --model to run a model here"

    @property
    def instead(self) -> str:
        """What to do about a server that does not answer, besides starting it."""
        if self.setting is None:
            return "Or run without --server to load a model here"
        return f'Or change the setting "server" in {self.setting}, or give --model to run a model here'


FLAG = Origin()


class Unreachable(UserError):
    """No answer from the server at all: ``reason`` is what the connection said, the message adds what to do."""

    def __init__(self, url: str, reason: str, origin: Origin = FLAG) -> None:
        self.url, self.reason = url, reason
        super().__init__(
            f"cannot reach the server at {url}{origin.source}: {reason}; is `opt-tpu-tui serve` running there "
            f"(over SSH: is the `ssh -L` tunnel open)? {origin.instead}"
        )


class ServerClient:
    """The few calls the clients make, to the server at ``url`` (``http://host:port``, with or without ``/v1``)."""

    def __init__(self, url: str, key: str | None = None, origin: Origin = FLAG) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"{origin.named(url)}: not an http:// address ({origin.fix})")
        self.url = url
        self.origin = origin
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        if self.prefix.endswith("/v1"):
            self.prefix = self.prefix[: -len("/v1")]
        self.key = key if key is not None else os.environ.get(KEY_VARIABLE, "").strip() or None

    def connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=TIMEOUT)

    def open(self, method: str, path: str, body: Any = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A request sent and its response's head read; a UserError for an unreachable server or an error status."""
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        connection = self.connect()
        try:
            connection.request(method, self.prefix + path, None if body is None else json.dumps(body), headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise self.unreachable(error) from None
        if response.status >= 400:
            raw = response.read()
            connection.close()
            raise UserError(f"the server at {self.url} said {response.status}: {error_message(raw)}{self.advice(response.status)}")
        return connection, response

    def unreachable(self, error: BaseException) -> UserError:
        """What a request that got no answer says: why, and what to do (an https:// address to the plain-http server
        fails its handshake: say to use http://)."""
        if isinstance(error, SSLError) and not isinstance(error, SSLCertVerificationError):
            plain = urllib.parse.urlunsplit(("http",) + tuple(urllib.parse.urlsplit(self.url))[1:])
            return UserError(
                f"the server at {self.url} does not speak https ({error}): `opt-tpu-tui serve` speaks plain http, "
                f"so use {plain}"
            )
        return Unreachable(self.url, str(getattr(error, "strerror", None) or error or type(error).__name__), self.origin)

    def advice(self, status: int) -> str:
        """What to do about an error ``status`` the user can fix here ('' for the others)."""
        if status != 401:
            return ""
        if self.key is None:
            return f"; these clients send the key in the environment variable {KEY_VARIABLE}, which is not set"
        return f"; these clients send the key in the environment variable {KEY_VARIABLE}, and the server refused that one"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        connection, response = self.open(method, path, body)
        try:
            return json.loads(response.read())
        except (OSError, ValueError, http.client.HTTPException) as error:
            raise UserError(f"the server at {self.url} sent no readable answer ({error})") from None
        finally:
            connection.close()

    def model(self) -> dict[str, Any]:
        """The server's model card: id and context_length."""
        data = self.call("GET", "/v1/models").get("data") or [{}]
        return data[0]

    def tokenizer(self) -> Tokenizer:
        """The server model's tokenizer, built here from its files (the meter counts without asking again)."""
        files = self.call("GET", "/tokenizer")
        vocab, merges = (files.get("vocab"), files.get("merges")) if isinstance(files, dict) else (None, None)
        if not isinstance(vocab, str) or not isinstance(merges, str):
            raise UserError(f"the server at {self.url} does not give its tokenizer (an opt-tpu-tui serve older than this client?)")
        return Tokenizer.from_texts(vocab, merges, f"{self.url}/tokenizer")

    def device(self) -> tuple[str, DeviceSample]:
        """The server's backend name and its device's figures now (what its stats pane would show)."""
        answer = self.call("GET", "/device")
        figures = dict(answer.get("sample") or {})
        known = {name: figures[name] for name in DeviceSample.__dataclass_fields__ if name in figures}
        known["unavailable"] = frozenset(known.get("unavailable") or ())
        return str(answer.get("backend") or "?"), DeviceSample(**known)

    def stream(self, path: str, body: dict[str, Any], cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """The chunks of a streamed reply; the connection closes when ``cancel`` is set, or the caller stops."""
        connection, response = self.open("POST", path, {**body, "stream": True})
        try:
            while cancel is None or not cancel.is_set():
                line = response.readline()
                if not line:
                    raise UserError(self.broken())
                if not line.startswith(b"data: "):
                    continue
                data = line[len(b"data: ") :].strip()
                if data == b"[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise UserError(f"the server at {self.url} said: {chunk['error'].get('message')}")
                yield chunk
        except (OSError, http.client.HTTPException) as error:
            raise UserError(self.broken(error)) from None
        finally:
            connection.close()


    def broken(self, error: BaseException | None = None) -> str:
        """A stream that ended before its end (the server stopped, or the tunnel to it closed)."""
        why = f" ({error})" if error is not None and str(error) else ""
        return (
            f"the connection to the server at {self.url} ended in the middle of the reply{why}: "
            "the server stopped, or the connection to it was cut"
        )


def error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace").strip()[:200] or "no message"


def sampling_fields(settings: SamplingSettings) -> dict[str, Any]:
    """The request fields for ``settings`` (the project's top_k and repetition_penalty as extra fields)."""
    fields = {
        "max_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
        "top_k": settings.top_k, "repetition_penalty": settings.repetition_penalty,
    }  # fmt: skip
    if settings.seed is not None:
        fields["seed"] = settings.seed
    return fields


@dataclass
class RemoteReply:
    """A reply streamed from the server; iterate for text pieces. Stands in for chat.Reply and generation.Generation."""

    client: ServerClient
    path: str
    body: dict[str, Any]
    cancel: threading.Event | None = None
    turn: Turn = field(default_factory=lambda: Turn(user=""))
    stats: GenerationStats = field(default_factory=GenerationStats)
    dropped_turns: int = 0
    prompt_tokens: int = 0  # the prompt as counted here with the server's tokenizer (0: not counted)

    def __iter__(self) -> Iterator[str]:
        stats, text, started = self.stats, "", time.perf_counter()
        stats.prompt_tokens = stats.context_used = self.prompt_tokens
        first, first_tokens = None, 0
        chunks = self.client.stream(self.path, {**self.body, "stream_options": {"include_usage": True}}, self.cancel)
        try:
            for chunk in chunks:
                usage = chunk.get("usage")
                if usage:
                    take_usage(stats, usage)
                for choice in chunk.get("choices") or []:
                    piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                    if choice.get("finish_reason"):  # the project's own reason where the server says it
                        finish = choice["finish_reason"]
                        stats.stop_reason = choice.get("stop_reason") or FINISH_WORDS.get(finish, finish)
                    if piece:
                        now = time.perf_counter()
                        told = choice.get("tokens")  # the server's count so far; the usage has the last word
                        stats.new_tokens = told if isinstance(told, int) and told > stats.new_tokens else stats.new_tokens + 1
                        if first is None:  # the rate until the usage comes: the tokens after the first chunk's
                            first, first_tokens, stats.prefill_seconds = now, stats.new_tokens, now - started
                        stats.decode_steps = stats.new_tokens - first_tokens
                        stats.decode_seconds = now - first
                        stats.context_used = stats.prompt_tokens + stats.new_tokens
                        text += piece
                        self.turn.assistant = text
                        yield piece
        finally:
            chunks.close()
            if self.cancel is not None and self.cancel.is_set():
                stats.stop_reason = "cancelled"
            self.turn.assistant = text.rstrip()
            self.turn.stop_reason = stats.stop_reason
            self.turn.stopped = stats.stop_reason == "cancelled"


@dataclass(frozen=True)
class ServerModel:
    """What the line chat's banner and a ChatSession ask of a backend, for the server's model."""

    name: str  # where it runs: the server's address
    model_name: str
    context_length: int


def take_usage(stats: GenerationStats, usage: dict[str, Any]) -> None:
    """The server's counts and (its own field) the device's times into ``stats``; what is not a number is left."""
    def number(table: Any, key: str, kind: type) -> Any:
        value = table.get(key) if isinstance(table, dict) else None
        return value if isinstance(value, kind) and not isinstance(value, bool) and value >= 0 else None

    for field_name, key in (("prompt_tokens", "prompt_tokens"), ("new_tokens", "completion_tokens")):
        value = number(usage, key, int)
        if value is not None:
            setattr(stats, field_name, value)
    cached = number(usage.get("prompt_tokens_details"), "cached_tokens", int)
    stats.cached_tokens = stats.cached_tokens if cached is None else cached
    stats.decode_steps = max(0, stats.new_tokens - 1)
    timings = usage.get("timings")
    for key, kind in (("prefill_seconds", (int, float)), ("decode_seconds", (int, float)), ("decode_steps", int)):
        value = number(timings, key, kind)  # type: ignore[arg-type]
        if value is not None:
            setattr(stats, key, value)


class RemoteSession(TranscriptSession):
    """A chat whose turns are kept here and whose replies come from the server."""

    def __init__(
        self, client: ServerClient, model: ServerModel, tokenizer: Tokenizer, preamble: str,
        conversation: Conversation | None = None,
    ) -> None:  # fmt: skip
        super().__init__(model, tokenizer, preamble, conversation)
        self.client = client

    def begin(
        self, turn: Turn, kept: list[Turn], ids: list[int], dropped: int, settings: SamplingSettings,
        cancel: threading.Event | None,
    ) -> RemoteReply:  # fmt: skip
        messages = [{"role": "system", "content": self.preamble}]
        for earlier in kept:
            messages += [{"role": "user", "content": earlier.user}, {"role": "assistant", "content": earlier.assistant}]
        messages.append({"role": "user", "content": turn.user})
        body = {"model": self.model.model_name, "messages": messages, **sampling_fields(settings)}
        return RemoteReply(self.client, "/v1/chat/completions", body, cancel, turn, dropped_turns=dropped, prompt_tokens=len(ids))


class RemoteEngine:
    """A running ``opt-tpu-tui serve`` as the UI's engine (engine.py): its model answers, the chat stays here."""

    remote = True
    greedy_only = False  # the server samples as asked, unless its model card says its device picks the tokens

    def __init__(self, client: ServerClient, model: ServerModel, tokenizer: Tokenizer) -> None:
        self.client, self.model, self.tokenizer = client, model, tokenizer
        self.backend = ""  # the server's backend, once its figures say

    @classmethod
    def connect(cls, url: str, origin: Origin = FLAG) -> RemoteEngine:
        """The engine of the server at ``url`` (blocking: the UI calls it in its load worker); ``origin`` is where
        the address came from, which its errors name."""
        client = ServerClient(url, origin=origin)
        card = client.model()
        model = ServerModel(client.url, str(card.get("id", "?")), int(card.get("context_length") or 0))
        engine = cls(client, model, client.tokenizer())
        engine.greedy_only = bool(card.get("greedy_only"))  # an OPT-TPU bmodel's lm_head picks the token
        try:
            engine.backend = client.device()[0]  # its name, once: the status line shows where the model runs
        except UserError:  # a server without /device: its address stands for it
            pass
        return engine

    @property
    def name(self) -> str:
        where = f"{self.client.host}:{self.client.port}"
        return f"{self.backend} @ {where}" if self.backend else f"server {where}"

    @property
    def model_name(self) -> str:
        return self.model.model_name

    @property
    def context_length(self) -> int:
        return self.model.context_length

    def session(self, conversation: Conversation, preamble: str) -> TranscriptSession:
        return RemoteSession(self.client, self.model, self.tokenizer, preamble, conversation)

    def complete(self, text: str, settings: SamplingSettings) -> RemoteReply:
        """``text`` continued by the server; a prompt too long for its context is refused here, in-process words."""
        tokens = len(self.tokenizer.encode(text))
        check_prompt_length(tokens, self.context_length)
        body = {"model": self.model.model_name, "prompt": text, **sampling_fields(settings)}
        return RemoteReply(self.client, "/v1/completions", body, prompt_tokens=tokens)

    def sample_device(self) -> DeviceSample:
        self.backend, sample = self.client.device()
        return sample

    def close(self) -> None:
        """Nothing to free here: the server keeps its model for its other clients."""


__all__ = ["FLAG", "Origin", "RemoteEngine", "RemoteSession", "ServerClient", "Unreachable"]
