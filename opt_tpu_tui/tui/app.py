"""The Textual App: owns the services and settings, registers themes, holds the main screen.

Kept thin: the chat logic lives in screens/main.py, persistence in config.py and
history.py, device sampling in devices.py. Everything slow or blocking is injected
(a model loader, a device-monitor factory) so tests can drive the real app with a
scripted backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.config import DEFAULT_THEME, Settings, SettingsNotSaved, changed_values, update_settings_file
from opt_tpu_tui.devices import DeviceMonitor
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.tui.screens.help import HelpScreen
from opt_tpu_tui.tui.screens.main import MainScreen, Monitor
from opt_tpu_tui.tui.streaming import ModelLoader
from opt_tpu_tui.tui.themes import load_themes

log = logging.getLogger("opt_tpu_tui.tui")


class OptTuiApp(App[int]):
    TITLE = "opt-tpu-tui"
    BINDINGS = [
        Binding("f1", "help", "Help", id="app.help", show=False),  # the status line always shows "f1 help"
        Binding("ctrl+t", "next_theme", "Theme", id="app.theme", show=False),  # help and palette list it: the footer must fit 80 columns
    ]

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
        on_model_ready: Callable[[Backend], None] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.loader = loader
        self.model_label = model_label
        self.backend_label = backend_label
        self.demo = demo
        self.startup_warnings = list(warnings)
        self.monitor_factory = monitor_factory
        self._on_model_ready = on_model_ready
        themes, theme_warnings = load_themes()
        self.startup_warnings += theme_warnings
        self.opt_themes: dict[str, Theme] = themes
        for theme in themes.values():
            self.register_theme(theme)

    def on_mount(self) -> None:
        wanted = self.settings.theme
        if wanted not in self.available_themes:
            self.startup_warnings.append(f"theme {wanted!r} not found; using {DEFAULT_THEME!r}")
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        for warning in self.startup_warnings:
            self.notify(warning, title="Warning", severity="warning", timeout=15)
        self.push_screen(MainScreen())

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

    def _remember_theme(self, theme: Theme) -> None:
        if theme.name != self.settings.theme:
            self.update_settings(theme=theme.name)

    def model_ready(self, backend: Backend) -> None:
        if self._on_model_ready is not None:
            self._on_model_ready(backend)

    # actions

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
        main = screen if isinstance(screen, MainScreen) else None
        if main is not None:
            yield SystemCommand("Stop reply", "Stop the reply being generated (escape)", main.action_stop)
            yield SystemCommand("Regenerate", "Answer the last message again (ctrl+r)", main.action_regenerate)
            yield SystemCommand("New conversation", "Start an empty chat (ctrl+n)", main.action_new_conversation)
            yield SystemCommand("Conversations", "Reopen or delete past chats (ctrl+o)", main.action_conversations)
            yield SystemCommand("Settings", "Sampling values and preamble (f2)", lambda: main.action_pane("settings"))
            yield SystemCommand("Device stats", "Backend, context, speed, TPU or host load (f3)", lambda: main.action_pane("stats"))
            yield SystemCommand("Toggle side pane", "Hide or show the side pane (f4)", lambda: main.action_pane("toggle"))
        yield SystemCommand("Help", "Key bindings (f1)", self.action_help)
        yield SystemCommand("Next theme", "Cycle dark, light, high-contrast (ctrl+t)", self.action_next_theme)
