"""The settings pane: one stepper per sampling value, the preamble, and which settings it edits.

It edits one of two scopes, switched with f6 and named at its top: the defaults (all
conversations: the settings file) or this conversation's own settings. In the
conversation's scope the form shows what the conversation replies with, and marks with
``*`` the fields that are its own; applying makes the fields the user changed its own,
except that a value equal to the default follows the default again. f7 drops all of
the conversation's own settings. The screen decides where applied values go.

A value given on the command line for this run (``--max-new-tokens 8``) is shown in
both scopes as what replies use, marked ``+``: it is not saved as a default. Applying
the defaults saves only the fields the user changed, so that value stays this run's
until the user changes that field here (overrides.py has the order of the layers).

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
from textual.reactive import reactive
from textual.widgets import Input, Label, Static, TextArea

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.overrides import PREAMBLE, Overrides
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
HINT = "↑/↓ step · enter or ctrl+s apply · f6 scope · f7 chat follows the defaults · from the next reply"
CONVERSATION, DEFAULTS = "conversation", "defaults"  # the scopes the pane edits
SCOPE_LINES = {
    CONVERSATION: "Scope: this conversation (* = own)",
    DEFAULTS: "Scope: defaults (all conversations)",
}
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "repetition_penalty", "seed")  # moot for a greedy-only model
GREEDY_NOTE = "This model decodes greedily (it picks each token on the TPU): sampling settings do not apply to it."
OWN = " *"  # after the label of a field the conversation sets for itself
SESSION = " +"  # after the label of a field the command line set for this run (and the conversation does not)
SESSION_NOTE = "+ given on the command line: this run only, saved as a default only if changed here"
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


def check_value(name: str, value: float | int | None) -> None:
    """Refuse a value out of its field's range, naming the field as the form does (not settings.json's key)."""
    low, high, _ = LIMITS[name]
    if value is not None and not low <= value <= high:
        label = FIELDS[name].lower()
        raise UserError(f"{label} must be between {format_value(name, low)} and {format_value(name, high)}, "
                        f"got {format_value(name, value)}")  # fmt: skip


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
    BINDINGS = [
        Binding("ctrl+s", "apply", "Apply", id="settings.apply",
                tooltip="(settings pane) apply the form, as enter in a field does; from the next reply"),
        Binding("f6", "switch_scope", "Scope", id="settings.scope", show=False,
                tooltip="(settings pane) edit this conversation's own settings or the defaults"),
        Binding("f7", "follow_defaults", "Defaults", id="settings.follow", show=False,
                tooltip="(settings pane) this conversation drops its own settings and follows the defaults"),
    ]  # fmt: skip

    scope = reactive(DEFAULTS)  # what applying changes: CONVERSATION or DEFAULTS

    @dataclass
    class Changed(Message):
        """A stepper moved (``refusal`` None) or refused to, saying why."""

        refusal: str | None

    @dataclass
    class Applied(Message):
        """The form's values, to go to ``scope``; ``changed`` names the fields the user changed since they were shown."""

        sampling: SamplingSettings
        preamble: str
        scope: str = DEFAULTS
        changed: frozenset[str] = frozenset()

    class FollowDefaults(Message):
        """f7: the conversation is to drop its own settings."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._defaults = (SamplingSettings(), "")
        self._overrides = Overrides()
        self._session: frozenset[str] = frozenset()  # the fields the command line set for this run
        self._shown: dict[str, str] = {}  # each field's text as last shown: what the user changed is what differs

    def compose(self) -> ComposeResult:
        yield Static(SCOPE_LINES[self.scope], id="settings-scope", markup=False)
        for name, label in FIELDS.items():
            with Horizontal(classes="field"):
                yield Label(label, id=f"label-{name}", classes="field-label")
                yield StepperInput(name, placeholder="random" if name == "seed" else "")
        yield Label("Preamble", id=f"label-{PREAMBLE}", classes="field-label")
        yield PreambleInput()
        yield Static(GREEDY_NOTE, id="settings-greedy", markup=False)
        yield Static(SESSION_NOTE, id="settings-session", markup=False)
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

    def load(
        self, sampling: SamplingSettings, preamble: str, overrides: Overrides | None = None,
        session: frozenset[str] = frozenset(),
    ) -> None:  # fmt: skip
        """Take the defaults (with this run's command-line values, whose names are ``session``) and the open
        conversation's own settings, and show the scope being edited (dropping unapplied edits, and any error)."""
        self._defaults = (sampling, preamble)
        self._overrides = overrides if overrides is not None else Overrides()
        self._session = session
        self._show()

    def _show(self) -> None:
        conversation = self.scope == CONVERSATION
        sampling, preamble = self._overrides.apply(*self._defaults) if conversation else self._defaults
        own = self._overrides.names if conversation else frozenset()
        self._shown = {name: format_value(name, getattr(sampling, name)) for name in FIELDS}
        self._shown[PREAMBLE] = preamble
        for name in FIELDS:
            self.query_one(f"#field-{name}", Input).value = self._shown[name]
        self.query_one("#field-preamble", TextArea).text = preamble
        session = self._session - own
        for name, label in [*FIELDS.items(), (PREAMBLE, "Preamble")]:
            mark = OWN if name in own else SESSION if name in session else ""
            self.query_one(f"#label-{name}", Label).update(label + mark)
        self.query_one("#settings-session", Static).display = bool(session)
        self.query_one("#settings-scope", Static).update(SCOPE_LINES[self.scope])
        self.show_error(None)
        self.query_one("#settings-hint", Static).update(HINT)

    def watch_scope(self) -> None:
        if self.is_mounted:
            self._show()

    def action_switch_scope(self) -> None:
        """f6: edit the other scope; unapplied edits are dropped, as the form shows the other settings."""
        self.scope = DEFAULTS if self.scope == CONVERSATION else CONVERSATION

    def action_follow_defaults(self) -> None:
        self.post_message(self.FollowDefaults())

    def changed(self) -> frozenset[str]:
        """The fields whose text differs from what was last shown: what the user changed."""
        now = {name: self.query_one(f"#field-{name}", Input).value for name in FIELDS}
        now[PREAMBLE] = self.query_one("#field-preamble", TextArea).text
        return frozenset(name for name, text in now.items() if text != self._shown.get(name))

    def read(self) -> tuple[SamplingSettings, str]:
        """The values in the form, validated; raise UserError naming the first bad one."""
        values = {name: parse_value(name, self.query_one(f"#field-{name}", Input).value) for name in FIELDS}
        for name, value in values.items():
            check_value(name, value)
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
            self.show_error(f"Not applied: {refusal}")  # in the form, by the field: no toast to cover it
            self.query_one("#settings-error", Static).scroll_visible(animate=False)
            return
        self.show_error(None)
        self.query_one("#settings-hint", Static).update(HINT)
        self.post_message(self.Applied(sampling, preamble, self.scope, self.changed()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def on_settings_form_changed(self, event: Changed) -> None:
        event.stop()
        self.show_error(event.refusal)
        if event.refusal is None:
            self.query_one("#settings-hint", Static).update(PENDING)
