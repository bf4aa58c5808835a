"""The chat screen: status line, transcript and prompt, with a side pane for device stats or settings.

The screen renders and routes keys; what a chat decides (sending, resending,
regenerating, variants, the context meter, a conversation's own settings, saving) is
the controller's (chat_controller.py, no Textual), over the engine the app loaded
(engine.py: in-process or a server). Replies run in a thread worker; a UI timer moves
the streamed text into the reply's widget, which owns the rendering. Which pane is
open is a reactive, the narrow and too-small layouts are breakpoint classes, and the
stylesheet does the rest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Static
from textual.worker import get_current_worker

from opt_tpu_tui.chat import Conversation, TranscriptSession, Turn
from opt_tpu_tui.chat_controller import BUSY, ChatController, Streaming
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.export import clipboard_file, last_code_block, write_text
from opt_tpu_tui.history import SearchHit
from opt_tpu_tui.persist import Outcome
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tui.compositor import DrawnScreen
from opt_tpu_tui.tui.messages import ReplyFinished
from opt_tpu_tui.tui.screens.conversations import ConversationsScreen
from opt_tpu_tui.tui.screens.messages import MessagesScreen
from opt_tpu_tui.tui.screens.search import SearchScreen
from opt_tpu_tui.tui.widgets.conversation import Notice, ReplyView, Transcript, UserMessage
from opt_tpu_tui.tui.widgets.footer import KeyFooter
from opt_tpu_tui.tui.widgets.prompt import PromptInput
from opt_tpu_tui.tui.widgets.settings_form import CONVERSATION, GREEDY_NOTE, SettingsForm
from opt_tpu_tui.tui.widgets.stats import StatsPanel
from opt_tpu_tui.tui.widgets.status import StatusLine

if TYPE_CHECKING:
    from opt_tpu_tui.tui.app import OptTuiApp

MIN_WIDTH, MIN_HEIGHT = 60, 15  # below this the screen says it is too small
WIDE = 100  # from this many columns the side pane sits beside the chat; below, it replaces it
QUIT_HINT = "ctrl+q quits (ctrl+c copies selected text, and stops a reply)"


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
        self.chat = ChatController(self.tui.store, self.tui.defaults, self._tell)
        self._view: ReplyView | None = None  # the streaming reply's widget
        self._was_narrow: bool | None = None
        self._load_started = time.monotonic()  # the state line counts the seconds a load takes: loading, not hung
        self._load_timer: Timer | None = None
        self.finished_replies = 0  # how many replies have ended and been drawn (tests and the benches wait on it)

    def _tell(self, text: str, title: str, severity: str, seconds: float) -> None:
        self.notify(text, title=title, severity=severity, timeout=seconds)  # type: ignore[arg-type]

    @property
    def tui(self) -> OptTuiApp:
        return self.app  # type: ignore[return-value]

    # what tests and benches read: the controller's
    conversation: Conversation = property(lambda self: self.chat.conversation)  # type: ignore[assignment]
    session: TranscriptSession | None = property(lambda self: self.chat.session)  # type: ignore[assignment]
    in_flight: Streaming | None = property(lambda self: self.chat.streaming)  # type: ignore[assignment]
    reply_running: bool = property(lambda self: self.chat.reply_running)  # type: ignore[assignment]

    @property
    def streaming(self) -> bool:
        return self.chat.streaming is not None

    @property
    def narrow(self) -> bool:
        return self.size.width < WIDE

    @property
    def too_small(self) -> bool:
        """Below MIN_WIDTH x MIN_HEIGHT: the chat is hidden behind a line saying so."""
        width, height = self.app.size
        return width < MIN_WIDTH or height < MIN_HEIGHT

    def effective_settings(self) -> tuple[SamplingSettings, str]:
        return self.chat.effective_settings()

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
        await self.query_one(Transcript).add(*[Notice(text, kind) for text, kind in app.startup_notices()])
        self.query_one(StatsPanel).follow(self.chat, app.backend_label, app.model_label)
        self._load_started = time.monotonic()
        self._load_timer = self.set_interval(1, self._update_state)  # stopped once loaded (or failed)
        self._update_state()
        app.load_model()

    def watch_pane(self, pane: str) -> None:
        self.set_class(pane != "hidden", "-side-open")
        if pane != "hidden":
            self.query_one(ContentSwitcher).current = pane
        self.query_one(StatsPanel).shown = pane == "stats"

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

    # the engine (loaded by the app)

    def model_loaded(self, engine: Engine) -> None:
        self.chat.attach(engine)
        what = f"Connected to the server ({engine.name})" if engine.remote else "Model loaded"
        self.call_later(self.query_one(Transcript).add, Notice(f"{what} in {time.monotonic() - self._load_started:.1f} s", "info"))
        status = self.query_one(StatusLine)
        status.model, status.backend, status.context_size = engine.model_name, engine.name, engine.context_length
        self.query_one(SettingsForm).greedy_only(engine.greedy_only)
        if engine.greedy_only:  # said in the chat too: the settings pane may be closed
            self.call_later(self.query_one(Transcript).add, Notice(GREEDY_NOTE, "info"))
        self._show_context()
        self._update_state()
        self.query_one(StatsPanel).sample(engine)

    async def model_failed(self, error: str) -> None:
        await self.query_one(Transcript).add(Notice(f"Model failed to load: {error}", "error"))
        self.notify(error, title="Model failed to load", severity="error", timeout=10)
        self._update_state()

    # the status line

    def on_device_sampled(self) -> None:
        """The stats pane's tick (widgets/stats.py): while a reply streams, the meter follows it."""
        if self.chat.streaming is not None:
            self._show_context()

    def _show_context(self) -> None:
        """The context meter (chat.TranscriptSession.context_use): the tokens the model sees, and whether it is full."""
        use = self.chat.context_use()
        if use is not None:
            status = self.query_one(StatusLine)
            status.context_used, status.drops_next = use.used, use.full

    def _update_state(self) -> None:
        """The status line's state and, matching it, why the prompt would refuse a message now."""
        app, prompt = self.tui, self.query_one(PromptInput)
        if app.load_error:
            state, prompt.refusal = "no model", f"Cannot reply: {app.load_error}"
        elif self.chat.session is None:
            waited = int(time.monotonic() - self._load_started)
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

    def _refuse(self, text: str) -> bool:
        self.notify(text, severity="warning")
        return False

    def _busy(self) -> bool:
        """A reply is streaming (and the user is told so): actions that change the chat wait."""
        return self.chat.streaming is not None and not self._refuse(BUSY)

    def _refused(self) -> bool:
        """Nothing can start now (loading, streaming, no model): the user is told why, as the prompt would."""
        if self.chat.streaming is None and self.chat.session is not None:
            return False
        self._refuse(self.query_one(PromptInput).refusal or BUSY)
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
            await self._show_turns()
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
        await self._show_turns()
        await self.query(ReplyView).last().remove()  # the new turn's reply streams in its own view
        await self._stream(streaming)
        return True

    async def action_regenerate(self) -> None:
        if self._busy():
            return
        if self.chat.session is None or not self.chat.conversation.turns:
            self._refuse("There is no reply to regenerate")
            return
        streaming = self._try(self.chat.regenerate, "Not regenerated")
        if streaming is None:
            return
        if self.query_one(Transcript).later_messages:
            await self._show_turns()
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
        self._show_context()  # the prompt as sent, from the reply's start
        self._view.stream(streaming.buffer)
        self._update_state()
        self._run_reply(streaming)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reply")
    def _run_reply(self, streaming: Streaming) -> None:
        """The decode loop, off the UI thread (the controller saves the reply as it grows)."""
        worker = get_current_worker()
        self.post_message(ReplyFinished(self.chat.run(streaming, lambda: worker.is_cancelled)))

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        streaming, view = self.chat.end_stream(), self._view
        if streaming is None or view is None:
            return
        self._view = None
        await view.end_stream()
        if not view.is_attached:  # the app is closing
            return
        outcome: Outcome = message.outcome
        turn, ending = streaming.reply.turn, self.chat.finish(streaming, message.outcome)
        if ending == "kept":
            await view.finish(turn.assistant, stopped=turn.stopped, error=outcome.error, ended=turn.stop_reason)
            view.show_variant(self.chat.variants().get(len(self.chat.conversation.turns) - 1))
        elif ending == "reloaded":  # not saved, so not sent: the saved turns are the conversation
            await self._show_turns()
            self.query_one(PromptInput).give_back(turn.user)
        else:  # the message was taken back: nothing of this turn stays on screen either
            await self.query(UserMessage).last().remove()
            await view.remove_with_rows()
            self.query_one(PromptInput).give_back(turn.user)
        self._show_context()
        status, stats = self.query_one(StatusLine), streaming.reply.stats
        status.first_token, status.speed = stats.prefill_seconds, stats.tokens_per_second
        self.finished_replies += 1
        self._update_state()
        self.query_one(StatsPanel).update_view()

    # keys that stop

    @property
    def _pane_in_the_way(self) -> bool:
        """An open pane that covers the chat (narrow) or holds the focus: escape closes it first."""
        return self.pane != "hidden" and (self.narrow or self.query_one("#side").has_focus_within)

    def action_stop(self) -> None:
        """Escape: close a pane that is in the way (back to the prompt); else stop the reply, or the edit."""
        if self._pane_in_the_way:
            self._focus_prompt()
        elif not self.chat.stop():
            self.query_one(PromptInput).cancel_editing()

    def action_interrupt(self) -> None:
        """ctrl+c: copy what is selected (in the focused field, else on the screen), as Textual does;
        with nothing selected stop the reply, as escape does; idle, say how to quit (ctrl+c does not)."""
        selected = getattr(self.focused, "selected_text", "") or self.get_selected_text()
        if selected:
            self.app.copy_to_clipboard(selected)
        elif not self.chat.stop():
            self.notify(QUIT_HINT, timeout=4)

    def _focus_prompt(self) -> None:
        """The prompt takes the focus, and a pane over it (narrow) closes: what is typed shows."""
        if self.narrow:
            self.pane = "hidden"
        self.query_one(PromptInput).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop" and self.chat.streaming is None and self.query_one(PromptInput).editing is None:
            return None if not self._pane_in_the_way else True  # None: shown dimmed in the Footer
        return True

    # conversations, messages and variants

    async def action_new_conversation(self) -> None:
        if self._busy():
            return
        self.query_one(PromptInput).cancel_editing()
        self.chat.new_conversation()
        self._show_overrides()
        await self.query_one(Transcript).clear()
        status = self.query_one(StatusLine)
        status.first_token = status.speed = 0.0
        self._show_context()
        self.query_one(StatsPanel).update_view()
        self._focus_prompt()

    def action_conversations(self) -> None:
        if self._busy():
            return
        store = self.tui.store
        try:
            conversations = store.list_conversations()
        except UserError:  # found damaged now: the store is unavailable, and the list says why (and tells it once)
            conversations = []
        screen = ConversationsScreen(conversations, self._delete_conversation, store.rename_conversation, self.chat.no_history())
        self.app.push_screen(screen, self._open_conversation)

    def _delete_conversation(self, conversation_id: int) -> None:
        if self.chat.delete(conversation_id):
            self.call_later(self.action_new_conversation)

    async def _open_conversation(self, conversation_id: int | None) -> None:
        if conversation_id is not None:
            await self.open_conversation(conversation_id)

    def action_search(self) -> None:
        if not self._busy():
            self.app.push_screen(SearchScreen(self.tui.store.search, self.chat.no_history()), self._open_match)

    async def _open_match(self, hit: SearchHit | None) -> None:
        if hit is None:
            return
        at: int | None = hit.turn
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
        if not self.chat.open(conversation_id):
            return  # the open chat stays as it is
        self.query_one(PromptInput).cancel_editing()
        self._show_overrides()
        await self._show_turns(at, reply, matched)
        self._show_context()
        self._focus_prompt()

    async def _show_turns(self, at: int | None = None, reply: bool = False, matched: str = "") -> None:
        """The conversation's turns in the transcript (a window of them: Transcript.show_turns), the context's start
        marked; with ``at``, that turn's message (or ``reply``) marked and scrolled to the ``matched`` text."""
        transcript, engine = self.query_one(Transcript), self.chat.engine
        found = await transcript.show_turns(self.chat.conversation.turns, self.chat.variants(), engine.model_name if engine else "opt", at)
        await self._mark_context_start()
        transcript.anchor(not found)  # none to find: as after a reply, the newest message at the bottom
        if found:
            found[reply].add_class("-found")
            self.call_after_refresh(transcript.scroll_to_match, found[reply], matched)

    async def _mark_context_start(self) -> None:
        """The transcript's line above the oldest turn the model still sees (none while all are seen)."""
        kept = self.chat.kept_turns()
        if kept is not None and not self.query_one(Transcript).later_messages:  # (a window: the end unseen)
            await self.query_one(Transcript).mark_context_start(kept)

    def action_messages(self) -> None:
        if self._busy():
            return
        if not self.chat.conversation.turns:
            self._refuse("There are no messages yet")
            return
        self.query_one(PromptInput).cancel_editing()  # variants change what the indices point at
        screen = MessagesScreen(self.chat.conversation.turns, self.chat.variants(), self._switch_variant, self._copy)
        self.app.push_screen(screen, self._start_editing)

    def _switch_variant(self, index: int, step: int) -> tuple[list[Turn], dict[int, tuple[int, int]]]:
        """Show another variant at message ``index`` (the messages screen's ←/→); the chat behind follows."""
        shown = self.chat.switch_variant(index, step)
        older = index < len(self.chat.conversation.turns) - Transcript.MOUNTED // 2
        self.call_later(self._show_turns, index if older else None)  # the end, unless that misses the message
        self._show_context()
        return shown

    def _start_editing(self, index: int | None) -> None:
        """Put message ``index`` in the prompt; enter resends it, escape brings back what was there."""
        if index is not None:
            self.query_one(PromptInput).start_editing(index, self.chat.conversation.turns[index].user)
            self._focus_prompt()

    # copy and export

    def _copy(self, text: str, what: str) -> None:
        """OSC 52 through Textual, and the same text in a file: many terminals ignore OSC 52."""
        self.app.copy_to_clipboard(text)
        try:
            path = write_text(clipboard_file(), text)
        except UserError as error:
            self.notify(f"Copied {what} by OSC 52 only: {error}", severity="warning", timeout=8)
            return
        self.notify(f"Copied {what} (if your terminal takes OSC 52), and into {path}", timeout=6)

    def _last_reply(self) -> str | None:
        try:
            return self.chat.last_reply()
        except UserError as error:
            self._refuse(str(error))
            return None

    def action_copy_reply(self) -> None:
        text = self._last_reply()
        if text is not None:
            self._copy(text, "the last reply")

    def action_copy_code(self) -> None:
        text = self._last_reply()
        block = None if text is None else last_code_block(text)
        if text is not None and block is None:
            self._refuse("The last reply has no code block")
        elif block is not None:
            self._copy(block, "the code block")

    def action_export(self) -> None:
        if self._busy():
            return
        if not self.chat.conversation.turns:
            self._refuse("There is nothing to export yet")
            return
        try:
            self.notify(f"Exported to {self.chat.export()}", timeout=8)
        except UserError as error:
            self.notify(str(error), title="Not exported", severity="error", timeout=8)

    # settings

    def _show_overrides(self) -> None:
        """The pane and the status line's marker follow the defaults and the conversation's own settings."""
        overrides = self.chat.conversation.overrides
        self.query_one(SettingsForm).load(*self.tui.defaults(), overrides, self.tui.session_settings.names)
        self.query_one(StatusLine).custom = bool(overrides)
        self._show_context()

    def on_settings_form_applied(self, message: SettingsForm.Applied) -> None:
        if message.scope == CONVERSATION:
            self.chat.set_own({**message.sampling.to_dict(), "preamble": message.preamble}, message.changed)
        elif self.tui.save_defaults(message.sampling, message.preamble, message.changed):
            kept = sorted(message.changed & self.chat.conversation.overrides.names)  # a default it does not follow
            note = f"; this conversation keeps its own {', '.join(kept)} (f6)" if kept else ""
            self.notify(f"Settings saved: they apply from the next reply{note}", timeout=3 + 3 * bool(kept))
        self._show_overrides()

    def on_settings_form_follow_defaults(self) -> None:
        self.chat.follow_defaults()
        self._show_overrides()

    # shutdown

    def on_unmount(self) -> None:
        """Quitting mid-reply: stop the decode within one token and let it save what it has (5 s at most)."""
        self.chat.close(wait=5)
