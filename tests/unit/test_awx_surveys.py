# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX surveys shipped in extensions/awx/surveys/ against what the playbooks and roles take.

Every question is a well-formed AWX survey question; its variable is one the playbook's roles document in
meta/argument_specs.yml (or one the playbooks themselves read, below), with a matching type and choices that the role
accepts; a secret is asked only with a password question; a question that is not required cannot hand the role an
empty string it would read as a choice."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SURVEYS = os.path.join(ROOT, "extensions", "awx", "surveys")
TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
# the roles each playbook runs (their argument specs are the contract of a survey's variables)
ROLES = {"acquire_kvm": ["kvm_acquire", "acquire", "collector"], "acquire_esxi": ["esxi_acquire", "acquire", "collector"],
         "teardown": [], "verify_evidence": []}
SECRET = re.compile(r"password|secret|passphrase|token", re.I)


def _playbook_text(playbook):
    """The playbook, every playbook and task file of playbooks/ it may import, and the defaults of its roles (where a
    role takes a playbook variable as its own default): what reads the variables."""
    paths = [p for p in glob.glob(os.path.join(ROOT, "playbooks", "**", "*.yml"), recursive=True)
             if p.endswith(os.sep + playbook + ".yml") or os.path.basename(p).startswith("_")
             or os.sep + "tasks" + os.sep in p or os.sep + "vars" + os.sep in p]
    paths += [os.path.join(ROOT, "roles", role, "defaults", "main.yml") for role in ROLES[playbook]]
    text = ""
    for path in paths:
        with open(path) as f:
            text += f.read()
    return text


def _transport_choices(playbook):
    """The transports a playbook imports: _acquire_<transport>.yml, for KVM _acquire_local and _acquire_iscsi, for
    ESXi _acquire_esxi_<transport>.yml."""
    prefix = "_acquire_esxi_" if playbook == "acquire_esxi" else "_acquire_"
    names = [os.path.basename(p)[len(prefix):-4] for p in glob.glob(os.path.join(ROOT, "playbooks", prefix + "*.yml"))]
    return sorted(n for n in names if not n.startswith("esxi_"))


# variables the playbooks read themselves (no role's argument spec holds them): type, and how to get the choices
PLAYBOOK_VARIABLES = {
    "vmcollect_transport": ("str", _transport_choices),
    "vmcollect_signing_key": ("str", None),
    "vmcollect_case_id": ("str", None),
    "vmcollect_checksum_file": ("str", None),
}


def _specs(roles):
    specs = {}
    for role in roles:
        with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as f:
            data = yaml.safe_load(f)
        for entry in data["argument_specs"].values():
            for name, spec in entry.get("options", {}).items():
                specs.setdefault(name, spec)
    return specs


def _choices(question):
    choices = question["choices"]
    return choices.split("\n") if isinstance(choices, str) else list(choices)


def _surveys():
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(SURVEYS, "*.json")))


def test_there_is_a_survey_for_each_playbook_a_responder_launches():
    assert _surveys() == sorted(ROLES)


@pytest.mark.parametrize("playbook", sorted(ROLES))
def test_each_question_matches_what_the_playbook_takes(playbook):
    with open(os.path.join(SURVEYS, playbook + ".json")) as f:
        survey = json.load(f)
    assert survey["name"] and survey["description"] and survey["spec"]
    specs = _specs(ROLES[playbook])
    text = _playbook_text(playbook)
    seen = set()
    for q in survey["spec"]:
        var = q["variable"]
        where = "%s: %s" % (playbook, var)
        assert var not in seen, where + " is asked twice"
        seen.add(var)
        assert q["type"] in TYPES and q["question_name"] and q["question_description"], where
        assert isinstance(q["required"], bool), where
        if var in PLAYBOOK_VARIABLES:
            kind, choices_of = PLAYBOOK_VARIABLES[var]
            assert re.search(r"\b%s\b" % re.escape(var), text), where + " is read by no playbook"
            spec = {"type": kind}
            if choices_of:
                spec["choices"] = choices_of(playbook)
        else:
            assert var in specs, where + " is in no argument spec of " + ", ".join(ROLES[playbook])
            spec = specs[var]
        kind = spec.get("type", "str")
        if q["type"] in ("text", "textarea", "password"):
            # a text answer is a string; a list takes one only where the role reads it as one item per line
            assert kind in ("str", "path") or (kind == "list" and "one VM per line" in spec.get("description", "")), \
                where + " is a %s, not text" % kind
            assert "choices" not in spec or q["type"] != "text", where + " has choices: ask it as a multiple choice"
        elif q["type"] == "integer":
            assert kind == "int", where
        elif q["type"] == "float":
            assert kind == "float", where
        elif q["type"] == "multiplechoice":
            assert kind == "str" and set(_choices(q)) <= set(spec["choices"]), (where, _choices(q), spec.get("choices"))
        else:  # multiselect: a list of strings
            assert kind == "list" and set(_choices(q)) <= set(spec["choices"]), (where, _choices(q), spec.get("choices"))
        if q["type"] in ("multiplechoice", "multiselect"):
            defaults = q["default"].split("\n") if q["default"] else []
            assert q["required"] and defaults and set(defaults) <= set(_choices(q)), \
                where + ": a multiple choice is required and its default is one of its choices"
        secret = SECRET.search(var) or spec.get("no_log")
        assert (q["type"] == "password") == bool(secret), where + (" is a secret: ask it with a password question"
                                                                   if secret else " is no secret")
        if spec.get("required"):
            assert q["required"], where + " is required by the role"
        if not q["required"]:
            # AWX hands an unanswered optional question over as "" (text): the role must take "" as "not given"
            assert q["type"] in ("text", "textarea") and spec.get("default", "") in ("", None), \
                where + ": an empty answer would not mean 'not given'"
        assert 0 <= q["min"] <= q["max"], where


def test_every_required_variable_of_the_acquisition_roles_is_asked():
    for playbook in ("acquire_kvm", "acquire_esxi"):
        with open(os.path.join(SURVEYS, playbook + ".json")) as f:
            asked = set(q["variable"] for q in json.load(f)["spec"])
        role = ROLES[playbook][0]
        required = set(n for n, s in _specs([role]).items() if s.get("required") and n.startswith(role))
        assert required <= asked, (playbook, sorted(required - asked))
