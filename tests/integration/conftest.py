# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for integration tests: the lab (lab/up.sh) and a way to run ansible-playbook on it.

Without a lab these tests skip, saying so. ``make test`` sets VMCOLLECT_REQUIRE_LAB=1, and
then a missing lab is a failure, not a skip: CI must never pass by skipping the real tests.
"""

import hashlib
import json
import os
import re
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


# What of the lab each test file uses, so that scripts/test.sh runs two groups at once (pytest-xdist, ``-n 2 --dist
# loadgroup``): a group's tests run one after another on one worker, in their order. "kvm1": kvm1, its guests and
# libvirtd, and collector1 on the collector role's default control port 60. "esx1": the lab ESXi (the simulator, its
# shell, the storage beds of their own namespaces) and collector1 on control port 70 (see
# test_acquire_esxi_iscsi.CONTROL_PORT; each tgtd has its portal on its own storage address). None: nothing shared
# (localhost, a daemon of its own on a free port): any worker, any time. "alone": brings the lab down and up, so it
# never runs beside anything (scripts/test.sh runs it on its own first). A file missing here fails the collection:
# say what it uses.
LAB_GROUPS = {
    "test_lab.py": "kvm1", "test_acquire_kvm.py": "kvm1", "test_acquire_kvm_iscsi.py": "kvm1",
    "test_case_records.py": "kvm1", "test_iscsi_target_secrets.py": "kvm1", "test_memory_layout.py": "kvm1",
    "test_targets.py": "kvm1", "test_awx_runner.py": "kvm1", "test_awx_runner_ee.py": "kvm1",
    "test_progress_lines.py": "kvm1",
    "test_molecule_kvm.py": "kvm1", "test_molecule_esxi.py": "esx1",
    # local VMFS images only, no ESXi: beside kvm1's tests, whose group ends the run sooner
    "test_vmfs_reader.py": "kvm1",
    "test_acquire_esxi.py": "esx1", "test_acquire_esxi_iscsi.py": "esx1", "test_acquire_esxi_ssh.py": "esx1",
    "test_datastore_fetch.py": "esx1", "test_esxi_iscsi_datastore.py": "esx1",
    "test_esxi_iscsi_datastore_ssh.py": "esx1", "test_esxi_snapshot_ssh.py": "esx1",
    "test_vmkfstools_clone.py": "esx1", "test_vmkfstools_clone_ssh.py": "esx1", "test_vsphere_modules.py": "esx1",
    "lab/test_esxi_shell.py": "esx1", "lab/test_sesparse.py": "esx1", "lab/test_vcsim_esx.py": "esx1",
    "lab/test_vcsim_lab.py": "esx1", "lab/test_vcsim_storage.py": "esx1",
    "test_ssh_client.py": None, "test_volume_verify.py": None, "test_verify_evidence_signed.py": None, "test_execution_environment.py": None,
    "lab/test_lab_lifecycle.py": "alone",
}
HERE = os.path.dirname(os.path.abspath(__file__))


def lab_group(path):
    """The LAB_GROUPS entry of a test file (a path), raising a usage error for a file of this folder not in it;
    False for a file elsewhere (a unit test)."""
    name = os.path.relpath(os.path.abspath(path), HERE)
    if name.startswith(".."):
        return False
    if name not in LAB_GROUPS:
        raise pytest.UsageError("%s is not in LAB_GROUPS (tests/integration/conftest.py): say which of the lab's hosts "
                                "it uses, so that it never runs beside a test using them too" % name)
    return LAB_GROUPS[name]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if lab_group(str(item.fspath)) == "alone" and os.environ.get("PYTEST_XDIST_WORKER"):
            raise pytest.UsageError("%s brings the lab down and up: run it on its own, not with -n" % item.fspath)


def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup by LAB_GROUPS: the scope of a test is its file's group, or its file when it has none.
    xdist's own loadgroup reads xdist_group marks into the node ids, which pytest 9.2 no longer takes."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LabGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::")[0]
            return lab_group(os.path.join(str(config.rootpath), path)) or path

    return LabGroupScheduling(config, log)


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
        return subprocess.run(cmd, env=dict(ansible_env(lab), **kwargs.get("env", {})), cwd=ROOT, check=False,
                              universal_newlines=True,
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


def molecule_test(scenario, timeout=1200):
    """``molecule test -s scenario``: (return code, output without colours)."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("ANSIBLE_"))
    env.update(PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), NO_COLOR="1", ANSIBLE_FORCE_COLOR="0",
               PY_COLORS="0")
    done = subprocess.run([os.path.join(VENV_BIN, "molecule"), "test", "-s", scenario], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout,
                          check=False)
    return done.returncode, re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)


def molecule_recap(out, scenario):
    """(actions, successful, failed) of the scenario's recap in molecule's output."""
    m = re.search(r"^%s\s*: actions=(\d+)\s+successful=(\d+).*failed=(\d+)" % scenario, out, re.M)
    assert m, out[-3000:]
    return tuple(int(x) for x in m.groups())


def assert_molecule_passes(scenario, steps):
    """``molecule test -s scenario`` passes with each of ``steps`` successful, and nothing else in its recap."""
    rc, out = molecule_test(scenario)
    assert rc == 0, out[-6000:]
    assert molecule_recap(out, scenario) == (len(steps), len(steps), 0), out[-3000:]
    for step in steps:
        assert re.search(r"\[%s > %s\] Executed: Successful" % (scenario, step), out), step
