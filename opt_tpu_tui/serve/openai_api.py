"""OpenAI's request and response shapes, translated to and from the project's own: no HTTP, no device.

A chat request's messages become the project's chat transcript (chat.py): the system
(or developer) messages are the preamble (the project's default one when there is
none), then user and assistant turns, the last message the user's; consecutive
messages of one role are joined by a newline. The reply stops at the transcript's
``\\nUser:`` as in the UI, besides any ``stop`` strings given. A completion request
continues its prompt as plain text.

Sampling: ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``,
``seed`` and ``stop`` as OpenAI defines them, plus the project's ``top_k`` and
``repetition_penalty``; each is checked against the project's ranges (sampling.LIMITS).
A field left out takes the project's default (sampling.SamplingSettings). A parameter
the server cannot honour (``n`` > 1, ``logprobs``, tools...) is refused with a 400
naming it, not ignored; fields that change nothing (``user``, ``metadata``...) are
accepted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from opt_tpu_tui.chat import DEFAULT_PREAMBLE, STOP_STRINGS, Turn, transcript
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.generation import GenerationStats
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

MAX_MESSAGES = 1024  # messages in one chat request
MAX_STOP = 4  # stop strings, as OpenAI allows
SAMPLING_FIELDS = {  # request field -> SamplingSettings field
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
}
# Fields that would change the reply in ways this server cannot: refused unless at their neutral value.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False),  # no tools are taken, so neither value changes a reply
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}


class ApiError(Exception):
    """An error response in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None,
        kind: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Model:
    """What the translation needs to know of the model the server holds."""

    id: str
    tokenizer: Tokenizer
    context_length: int
    created: int = 0
    greedy_only: bool = False  # the device picks each token (an OPT-TPU bmodel): sampling fields do not apply


@dataclass
class ApiRequest:
    """A validated request, in the project's terms."""

    chat: bool
    ids: list[int]
    settings: SamplingSettings
    stop_strings: tuple[str, ...]
    stream: bool
    include_usage: bool
    text: str  # the prompt as the model sees it (logged only with --log-requests)


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def as_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def _check_model(body: dict[str, Any], model: Model) -> None:
    name = body.get("model")
    if name is None:
        return
    if not isinstance(name, str):
        raise bad("model must be a string", "model")
    if name != model.id:
        raise ApiError(404, f"The model `{name}` does not exist; this server has `{model.id}`", "model", "model_not_found")


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in NEUTRAL.items():
        if name in body and not any(body[name] == value and type(body[name]) is type(value) or body[name] is value
                                    for value in neutral):  # fmt: skip
            raise bad(f"{name} is not supported by this server (it runs one greedy or sampled reply, text only)", name)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"{name} must be a boolean", name)
    return value


def sampling(body: dict[str, Any], defaults: SamplingSettings) -> SamplingSettings:
    """``defaults`` with the request's sampling fields, each checked against the project's ranges."""
    settings = defaults
    for name, field_name in SAMPLING_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if field_name == "max_new_tokens" and name == "max_tokens" and body.get("max_completion_tokens") is not None:
            continue  # max_completion_tokens is the newer name and wins
        if isinstance(value, float) and value.is_integer() and field_name in ("max_new_tokens", "top_k", "seed"):
            value = int(value)
        try:
            replace(SamplingSettings(), **{field_name: value}).validate()
        except UserError as error:
            raise bad(str(error).replace(field_name, name, 1), name) from None
        settings = replace(settings, **{field_name: value})
    return settings


def stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} strings, got {len(items)}", "stop")
    return tuple(checked_text(s, "stop") for s in items if s)


def checked_text(value: str, param: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(f"{param} holds a lone surrogate (\\ud800-\\udfff): not text", param) from None
    return value


def _content(message: dict[str, Any], index: int) -> str:
    """A message's text: a string, or a list of text parts (other parts are refused)."""
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return checked_text(content, param)
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{param}: only text parts are supported", param)
            texts.append(checked_text(part["text"], param))
        return "".join(texts)
    raise bad(f"{param} must be a string or a list of text parts", param)


def chat_prompt(messages: Any) -> str:
    """The transcript for OpenAI ``messages`` (module docstring)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"messages holds {len(messages)} messages; this server takes at most {MAX_MESSAGES}", "messages")
    system: list[str] = []
    said: list[tuple[str, str]] = []  # (role, text), consecutive ones of a role joined
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"messages[{index}] must be an object with a role", f"messages[{index}]")
        role, text = message["role"], _content(message, index)
        if role in ("system", "developer"):
            if said:
                raise bad(f"messages[{index}]: a {role} message must come before the conversation", f"messages[{index}].role")
            system.append(text)
        elif role in ("user", "assistant"):
            if said and said[-1][0] == role:
                said[-1] = (role, said[-1][1] + "\n" + text)
            else:
                said.append((role, text))
        else:
            raise bad(f"messages[{index}]: role {role!r} is not supported (system, user, assistant)", f"messages[{index}].role")
    if not said or said[-1][0] != "user":
        raise bad("the last message must be the user's", "messages")
    if said[0][0] == "assistant":
        said.insert(0, ("user", ""))
    turns = [Turn(user=said[i][1], assistant=said[i + 1][1]) for i in range(0, len(said) - 1, 2)]
    preamble = "\n".join(system) if system else DEFAULT_PREAMBLE
    return transcript(preamble, turns, said[-1][1])


def completion_prompt(prompt: Any, tokenizer: Tokenizer) -> tuple[str, list[int]]:
    """The text and token ids of a completion's ``prompt``: a string, one string in a list, or token ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return checked_text(prompt, "prompt"), tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t <= tokenizer.max_id for t in prompt):
            raise bad(f"prompt holds a token id outside 0..{tokenizer.max_id}", "prompt")
        return tokenizer.decode(prompt), list(prompt)
    raise bad("prompt must be a string or a list of token ids (one prompt per request)", "prompt")


def parse(body: Any, model: Model, chat: bool, defaults: SamplingSettings) -> ApiRequest:
    """A validated request from the JSON ``body`` of /v1/chat/completions (``chat``) or /v1/completions."""
    body = as_object(body)
    _check_model(body, model)
    _check_unsupported(body)
    settings = sampling(body, defaults)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    include_usage = bool(options and _flag(options, "include_usage"))
    stops = stop_strings(body)
    if chat:
        if "messages" not in body:
            raise bad("messages is required", "messages")
        text = chat_prompt(body["messages"])
        ids = model.tokenizer.encode(text)
        stops = STOP_STRINGS + stops
    else:
        if "prompt" not in body:
            raise bad("prompt is required", "prompt")
        text, ids = completion_prompt(body["prompt"], model.tokenizer)
    if len(ids) >= model.context_length:
        raise bad(
            f"This model's maximum context length is {model.context_length} tokens, but the prompt is {len(ids)} "
            "tokens (and a reply needs at least one more).",
            "messages" if chat else "prompt", "context_length_exceeded",
        )  # fmt: skip
    return ApiRequest(chat, ids, settings, stops, stream, include_usage, text)


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(stats: GenerationStats) -> dict[str, Any]:
    """OpenAI's usage, and the project's ``timings`` in it (the device's own times, which a client's stats
    pane shows: timed by the client, text that arrives in one chunk would read as decoded at once)."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": stats.prompt_tokens + stats.new_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
        "timings": {
            "prefill_seconds": stats.prefill_seconds, "decode_seconds": stats.decode_seconds,
            "decode_steps": stats.decode_steps,
        },
    }  # fmt: skip


def response(request: ApiRequest, rid: str, model: str, text: str, finish: str, stats: GenerationStats) -> dict[str, Any]:
    """The whole (non-streaming) reply; its choice names the project's own ``stop_reason`` too (end_reason)."""
    if request.chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice.update(logprobs=None, finish_reason=finish, stop_reason=stats.stop_reason)
    kind = "chat.completion" if request.chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [choice], "usage": usage(stats)}


def chunk(
    request: ApiRequest, rid: str, model: str, text: str | None = None, finish: str | None = None,
    role: bool = False, stats: GenerationStats | None = None, stop_reason: str | None = None, tokens: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """One streamed chunk: the role (chat's first), a piece of text, the finish reason, or (``stats``) the usage.

    Two fields of the project's own, which clients that do not know them ignore: the chunk
    with the finish reason carries ``stop_reason``, how the project says the reply ended
    (GenerationStats.stop_reason: "eos", "max_new_tokens", "context", "stop_string",
    "cancelled"), which OpenAI's two reasons cannot tell apart, and ours mark the reply
    with it; a text chunk carries ``tokens``, the reply's tokens so far (a chunk may hold
    several: app.Inbox), which keeps a client's context meter exact while it streams.
    """
    kind = "chat.completion.chunk" if request.chat else "text_completion"
    out: dict[str, Any] = {"id": rid, "object": kind, "created": int(time.time()), "model": model}
    if stats is not None:
        out.update(choices=[], usage=usage(stats))
        return out
    if request.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice.update(logprobs=None, finish_reason=finish)
    if finish is not None:
        choice["stop_reason"] = stop_reason
    if tokens:
        choice["tokens"] = tokens
    out["choices"] = [choice]
    if request.include_usage:
        out["usage"] = None
    return out


def models_list(model: Model) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(model)]}


def model_card(model: Model) -> dict[str, Any]:
    """OpenAI's model object, with the context length as an extra field (clients use it for their meter)."""
    return {
        "id": model.id, "object": "model", "created": model.created, "owned_by": "opt-tpu-tui",
        "context_length": model.context_length, "greedy_only": model.greedy_only,
    }  # fmt: skip
