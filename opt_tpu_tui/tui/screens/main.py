"""The chat screen: transcript and prompt, with a side pane for device stats or settings.

This screen is the controller between the widgets (which only render) and the
services (ChatSession, HistoryStore, DeviceMonitor: no Textual inside). Blocking
work runs in thread workers only: model loading, the decode loop, device sampling.
The decode worker fills a TokenBuffer; a UI timer drains it at FLUSH_HZ into a
MarkdownStream, so a reply costs a render per tick, not per token.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import TYPE_CHECKING, Protocol

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Static
from textual.worker import get_current_worker

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.chat import ChatSession, Turn
from opt_tpu_tui.demo import DEMO_NOTICE
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.tui.messages import DeviceSampled, ModelFailed, ModelLoaded, ReplyFinished
from opt_tpu_tui.tui.screens.conversations import ConversationsScreen
from opt_tpu_tui.tui.streaming import ReplyJob
from opt_tpu_tui.tui.widgets.conversation import AssistantMessage, Notice, ReplyStream, Transcript, UserMessage
from opt_tpu_tui.tui.widgets.prompt import PromptInput
from opt_tpu_tui.tui.widgets.settings_form import SettingsForm
from opt_tpu_tui.tui.widgets.stats import StatsPanel, StatsView

if TYPE_CHECKING:
    from opt_tpu_tui.tui.app import OptTuiApp

FLUSH_HZ = 15  # textual.md: 10-20 Hz keeps UI CPU low and the stream smooth
NARROW = 100  # below this many columns the side pane replaces the chat instead of sitting beside it
STATS_PERIOD = 1.0


class Monitor(Protocol):
    def sample(self) -> DeviceSample: ...


class MainScreen(Screen[None]):
    CSS_PATH = "main.tcss"
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("ctrl+r", "regenerate", "Regen", id="chat.regenerate"),
        Binding("ctrl+n", "new_conversation", "New", id="chat.new"),
        Binding("ctrl+o", "conversations", "Chats", id="chat.conversations"),
        Binding("f2", "pane('settings')", "Settings", id="pane.settings"),
        Binding("f3", "pane('stats')", "Stats", id="pane.stats"),
        Binding("f4", "pane('toggle')", "Pane", id="pane.toggle", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[Turn] = []  # the open conversation; the session shares this list
        self.conversation_id: int | None = None
        self.session: ChatSession | None = None
        self.backend: Backend | None = None
        self.load_error: str | None = None
        self._job: ReplyJob | None = None
        self._stream: ReplyStream | None = None
        self._reply_view: AssistantMessage | None = None
        self._flush_timer: Timer | None = None
        self._stats_stop = threading.Event()
        self._last_prefill: float | None = None
        self._last_cached = 0  # prompt tokens the last prefill took from the cache
        self._last_speed: float | None = None
        self._last_context = 0
        self._device: DeviceSample | None = None
        self._pane = "hidden"
        self._narrow = False
        self.finished_replies = 0  # how many replies have ended (tests and the bench wait on it)

    @property
    def tui(self) -> OptTuiApp:
        return self.app  # type: ignore[return-value]

    @property
    def streaming(self) -> bool:
        return self._job is not None

    # layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="chat"):
                yield Static("", id="status", markup=False)
                yield Transcript(id="transcript")
                yield PromptInput(id="prompt")
            with Vertical(id="side"):
                with ContentSwitcher(id="side-switcher", initial="stats"):
                    yield StatsPanel(id="stats")
                    yield SettingsForm(id="settings")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        app = self.tui
        self.query_one(SettingsForm).load(app.settings.sampling, app.settings.preamble)
        self._narrow = self.app.size.width < NARROW
        self._set_pane("hidden" if self._narrow else app.settings.side_pane, remember=False)
        transcript = self.query_one(Transcript)
        if app.demo:
            transcript.mount(
                Notice(DEMO_NOTICE, "demo")
            )
        for warning in app.startup_warnings:
            transcript.mount(Notice(f"Warning: {warning}", "warning"))
        self._show_stats()
        self.query_one(PromptInput).focus()
        if app.loader is None:
            self.load_error = "no model: start with opt-tpu-tui --model DIR (a Hugging Face OPT or converted bmodel directory)"
            transcript.mount(Notice(self.load_error, "error"))
        else:
            self._load_model()
        self._update_status()

    def on_resize(self) -> None:
        narrow = self.app.size.width < NARROW
        if narrow != self._narrow:
            self._narrow = narrow
            self._set_pane("hidden" if narrow else self.tui.settings.side_pane, remember=False)

    def _set_pane(self, pane: str, remember: bool = True) -> None:
        """Show ``pane`` ("stats", "settings") in the side, or "hidden"; when narrow it replaces the chat."""
        self._pane = pane
        self.set_class(pane != "hidden", "-side-open")
        self.set_class(self._narrow, "-narrow")
        if pane != "hidden":
            self.query_one(ContentSwitcher).current = pane
        if remember and not self._narrow and pane != self.tui.settings.side_pane:
            self.tui.update_settings(side_pane=pane)

    def action_pane(self, which: str) -> None:
        if which == "toggle":
            target = "hidden" if self._pane != "hidden" else (self.tui.settings.side_pane if self.tui.settings.side_pane != "hidden" else "stats")
        else:
            target = "hidden" if self._pane == which else which
        self._set_pane(target)
        if target == "settings":
            self.query_one("#field-max_new_tokens").focus()
        elif target == "hidden" or not self._narrow:
            self.query_one(PromptInput).focus()

    # model loading

    @work(thread=True, exclusive=True, exit_on_error=False, group="load")
    def _load_model(self) -> None:
        loader = self.tui.loader
        assert loader is not None
        try:
            backend, tokenizer = loader()
        except UserError as error:
            self.post_message(ModelFailed(str(error)))
        except Exception as error:  # noqa: BLE001 - any failure must reach the UI as a message, not a traceback
            self.tui.log_exception(error)
            self.post_message(ModelFailed(f"could not load the model: {type(error).__name__}: {error}"))
        else:
            self.post_message(ModelLoaded(backend, tokenizer))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.backend = message.backend
        self.session = ChatSession(message.backend, message.tokenizer, self.tui.settings.preamble, self.turns)
        self.load_error = None
        self.tui.model_ready(message.backend)
        self._update_status()
        self._show_stats()
        self._stats_stop.clear()
        self._sample_devices(self.tui.monitor_factory(message.backend.name))

    def on_model_failed(self, message: ModelFailed) -> None:
        self.load_error = message.error
        self.query_one(Transcript).mount(Notice(f"Model failed to load: {message.error}", "error"))
        self.notify(message.error, title="Model failed to load", severity="error", timeout=10)
        self._update_status()

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
        if self._job is not None:
            stats = self._job.reply.stats
            self._last_context = stats.context_used or self._last_context
            if stats.prefill_seconds:
                self._last_prefill, self._last_cached = stats.prefill_seconds, stats.cached_tokens
            self._last_speed = stats.tokens_per_second
            self.query_one(StatsPanel).add_speed(stats.tokens_per_second)
            self._update_status()
        self._show_stats()

    def _show_stats(self) -> None:
        backend = self.backend
        view = StatsView(
            backend=backend.name if backend else self.tui.backend_label,
            model=backend.model_name if backend else self.tui.model_label,
            context_used=self._last_context,
            context_size=backend.context_length if backend else 0,
            prefill_seconds=self._last_prefill,
            cached_tokens=self._last_cached,
            tokens_per_second=self._last_speed,
            device=self._device,
        )
        self.query_one(StatsPanel).show(view)

    def _update_status(self) -> None:
        app = self.tui
        if self.backend is not None:
            where = f"{self.backend.model_name} on {self.backend.name}"
            context = f" · context {self._last_context}/{self.backend.context_length}"
        else:
            where, context = f"{app.model_label} on {app.backend_label}", ""
        if self.load_error:
            state = "no model"
        elif self.backend is None:
            state = "loading model…"
        elif self._job is not None:
            state = "replying… (esc stops)"
        else:
            state = "ready"
        demo = " · DEMO model" if app.demo else ""
        self.query_one("#status", Static).update(f"{where}{demo}{context} · {state} · f1 help")

    # sending and streaming

    async def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        await self.send(message.text)

    def _refuse(self, text: str) -> None:
        self.notify(text, severity="warning")

    def _ready_to_reply(self) -> bool:
        if self._job is not None:
            self._refuse("A reply is streaming: press escape to stop it first")
            return False
        if self.session is None:
            self._refuse(f"Cannot reply: {self.load_error}" if self.load_error else "The model is still loading")
            return False
        self.session.preamble = self.tui.settings.preamble
        return True

    async def send(self, text: str) -> None:
        if not self._ready_to_reply():
            return
        assert self.session is not None
        job_cancel = threading.Event()
        try:
            reply = self.session.send(text, self.tui.settings.sampling, job_cancel)
        except UserError as error:
            self.notify(str(error), title="Not sent", severity="error")
            return
        self.query_one(PromptInput).clear()
        await self.query_one(Transcript).mount(UserMessage(reply.turn.user))
        await self._start(ReplyJob(reply, self.conversation_id, cancel=job_cancel))

    async def action_regenerate(self) -> None:
        if not self.turns:
            self._refuse("There is no reply to regenerate")
            return
        if not self._ready_to_reply():
            return
        assert self.session is not None
        job_cancel = threading.Event()
        try:
            reply = self.session.regenerate(self.tui.settings.sampling, job_cancel)
        except UserError as error:
            self.notify(str(error), title="Not regenerated", severity="error")
            return
        replies = self.query(AssistantMessage)
        if replies:
            await replies.last().remove()
        await self._start(ReplyJob(reply, self.conversation_id, regenerate=True, cancel=job_cancel))

    async def _start(self, job: ReplyJob) -> None:
        transcript = self.query_one(Transcript)
        view = AssistantMessage(label=self.backend.model_name if self.backend else "opt")
        await transcript.mount(view)
        transcript.anchor()
        self._job, self._reply_view = job, view
        self._stream = view.start_stream()
        gc.disable()  # textual.md: gen-2 collections stall the stream for 200-300 ms; collect at the end
        self._flush_timer = self.set_interval(1 / FLUSH_HZ, self._flush)
        self._update_status()
        self._run_reply(job)

    async def _flush(self) -> None:
        if self._job is None or self._stream is None:
            return
        text = self._job.buffer.take()
        if text:
            await self._stream.write(text)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reply")
    def _run_reply(self, job: ReplyJob) -> None:
        """The decode loop, off the UI thread; saves the reply as it grows so a kill loses only the tail."""
        worker = get_current_worker()
        store = self.tui.store
        turn = job.reply.turn
        turn_id: int | None = None
        try:
            if job.conversation_id is None:
                job.conversation_id = store.create_conversation(turn.user)
            last = store.last_turn_id(job.conversation_id) if job.regenerate else None
            if last is not None:
                turn_id = last
                store.restart_turn(turn_id)
            else:
                turn_id = store.add_turn(job.conversation_id, turn.user)
            saved = time.monotonic()
            for piece in job.reply:
                job.buffer.push(piece)
                if worker.is_cancelled:
                    job.cancel.set()  # the generation stops before its next token
                now = time.monotonic()
                if now - saved >= job.save_interval:
                    store.save_reply(turn_id, turn.assistant)
                    saved = now
        except UserError as error:
            job.error = str(error)
        except Exception as error:  # noqa: BLE001 - a backend failure is shown in the transcript, not raised
            self.tui.log_exception(error)
            job.error = f"reply failed: {type(error).__name__}: {error}"
        finally:
            if job.error:
                turn.stopped = True
            if turn_id is not None:
                try:
                    store.save_reply(turn_id, turn.assistant, stopped=turn.stopped, complete=True)
                except Exception as error:  # noqa: BLE001
                    job.error = job.error or f"could not save the reply: {error}"
            job.done.set()
            self.post_message(ReplyFinished(job))

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        job = message.job
        if job is not self._job:
            return
        if self._flush_timer is not None:
            self._flush_timer.stop()
        self._flush_timer = None
        if self._stream is not None:
            await self._stream.stop()
        self._stream = None
        view = self._reply_view
        self._job, self._reply_view = None, None
        self.conversation_id = job.conversation_id
        stats = job.reply.stats
        if stats.prefill_seconds:
            self._last_prefill, self._last_cached = stats.prefill_seconds, stats.cached_tokens
        self._last_speed = stats.tokens_per_second
        self._last_context = stats.context_used or self._last_context
        if view is not None:
            await view.finish(job.reply.turn.assistant, stopped=job.reply.turn.stopped, error=job.error)
        if job.error:
            self.notify(job.error, title="Reply failed", severity="error", timeout=8)
        gc.enable()
        gc.collect()
        self.finished_replies += 1
        self._update_status()
        self._show_stats()

    def action_stop(self) -> None:
        if self._job is not None:
            self._job.cancel.set()
        elif self._narrow and self._pane != "hidden":
            self.action_pane("toggle")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop" and self._job is None and not (self._narrow and self._pane != "hidden"):
            return None  # shown dimmed in the Footer
        return True

    # conversations

    def action_new_conversation(self) -> None:
        if self._job is not None:
            self._refuse("A reply is streaming: press escape to stop it first")
            return
        self.turns.clear()
        self.conversation_id = None
        self.query_one(Transcript).remove_children()
        self._last_context = 0
        self._update_status()
        self._show_stats()
        self.query_one(PromptInput).focus()

    def action_conversations(self) -> None:
        if self._job is not None:
            self._refuse("A reply is streaming: press escape to stop it first")
            return
        self.app.push_screen(
            ConversationsScreen(self.tui.store.list_conversations(), self._delete_conversation), self._open_conversation
        )

    def _delete_conversation(self, conversation_id: int) -> None:
        self.tui.store.delete_conversation(conversation_id)
        if conversation_id == self.conversation_id:
            self.action_new_conversation()

    def _open_conversation(self, conversation_id: int | None) -> None:
        if conversation_id is None:
            return
        self.open_conversation(conversation_id)

    def open_conversation(self, conversation_id: int) -> None:
        turns = self.tui.store.load(conversation_id)
        self.turns[:] = turns
        self.conversation_id = conversation_id
        transcript = self.query_one(Transcript)
        transcript.remove_children()
        label = self.backend.model_name if self.backend else "opt"
        widgets = []
        for turn in turns:
            widgets += [UserMessage(turn.user), AssistantMessage(turn.assistant, label=label, stopped=turn.stopped, frozen=True)]
        transcript.mount_all(widgets)
        transcript.anchor()  # as after a reply: the newest message at the bottom, however short the chat
        self.query_one(PromptInput).focus()

    # settings

    def on_settings_form_applied(self, message: SettingsForm.Applied) -> None:
        self.tui.update_settings(sampling=message.sampling, preamble=message.preamble)
        self.notify("Settings saved: they apply from the next reply", timeout=3)

    # shutdown

    def on_unmount(self) -> None:
        """Quitting mid-reply: stop the decode within one token and let it save what it has.

        Then free the backend (a TPU's device memory, an idle simulator's busy core),
        unless a decode step is still running after 5 s: process exit frees it then.
        """
        self._stats_stop.set()
        job = self._job
        if job is not None:
            job.cancel.set()
            job.done.wait(timeout=5)
        if self.backend is not None and (job is None or job.done.is_set()):
            self.backend.close()
        if not gc.isenabled():
            gc.enable()

