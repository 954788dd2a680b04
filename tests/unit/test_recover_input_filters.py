"""The filter validate.yml judges the recover role's input names with: misspelt names.

The options are read from the role's own meta/argument_specs.yml, as the role does, so a new
input is covered the day it is declared.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.quorum.recovery.plugins.filter.unknown_inputs import unknown_inputs

SPECS = Path(__file__).resolve().parents[2] / "roles" / "recover" / "meta" / "argument_specs.yml"
OPTIONS = yaml.safe_load(SPECS.read_text())["argument_specs"]["main"]["options"]
KNOWN = list(OPTIONS)


@pytest.mark.parametrize("name,message", [
    ("recover_winer", "unknown variable recover_winer, did you mean recover_winner?"),
    ("recover_flavour", "unknown variable recover_flavour, did you mean recover_flavor?"),
    ("recover_datadir", "unknown variable recover_datadir, did you mean recover_data_dir?"),
    ("recover_lsot", "unknown variable recover_lsot, did you mean recover_lost?"),
    ("recover_confrim", "unknown variable recover_confrim, did you mean recover_confirm?"),
])
def test_a_misspelt_input_is_named_with_the_closest_input(name, message):
    assert unknown_inputs(["ansible_host", name, "recover_lost"], KNOWN) == [message]


def test_a_name_close_to_no_input_lists_the_inputs():
    [message] = unknown_inputs(["recover_xyzzy_plugh"], KNOWN)
    assert message.startswith("unknown variable recover_xyzzy_plugh: not an input of this role (its inputs: ")
    assert "recover_winner" in message


def test_known_internal_and_foreign_names_are_not_reported():
    names = KNOWN + ["_recover_flavor", "_recover_winner", "dqlite_data_dir", "ansible_user", "recovery", "recover"]
    assert unknown_inputs(names, KNOWN) == []


def test_each_unknown_name_once_sorted():
    assert unknown_inputs(["recover_winer", "recover_lsot", "recover_winer"], KNOWN) == [
        "unknown variable recover_lsot, did you mean recover_lost?",
        "unknown variable recover_winer, did you mean recover_winner?"]
