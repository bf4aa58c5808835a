"""A conversation's own settings: applied over the defaults, changed field by field, read back checked."""

from __future__ import annotations

import pytest

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.sampling import SamplingSettings

DEFAULTS = SamplingSettings()


def test_only_the_own_fields_replace_the_defaults() -> None:
    own = Overrides({"temperature": 0.2}, "Be terse.")
    sampling, preamble = own.apply(SamplingSettings(top_k=7), "default preamble")
    assert sampling == SamplingSettings(temperature=0.2, top_k=7) and preamble == "Be terse."
    assert Overrides().apply(DEFAULTS, "p") == (DEFAULTS, "p") and not Overrides()
    assert own.names == {"temperature", "preamble"} and own


def test_a_value_equal_to_the_default_follows_the_default_again() -> None:
    own = Overrides().updated({"temperature": 0.2, "max_new_tokens": DEFAULTS.max_new_tokens}, DEFAULTS, "p")
    assert own == Overrides({"temperature": 0.2})
    own = own.updated({"temperature": DEFAULTS.temperature, "preamble": "mine"}, DEFAULTS, "p")
    assert own == Overrides({}, "mine")
    assert own.updated({"preamble": "p"}, DEFAULTS, "p") == Overrides()


def test_a_random_seed_is_an_override_of_a_fixed_default() -> None:
    fixed = SamplingSettings(seed=42)
    own = Overrides().updated({"seed": None}, fixed, "p")
    assert own == Overrides({"seed": None}) and own.apply(fixed, "p")[0].seed is None
    assert Overrides.from_json(own.to_json()) == (own, None)


def test_an_out_of_range_change_is_refused() -> None:
    with pytest.raises(UserError, match="temperature must be between"):
        Overrides().updated({"temperature": 9.0}, DEFAULTS, "p")
