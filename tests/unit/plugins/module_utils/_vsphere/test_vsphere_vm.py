# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Describing a VM from pyVmomi's own data objects: device nodes, chains (order and files), what is skipped and why,
the snapshot tree."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import vm as vv

pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

DS = "SAN [gold] 01"
Disk = vim.vm.device.VirtualDisk


def flat(name, parent=None, mode="persistent", thin=True, sharing=None):
    return Disk.FlatVer2BackingInfo(fileName="[%s] %s" % (DS, name), diskMode=mode, thinProvisioned=thin,
                                    parent=parent, sharing=sharing, changeId="52 aa/7")


def delta(name, parent):
    """A snapshot's delta as ESXi reports it: a FlatVer2 backing with a delta format and its parent."""
    return Disk.FlatVer2BackingInfo(fileName="[%s] %s" % (DS, name), diskMode="persistent", parent=parent,
                                    deltaDiskFormat="seSparseFormat")


def disk(key, controller, unit, backing, label=None, kb=1024):
    return Disk(key=key, controllerKey=controller, unitNumber=unit, backing=backing, capacityInKB=kb,
                deviceInfo=vim.Description(label=label or "Hard disk %d" % key, summary=""))


def controllers():
    pv = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0,
                                                 deviceInfo=vim.Description(label="SCSI controller 0", summary=""))
    return [pv,
            vim.vm.device.VirtualLsiLogicSASController(key=1001, busNumber=1,
                                                       deviceInfo=vim.Description(label="SCSI 1", summary="")),
            vim.vm.device.VirtualAHCIController(key=15000, busNumber=0,
                                                deviceInfo=vim.Description(label="SATA 0", summary="")),
            vim.vm.device.VirtualNVMEController(key=31000, busNumber=0,
                                                deviceInfo=vim.Description(label="NVME 0", summary="")),
            vim.vm.device.VirtualIDEController(key=201, busNumber=1,
                                               deviceInfo=vim.Description(label="IDE 1", summary=""))]


VM = "Windows XP [prod]/Windows XP [prod]"


def layout(chains_base_first, snapshots=()):
    """A layoutEx: ``chains_base_first`` {disk key: [descriptor names, base first]} (as vSphere lists chains), each
    descriptor with an extent; ``snapshots`` [(moref, dataKey name, memoryKey name or None)]."""
    files, disks, key = [], [], 0
    by_name = {}

    def add(name, kind, size):
        nonlocal key
        files.append(vim.vm.FileLayoutEx.FileInfo(key=key, name="[%s] %s" % (DS, name), type=kind, size=size))
        by_name[name] = key
        key += 1
        return key - 1

    for dkey, names in chains_base_first.items():
        units = []
        for n in names:
            d = add(n, "diskDescriptor", 500)
            ext = n.replace(".vmdk", "-flat.vmdk" if "-0000" not in n else "-sesparse.vmdk")
            e = add(ext, "diskExtent", 1000 * (len(units) + 1))
            units.append(vim.vm.FileLayoutEx.DiskUnit(fileKey=[e, d]))  # extent listed first: order is not relied on
        disks.append(vim.vm.FileLayoutEx.DiskLayout(key=dkey, chain=units))
    snaps = []
    for ref, data, memory in snapshots:
        snaps.append(vim.vm.FileLayoutEx.SnapshotLayout(
            key=vim.vm.Snapshot(ref), dataKey=add(data, "snapshotData", 7),
            memoryKey=add(memory, "snapshotMemory", 4096) if memory else -1,
            disk=[vim.vm.FileLayoutEx.DiskLayout(key=2000, chain=[
                vim.vm.FileLayoutEx.DiskUnit(fileKey=[by_name["%s.vmdk" % VM]])])]))
    return vim.vm.FileLayoutEx(file=files, disk=disks, snapshot=snaps)


def test_chain_is_current_leaf_then_parents_nearest_first_base_last():
    base = flat("%s.vmdk" % VM)
    mid = delta("%s-000001.vmdk" % VM, base)
    leaf = delta("%s-000002.vmdk" % VM, mid)
    lay = vv.Layout(layout({2000: ["%s.vmdk" % VM, "%s-000001.vmdk" % VM, "%s-000002.vmdk" % VM]}))
    disks, skipped = vv.describe_disks(controllers() + [disk(2000, 1000, 0, leaf)], lay, [DS], True)
    assert skipped == []
    (d,) = disks
    assert d["target"] == "scsi0:0" and d["path"] == "[%s] %s-000002.vmdk" % (DS, VM) and d["format"] == "vmdk"
    assert d["datastore"] == DS and d["kind"] == "flat" and d["delta_format"] == "seSparseFormat"
    assert d["capacity_bytes"] == 1024 * 1024
    assert d["extents"] == [{"path": "[%s] %s-000002-sesparse.vmdk" % (DS, VM), "size": 3000}]
    assert d["size"] == 3500 and d["descriptor_size"] == 500 and d["layout_known"]
    assert [c["path"] for c in d["backing_chain"]] == ["[%s] %s-000001.vmdk" % (DS, VM), "[%s] %s.vmdk" % (DS, VM)]
    assert d["backing_chain"][-1]["extents"] == [{"path": "[%s] %s-flat.vmdk" % (DS, VM), "size": 1000}]
    assert d["cbt"] == {"enabled": True, "change_id": None}


def test_chain_order_comes_from_the_backing_not_from_the_layout_order():
    base = flat("%s.vmdk" % VM)
    leaf = delta("%s-000001.vmdk" % VM, base)
    reversed_layout = vv.Layout(layout({2000: ["%s-000001.vmdk" % VM, "%s.vmdk" % VM]}))
    (d,), _s = vv.describe_disks(controllers() + [disk(2000, 1000, 0, leaf)], reversed_layout, [DS])
    assert d["path"].endswith("-000001.vmdk") and [c["path"] for c in d["backing_chain"]] == ["[%s] %s.vmdk" % (DS, VM)]


def test_a_level_missing_from_the_layout_is_said():
    (d,), _s = vv.describe_disks(controllers() + [disk(2000, 1000, 0, flat("%s.vmdk" % VM))], vv.Layout(None), [DS])
    assert d["layout_known"] is False and d["size"] is None and d["extents"] == []


@pytest.mark.parametrize("controller, unit, target", [(1000, 3, "scsi0:3"), (1001, 15, "scsi1:15"),
                                                      (15000, 1, "sata0:1"), (31000, 0, "nvme0:0"),
                                                      (201, 0, "ide1:0")])
def test_targets_are_vsphere_device_nodes(controller, unit, target):
    (d,), _s = vv.describe_disks(controllers() + [disk(7, controller, unit, flat("a.vmdk"))], vv.Layout(None), [DS])
    assert d["target"] == target


def test_disks_a_snapshot_cannot_freeze_are_skipped_with_a_reason():
    rdm_p = Disk.RawDiskMappingVer1BackingInfo(fileName="[%s] vm/rdm.vmdk" % DS, compatibilityMode="physicalMode",
                                               diskMode="independent_persistent", deviceName="/vmfs/devices/disks/naa.6",
                                               lunUuid="0200")
    rdm_v = Disk.RawDiskMappingVer1BackingInfo(fileName="[%s] vm/rdmv.vmdk" % DS, compatibilityMode="virtualMode",
                                               diskMode="persistent")
    devices = controllers() + [
        disk(1, 1000, 0, flat("vm/ok.vmdk")),
        disk(2, 1000, 1, flat("vm/ind.vmdk", mode="independent_persistent")),
        disk(3, 1000, 2, flat("vm/np.vmdk", mode="independent_nonpersistent")),
        disk(4, 1000, 3, rdm_p), disk(5, 1000, 4, rdm_v),
        disk(6, 1000, 5, flat("vm/mw.vmdk", sharing="sharingMultiWriter")),
        disk(8, 1000, 6, Disk.LocalPMemBackingInfo(fileName="", diskMode="persistent")),
    ]
    disks, skipped = vv.describe_disks(devices, vv.Layout(None), [DS])
    assert [d["target"] for d in disks] == ["scsi0:0"]
    reasons = dict((s["target"], (s["kind"], s["reason"])) for s in skipped)
    assert all(s["skipped"] for s in skipped)
    assert reasons["scsi0:1"][1].startswith("independent disk (independent_persistent)")
    assert reasons["scsi0:2"][1].startswith("independent disk (independent_nonpersistent)")
    assert reasons["scsi0:3"][0] == "rdm_physical" and "physical compatibility mode" in reasons["scsi0:3"][1]
    assert reasons["scsi0:4"][0] == "rdm_virtual" and "on a LUN" in reasons["scsi0:4"][1]
    assert "multi-writer" in reasons["scsi0:5"][1]
    assert reasons["scsi0:6"][0] == "pmem" and "not backed by VMDK files" in reasons["scsi0:6"][1]
    assert [s for s in skipped if s["target"] == "scsi0:3"][0]["lun"]["device_name"] == "/vmfs/devices/disks/naa.6"


def test_snapshot_tree_is_flattened_parents_first_with_memory_files_and_utc_times():
    t = datetime.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    tree = vim.vm.SnapshotInfo(currentSnapshot=vim.vm.Snapshot("snapshot-3"), rootSnapshotList=[
        vim.vm.SnapshotTree(snapshot=vim.vm.Snapshot("snapshot-1"), name="before patch", description="", id=1,
                            createTime=t, state="poweredOn", quiesced=False, childSnapshotList=[
                                vim.vm.SnapshotTree(snapshot=vim.vm.Snapshot("snapshot-3"), name="dfir-vmcollect c 1a",
                                                    description="d", id=3, createTime=t, state="poweredOff",
                                                    quiesced=True, childSnapshotList=[])]),
        vim.vm.SnapshotTree(snapshot=vim.vm.Snapshot("snapshot-2"), name="other", description="", id=2,
                            createTime=t, state="poweredOff", quiesced=False, childSnapshotList=[])])
    files = [("snapshot-1", "vm/vm-Snapshot1.vmsn", "vm/vm-Snapshot1.vmem"), ("snapshot-3", "vm/vm-Snapshot3.vmsn", None)]
    lay = vv.Layout(layout({2000: ["%s.vmdk" % VM]}, files))
    flat_tree = vv.flatten_snapshots(tree, lay)
    assert [(s["name"], s["parent"], s["depth"], s["current"]) for s in flat_tree] == [
        ("before patch", None, 0, False), ("dfir-vmcollect c 1a", "snapshot-1", 1, True), ("other", None, 0, False)]
    first = flat_tree[0]
    assert first["created"] == "2026-03-01T10:00:00.123456Z"
    assert first["memory"] is True and first["vmem"] == {"path": "[%s] vm/vm-Snapshot1.vmem" % DS, "size": 4096}
    assert flat_tree[1]["memory"] is False and flat_tree[1]["vmsn"]["path"].endswith("Snapshot3.vmsn")
    assert flat_tree[1]["quiesced"] is True and flat_tree[2]["vmsn"] is None
    assert vv.flatten_snapshots(None) == []


def test_snapshot_layout_chains_are_given_top_first():
    lay = vv.Layout(layout({2000: ["%s.vmdk" % VM, "%s-000001.vmdk" % VM]}, [("snapshot-1", "s.vmsn", None)]))
    snap = lay.snapshots["snapshot-1"]
    snap.disk[0].chain = [vim.vm.FileLayoutEx.DiskUnit(fileKey=[lay.by_name["[%s] %s.vmdk" % (DS, VM)]["key"]]),
                          vim.vm.FileLayoutEx.DiskUnit(fileKey=[lay.by_name["[%s] %s-000001.vmdk" % (DS, VM)]["key"]])]
    chains = lay.snapshot_disk_chains("snapshot-1", [DS])
    assert [c["path"] for c in chains[2000]] == ["[%s] %s-000001.vmdk" % (DS, VM), "[%s] %s.vmdk" % (DS, VM)]


def test_utc():
    assert vv.utc(datetime.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"
    assert vv.utc(None) is None
