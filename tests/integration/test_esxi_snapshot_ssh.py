# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""esxi_snapshot's SSH engine (vim-cmd over SSH) and teardown, through Ansible, on a free ESXi host of the lab: a
private simulator in free-licence mode (``-free-license``: the API refuses every change with RestrictedVersion and
lists the ``esxBasic`` licence) and its shell (lab/esxi-shell, a LAB EMULATOR) on 127.0.0.1.

In order: the API engine is refused by the free host and leaves nothing; ``engine: auto`` picks SSH because of the
licence, checks the host key against a known_hosts file, and makes a memory snapshot with vim-cmd whose frozen chain
and memory files come back as with the API engine; a rerun changes nothing; a host key that is not the pinned one is
refused before any login and nothing is journaled; teardown (connection with ssh) removes exactly the snapshot with
vim-cmd and the VM writes to its base again.
"""

import os
import subprocess

import pytest

from conftest import ansible_module, journal_records
from vcsim_helpers import NEEDS_SIMULATOR, ON_LINUX, VCSIM, conn, esxi_shell, private_simulator, run

pytestmark = [NEEDS_SIMULATOR, ON_LINUX,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sshd, the sessions' mount namespaces)"),
              pytest.mark.skipif(not os.access("/usr/sbin/sshd", os.X_OK), reason="needs openssh-server")]
pytest.importorskip("pyVmomi")
pytest.importorskip("paramiko")

CBT_VM = "Win Srv [prod] 01"
CASE = "ssh-snap-1"


@pytest.fixture(scope="module")
def free(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snap-ssh")
    ram = run("bash", os.path.join(VCSIM, "ram_image.sh"), stderr=subprocess.PIPE, timeout=600)
    assert ram.returncode == 0, ram.stderr
    image = ram.stdout.strip().splitlines()[-1]
    with private_simulator(tmp, "snap-ssh", args="-lab-vms -ram-image %s -ds 2 -free-license" % image) as env:
        with esxi_shell(tmp, str(tmp / ("snap-ssh-%d.json" % os.getpid()))) as shell:
            env["_shell"] = shell
            env["_journal"] = str(tmp / "journal")
            yield env


def ssh_opts(env, **extra):
    sh = env["_shell"]
    opts = {"port": sh["port"], "username": "root", "private_key_file": sh["key"], "known_hosts": sh["known_hosts"]}
    opts.update(extra)
    return opts


def snap_args(env, **extra):
    args = dict(conn(env), name=CBT_VM, case_id=CASE, journal_dir=env["_journal"], ssh=ssh_opts(env))
    args.update(extra)
    return args


def vm_snapshots(env):
    from vcsim_helpers import connect
    from pyVmomi import vim
    with connect(env) as c:
        vm = c.find_vm(name=CBT_VM)
        tree = c.properties(vm, ["snapshot"]).get("snapshot")
        return [s.name for s in tree.rootSnapshotList] if tree else []


def records(env):
    folder = os.path.join(env["_journal"], CASE)
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        if name.endswith(".jsonl"):
            out.extend(journal_records(os.path.join(folder, name)))
    return out


def snapshot_records(env):
    return [x for x in records(env) if x.get("action") == "vsphere.snapshot"]


def test_1_the_api_engine_is_refused_by_the_free_host(free):
    ok, r, out = ansible_module("esxi_snapshot", snap_args(free, engine="api"))
    assert not ok, out
    assert "RestrictedVersion" in r["msg"] or "prohibits" in r["msg"], r["msg"]
    assert vm_snapshots(free) == []


def test_2_a_wrong_host_key_is_refused_before_any_login(free):
    other = subprocess.run(["ssh-keygen", "-lf", free["_shell"]["key"] + ".pub"], stdout=subprocess.PIPE,
                           universal_newlines=True, check=True).stdout.split()[1]
    before = len(snapshot_records(free))
    ok, r, out = ansible_module("esxi_snapshot", snap_args(
        free, engine="auto", ssh={"port": free["_shell"]["port"], "username": "root", "private_key_file": free["_shell"]["key"],
                                  "host_key_fingerprint": other}))
    assert not ok, out
    assert other in r["msg"] and free["_shell"]["fingerprint"] in r["msg"], r["msg"]
    assert vm_snapshots(free) == []
    assert len(snapshot_records(free)) == before  # nothing journaled: the engine is connected before the freeze is planned


# outside the CI budget (make test-slow); in CI: test_acquire_esxi_ssh.py freezes with vim-cmd, and
# test_vmkfstools_clone_ssh.py's test_1 picks ssh on auto for the free host
@pytest.mark.slow
def test_3_auto_picks_ssh_on_the_free_host_and_freezes_with_vim_cmd(free):
    ok, r, out = ansible_module("esxi_snapshot", snap_args(free, engine="auto"))
    assert ok and r["changed"], out
    assert r["engine"] == "ssh" and r["engine_choice"]["requested"] == "auto"
    assert "esxBasic" in r["engine_choice"]["why"]
    assert r["ssh_host_key"]["verified"] and r["ssh_host_key"]["fingerprint_sha256"] == free["_shell"]["fingerprint"]
    assert r["method"] == "vSphere memory snapshot (vim-cmd over SSH)"
    assert vm_snapshots(free) == [r["snapshot"]["name"]]
    assert r["memory"]["vmem"]["path"].endswith(".vmem") and r["frozen"][0]["chain"]
    # the API engine's refused attempt of test 1 is journaled too (as intended, never made)
    rec = [x for x in records(free) if x.get("action") == "vsphere.snapshot" and x["undo"]["engine"] == "ssh"]
    assert len(rec) == 1 and rec[0]["undo"]["engine"] == "ssh" and rec[0]["undo"]["vmid"]
    # a rerun finds the freeze and changes nothing
    ok, again, out = ansible_module("esxi_snapshot", snap_args(free, engine="auto"))
    assert ok and not again["changed"] and again["snapshot"]["name"] == r["snapshot"]["name"], out


# outside the CI budget (make test-slow); in CI: test_acquire_esxi_ssh.py's teardown removes its snapshot with vim-cmd
@pytest.mark.slow
def test_4_teardown_removes_the_snapshot_with_vim_cmd(free):
    ok, r, out = ansible_module("teardown", {"case_id": CASE, "journal_dir": free["_journal"],
                                             "connection": dict(conn(free), ssh=ssh_opts(free))})
    assert ok and r["changed"], out
    said = " ".join(u["result"] for u in r["undone"])
    assert "vim-cmd over SSH" in said and "writes to its leaf of before the freeze again" in said, said
    assert vm_snapshots(free) == []
    ok, r, out = ansible_module("teardown", {"case_id": CASE, "journal_dir": free["_journal"],
                                             "connection": dict(conn(free), ssh=ssh_opts(free))})
    assert ok and not r["changed"], out
