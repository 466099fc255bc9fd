# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vmkfstools_clone (engine api), esxi_snapshot and teardown through Ansible against the lab's vSphere simulator.

The simulator runs with its lab VMs (real thin disks, a guest that keeps writing) and two datastores: LocalDS_0 holds
the VMs, LocalDS_1 stands in for the evidence datastore made on the collector's LUN. ``VMCOLLECT_VCSIM_ENV`` names
the env file of one already running with ``-lab-vms -ram-image PATH -ds 2``; without it the test builds the RAM image
(lab/vcsim/ram_image.sh, cached) and starts a simulator of its own with lab/vcsim/vcsim.sh under ``LAB_DIR``, and
stops it at the end.

The CBT VM is frozen with esxi_snapshot (disks and memory); the sha256 of its base -flat.vmdk is taken from the
datastore's local folder right then (the guest writes to the new delta from now on). Then, in order: check mode
changes nothing; the frozen base is cloned thin with the memory files beside it - the clone's data file is sparse
and byte-equal to the base at snapshot time, the returned source digests equal sha256sum/md5sum of the local files,
the memory files are byte-identical, nothing on the source datastore changed; a rerun reports changed=false and
changes nothing; a different disk onto the same dest, a dest on the source datastore and a .vmdk as a file are
refused; a kill -9 of the module while the host copies a 1.5 GiB disk, then teardown: the partial destination and
the folders made for it are removed and nothing else; and the case's teardown keeps the completed copies (evidence)
while it removes the snapshot.

SIMULATOR: its tasks run inside the SOAP call that starts them, so a killed module's copy still ends on the host
after the kill (ESXi's task runs on as well; there, teardown also finds it in the task list and waits for it).
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ansible_module, journal_records
from vcsim_helpers import ON_LINUX, TO_BUILD, VCSIM_DIR, can_build, conn, private_simulator, run

MIB = 1024 * 1024
CBT_VM = "Win Srv [prod] 01"
OFF_VM = "lab-off-02"
EVIDENCE = "LocalDS_1"
BIG_MIB = 1536  # the disk a kill -9 interrupts while the host copies it (about 1.5 s in the simulator)

pytestmark = [
    ON_LINUX,
    pytest.mark.skipif(not os.environ.get("VMCOLLECT_VCSIM_ENV") and not can_build(), reason=TO_BUILD),
]

pytest.importorskip("pyVmomi")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """The simulator's env: url, port, credentials, certificate, datastores with local_path, lab.content."""
    given = os.environ.get("VMCOLLECT_VCSIM_ENV")
    if given:
        with open(given) as f:
            env = json.load(f)
        assert env.get("lab", {}).get("content", {}).get("enabled"), "%s runs without -lab-vms" % given
        yield env
        return
    ram = run("bash", os.path.join(VCSIM_DIR, "ram_image.sh"), stderr=subprocess.PIPE, timeout=600)
    assert ram.returncode == 0, ram.stdout + ram.stderr
    image = ram.stdout.strip().splitlines()[-1]
    with private_simulator(tmp_path_factory.mktemp("vcsim"), "vcsim-clone",
                           args="-lab-vms -ram-image %s -ds 2" % image, timeout=300, stop_timeout=120) as env:
        yield env


def ansible(module, args, check=False, popen=False):
    """ansible_module with the time a copy of the big disk may take."""
    return ansible_module(module, args, check=check, popen=popen, timeout=900)


def local(env, datastore, relative=""):
    root = [d["local_path"] for d in env["datastores"] if d["name"] == datastore][0]
    return os.path.join(root, relative) if relative else root


def digest(path, algorithm="sha256"):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MIB), b""):
            h.update(block)
    return h.hexdigest()


def coreutils_sum(tool, path):
    """sha256sum / md5sum of a local file, as an examiner computes it."""
    return subprocess.run([tool, path], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.split()[0]


def tree(folder, skip=()):
    """Every name below ``folder``: (type, size, mtime ns); names under ``skip`` (relative folders) left out."""
    state = {}
    for base, dirs, files in os.walk(folder):
        rel = os.path.relpath(base, folder)
        if any(rel == s or rel.startswith(s + os.sep) for s in skip):
            continue
        for name in dirs + files:
            st = os.lstat(os.path.join(base, name))
            state[os.path.normpath(os.path.join(rel, name))] = (st.st_mode >> 12, st.st_size, st.st_mtime_ns)
    return state


def names(folder):
    return sorted(os.path.relpath(os.path.join(b, n), folder) for b, d, f in os.walk(folder) for n in d + f)


def running_vm_folders(env):
    """The folders of the VMs whose guest keeps writing to its disks (their files change all the time)."""
    return tuple(os.path.basename(v["dir_local"]) for v in env["lab"]["content"]["vms"]
                 if v["power_state"] == "poweredOn")


def vm_of(env, name):
    return [v for v in env["lab"]["content"]["vms"] if v["name"] == name][0]


@pytest.fixture(scope="module")
def case(sim, tmp_path_factory):
    """The CBT VM frozen for case clone-1: the snapshot's result, the base's local digests at snapshot time."""
    journal_dir = str(tmp_path_factory.mktemp("journal"))
    vm = vm_of(sim, CBT_VM)
    disk = vm["disks"][0]
    ok, frozen, out = ansible("esxi_snapshot", dict(conn(sim), name=CBT_VM, case_id="clone-1", journal_dir=journal_dir))
    assert ok and frozen["changed"], out
    base = disk["flat_local"]
    folder = os.path.dirname(base)
    mem = frozen["memory"]
    return {"journal_dir": journal_dir, "frozen": frozen, "vm": vm, "disk": disk, "base_local": base,
            "base_sha256": coreutils_sum("sha256sum", base), "base_md5": coreutils_sum("md5sum", base),
            "source_names_before": names(local(sim, "LocalDS_0")),
            "vmem_local": os.path.join(folder, mem["vmem"]["path"].split("/")[-1]),
            "vmsn_local": os.path.join(folder, mem["vmsn"]["path"].split("/")[-1]),
            "dest": "[%s] clone-1/%s/%s.vmdk" % (EVIDENCE, CBT_VM, CBT_VM),
            "dest_local": local(sim, EVIDENCE, "clone-1/%s" % CBT_VM)}


def clone_args(sim, case, **extra):
    frozen = case["frozen"]
    args = dict(conn(sim), src=frozen["frozen"][0]["path"], dest=case["dest"],
                files=[{"src": frozen["memory"]["vmem"]["path"]}, {"src": frozen["memory"]["vmsn"]["path"]}],
                changed_areas={"vm": frozen["vm"]["moref"], "snapshot": frozen["snapshot"]["moref"],
                               "disk_key": frozen["frozen"][0]["key"]},
                algorithms=["sha256", "md5"], case_id="clone-1", journal_dir=case["journal_dir"])
    args.update(extra)
    return args


def evidence_records(journal_dir, case_id):
    path = os.path.join(journal_dir, case_id, socket.gethostname() + ".jsonl")
    return [r for r in journal_records(path) if r.get("action") == "vsphere.evidence_file"]


def test_1_check_mode_changes_nothing(sim, case):
    before = tree(local(sim, EVIDENCE))
    started = time.monotonic()
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case), check=True)
    print("check mode: %.1f s" % (time.monotonic() - started))
    assert ok and r["changed"], out
    assert r["disk"]["state"] == "absent" and r["disk"]["would_copy"] and r["digests"] == {}
    assert r["disk"]["folders_to_create"] == ["[%s] clone-1" % EVIDENCE, "[%s] clone-1/%s" % (EVIDENCE, CBT_VM)]
    assert [f["state"] for f in r["files"]] == ["absent", "absent"]
    assert r["transport"] == "iscsi-datastore" and r["engine"] == "api" and "Check mode" in r["msg"]
    assert tree(local(sim, EVIDENCE)) == before
    assert evidence_records(case["journal_dir"], "clone-1") == []


def test_2_the_frozen_base_is_cloned_thin_and_equals_the_base_at_snapshot_time(sim, case):
    started = time.monotonic()
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case))
    print("clone (64 MiB thin disk, 256 MiB .vmem, .vmsn; sources hashed): %.1f s, module %.1f s"
          % (time.monotonic() - started, r.get("seconds", 0)))
    assert ok and r["changed"], out
    disk = r["disk"]
    flat = os.path.join(case["dest_local"], "%s-flat.vmdk" % CBT_VM)
    size = case["disk"]["virtual_bytes"]
    # the result, in datastore_fetch's shape: the source's digests, the destination not verified here
    assert r["src"] == case["frozen"]["frozen"][0]["path"] and r["dest"] == case["dest"]
    assert r["digests"] == {"sha256": case["base_sha256"], "md5": case["base_md5"]}
    assert r["size"] == size and r["dest_size"] == size and disk["dest_size_from"] == "datastore browser"
    assert r["verified"] is False and r["dest_digests"] is None and "collector" in r["verify_note"]
    assert r["copied_by"] == "vmkfstools_clone (CopyVirtualDisk_Task, thin)" and r["transport"] == "iscsi-datastore"
    assert disk["disk_type"] == "thin" and disk["adapter_type"] == "lsiLogic" and disk["created"]
    assert disk["digests_of"] == case["disk"]["flat"]
    assert disk["areas_used"]["source"] == "changed block tracking" and 0 < r["data_bytes"] < size
    roles = [(s["role"], s["dest_equal"]) for s in disk["source_files"]]
    assert roles == [("descriptor", False), ("extent", True)]
    assert disk["source_files"][0]["digests"]["sha256"] == digest(case["disk"]["descriptor_local"])
    # the clone: sparse, byte-equal to the frozen base as it was at snapshot time (the guest writes to the delta)
    st = os.stat(flat)
    assert st.st_size == size and st.st_blocks * 512 < size // 4, (st.st_size, st.st_blocks * 512)
    assert digest(flat) == case["base_sha256"] == digest(case["base_local"])
    with open(flat, "rb") as f:
        f.seek(case["disk"]["marker_offset"])
        assert f.read(64).startswith(("DISKMARK:" + case["vm"]["disk_marker"]).encode())
    with open(os.path.join(case["dest_local"], "%s.vmdk" % CBT_VM)) as f:
        descriptor = f.read()
    assert 'ddb.thinProvisioned = "1"' in descriptor and 'RW %d VMFS "%s-flat.vmdk"' % (size // 512, CBT_VM) in descriptor
    # the memory files, byte for byte, and their source digests
    for entry, source in zip(r["files"], (case["vmem_local"], case["vmsn_local"])):
        copy = os.path.join(case["dest_local"], os.path.basename(source))
        assert digest(copy) == digest(source) == entry["digests"]["sha256"]
        assert entry["digests"]["md5"] == digest(source, "md5") and entry["dest_size"] == os.path.getsize(source)
        assert entry["copied_by"] == "vmkfstools_clone (CopyDatastoreFile_Task)" and entry["dest_equal"]
    # the markers
    with open(os.path.join(case["dest_local"], "%s.vmdk.dfir-vmcollect.json" % CBT_VM)) as f:
        marker = json.load(f)
    assert marker["copy_id"] == disk["copy_id"] and marker["case_id"] == "clone-1"
    assert marker["source"]["descriptors"][0]["text"] == open(case["disk"]["descriptor_local"]).read()
    assert sorted(os.listdir(case["dest_local"])) == sorted(
        ["%s.vmdk" % CBT_VM, "%s-flat.vmdk" % CBT_VM, "%s.vmdk.dfir-vmcollect.json" % CBT_VM] +
        [n for s in (case["vmem_local"], case["vmsn_local"])
         for n in (os.path.basename(s), os.path.basename(s) + ".dfir-vmcollect.json")])
    # nothing was written on the source datastore: the same names as after the freeze (the frozen base unchanged,
    # checked above; the running guests keep writing to their disks)
    assert names(local(sim, "LocalDS_0")) == case["source_names_before"]
    # the journal: the folders and each copy recorded, each applied
    records = evidence_records(case["journal_dir"], "clone-1")
    assert [x["undo"]["kind"] for x in records if x["kind"] == "change"] == ["folders", "disk", "file", "file"]


def test_3_a_rerun_changes_nothing(sim, case):
    before = tree(local(sim, EVIDENCE))
    started = time.monotonic()
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case))
    print("rerun (sources hashed again): %.1f s" % (time.monotonic() - started))
    assert ok and r["changed"] is False, out
    assert r["disk"]["created"] is False and [f["created"] for f in r["files"]] == [False, False]
    assert r["digests"]["sha256"] == case["base_sha256"] and "already a complete thin clone" in r["msg"]
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case), check=True)
    assert ok and r["changed"] is False and r["disk"]["state"] == "complete", out
    assert tree(local(sim, EVIDENCE)) == before


def test_4_what_is_not_a_copy_of_the_source_or_not_on_the_evidence_datastore_is_refused(sim, case):
    before, source_before = tree(local(sim, EVIDENCE)), names(local(sim, "LocalDS_0"))
    other = vm_of(sim, OFF_VM)["disks"][0]["descriptor"]
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, src=other, files=[], changed_areas=None))
    assert not ok and "which is not a complete copy of %s" % other in r["msg"] and r["msg"].endswith(
        "Nothing was changed."), out
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, src=other, files=[], changed_areas=None,
                                                        dest="[LocalDS_0] evidence/x.vmdk"))
    assert not ok and "never where the evidence lies" in r["msg"], out
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, files=[{"src": other}]))
    assert not ok and "is a .vmdk" in r["msg"], out
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, engine="ssh"))
    assert not ok and "engine" in r["msg"], out
    assert tree(local(sim, EVIDENCE)) == before and names(local(sim, "LocalDS_0")) == source_before


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


def test_5_a_kill_mid_copy_then_teardown_removes_the_partial_copy_and_nothing_else(sim, case, tmp_path):
    journal_dir = str(tmp_path / "journal")
    src_folder = local(sim, "LocalDS_0", "big disk [kill]")
    _make_disk(src_folder, BIG_MIB)
    try:
        dest_local = local(sim, EVIDENCE, "clone-2/big [kill]")
        evidence_before = tree(local(sim, EVIDENCE))
        source_before = tree(local(sim, "LocalDS_0"), skip=running_vm_folders(sim))
        args = dict(conn(sim), src="[LocalDS_0] big disk [kill]/big.vmdk",
                    dest="[%s] clone-2/big [kill]/big.vmdk" % EVIDENCE, case_id="clone-2", journal_dir=journal_dir)
        journal = os.path.join(journal_dir, "clone-2", socket.gethostname() + ".jsonl")
        proc = ansible("vmkfstools_clone", args, popen=True)
        deadline = time.monotonic() + 120
        # the host is copying: the destination's data file exists, its descriptor (written last) not yet
        while not os.path.exists(os.path.join(dest_local, "big-flat.vmdk")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.005)
        # kill -9 of the module (Ansible's workers run in a session of their own; its pid is in its at-work record)
        # and of ansible
        module_pid = [x["undo"]["pid"] for x in journal_records(journal) if x.get("action") == "module.running"][0]
        os.kill(module_pid, signal.SIGKILL)
        killed_at = {"descriptor": os.path.exists(os.path.join(dest_local, "big.vmdk")),
                     "allocated": os.stat(os.path.join(dest_local, "big-flat.vmdk")).st_blocks * 512}
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert not killed_at["descriptor"] and killed_at["allocated"] < BIG_MIB * MIB, killed_at
        records = evidence_records(journal_dir, "clone-2")
        disk_change = [x for x in records if x["kind"] == "change" and x["undo"]["kind"] == "disk"][0]
        assert not [x for x in records if x["kind"] == "applied" and x["ref"] == disk_change["id"]]

        # a rerun is refused until teardown ran
        ok, r, out = ansible("vmkfstools_clone", args)
        assert not ok and "Run teardown for the case first" in r["msg"], out

        started = time.monotonic()
        ok, td, out = ansible("teardown", {"case_id": "clone-2", "journal_dir": journal_dir, "connection": conn(sim)})
        print("teardown after the kill: %.1f s" % (time.monotonic() - started))
        assert ok and td["removed"], out
        results = dict((u["description"].split(" on the evidence")[0], u["result"]) for u in td["undone"]
                       if u["action"] == "vsphere.evidence_file")
        assert results["thin clone of [LocalDS_0] big disk [kill]/big.vmdk to [%s] clone-2/big [kill]/big.vmdk"
                       % EVIDENCE].startswith("removed what the unfinished copy left: "), results
        assert "removed the empty folder [%s] clone-2/big [kill]" % EVIDENCE in results[
            "folder(s) [%s] clone-2, [%s] clone-2/big [kill]" % (EVIDENCE, EVIDENCE)], results
        # nothing else: the evidence datastore as before (case clone-1's completed copies included), the sources too
        assert tree(local(sim, EVIDENCE)) == evidence_before
        assert tree(local(sim, "LocalDS_0"), skip=running_vm_folders(sim)) == source_before
    finally:
        shutil.rmtree(src_folder, ignore_errors=True)


def test_6_the_case_teardown_keeps_the_completed_copies(sim, case):
    evidence_before = tree(local(sim, EVIDENCE))
    digests = dict((n, digest(os.path.join(case["dest_local"], n))) for n in os.listdir(case["dest_local"]))
    ok, td, out = ansible("teardown", {"case_id": "clone-1", "journal_dir": case["journal_dir"], "connection": conn(sim)})
    assert ok and td["removed"], out
    results = [u["result"] for u in td["undone"] if u["action"] == "vsphere.evidence_file"]
    assert len(results) == 4, results
    assert all(x.startswith("kept: evidence: ") for x in results[:3]), results
    assert results[3].startswith("kept the folder [%s] clone-1/%s: it holds " % (EVIDENCE, CBT_VM)), results
    snapshot = [u["result"] for u in td["undone"] if u["action"] == "vsphere.snapshot"][0]
    assert snapshot.startswith("removed the snapshot"), snapshot
    assert tree(local(sim, EVIDENCE)) == evidence_before
    assert dict((n, digest(os.path.join(case["dest_local"], n))) for n in os.listdir(case["dest_local"])) == digests
    # the snapshot is gone and the base took the guest's writes: a clone of it now is of another state, refused
    ok, r, out = ansible("vmkfstools_clone", clone_args(sim, case, files=[], changed_areas=None))
    assert not ok and "is not the one copied then" in r["msg"] and r["msg"].endswith("Nothing was changed."), out
    assert tree(local(sim, EVIDENCE)) == evidence_before


# outside the CI budget (make test-slow); in CI: test_acquire_esxi_iscsi.py writes the records onto the datastore and reads them on the volume
@pytest.mark.slow
def test_7_datastore_upload_writes_the_case_records_beside_the_copies_and_reads_them_back(sim, case, tmp_path):
    """The case's records go into the folder the copies made on the evidence datastore; the same bytes again change
    nothing; a different file is replaced only when asked; a datastore holding a VM, or a folder that does not exist,
    is refused with nothing written."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"case_id": "clone-1"}\n')
    dest = "[%s] clone-1/manifest.json" % EVIDENCE
    there = local(sim, EVIDENCE, "clone-1/manifest.json")
    args = dict(conn(sim), files=[{"src": str(manifest), "dest": dest}])
    ok, r, out = ansible("datastore_upload", args, check=True)
    assert ok and r["changed"] and r["files"][0]["state"] == "would write" and not os.path.exists(there), out
    ok, r, out = ansible("datastore_upload", args)
    assert ok and r["changed"] and r["files"][0]["state"] == "written", out
    with open(there, "rb") as f:
        assert f.read() == manifest.read_bytes()
    assert r["files"][0]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    ok, r, out = ansible("datastore_upload", args)
    assert ok and not r["changed"] and r["files"][0]["state"] == "unchanged", out
    manifest.write_text('{"case_id": "clone-1", "grown": true}\n')
    ok, r, out = ansible("datastore_upload", args)
    assert not ok and "already holds a different file" in r["msg"] and "replace=true" in r["msg"], out
    ok, r, out = ansible("datastore_upload", dict(args, replace=True))
    assert ok and r["files"][0]["state"] == "replaced", out
    with open(there, "rb") as f:
        assert f.read() == manifest.read_bytes()
    source_before = names(local(sim, "LocalDS_0"))
    vm_folder = os.path.basename(case["vm"]["dir_local"])
    ok, r, out = ansible("datastore_upload", dict(conn(sim), files=[{"src": str(manifest),
                                                                     "dest": "[LocalDS_0] %s/manifest.json" % vm_folder}]))
    assert not ok and "holds" in r["msg"] and "virtual machine(s)" in r["msg"], out
    ok, r, out = ansible("datastore_upload", dict(conn(sim), files=[{"src": str(manifest),
                                                                     "dest": "[%s] no-such-case/manifest.json" % EVIDENCE}]))
    assert not ok and "does not exist" in r["msg"], out
    assert names(local(sim, "LocalDS_0")) == source_before
    assert not os.path.exists(local(sim, EVIDENCE, "no-such-case"))
