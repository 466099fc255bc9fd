# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Describe a VM on an ESXi host or a vCenter, in the provider contract's shape (docs/architecture.md).

Everything is read in a few PropertyCollector calls (``VsphereClient.properties``), never as attributes of the
managed objects. What the pipeline reads (``name``, ``uuid``, ``state``, ``memory_bytes``, ``disks[]`` with
``target``, ``path``, ``format``, ``backing_chain``, ``skipped_disks``, ``host.tools``) has the KVM provider's
meaning; the rest is vSphere's.

Disks and chains: a disk's ``path`` is the descriptor (``.vmdk``) the VM writes to now, its current leaf.
``backing_chain`` holds the levels below it, nearest first and the base disk last, as the KVM chain does. The
order comes from the device's backing (``backing.parent``, authoritative); the files of each level (descriptor,
extents, their sizes) from ``layoutEx.disk[].chain[].fileKey`` matched by descriptor name, typed by
``layoutEx.file[].type``. Independent disks (a snapshot does not freeze them), raw device mappings (their data is
on a LUN, not in datastore files), multi-writer disks (another VM may write them) and disks whose backing is not a
VMDK file are listed in ``skipped_disks`` with the reason: never silently dropped; the caller decides whether to
refuse or to record them as not acquired.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    moref,
    parse_datastore_path,
    pyvmomi_version,
    unescape_name,
    vim,
    vsphere_errors,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError

# the KVM provider's words for vSphere's power states (virsh domstate)
STATES = {"poweredOn": "running", "poweredOff": "shut off", "suspended": "paused"}

VM_PATHS = [
    "name", "config.uuid", "config.instanceUuid", "config.files.vmPathName", "config.files.snapshotDirectory",
    "config.hardware.memoryMB", "config.hardware.numCPU", "config.hardware.device", "config.changeTrackingEnabled",
    "config.template", "config.guestId", "config.guestFullName", "config.version", "config.annotation",
    "runtime.powerState", "runtime.connectionState", "runtime.host", "runtime.consolidationNeeded",
    "snapshot", "layoutEx", "capability.memorySnapshotsSupported", "capability.quiescedSnapshotsSupported",
    "capability.snapshotOperationsSupported", "capability.diskOnlySnapshotOnSuspendedVMSupported",
    "guest.toolsRunningStatus", "guest.toolsVersionStatus2", "guest.toolsVersion", "datastore",
]
HOST_PATHS = ["name", "summary.config.product"]

# controller class name -> the prefix of vSphere's device node names (scsi0:0, ide1:0, sata0:1, nvme0:0)
_CONTROLLER_PREFIX = (("VirtualSCSIController", "scsi"), ("VirtualIDEController", "ide"),
                      ("VirtualAHCIController", "sata"), ("VirtualSATAController", "sata"),
                      ("VirtualNVMEController", "nvme"))


def utc(value):
    """An API dateTime as UTC ISO 8601 ('2026-01-02T03:04:05.123456Z'), or None."""
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _class_names(obj):
    """Short names of the classes of ``obj`` and its bases (pyVmomi's are dotted: 'vim.vm.device.VirtualDisk.
    FlatVer2BackingInfo' -> 'FlatVer2BackingInfo')."""
    return [c.__name__.rsplit(".", 1)[-1] for c in type(obj).__mro__]


def controller_prefix(controller):
    """'scsi', 'ide', 'sata', 'nvme' (or the lowercased class name) for a controller device."""
    names = _class_names(controller)
    for cls, prefix in _CONTROLLER_PREFIX:
        if cls in names:
            return prefix
    return names[0].lower()


def disk_kind(backing):
    """What backs a disk: 'flat', 'sesparse', 'sparse', 'rdm_physical', 'rdm_virtual', 'raw', 'pmem'..."""
    names = _class_names(backing)
    if "RawDiskMappingVer1BackingInfo" in names:
        return "rdm_physical" if getattr(backing, "compatibilityMode", None) == "physicalMode" else "rdm_virtual"
    for cls, kind in (("FlatVer2BackingInfo", "flat"), ("SeSparseBackingInfo", "sesparse"),
                      ("SparseVer2BackingInfo", "sparse"), ("FlatVer1BackingInfo", "flat_v1"),
                      ("SparseVer1BackingInfo", "sparse_v1"), ("PartitionedRawDiskVer2BackingInfo", "raw_partitioned"),
                      ("RawDiskVer2BackingInfo", "raw"), ("LocalPMemBackingInfo", "pmem")):
        if cls in names:
            return kind
    return names[0]


# kinds whose levels are VMDK files on a datastore that a snapshot freezes and that can be copied
FILE_KINDS = ("flat", "sesparse", "sparse", "flat_v1", "sparse_v1")


def skip_reason(kind, disk_mode, sharing):
    """Why a disk cannot be frozen by a VM snapshot and acquired from its datastore files, or None."""
    if kind == "rdm_physical":
        return ("raw device mapping in physical compatibility mode: a snapshot does not include it and its data is "
                "on a LUN, not in datastore files; acquire the LUN at the storage side")
    if kind == "rdm_virtual":
        return ("raw device mapping (virtual compatibility mode): its data is on a LUN, not in datastore files; "
                "acquire the LUN at the storage side")
    if disk_mode and disk_mode.startswith("independent"):
        return ("independent disk (%s): a snapshot does not freeze it, it keeps changing while it is copied"
                % disk_mode)
    if sharing == "sharingMultiWriter":
        return "multi-writer disk: other VMs may write to it, a snapshot of this VM cannot freeze it"
    if kind not in FILE_KINDS:
        return "%s disk: not backed by VMDK files on a datastore" % kind
    return None


class Layout(object):
    """layoutEx as lookups: files by key and by name, disk units by descriptor name."""

    def __init__(self, layout):
        self.files = {}
        self.by_name = {}
        self.units = {}  # descriptor name -> {descriptor: file, extents: [file]}
        self.snapshots = {}  # snapshot moref -> SnapshotLayout
        if layout is None:
            return
        for f in layout.file or []:
            info = {"key": f.key, "name": f.name, "type": f.type, "size": f.size,
                    "unique_size": getattr(f, "uniqueSize", None)}
            self.files[f.key] = info
            self.by_name[f.name] = info
        for disk in layout.disk or []:
            self._add_chain(disk)
        for snap in layout.snapshot or []:
            self.snapshots[moref(snap.key)] = snap
            for disk in snap.disk or []:
                self._add_chain(disk)

    def _add_chain(self, disk):
        for unit in disk.chain or []:
            files = [self.files[k] for k in unit.fileKey or [] if k in self.files]
            descriptors = [f for f in files if f["type"] == "diskDescriptor"]
            if not descriptors:
                continue
            d = descriptors[0]
            self.units[d["name"]] = {"descriptor": d, "extents": [f for f in files if f["type"] == "diskExtent"]}

    def level(self, descriptor, datastores=()):
        """One chain level: descriptor path, its extents with sizes, the level's total size (None if unknown)."""
        unit = self.units.get(descriptor)
        ds, _rel = parse_datastore_path(descriptor, datastores)
        entry = {"path": descriptor, "format": "vmdk", "datastore": ds, "descriptor_size": None, "extents": [],
                 "size": None, "layout_known": unit is not None}
        if unit is not None:
            entry["descriptor_size"] = unit["descriptor"]["size"]
            entry["extents"] = [{"path": e["name"], "size": e["size"]} for e in unit["extents"]]
            sizes = [unit["descriptor"]["size"]] + [e["size"] for e in unit["extents"]]
            entry["size"] = sum(sizes) if all(isinstance(s, int) for s in sizes) else None
        return entry

    def snapshot_files(self, snapshot_moref):
        """(vmsn, vmem) of a snapshot as {path, size} or None each."""
        snap = self.snapshots.get(snapshot_moref)
        if snap is None:
            return None, None

        def one(key):
            f = self.files.get(key) if key is not None and key >= 0 else None
            return {"path": f["name"], "size": f["size"]} if f else None

        return one(getattr(snap, "dataKey", None)), one(getattr(snap, "memoryKey", None))

    def snapshot_disk_chains(self, snapshot_moref, datastores=()):
        """disk key -> the chain a snapshot froze, its top level first (layoutEx lists chains base first)."""
        snap = self.snapshots.get(snapshot_moref)
        chains = {}
        for disk in (snap.disk or []) if snap is not None else []:
            names = []
            for unit in disk.chain or []:
                files = [self.files[k] for k in unit.fileKey or [] if k in self.files]
                names.extend(f["name"] for f in files if f["type"] == "diskDescriptor")
            chains[disk.key] = [self.level(n, datastores) for n in reversed(names)]
        return chains


def backing_levels(backing):
    """The descriptor file names of a disk's chain from its device backing, the current leaf first."""
    names, seen = [], set()
    while backing is not None and getattr(backing, "fileName", None) and id(backing) not in seen:
        seen.add(id(backing))
        names.append(backing.fileName)
        backing = getattr(backing, "parent", None)
    return names


def flatten_snapshots(snapshot_info, layout=None):
    """The snapshot tree as a list, depth first (parents before their children)."""
    result = []
    if snapshot_info is None:
        return result
    current = moref(getattr(snapshot_info, "currentSnapshot", None))

    def walk(nodes, parent, depth):
        for node in nodes or []:
            ref = moref(node.snapshot)
            vmsn, vmem = layout.snapshot_files(ref) if layout is not None else (None, None)
            result.append({"name": node.name, "description": node.description, "id": node.id, "moref": ref,
                           "created": utc(node.createTime), "state": node.state, "quiesced": bool(node.quiesced),
                           "memory": vmem is not None, "vmsn": vmsn, "vmem": vmem, "parent": parent,
                           "depth": depth, "current": ref == current})
            walk(node.childSnapshotList, ref, depth + 1)

    walk(snapshot_info.rootSnapshotList, None, 0)
    return result


def describe_disks(devices, layout, datastores=(), cbt_enabled=False):
    """(disks, skipped_disks) of a VM's devices (see the module docstring)."""
    controllers = dict((d.key, d) for d in devices or [] if isinstance(d, vim.vm.device.VirtualController))
    disks, skipped = [], []
    for dev in devices or []:
        if not isinstance(dev, vim.vm.device.VirtualDisk):
            continue
        ctl = controllers.get(dev.controllerKey)
        target = ("%s%d:%d" % (controller_prefix(ctl), ctl.busNumber, dev.unitNumber) if ctl is not None
                  else "disk%d" % dev.key)
        backing = dev.backing
        kind = disk_kind(backing)
        disk_mode = getattr(backing, "diskMode", None)
        sharing = getattr(backing, "sharing", None)
        capacity = getattr(dev, "capacityInBytes", None) or ((dev.capacityInKB or 0) * 1024) or None
        path = getattr(backing, "fileName", None)
        levels = backing_levels(backing) if kind in FILE_KINDS else ([path] if path else [])
        entry = {
            "target": target, "key": dev.key, "label": dev.deviceInfo.label if dev.deviceInfo else None,
            "controller": ctl.deviceInfo.label if ctl is not None and ctl.deviceInfo else None,
            "path": path, "format": "vmdk", "datastore": None, "capacity_bytes": capacity,
            "thin": getattr(backing, "thinProvisioned", None), "eager_zeroed": getattr(backing, "eagerlyScrub", None),
            "disk_mode": disk_mode, "kind": kind, "sharing": sharing,
            "delta_format": getattr(backing, "deltaDiskFormat", None),
            "disk_uuid": getattr(backing, "uuid", None),
            "extents": [], "size": None, "backing_chain": [],
            "cbt": {"enabled": bool(cbt_enabled), "change_id": getattr(backing, "changeId", None)},
        }
        if path:
            try:
                entry["datastore"] = parse_datastore_path(path, datastores)[0]
            except InvalidInputError:
                entry["datastore"] = None
        if kind in ("rdm_physical", "rdm_virtual"):
            entry["lun"] = {"device_name": getattr(backing, "deviceName", None),
                            "lun_uuid": getattr(backing, "lunUuid", None)}
        reason = skip_reason(kind, disk_mode, sharing)
        if reason:
            skipped.append(dict(entry, skipped=True, reason=reason))
            continue
        chain = [layout.level(name, datastores) for name in levels]
        top = chain[0]
        entry.update(extents=top["extents"], descriptor_size=top["descriptor_size"], size=top["size"],
                     backing_chain=chain[1:], layout_known=all(c["layout_known"] for c in chain))
        disks.append(entry)
    return disks, skipped


@vsphere_errors("describe the VM")
def read_vm(client, vm):
    """The VM's raw properties (VM_PATHS), its host's, and the datastore names: everything describe() needs."""
    props = client.properties(vm, VM_PATHS)
    host_ref = props.get("runtime.host")
    host = client.properties(host_ref, HOST_PATHS) if host_ref is not None else {}
    names = []
    for ds in props.get("datastore") or []:
        names.append(client.properties(ds, ["name"]).get("name"))
    return props, host_ref, host, [n for n in names if n]


def describe(client, name=None, uuid=None, vm=None):
    """The provider contract's ``vm`` for one VM (found by name or uuid unless ``vm`` is given) plus vSphere's
    details; reads only. Returns (vm_object, description)."""
    if vm is None:
        vm = client.find_vm(name=name, uuid=uuid)
    props, host_ref, host, datastores = read_vm(client, vm)
    return vm, build_description(client, vm, props, host_ref, host, datastores)


def build_description(client, vm, props, host_ref, host, datastores):
    layout = Layout(props.get("layoutEx"))
    disks, skipped = describe_disks(props.get("config.hardware.device"), layout, datastores,
                                    props.get("config.changeTrackingEnabled"))
    snapshots = flatten_snapshots(props.get("snapshot"), layout)
    current = next((s for s in snapshots if s["current"]), None)
    about = client.about()
    product = host.get("summary.config.product")
    power = props.get("runtime.powerState")
    memory_mb = props.get("config.hardware.memoryMB")
    tools = {"pyvmomi": pyvmomi_version(), "vsphere_api": about["api_version"]}
    if product is not None:
        tools["esxi"] = "%s build-%s" % (product.version, product.build)
    if about["api_type"] == "VirtualCenter":
        tools["vcenter"] = "%s build-%s" % (about["version"], about["build"])
    return {
        "name": unescape_name(props.get("name")),
        "uuid": props.get("config.uuid"),
        "instance_uuid": props.get("config.instanceUuid"),
        "moref": moref(vm),
        "vmx": props.get("config.files.vmPathName"),
        "snapshot_directory": props.get("config.files.snapshotDirectory"),
        "state": STATES.get(power, power),
        "power_state": power,
        "connection_state": props.get("runtime.connectionState"),
        "template": bool(props.get("config.template")),
        "guest_id": props.get("config.guestId"),
        "guest_full_name": props.get("config.guestFullName"),
        "hardware_version": props.get("config.version"),
        "memory_bytes": memory_mb * 1024 * 1024 if memory_mb is not None else None,
        "vcpus": props.get("config.hardware.numCPU"),
        "disks": disks,
        "skipped_disks": skipped,
        "remote_images": remote_images(disks),
        "snapshots": snapshots,
        "current_snapshot": ({"moref": current["moref"], "name": current["name"], "id": current["id"]}
                             if current else None),
        "consolidation_needed": bool(props.get("runtime.consolidationNeeded")),
        "cbt_enabled": bool(props.get("config.changeTrackingEnabled")),
        "capabilities": {
            "memory_snapshots_supported": props.get("capability.memorySnapshotsSupported"),
            "quiesced_snapshots_supported": props.get("capability.quiescedSnapshotsSupported"),
            "snapshot_operations_supported": props.get("capability.snapshotOperationsSupported"),
            "disk_only_snapshot_on_suspended_vm_supported":
                props.get("capability.diskOnlySnapshotOnSuspendedVMSupported"),
        },
        "guest_tools": {"running_status": props.get("guest.toolsRunningStatus"),
                        "version_status": props.get("guest.toolsVersionStatus2"),
                        "version": props.get("guest.toolsVersion")},
        "datastores": datastores,
        "host": {
            "name": host.get("name"),
            "moref": moref(host_ref),
            "product": product.fullName if product is not None else None,
            "version": product.version if product is not None else None,
            "build": product.build if product is not None else None,
            "endpoint": client.where,
            "api_type": about["api_type"],
            "api_version": about["api_version"],
            "endpoint_product": about["product"],
            "endpoint_instance_uuid": about["instance_uuid"],
            "tools": tools,
        },
    }


def remote_images(disks):
    """Every file a copy of ``disks`` reads, as the plan measures it ([{path, size_bytes, allocated_bytes}]): each
    level's descriptor and data files with their sizes from layoutEx (what they occupy on the datastore); a file of
    unknown size counts the disk's capacity."""
    images = []
    for d in disks:
        for level in [d] + list(d.get("backing_chain") or []):
            size = level.get("descriptor_size")
            images.append({"path": level["path"], "size_bytes": size or 0, "allocated_bytes": size or 0})
            for extent in level.get("extents") or []:
                known = isinstance(extent.get("size"), int)
                size = extent["size"] if known else d.get("capacity_bytes") or 0
                images.append({"path": extent["path"], "size_bytes": size, "allocated_bytes": size})
    return images


def current_leaves(devices):
    """disk key -> the descriptor each disk writes to now."""
    return dict((d.key, getattr(d.backing, "fileName", None)) for d in devices or []
                if isinstance(d, vim.vm.device.VirtualDisk))
