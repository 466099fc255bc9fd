# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for integration tests: the lab (lab/up.sh) and a way to run ansible-playbook on it.

Without a lab these tests skip, saying so. ``make test`` sets VMCOLLECT_REQUIRE_LAB=1, and
then a missing lab is a failure, not a skip: CI must never pass by skipping the real tests.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

# the helper modules of these tests (not test files) assert too: make their failures as telling as a test's
pytest.register_assert_rewrite("vcsim_helpers", "storage_bed")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_DIR = os.environ.get("LAB_DIR", "/var/tmp/vmcollect-lab")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


def _lab_missing(reason):
    if os.environ.get("VMCOLLECT_REQUIRE_LAB") == "1":
        pytest.fail("the lab is required (VMCOLLECT_REQUIRE_LAB=1) but %s" % reason, pytrace=False)
    pytest.skip("%s: bring it up with `bash lab/up.sh`" % reason)


@pytest.fixture(scope="session")
def lab():
    """The lab's facts (lab.json), after checking the lab is up and healthy."""
    path = os.path.join(LAB_DIR, "lab.json")
    if not os.path.exists(path):
        _lab_missing("the lab is not up (%s is missing)" % path)
    status = subprocess.run(["bash", os.path.join(ROOT, "lab", "status.sh"), "-q"], check=False,
                            env=dict(os.environ, LAB_DIR=LAB_DIR))
    if status.returncode != 0:
        _lab_missing("the lab is not healthy (lab/status.sh exit %d)" % status.returncode)
    with open(path) as f:
        return json.load(f)


def ansible_env(lab_facts):
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=lab_facts["ansible_cfg"],
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_ROLES_PATH=os.path.join(ROOT, "tests", "integration", "targets"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        PATH=VENV_BIN + os.pathsep + env.get("PATH", ""),
    )
    return env


@pytest.fixture(scope="session")
def ansible_playbook(lab):
    """Run ansible-playbook against the lab inventory; returns the CompletedProcess."""

    def run(playbook, *args, **kwargs):
        cmd = [os.path.join(VENV_BIN, "ansible-playbook"), playbook] + list(args)
        return subprocess.run(cmd, env=ansible_env(lab), cwd=ROOT, check=False, universal_newlines=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=kwargs.get("timeout", 900))

    return run


def localhost_ansible(cmd, popen=False, timeout=600, **env):
    """Run an ansible or ansible-playbook command line on localhost (the venv's, the collection of this tree, no
    colour; env added to the environment): its output (stderr in it), or with popen the Popen, in a session of its
    own (to kill it with its children)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="False", PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), **env)
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False, timeout=timeout).stdout


def ansible_module(module, args, check=False, popen=False, timeout=600):
    """Run one module of the collection on localhost with ansible (ad hoc, the venv's Python, arguments as JSON):
    (ok, result, output), or the Popen with popen."""
    cmd = [os.path.join(VENV_BIN, "ansible"), "localhost", "-c", "local", "-m", "dfir.vmcollect." + module,
           "-a", json.dumps(args), "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        cmd.append("--check")
    out = localhost_ansible(cmd, popen, timeout, ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    if popen:
        return out
    start = out.find("=> {")
    assert start >= 0, out
    return ("FAILED" not in out[:start].rsplit("\n", 1)[-1]), json.loads(out[start + 3:]), out


def sha256_file(path):
    """The SHA-256 of a file, read in 1 MiB blocks (what a test compares a copy or a volume with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server a test starts)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def journal_records(path):
    """The records of a host's journal of a case as a running module sees them: [] when there is none yet, a line
    still being written skipped."""
    records = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    except (IOError, OSError):
        pass
    return records


def case_journal_records(folder):
    """The records of every host's journal in a case's journal folder (a folder shared by the lab's hosts)."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [r for name in names if name.endswith(".jsonl") for r in journal_records(os.path.join(folder, name))]


def pending_at_work(records, module, what=""):
    """The module.running records of ``module`` (whose description holds ``what``) not marked ended yet."""
    ended = set(r["ref"] for r in records if r.get("kind") == "undone")
    return [r for r in records if r.get("kind") == "change" and r.get("action") == "module.running"
            and r["undo"]["module"] == module and what in r["undo"]["what"] and r["id"] not in ended]
