# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The freeze's plan (every refusal before a change), its names, and the undo's decisions, the latter against a
fake session whose stub records every vSphere method called (nothing is removed but our snapshot)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import datetime
import re

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    SnapshotError,
    VmNotFoundError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UNDO_HANDLERS, UndoContext
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import snapshot as vs

pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

UUID = "42131f37-0e7c-4f6a-9d6e-2d0d4d6a1e0b"


def desc(**kw):
    d = {"name": "Windows XP", "state": "running", "power_state": "poweredOn", "connection_state": "connected",
         "template": False, "disks": [{"target": "scsi0:0", "key": 2000, "path": "[ds] vm/vm.vmdk",
                                       "backing_chain": [], "label": "Hard disk 1"}],
         "skipped_disks": [], "guest_tools": {"running_status": "guestToolsRunning"},
         "capabilities": {"memory_snapshots_supported": True, "quiesced_snapshots_supported": True,
                          "snapshot_operations_supported": True}}
    d.update(kw)
    return d


def skipped(target, mode="persistent", kind="rdm_virtual", label=None):
    return {"target": target, "label": label or target, "path": "[ds] vm/x.vmdk", "disk_mode": mode, "kind": kind,
            "reason": "%s because" % kind}


def refusal(**kw):
    d = kw.pop("d", None) or desc()
    with pytest.raises(SnapshotError) as err:
        vs.plan(d, **kw)
    assert err.value.message.startswith("VM Windows XP cannot be frozen as asked: ")
    assert err.value.message.endswith("Nothing was changed.")
    return err.value.message


def test_a_running_vm_is_frozen_with_its_memory():
    p = vs.plan(desc())
    assert p["memory"] is True and p["skipped"] == [] and p["running"]


def test_memory_false_on_a_running_vm_needs_allow_disk_only():
    assert "allow_disk_only=true" in refusal(memory=False)
    assert vs.plan(desc(), memory=False, allow_disk_only=True)["memory"] is False


def test_memory_is_never_downgraded_when_unsupported():
    d = desc(capabilities={"memory_snapshots_supported": False, "snapshot_operations_supported": True})
    assert "does not support memory snapshots" in refusal(d=d)
    assert vs.plan(d, memory=False, allow_disk_only=True)["memory"] is False


def test_a_vm_that_is_off_gets_a_disk_only_snapshot():
    p = vs.plan(desc(state="shut off", power_state="poweredOff"))
    assert p["memory"] is False and not p["running"]


@pytest.mark.parametrize("kw, says", [
    ({"d": desc(guest_tools={"running_status": "guestToolsNotRunning"}), "quiesce": True},
     "needs VMware Tools running in the guest (they are guestToolsNotRunning)"),
    ({"d": desc(state="shut off", power_state="poweredOff"), "quiesce": True}, "quiesce needs a running VM"),
    ({"d": desc(capabilities={"quiesced_snapshots_supported": False}), "quiesce": True},
     "does not support quiesced snapshots"),
    ({"quiesce": True, "api_version": "6.0"}, "needs vSphere API 6.5 or later"),
    ({"d": desc(template=True)}, "it is a template"),
    ({"d": desc(connection_state="inaccessible")}, "connection state is inaccessible"),
    ({"d": desc(capabilities={"snapshot_operations_supported": False})}, "does not support snapshots"),
])
def test_refusals(kw, says):
    assert says in refusal(**kw)


def test_quiesce_passes_with_tools():
    assert vs.plan(desc(), quiesce=True, api_version="8.0.2.0")["memory"] is True


def test_disks_a_snapshot_cannot_freeze_are_refused_listed_unless_accepted():
    d = desc(skipped_disks=[skipped("scsi0:1"), skipped("scsi0:2", kind="rdm_physical", label="Hard disk 3")])
    message = refusal(d=d)
    assert "scsi0:1 (scsi0:1, [ds] vm/x.vmdk): rdm_virtual because" in message and "scsi0:2" in message
    assert "name them in accept_not_frozen" in message
    message = refusal(d=d, accept_not_frozen=["scsi0:1"])
    assert "scsi0:2" in message and "scsi0:1 (" not in message and "name it in accept_not_frozen" in message
    p = vs.plan(d, accept_not_frozen=["scsi0:1", "Hard disk 3"])
    assert [s["target"] for s in p["skipped"]] == ["scsi0:1", "scsi0:2"]
    assert "names scsi9:9, which is no disk" in refusal(d=d, accept_not_frozen=["scsi0:1", "Hard disk 3", "scsi9:9"])


def test_independent_disks_rule_out_a_memory_snapshot():
    d = desc(skipped_disks=[skipped("scsi0:1", mode="independent_persistent", kind="flat")])
    assert "takes no memory snapshot of a VM with independent disks (scsi0:1)" in refusal(d=d,
                                                                                          accept_not_frozen=["scsi0:1"])
    p = vs.plan(d, memory=False, allow_disk_only=True, accept_not_frozen=["scsi0:1"])
    assert p["memory"] is False and p["skipped"][0]["target"] == "scsi0:1"


def test_nothing_to_freeze():
    assert "no disk a snapshot can freeze" in refusal(d=desc(disks=[], state="shut off", power_state="poweredOff"))


def test_names():
    assert re.match(r"^dfir-vmcollect case-42 [0-9a-f]{8}$", vs.snapshot_name("case-42"))
    assert vs.snapshot_name("c") != vs.snapshot_name("c")


def test_description_says_what_and_who():
    text = vs.snapshot_description("case-42", "dfir@vsphere.local", True)
    assert "case case-42" in text and "disks and memory" in text and "vSphere user dfir@vsphere.local" in text


# -- undo -------------------------------------------------------------------------------------------

class Stub(object):
    """A pyVmomi stub that records every method called and lets the fake VM react."""

    def __init__(self, vm):
        self.vm = vm
        self.calls = []

    def InvokeMethod(self, mo, info, args):  # noqa: N802 pylint: disable=invalid-name
        self.calls.append((mo._moId, info.wsdlName, list(args)))  # pylint: disable=protected-access
        self.vm.react(mo._moId, info.wsdlName)  # pylint: disable=protected-access
        return vim.Task("task-%d" % len(self.calls))


class FakeVm(object):
    def __init__(self, snapshots, leaf="[ds] vm/vm.vmdk", consolidation_after_remove=False, consolidation=False):
        self.snapshots = snapshots  # [(moref, name, parent)]
        self.leaf = leaf
        self.consolidation = consolidation
        self.consolidation_after_remove = consolidation_after_remove

    def react(self, ref, method):
        if method == "RemoveSnapshot_Task":
            self.snapshots = [s for s in self.snapshots if s[0] != ref]
            self.leaf = "[ds] vm/vm.vmdk"
            self.consolidation = self.consolidation_after_remove
        if method == "ConsolidateVMDisks_Task":
            self.consolidation = False

    def tree(self):
        t = datetime.datetime(2026, 1, 1)

        def node(ref, name):
            children = [node(r, n) for r, n, p in self.snapshots if p == ref]
            return vim.vm.SnapshotTree(snapshot=vim.vm.Snapshot(ref), name=name, description="", id=1, createTime=t,
                                       state="poweredOn", quiesced=False, childSnapshotList=children)

        roots = [node(r, n) for r, n, p in self.snapshots if p is None]
        return vim.vm.SnapshotInfo(rootSnapshotList=roots) if roots else None


class FakeClient(object):
    where = "esxi1"
    timeout = 30

    def __init__(self, vm, uuid=UUID):
        self.fake = vm
        self.uuid = uuid
        self.si = type("Si", (), {})()
        self.si._stub = Stub(vm)  # pylint: disable=protected-access
        self.waited = []

    @property
    def calls(self):
        return [(ref, name) for ref, name, _args in self.si._stub.calls]  # pylint: disable=protected-access

    def properties(self, obj, paths):
        if paths == ["config.uuid"]:
            return {"config.uuid": self.uuid}
        if paths == ["recentTask"]:
            return {}
        disk = vim.vm.device.VirtualDisk(key=2000, backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=self.fake.leaf))
        values = {"config.hardware.device": [disk], "runtime.consolidationNeeded": self.fake.consolidation,
                  "runtime.powerState": "poweredOn"}
        tree = self.fake.tree()
        if tree is not None:
            values["snapshot"] = tree
        return values

    def wait_for_task(self, task, what, timeout=None):
        self.waited.append((task._moId, what, timeout))  # pylint: disable=protected-access

    def find_vm(self, name=None, uuid=None):
        raise VmNotFoundError("No VM with the UUID %s is on esxi1." % uuid)


NAME = "dfir-vmcollect c1 0a1b2c3d"
UNDO = {"endpoint": "esxi1", "vm_moref": "vm-9", "vm_uuid": UUID, "vm_name": "Windows XP", "snapshot_name": NAME,
        "memory": True, "disks": [{"key": 2000, "target": "scsi0:0", "leaf": "[ds] vm/vm.vmdk"}],
        "snapshots_before": [{"moref": "snapshot-1", "name": "before patch"}], "consolidation_needed_before": False}


def _undo(client, check_mode=False, **change):
    return vs.remove_freeze(client, dict(copy.deepcopy(UNDO), **change), check_mode, 60)


def test_only_our_snapshot_is_removed_without_its_children_and_consolidated():
    vm = FakeVm([("snapshot-1", "before patch", None), ("snapshot-7", NAME, "snapshot-1")],
                leaf="[ds] vm/vm-000002.vmdk")
    client = FakeClient(vm)
    said = _undo(client)
    assert client.si._stub.calls == [("snapshot-7", "RemoveSnapshot_Task", [False, True])]  # removeChildren, consolidate
    assert [s[1] for s in vm.snapshots] == ["before patch"]
    assert said.startswith("removed the snapshot %r of VM Windows XP (vm-9) on esxi1 (snapshot-7)" % NAME)
    assert said.endswith("every disk writes to its leaf of before the freeze again")
    assert client.waited[0][2] == 60


def test_check_mode_changes_nothing():
    vm = FakeVm([("snapshot-7", NAME, None)])
    client = FakeClient(vm)
    assert _undo(client, check_mode=True).startswith("would remove the snapshot")
    assert client.calls == [] and len(vm.snapshots) == 1


def test_a_snapshot_already_gone_is_said_and_nothing_is_called():
    client = FakeClient(FakeVm([("snapshot-1", "before patch", None)]))
    said = _undo(client)
    assert "was already removed (or never made)" in said and client.calls == []


def test_two_snapshots_with_our_name_are_refused():
    client = FakeClient(FakeVm([("snapshot-7", NAME, None), ("snapshot-8", NAME, "snapshot-7")]))
    with pytest.raises(SnapshotError, match="has 2 snapshots named"):
        _undo(client)
    assert client.calls == []


def test_a_consolidation_vsphere_asks_for_is_done_unless_it_was_pending_before():
    vm = FakeVm([("snapshot-7", NAME, None)], consolidation_after_remove=True)
    client = FakeClient(vm)
    assert "consolidated its disks" in _undo(client)
    assert client.calls == [("snapshot-7", "RemoveSnapshot_Task"), ("vm-9", "ConsolidateVMDisks_Task")]
    vm = FakeVm([("snapshot-7", NAME, None)], consolidation_after_remove=True)
    client = FakeClient(vm)
    _undo(client, consolidation_needed_before=True)
    assert client.calls == [("snapshot-7", "RemoveSnapshot_Task")]


def test_a_disk_not_back_on_its_leaf_fails_unless_someone_elses_snapshot_explains_it():
    vm = FakeVm([("snapshot-1", "before patch", None)], leaf="[ds] vm/vm-000009.vmdk")
    with pytest.raises(SnapshotError, match="scsi0:0 writes to \\[ds\\] vm/vm-000009.vmdk, not \\[ds\\] vm/vm.vmdk"):
        _undo(FakeClient(vm))
    vm = FakeVm([("snapshot-1", "before patch", None), ("snapshot-9", "backup job", "snapshot-1")],
                leaf="[ds] vm/vm-000009.vmdk")
    client = FakeClient(vm)
    said = _undo(client)
    assert "'backup job' (snapshot-9)" in said and "not ours to remove" in said and client.calls == []


def test_the_vm_must_be_the_journaled_one():
    client = FakeClient(FakeVm([("snapshot-7", NAME, None)]), uuid="another-uuid")
    with pytest.raises(SnapshotError) as err:
        _undo(client)
    assert "is not on esxi1; the journal says it was frozen on esxi1" in err.value.message
    assert client.calls == []


def test_the_handler_needs_teardowns_connection():
    with pytest.raises(SnapshotError, match="give teardown its connection"):
        UNDO_HANDLERS[vs.ACTION](UNDO, UndoContext())
