"""The chat screen: the chat (widgets/chat_pane.py) with a side pane for device stats or settings.

The screen lays out and routes keys. What a chat decides (sending, resending,
regenerating, variants, the context meter, a conversation's own settings, saving) is
the controller's (chat_controller.py, no Textual), over the engine the app loaded
(engine.py: in-process or a server). Each part owns its state: the chat pane streams the
replies and feeds the status line, the stats pane samples the device, copying is in
tui/copying.py. Which pane is open is a reactive, the narrow and too-small layouts are
breakpoint classes, and the stylesheet does the rest.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Static

from opt_tpu_tui.chat import Conversation, TranscriptSession, Turn
from opt_tpu_tui.chat_controller import ChatController, Streaming
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import SearchHit
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tui.compositor import DrawnScreen
from opt_tpu_tui.tui.copying import copy_last_reply, copy_text, export_chat
from opt_tpu_tui.tui.screens.conversations import ConversationsScreen
from opt_tpu_tui.tui.screens.messages import MessagesScreen
from opt_tpu_tui.tui.screens.search import SearchScreen
from opt_tpu_tui.tui.widgets.chat_pane import ChatPane
from opt_tpu_tui.tui.widgets.conversation import Transcript
from opt_tpu_tui.tui.widgets.footer import KeyFooter
from opt_tpu_tui.tui.widgets.prompt import PromptInput
from opt_tpu_tui.tui.widgets.settings_form import CONVERSATION, SettingsForm
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
        self.chat_pane = ChatPane(self.chat, self._figures_changed, id="chat")  # the chat itself: it streams the replies
        self._was_narrow: bool | None = None

    def _tell(self, text: str, title: str, severity: str, seconds: float) -> None:
        self.notify(text, title=title, severity=severity, timeout=seconds)  # type: ignore[arg-type]

    @property
    def tui(self) -> OptTuiApp:
        return self.app  # type: ignore[return-value]

    # what tests and benches read: the controller's
    conversation: Conversation = property(lambda self: self.chat.conversation)  # type: ignore[assignment]
    session: TranscriptSession | None = property(lambda self: self.chat.session)  # type: ignore[assignment]
    in_flight: Streaming | None = property(lambda self: self.chat.streaming)  # type: ignore[assignment]
    finished_replies: int = property(lambda self: self.chat_pane.finished_replies)  # type: ignore[assignment]
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
            yield self.chat_pane
            with Vertical(id="side"):
                with ContentSwitcher(id="side-switcher", initial="stats"):
                    yield StatsPanel(id="stats")
                    yield SettingsForm(id="settings")
        yield Static("", id="too-small", markup=False)
        yield KeyFooter()

    async def on_mount(self) -> None:
        app = self.tui
        self._show_overrides()
        await self.chat_pane.start()
        self.query_one(StatsPanel).follow(self.chat, app.backend_label, app.model_label)
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
        self.query_one(SettingsForm).greedy_only(engine.greedy_only)
        self.chat_pane.loaded(engine)
        self.query_one(StatsPanel).sample(engine)

    async def model_failed(self, error: str) -> None:
        await self.chat_pane.failed(error)

    def on_device_sampled(self) -> None:
        """The stats pane's tick (widgets/stats.py): while a reply streams, the meter follows it."""
        if self.chat.streaming is not None:
            self.chat_pane.show_context()

    def _figures_changed(self) -> None:
        self.query_one(StatsPanel).update_view()

    async def action_regenerate(self) -> None:
        await self.chat_pane.regenerate()

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
        if not self.chat_pane.busy():
            await self.chat_pane.clear()
            self._show_overrides()
            self._focus_prompt()

    def action_conversations(self) -> None:
        if self.chat_pane.busy():
            return
        store = self.tui.store
        try:
            conversations = store.list_conversations()
        except UserError:  # found damaged now: the store is unavailable, and the list says why (and tells it once)
            conversations = []
        screen = ConversationsScreen(conversations, self._delete_conversation, store.rename_conversation, self.chat.no_history())
        self.app.push_screen(screen, lambda chosen: None if chosen is None else self.open_conversation(chosen))

    def _delete_conversation(self, conversation_id: int) -> None:
        if self.chat.delete(conversation_id):
            self.call_later(self.action_new_conversation)

    def action_search(self) -> None:
        if not self.chat_pane.busy():
            self.app.push_screen(SearchScreen(self.tui.store.search, self.chat.no_history()), self._open_match)

    async def _open_match(self, hit: SearchHit | None) -> None:
        if hit is not None:
            at, matched = self.chat.show_match(hit), hit.snippet[hit.match[0] : hit.match[1]]
            await self.open_conversation(hit.conversation_id, at=at, reply=hit.field == "assistant", matched=matched)

    async def open_conversation(
        self, conversation_id: int, at: int | None = None, *, reply: bool = False, matched: str = ""
    ) -> None:
        """Show a saved conversation: its last messages, or with ``at`` (a search's match) the turns around that one,
        that turn's message (or with ``reply`` its reply) marked and scrolled to the ``matched`` text."""
        if await self.chat_pane.open(conversation_id, at, reply, matched):
            self._show_overrides()
            self._focus_prompt()

    def action_messages(self) -> None:
        if self.chat_pane.busy():
            return
        if not self.chat.conversation.turns:
            self.chat_pane.refuse("There are no messages yet")
            return
        self.query_one(PromptInput).cancel_editing()  # variants change what the indices point at
        screen = MessagesScreen(self.chat.conversation.turns, self.chat.variants(), self._switch_variant, partial(copy_text, self.app))
        self.app.push_screen(screen, self._start_editing)

    def _switch_variant(self, index: int, step: int) -> tuple[list[Turn], dict[int, tuple[int, int]]]:
        """Show another variant at message ``index`` (the messages screen's ←/→); the chat behind follows."""
        shown = self.chat.switch_variant(index, step)
        older = index < len(self.chat.conversation.turns) - Transcript.MOUNTED // 2
        self.call_later(self.chat_pane.show_turns, index if older else None)  # the end, unless that misses the message
        self.chat_pane.show_context()
        return shown

    def _start_editing(self, index: int | None) -> None:
        """Put message ``index`` in the prompt; enter resends it, escape brings back what was there."""
        if index is not None:
            self.query_one(PromptInput).start_editing(index, self.chat.conversation.turns[index].user)
            self._focus_prompt()

    # copy and export (tui/copying.py)

    def action_copy_reply(self) -> None:
        copy_last_reply(self.app, self.chat)

    def action_copy_code(self) -> None:
        copy_last_reply(self.app, self.chat, code=True)

    def action_export(self) -> None:
        export_chat(self.app, self.chat)

    # settings

    def _show_overrides(self) -> None:
        """The pane and the status line's marker follow the defaults and the conversation's own settings."""
        overrides = self.chat.conversation.overrides
        self.query_one(SettingsForm).load(*self.tui.defaults(), overrides, self.tui.session_settings.names)
        self.query_one(StatusLine).custom = bool(overrides)
        self.chat_pane.show_context()

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
