"""What the chat screen decides, with no Textual in it: sending, resending, regenerating, variants,
the context meter, a conversation's own settings, and what is saved to the history.

The screen (tui/screens/main.py) renders and routes keys; it calls the controller and
draws what the controller says. The controller talks to one engine (engine.py): the
model in this process or a running server (serve/client.py), so both take one path.
A reply runs in the screen's worker thread through ``run``, which saves it as it grows
(persist.run_and_save); ``finish`` then says, on the UI thread, what became of it.
What the user should be told goes to ``notify``, one line each, as the screen's
notifications (text, title, severity, seconds shown).

Tests drive it without Textual: tests/test_chat_controller.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from opt_tpu_tui.chat import ContextUse, Conversation, ReplyStream, TranscriptSession, Turn
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.export import conversation_markdown, export_path, write_text
from opt_tpu_tui.history import HistoryStore, SearchHit, title_for
from opt_tpu_tui.overrides import Overrides, resolve
from opt_tpu_tui.persist import Outcome, run_and_save
from opt_tpu_tui.sampling import SamplingSettings


class TokenBuffer:
    """The hand-off of a reply's text from the worker thread to the UI: the worker pushes pieces under a lock
    (microseconds, never waiting on the UI); a UI timer takes all there is several times a second and renders
    it in one go, so the view redraws at the timer's pace, not per token."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []

    def push(self, piece: str) -> None:
        with self._lock:
            self._pieces.append(piece)

    def take(self) -> str:
        """Everything pushed since the last take, joined ("" if nothing)."""
        with self._lock:
            if not self._pieces:
                return ""
            text = "".join(self._pieces)
            self._pieces.clear()
        return text


BUSY = "A reply is streaming: press escape to stop it first"
Notify = Callable[[str, str, str, float], None]  # (text, title, severity, seconds)
Variants = Dict[int, Tuple[int, int]]  # turn index -> (variant shown, how many): typing's, for 3.8


@dataclass
class Streaming:
    """The reply in flight: what the worker fills and the UI drains."""

    reply: ReplyStream
    cancel: threading.Event
    buffer: TokenBuffer = field(default_factory=TokenBuffer)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Figures:
    """The last reply's figures, for the stats pane (a prefill-less moment keeps the one before)."""

    context_used: int = 0
    prefill_seconds: Optional[float] = None
    cached_tokens: int = 0
    tokens_per_second: Optional[float] = None


def quiet(text: str, title: str, severity: str, seconds: float) -> None:
    """A ``notify`` that tells nobody (scripts and tests that read the return values)."""


class ChatController:
    """One open chat: its conversation, the reply in flight, and the engine that answers."""

    def __init__(self, store: HistoryStore, defaults: Callable[[], tuple[SamplingSettings, str]], notify: Notify = quiet) -> None:
        self.store = store
        self.defaults = defaults  # the saved defaults with this run's command-line values over them
        self.notify = notify
        self.conversation = Conversation()
        self.engine: Engine | None = None
        self.session: TranscriptSession | None = None
        self.streaming: Streaming | None = None
        self.figures = Figures()
        self.overrides_unsaved = False  # a conversation with no id yet: its first reply's end saves them

    # the engine

    def attach(self, engine: Engine) -> None:
        """Reply with ``engine`` from now on (the model has loaded, or the server answered)."""
        self.engine = engine
        self.session = engine.session(self.conversation, self.effective_settings()[1])

    def effective_settings(self) -> tuple[SamplingSettings, str]:
        """The sampling values and preamble the open conversation replies with: its own over the defaults."""
        return resolve(*self.defaults(), self.conversation.overrides)

    # replies

    def send(self, text: str) -> Streaming:
        """Start a reply to ``text``; a UserError (nothing changed) when it cannot be sent."""
        return self._start(lambda session, sampling, cancel: session.send(text, sampling, cancel))

    def resend(self, index: int, text: str) -> Streaming:
        """Answer ``text`` in place of message ``index`` (the turns it replaces stay as an alternative)."""
        return self._start(lambda session, sampling, cancel: session.edit(index, text, sampling, cancel))

    def regenerate(self) -> Streaming:
        """Answer the last message again (its reply stays as an alternative)."""
        if not self.conversation.turns:
            raise UserError("There is no reply to regenerate")
        return self._start(lambda session, sampling, cancel: session.regenerate(sampling, cancel))

    def _start(self, begin: Callable[[TranscriptSession, SamplingSettings, threading.Event], ReplyStream]) -> Streaming:
        if self.streaming is not None:
            raise UserError(BUSY)
        if self.session is None:
            raise UserError("The model is still loading")
        sampling, self.session.preamble = self.effective_settings()
        cancel = threading.Event()
        self.streaming = Streaming(begin(self.session, sampling, cancel), cancel)
        return self.streaming

    def run(self, streaming: Streaming, stopped: Callable[[], bool] = lambda: False) -> Outcome:
        """The reply to its end, saved as it grows (in a worker thread); ``stopped`` is asked after each piece."""

        def emit(piece: str) -> None:
            streaming.buffer.push(piece)
            if stopped():
                streaming.cancel.set()  # the generation stops before its next token

        try:
            return run_and_save(streaming.reply, self.conversation, self.store, emit=emit)
        finally:
            streaming.done.set()

    def stop(self) -> bool:
        """Stop the reply in flight before its next token (False: none is)."""
        if self.streaming is None:
            return False
        self.streaming.cancel.set()
        return True

    def end_stream(self) -> Streaming | None:
        """The reply in flight, no longer in flight (its worker is done)."""
        streaming, self.streaming = self.streaming, None
        return streaming

    def finish(self, streaming: Streaming, outcome: Outcome) -> str:
        """What became of a reply that ended, and the user told why where something went wrong:

        "kept": its turn is in the conversation; "reloaded": it was not saved, so not sent
        (the saved turns are the conversation again); "taken back": it was not sent, and a
        conversation not yet saved has nothing of it.
        """
        turn = streaming.reply.turn
        if any(kept is turn for kept in self.conversation.turns):  # this turn, not an equal one before it
            ending = "kept"
        elif self.conversation.id is not None:
            ending = "reloaded"
            try:
                self.conversation.turns[:] = self.store.load(self.conversation.id)
            except UserError as error:
                self.history_failed(error)
        else:
            ending = "taken back"
        self.take_figures(streaming.reply)
        if outcome.error:
            self.notify(outcome.error, "Reply failed", "error", 8)
        if outcome.unsaved:
            self.notify(f"Not saved: {outcome.unsaved}", "", "warning", 8)
        if outcome.notice:
            self.notify(outcome.notice, "", "warning", 12)
        if self.overrides_unsaved and self.conversation.id is not None:  # set while its first reply streamed
            self.save_overrides()
        return ending

    def take_figures(self, reply: ReplyStream) -> None:
        """The stats pane's figures from ``reply`` so far (a reply still in its prefill keeps the last prefill's)."""
        stats, last = reply.stats, self.figures
        prefill = (stats.prefill_seconds, stats.cached_tokens) if stats.prefill_seconds else (last.prefill_seconds, last.cached_tokens)
        self.figures = Figures(stats.context_used or last.context_used, prefill[0], prefill[1], stats.tokens_per_second)

    # the context meter

    def context_use(self) -> ContextUse | None:
        """The status line's meter (chat.TranscriptSession.context_use): None before the model is there."""
        session = self.session
        if session is None:
            return None
        sampling, session.preamble = self.effective_settings()
        streaming = self.streaming
        return session.context_use(session.reserve(sampling), streaming.reply if streaming else None)

    def kept_turns(self) -> int | None:
        """How many of the last turns the model still sees (the transcript's marker above them); None: no model yet."""
        session = self.session
        if session is None:
            return None
        sampling, session.preamble = self.effective_settings()
        return len(self.conversation.turns) - session.first_kept(session.reserve(sampling))

    # conversations

    def new_conversation(self) -> None:
        """An empty conversation that follows the defaults."""
        self.conversation.turns.clear()
        self.conversation.id = None
        self.conversation.overrides = Overrides()
        self.overrides_unsaved = False
        self.figures = Figures()

    def open(self, conversation_id: int) -> bool:
        """Make the saved conversation the open one; False (the open chat as it was, the user told) if it cannot be read."""
        try:
            turns = self.store.load(conversation_id)
            overrides, problem = self.store.conversation_settings(conversation_id)
        except UserError as error:
            self.history_failed(error)
            return False
        self.conversation.turns[:] = turns
        self.conversation.id = conversation_id
        self.conversation.overrides = overrides
        self.overrides_unsaved = False
        if problem:
            self.notify(problem, "Warning", "warning", 10)
        return True

    def delete(self, conversation_id: int) -> bool:
        """Delete a saved conversation; True when it was the open one (the caller starts a new one)."""
        self.store.delete_conversation(conversation_id)
        return conversation_id == self.conversation.id

    def history_failed(self, error: UserError) -> None:
        """A read found the history damaged (it is unavailable from now on): the one line that says so."""
        self.notify(str(error), "History damaged", "error", 20)

    def no_history(self) -> str | None:
        """Why the history is unavailable (held elsewhere, found damaged), for a list to show in place of entries."""
        return None if self.store.writable else f"No history this run: {self.store.problem}"

    def show_match(self, hit: SearchHit) -> int | None:
        """Show the variant a search's match is in (as ←/→ in the messages screen would); the turn to open at.
        None when that variant cannot be shown (gone meanwhile, or damaged): the conversation opens as it is."""
        if hit.variant:
            try:
                self.store.show_variant(hit.conversation_id, hit.variant)
            except UserError as error:
                self.notify(str(error), "Variant not shown", "warning", 8)
                return None
        return hit.turn

    def variants(self) -> Variants:
        """The open conversation's turns that have alternatives: (variant shown, how many)."""
        if self.conversation.id is None:
            return {}
        try:
            return self.store.variants(self.conversation.id)
        except UserError as error:
            self.history_failed(error)
            return {}

    def switch_variant(self, index: int, step: int) -> tuple[list[Turn], Variants]:
        """Show another variant at message ``index``: the conversation's turns follow."""
        if self.conversation.id is None:
            raise UserError("this conversation is not saved, so it keeps no variants")
        self.store.switch_variant(self.conversation.id, index, step)
        self.conversation.turns[:] = self.store.load(self.conversation.id)
        return self.conversation.turns, self.variants()

    def last_reply(self) -> str:
        """The last finished reply's text; a UserError saying why there is none to take."""
        if self.streaming is not None:
            raise UserError(BUSY)
        turns = self.conversation.turns
        if not turns or not turns[-1].assistant:
            raise UserError("There is no reply yet")
        return turns[-1].assistant

    def export(self) -> Path:
        """The conversation as Markdown in its export file; a UserError when there is nothing or it cannot be written."""
        turns = self.conversation.turns
        if not turns:
            raise UserError("There is nothing to export yet")
        return write_text(export_path(self.conversation.id), conversation_markdown(title_for(turns[0].user), turns, time.time()))

    # a conversation's own settings

    def set_own(self, values: dict[str, object], changed: frozenset[str]) -> None:
        """Make the fields ``changed`` of ``values`` (sampling fields and the preamble) this conversation's own."""
        try:
            overrides = self.conversation.overrides.updated({name: values[name] for name in changed}, *self.defaults())
        except UserError as error:  # the form checked the values already; this is a second line of defence
            self.notify(str(error), "Setting refused", "error", 5)
            return
        self.set_overrides(overrides)

    def follow_defaults(self) -> None:
        if not self.conversation.overrides:
            self.notify("This conversation already follows the defaults", "", "warning", 5)
            return
        self.set_overrides(Overrides())

    def set_overrides(self, overrides: Overrides) -> None:
        """Make ``overrides`` the conversation's own settings, saved now if it is in the history, else with it."""
        self.conversation.overrides = overrides
        if self.conversation.id is None:
            self.overrides_unsaved = True
            self.notify("This conversation's settings: kept with it once it is saved; from the next reply", "", "information", 4)
        elif self.save_overrides():
            self.notify("Saved for this conversation: they apply from the next reply", "", "information", 3)

    def save_overrides(self) -> bool:
        """Write the conversation's own settings to the history; on failure they stay for this run, and it says so."""
        assert self.conversation.id is not None
        self.overrides_unsaved = False
        try:
            self.store.set_conversation_settings(self.conversation.id, self.conversation.overrides)
        except (UserError, sqlite3.Error) as error:
            self.notify(f"This conversation's settings are kept for this run only: {error}", "", "warning", 5)
            return False
        return True

    # shutdown

    def close(self, wait: float = 5.0) -> None:
        """Quitting mid-reply: stop the decode within one token and let it save what it has (``wait`` s at most)."""
        streaming = self.streaming
        if streaming is not None:
            streaming.cancel.set()
            streaming.done.wait(timeout=wait)

    @property
    def reply_running(self) -> bool:
        """A decode step still running after quitting asked it to stop (the backend must not be freed under it)."""
        return self.streaming is not None and not self.streaming.done.is_set()
