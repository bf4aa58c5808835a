"""Multi-turn chat on a base model, as a plain-text transcript.

OPT has no chat template, so a conversation is written as a transcript the model
continues. The format, exactly:

    {preamble}

    User: {first message}
    Assistant: {first reply}
    User: {second message}
    Assistant:

The reply is what the model writes after the last ``Assistant:``, up to the next
``\\nUser:`` (the stop string), with surrounding white space trimmed. When the
transcript would not leave room for the reply in the context, the oldest turns are
left out of the prompt (they stay in the history), with a quarter of the context's
worth more than needed, so that the next turns keep their start; the preamble is always
kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.generation import Generation, GenerationStats
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

DEFAULT_PREAMBLE = "A conversation between a curious user and a helpful, knowledgeable assistant."
USER, ASSISTANT = "User:", "Assistant:"
STOP_STRINGS = ("\n" + USER,)


@dataclass
class Turn:
    user: str
    assistant: str = ""
    stopped: bool = False  # the reply was cut short by the user
    stop_reason: str | None = field(default=None, compare=False)  # how the reply ended (GenerationStats.stop_reason)
    model: str = field(default="", compare=False)  # the name of the model that wrote the reply ('' if not known)


@dataclass
class Conversation:
    """The open chat: its turns in order, its id in the history (None until first saved), and its own settings
    (kept here until it is saved, and saved with it)."""

    turns: list[Turn] = field(default_factory=list)
    id: int | None = None
    overrides: Overrides = field(default_factory=Overrides)


def transcript(preamble: str, turns: list[Turn], user: str) -> str:
    """The prompt text for a new ``user`` message after ``turns``."""
    lines = [preamble.strip(), ""] if preamble.strip() else []
    for turn in turns:
        lines += [f"{USER} {turn.user.strip()}", f"{ASSISTANT} {turn.assistant.strip()}"]
    lines += [f"{USER} {user.strip()}", ASSISTANT]
    return "\n".join(lines)


class PromptLengths:
    """The token count of transcript(preamble, turns[first:sent], turns[sent].user) for any ``first`` and ``sent``,
    from one encode per turn.

    The tokenizer's byte-level pre-tokenizer never joins a line break to the letter after
    it, and every line of a transcript starts with "User:" or "Assistant:", so a prompt's
    tokens are its preamble's, one per line break, and each turn's lines' own.
    """

    def __init__(self, tokenizer: Tokenizer, preamble: str, turns: list[Turn]) -> None:
        def count(text: str) -> int:
            return len(tokenizer.encode(text, add_bos=False))

        self._head = len(tokenizer.encode(preamble.strip())) + (2 if preamble.strip() else 0)  # the BOS; "\n\n"
        self._open = [count(f"{USER} {turn.user.strip()}\n{ASSISTANT}") for turn in turns]
        self._sums = [0]  # tokens of turns[:i], each with its reply and the line break after it
        for turn in turns:
            self._sums.append(self._sums[-1] + count(f"{USER} {turn.user.strip()}\n{ASSISTANT} {turn.assistant.strip()}") + 1)

    def prompt(self, first: int, sent: int) -> int:
        return self._head + self._sums[sent] - self._sums[first] + self._open[sent]


@dataclass(frozen=True)
class ContextUse:
    """The context meter: the tokens the model sees, of how many, and whether the next message leaves old turns out."""

    used: int
    size: int
    full: bool


class ModelCard(Protocol):
    """What a session asks of the model it counts for: a Backend, or a server's model (serve/client.py)."""

    @property
    def model_name(self) -> str: ...

    @property
    def context_length(self) -> int: ...


class ReplyStream(Protocol):
    """A reply as the chat's callers see it, in-process (Reply) or from a server (serve/client.py's RemoteReply):
    iterate for text pieces; ``turn`` fills in as it streams, ``stats`` counts it."""

    turn: Turn
    dropped_turns: int

    @property
    def stats(self) -> GenerationStats: ...

    @property
    def prompt_tokens(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...


@dataclass
class Reply:
    """One assistant reply being generated; iterate for text pieces, ``turn`` fills in as it streams."""

    turn: Turn
    generation: Generation
    dropped_turns: int = 0  # oldest turns left out of the prompt for lack of context

    @property
    def stats(self) -> GenerationStats:
        return self.generation.stats

    @property
    def prompt_tokens(self) -> int:
        """The prompt as sent, in tokens (the context meter's start while the reply streams)."""
        return len(self.generation.prompt_ids)

    def __iter__(self) -> Iterator[str]:
        text = ""
        for piece in self.generation:
            if not text:
                piece = piece.lstrip()
            text += piece
            self.turn.assistant = text
            if piece:
                yield piece
        self.turn.assistant = text.rstrip()
        self.turn.stop_reason = self.generation.stats.stop_reason
        self.turn.stopped = self.turn.stop_reason == "cancelled"


class TranscriptSession:
    """A conversation: its turns, its preamble, and how its prompts fit the model's context.

    What continues it is the subclass's ``begin``: ChatSession runs the backend here,
    serve/client.py's RemoteSession asks a server. Both count with the model's own
    tokenizer, so the turns left out for lack of context are the same either way.
    """

    def __init__(
        self, model: ModelCard, tokenizer: Tokenizer, preamble: str = DEFAULT_PREAMBLE,
        conversation: Conversation | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        self.preamble = preamble
        self.conversation = conversation if conversation is not None else Conversation()
        self._first_kept: Turn | None = None  # the oldest turn in the last prompt (first_kept)

    @property
    def turns(self) -> list[Turn]:
        return self.conversation.turns

    def prompt_ids(self, user: str, reserve: int) -> tuple[list[int], int]:
        """Token ids of the prompt for ``user``, dropping the oldest turns to leave ``reserve`` free.

        A dropped turn changes the start of the prompt, so the backend runs all of it
        again. So turns once left out stay out, and when more must go, enough go to free
        another quarter of the context: the next turns then find their start in the cache
        again, instead of each paying for a whole prompt. Returns the ids and how many
        turns were dropped.
        """
        if not user.strip():
            raise UserError("the message is empty")
        ids, dropped = self._fit(user, reserve, self.first_kept(reserve))
        context = self.model.context_length
        if len(ids) >= context:
            raise UserError(
                f"the message is {len(ids)} tokens with the preamble, but the context holds {context}: shorten it "
                "(or the preamble)"
            )
        return ids, dropped

    def _fit(self, user: str, reserve: int, first: int) -> tuple[list[int], int]:
        """The prompt for ``user`` after the turns from ``first`` on, with more turns left out while
        it leaves less than ``reserve`` free (a quarter of the context more from the first drop on)."""
        context, history = self.model.context_length, self.turns
        room = context
        for dropped in range(first, len(history) + 1):
            ids = self.tokenizer.encode(transcript(self.preamble, history[dropped:], user))
            if len(ids) + reserve <= room:
                return ids, dropped
            room = context - context // 4
        return ids, len(history)

    def first_kept(self, reserve: int) -> int:
        """The index of the oldest turn the model still sees: the first one the last prompt held.

        A conversation opened from the history (or whose turns changed under the session:
        an edit, another variant) has no last prompt here; its boundary is where sending
        its messages one by one, with this ``reserve``, would have put it (replayed), so
        the meter and the marker read the same as they did in the session that wrote it,
        and the same on every reopening.
        """
        turns = self.turns
        for index, turn in enumerate(turns):
            if turn is self._first_kept:
                return index
        if not turns:
            return 0
        first = self._replay(reserve)
        self._first_kept = turns[first]
        return first

    def _replay(self, reserve: int) -> int:
        """Where send (_fit) left the boundary after the last turn, had every turn been sent with ``reserve``.

        Counted, not encoded prompt by prompt (a 300-turn chat opens in 300 short encodes):
        see PromptLengths.
        """
        turns, context = self.turns, self.model.context_length
        lengths = PromptLengths(self.tokenizer, self.preamble, turns)
        first = 0
        for sent in range(len(turns)):  # as send did for each turn in turn: _fit from the boundary it found
            if lengths.prompt(first, sent) + reserve <= context:
                continue
            first += 1
            while first < sent and lengths.prompt(first, sent) + reserve > context - context // 4:
                first += 1
        return first

    def reserve(self, settings: SamplingSettings) -> int:
        """The room a reply is given in the context: its token limit, at most half the context."""
        return min(settings.max_new_tokens, self.model.context_length // 2)

    def next_prompt_tokens(self, reserve: int) -> int:
        """Tokens the next prompt takes before the user's words: the preamble, the turns still
        kept, and the frame of the new turn ("User:" ... "Assistant:"). The context meter."""
        kept = self.turns[self.first_kept(reserve) :]
        return len(self.tokenizer.encode(transcript(self.preamble, kept, "")))

    def context_use(self, reserve: int, reply: ReplyStream | None = None) -> ContextUse:
        """The one definition of the context meter (the status line's, at every moment): the tokens the model sees.

        While ``reply`` streams, that is its prompt as sent (the oldest turns already
        left out) and the tokens generated so far, from the reply's first moment on (not
        0 until the prefill ends). Otherwise it is the next prompt before the user's
        words (next_prompt_tokens), which after a reply is that reply's prompt and text
        and a turn's frame. Full: the next message, with its reply's ``reserve``, would
        leave the oldest turns out; a figure past the context (a turn that filled it)
        reads as the context, full.
        """
        size = self.model.context_length
        if reply is not None:
            used = reply.prompt_tokens + reply.stats.new_tokens
        else:
            used = self.next_prompt_tokens(reserve)
        return ContextUse(min(used, size), size, used + reserve > size)

    def send(self, user: str, settings: SamplingSettings, cancel: threading.Event | None = None) -> ReplyStream:
        """Start a reply to ``user``; the new turn is appended now and completed as the reply streams."""
        ids, dropped = self.prompt_ids(user, self.reserve(settings))
        turn = Turn(user=user, model=self.model.model_name)
        kept = self.turns[dropped:]  # what the prompt holds before the new message
        self.turns.append(turn)
        self._first_kept = self.turns[dropped]  # the new turn itself when every earlier one was dropped
        return self.begin(turn, kept, ids, dropped, settings, cancel)

    def begin(
        self, turn: Turn, kept: list[Turn], ids: list[int], dropped: int, settings: SamplingSettings,
        cancel: threading.Event | None,
    ) -> ReplyStream:  # fmt: skip
        """The reply to ``turn``, whose prompt is ``ids`` (``kept`` turns before it, ``dropped`` left out)."""
        raise NotImplementedError

    def edit(
        self, index: int, user: str, settings: SamplingSettings, cancel: threading.Event | None = None
    ) -> ReplyStream:
        """Answer ``user`` in place of the message at ``index``: the turns from there on give way.

        (The history keeps them as an alternative: HistoryStore.start_turn.) If the new
        message cannot be sent, the turns stay as they were.
        """
        if not 0 <= index < len(self.turns):
            raise UserError(f"there is no message {index + 1} to edit")
        replaced = self.turns[index:]
        del self.turns[index:]
        try:
            return self.send(user, settings, cancel)
        except UserError:
            self.turns.extend(replaced)
            raise

    def regenerate(self, settings: SamplingSettings, cancel: threading.Event | None = None) -> ReplyStream:
        """Answer the last message again (its reply gives way)."""
        if not self.turns:
            raise UserError("there is no reply to regenerate")
        return self.edit(len(self.turns) - 1, self.turns[-1].user, settings, cancel)


class ChatSession(TranscriptSession):
    """A conversation continued in-process, by ``backend``."""

    def __init__(
        self, backend: Backend, tokenizer: Tokenizer, preamble: str = DEFAULT_PREAMBLE,
        conversation: Conversation | None = None,
    ) -> None:  # fmt: skip
        super().__init__(backend, tokenizer, preamble, conversation)
        self.backend = backend
        self.tokenizer: Tokenizer = tokenizer

    def begin(
        self, turn: Turn, kept: list[Turn], ids: list[int], dropped: int, settings: SamplingSettings,
        cancel: threading.Event | None,
    ) -> Reply:  # fmt: skip
        generation = Generation(self.backend, self.tokenizer, ids, settings, STOP_STRINGS, cancel)
        return Reply(turn, generation, dropped)
