"""The help screen: every key, built from the bindings themselves so it cannot fall behind them."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from opt_tpu_tui.tui.compositor import DrawnScreen

# Keys that are Textual's own or belong to widgets without a tooltip of ours.
BUILT_IN: list[tuple[str, str]] = [
    ("tab / shift+tab", "move between the prompt, transcript and panes"),
    ("ctrl+p", "command palette: every action, and 'Change theme'"),
]


def key_rows(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    """(key, what it does) for each binding that explains itself (has a tooltip)."""
    return [
        (binding.key_display or binding.key, binding.tooltip)
        for binding in bindings
        if isinstance(binding, Binding) and binding.tooltip
    ]


def key_table(rows: list[tuple[str, str]]) -> str:
    """The rows of the keys table, ours then Textual's: the help screen shows it and the README holds it."""
    return "\n".join(f"| `{key}` | {what} |" for key, what in [*rows, *BUILT_IN])


def help_markdown(rows: list[tuple[str, str]]) -> str:
    table = key_table(rows)
    return f"""\
# opt-tpu-tui

Chat with an OPT model. OPT is a base model, not an instruction-tuned one: it
continues a transcript that starts with the preamble (settings pane).

| key | action |
| --- | --- |
{table}

Settings apply from the next reply; f6 in the pane switches between this
conversation's own settings and the defaults. Below 100 columns the side pane takes the
whole screen while open: f2/f3/f4 or escape bring the chat back.

Press escape or f1 to close this help.
"""


def all_keys() -> list[tuple[str, str]]:
    """Every key the chat answers to, in the order help lists them."""
    from opt_tpu_tui.tui.app import OptTuiApp
    from opt_tpu_tui.tui.screens.main import MainScreen
    from opt_tpu_tui.tui.widgets.prompt import PromptInput
    from opt_tpu_tui.tui.widgets.settings_form import SettingsForm, StepperInput

    return key_rows([*PromptInput.BINDINGS, *MainScreen.BINDINGS, *StepperInput.BINDINGS, *SettingsForm.BINDINGS,
                     *OptTuiApp.BINDINGS])  # fmt: skip


class HelpScreen(DrawnScreen, ModalScreen[None]):
    CSS_PATH = "modal.tcss"
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(help_markdown(all_keys()))

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


if __name__ == "__main__":  # python -m opt_tpu_tui.tui.screens.help: the README's key table, with its header
    print("| key | action |\n|---|---|\n" + key_table(all_keys()))
