"""The chat screen: status line, transcript and prompt, with a side pane for device stats or settings.

The screen wires widgets to services. The app owns the model (tui/app.py); replies run
in a thread worker through ``persist.run_and_save``, which saves them as they grow; a
UI timer moves the streamed text into the reply's widget, which owns the rendering.
Which pane is open is a reactive, the narrow and too-small layouts are breakpoint
classes, and the stylesheet does the rest.
"""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Static
from textual.worker import get_current_worker

from opt_tpu_tui.backends.base import emits_tokens
from opt_tpu_tui.chat import ChatSession, Conversation, Reply, Turn
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.export import clipboard_file, conversation_markdown, export_path, last_code_block, write_text
from opt_tpu_tui.history import SearchHit, title_for
from opt_tpu_tui.overrides import Overrides, resolve
from opt_tpu_tui.persist import run_and_save
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tui.compositor import DrawnScreen
from opt_tpu_tui.tui.messages import DeviceSampled, FlushReply, ReplyFinished
from opt_tpu_tui.tui.screens.conversations import ConversationsScreen
from opt_tpu_tui.tui.screens.messages import MessagesScreen
from opt_tpu_tui.tui.screens.search import SearchScreen
from opt_tpu_tui.tui.streaming import TokenBuffer
from opt_tpu_tui.tui.widgets.footer import KeyFooter
from opt_tpu_tui.tui.widgets.conversation import Notice, ReplyView, Transcript, UserMessage, row_of
from opt_tpu_tui.tui.widgets.prompt import PromptInput
from opt_tpu_tui.tui.widgets.settings_form import CONVERSATION, GREEDY_NOTE, SettingsForm
from opt_tpu_tui.tui.widgets.stats import StatsPanel, StatsView
from opt_tpu_tui.tui.widgets.status import StatusLine

if TYPE_CHECKING:
    from opt_tpu_tui.tui.app import OptTuiApp

FLUSH_HZ = 8  # streamed text reaches the view this often: smooth to the eye, few frames on the wire
MIN_WIDTH, MIN_HEIGHT = 60, 15  # below this the screen says it is too small
WIDE = 100  # from this many columns the side pane sits beside the chat; below, it replaces it
STATS_PERIOD = 1.0
BUSY = "A reply is streaming: press escape to stop it first"
QUIT_HINT = "ctrl+q quits (ctrl+c copies selected text, and stops a reply)"


class Monitor(Protocol):
    def sample(self) -> DeviceSample: ...


@dataclass
class Streaming:
    """The reply in flight: what the worker fills and the UI drains."""

    reply: Reply
    view: ReplyView
    cancel: threading.Event
    buffer: TokenBuffer = field(default_factory=TokenBuffer)
    done: threading.Event = field(default_factory=threading.Event)


class MainScreen(DrawnScreen, Screen[None]):
    CSS_PATH = "main.tcss"
    AUTO_FOCUS = "#prompt"
    HORIZONTAL_BREAKPOINTS = [(0, "-too-narrow"), (MIN_WIDTH, "-narrow"), (WIDE, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-too-short"), (MIN_HEIGHT, "-tall")]
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop",
                tooltip="stop the reply (the partial reply is kept, marked stopped); "
                "first closes a pane over the chat; leaves an edit unsent"),
        Binding("ctrl+c", "interrupt", "Interrupt", id="chat.interrupt", show=False, priority=True,  # over the fields' copy
                tooltip="copy the selected text; with none, stop the reply (as escape does); idle, say how to quit"),
        Binding("ctrl+r", "regenerate", "Regen", id="chat.regenerate", tooltip="regenerate the last reply"),
        Binding("ctrl+n", "new_conversation", "New", id="chat.new", tooltip="new conversation"),
        Binding("ctrl+o", "conversations", "Chats", id="chat.conversations",
                tooltip="conversation list: enter opens, r renames, d deletes (a second d confirms)"),
        Binding("ctrl+g", "messages", "Messages", id="chat.messages", show=False,
                tooltip="the chat's messages: enter edits one to resend it, ←/→ show its other variants, c/m copy"),
        Binding("ctrl+f", "search", "Search", id="chat.search", show=False,
                tooltip="search all conversations: type, ↑/↓ select, enter opens at the match"),
        Binding("f2", "pane('settings')", "Settings", id="pane.settings",
                tooltip="settings pane (↑/↓ step a number, enter or ctrl+s applies)"),
        Binding("f3", "pane('stats')", "Stats", id="pane.stats", tooltip="device-stats pane"),
        Binding("f4", "pane('toggle')", "Pane", id="pane.toggle", show=False, tooltip="hide or show the side pane"),
        Binding("f5", "copy_reply", "Copy", id="chat.copy", show=False,
                tooltip="copy the last reply (to the terminal's clipboard by OSC 52, and to clipboard.txt)"),
        Binding("f8", "copy_code", "Copy code", id="chat.copy_code", show=False,
                tooltip="copy the last code block of the last reply"),
        Binding("f9", "export", "Export", id="chat.export", show=False,
                tooltip="export the conversation as Markdown (the file's path is shown)"),
    ]  # fmt: skip

    pane = reactive("hidden")  # "stats", "settings" or "hidden"

    def __init__(self) -> None:
        super().__init__()
        self.conversation = Conversation()
        self.session: ChatSession | None = None
        self._streaming: Streaming | None = None
        self._flush_timer: Timer | None = None
        self._stats_stop = threading.Event()
        self._last: StatsView = StatsView()
        self._device: DeviceSample | None = None
        self._was_narrow: bool | None = None
        self._editing: int | None = None  # the index of the message being edited in the prompt
        self._draft = ""  # what the prompt held before the edit began: escape brings it back
        self.finished_replies = 0  # how many replies have ended (tests and the benches wait on it)
        self._overrides_unsaved = False  # set for a conversation with no id yet: its first reply's end saves them
        self._load_started = time.monotonic()  # the state line counts the seconds a load takes: loading, not hung
        self._load_timer: Timer | None = None

    @property
    def tui(self) -> OptTuiApp:
        return self.app  # type: ignore[return-value]

    @property
    def streaming(self) -> bool:
        return self._streaming is not None

    @property
    def in_flight(self) -> Streaming | None:
        """The reply being generated, if any."""
        return self._streaming

    @property
    def narrow(self) -> bool:
        return self.size.width < WIDE

    # layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="chat"):
                yield StatusLine(id="status")
                yield Transcript(id="transcript")
                yield PromptInput(id="prompt")
            with Vertical(id="side"):
                with ContentSwitcher(id="side-switcher", initial="stats"):
                    yield StatsPanel(id="stats")
                    yield SettingsForm(id="settings")
        yield Static("", id="too-small", markup=False)
        yield KeyFooter()

    async def on_mount(self) -> None:
        app = self.tui
        self._show_overrides()
        status = self.query_one(StatusLine)
        status.model, status.backend, status.demo = app.model_label, app.backend_label, app.demo
        notices = [Notice(text, kind) for text, kind in app.startup_notices()]
        await self.query_one(Transcript).add(*notices)
        self._show_stats()
        self._load_started = time.monotonic()
        self._load_timer = self.set_interval(1, self._update_state)  # stopped once loaded (or failed)
        self._update_state()
        app.load_model()

    def watch_pane(self, pane: str) -> None:
        self.set_class(pane != "hidden", "-side-open")
        if pane != "hidden":
            self.query_one(ContentSwitcher).current = pane
        if pane == "stats":
            self._show_stats()  # what was sampled while it was hidden

    def on_resize(self) -> None:
        width, height = self.app.size
        self.query_one("#too-small", Static).update(
            f"Terminal too small ({width}x{height}): opt-tpu-tui needs at least {MIN_WIDTH}x{MIN_HEIGHT}. ctrl+q quits."
        )
        # After Textual's own resize handler has set the breakpoint classes: opening the pane while
        # "-narrow" is still set would hide the chat for a frame and take the focus from the prompt.
        self.call_later(self._fit_pane)

    def _fit_pane(self) -> None:
        """On the first layout and when the width crosses WIDE: the saved pane opens only if it fits beside.

        A pane that holds the focus stays as it is, over the chat when narrow: hidden, it
        would keep the focus and the keys typed would go nowhere the user can see.
        """
        if self.narrow != self._was_narrow and not self.query_one("#side").has_focus_within:
            self.pane = "hidden" if self.narrow else self.tui.settings.side_pane
        self._was_narrow = self.narrow
        if self.focused is None and self.app.screen is self and not self.too_small:
            self._focus_prompt()  # too small, the chat was hidden and lost the focus (or never had it): typing goes on

    @property
    def too_small(self) -> bool:
        """Below MIN_WIDTH x MIN_HEIGHT: the chat is hidden behind a line saying so."""
        width, height = self.app.size
        return width < MIN_WIDTH or height < MIN_HEIGHT

    def action_pane(self, which: str) -> None:
        settings = self.tui.settings
        if which == "toggle":
            target = "hidden" if self.pane != "hidden" else (settings.side_pane if settings.side_pane != "hidden" else "stats")
        else:
            target = "hidden" if self.pane == which else which
        self.pane = target
        if not self.narrow and target != settings.side_pane:
            self.tui.update_settings(side_pane=target)
        if target == "settings":
            self.query_one("#field-max_new_tokens").focus()
        elif target == "hidden" or not self.narrow:
            self.query_one(PromptInput).focus()

    # the model (loaded by the app)

    def model_loaded(self) -> None:
        app = self.tui
        assert app.backend is not None and app.tokenizer is not None
        self.session = ChatSession(app.backend, app.tokenizer, self.effective_settings()[1], self.conversation)
        self._loaded_notice(time.monotonic() - self._load_started)
        status = self.query_one(StatusLine)
        status.model, status.backend = app.backend.model_name, app.backend.name
        status.context_size = app.backend.context_length
        greedy = emits_tokens(app.backend)
        self.query_one(SettingsForm).greedy_only(greedy)
        if greedy:  # said in the chat too: the settings pane may be closed
            self.call_later(self.query_one(Transcript).add, Notice(GREEDY_NOTE, "info"))
        self._show_context()
        self._update_state()
        self._show_stats()
        self._stats_stop.clear()
        self._sample_devices(app.monitor_factory(app.backend.name))

    def _loaded_notice(self, seconds: float) -> None:
        """Say in the chat how long the model took to load (a big bmodel: tens of seconds), once."""
        self.call_later(self.query_one(Transcript).add, Notice(f"Model loaded in {seconds:.1f} s", "info"))

    async def model_failed(self, error: str) -> None:
        await self.query_one(Transcript).add(Notice(f"Model failed to load: {error}", "error"))
        self.notify(error, title="Model failed to load", severity="error", timeout=10)
        self._update_state()

    # device stats

    @work(thread=True, exclusive=True, exit_on_error=False, group="stats")
    def _sample_devices(self, monitor: Monitor) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled and not self._stats_stop.is_set():
            try:
                sample = monitor.sample()
            except Exception:  # noqa: BLE001 - a broken source must not end the pane
                sample = DeviceSample("host")
            self.post_message(DeviceSampled(sample))
            self._stats_stop.wait(STATS_PERIOD)

    def on_device_sampled(self, message: DeviceSampled) -> None:
        self._device = message.sample
        if self._streaming is not None:
            self._take_stats(self._streaming.reply)
            self.query_one(StatsPanel).add_speed(self._streaming.reply.stats.tokens_per_second)
            self._show_context()
        self._show_stats()

    def _take_stats(self, reply: Reply) -> None:
        stats, last = reply.stats, self._last
        prefill = (stats.prefill_seconds, stats.cached_tokens) if stats.prefill_seconds else (last.prefill_seconds, last.cached_tokens)
        self._last = StatsView(
            context_used=stats.context_used or last.context_used,
            prefill_seconds=prefill[0],
            cached_tokens=prefill[1],
            tokens_per_second=stats.tokens_per_second,
        )

    def _show_stats(self) -> None:
        """The stats pane's lines and speed graph, when it is open: an update of a hidden widget costs
        Textual a re-read of the whole layout, each second. Opening the pane shows what it missed."""
        if self.pane != "stats":
            return
        app, last = self.tui, self._last
        backend = app.backend
        self.query_one(StatsPanel).show(
            StatsView(
                backend=backend.name if backend else app.backend_label,
                model=backend.model_name if backend else app.model_label,
                context_used=last.context_used,
                context_size=backend.context_length if backend else 0,
                prefill_seconds=last.prefill_seconds,
                cached_tokens=last.cached_tokens,
                tokens_per_second=last.tokens_per_second,
                device=self._device,
            )
        )

    def _show_context(self) -> None:
        """The context meter (ChatSession.context_use): the tokens the model sees, and whether it is full.

        Full means the next turn leaves the oldest turns out of the prompt even with an
        empty message (the reply's room counted), so the user sees it coming.
        """
        session, status = self.session, self.query_one(StatusLine)
        if session is None:
            return
        sampling, session.preamble = self.effective_settings()
        streaming = self._streaming
        use = session.context_use(session.reserve(sampling), streaming.reply if streaming else None)  # chat.py says what
        status.context_used, status.drops_next = use.used, use.full

    def _update_state(self) -> None:
        """The status line's state and, matching it, why the prompt would refuse a message now."""
        app, prompt = self.tui, self.query_one(PromptInput)
        if app.load_error:
            state, prompt.refusal = "no model", f"Cannot reply: {app.load_error}"
        elif self.session is None:
            waited = int(time.monotonic() - self._load_started)
            state, prompt.refusal = f"loading model… {waited} s", "The model is still loading"
        elif self._streaming is not None:
            state, prompt.refusal = "replying… (esc stops)", BUSY
        else:
            state, prompt.refusal = "ready", None
        if self.session is not None or app.load_error:
            self._stop_load_timer()
        self.query_one(StatusLine).state = state

    def _stop_load_timer(self) -> None:
        if self._load_timer is not None:
            self._load_timer.stop()
            self._load_timer = None

    # sending and streaming

    async def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        if self._editing is not None:
            if not await self.resend(self._editing, message.text):
                self.query_one(PromptInput).give_back(message.text)
            return
        if not await self.send(message.text):
            self.query_one(PromptInput).give_back(message.text)

    def _refuse(self, text: str) -> bool:
        self.notify(text, severity="warning")
        return False

    def _busy(self) -> bool:
        """A reply is streaming (and the user is told so): actions that change the chat wait."""
        if self._streaming is None:
            return False
        self._refuse(BUSY)
        return True

    async def send(self, text: str) -> bool:
        """Start a reply to ``text``; False (and a notification) when it cannot be sent."""
        if self._streaming is not None or self.session is None:
            return self._refuse(self.query_one(PromptInput).refusal or BUSY)
        sampling, self.session.preamble = self.effective_settings()
        await self._back_to_the_end()
        cancel = threading.Event()
        try:
            reply = self.session.send(text, sampling, cancel)
        except UserError as error:
            self.notify(str(error), title="Not sent", severity="error")
            return False
        await self.query_one(Transcript).add(UserMessage(reply.turn.user))
        await self._start(reply, cancel)
        return True

    async def resend(self, index: int, text: str) -> bool:
        """Answer ``text`` in place of message ``index`` (the turns it replaces stay as an alternative)."""
        if self._streaming is not None or self.session is None:
            return self._refuse(self.query_one(PromptInput).refusal or BUSY)
        sampling, self.session.preamble = self.effective_settings()
        cancel = threading.Event()
        try:
            reply = self.session.edit(index, text, sampling, cancel)
        except UserError as error:
            self.notify(str(error), title="Not sent", severity="error")
            return False
        self._end_editing()
        await self._show_turns()
        await self.query(ReplyView).last().remove()  # the new turn's reply streams in its own view
        await self._start(reply, cancel)
        return True

    async def action_regenerate(self) -> None:
        if self._busy():
            return
        if self.session is None or not self.conversation.turns:
            self._refuse("There is no reply to regenerate")
            return
        cancel = threading.Event()
        sampling, self.session.preamble = self.effective_settings()
        try:
            reply = self.session.regenerate(sampling, cancel)
        except UserError as error:
            self.notify(str(error), title="Not regenerated", severity="error")
            return
        await self._back_to_the_end()
        replies = self.query(ReplyView)
        if replies:
            await replies.last().remove()
        await self._start(reply, cancel)

    async def _start(self, reply: Reply, cancel: threading.Event) -> None:
        backend = self.tui.backend
        view = ReplyView(label=backend.model_name if backend else "opt", streaming=True)
        transcript = self.query_one(Transcript)
        await transcript.add(view)
        await self._mark_context_start()
        transcript.anchor()
        self.query_one(StatusLine).first_token = 0.0  # the last reply's figures: back when this one ends
        self._streaming = Streaming(reply, view, cancel)
        self._show_context()  # the prompt as sent, from the reply's start
        gc.disable()  # textual.md: gen-2 collections stall the stream for 200-300 ms; collect at the end
        self._flush_timer = self.set_interval(1 / FLUSH_HZ, lambda: self.post_message(FlushReply()))
        self._update_state()
        self._run_reply(self._streaming)

    async def on_flush_reply(self) -> None:
        streaming = self._streaming
        if streaming is None:
            return
        text = streaming.buffer.take()
        if text:
            await streaming.view.append(text)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reply")
    def _run_reply(self, streaming: Streaming) -> None:
        """The decode loop, off the UI thread (persist.run_and_save saves the reply as it grows)."""
        worker = get_current_worker()

        def emit(piece: str) -> None:
            streaming.buffer.push(piece)
            if worker.is_cancelled:
                streaming.cancel.set()  # the generation stops before its next token

        app = self.tui
        try:
            outcome = run_and_save(
                streaming.reply, self.conversation, app.store, emit=emit
            )
        finally:
            streaming.done.set()
        self.post_message(ReplyFinished(outcome))

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        streaming = self._streaming
        if streaming is None:
            return
        if self._flush_timer is not None:
            self._flush_timer.stop()
        self._flush_timer = None
        self._streaming = None
        if not streaming.view.is_attached:  # the app is closing
            return
        outcome, turn = message.outcome, streaming.reply.turn
        if turn in self.conversation.turns:
            await streaming.view.finish(turn.assistant, stopped=turn.stopped, error=outcome.error, ended=turn.stop_reason)
            streaming.view.show_variant(self._variants().get(len(self.conversation.turns) - 1))
        elif self.conversation.id is not None:  # not saved, so not sent: the saved turns are the conversation
            try:
                self.conversation.turns[:] = self.tui.store.load(self.conversation.id)
            except UserError as error:
                self._history_failed(error)
            await self._show_turns()
            self.query_one(PromptInput).give_back(turn.user)
        else:  # the message was taken back: nothing of this turn stays on screen either
            await self.query(UserMessage).last().remove()
            await streaming.view.remove_with_rows()
            self.query_one(PromptInput).give_back(turn.user)
        self._take_stats(streaming.reply)
        self._show_context()
        status, stats = self.query_one(StatusLine), streaming.reply.stats
        status.first_token, status.speed = stats.prefill_seconds, stats.tokens_per_second
        if outcome.error:
            self.notify(outcome.error, title="Reply failed", severity="error", timeout=8)
        if outcome.unsaved:
            self.notify(f"Not saved: {outcome.unsaved}", severity="warning", timeout=8)
        if outcome.notice:
            self.notify(outcome.notice, severity="warning", timeout=12)
        if self._overrides_unsaved and self.conversation.id is not None:  # set while its first reply streamed
            self._save_overrides()
        gc.enable()
        # Nothing was collected during the stream, so its garbage is all in the young generations.
        # A full collection would walk the whole heap, which grows through a long chat (Textual's
        # own caches keep up to a thousand old widgets' line caches), so each turn would cost more.
        gc.collect(1)
        self.finished_replies += 1
        self._update_state()
        self._show_stats()

    @property
    def _pane_in_the_way(self) -> bool:
        """An open pane that covers the chat (narrow) or holds the focus: escape closes it first."""
        return self.pane != "hidden" and (self.narrow or self.query_one("#side").has_focus_within)

    def action_stop(self) -> None:
        """Escape: close a pane that is in the way (back to the prompt); else stop the reply, or the edit."""
        if self._pane_in_the_way:
            self._focus_prompt()
        elif self._streaming is not None:
            self._streaming.cancel.set()
        else:
            self._cancel_editing()

    def action_interrupt(self) -> None:
        """ctrl+c: copy what is selected (in the focused field, else on the screen), as Textual does;
        with nothing selected stop the reply, as escape does; idle, say how to quit (ctrl+c does not)."""
        selected = getattr(self.focused, "selected_text", "") or self.get_selected_text()
        if selected:
            self.app.copy_to_clipboard(selected)
        elif self._streaming is not None:
            self._streaming.cancel.set()
        else:
            self.notify(QUIT_HINT, timeout=4)

    def _focus_prompt(self) -> None:
        """The prompt takes the focus, and a pane over it (narrow) closes: what is typed shows."""
        if self.narrow:
            self.pane = "hidden"
        self.query_one(PromptInput).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop" and self._streaming is None and self._editing is None and not self._pane_in_the_way:
            return None  # shown dimmed in the Footer
        return True

    # conversations

    async def action_new_conversation(self) -> None:
        if self._busy():
            return
        self._cancel_editing()
        self.conversation.turns.clear()
        self.conversation.id = None
        self.conversation.overrides = Overrides()  # a new conversation follows the defaults
        self._overrides_unsaved = False
        self._show_overrides()
        await self.query_one(Transcript).clear()
        self._last = StatsView()
        status = self.query_one(StatusLine)
        status.first_token = status.speed = 0.0
        self._show_context()
        self._show_stats()
        self._focus_prompt()

    def action_conversations(self) -> None:
        if self._busy():
            return
        store = self.tui.store
        try:
            conversations = store.list_conversations()
        except UserError:  # found damaged now: the store is unavailable, and the list says why (and tells it once)
            conversations = []
        self.app.push_screen(
            ConversationsScreen(conversations, self._delete_conversation, store.rename_conversation, self._no_history()),
            self._open_conversation,
        )

    def _no_history(self) -> str | None:
        """Why the history is unavailable (held elsewhere, found damaged), for a list to show in place of entries.

        The list opens all the same: keys typed after ctrl+o or ctrl+f in one burst go to
        it, not into the prompt, where enter would send them to the model.
        """
        store = self.tui.store
        return None if store.writable else f"No history this run: {store.problem}"

    def _history_failed(self, error: UserError) -> None:
        """A read found the history damaged (it is unavailable from now on): the one line that says so."""
        self.notify(str(error), title="History damaged", severity="error", timeout=20)

    # editing and variants

    def _variants(self) -> dict[int, tuple[int, int]]:
        """The open conversation's turns that have alternatives: (variant shown, how many)."""
        if self.conversation.id is None:
            return {}
        try:
            return self.tui.store.variants(self.conversation.id)
        except UserError as error:
            self._history_failed(error)
            return {}

    def action_messages(self) -> None:
        if self._busy():
            return
        if not self.conversation.turns:
            self._refuse("There are no messages yet")
            return
        self._cancel_editing()  # variants change what the indices point at
        screen = MessagesScreen(self.conversation.turns, self._variants(), self._switch_variant, self._copy)
        self.app.push_screen(screen, self._start_editing)

    def _switch_variant(self, index: int, step: int) -> tuple[list[Turn], dict[int, tuple[int, int]]]:
        """Show another variant at message ``index`` (the messages screen's ←/→); the chat behind follows."""
        if self.conversation.id is None:
            raise UserError("this conversation is not saved, so it keeps no variants")
        self.tui.store.switch_variant(self.conversation.id, index, step)
        self.conversation.turns[:] = self.tui.store.load(self.conversation.id)
        older = index < len(self.conversation.turns) - Transcript.MOUNTED // 2
        self.call_later(self._show_turns, index if older else None)  # the end, unless that misses the message
        self._show_context()
        return self.conversation.turns, self._variants()

    def _start_editing(self, index: int | None) -> None:
        """Put message ``index`` in the prompt; enter resends it, escape brings back what was there."""
        if index is None:
            return
        prompt = self.query_one(PromptInput)
        self._editing, self._draft = index, prompt.text
        prompt.text = self.conversation.turns[index].user
        prompt.move_cursor(prompt.document.end)
        prompt.border_title = f"editing message {index + 1} · enter resends · esc cancels"
        prompt.add_class("-editing")
        self._focus_prompt()

    def _cancel_editing(self) -> None:
        """Leave an edit unsent: the prompt gets back what it held before."""
        if self._editing is not None:
            self.query_one(PromptInput).text = self._draft
            self._end_editing()

    def _end_editing(self) -> None:
        self._editing = None
        prompt = self.query_one(PromptInput)
        prompt.border_title = None
        prompt.remove_class("-editing")

    def _delete_conversation(self, conversation_id: int) -> None:
        self.tui.store.delete_conversation(conversation_id)
        if conversation_id == self.conversation.id:
            self.call_later(self.action_new_conversation)

    async def _open_conversation(self, conversation_id: int | None) -> None:
        if conversation_id is not None:
            await self.open_conversation(conversation_id)

    def action_search(self) -> None:
        if self._busy():
            return
        self.app.push_screen(SearchScreen(self.tui.store.search, self._no_history()), self._open_match)

    async def _open_match(self, hit: SearchHit | None) -> None:
        if hit is None:
            return
        at = hit.turn
        if hit.variant:  # the match is in a variant not shown: show it first, as ←/→ in ctrl+g would
            try:
                self.tui.store.show_variant(hit.conversation_id, hit.variant)
            except UserError as error:  # gone meanwhile, or damaged: the conversation opens as it is
                self.notify(str(error), title="Variant not shown", severity="warning", timeout=8)
                at = None
        matched = hit.snippet[hit.match[0] : hit.match[1]]
        await self.open_conversation(hit.conversation_id, at=at, reply=hit.field == "assistant", matched=matched)

    async def open_conversation(
        self, conversation_id: int, at: int | None = None, *, reply: bool = False, matched: str = ""
    ) -> None:
        """Show a saved conversation: its last messages, or with ``at`` (a search's match) the turns around that one,
        that turn's message (or with ``reply`` its reply) marked and scrolled to the ``matched`` text."""
        store = self.tui.store
        try:
            turns = store.load(conversation_id)
            overrides, problem = store.conversation_settings(conversation_id)
        except UserError as error:  # the open chat stays as it is
            self._history_failed(error)
            return
        self._cancel_editing()
        self.conversation.turns[:] = turns
        self.conversation.id = conversation_id
        self.conversation.overrides = overrides
        self._overrides_unsaved = False
        if problem:
            self.notify(problem, title="Warning", severity="warning", timeout=10)
        self._show_overrides()
        await self._show_turns(at, reply, matched)
        self._show_context()
        self._focus_prompt()

    async def _show_turns(self, at: int | None = None, reply: bool = False, matched: str = "") -> None:
        """Mount a window of the conversation's turns as widgets, the others counted above and below.

        The window is the last ``Transcript.MOUNTED // 2`` turns, so a long chat opens as
        fast as a short one; holding turn ``at`` when that is older, a few turns before it
        for context, and the matched message scrolled to the top of the view (one line above
        the ``matched`` text when that is further down a tall message).
        """
        turns, size = self.conversation.turns, Transcript.MOUNTED // 2
        start = max(0, len(turns) - size)
        if at is not None and at < start:
            start = max(0, at - size // 4)
        end = min(len(turns), start + size)
        transcript = self.query_one(Transcript)
        await transcript.clear()
        backend = self.tui.backend
        label = backend.model_name if backend else "opt"
        variants = self._variants()
        widgets: list[Static | ReplyView] = []
        for index in range(start, end):
            turn, variant = turns[index], variants.get(index)
            view = ReplyView(turn.assistant, label=label, stopped=turn.stopped, variant=variant, ended=turn.stop_reason)
            widgets += [UserMessage(turn.user), view]
        transcript.hidden_messages = 2 * start
        await transcript.add(*widgets)
        await transcript.show_later(2 * (len(turns) - end))
        await self._mark_context_start()
        if at is None or not 0 <= at < len(turns):
            transcript.anchor()  # as after a reply: the newest message at the bottom, however short the chat
            return
        transcript.anchor(False)
        found = widgets[2 * (at - start) + reply]
        found.add_class("-found")
        self.call_after_refresh(self._scroll_to_match, transcript, found, matched)

    @staticmethod
    def _scroll_to_match(transcript: Transcript, found: Widget, matched: str) -> None:
        top = found.virtual_region.y  # the message's top, unless the match is below the view from there
        row = top + row_of(found, matched)
        if row >= top + transcript.scrollable_content_region.height:
            top = row - 1  # a line above the match, for context
        transcript.scroll_to(y=top, animate=False)

    async def _mark_context_start(self) -> None:
        """The transcript's line above the oldest turn the model still sees (none while all are seen)."""
        if self.session is not None and not self.query_one(Transcript).later_messages:  # (a window: the end unseen)
            reserve = self.session.reserve(self.effective_settings()[0])
            kept = len(self.conversation.turns) - self.session.first_kept(reserve)
            await self.query_one(Transcript).mark_context_start(kept)

    async def _back_to_the_end(self) -> None:
        """A conversation opened at an older match shows the latest turns again before it goes on."""
        if self.query_one(Transcript).later_messages:
            await self._show_turns()

    # copy and export

    def _last_reply(self) -> str | None:
        """The last finished reply's text (None while one streams, or with none yet: the user is told)."""
        if self._busy():
            return None
        turns = self.conversation.turns
        if not turns or not turns[-1].assistant:
            self._refuse("There is no reply yet")
            return None
        return turns[-1].assistant

    def _copy(self, text: str, what: str) -> None:
        """OSC 52 through Textual, and the same text in a file: many terminals ignore OSC 52."""
        self.app.copy_to_clipboard(text)
        try:
            path = write_text(clipboard_file(), text)
        except UserError as error:
            self.notify(f"Copied {what} by OSC 52 only: {error}", severity="warning", timeout=8)
            return
        self.notify(f"Copied {what} (if your terminal takes OSC 52), and into {path}", timeout=6)

    def action_copy_reply(self) -> None:
        text = self._last_reply()
        if text is not None:
            self._copy(text, "the last reply")

    def action_copy_code(self) -> None:
        text = self._last_reply()
        if text is None:
            return
        block = last_code_block(text)
        if block is None:
            self._refuse("The last reply has no code block")
            return
        self._copy(block, "the code block")

    def action_export(self) -> None:
        if self._busy():
            return
        turns = self.conversation.turns
        if not turns:
            self._refuse("There is nothing to export yet")
            return
        try:
            path = write_text(
                export_path(self.conversation.id), conversation_markdown(title_for(turns[0].user), turns, time.time())
            )
        except UserError as error:
            self.notify(str(error), title="Not exported", severity="error", timeout=8)
            return
        self.notify(f"Exported to {path}", timeout=8)

    # settings

    def effective_settings(self) -> tuple[SamplingSettings, str]:
        """The sampling values and preamble the open conversation replies with: its own over the defaults
        (with this run's command-line values: app.defaults)."""
        app = self.tui
        return resolve(app.settings.sampling, app.settings.preamble, app.session_settings, self.conversation.overrides)

    def _show_overrides(self) -> None:
        """The pane and the status line's marker follow the defaults and the conversation's own settings."""
        session = self.tui.session_settings.names
        self.query_one(SettingsForm).load(*self.tui.defaults(), self.conversation.overrides, session)
        self.query_one(StatusLine).custom = bool(self.conversation.overrides)
        self._show_context()

    def on_settings_form_applied(self, message: SettingsForm.Applied) -> None:
        if message.scope != CONVERSATION:
            if self.tui.save_defaults(message.sampling, message.preamble, message.changed):
                kept = sorted(message.changed & self.conversation.overrides.names)  # a default it does not follow
                note = f"; this conversation keeps its own {', '.join(kept)} (f6)" if kept else ""
                self.notify(f"Settings saved: they apply from the next reply{note}", timeout=3 + 3 * bool(kept))
            self._show_overrides()
            return
        values = {**message.sampling.to_dict(), "preamble": message.preamble}
        try:
            overrides = self.conversation.overrides.updated(
                {name: values[name] for name in message.changed}, *self.tui.defaults()
            )
        except UserError as error:  # the form checked the values already; this is a second line of defence
            self.notify(str(error), title="Setting refused", severity="error")
            return
        self._set_overrides(overrides)

    def on_settings_form_follow_defaults(self) -> None:
        if not self.conversation.overrides:
            self._refuse("This conversation already follows the defaults")
            return
        self._set_overrides(Overrides())

    def _set_overrides(self, overrides: Overrides) -> None:
        """Make ``overrides`` the conversation's own settings, saved now if it is in the history, else with it."""
        self.conversation.overrides = overrides
        self._show_overrides()
        if self.conversation.id is None:
            self._overrides_unsaved = True
            self.notify("This conversation's settings: kept with it once it is saved; from the next reply", timeout=4)
        elif self._save_overrides():
            self.notify("Saved for this conversation: they apply from the next reply", timeout=3)

    def _save_overrides(self) -> bool:
        """Write the conversation's own settings to the history; on failure they stay for this run, and it says so."""
        assert self.conversation.id is not None
        self._overrides_unsaved = False
        try:
            self.tui.store.set_conversation_settings(self.conversation.id, self.conversation.overrides)
        except (UserError, sqlite3.Error) as error:
            self.notify(f"This conversation's settings are kept for this run only: {error}", severity="warning")
            return False
        return True

    # shutdown

    def on_unmount(self) -> None:
        """Quitting mid-reply: stop the decode within one token and let it save what it has (5 s at most)."""
        self._stats_stop.set()
        streaming = self._streaming
        if streaming is not None:
            streaming.cancel.set()
            streaming.done.wait(timeout=5)
        if not gc.isenabled():
            gc.enable()

    @property
    def reply_running(self) -> bool:
        """A decode step still running after quitting asked it to stop (the backend must not be freed under it)."""
        return self._streaming is not None and not self._streaming.done.is_set()
