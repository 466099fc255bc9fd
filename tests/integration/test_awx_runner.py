# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An acquisition of the lab guest run as AWX runs a job: ansible-runner on a private data dir laid out as AWX lays
it out (AWX itself needs Kubernetes or a container engine, which this machine has not).

- ``project/``: the project, the repository as AWX syncs it; the job template's playbook ``playbooks/acquire_kvm.yml``;
  the collection installed where AWX puts a project's collections (``ANSIBLE_COLLECTIONS_PATH``).
- ``env/extravars``: the survey's answers as AWX passes them (the VMs as a textarea answer: one string, one name per
  line) and AWX's ``awx_*``/``tower_*`` meta variables.
- ``inventory/hosts``: an executable inventory script printing JSON, as AWX writes it.
- ``env/ssh_key``: the machine credential, which ansible-runner loads into an ssh-agent of its own.
- ``env/envvars``: the variables AWX sets by default, host key checking off among them (see docs/awx.md).

It checks what a workflow's next node and the record need: the job is successful, its events carry the plan and
the summary, ``set_stats`` hands over the case id, the artifacts with their digests and the verification, the
custody log names the AWX job and user, and no secret lands in the job's artifacts.
"""

import glob
import json
import os
import re
import stat
import subprocess

import pytest

from conftest import COLLECTIONS, ROOT, VENV_BIN

CASE = "case-awx-1"
JOB_ID = 4711


def _inventory_script(lab):
    """AWX's inventory: a script that prints the hosts and their variables as JSON."""
    kvm = [h for h in lab["hosts"] if h["name"] == "kvm1"][0]
    inventory = {
        "all": {"children": ["kvm_hosts", "ungrouped"]},
        "kvm_hosts": {"hosts": ["kvm1"]},
        "_meta": {"hostvars": {"kvm1": {
            "ansible_host": kvm["mgmt_address"], "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            # the key comes from the machine credential (ssh-agent); the lab's host keys are known
            "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null"
                                       % lab["ssh"]["known_hosts"]}}},
    }
    return "#!/bin/sh\ncat <<'EOF'\n%s\nEOF\n" % json.dumps(inventory, indent=1)


@pytest.fixture(scope="module")
def job(lab, tmp_path_factory):
    work = os.path.join(lab["work_dir"], "awx")
    subprocess.run(["rm", "-rf", work], check=True)
    pdd = str(tmp_path_factory.mktemp("awx-job"))
    for folder in ("env", "inventory", "artifacts"):
        os.makedirs(os.path.join(pdd, folder))
    os.symlink(ROOT, os.path.join(pdd, "project"))
    with open(os.path.join(pdd, "inventory", "hosts"), "w") as f:
        f.write(_inventory_script(lab))
    os.chmod(os.path.join(pdd, "inventory", "hosts"), stat.S_IRWXU)
    with open(lab["ssh"]["identity"]) as f:
        key = f.read()
    with open(os.path.join(pdd, "env", "ssh_key"), "w") as f:
        f.write(key)
    extravars = {
        # the survey's answers
        "kvm_acquire_case_id": CASE, "kvm_acquire_examiner": "J. Doe (AWX)",
        "kvm_acquire_vms": "\n%s\n" % lab["guest"]["name"], "vmcollect_transport": "local",
        "kvm_acquire_evidence_dir": os.path.join(work, "evidence"),
        "kvm_acquire_journal_dir": os.path.join(work, "journal"),
        # the job template's extra variables: a progress line every quarter of a second (the lab's copies are short)
        "vmcollect_progress_interval": 0.25,
        # what AWX adds to every job
        "awx_job_id": JOB_ID, "awx_user_name": "jdoe", "awx_job_template_name": "Acquire KVM VMs",
        "awx_job_launch_type": "manual", "awx_inventory_name": "Lab", "awx_project_revision": "0" * 40,
        "tower_job_id": JOB_ID, "tower_user_name": "jdoe",
    }
    with open(os.path.join(pdd, "env", "extravars"), "w") as f:
        json.dump(extravars, f)
    envvars = {
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS, "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_PARAMIKO_RECORD_HOST_KEYS": "False", "ANSIBLE_FORCE_COLOR": "False", "JOB_ID": str(JOB_ID),
        "AWX_HOST": "https://awx.example.org", "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(pdd, "cp"),
        "ANSIBLE_SHOW_CUSTOM_STATS": "True",
    }
    with open(os.path.join(pdd, "env", "envvars"), "w") as f:
        json.dump(envvars, f)
    with open(os.path.join(pdd, "env", "settings"), "w") as f:
        json.dump({"job_timeout": 900, "idle_timeout": 600, "suppress_ansible_output": True}, f)
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("ANSIBLE_"))
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-runner"), "run", pdd, "-p", "playbooks/acquire_kvm.yml",
                           "--ident", str(JOB_ID)], env=env, cwd=pdd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=900, check=False)
    artifacts = os.path.join(pdd, "artifacts", str(JOB_ID))
    yield {"proc": proc, "pdd": pdd, "artifacts": artifacts, "events": job_events(artifacts), "key": key, "work": work,
           "case_dir": os.path.join(work, "evidence", CASE)}
    teardown(lab, CASE, work)


def job_events(artifacts):
    """The job's events, as AWX reads them from ansible-runner's artifacts, in their order."""
    events = []
    for path in glob.glob(os.path.join(artifacts, "job_events", "*.json")):
        with open(path) as f:
            events.append(json.load(f))
    return sorted(events, key=lambda e: e.get("counter", 0))


def teardown(lab, case, work):
    """Whatever the job left of the case on the lab's hosts is undone (after the tests read the evidence)."""
    subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), os.path.join(ROOT, "playbooks", "teardown.yml"),
                    "-e", "vmcollect_case_id=" + case, "-e", "vmcollect_journal_dir=" + os.path.join(work, "journal")],
                   env=dict(os.environ, ANSIBLE_CONFIG=lab["ansible_cfg"], ANSIBLE_COLLECTIONS_PATH=COLLECTIONS),
                   cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stdout(job):
    return "".join(e.get("stdout", "") + "\n" for e in job["events"])


def test_the_job_is_successful(job):
    with open(os.path.join(job["artifacts"], "status")) as f:
        status = f.read().strip()
    assert status == "successful" and job["proc"].returncode == 0, job["proc"].stdout[-3000:] + _stdout(job)[-5000:]


def test_the_job_events_carry_the_plan_and_the_summary(job):
    tasks = [e["event_data"].get("task", "") for e in job["events"] if e.get("event") == "runner_on_ok"]
    assert any(t.startswith("Plan the acquisition") for t in tasks), tasks
    summary = [e for e in job["events"] if e.get("event") == "runner_on_ok"
               and e["event_data"].get("task") == "Summary"]
    assert summary and "vmc-victim" in json.dumps(summary[-1]["event_data"]["res"])


def test_the_job_events_show_each_copy_while_it_runs(job):
    """A progress line is a job event of its own (verbose), made while the copy's task runs: between the task's
    start and its result, so an idle timeout sees output."""
    started = [e["counter"] for e in job["events"] if e.get("event") == "playbook_on_task_start"
               and e["event_data"].get("task", "").startswith("Copy every frozen image")]
    ended = [e["counter"] for e in job["events"] if e.get("event") in ("runner_on_ok", "runner_item_on_ok")
             and e["event_data"].get("task", "").startswith("Copy every frozen image")]
    lines = [e for e in job["events"] if e.get("event") == "verbose" and "PROGRESS [kvm1] evidence_copy" in
             e.get("stdout", "")]
    assert started and ended and lines, _stdout(job)[-4000:]
    # what a line says (bytes, rate, ETA) is test_progress_lines.py's part, on a copy long enough to report them: the
    # lab guest's copies take about a second, and may end before the module has written its first report
    assert all(re.match(r"PROGRESS \[kvm1\] evidence_copy, \d+s in: ", e["stdout"].strip()) for e in lines), lines
    assert all(started[0] < e["counter"] < ended[-1] for e in lines)


def test_set_stats_hands_the_case_its_artifacts_and_verification_to_the_next_node(job):
    stats = [e for e in job["events"] if e.get("event") == "playbook_on_stats"]
    assert len(stats) == 1
    handed = stats[0]["event_data"]["artifact_data"]
    assert handed["vmcollect_case_id"] == CASE
    kvm1 = handed["vmcollect_evidence"]["kvm1"]
    assert kvm1["case_id"] == CASE and kvm1["case_dir"] == job["case_dir"]
    assert kvm1["manifest"] == os.path.join(job["case_dir"], "manifest.json")
    with open(kvm1["manifest"]) as f:
        manifest = json.load(f)["artifacts"]
    [vm] = kvm1["vms"]
    assert vm["vm"] == "vmc-victim" and vm["acquired"] and vm["memory_method"] and vm["not_acquired"] == []
    assert vm["verified"].startswith("Verified: every copy re-read against the digest taken while copying")
    assert sorted(a["path"] for a in vm["artifacts"]) == sorted(manifest)
    for artifact in vm["artifacts"]:
        assert artifact["sha256"] == manifest[artifact["path"]]["digests"]["sha256"]


def test_the_custody_log_names_the_awx_job_and_user(job):
    with open(os.path.join(job["case_dir"], "custody.jsonl")) as f:
        records = [json.loads(line) for line in f]
    controllers = [r["controller"] for r in records if r.get("controller")]
    assert controllers and all(c.get("awx_job_id") == str(JOB_ID) and c.get("awx_user_name") == "jdoe"
                               for c in controllers), controllers[:1]


def test_no_secret_in_the_jobs_artifacts(job):
    """ansible-runner writes the whole environment and every event into the artifacts: the machine credential's
    key must be in none of them (it reached ssh-agent through a fifo)."""
    secret = "".join(job["key"].splitlines()[1:-1])[:40]  # a piece of the key's base64 body
    assert len(secret) == 40
    for folder, dummy, names in os.walk(job["pdd"]):
        for name in names:
            path = os.path.join(folder, name)
            if path == os.path.join(job["pdd"], "env", "ssh_key") or not os.path.isfile(path):
                continue  # AWX's own input, as AWX writes it (removed with the private data dir)
            with open(path, "rb") as f:
                assert secret.encode() not in f.read(), path
