"""The settings pane: one stepper per sampling value, the preamble, and a theme hint.

Up/Down in a number field steps it by ``sampling.LIMITS``' step, up to the range's
ends, and only changes the field: Enter in a field or ctrl+s applies the whole form,
once (stepping ten times is not ten saves and ten notifications). A value the user
typed is never changed behind their back: stepping from an unparsable or out-of-range
value is refused with the reason, as applying it is (``SamplingSettings.validate``).
Applied values take effect from the next reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static, TextArea

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.sampling import LIMITS, SamplingSettings
from opt_tpu_tui.tui.widgets.ordered_keys import OrderedKeys

FIELDS: dict[str, str] = {  # field -> label
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature",
    "top_p": "Top-p",
    "top_k": "Top-k",
    "repetition_penalty": "Repetition pen.",
    "seed": "Seed",
}
INTEGRAL = ("max_new_tokens", "top_k", "seed")
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "repetition_penalty", "seed")  # moot for a greedy-only model
GREEDY_NOTE = "This model decodes greedily (it picks each token on the TPU): sampling settings do not apply to it."
HINT = "↑/↓ step · enter or ctrl+s apply · from the next reply"
PENDING = "changed, not applied yet: enter or ctrl+s applies"


def format_value(name: str, value: float | int | None) -> str:
    if value is None:
        return ""
    if name in INTEGRAL:
        return str(int(value))
    decimals = max(0, -math.floor(math.log10(LIMITS[name][2])))
    return f"{value:.{decimals}f}"


def parse_value(name: str, text: str) -> float | int | None:
    """The number typed in a field; raise UserError when it is not one."""
    text = text.strip()
    if name == "seed" and text in ("", "random"):
        return None
    try:
        return int(text) if name in INTEGRAL else float(text)
    except ValueError:
        kind = "a whole number" if name in INTEGRAL else "a number"
        raise UserError(f"{FIELDS[name].lower()} must be {kind}, got {text!r}") from None


def step_value(name: str, value: float | int | None, direction: int) -> float | int:
    """``value`` one step up (direction 1) or down (-1), stopping at the range's ends.

    None (an empty seed: random) steps to the lowest value. UserError when ``value`` is
    outside the range, or already at the end it would step past.
    """
    low, high, step = LIMITS[name]
    if value is None:
        return int(low) if name in INTEGRAL else low
    label = FIELDS[name].lower()
    if not low <= value <= high:
        raise UserError(f"{label} must be between {format_value(name, low)} and {format_value(name, high)}")
    end = high if direction > 0 else low
    if value == end:
        raise UserError(f"{label} is at its {'highest' if direction > 0 else 'lowest'}, {format_value(name, end)}")
    stepped = min(high, max(low, value + direction * step))
    return int(stepped) if name in INTEGRAL else round(stepped, 6)


class StepperInput(OrderedKeys, Input):
    """A compact number field that steps with Up/Down (keys in typed order: ordered_keys.py)."""

    BINDINGS = [
        Binding("up", "step(1)", "Step", key_display="↑↓", id="settings.step_up",  # one footer entry for both
                tooltip="(settings pane) step a number up or down"),
        Binding("down", "step(-1)", "Step −", id="settings.step_down", show=False),
        Binding("ctrl+u", "clear", "Clear", id="settings.clear", show=False, tooltip="(settings pane) clear the field"),
    ]

    def __init__(self, field_name: str, **kwargs: object) -> None:
        super().__init__(compact=True, id=f"field-{field_name}", **kwargs)  # type: ignore[arg-type]
        self.field_name = field_name
        self.cursor_blink = False  # no bytes on the wire while nothing changes


    def action_step(self, direction: int) -> None:
        try:
            value = step_value(self.field_name, parse_value(self.field_name, self.value), direction)
        except UserError as refusal:
            self.post_message(SettingsForm.Changed(f"Not stepped: {refusal}"))
            return
        self.value = format_value(self.field_name, value)
        self.post_message(SettingsForm.Changed(None))

    def action_clear(self) -> None:
        self.value = ""


class PreambleInput(OrderedKeys, TextArea):
    """The preamble's text box, keys in typed order."""

    def __init__(self) -> None:
        super().__init__(id="field-preamble", soft_wrap=True, tab_behavior="focus", compact=True)
        self.cursor_blink = False


class SettingsForm(VerticalScroll):
    BINDINGS = [Binding("ctrl+s", "apply", "Apply", id="settings.apply",
                        tooltip="(settings pane) apply the form, as enter in a field does; from the next reply")]

    @dataclass
    class Changed(Message):
        """A stepper moved (``refusal`` None) or refused to, saying why."""

        refusal: str | None

    @dataclass
    class Applied(Message):
        sampling: SamplingSettings
        preamble: str

    def compose(self) -> ComposeResult:
        for name, label in FIELDS.items():
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                yield StepperInput(name, placeholder="random" if name == "seed" else "")
        yield Label("Preamble", classes="field-label")
        yield PreambleInput()
        yield Static(GREEDY_NOTE, id="settings-greedy", markup=False)
        yield Static("", id="settings-error", markup=False)
        yield Static(HINT, id="settings-hint", markup=False)

    def on_mount(self) -> None:
        self.greedy_only(False)

    def greedy_only(self, greedy: bool) -> None:
        """Show the sampling fields as not applying (disabled, with a note) for a model that decodes greedily."""
        for name in SAMPLING_ONLY:
            field = self.query_one(f"#field-{name}", Input)
            field.disabled = greedy
            field.tooltip = GREEDY_NOTE if greedy else None
        self.query_one("#settings-greedy", Static).display = greedy

    def load(self, sampling: SamplingSettings, preamble: str) -> None:
        """Show the settings now in effect (and clear any error)."""
        for name in FIELDS:
            self.query_one(f"#field-{name}", Input).value = format_value(name, getattr(sampling, name))
        self.query_one("#field-preamble", TextArea).text = preamble
        self.show_error(None)
        self.query_one("#settings-hint", Static).update(HINT)

    def read(self) -> tuple[SamplingSettings, str]:
        """The values in the form, validated; raise UserError naming the first bad one."""
        values = {name: parse_value(name, self.query_one(f"#field-{name}", Input).value) for name in FIELDS}
        sampling = SamplingSettings(**values).validate()  # type: ignore[arg-type]
        return sampling, self.query_one("#field-preamble", TextArea).text

    def show_error(self, message: str | None) -> None:
        error = self.query_one("#settings-error", Static)
        error.update(message or "")
        error.display = message is not None

    def action_apply(self) -> None:
        try:
            sampling, preamble = self.read()
        except UserError as refusal:
            self.show_error(f"Not applied: {refusal}")
            self.app.notify(f"Setting refused: {refusal}", severity="error")
            return
        self.show_error(None)
        self.query_one("#settings-hint", Static).update(HINT)
        self.post_message(self.Applied(sampling, preamble))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def on_settings_form_changed(self, event: Changed) -> None:
        event.stop()
        self.show_error(event.refusal)
        if event.refusal is None:
            self.query_one("#settings-hint", Static).update(PENDING)
