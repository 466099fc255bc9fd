# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""extensions/awx/setup.yml, the AWX objects as code, played by ansible-playbook without an AWX.

No AWX runs here (it needs Kubernetes or a container engine). So the playbook runs against stand-ins of the four
awx.awx modules it calls: each validates its arguments with the argument spec of the real awx.awx module (taken from
the `ansible` package on PyPI by scripts/awx-collection.sh: unknown options, types, choices, suboptions) and records
them. What the controller would be given is then checked: the job templates' playbooks and surveys, the workflows'
edges, and the credential types' injectors (secrets only as extra variables or files, each one a variable the roles
read, every secret one redacted from the custody record).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import subprocess
import sys

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.custody import redact

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
SETUP = os.path.join(ROOT, "extensions", "awx", "setup.yml")
MODULES = ("credential_type", "project", "job_template", "workflow_job_template")

CAPTURE = r"""
import importlib, json, sys
from ansible_collections.awx.awx.plugins.module_utils import controller_api as api

class Captured(Exception):
    pass

def capture(self, argument_spec=None, **kwargs):
    raise Captured(argument_spec)

api.ControllerModule.__init__ = capture
specs = {}
for name in sys.argv[1:]:
    module = importlib.import_module("ansible_collections.awx.awx.plugins.modules." + name)
    try:
        module.main()
    except Captured as spec:
        specs[name] = spec.args[0]

def plain(value):
    if isinstance(value, dict):
        return dict((k, plain(v)) for k, v in value.items() if k != "fallback")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

print(json.dumps(plain(specs)))
"""

STAND_IN = r"""#!/usr/bin/python
# A stand-in of awx.awx.%(name)s for tests/unit/test_awx_setup.py: the real module's argument spec, no controller.
import json
from ansible.module_utils.basic import AnsibleModule

SPEC = json.loads(%(spec)r)


def main():
    module = AnsibleModule(argument_spec=SPEC, supports_check_mode=True)
    with open(%(record)r, "a") as f:
        f.write(json.dumps({"module": %(name)r, "params": module.params}) + "\n")
    module.exit_json(changed=False)


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A collections folder whose awx.awx modules are the stand-ins; returns (its path, the record file)."""
    awx = subprocess.run(["bash", os.path.join(ROOT, "scripts", "awx-collection.sh")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()
    specs = json.loads(subprocess.run([sys.executable, "-c", CAPTURE] + list(MODULES), env=dict(os.environ, PYTHONPATH=awx),
                                      stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout)
    base = tmp_path_factory.mktemp("awx-stand-ins")
    folder = base / "ansible_collections" / "awx" / "awx" / "plugins" / "modules"
    folder.mkdir(parents=True)
    record = str(base / "calls.jsonl")
    for name in MODULES:
        (folder / (name + ".py")).write_text(STAND_IN % {"name": name, "spec": json.dumps(specs[name]), "record": record})
    return str(base), record


def play(stand_ins, *extra):
    base, record = stand_ins
    if os.path.exists(record):
        os.unlink(record)
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("ANSIBLE_"))
    env.update(ANSIBLE_COLLECTIONS_PATH=base, ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, PATH=VENV_BIN + os.pathsep + env.get("PATH", ""))
    done = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), SETUP] + list(extra), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    calls = []
    if os.path.exists(record):
        with open(record) as f:
            calls = [json.loads(line) for line in f]
    return done, calls


@pytest.fixture(scope="module")
def setup(stand_ins):
    done, calls = play(stand_ins, "-e", "vmcollect_awx_project_url=https://git.example.org/dfir/vmcollect.git",
                       "-e", "vmcollect_awx_inventory=Hypervisors",
                       "-e", json.dumps({"vmcollect_awx_machine_credential": "Responders SSH",
                                         "vmcollect_awx_esxi_credentials": ["ESXi API", "ESXi shell"],
                                         "vmcollect_awx_execution_environment": "dfir.vmcollect EE"}))
    assert done.returncode == 0, done.stdout[-4000:]
    by = {}
    for call in calls:
        by.setdefault(call["module"], []).append(call["params"])
    return by


def test_every_call_passes_the_real_argument_specs_and_makes_every_object(setup):
    assert [len(setup.get(m, [])) for m in MODULES] == [4, 1, 5, 2]


def test_without_the_project_the_inventory_or_the_credential_nothing_is_made(stand_ins):
    done, calls = play(stand_ins)
    assert done.returncode != 0 and calls == []
    assert "Set vmcollect_awx_project_url" in done.stdout and "Nothing was changed." in done.stdout


def test_each_job_template_runs_a_playbook_of_the_project_with_its_survey(setup):
    surveys = os.path.join(ROOT, "extensions", "awx", "surveys")
    templates = dict((t["name"], t) for t in setup["job_template"])
    for title, playbook, survey in (("acquire KVM VMs", "acquire_kvm.yml", "acquire_kvm.json"),
                                    ("acquire ESXi VMs", "acquire_esxi.yml", "acquire_esxi.json"),
                                    ("teardown a case", "teardown.yml", "teardown.json"),
                                    ("verify evidence", "verify_evidence.yml", "verify_evidence.json")):
        t = templates["dfir.vmcollect - " + title]
        assert t["playbook"] == "playbooks/" + playbook and os.path.exists(os.path.join(ROOT, t["playbook"]))
        with open(os.path.join(surveys, survey)) as f:
            assert t["survey_spec"] == json.load(f) and t["survey_enabled"]
        assert t["project"] == "dfir.vmcollect" and t["inventory"] == "Hypervisors" and t["ask_limit_on_launch"]
        assert t["execution_environment"] == "dfir.vmcollect EE" and t["credentials"][0] == "Responders SSH"
    assert templates["dfir.vmcollect - acquire ESXi VMs"]["credentials"] == ["Responders SSH", "ESXi API", "ESXi shell"]
    assert templates["dfir.vmcollect - acquire KVM VMs"]["extra_vars"] == {"vmcollect_progress_interval": 15}
    node = templates["dfir.vmcollect - teardown (workflow node)"]
    assert node["playbook"] == "playbooks/teardown.yml" and node["ask_variables_on_launch"] and not node["survey_enabled"]


def test_each_workflow_tears_down_after_a_failed_acquisition_with_its_survey(setup):
    names = set(t["name"] for t in setup["job_template"])
    assert len(setup["workflow_job_template"]) == 2
    for workflow in setup["workflow_job_template"]:
        nodes = dict((n["identifier"], n) for n in workflow["workflow_nodes"])
        assert set(nodes) == {"acquire", "teardown"}
        assert nodes["acquire"]["related"]["failure_nodes"] == [{"identifier": "teardown"}]
        assert nodes["teardown"]["unified_job_template"]["name"] == "dfir.vmcollect - teardown (workflow node)"
        assert all(n["unified_job_template"]["name"] in names for n in nodes.values())
        # the workflow asks the acquisition's survey: its answers reach both nodes, the teardown's case id with them
        assert nodes["acquire"]["unified_job_template"]["name"] in workflow["name"]
        assert any(q["variable"].endswith("_acquire_case_id") for q in workflow["survey_spec"]["spec"])


def _role_text():
    text = []
    for top in ("roles", "playbooks"):
        for folder, dummy, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".yml"):
                    with open(os.path.join(folder, name)) as f:
                        text.append(f.read())
    return "\n".join(text)


def test_credential_types_inject_secrets_as_extra_variables_the_roles_read_and_the_record_redacts(setup):
    roles = _role_text()
    for kind in setup["credential_type"]:
        injectors, fields = kind["injectors"], kind["inputs"]["fields"]
        assert set(injectors) <= {"extra_vars", "file"}, kind["name"]  # never env: runner's artifacts keep it
        for field in fields:
            if re.search(r"password|key|secret", field["id"]) and field["id"] != "host_key_fingerprint":
                assert field.get("secret"), (kind["name"], field["id"])
        secret_ids = set(f["id"] for f in fields if f.get("secret"))
        for var, template in injectors["extra_vars"].items():
            assert re.search(r"\b%s\b" % re.escape(var), roles), "no role or playbook reads %s" % var
            assert "{{" in template or "{%" in template  # kept for AWX to render (!unsafe), not rendered here
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", template))
            if used & secret_ids:
                assert redact({var: "x"}) == {var: "<redacted>"}, "%s would reach the custody record" % var
            for name in re.findall(r"tower\.filename\.(\w+)", template):
                assert "template." + name in injectors["file"]
        for name in injectors.get("file", {}):
            assert re.search(r"tower\.filename\.%s\b" % re.escape(name.split(".", 1)[1]),
                             json.dumps(injectors["extra_vars"]))
