"""The filters validate.yml judges the recover role's inputs with: misspelt names, wrong types.

The options are read from the role's own meta/argument_specs.yml, as the role does, so a new
input is covered the day it is declared.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.quorum.recovery.plugins.filter.input_type_errors import input_type_errors
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


DEFAULTS = yaml.safe_load((SPECS.parents[1] / "defaults" / "main.yml").read_text())


def test_the_defaults_are_of_their_declared_types():
    assert set(DEFAULTS) == set(OPTIONS)
    assert input_type_errors(DEFAULTS, OPTIONS) == []


@pytest.mark.parametrize("name,value,message", [
    # what argument_spec validation lets through: it checks a converted copy
    ("recover_shell", "dqlite", """recover_shell="dqlite" is a string, not a list of strings: give it as JSON, """
                                """e.g. -e '{"recover_shell": ["dqlite"]}'"""),
    ("recover_shell", "dqlite -s x", """recover_shell="dqlite -s x" is a string, not a list of strings: give it as """
                                     """JSON, e.g. -e '{"recover_shell": ["dqlite", "-s", "x"]}'"""),
    ("recover_lost", "h2,h3", """recover_lost="h2,h3" is a string, not a list of strings: give it as JSON, """
                              """e.g. -e '{"recover_lost": ["h2", "h3"]}'"""),
    ("recover_services", "k8s-dqlite", 'recover_services="k8s-dqlite" is a string, not a list of strings'),
    ("recover_lost", None, "recover_lost=null is null, not a list of strings"),
    ("recover_lost", [["h3"]], 'recover_lost=[["h3"]]: every entry must be a string; ["h3"] is a list'),
    ("recover_addresses", "h2=10.0.0.2:9001", 'recover_addresses="h2=10.0.0.2:9001" is a string, not a dict: '
                                              'give it as JSON, e.g. -e \'{"recover_addresses": {"key": "value"}}\''),
    ("recover_service_commands", ["start"], 'recover_service_commands=["start"] is a list, not a dict'),
    ("recover_max_voters", "abc", 'recover_max_voters="abc" is a string, not a whole number'),
    ("recover_max_voters", 2.5, "recover_max_voters=2.5 is a number, not a whole number"),
    ("recover_max_voters", True, "recover_max_voters=true is a boolean, not a whole number"),
    ("recover_progress_interval", "fast", 'recover_progress_interval="fast" is a string, not a number'),
    ("recover_accept_loss", "maybe", 'recover_accept_loss="maybe" is a string, not a boolean (true or false)'),
    ("recover_fetch_archives", 2, "recover_fetch_archives=2 is a whole number, not a boolean (true or false)"),
    ("recover_winner", ["h2"], 'recover_winner=["h2"] is a list, not a string'),
    ("recover_data_dir", {"h1": "/x"}, 'recover_data_dir={"h1": "/x"} is a dict, not a string'),
])
def test_a_value_of_the_wrong_type_is_named_with_its_value_and_type(name, value, message):
    problems = input_type_errors(dict(DEFAULTS, **{name: value}), OPTIONS)
    assert len(problems) == 1 and problems[0].startswith(message), problems


@pytest.mark.parametrize("name,value", [
    # -e NAME=VALUE always gives strings: the role converts these itself (| int, | bool, | float)
    ("recover_max_voters", "5"), ("recover_max_voters", 5), ("recover_max_voters", 5.0),
    ("recover_step_timeout", " 60 "), ("recover_progress_interval", "0.5"), ("recover_progress_interval", 2),
    ("recover_accept_loss", "yes"), ("recover_accept_loss", "False"), ("recover_accept_loss", 1),
    ("recover_fetch_archives", True),
    ("recover_lost", ["h3", "10.0.0.3:9001", 3297041220608546238]), ("recover_lost", ()),
    ("recover_shell", ["/snap/microk8s/current/bin/dqlite"]),
    ("recover_addresses", {"h2": "10.0.0.2:9001"}),
    # YAML's `recover_confirm: yes` is a boolean; validate.yml reads it as a string
    ("recover_confirm", True), ("recover_winner", None), ("recover_database", 7),
])
def test_values_the_role_can_use_pass(name, value):
    assert input_type_errors(dict(DEFAULTS, **{name: value}), OPTIONS) == []


def test_only_given_and_declared_inputs_are_judged():
    assert input_type_errors({"recover_shell": "dqlite", "other": "x"}, {"recover_lost": {"type": "list"}}) == []
    assert input_type_errors({"x": "anything"}, {"x": {"type": "raw"}}) == []


def test_every_wrong_input_is_named_in_the_order_of_the_options():
    problems = input_type_errors(dict(DEFAULTS, recover_services="a", recover_lost="h3"), OPTIONS)
    assert [p.split("=")[0] for p in problems] == ["recover_lost", "recover_services"]
