"""A conversation's own settings, and this run's from the command line: fields set over the defaults.

The settings a reply uses are resolved in one place, :func:`resolve`, the same for every
front end: the saved defaults (config.py), then the values given on the command line for
this run (``--max-new-tokens`` ... ``--preamble``: ``-p``, ``-c`` and the UI alike, never
saved by themselves), then the open conversation's own settings (the UI's). A later layer
wins: a conversation that set its own temperature keeps it whatever the command line says,
as it did before that run and will after.

Only the fields the user set for a conversation are kept; every other field follows
the global settings, so a default changed later still reaches the conversations that
never set that field. Stored as JSON in the history (``conversations.settings``)::

    {"sampling": {"temperature": 0.2, "seed": null}, "preamble": "You are terse."}

A key's presence is what makes a field the conversation's own: ``"seed": null`` means
"a fresh seed each reply" even where the default seed is fixed. Values read back are
checked with the ranges of :class:`SamplingSettings`; a bad one follows the default
again, with a warning, rather than stopping a conversation from opening.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Union

from opt_tpu_tui.errors import UserError, parse_json
from opt_tpu_tui.sampling import SamplingSettings

SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingSettings))
PREAMBLE = "preamble"
Value = Union[float, int, None]


@dataclass(frozen=True)
class Overrides:
    """The fields a conversation sets for itself (``sampling`` is never mutated once made)."""

    sampling: Mapping[str, Value] = field(default_factory=dict)
    preamble: str | None = None

    @property
    def names(self) -> frozenset[str]:
        """The fields that are the conversation's own (sampling names, and "preamble")."""
        return frozenset(self.sampling) | ({PREAMBLE} if self.preamble is not None else frozenset())

    def __bool__(self) -> bool:
        return bool(self.names)

    def apply(self, sampling: SamplingSettings, preamble: str) -> tuple[SamplingSettings, str]:
        """The settings this conversation replies with: its own fields over the given defaults."""
        own = replace(sampling, **self.sampling) if self.sampling else sampling
        return own, preamble if self.preamble is None else self.preamble

    def updated(self, changes: Mapping[str, Any], sampling: SamplingSettings, preamble: str) -> Overrides:
        """These overrides with ``changes`` (field -> value) made; a value equal to the default follows it again.

        That is how a user hands one field back to the defaults from the pane: set it to
        the default's value. Raises UserError for a value out of range.
        """
        own = dict(self.sampling)
        text = self.preamble
        for name, value in changes.items():
            if name == PREAMBLE:
                text = None if value == preamble else str(value)
                continue
            check_field(name, value)
            if value == getattr(sampling, name):
                own.pop(name, None)
            else:
                own[name] = value
        return Overrides(own, text)

    def without(self, names: Iterable[str]) -> Overrides:
        """These overrides less the fields ``names``: those follow the layer below again."""
        gone = frozenset(names)
        own = {name: value for name, value in self.sampling.items() if name not in gone}
        return Overrides(own, None if PREAMBLE in gone else self.preamble)

    @classmethod
    def given(cls, sampling: Mapping[str, Any], preamble: str | None = None) -> Overrides:
        """Overrides of the fields in ``sampling`` (None values are left out: not given) and ``preamble``,
        each checked against its range (UserError naming the first bad one): the command line's values."""
        own = {name: check_field(name, value) for name, value in sampling.items() if value is not None}
        return cls(own, preamble)

    def to_json(self) -> str:
        data: dict[str, Any] = {}
        if self.sampling:
            data["sampling"] = dict(self.sampling)
        if self.preamble is not None:
            data[PREAMBLE] = self.preamble
        return json.dumps(data, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: object) -> tuple[Overrides, str | None]:
        """The overrides stored as ``text``, and one warning line (None when all was well).

        Unreadable JSON gives no overrides (the conversation follows the defaults); a bad
        field is dropped and the rest kept. Keys this version does not know are skipped
        quietly: a newer version may have written them.
        """
        if not isinstance(text, str):
            return cls(), f"its settings are not text ({type(text).__name__}); it follows the defaults"
        try:
            data = parse_json(text)
        except UserError as error:
            return cls(), f"its settings are {error}; it follows the defaults"
        if not isinstance(data, dict):
            return cls(), "its settings are not a JSON object; it follows the defaults"
        problems: list[str] = []
        sampling = data.get("sampling", {})
        if not isinstance(sampling, dict):
            problems.append("sampling is not an object")
            sampling = {}
        own: dict[str, Value] = {}
        for name, value in sampling.items():
            if name not in SAMPLING_FIELDS:
                continue
            try:
                own[name] = check_field(name, value)
            except UserError as error:
                problems.append(str(error))
        preamble = data.get(PREAMBLE)
        if preamble is not None and not isinstance(preamble, str):
            problems.append(f"preamble must be text, got {preamble!r}")
            preamble = None
        warning = f"its settings were wrong ({'; '.join(problems)}): those follow the defaults" if problems else None
        return cls(own, preamble), warning


def check_field(name: str, value: Any) -> Value:
    """``value`` if it is in range for sampling field ``name`` (SamplingSettings' own check), else UserError."""
    if name not in SAMPLING_FIELDS:
        raise UserError(f"no sampling setting is called {name!r}")
    replace(SamplingSettings(), **{name: value}).validate()
    return value  # type: ignore[no-any-return]


def resolve(sampling: SamplingSettings, preamble: str, *layers: Overrides) -> tuple[SamplingSettings, str]:
    """The sampling values and preamble a reply uses: the defaults ``sampling`` and ``preamble`` with each of
    ``layers`` over the one before (the command line's for this run, then the conversation's own)."""
    for layer in layers:
        sampling, preamble = layer.apply(sampling, preamble)
    return sampling, preamble
