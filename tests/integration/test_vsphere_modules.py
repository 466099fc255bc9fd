# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""esxi_vm_info, esxi_snapshot and teardown, run through Ansible against the lab's vSphere simulator.

The simulator is started for this module from lab/vcsim (``VMCOLLECT_VCSIM_DIR`` names another copy of it,
``LAB_DIR`` where it builds and runs) on a private env file, and stopped at the end. Before the tests a VM of it
gets a name with spaces and brackets, and a pre-existing snapshot, as real VMs do.

What govmomi's vcsim 0.24.2 does not do is tolerated only where a comment starting with "SIMULATOR:" says so:
  - it writes no .vmem and no delta disk: a snapshot's memory file is absent and the disks keep writing to their
    leaf (on ESXi they write to a new delta); the frozen chains are checked against the leaf before the freeze;
  - it has no CreateSnapshotEx_Task and no ConsolidateVMDisks_Task (quiesce and a pending consolidation are
    unit-tested only);
  - it reports the snapshot capabilities of a VM as false unless a lab extension sets them (without it, the
    refusal is tested and the snapshot tests skip saying so);
  - it creates a snapshot at once: the kill between the journal record and the snapshot needs a lab extension
    that delays CreateSnapshot_Task (``lab.*.create_snapshot_delay_ms`` in its env file); without it the killed
    state is written as the module writes it (the record, then the snapshot) and teardown is proved on that.
"""

import json
import os
import signal
import socket
import time

import pytest

from conftest import ansible_module as ansible, journal_records
from vcsim_helpers import NEEDS_BUILD, conn, connect, private_simulator

ODD_NAME = "Windows XP [prod] 100% o'clock"

pytestmark = [NEEDS_BUILD]

pyVmomi = pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal  # noqa: E402
# registers the vsphere.snapshot undo handler, as teardown's import does
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import snapshot as vs  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.vm import flatten_snapshots  # noqa: E402


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """The running simulator's env (url, port, credentials, certificate, VMs), with VM1 renamed to ODD_NAME and a
    snapshot 'before the incident' on VM0."""
    with private_simulator(tmp_path_factory.mktemp("vcsim"), "vcsim-vsphere-modules") as env:
        with connect(env) as client:
            vm1 = client.find_vm(name=env["vms"][1]["name"])
            client.wait_for_task(vm1.Rename_Task(newName=ODD_NAME), "rename")
            vm0 = client.find_vm(name=env["vms"][0]["name"])
            client.wait_for_task(vm0.CreateSnapshot_Task(name="before the incident", description="", memory=False,
                                                         quiesce=False), "snapshot")
        yield env


def tree_state(env, name):
    """The VM's snapshot tree (moref, name, parent, current) and each disk's leaf: what teardown must restore."""
    with connect(env) as client:
        vm = client.find_vm(name=name)
        props = client.properties(vm, ["snapshot", "config.hardware.device"])
    tree = [(s["moref"], s["name"], s["parent"], s["current"]) for s in flatten_snapshots(props.get("snapshot"))]
    leaves = sorted((d.key, d.backing.fileName) for d in props["config.hardware.device"]
                    if isinstance(d, vim.vm.device.VirtualDisk))
    return tree, leaves


def snapshots_named(env, vm_name, prefix):
    return [s for s in tree_state(env, vm_name)[0] if s[1].startswith(prefix)]


@pytest.fixture(scope="module")
def capabilities_ok(sim):
    with connect(sim) as client:
        vm = client.find_vm(name=sim["vms"][0]["name"])
        caps = client.properties(vm, ["capability.snapshotOperationsSupported", "capability.memorySnapshotsSupported"])
    return all(caps.values())


def need_capabilities(ok):
    if not ok:
        # SIMULATOR: vcsim 0.24.2 says snapshots are unsupported; a lab extension must set the capabilities
        pytest.skip("the simulator reports the VMs' snapshot capabilities as false (vcsim 0.24.2 without a lab "
                    "extension that sets them): the freeze is refused, which test_memory_unsupported_is_refused proves")


# -- describe -------------------------------------------------------------------------------------------------

def test_describe_both_vms(sim):
    for name in (sim["vms"][0]["name"], ODD_NAME):
        ok, r, out = ansible("esxi_vm_info", dict(conn(sim), name=name), check=True)
        assert ok and r["changed"] is False, out
        vm = r["vm"]
        assert vm["name"] == name and vm["state"] == "running" and vm["power_state"] == "poweredOn"
        assert vm["memory_bytes"] > 0 and vm["moref"].startswith("vm-") and vm["uuid"]
        assert vm["vmx"].startswith("[LocalDS_0] ") and vm["vmx"].endswith(".vmx")
        assert vm["host"]["api_type"] == "HostAgent" and vm["host"]["tools"]["pyvmomi"] == pyVmomi_version()
        assert vm["host"]["tools"]["vsphere_api"] == sim["api_version"] and vm["host"]["build"]
        (disk,) = vm["disks"]
        assert disk["target"] == "scsi0:0" and disk["format"] == "vmdk" and disk["kind"] == "flat"
        assert disk["path"].startswith("[LocalDS_0] ") and disk["datastore"] == "LocalDS_0"
        assert disk["backing_chain"] == [] and disk["extents"][0]["path"].endswith("-flat.vmdk")
        assert disk["capacity_bytes"] > 0 and vm["skipped_disks"] == []
        assert set(vm["capabilities"]) >= {"memory_snapshots_supported", "quiesced_snapshots_supported",
                                           "snapshot_operations_supported"}
        assert r["tls"]["verified"] and r["tls"]["how"] == "thumbprint"
    ok, r, out = ansible("esxi_vm_info", dict(conn(sim), name=sim["vms"][0]["name"]))
    assert [s["name"] for s in r["vm"]["snapshots"]] == ["before the incident"]
    assert r["vm"]["current_snapshot"]["name"] == "before the incident"
    by_uuid = ansible("esxi_vm_info", dict(conn(sim), uuid=r["vm"]["uuid"]))[1]
    assert by_uuid["vm"]["moref"] == r["vm"]["moref"]


def pyVmomi_version():  # noqa: N802 pylint: disable=invalid-name
    from importlib import metadata
    return metadata.version("pyvmomi")


def test_an_unknown_vm_and_a_name_that_is_not_exact_are_refused(sim):
    for name in ("no such VM", "Windows XP [prod]", "windows xp [prod] 100% o'clock"):
        ok, r, out = ansible("esxi_vm_info", dict(conn(sim), name=name))
        assert not ok and r["msg"] == "No VM named %r is on 127.0.0.1:%d. Nothing was changed." % (name, sim["port"])


# -- TLS and credentials ------------------------------------------------------------------------------------

def test_a_wrong_thumbprint_is_refused_naming_both_and_sending_nothing(sim):
    wrong = "AB:" * 31 + "AB"
    ok, r, out = ansible("esxi_vm_info", dict(conn(sim, thumbprint=wrong), name=ODD_NAME))
    assert not ok
    assert sim["thumbprint_sha256"] in r["msg"] and wrong in r["msg"] and "no credential was sent" in r["msg"]
    assert r["tls"]["thumbprint_sha256"] == sim["thumbprint_sha256"]
    sha1 = ansible("esxi_vm_info", dict(conn(sim, thumbprint=sim["thumbprint_sha1"]), name=ODD_NAME))[1]
    assert "SHA-1 fingerprint; SHA-1 is too weak" in sha1["msg"]


def test_validate_certs_false_is_recorded_and_the_ca_file_and_system_store_are_checked(sim):
    ok, r, out = ansible("esxi_vm_info", dict(conn(sim, thumbprint=None, validate_certs=False), name=ODD_NAME))
    assert ok and r["tls"] == {"verified": False, "how": "off", "thumbprint_sha256": sim["thumbprint_sha256"]}
    ok, r, out = ansible("esxi_vm_info", dict(conn(sim, thumbprint=None, ca_file=sim["cert_file"]), name=ODD_NAME))
    assert ok and r["tls"]["how"] == "ca_file" and r["tls"]["verified"] is True
    ok, r, out = ansible("esxi_vm_info", dict(conn(sim, thumbprint=None), name=ODD_NAME))
    assert not ok and "could not be verified" in r["msg"] and "no credential was sent" in r["msg"]


def test_a_wrong_password_is_said_without_the_password(sim):
    secret = "Wr0ng-Pa55word-%d" % os.getpid()
    ok, r, out = ansible("esxi_vm_info", dict(conn(sim, password=secret), name=ODD_NAME))
    assert not ok
    assert r["msg"].startswith("127.0.0.1:%d refused the login (InvalidLogin): the user name or password is wrong"
                               % sim["port"])
    assert secret not in out


# -- freeze and teardown ---------------------------------------------------------------------------------------

def test_memory_unsupported_is_refused(sim, capabilities_ok, tmp_path):
    if capabilities_ok:
        pytest.skip("the simulator supports memory snapshots; the refusal is unit-tested (test_vsphere_snapshot)")
    ok, r, out = ansible("esxi_snapshot", dict(conn(sim), name=ODD_NAME, case_id="c-refused",
                                               journal_dir=str(tmp_path / "j")))
    assert not ok and "does not support" in r["msg"] and r["msg"].endswith("Nothing was changed.")
    assert not os.path.exists(str(tmp_path / "j" / "c-refused"))


# outside the CI budget (make test-slow); in CI: test_acquire_esxi.py's check mode, freeze and teardown, the host's tree compared before and after
@pytest.mark.slow
def test_snapshot_check_mode_then_freeze_then_teardown_restore_the_tree_exactly(sim, capabilities_ok, tmp_path):
    need_capabilities(capabilities_ok)
    name = sim["vms"][0]["name"]
    journal_dir = str(tmp_path / "journal")
    before = tree_state(sim, name)
    args = dict(conn(sim), name=name, case_id="case-v1", journal_dir=journal_dir)

    ok, plan, out = ansible("esxi_snapshot", args, check=True)
    assert ok and plan["changed"] and plan["snapshot"]["moref"] is None, out
    assert plan["snapshot"]["name"].startswith("dfir-vmcollect case-v1 ") and plan["method"] == "vSphere memory snapshot"
    assert tree_state(sim, name) == before and not os.path.exists(journal_dir)

    ok, r, out = ansible("esxi_snapshot", args)
    assert ok and r["changed"], out
    assert r["method"] == "vSphere memory snapshot" and r["quiesced"] is False and r["skipped_disks"] == []
    snap = r["snapshot"]
    assert snap["name"].startswith("dfir-vmcollect case-v1 ") and snap["moref"].startswith("snapshot-")
    assert r["snapshot_time"] == snap["created"] and snap["created"].endswith("Z")
    assert "case case-v1" in snap["description"] and "vSphere user %s" % sim["username"] in snap["description"]
    (frozen,) = r["frozen"]
    leaf_before = before[1][0][1]
    assert frozen["target"] == "scsi0:0" and frozen["path"] == leaf_before
    assert frozen["chain"][0]["path"] == leaf_before and frozen["chain"][0]["format"] == "vmdk"
    assert frozen["chain"][0]["extent"].endswith("-flat.vmdk") and isinstance(frozen["chain"][0]["size"], int)
    assert r["memory"]["vmsn"]["path"].endswith(".vmsn")
    # SIMULATOR: no .vmem (ESXi writes one for a memory snapshot) and no delta (the VM keeps its leaf)
    assert r["memory"]["vmem"] is None or r["memory"]["vmem"]["path"].endswith(".vmem")
    assert r["tls"]["how"] == "thumbprint"
    assert r["journal"] == os.path.join(journal_dir, "case-v1", socket.gethostname() + ".jsonl")
    records = journal_records(r["journal"])
    change = [x for x in records if x.get("action") == "vsphere.snapshot"]
    assert len(change) == 1 and change[0]["undo"]["snapshot_name"] == snap["name"]
    assert change[0]["undo"]["disks"] == [{"key": frozen["key"], "target": "scsi0:0", "leaf": leaf_before}]
    applied = [x for x in records if x.get("kind") == "applied" and x["ref"] == change[0]["id"]]
    assert applied and applied[0]["facts"]["snapshot"] == snap["moref"]
    assert sim["password"] not in open(r["journal"]).read()

    again = ansible("esxi_snapshot", args)[1]
    assert again["changed"] is False and again["snapshot"]["moref"] == snap["moref"]
    assert len(snapshots_named(sim, name, "dfir-vmcollect")) == 1

    td_args = {"case_id": "case-v1", "journal_dir": journal_dir, "connection": conn(sim)}
    ok, plan_td, out = ansible("teardown", td_args, check=True)
    assert ok and plan_td["undone"][0]["result"].startswith("would remove the snapshot %r" % snap["name"]), out
    assert len(snapshots_named(sim, name, "dfir-vmcollect")) == 1
    ok, td, out = ansible("teardown", td_args)
    assert ok and td["removed"], out
    assert sim["password"] not in out
    result = td["undone"][0]["result"]
    assert result.startswith("removed the snapshot %r of VM %s (vm-" % (snap["name"], name))
    assert "every disk writes to its leaf of before the freeze again" in result
    assert tree_state(sim, name) == before
    assert not os.path.exists(os.path.join(journal_dir, "case-v1"))


def test_disks_a_snapshot_cannot_freeze_are_refused_then_accepted(sim, capabilities_ok, tmp_path):
    need_capabilities(capabilities_ok)
    with connect(sim) as client:
        vm = client.find_vm(name=ODD_NAME)
        devices = client.properties(vm, ["config.hardware.device"])["config.hardware.device"]
        ctl = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)][0]
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="independent_persistent",
                                                                thinProvisioned=True, fileName="")
        new = vim.vm.device.VirtualDisk(key=-1, controllerKey=ctl.key, unitNumber=1, capacityInKB=1024,
                                        backing=backing)
        spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create",
                                                                               device=new)])
        client.wait_for_task(vm.ReconfigVM_Task(spec=spec), "add an independent disk")
    described = ansible("esxi_vm_info", dict(conn(sim), name=ODD_NAME))[1]["vm"]
    (ind,) = described["skipped_disks"]
    assert ind["target"] == "scsi0:1" and ind["disk_mode"] == "independent_persistent"
    assert ind["reason"].startswith("independent disk")
    before = tree_state(sim, ODD_NAME)
    journal_dir = str(tmp_path / "journal")
    args = dict(conn(sim), name=ODD_NAME, case_id="case-v2", journal_dir=journal_dir)
    ok, r, out = ansible("esxi_snapshot", args)
    assert not ok and "scsi0:1" in r["msg"] and "accept_not_frozen" in r["msg"] and "Nothing was changed." in r["msg"]
    ok, r, out = ansible("esxi_snapshot", dict(args, accept_not_frozen=["scsi0:1"]))
    assert not ok and "takes no memory snapshot of a VM with independent disks" in r["msg"]
    assert tree_state(sim, ODD_NAME) == before and not os.path.exists(os.path.join(journal_dir, "case-v2"))
    ok, r, out = ansible("esxi_snapshot", dict(args, accept_not_frozen=["scsi0:1"], memory=False))
    assert not ok and "allow_disk_only=true" in r["msg"]

    ok, r, out = ansible("esxi_snapshot", dict(args, accept_not_frozen=["scsi0:1"], memory=False,
                                               allow_disk_only=True))
    assert ok and r["method"] == "vSphere snapshot" and r["memory"] is None, out
    assert [d["target"] for d in r["frozen"]] == ["scsi0:0"]
    assert [d["target"] for d in r["skipped_disks"]] == ["scsi0:1"] and "Not frozen (accepted): scsi0:1" in r["note"]
    # the journal of this host (the controller); the ESXi role gives each endpoint a journal folder of its own
    assert r["journal"] == os.path.join(journal_dir, "case-v2", socket.gethostname() + ".jsonl")
    # the journal API undoes it as the teardown module does
    undone = Journal("case-v2", journal_dir).teardown(options=conn(sim))
    assert undone["removed"] and undone["undone"][0]["result"].startswith("removed the snapshot")
    assert tree_state(sim, ODD_NAME) == before


def test_a_kill_between_the_record_and_the_snapshot_is_undone_by_teardown(sim, capabilities_ok, tmp_path):
    need_capabilities(capabilities_ok)
    name = sim["vms"][0]["name"]
    journal_dir = str(tmp_path / "journal")
    host = socket.gethostname()
    before = tree_state(sim, name)
    journal = os.path.join(journal_dir, "case-v3", host + ".jsonl")
    delay = max([v.get("create_snapshot_delay_ms", 0) for v in (sim.get("lab") or {}).values()
                 if isinstance(v, dict)] or [0])
    if delay >= 1000:
        proc = ansible("esxi_snapshot", dict(conn(sim), name=name, case_id="case-v3", journal_dir=journal_dir),
                       popen=True)
        deadline = time.monotonic() + 60
        while not [x for x in journal_records(journal) if x.get("action") == "vsphere.snapshot"]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        # kill -9 of everything on the controller: ansible, and the module (Ansible's workers run in a session of
        # their own, so a module outlives its killed playbook; its pid is in its at-work record)
        module_pid = [x["undo"]["pid"] for x in journal_records(journal) if x.get("action") == "module.running"][0]
        os.kill(module_pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    else:
        # SIMULATOR: no delay to kill in; write what a killed module leaves: the record, then the snapshot
        with connect(sim) as client:
            vm = client.find_vm(name=name)
            desc = vs.describe(client, vm=vm)[1]
            snap_name = vs.snapshot_name("case-v3")
            Journal("case-v3", journal_dir, hostname=host).record_change(vs.ACTION, {
                "endpoint": client.where, "vm_moref": desc["moref"], "vm_uuid": desc["uuid"], "vm_name": name,
                "snapshot_name": snap_name, "memory": True,
                "disks": [{"key": d["key"], "target": d["target"], "leaf": d["path"]} for d in desc["disks"]],
                "snapshots_before": [{"moref": s["moref"], "name": s["name"]} for s in desc["snapshots"]],
                "consolidation_needed_before": False}, "snapshot (killed)", module="esxi_snapshot")
            client.wait_for_task(vm.CreateSnapshot_Task(name=snap_name, description="", memory=True, quiesce=False),
                                 "snapshot")
    records = journal_records(journal)
    change = [x for x in records if x.get("action") == "vsphere.snapshot"][0]
    assert not [x for x in records if x.get("kind") == "applied" and x["ref"] == change["id"]]
    # SIMULATOR: the delayed call makes the snapshot after the kill, with no task to wait for yet (ESXi has the
    # task from the start, and the undo waits for it): wait here until it is there
    deadline = time.monotonic() + 30
    while not snapshots_named(sim, name, change["undo"]["snapshot_name"]):
        assert time.monotonic() < deadline, "the killed module's snapshot never appeared"
        time.sleep(0.2)

    rerun = ansible("esxi_snapshot", dict(conn(sim), name=name, case_id="case-v3", journal_dir=journal_dir))[1]
    assert "journaled but never confirmed" in rerun.get("msg", json.dumps(rerun)) and "Run teardown for the case first" in rerun["msg"]

    td_args = {"case_id": "case-v3", "journal_dir": journal_dir, "connection": conn(sim)}
    ok, td, out = ansible("teardown", td_args)
    assert ok and td["removed"], out
    results = [u["result"] for u in td["undone"] if u["action"] == "vsphere.snapshot"]
    assert results[0].startswith("removed the snapshot %r" % change["undo"]["snapshot_name"])
    assert tree_state(sim, name) == before

    # a record whose snapshot was never made: teardown says so and changes nothing
    Journal("case-v4", journal_dir, hostname=host).record_change("vsphere.snapshot", dict(
        change["undo"], snapshot_name="dfir-vmcollect case-v4 00000000"), "snapshot (never made)",
        module="esxi_snapshot")
    ok, td, out = ansible("teardown", dict(td_args, case_id="case-v4"))
    assert ok and "was already removed (or never made)" in td["undone"][0]["result"], out
    assert tree_state(sim, name) == before


def test_teardown_without_the_connection_says_what_it_needs(sim, tmp_path):
    journal_dir = str(tmp_path / "journal")
    Journal("case-v5", journal_dir, hostname=socket.gethostname()).record_change("vsphere.snapshot", {
        "endpoint": "esxi9.example.org", "vm_moref": "vm-1", "vm_uuid": "x", "vm_name": "VM", "snapshot_name": "s",
        "memory": True, "disks": [], "snapshots_before": [], "consolidation_needed_before": False},
        "snapshot s", module="esxi_snapshot")
    ok, td, out = ansible("teardown", {"case_id": "case-v5", "journal_dir": journal_dir})
    assert not ok and "give teardown its connection" in td["msg"] and "esxi9.example.org" in td["msg"]
