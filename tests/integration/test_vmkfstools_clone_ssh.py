# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vmkfstools_clone with engine ssh (issue 11: the field method on a free ESXi host) and teardown through Ansible,
against a private simulator of the lab in free-ESXi mode (``-lab-vms -ram-image PATH -ds 2 -free-license``: its API
refuses every change with RestrictedVersion, reads work) and the lab's ESXi shell on it (lab/esxi-shell/sshd.sh,
127.0.0.1 and a free port, root by key, the host key pinned by its fingerprint). LocalDS_0 holds the VMs, LocalDS_1
stands in for the evidence datastore.

The CBT VM is frozen with memory over the shell (``vim-cmd vmsvc/snapshot.create <vmid> ... 1 0``, not through a
module: esxi_snapshot's own SSH engine is tested elsewhere); the sha256/md5 of its base -flat.vmdk are taken from the
datastore's local folder right then. In order: check mode with engine auto picks the SSH engine for the free licence
and changes nothing; the frozen base is cloned thin with vmkfstools over SSH and the memory files copied with cp - the
digests taken on the host equal sha256sum/md5sum of the local base and of the clone, which is sparse, verified is
true, the marker says engine ssh with the host key; a rerun changes nothing; the API engine on the same free host is
refused with RestrictedVersion (the licence gate), and its teardown leaves nothing; an existing destination, a
destination on the source datastore and a .vmdk among the files are refused; a host key that is not the pinned one
is refused before any credential is sent; ssh.command_timeout of 1 s on a 1.5 GiB disk stops the clone with a
sentence and teardown (connection.ssh) removes what it left; a kill -9 of the module mid-clone, then teardown with
connection.ssh: the partial copy and its folders are removed and nothing else; the case's teardown keeps the
completed copies (evidence).

LAB EMULATOR: the lab's vmkfstools is a client of the simulator's CopyVirtualDisk_Task, which runs on in the
simulator when vmkfstools is stopped (on ESXi, vmkfstools is the copier and stops with it): teardown's wait for the
partial files to stop changing covers both.

Needs root (sshd, the sessions' mount namespaces), Debian's openssh-server, paramiko and pyVmomi, and the simulator
(built from lab/vcsim, cached in $LAB_DIR/bin).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ansible_module, journal_records
from test_vmkfstools_clone import (  # the API engine's test: the same views of the datastores' folders
    coreutils_sum, digest, evidence_records, local, names, running_vm_folders, tree, vm_of)
from vcsim_helpers import ON_LINUX, TO_BUILD, VCSIM_DIR, can_build, conn, esxi_shell, private_simulator, run

MIB = 1024 * 1024
CBT_VM = "Win Srv [prod] 01"
OFF_VM = "lab-off-02"
EVIDENCE = "LocalDS_1"
BIG_MIB = 1536  # the disk a timeout and a kill -9 interrupt while the host clones it (about 1.5 s in the simulator)
SSHD = "/usr/sbin/sshd"

pytestmark = [
    ON_LINUX,
    pytest.mark.skipif(not can_build(), reason=TO_BUILD),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sshd, the sessions' mount namespaces)"),
    pytest.mark.skipif(not os.access(SSHD, os.X_OK), reason="needs openssh-server (%s)" % SSHD),
]

pytest.importorskip("pyVmomi")
pytest.importorskip("paramiko")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """The free-licence simulator's env, with ``_shell``: the lab ESXi shell's host, port, key, fingerprint."""
    tmp = tmp_path_factory.mktemp("vcsim-ssh")
    ram = run("bash", os.path.join(VCSIM_DIR, "ram_image.sh"), stderr=subprocess.PIPE, timeout=600)
    assert ram.returncode == 0, ram.stdout + ram.stderr
    image = ram.stdout.strip().splitlines()[-1]
    with private_simulator(tmp, "vcsim-clone-ssh", args="-lab-vms -ram-image %s -ds 2 -free-license" % image,
                           timeout=300, stop_timeout=120) as env:
        assert env["lab"]["license"]["free"], env["lab"]["license"]
        with esxi_shell(tmp, str(tmp / ("vcsim-clone-ssh-%d.json" % os.getpid()))) as shell:
            env["_shell"] = shell
            yield env


def ansible(module, args, check=False, popen=False):
    return ansible_module(module, args, check=check, popen=popen, timeout=900)


def ssh_opts(sim, **extra):
    sh = sim["_shell"]
    opts = {"port": sh["port"], "username": "root", "private_key_file": sh["key"],
            "host_key_fingerprint": sh["fingerprint"]}
    opts.update(extra)
    return opts


def ssh_conn(sim, **extra):
    """The connection of the modules (and of teardown) with the SSH engine's options."""
    return conn(sim, ssh=ssh_opts(sim, **extra))


def host_shell(sim, line, timeout=120):
    """(rc, stdout) of a command line on the lab ESXi host, through the collection's SSH client."""
    from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import SshClient
    sh = sim["_shell"]
    with SshClient(sh["host"], port=sh["port"], private_key_file=sh["key"],
                   host_key_fingerprint=sh["fingerprint"]) as ssh:
        rc, out, err = ssh.run(line, timeout=timeout)
    return rc, out.decode("utf-8") + err.decode("utf-8")


@pytest.fixture(scope="module")
def case(sim, tmp_path_factory):
    """The CBT VM frozen with memory over the host's shell; the base's local digests right then."""
    journal_dir = str(tmp_path_factory.mktemp("journal"))
    vm = vm_of(sim, CBT_VM)
    disk = vm["disks"][0]
    assert disk["leaf"] == disk["descriptor"], disk  # no older snapshot: the snapshot freezes the base
    vmid = int(vm["moref"].split("-")[-1])
    rc, out = host_shell(sim, "vim-cmd vmsvc/snapshot.create %d 'clone ssh' 'case clone-ssh' 1 0" % vmid)
    assert rc == 0, out
    base = disk["flat_local"]
    folder = os.path.dirname(base)
    ds_folder = disk["descriptor"].rsplit("/", 1)[0]
    memory = sorted(n for n in os.listdir(folder) if n.endswith((".vmem", ".vmsn")))
    assert [n.rsplit(".", 1)[1] for n in memory] == ["vmem", "vmsn"], memory
    return {"journal_dir": journal_dir, "vm": vm, "disk": disk, "base_local": base,
            "base_sha256": coreutils_sum("sha256sum", base), "base_md5": coreutils_sum("md5sum", base),
            "source_names_before": names(local(sim, "LocalDS_0")),
            "memory": ["%s/%s" % (ds_folder, n) for n in memory],
            "memory_local": [os.path.join(folder, n) for n in memory],
            "dest": "[%s] clone-ssh/%s/%s.vmdk" % (EVIDENCE, CBT_VM, CBT_VM),
            "dest_local": local(sim, EVIDENCE, "clone-ssh/%s" % CBT_VM)}


def clone_args(sim, case, **extra):
    args = dict(ssh_conn(sim), engine="ssh", src=case["disk"]["descriptor"], dest=case["dest"],
                files=[{"src": m} for m in case["memory"]], algorithms=["sha256", "md5"], case_id="clone-ssh",
                journal_dir=case["journal_dir"])
    args.update(extra)
    return args


def test_1_check_mode_with_engine_auto_picks_ssh_for_the_free_licence_and_changes_nothing(sim, case):
    before = tree(local(sim, EVIDENCE))
    started = time.monotonic()
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, engine="auto"), check=True)
    print("check mode: %.1f s" % (time.monotonic() - started))
    assert ok and r["changed"], out
    assert r["engine"] == "ssh" and r["engine_choice"]["engine"] == "ssh" and "free" in r["engine_choice"]["why"]
    assert r["ssh_host_key"]["verified"] and r["ssh_host_key"]["fingerprint_sha256"] == sim["_shell"]["fingerprint"]
    assert r["disk"]["state"] == "absent" and r["disk"]["would_copy"] and r["digests"] == {}
    assert r["disk"]["folders_to_create"] == ["[%s] clone-ssh" % EVIDENCE, "[%s] clone-ssh/%s" % (EVIDENCE, CBT_VM)]
    assert r["copied_by"] == "vmkfstools_clone (vmkfstools -i -d thin over SSH)" and "Check mode" in r["msg"]
    assert tree(local(sim, EVIDENCE)) == before
    assert evidence_records(case["journal_dir"], "clone-ssh") == []


def test_2_vmkfstools_over_ssh_clones_the_frozen_base_and_the_host_verifies_it(sim, case):
    started = time.monotonic()
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case))
    print("clone over SSH (64 MiB thin disk, 256 MiB .vmem, .vmsn; hashed on the host): %.1f s, module %.1f s"
          % (time.monotonic() - started, r.get("seconds", 0)))
    assert ok and r["changed"], out
    disk = r["disk"]
    flat = os.path.join(case["dest_local"], "%s-flat.vmdk" % CBT_VM)
    size = case["disk"]["virtual_bytes"]
    want = {"sha256": case["base_sha256"], "md5": case["base_md5"]}
    assert r["engine"] == "ssh" and r["engine_choice"] == {"engine": "ssh", "requested": "ssh", "why": "asked for",
                                                           "licences": None}
    assert r["digests"] == want and r["dest_digests"] == want and r["verified"] is True, r
    assert {"sha256": digest(flat), "md5": digest(flat, "md5")} == want
    assert r["copied_by"] == "vmkfstools_clone (vmkfstools -i -d thin over SSH)"
    assert r["ssh_host_key"]["fingerprint_sha256"] == sim["_shell"]["fingerprint"]
    assert disk["digests_of"] == case["disk"]["flat"] and disk["disk_type"] == "thin" and disk["created"]
    assert r["size"] == size == r["dest_size"]
    roles = [(s["role"], s["dest_equal"], s["verified"]) for s in disk["source_files"]]
    assert roles == [("descriptor", False, False), ("extent", True, True)]
    assert disk["source_files"][0]["digests"]["sha256"] == digest(case["disk"]["descriptor_local"])
    assert "openssl dgst" in disk["source_files"][1]["hashed_by"]
    st = os.stat(flat)
    assert st.st_size == size and st.st_blocks * 512 < size // 4, (st.st_size, st.st_blocks * 512)
    with open(flat, "rb") as f:
        f.seek(case["disk"]["marker_offset"])
        assert f.read(64).startswith(("DISKMARK:" + case["vm"]["disk_marker"]).encode())
    for entry, source in zip(r["files"], case["memory_local"]):
        copy = os.path.join(case["dest_local"], os.path.basename(source))
        assert digest(copy) == digest(source) == entry["digests"]["sha256"] == entry["dest_digests"]["sha256"]
        assert entry["digests"]["md5"] == digest(source, "md5") and entry["verified"] is True
        assert entry["copied_by"] == "vmkfstools_clone (cp over SSH)" and entry["dest_size"] == os.path.getsize(source)
    with open(os.path.join(case["dest_local"], "%s.vmdk.dfir-vmcollect.json" % CBT_VM)) as f:
        marker = json.load(f)
    assert marker["engine"] == "ssh" and marker["copy_id"] == disk["copy_id"] and marker["verified"] is True
    assert marker["ssh_host_key"]["fingerprint_sha256"] == sim["_shell"]["fingerprint"]
    assert marker["dest_digests"] == {disk["dest_extent"]: want}
    assert marker["command"].startswith("vmkfstools -i '/vmfs/volumes/LocalDS_0/")
    assert sorted(os.listdir(case["dest_local"])) == sorted(
        ["%s.vmdk" % CBT_VM, "%s-flat.vmdk" % CBT_VM, "%s.vmdk.dfir-vmcollect.json" % CBT_VM] +
        [n for s in case["memory_local"] for n in (os.path.basename(s), os.path.basename(s) + ".dfir-vmcollect.json")])
    assert names(local(sim, "LocalDS_0")) == case["source_names_before"]
    assert digest(case["base_local"]) == case["base_sha256"]
    records = [x for x in evidence_records(case["journal_dir"], "clone-ssh") if x["kind"] == "change"]
    assert [(x["undo"]["kind"], x["undo"]["engine"]) for x in records] == [
        ("folders", "ssh"), ("disk", "ssh"), ("file", "ssh"), ("file", "ssh")]


def test_3_a_rerun_changes_nothing(sim, case):
    before = tree(local(sim, EVIDENCE))
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case))
    assert ok and r["changed"] is False, out
    assert r["disk"]["created"] is False and [f["created"] for f in r["files"]] == [False, False]
    assert r["verified"] is True and r["dest_digests"]["sha256"] == case["base_sha256"]
    assert "already a complete thin clone" in r["msg"]
    assert tree(local(sim, EVIDENCE)) == before


def test_4_the_api_engine_on_the_free_host_is_refused_with_restricted_version(sim, case, tmp_path):
    journal_dir = str(tmp_path / "journal")
    before = tree(local(sim, EVIDENCE))
    other = vm_of(sim, OFF_VM)["disks"][0]["descriptor"]
    args = dict(conn(sim), engine="api", src=other, dest="[%s] clone-api/off.vmdk" % EVIDENCE, case_id="clone-api",
                journal_dir=journal_dir)
    ok, r, out = ansible("vmkfstools_clone", args)
    assert not ok and "RestrictedVersion" in r["msg"], out
    ok, td, out = ansible("teardown", {"case_id": "clone-api", "journal_dir": journal_dir, "connection": conn(sim)})
    assert ok, out
    assert tree(local(sim, EVIDENCE)) == before


def test_5_what_is_not_ours_or_not_on_the_evidence_datastore_is_refused(sim, case):
    foreign = local(sim, EVIDENCE, "foreign")
    os.makedirs(foreign)
    with open(os.path.join(foreign, "x-flat.vmdk"), "wb") as f:
        f.write(b"not evidence")
    try:
        before, source_before = tree(local(sim, EVIDENCE)), names(local(sim, "LocalDS_0"))
        other = vm_of(sim, OFF_VM)["disks"][0]["descriptor"]
        ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, src=other, files=[]))
        assert not ok and "which is not a complete copy of %s" % other in r["msg"], out
        ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, src=other, files=[],
                                                            dest="[%s] foreign/x.vmdk" % EVIDENCE))
        assert not ok and "not a copy this collection completed" in r["msg"], out
        ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, src=other, files=[],
                                                            dest="[LocalDS_0] evidence/x.vmdk"))
        assert not ok and "never where the evidence lies" in r["msg"], out
        ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, files=[{"src": other}]))
        assert not ok and "is a .vmdk" in r["msg"], out
        assert tree(local(sim, EVIDENCE)) == before and names(local(sim, "LocalDS_0")) == source_before
    finally:
        shutil.rmtree(foreign)


def test_6_a_host_key_that_is_not_the_pinned_one_is_refused_before_login(sim, case, tmp_path):
    key = str(tmp_path / "other")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    other = subprocess.run(["ssh-keygen", "-lf", key + ".pub"], stdout=subprocess.PIPE, universal_newlines=True,
                           check=True).stdout.split()[1]
    before = tree(local(sim, EVIDENCE))
    journal_dir = str(tmp_path / "journal")
    args = dict(clone_args(sim, case, dest="[%s] clone-key/x.vmdk" % EVIDENCE, files=[], case_id="clone-key",
                           journal_dir=journal_dir), ssh=ssh_opts(sim, host_key_fingerprint=other))
    ok, r, out = ansible("vmkfstools_clone", args)
    assert not ok and "The SSH engine could not log in" in r["msg"] and other in r["msg"], out
    assert "before any credential was sent" in r["msg"] and sim["_shell"]["fingerprint"] in r["msg"], out
    assert tree(local(sim, EVIDENCE)) == before and evidence_records(journal_dir, "clone-key") == []


def _make_disk(folder, mib):
    """A standalone thin VMFS disk as the lab writes them (descriptor + flat), full of non-zero data."""
    os.makedirs(folder)
    block = os.urandom(MIB)
    with open(os.path.join(folder, "big-flat.vmdk"), "wb") as f:
        for i in range(mib):
            f.write(block[i % 4096:] + block[:i % 4096])
    with open(os.path.join(folder, "big.vmdk"), "w") as f:
        f.write('# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=5a5a5a5a\nparentCID=ffffffff\n'
                'createType="vmfs"\n\n# Extent description\nRW %d VMFS "big-flat.vmdk"\n\n# The Disk Data Base\n'
                '#DDB\n\nddb.adapterType = "buslogic"\nddb.thinProvisioned = "1"\n'
                'ddb.uuid = "60 00 C2 91 11 22 33 44-55 66 77 88 99 aa bb cc"\nddb.virtualHWVersion = "14"\n'
                % (mib * 2048))


@pytest.fixture(scope="module")
def big(sim):
    folder = local(sim, "LocalDS_0", "big disk [ssh]")
    _make_disk(folder, BIG_MIB)
    yield "[LocalDS_0] big disk [ssh]/big.vmdk"
    shutil.rmtree(folder, ignore_errors=True)


def _teardown_removes_the_partial_copy(sim, case_id, journal_dir, dest_folder):
    started = time.monotonic()
    ok, td, out = ansible("teardown", {"case_id": case_id, "journal_dir": journal_dir, "connection": ssh_conn(sim)})
    print("teardown (%s): %.1f s" % (case_id, time.monotonic() - started))
    assert ok and td["removed"], out
    results = dict((u["description"].split(" on the evidence")[0], u["result"]) for u in td["undone"]
                   if u["action"] == "vsphere.evidence_file")
    disk = results["thin clone of [LocalDS_0] big disk [ssh]/big.vmdk to [%s] %s/big.vmdk" % (EVIDENCE, dest_folder)]
    assert disk.startswith("removed what the unfinished copy left: "), results
    print("  %s" % disk)
    top = dest_folder.split("/")[0]
    assert "removed the empty folder [%s] %s" % (EVIDENCE, top) in results[
        "folder(s) [%s] %s, [%s] %s" % (EVIDENCE, top, EVIDENCE, dest_folder)], results
    return results


@pytest.mark.slow  # outside the CI budget: make test-slow
def test_7_a_command_timeout_stops_the_clone_and_teardown_removes_what_it_left(sim, case, big, tmp_path):
    journal_dir = str(tmp_path / "journal")
    evidence_before = tree(local(sim, EVIDENCE))
    source_before = tree(local(sim, "LocalDS_0"), skip=running_vm_folders(sim))
    args = dict(ssh_conn(sim, command_timeout=1), engine="ssh", src=big, dest="[%s] clone-t/big [t]/big.vmdk" % EVIDENCE,
                case_id="clone-t", journal_dir=journal_dir)
    started = time.monotonic()
    ok, r, out = ansible("vmkfstools_clone", args)
    print("clone stopped by ssh.command_timeout: %.1f s" % (time.monotonic() - started))
    assert not ok and "did not end within ssh.command_timeout (1 s)" in r["msg"], out
    assert "teardown stops what still runs there and removes what it left" in r["msg"], out
    _teardown_removes_the_partial_copy(sim, "clone-t", journal_dir, "clone-t/big [t]")
    assert tree(local(sim, EVIDENCE)) == evidence_before
    assert tree(local(sim, "LocalDS_0"), skip=running_vm_folders(sim)) == source_before


@pytest.mark.slow  # outside the CI budget: make test-slow
def test_8_a_kill_mid_clone_then_teardown_over_ssh_removes_the_partial_copy_and_nothing_else(sim, case, big, tmp_path):
    journal_dir = str(tmp_path / "journal")
    dest_local = local(sim, EVIDENCE, "clone-k/big [k]")
    evidence_before = tree(local(sim, EVIDENCE))
    source_before = tree(local(sim, "LocalDS_0"), skip=running_vm_folders(sim))
    args = dict(ssh_conn(sim), engine="ssh", src=big, dest="[%s] clone-k/big [k]/big.vmdk" % EVIDENCE,
                case_id="clone-k", journal_dir=journal_dir)
    journal = os.path.join(journal_dir, "clone-k", socket.gethostname() + ".jsonl")
    proc = ansible("vmkfstools_clone", args, popen=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(dest_local, "big-flat.vmdk")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.005)
    module_pid = [x["undo"]["pid"] for x in journal_records(journal) if x.get("action") == "module.running"][0]
    os.kill(module_pid, signal.SIGKILL)
    killed_with_descriptor = os.path.exists(os.path.join(dest_local, "big.vmdk"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not killed_with_descriptor
    records = evidence_records(journal_dir, "clone-k")
    disk_change = [x for x in records if x["kind"] == "change" and x["undo"]["kind"] == "disk"][0]
    assert disk_change["undo"]["engine"] == "ssh" and disk_change["undo"]["ssh_host_key"] == sim["_shell"]["fingerprint"]
    assert not [x for x in records if x["kind"] == "applied" and x["ref"] == disk_change["id"]]
    ok, r, out = ansible("vmkfstools_clone", args)
    assert not ok and "Run teardown for the case first" in r["msg"], out
    _teardown_removes_the_partial_copy(sim, "clone-k", journal_dir, "clone-k/big [k]")
    assert tree(local(sim, EVIDENCE)) == evidence_before
    assert tree(local(sim, "LocalDS_0"), skip=running_vm_folders(sim)) == source_before


@pytest.mark.slow  # outside the CI budget: make test-slow
def test_8b_the_undo_stops_a_vmkfstools_still_cloning_and_removes_its_files_once_they_settle(sim, big):
    """What teardown does when the vmkfstools of an interrupted run still clones (its module killed, the command going
    on over a connection that is gone): the undo of the SSH engine on a record like the one it journals."""
    from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import clone as esxi_clone
    from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import Shell
    from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import SshClient
    sh = sim["_shell"]
    dest = "[%s] clone-s/big.vmdk" % EVIDENCE
    dest_local = local(sim, EVIDENCE, "clone-s")
    os.makedirs(dest_local)
    evidence_before = tree(local(sim, EVIDENCE))
    del evidence_before["clone-s"]  # the test's folder: its time changes with the files made and removed in it
    files = [dest, dest[:-5] + "-flat.vmdk", dest + ".dfir-vmcollect.json"]
    undo = {"engine": "ssh", "kind": "disk", "dest": dest, "src": big, "datastore": EVIDENCE,
            "source_datastores": ["LocalDS_0"], "dest_files": files,
            "shell_dest_files": ["/vmfs/volumes/%s/clone-s/%s" % (EVIDENCE, f.rsplit("/", 1)[1]) for f in files],
            "marker": files[2], "copy_id": "0123456789abcdef", "ssh_host_key": sh["fingerprint"]}
    done = []
    login = dict(port=sh["port"], private_key_file=sh["key"], host_key_fingerprint=sh["fingerprint"])
    with SshClient(sh["host"], **login) as ssh, SshClient(sh["host"], **login) as ssh2:
        clone = threading.Thread(target=lambda: done.append(ssh.run(esxi_clone.vmkfstools_argv(big, dest), timeout=120)))
        clone.start()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(dest_local, "big-flat.vmdk")):
            assert time.monotonic() < deadline and clone.is_alive()
            time.sleep(0.005)
        started = time.monotonic()
        said = esxi_clone.remove_partial(Shell(ssh2), undo)
        print("undo of a running clone: %.1f s: %s" % (time.monotonic() - started, said))
        clone.join(60)
    assert said.startswith("removed what the unfinished copy left: %s, %s after stopping the vmkfstools command(s) "
                           % (files[0], files[1])), said
    assert done and done[0][0] != 0, done  # the command was stopped, not finished
    assert os.listdir(dest_local) == []
    after = tree(local(sim, EVIDENCE))
    del after["clone-s"]
    assert after == evidence_before
    os.rmdir(dest_local)


def test_9_the_case_teardown_keeps_the_completed_copies(sim, case):
    evidence_before = tree(local(sim, EVIDENCE))
    ok, td, out = ansible("teardown", {"case_id": "clone-ssh", "journal_dir": case["journal_dir"],
                                       "connection": ssh_conn(sim)})
    assert ok and td["removed"], out
    results = [u["result"] for u in td["undone"] if u["action"] == "vsphere.evidence_file"]
    assert len(results) == 4, results
    assert all(x.startswith("kept: evidence: ") for x in results[:3]), results
    assert results[3].startswith("kept the folder [%s] clone-ssh/%s: it holds " % (EVIDENCE, CBT_VM)), results
    assert tree(local(sim, EVIDENCE)) == evidence_before
