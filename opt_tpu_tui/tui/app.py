"""The Textual App: owns the model, the settings and the history; holds the chat screen.

The app loads the model in a worker and frees it on exit, so the backend's lifetime is
one place; the chat screen (screens/main.py) uses it. Everything slow or blocking is
injected (a model loader, a device-monitor factory) so tests can drive the real app
with a scripted backend.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.driver import Driver
from textual.screen import Screen
from textual.theme import Theme

from opt_tpu_tui.config import DEFAULT_THEME, Settings, SettingsNotSaved, changed_values, update_settings_file
from opt_tpu_tui.demo import DEMO_NOTICE
from opt_tpu_tui.devices import DeviceMonitor
from opt_tpu_tui.engine import Engine, LocalEngine, ModelLoader, Monitor
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.overrides import PREAMBLE, Overrides, resolve
from opt_tpu_tui.plain_text import can_show, stand_in
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.signals import exit_code, handle_in_loop, stop_handling_in_loop
from opt_tpu_tui.tui.driver import driver_for
from opt_tpu_tui.tui.messages import ModelFailed, ModelLoaded
from opt_tpu_tui.tui.screens.help import HelpScreen
from opt_tpu_tui.tui.screens.main import MainScreen
from opt_tpu_tui.tui.terminal_copy import CopiedTerminal
from opt_tpu_tui.tui.textual_patches import version_warning
from opt_tpu_tui.tui.themes import load_themes
from opt_tpu_tui.tui.widgets.ordered_keys import KeysInTurn

log = logging.getLogger("opt_tpu_tui.tui")
NO_MODEL = "no model: start with opt-tpu-tui --model DIR (a Hugging Face OPT or converted bmodel directory)"


class OptTuiApp(CopiedTerminal, KeysInTurn, App[int]):  # writes what changed: terminal_copy.py; keys in order: ordered_keys.py
    TITLE = "opt-tpu-tui"
    BINDINGS = [
        # Textual's quit key, shown: the footer keeps it at every width (widgets/footer.py)
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True,
                tooltip="quit (a reply in progress is stopped and saved; SIGHUP and SIGTERM do the same)"),
        # over the prompt's undo (ctrl+_ there): ctrl+z is the terminal's suspend key, and raw mode turned it off
        Binding("ctrl+z", "suspend_process", "Suspend", id="app.suspend", show=False, priority=True,
                tooltip="suspend to the shell (SIGTSTP); fg brings the app back"),
        Binding("f1", "help", "Help", id="app.help", show=False, tooltip="help: every key"),  # the status line shows "f1 help"
        Binding("ctrl+t", "next_theme", "Theme", id="app.theme", show=False,  # the footer must fit 80 columns
                tooltip="next theme (dark, light, high-contrast, …)"),
    ]  # fmt: skip

    def __init__(
        self,
        *,
        settings: Settings,
        store: HistoryStore,
        loader: ModelLoader | None,
        model_label: str = "no model",
        backend_label: str = "auto",
        demo: bool = False,
        warnings: Iterable[str] = (),
        monitor_factory: Callable[[str], Monitor] = DeviceMonitor,
        on_model_ready: Callable[[Engine], None] | None = None,
        session: Overrides | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.session_settings = session if session is not None else Overrides()  # the command line's, this run only
        self.store = store
        self.loader = loader
        self.model_label = model_label
        self.backend_label = backend_label
        self.demo = demo
        self.startup_warnings = list(warnings)
        self.monitor_factory = monitor_factory
        self._on_model_ready = on_model_ready
        self.engine: Engine | None = None  # what replies: the model loaded here, or a server's
        self.load_error: str | None = None if loader is not None else NO_MODEL
        # made in on_mount, inside the running loop: on Python 3.8 and 3.9 a widget's asyncio lock binds
        # to the current loop when it is made, and there is none outside the app's once one has been closed
        self.chat: MainScreen
        themes, theme_warnings = load_themes()
        self.startup_warnings += theme_warnings
        textual_warning = version_warning()  # the Textual internals patched (textual_patches.py): one line, no crash
        if textual_warning:
            self.startup_warnings.append(textual_warning)
        self.opt_themes: dict[str, Theme] = themes
        for theme in themes.values():
            self.register_theme(theme)

    def get_driver_class(self) -> type[Driver]:
        return driver_for(super().get_driver_class())

    def on_load(self) -> None:
        handle_in_loop(asyncio.get_running_loop(), self.end_by_signal)

    def end_by_signal(self, signum: int) -> None:
        """SIGHUP or SIGTERM (signals.py): quit as ctrl+q does, with exit code 128 + the signal's number.

        Quitting stops a reply between two tokens and saves it as stopped (the chat
        screen's unmount), the history closes after the app (tui.run) and Textual
        restores the terminal; on a terminal that hung up, the driver drops what it
        still writes (driver.py).
        """
        self.exit(return_code=exit_code(signum))

    def on_mount(self) -> None:
        wanted = self.settings.theme
        if wanted not in self.available_themes:
            self.startup_warnings.append(f"theme {wanted!r} not found; using {DEFAULT_THEME!r}")
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        for warning in self.startup_warnings:
            self.notify(warning, title="Warning", severity="warning", timeout=15)
        self.chat = MainScreen()
        self.push_screen(self.chat)  # pushed, not the default screen: only pushed screens load their CSS_PATH

    def load_model(self) -> None:
        """Start loading the model (the chat screen asks once it is on screen, to be told when it is ready)."""
        if self.loader is not None:
            self._load_model(self.loader)

    def startup_notices(self) -> Iterator[tuple[str, str]]:
        """(text, kind) lines the chat opens with."""
        if self.demo:
            yield DEMO_NOTICE, "demo"
        for warning in self.startup_warnings:
            yield f"Warning: {warning}", "warning"
        if self.load_error:
            yield self.load_error, "error"

    # the model

    @work(thread=True, exclusive=True, exit_on_error=False, group="load")
    def _load_model(self, loader: ModelLoader) -> None:
        try:
            loaded = loader()
            engine = LocalEngine(*loaded, self.monitor_factory) if isinstance(loaded, tuple) else loaded
        except UserError as error:
            self.post_message(ModelFailed(str(error)))
        except Exception as error:  # noqa: BLE001 - any failure must reach the UI as a message, not a traceback
            self.log_exception(error)
            self.post_message(ModelFailed(f"could not load the model: {type(error).__name__}: {error}"))
        else:
            self.post_message(ModelLoaded(engine))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.engine = message.engine
        if self._on_model_ready is not None:
            self._on_model_ready(message.engine)
        self.chat.model_loaded(message.engine)

    async def on_model_failed(self, message: ModelFailed) -> None:
        self.load_error = message.error
        await self.chat.model_failed(message.error)

    def on_unmount(self) -> None:
        """Free the backend (a TPU's device memory, an idle simulator's busy core) as the app closes.

        Unless a decode step is still running 5 s after quitting stopped it (the chat
        screen waited): then process exit frees it.
        """
        if self.engine is not None and not self.chat.reply_running:
            self.engine.close()
        stop_handling_in_loop(asyncio.get_running_loop())

    # settings

    def update_settings(self, **changes: Any) -> bool:
        """Apply, validate and save settings; a refused value keeps the old ones, a failed write keeps the new in memory.

        Only what differs from this app's settings is written, on top of the file as it
        is now, so another instance's changes survive.
        """
        try:
            new = replace(self.settings, **changes).validate()
            update_settings_file(changed_values(self.settings, new))
        except SettingsNotSaved as error:
            self.settings = new
            self.notify(f"could not save settings: {error}", severity="error")
            return False
        except UserError as error:
            self.notify(str(error), title="Setting refused", severity="error")
            return False
        self.settings = new
        return True

    def defaults(self) -> tuple[SamplingSettings, str]:
        """What a conversation without its own settings replies with: the saved defaults, with the values
        given on the command line for this run over them (overrides.resolve)."""
        return resolve(self.settings.sampling, self.settings.preamble, self.session_settings)

    def save_defaults(self, sampling: SamplingSettings, preamble: str, changed: frozenset[str]) -> bool:
        """Save the fields ``changed`` of the settings pane's defaults as the defaults; the others stay as saved.

        So a command-line value the pane shows is not saved unless the user changed that
        field; a field changed gives way to the value saved, for this run too.
        """
        values = {**sampling.to_dict(), PREAMBLE: preamble}
        wanted = replace(
            self.settings,
            sampling=replace(self.settings.sampling, **{n: values[n] for n in changed if n != PREAMBLE}),
            preamble=preamble if PREAMBLE in changed else self.settings.preamble,
        )
        saved = self.update_settings(sampling=wanted.sampling, preamble=wanted.preamble)
        if self.settings == wanted:  # saved, or kept in memory when the file could not be written
            self.session_settings = self.session_settings.without(changed)
        return saved

    def _remember_theme(self, theme: Theme) -> None:
        if theme.name != self.settings.theme:
            self.update_settings(theme=theme.name)

    # actions

    def get_key_display(self, binding: Binding) -> str:
        """Textual's key glyph (⏎ for enter); where the terminal cannot show it, its ASCII stand-in (↑↓ is ^v),
        or the key's name where that would be a bare '?' (plain_text.py)."""
        shown = super().get_key_display(binding)
        if can_show(shown, sys.__stderr__):
            return shown
        ascii_only = "".join(stand_in(char) for char in shown)
        return binding.key if "?" in ascii_only else ascii_only

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_next_theme(self) -> None:
        """Cycle through the themes shipped in themes/ (the palette's 'Change theme' offers all)."""
        names = sorted(self.opt_themes) or sorted(self.available_themes)
        current = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(current + 1) % len(names)]
        self.notify(f"Theme: {self.theme}", timeout=2)

    def log_exception(self, error: BaseException) -> None:
        """Keep the traceback for developers (Textual's devtools log) without showing it to the user."""
        log.exception("worker failed", exc_info=error)
        self.log.error(repr(error))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        owners = [screen, self] if isinstance(screen, MainScreen) else [self]
        for owner in owners:  # every key of the chat and of the app, as the help screen lists them
            for binding in owner.BINDINGS:
                assert isinstance(binding, Binding)
                yield SystemCommand(binding.description, f"{binding.tooltip} ({binding.key})",
                                    lambda owner=owner, action=binding.action: owner.run_action(action))  # fmt: skip
