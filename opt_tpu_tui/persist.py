"""Running a chat reply while saving it: what the TUI's reply worker does, with no Textual in it.

The reply is saved a few times a second as it streams, so a kill loses at most the
last ``interval`` seconds. Whatever goes wrong with the history, the screen, the
session's turns and the file end in agreement:

- the history is held by another opt-tpu-tui, or is found damaged (``HistoryUnavailable``,
  a UserError): the reply runs (or goes on) unsaved, and the caller is told so in one line;
- a save fails (a full disk): the reply stops there and its text goes back to what was
  last saved, marked stopped, which is how the incomplete turn on disk reopens;
- the message itself cannot be saved: no reply runs, and the turn is taken back;
- the reply fails before its first piece (a server that is gone, a backend error): it was
  never given, so its turn is taken back, from the history too (HistoryStore.take_back),
  and the conversation is as it was before the message; the caller says the error.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opt_tpu_tui.chat import Conversation, ReplyStream, Turn
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import ConversationGone, HistoryStore

SAVE_INTERVAL = 0.5  # seconds between saves of a streaming reply


@dataclass
class Outcome:
    """How a reply ended, beyond its turn: an error line, and a note that it was not saved."""

    error: str | None = None
    unsaved: str | None = None
    taken_back: bool = False  # the reply failed before its first piece: its turn is gone (the error says why)
    notice: str | None = None  # what else the user should know (the conversation was saved anew)


GONE = (
    "This conversation is no longer in the history (deleted in another opt-tpu-tui, or the history file was "
    "removed): what is on screen is saved again as a new conversation, with this message (ctrl+n starts an empty one)"
)


def run_and_save(
    reply: ReplyStream,
    conversation: Conversation,
    store: HistoryStore,
    *,
    emit: Callable[[str], None],
    interval: float = SAVE_INTERVAL,
) -> Outcome:
    """Run ``reply`` to its end, handing each text piece to ``emit`` and saving as it goes."""
    turn = reply.turn
    outcome = Outcome()
    new = conversation.id is None  # the conversation is saved with this message: taken back, it goes too
    try:
        turn_id = _open_turn(store, conversation, reply, outcome)
    except UserError as error:  # the history is busy or unwritable: reply, but say it is not kept
        turn_id, outcome.unsaved = None, str(error)
    except (sqlite3.Error, OSError) as error:
        conversation.turns[:] = [kept for kept in conversation.turns if kept is not turn]  # not an equal one
        turn.stopped = True
        outcome.error = f"could not save the message, so it was not sent: {error}"
        return outcome
    saved = ""  # the reply as last saved

    def save(**end: Any) -> bool:
        """Save the reply so far; on failure take it back to what was saved, and say so."""
        nonlocal saved, turn_id
        if turn_id is None:
            return True
        try:
            store.save_reply(turn_id, turn.assistant, **end)
        except UserError as error:  # the history was found damaged: the reply goes on unsaved, and says so
            turn_id, outcome.unsaved = None, str(error)
            return True
        except (sqlite3.Error, OSError) as error:
            turn.assistant, turn.stopped = saved, True
            outcome.error = f"could not save the reply, so it ends at what was saved before: {error}"
            return False
        saved = turn.assistant
        return True

    saved_at = time.monotonic()
    given = False  # a piece of the reply was handed on
    try:
        for piece in reply:
            given = True
            emit(piece)
            if time.monotonic() - saved_at >= interval:
                if not save():
                    return outcome  # leaving the loop ends the generation
                saved_at = time.monotonic()
    except UserError as error:
        turn.stopped, outcome.error = True, str(error)
    except Exception as error:  # noqa: BLE001 - a backend failure ends the reply; the caller shows it
        turn.stopped, outcome.error = True, f"reply failed: {type(error).__name__}: {error}"
    if outcome.error and not given and not turn.assistant:
        _take_back(conversation, store, turn, turn_id, new)
        outcome.taken_back = True
        return outcome
    save(stopped=turn.stopped, complete=True, stop_reason=turn.stop_reason)  # if this fails, the turn on disk is incomplete: reopened as stopped
    return outcome


def _take_back(conversation: Conversation, store: HistoryStore, turn: Turn, turn_id: int | None, new: bool) -> None:
    """A reply that failed before its first piece was never given: its turn goes from the conversation and the
    history, and the conversation is the saved one again (an edit or a regeneration gave way to it)."""
    conversation.turns[:] = [kept for kept in conversation.turns if kept is not turn]  # not an equal one
    if turn_id is None or conversation.id is None:
        return
    try:
        store.take_back(turn_id)
        if new:
            store.delete_conversation(conversation.id)
            conversation.id = None
        else:
            conversation.turns[:] = store.load(conversation.id)
    except (UserError, sqlite3.Error, OSError):  # the empty turn stays on disk: reopened as stopped, and the next
        pass  # message in its place drops it (HistoryStore.start_turn)


def _open_turn(store: HistoryStore, conversation: Conversation, reply: ReplyStream, outcome: Outcome) -> int:
    """The id of the turn the reply is saved into, at the turn's place in the conversation.

    A regenerated reply or an edited message takes the place of turns already saved:
    the history keeps those as an alternative (HistoryStore.start_turn). A conversation
    another instance deleted is saved again, as a new one, from the turns this one holds.
    """
    if conversation.id is None:
        conversation.id = store.create_conversation(reply.turn.user, conversation.overrides)
    position = next(i for i, turn in enumerate(conversation.turns) if turn is reply.turn)
    try:
        return store.start_turn(conversation.id, position, reply.turn.user, model=reply.turn.model)
    except ConversationGone:
        first = conversation.turns[0].user
        conversation.id = store.create_conversation(first, conversation.overrides, conversation.turns[:position])
        outcome.notice = GONE
        return store.start_turn(conversation.id, position, reply.turn.user, model=reply.turn.model)
