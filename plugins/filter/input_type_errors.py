# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A role's argument_spec validation checks a converted COPY of each input and leaves the
variable as it was: `-e recover_shell=dqlite` passes it (the copy is ["dqlite"]) while the role
goes on with the string and fails late, after the cluster was stopped. This filter checks the
values the role really uses."""
from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping

DOCUMENTATION = r"""
name: input_type_errors
short_description: Name the inputs whose value is not of the type the role uses
version_added: 0.1.0
description:
  - Takes the inputs' values as the role sees them and the options of the role's
    C(meta/argument_specs.yml), and returns one sentence per input whose value has the wrong
    type, naming the input, its value, the expected type and how to give it.
  - >-
    A string is never a list or a dict here (C(-e recover_shell=dqlite) is refused: give JSON,
    C(-e '{"recover_shell": ["dqlite"]}')). Strings that the role converts itself are accepted
    where a number or a boolean is expected (C(-e recover_max_voters=5), C(-e recover_accept_loss=true)).
  - Inputs absent from the options, or of type C(raw), are not looked at.
options:
  _input:
    description: Input name -> value.
    type: dict
    required: true
  options:
    description: The options of the argument spec (name -> C(type), C(elements), ...).
    type: dict
    required: true
"""

EXAMPLES = r"""
problems: "{{ {'recover_shell': 'dqlite'} | quorum.recovery.input_type_errors({'recover_shell': {'type': 'list', 'elements': 'str'}}) }}"
# ['recover_shell="dqlite" is a string, not a list of strings: give it as JSON, e.g. -e '{"recover_shell": ["dqlite"]}'']
"""

RETURN = r"""
_value:
  description: One sentence per input of the wrong type, in the order of the options; empty when all are right.
  type: list
  elements: str
"""

_BOOL_STRINGS = {"yes", "no", "true", "false", "on", "off", "y", "n", "t", "f", "1", "0"}
_INT = re.compile(r"^\s*[-+]?[0-9]+\s*$")


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a dict"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a " + type(value).__name__


def _shown(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and bool(_INT.match(value))


def _is_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in (0, 1)
    return isinstance(value, str) and value.strip().lower() in _BOOL_STRINGS


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _example(name, option, value) -> str:
    if option.get("type") == "list":
        if isinstance(value, str):
            try:
                items = shlex.split(value) if " " in value else [v for v in value.split(",") if v]
            except ValueError:
                items = [value]
        else:
            items = ["..."]
        return " e.g. -e '%s'" % json.dumps({name: items})
    if option.get("type") == "dict":
        return " e.g. -e '%s'" % json.dumps({name: {"key": "value"}})
    return ""


_EXPECTED = {
    "list": ("a list", lambda v: isinstance(v, (list, tuple))),
    "dict": ("a dict", lambda v: isinstance(v, Mapping)),
    "int": ("a whole number", _is_int),
    "float": ("a number", _is_number),
    "bool": ("a boolean (true or false)", _is_bool),
    "str": ("a string", _is_scalar),
    "path": ("a path (a string)", _is_scalar),
}


def _problem(name, option, value):
    kind = option.get("type", "str")
    if kind not in _EXPECTED:
        return None
    expected, fits = _EXPECTED[kind]
    elements = option.get("elements")
    if kind == "list" and elements in ("str", "path"):
        expected = "a list of strings"
    if not fits(value):
        how = ": give it as JSON," + _example(name, option, value) if kind in ("list", "dict") else ""
        return "%s=%s is %s, not %s%s" % (name, _shown(value), _kind(value), expected, how)
    if kind == "list" and elements in ("str", "path"):
        wrong = [v for v in value if v is None or not _is_scalar(v)]
        if wrong:
            return "%s=%s: every entry must be a string; %s is %s" % (name, _shown(value), _shown(wrong[0]),
                                                                      _kind(wrong[0]))
    return None


def input_type_errors(values, options):
    problems = []
    for name, option in (options or {}).items():
        if name in values:
            problem = _problem(name, option or {}, values[name])
            if problem:
                problems.append(problem)
    return problems


class FilterModule:
    def filters(self):
        return {"input_type_errors": input_type_errors}
