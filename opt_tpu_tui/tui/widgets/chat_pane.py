"""The chat itself: the status line, the transcript and the prompt, and the reply that streams into them.

elia's ``Chat`` widget is the pattern: the screen around it routes keys and owns the side
pane; this widget draws what the controller (chat_controller.py, no Textual) decides.
It sends, resends and regenerates through the controller, runs the reply in its own
thread worker (the controller saves it as it grows), hands the reply's view its stream
(ReplyView.stream) and, when the worker ends, draws what became of the turn. The status
line is fed here: the state (and the prompt's matching refusal) and the context meter.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.timer import Timer
from textual.worker import get_current_worker

from opt_tpu_tui.chat_controller import BUSY, ChatController, Streaming
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.tui.messages import ReplyFinished
from opt_tpu_tui.tui.widgets.conversation import Notice, ReplyView, Transcript, UserMessage
from opt_tpu_tui.tui.widgets.prompt import PromptInput
from opt_tpu_tui.tui.widgets.settings_form import GREEDY_NOTE
from opt_tpu_tui.tui.widgets.status import StatusLine

if TYPE_CHECKING:
    from opt_tpu_tui.tui.app import OptTuiApp


class ChatPane(Vertical):
    def __init__(self, chat: ChatController, figures_changed: Callable[[], None], **kwargs: object) -> None:
        """``figures_changed`` is called when a reply's end or a new conversation changes the stats pane's figures."""
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.chat = chat
        self._figures_changed = figures_changed
        self._view: ReplyView | None = None  # the streaming reply's widget
        self._load_started = time.monotonic()  # the state line counts the seconds a load takes: loading, not hung
        self._load_timer: Timer | None = None
        self.finished_replies = 0  # how many replies have ended and been drawn (tests and the benches wait on it)

    @property
    def tui(self) -> OptTuiApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield Transcript(id="transcript")
        yield PromptInput(id="prompt")

    async def start(self) -> None:
        """The app's labels and start-up notices, and the state line counting the load's seconds."""
        app, status = self.tui, self.query_one(StatusLine)
        status.model, status.backend, status.demo = app.model_label, app.backend_label, app.demo
        await self.query_one(Transcript).add(*[Notice(text, kind) for text, kind in app.startup_notices()])
        self._count_load()

    @property
    def remote(self) -> bool:
        """The app uses a server (``--server``): what it "loads" is a connection, tried again on a send."""
        return self.tui.backend_label == "server"

    def _count_load(self) -> None:
        self._load_started = time.monotonic()
        if self._load_timer is None:
            self._load_timer = self.set_interval(1, self.update_state)  # stopped once loaded (or failed)
        self.update_state()

    def reconnect(self) -> None:
        """Try the server again (the user sent while it did not answer): the message waits in the prompt."""
        self.tui.load_error = None
        self._count_load()
        self.notify("Connecting to the server…", timeout=3)
        self.tui.load_model()

    def loaded(self, engine: Engine) -> None:
        """The engine answers (the controller has it): say so, with how long it took, and what it is."""
        what = f"Connected to the server ({engine.name})" if engine.remote else "Model loaded"
        self.call_later(self.query_one(Transcript).add, Notice(f"{what} in {time.monotonic() - self._load_started:.1f} s", "info"))
        status = self.query_one(StatusLine)
        status.model, status.backend, status.context_size = engine.model_name, engine.name, engine.context_length
        if engine.greedy_only:  # said in the chat too: the settings pane may be closed
            self.call_later(self.query_one(Transcript).add, Notice(GREEDY_NOTE, "info"))
        self.show_context()
        self.update_state()

    async def failed(self, error: str) -> None:
        if self.remote:  # the loader said "Cannot connect to the server..." (tui.server_loader); a send tries again
            await self.query_one(Transcript).add(Notice(f"{error}; sending a message tries again", "error"))
            self.notify(error, title="Not connected", severity="error", timeout=10)
        else:
            await self.query_one(Transcript).add(Notice(f"Model failed to load: {error}", "error"))
            self.notify(error, title="Model failed to load", severity="error", timeout=10)
        self.update_state()

    # the status line

    def show_context(self) -> None:
        """The context meter (chat.TranscriptSession.context_use): the tokens the model sees, and whether it is full."""
        use = self.chat.context_use()
        if use is not None:
            status = self.query_one(StatusLine)
            status.context_used, status.drops_next = use.used, use.full

    def update_state(self) -> None:
        """The status line's state and, matching it, why the prompt would refuse a message now."""
        app, prompt = self.tui, self.query_one(PromptInput)
        if app.load_error and self.remote:  # a message goes on to send, which connects again (_refused)
            state, prompt.refusal = "not connected", None
        elif app.load_error:
            state, prompt.refusal = "no model", f"Cannot reply: {app.load_error}"
        elif self.chat.session is None:
            waited = int(time.monotonic() - self._load_started)
            if self.remote:
                state, prompt.refusal = f"connecting to the server… {waited} s", "Connecting to the server…"
            else:
                state, prompt.refusal = f"loading model… {waited} s", "The model is still loading"
        elif self.chat.streaming is not None:
            state, prompt.refusal = "replying… (esc stops)", BUSY
        else:
            state, prompt.refusal = "ready", None
        if (self.chat.session is not None or app.load_error) and self._load_timer is not None:
            self._load_timer.stop()
            self._load_timer = None
        self.query_one(StatusLine).state = state

    # sending and streaming

    async def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        prompt = self.query_one(PromptInput)
        index = prompt.editing
        if not await (self.send(message.text) if index is None else self.resend(index, message.text)):
            prompt.give_back(message.text)

    def refuse(self, text: str) -> bool:
        self.notify(text, severity="warning")
        return False

    def busy(self) -> bool:
        """A reply is streaming (and the user is told so): actions that change the chat wait."""
        return self.chat.streaming is not None and not self.refuse(BUSY)

    def _refused(self) -> bool:
        """Nothing can start now (loading, streaming, no model): the user is told why, as the prompt would."""
        if self.chat.streaming is None and self.chat.session is not None:
            return False
        if self.tui.load_error and self.remote:
            self.reconnect()
            return True
        self.refuse(self.query_one(PromptInput).refusal or BUSY)
        return True

    def _try(self, start: Callable[[], Streaming], title: str) -> Streaming | None:
        try:
            return start()
        except UserError as error:
            self.notify(str(error), title=title, severity="error")
            return None

    async def send(self, text: str) -> bool:
        """Start a reply to ``text``; False (and a notification) when it cannot be sent."""
        if self._refused():
            return False
        if self.query_one(Transcript).later_messages:  # opened at an older match: the latest turns again first
            await self.show_turns()
        streaming = self._try(lambda: self.chat.send(text), "Not sent")
        if streaming is None:
            return False
        await self.query_one(Transcript).add(UserMessage(streaming.reply.turn.user))
        await self._stream(streaming)
        return True

    async def resend(self, index: int, text: str) -> bool:
        """Answer ``text`` in place of message ``index`` (the turns it replaces stay as an alternative)."""
        if self._refused():
            return False
        streaming = self._try(lambda: self.chat.resend(index, text), "Not sent")
        if streaming is None:
            return False
        self.query_one(PromptInput).end_editing()
        await self.show_turns()
        await self.query(ReplyView).last().remove()  # the new turn's reply streams in its own view
        await self._stream(streaming)
        return True

    async def regenerate(self) -> None:
        """Answer the last message again, in place of its reply (which stays as an alternative)."""
        if self.busy():
            return
        if self.chat.session is None or not self.chat.conversation.turns:
            self.refuse("There is no reply to regenerate")
            return
        streaming = self._try(self.chat.regenerate, "Not regenerated")
        if streaming is None:
            return
        if self.query_one(Transcript).later_messages:
            await self.show_turns()
        replies = self.query(ReplyView)
        if replies:
            await replies.last().remove()
        await self._stream(streaming)

    async def _stream(self, streaming: Streaming) -> None:
        """Show ``streaming`` in a new reply view at the end, and run it."""
        engine, transcript = self.chat.engine, self.query_one(Transcript)
        self._view = ReplyView(label=engine.model_name if engine else "opt", streaming=True)
        await transcript.add(self._view)
        await self._mark_context_start()
        transcript.anchor()
        self.query_one(StatusLine).first_token = 0.0  # the last reply's figures: back when this one ends
        self.show_context()  # the prompt as sent, from the reply's start
        self._view.stream(streaming.buffer)
        self.update_state()
        self._run_reply(streaming)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reply")
    def _run_reply(self, streaming: Streaming) -> None:
        """The decode loop, off the UI thread (the controller saves the reply as it grows)."""
        worker = get_current_worker()
        self.post_message(ReplyFinished(self.chat.run(streaming, lambda: worker.is_cancelled)))

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        message.stop()
        streaming, view = self.chat.end_stream(), self._view
        if streaming is None or view is None:
            return
        self._view = None
        # The chat takes a message from now on: keys held back while this ends (ordered_keys.py) are let go
        # after SETTLE_LIMIT on a loaded machine, and an enter meeting the refusal of the finished reply
        # became a line break, leaving the message unsent under a "ready" status.
        self.update_state()
        await view.end_stream()
        if not view.is_attached:  # the app is closing
            return
        outcome = message.outcome
        turn, ending = streaming.reply.turn, self.chat.finish(streaming, outcome)
        if ending == "kept":
            await view.finish(turn.assistant, stopped=turn.stopped, error=outcome.error, ended=turn.stop_reason)
            view.show_variant(self.chat.variants().get(len(self.chat.conversation.turns) - 1))
        elif ending == "reloaded":  # not saved, so not sent: the saved turns are the conversation
            await self.show_turns()
            self.query_one(PromptInput).give_back(turn.user)
        else:  # the message was taken back: nothing of this turn stays on screen either
            await self.query(UserMessage).last().remove()
            await view.remove_with_rows()
            self.query_one(PromptInput).give_back(turn.user)
        self.show_context()
        status, stats = self.query_one(StatusLine), streaming.reply.stats
        status.first_token, status.speed = stats.prefill_seconds, stats.tokens_per_second
        self.update_state()
        self._figures_changed()
        self.finished_replies += 1

    # the conversation shown

    async def clear(self) -> None:
        """A new, empty conversation (the controller's), and none of the last reply's figures."""
        self.query_one(PromptInput).cancel_editing()
        self.chat.new_conversation()
        await self.query_one(Transcript).clear()
        status = self.query_one(StatusLine)
        status.first_token = status.speed = 0.0
        self.show_context()
        self._figures_changed()

    async def open(self, conversation_id: int, at: int | None = None, reply: bool = False, matched: str = "") -> bool:
        """Show a saved conversation (as MainScreen.open_conversation says); False: it cannot be read, the chat stays."""
        if not self.chat.open(conversation_id):
            return False
        self.query_one(PromptInput).cancel_editing()
        await self.show_turns(at, reply, matched)
        self.show_context()
        return True

    async def show_turns(self, at: int | None = None, reply: bool = False, matched: str = "") -> None:
        """The conversation's turns in the transcript (a window of them: Transcript.show_turns), the context's start
        marked; with ``at``, that turn's message (or ``reply``) marked and scrolled to the ``matched`` text."""
        transcript, engine = self.query_one(Transcript), self.chat.engine
        found = await transcript.show_turns(self.chat.conversation.turns, self.chat.variants(), engine.model_name if engine else "opt", at)
        await self._mark_context_start()
        transcript.anchor(not found)  # none to find: as after a reply, the newest message at the bottom
        if found:
            found[reply].add_class("-found")
            # in the screen's queue: after what the screen still does with the opened conversation (the settings
            # pane, the focus), and after the layout that follows, the match is where it will stay
            self.screen.call_after_refresh(transcript.scroll_to_match, found[reply], matched)

    async def _mark_context_start(self) -> None:
        """The transcript's line above the oldest turn the model still sees (none while all are seen)."""
        kept = self.chat.kept_turns()
        if kept is not None and not self.query_one(Transcript).later_messages:  # (a window: the end unseen)
            await self.query_one(Transcript).mark_context_start(kept)
