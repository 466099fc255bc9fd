# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freeze a VM on an ESXi host or vCenter with a vSphere snapshot, and remove exactly that snapshot afterwards.

How: one snapshot named for the case (``dfir-vmcollect <case_id> <8 random hex digits>``). vSphere makes every
disk write to a new delta, so the descriptors and extents the VM wrote to before (its whole chain) stop changing
while they are copied; with ``memory`` the VM's RAM and device state go to the snapshot's ``.vmsn``/``.vmem``.
Nothing is downgraded: a running VM is frozen with its memory unless a disk-only freeze is asked for explicitly
(``allow_disk_only``); a VM whose capabilities say memory (or quiesced) snapshots are unsupported is refused;
a requested quiesce that vSphere did not do (it ignores the flag without VMware Tools) fails the task. Disks a
snapshot cannot freeze (independent, RDM, multi-writer) are refused before any change unless they are named in
``accept_not_frozen``; then they are returned in ``skipped_disks`` as not frozen.

Journal (action ``vsphere.snapshot``): the change is recorded before the task starts with everything needed to
find and check the snapshot again - the VM's moref and BIOS UUID, the snapshot's unique name, each disk's leaf
descriptor before the freeze, the snapshots there were before, whether the VM needed consolidation before - and
marked applied with the snapshot's moref after. Credentials are never in the journal: the undo handler logs in
with the connection options teardown's caller gives (``ctx.options``). The journal lives where the module runs
(the controller); the ESXi role gives each vSphere endpoint a journal folder of its own.

Undo: the snapshot is found by its unique name on the VM (a snapshot created by a task that was still running
when the module was killed is waited for, within the timeout); ``RemoveSnapshot_Task(removeChildren=False,
consolidate=True)``; a consolidation that vSphere still asks for (and that was not pending before the freeze)
is done with ``ConsolidateVMDisks_Task``; then every disk must write to the leaf it wrote to before. No other
snapshot is ever removed; a snapshot already gone is reported as such.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import getpass
import os
import socket
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, SnapshotError, VmcollectError, VsphereError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import undo_handler
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    DEFAULT_TIMEOUT,
    HAS_PYVMOMI,
    client_from_params,
    fault_name,
    fault_sentence,
    moref,
    vim,
    vmodl,
    vsphere_errors,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.fetch import DEFAULT_REQUEST_TIMEOUT, ClientSession
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.memory import pause_of_snapshot
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.vm import (
    Layout,
    current_leaves,
    describe,
    flatten_snapshots,
)

ACTION = "vsphere.snapshot"
NAME_PREFIX = "dfir-vmcollect"
MODULE = "esxi_snapshot"
QUIESCE_TIMEOUT_MIN, QUIESCE_TIMEOUT_MAX = 5, 240  # minutes: the bounds vSphere gives GuestQuiesceSpec.timeout
DEFAULT_QUIESCE_TIMEOUT = 15
SNAPSHOT_PATHS = ["snapshot", "layoutEx", "config.hardware.device", "runtime.consolidationNeeded",
                  "runtime.powerState"]


def snapshot_name(case_id, token=None):
    """'dfir-vmcollect <case_id> <8 hex digits>': unique per freeze, so teardown can find exactly this one."""
    token = token or binascii.hexlify(os.urandom(4)).decode("ascii")
    return "%s %s %s" % (NAME_PREFIX, case_id, token)


def snapshot_description(case_id, username, memory):
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container without passwd entry)
        user = "uid %d" % os.getuid()
    who = "%s@%s" % (user, socket.gethostname())
    return ("dfir.vmcollect case %s: %s frozen for forensic acquisition, by %s (vSphere user %s). It is removed "
            "by the case's teardown; do not revert to it or delete it by hand."
            % (case_id, "disks and memory" if memory else "disks", who, username))


def _api_at_least(version, wanted):
    try:
        return tuple(int(x) for x in str(version).split(".")[:2]) >= wanted
    except ValueError:
        return False


def plan(desc, memory=True, allow_disk_only=False, quiesce=False, accept_not_frozen=(), api_version=None):
    """Decide before any change: refuse what cannot be frozen as asked (with sentences naming every reason), and
    return dict(memory (effective), skipped (accepted as not frozen), freeze (disks)). Never downgrades."""
    name = desc["name"]
    caps = desc.get("capabilities") or {}
    running = desc["power_state"] == "poweredOn"
    problems = []
    if desc.get("template"):
        problems.append("it is a template (templates cannot have snapshots; acquire its files as they are)")
    if desc.get("connection_state") not in (None, "connected"):
        problems.append("its connection state is %s, not connected" % desc.get("connection_state"))
    if caps.get("snapshot_operations_supported") is False:
        problems.append("vSphere says it does not support snapshots (capability.snapshotOperationsSupported is "
                        "false)")
    accepted = set(accept_not_frozen or ())
    skipped = desc.get("skipped_disks") or []
    refused = [d for d in skipped if d["target"] not in accepted and (d.get("label") not in accepted)]
    if refused:
        problems.append("a snapshot cannot freeze %s; name %s in accept_not_frozen to freeze the other disks and "
                        "record these as not frozen"
                        % ("; ".join("%s (%s, %s): %s" % (d["target"], d.get("label"), d.get("path"), d["reason"])
                                     for d in refused),
                           "them" if len(refused) > 1 else "it"))
    unknown = sorted(accepted - set(d["target"] for d in skipped) - set(d.get("label") for d in skipped))
    if unknown:
        problems.append("accept_not_frozen names %s, which %s no disk that a snapshot cannot freeze (those are: %s)"
                        % (", ".join(unknown), "is" if len(unknown) == 1 else "are",
                           ", ".join(d["target"] for d in skipped) or "none"))
    effective_memory = bool(memory) and running
    if running and not memory and not allow_disk_only:
        problems.append("it is running and memory=false would freeze its disks without its memory; a running VM is "
                        "frozen with its memory unless allow_disk_only=true says a disk-only (crash-consistent) "
                        "freeze is wanted")
    if effective_memory and caps.get("memory_snapshots_supported") is False:
        problems.append("vSphere says it does not support memory snapshots (capability.memorySnapshotsSupported is "
                        "false); memory is never dropped silently: give memory=false and allow_disk_only=true for a "
                        "disk-only freeze")
    if effective_memory and any((d.get("disk_mode") or "").startswith("independent") for d in skipped):
        problems.append("vSphere takes no memory snapshot of a VM with independent disks (%s); give memory=false "
                        "and allow_disk_only=true for a disk-only freeze"
                        % ", ".join(d["target"] for d in skipped if (d.get("disk_mode") or "").startswith("independent")))
    if quiesce:
        if not running:
            problems.append("quiesce needs a running VM (vSphere ignores it for a VM that is %s)" % desc["state"])
        if caps.get("quiesced_snapshots_supported") is False:
            problems.append("vSphere says it does not support quiesced snapshots "
                            "(capability.quiescedSnapshotsSupported is false)")
        tools = (desc.get("guest_tools") or {}).get("running_status")
        if running and tools != "guestToolsRunning":
            problems.append("quiesce needs VMware Tools running in the guest (they are %s), and vSphere would ignore "
                            "it silently" % (tools or "unknown"))
        if api_version is not None and not _api_at_least(api_version, (6, 5)):
            problems.append("a quiesce bounded in time needs vSphere API 6.5 or later (the endpoint speaks %s)"
                            % api_version)
    if not desc.get("disks") and not effective_memory:
        problems.append("it has no disk a snapshot can freeze")
    if problems:
        raise SnapshotError("VM %s cannot be frozen as asked: %s. Nothing was changed."
                            % (name, "; ".join(problems)), vm=name, refused=[d["target"] for d in refused])
    return {"memory": effective_memory, "skipped": [d for d in skipped if d not in refused],
            "freeze": desc["disks"], "running": running}


def _chain_entry(level):
    extents = level.get("extents") or []
    return {"path": level["path"], "extent": extents[0]["path"] if extents else None, "extents": extents,
            "format": "vmdk", "datastore": level.get("datastore"), "size": level.get("size"),
            "descriptor_size": level.get("descriptor_size")}


def chain_files(chain):
    """Every file of a chain, as copied one by one: each level's descriptor, then its data files (extents)."""
    files = []
    for depth, level in enumerate(chain):
        files.append({"path": level["path"], "role": "descriptor", "depth": depth, "format": "vmdk descriptor",
                      "size": level.get("descriptor_size")})
        files.extend({"path": e["path"], "role": "extent", "depth": depth, "format": "vmdk extent",
                      "size": e.get("size")} for e in level.get("extents") or [])
    return files


def planned_frozen(disks):
    """What a freeze of ``disks`` (describe()'s) freezes: each disk's current chain, its leaf first."""
    frozen = []
    for d in disks:
        chain = [_chain_entry(dict(d, path=d["path"]))] + [_chain_entry(l) for l in d["backing_chain"]]
        frozen.append({"target": d["target"], "key": d["key"], "label": d.get("label"), "path": d["path"],
                       "format": "vmdk", "chain": chain, "files": chain_files(chain), "overlay": None})
    return frozen


def frozen_from_layout(disks, layout, snap_ref, devices_after, datastores=()):
    """Per disk, what the snapshot froze: its chain from the snapshot's layout (top first) when vSphere lists it,
    else the chain before the freeze; and the delta the VM writes to now (``overlay``)."""
    chains = layout.snapshot_disk_chains(snap_ref, datastores)
    leaves_now = current_leaves(devices_after)
    frozen = []
    for entry in planned_frozen(disks):
        chain = chains.get(entry["key"])
        if chain and chain[0]["path"] == entry["path"]:
            entry["chain"] = [_chain_entry(level) for level in chain]
            entry["files"] = chain_files(entry["chain"])
            entry["chain_from"] = "snapshot layout"
        elif chain:
            # the snapshot's layout does not start at the leaf the disk wrote to before: trust the device's backing
            entry["chain_from"] = ("disk layout before the freeze (the snapshot's layout starts at %s)"
                                   % chain[0]["path"])
        else:
            entry["chain_from"] = "disk layout before the freeze"
        now = leaves_now.get(entry["key"])
        entry["overlay"] = now if now and now != entry["path"] else None
        frozen.append(entry)
    return frozen


def _memory_files(layout, snap_ref, wanted):
    if not wanted:
        return None
    vmsn, vmem = layout.snapshot_files(snap_ref)
    return {"vmsn": vmsn, "vmem": vmem}


@vsphere_errors("freeze the VM", error=SnapshotError)
def freeze(journal, client, name=None, uuid=None, memory=True, allow_disk_only=False, quiesce=False,
           quiesce_timeout=DEFAULT_QUIESCE_TIMEOUT, accept_not_frozen=(), check_mode=False, shell=None):
    """Freeze the VM with a snapshot; idempotent for a case (an existing freeze is reported, not redone).

    ``shell`` (an _esxi_shell.snapshot.ShellSnapshots): the SSH engine makes the snapshot with the host's vim-cmd;
    everything else reads the API as with the API engine.

    Returns dict(changed, vm, frozen, skipped_disks, memory, snapshot, snapshot_time, quiesced, method, tls, note,
    engine).
    """
    if quiesce and not QUIESCE_TIMEOUT_MIN <= int(quiesce_timeout) <= QUIESCE_TIMEOUT_MAX:
        raise InvalidInputError("quiesce_timeout must be %d to %d minutes (vSphere's bounds), not %s."
                                % (QUIESCE_TIMEOUT_MIN, QUIESCE_TIMEOUT_MAX, quiesce_timeout))
    vm, desc = describe(client, name=name, uuid=uuid)
    vm_info = {"name": desc["name"], "uuid": desc["uuid"], "moref": desc["moref"],
               "running": desc["power_state"] == "poweredOn", "state": desc["state"]}
    existing = journal.find(ACTION, vm_uuid=desc["uuid"], endpoint=client.where)
    if existing:
        return _already_frozen(client, vm, desc, vm_info, existing[0])
    about = client.about()
    p = plan(desc, memory, allow_disk_only, quiesce, accept_not_frozen, about["api_version"])
    method = "vSphere memory snapshot" if p["memory"] else "vSphere snapshot"
    vmid = None
    if shell is not None:
        vmid = shell.vmid(desc)  # a read: the same in check mode
        method += " (vim-cmd over SSH)"
    name_ = snapshot_name(journal.case_id)
    result = {"vm": vm_info, "skipped_disks": p["skipped"], "method": method, "tls": client.tls_record(),
              "quiesced": bool(quiesce), "engine": "ssh" if shell is not None else "api"}
    if check_mode:
        planned = {"name": name_, "moref": None, "id": None, "created": None}
        result.update(changed=True, frozen=planned_frozen(p["freeze"]), snapshot=planned, memory=None,
                      snapshot_time=None,
                      note="Check mode: nothing was created; this is the plan (snapshot name, disks, memory=%s)."
                           % p["memory"])
        return result
    undo = {
        "endpoint": client.where, "api_type": about["api_type"], "endpoint_instance_uuid": about["instance_uuid"],
        "vm_moref": desc["moref"], "vm_uuid": desc["uuid"], "vm_name": desc["name"], "snapshot_name": name_,
        "memory": p["memory"], "quiesce": bool(quiesce),
        "disks": [{"key": d["key"], "target": d["target"], "leaf": d["path"]} for d in p["freeze"]],
        "not_frozen": [d["target"] for d in p["skipped"]],
        "snapshots_before": [{"moref": s["moref"], "name": s["name"]} for s in desc["snapshots"]],
        "current_snapshot_before": (desc["current_snapshot"] or {}).get("moref"),
        "consolidation_needed_before": desc["consolidation_needed"],
        "engine": "ssh" if shell is not None else "api",
    }
    if shell is not None:
        undo.update(vmid=vmid, ssh_endpoint=shell.where)
    change = journal.record_change(ACTION, undo, "snapshot %r of VM %s (%s, %s) on %s"
                                   % (name_, desc["name"], desc["moref"], desc["uuid"], client.where), module=MODULE)
    description = snapshot_description(journal.case_id, client.username, p["memory"])
    what = "create the snapshot %r of VM %s" % (name_, desc["name"])
    snap_ref = None
    if shell is not None:
        try:
            shell.create(vmid, name_, description, p["memory"], bool(quiesce))
        except VmcollectError as exc:
            raise SnapshotError("%s The journal keeps the change: teardown removes the snapshot if the host made it."
                                % exc.message.rstrip(), vm=vm_info, changed=True, **exc.details)
    else:
        try:
            if quiesce:
                task = vm.CreateSnapshotEx_Task(name=name_, description=description, memory=p["memory"],
                                                quiesceSpec=vim.vm.GuestQuiesceSpec(timeout=int(quiesce_timeout)))
            else:
                task = vm.CreateSnapshot_Task(name=name_, description=description, memory=p["memory"],
                                              quiesce=False)
        except vmodl.MethodFault as fault:
            # refused by the call itself: no task, no snapshot - the journal says so, nothing is left to undo
            journal.mark_undone(change, "never made: %s refused the call (%s)" % (client.where, fault_name(fault)))
            hint = (" The host's licence forbids changes through its API (a free ESXi host): use engine ssh (or auto)."
                    if fault_name(fault) == "RestrictedVersion" else "")
            raise SnapshotError("%s Nothing was made.%s" % (fault_sentence(fault, what, client.where).rstrip(), hint),
                                vm=vm_info, fault=fault_name(fault))
        try:
            snap_ref = client.wait_for_task(task, what)
        except VsphereError as exc:
            raise SnapshotError("%s The journal keeps the change: teardown removes the snapshot if vSphere made it "
                                "(it waits for a snapshot task still running)." % exc.message.rstrip(),
                                vm=vm_info, changed=True, **exc.details)
    props = client.properties(vm, SNAPSHOT_PATHS)
    layout = Layout(props.get("layoutEx"))
    tree = flatten_snapshots(props.get("snapshot"), layout)
    node = next((s for s in tree if s["moref"] == moref(snap_ref)), None) if snap_ref is not None else None
    if node is None:
        node = next((s for s in tree if s["name"] == name_), None)
    ref = node["moref"] if node else (moref(snap_ref) if snap_ref is not None else None)
    snapshot_time = node["created"] if node else None
    journal.mark_applied(change, snapshot=ref, snapshot_name=name_, snapshot_time=snapshot_time,
                         snapshot_id=node["id"] if node else None)
    if node is None:
        raise SnapshotError("vSphere reported the snapshot %r of VM %s (%s) as made, but the VM's snapshot tree does "
                            "not show it; teardown removes it if it appears." % (name_, desc["name"], ref), vm=vm_info)
    if quiesce and not node["quiesced"]:
        raise SnapshotError("vSphere made the snapshot %r of VM %s without quiescing the guest (VMware Tools did not "
                            "do it); a quiesce is never dropped silently. Run teardown (it removes the snapshot), then "
                            "freeze again without quiesce or fix the guest's tools." % (name_, desc["name"]),
                            vm=vm_info, snapshot=ref, changed=True)
    if p["memory"] and node["state"] != "poweredOn":
        raise SnapshotError("vSphere made the snapshot %r of VM %s without its memory (its state is %s); memory is "
                            "never dropped silently. Run teardown (it removes the snapshot)."
                            % (name_, desc["name"], node["state"]), vm=vm_info, snapshot=ref, changed=True)
    datastores = desc.get("datastores") or ()
    frozen = frozen_from_layout(p["freeze"], layout, ref, props.get("config.hardware.device"), datastores)
    # vSphere keeps a suspended VM's memory in its snapshots whatever the flag says
    mem = _memory_files(layout, ref, p["memory"] or desc["power_state"] == "suspended")
    notes = ["The %s of VM %s was made at %s; the frozen files stop changing until teardown removes it."
             % (method, desc["name"], snapshot_time)]
    if p["memory"] and not (mem and mem["vmem"]):
        notes.append("The VM's file layout names no memory file (.vmem) for the snapshot; its memory state is in "
                     "the .vmsn only.")
    if not p["memory"]:
        notes.append("Disk-only: the frozen disks are crash-consistent%s."
                     % (", the guest's filesystems quiesced" if quiesce else "") if p["running"] else
                     "The VM was %s; the snapshot keeps its disks frozen should it be started meanwhile."
                     % desc["state"])
    if p["skipped"]:
        notes.append("Not frozen (accepted): %s." % ", ".join(d["target"] for d in p["skipped"]))
    pause_ms, pause_note = None, None
    if p["memory"] and mem and mem["vmem"]:
        # ESXi stunned the guest while it saved the memory: how long is in the VM's vmware.log (read, never written)
        try:
            pause_ms, pause_note = pause_of_snapshot(client, ClientSession(client, DEFAULT_REQUEST_TIMEOUT),
                                                     mem["vmem"]["path"], snapshot_time)
        except InvalidInputError as exc:
            # the freeze is made and journaled; an unknown pause is said, never guessed
            pause_note = "the guest's pause is not known: %s" % exc.message
    result.update(pause_ms=pause_ms, pause_note=pause_note)
    result.update(changed=True, frozen=frozen, memory=mem, snapshot_time=snapshot_time,
                  snapshot={"moref": ref, "name": name_, "id": node["id"], "created": node["created"],
                            "description": description},
                  quiesced=node["quiesced"], note=" ".join(notes))
    return result


def _already_frozen(client, vm, desc, vm_info, record):
    undo = record["undo"]
    if not record.get("applied"):
        raise SnapshotError("A freeze of VM %s for this case was journaled but never confirmed (the run was killed "
                            "while the snapshot %r was being made). Run teardown for the case first (it removes that "
                            "snapshot if it exists), then freeze again. Nothing was changed."
                            % (desc["name"], undo["snapshot_name"]), vm=vm_info)
    props = client.properties(vm, SNAPSHOT_PATHS)
    layout = Layout(props.get("layoutEx"))
    node = next((s for s in flatten_snapshots(props.get("snapshot"), layout) if s["name"] == undo["snapshot_name"]),
                None)
    if node is None:
        raise SnapshotError("This case's journal says VM %s is frozen by the snapshot %r, but the VM has no such "
                            "snapshot any more (removed by hand?). Run teardown for the case, then freeze again."
                            % (desc["name"], undo["snapshot_name"]), vm=vm_info)
    keys = set(d["key"] for d in undo["disks"])
    disks = [d for d in desc["disks"] if d["key"] in keys]
    # the disks now write to the snapshot's deltas: what it froze is the leaf recorded before it
    leaves = dict((d["key"], d["leaf"]) for d in undo["disks"])
    frozen = frozen_from_layout(disks, layout, node["moref"], props.get("config.hardware.device"),
                                desc.get("datastores") or ())
    for f in frozen:
        if f["chain_from"] != "snapshot layout":
            f["chain"] = [{"path": leaves[f["key"]], "extent": None, "extents": [], "format": "vmdk",
                           "datastore": None, "size": None, "descriptor_size": None}]
            f["chain_from"] = "journal (the snapshot's layout is not listed)"
        f["path"] = leaves[f["key"]]
    skipped = [d for d in desc["skipped_disks"] if d["target"] in undo.get("not_frozen", [])]
    return {"changed": False, "vm": vm_info, "frozen": frozen, "skipped_disks": skipped,
            "memory": _memory_files(layout, node["moref"], undo["memory"]),
            "snapshot": {"moref": node["moref"], "name": node["name"], "id": node["id"], "created": node["created"],
                         "description": node["description"]},
            "snapshot_time": node["created"], "quiesced": node["quiesced"],
            "method": "vSphere memory snapshot" if undo["memory"] else "vSphere snapshot",
            "tls": client.tls_record(), "engine": undo.get("engine") or "api",
            "note": "Already frozen for this case by the snapshot %r (%s); nothing was changed."
                    % (node["name"], node["moref"])}


# -- undo ----------------------------------------------------------------------------------------------

def _vm_for_undo(client, undo):
    """The journaled VM: by moref when that object still has the recorded UUID, else by the UUID."""
    try:
        vm = vim.VirtualMachine(undo["vm_moref"], client.si._stub)  # pylint: disable=protected-access
        if client.properties(vm, ["config.uuid"]).get("config.uuid") == undo["vm_uuid"]:
            return vm
    except (VsphereError, vmodl.MethodFault):
        pass
    try:
        return client.find_vm(uuid=undo["vm_uuid"])
    except VsphereError:
        raise SnapshotError("VM %s (uuid %s, %s) is not on %s; the journal says it was frozen on %s. Give teardown the "
                            "connection of that host (or the vCenter that manages it) and run it again."
                            % (undo["vm_name"], undo["vm_uuid"], undo["vm_moref"], client.where, undo["endpoint"]))


def _wait_for_snapshot_tasks(client, vm, timeout):
    """Wait for snapshot creations still running on the VM (a killed module's task goes on on the server)."""
    tasks = client.properties(vm, ["recentTask"]).get("recentTask") or []
    waited = []
    for task in tasks:
        info = client.properties(task, ["info.descriptionId", "info.state", "info.name"])
        if info.get("info.state") in ("queued", "running") and (
                "createSnapshot" in (info.get("info.descriptionId") or "")
                or "CreateSnapshot" in str(info.get("info.name") or "")):
            try:
                client.wait_for_task(task, "create a snapshot (a task still running on VM %s)" % moref(vm), timeout)
            except VsphereError as exc:
                if exc.details.get("timed_out"):
                    raise
                # it failed: it made no snapshot, which is all this wait is about
            waited.append(moref(task))
    return waited


@vsphere_errors("remove the acquisition's snapshot", error=SnapshotError)
def remove_freeze(client, undo, check_mode=False, timeout=None, shell=None):
    """Undo one ``vsphere.snapshot`` change (see the module docstring); returns a sentence. ``shell`` (SSH engine):
    the snapshot is removed with the host's vim-cmd."""
    timeout = timeout or client.timeout
    vm = _vm_for_undo(client, undo)
    waited = [] if check_mode else _wait_for_snapshot_tasks(client, vm, timeout)
    props = client.properties(vm, SNAPSHOT_PATHS)
    tree = flatten_snapshots(props.get("snapshot"))
    ours = [s for s in tree if s["name"] == undo["snapshot_name"]]
    label = "snapshot %r of VM %s (%s) on %s" % (undo["snapshot_name"], undo["vm_name"], moref(vm), client.where)
    if len(ours) > 1:
        raise SnapshotError("VM %s has %d snapshots named %r (%s); which one this case made is unknown, so none is "
                            "removed. Remove the extra one(s) by hand after checking them, then run teardown again."
                            % (undo["vm_name"], len(ours), undo["snapshot_name"], ", ".join(s["moref"] for s in ours)))
    said = []
    if ours:
        snap = ours[0]
        if check_mode:
            return "would remove the %s (%s) and check its disks' leaves" % (label, snap["moref"])
        children = [s for s in tree if s["parent"] == snap["moref"]]
        if shell is not None:
            vmx = client.properties(vm, ["config.files.vmPathName"]).get("config.files.vmPathName")
            vmid = shell.vmid({"vmx": vmx, "datastores": ()})
            shell.remove(vmid, snap["id"], timeout)
            label += " (vim-cmd over SSH)"
        else:
            task = vim.vm.Snapshot(snap["moref"], client.si._stub).RemoveSnapshot_Task(  # pylint: disable=protected-access
                removeChildren=False, consolidate=True)
            client.wait_for_task(task, "remove the %s" % label, timeout)
        kept = (", its child snapshot(s) %s kept" % ", ".join(repr(c["name"]) for c in children)) if children else ""
        said.append("removed the %s (%s)%s" % (label, snap["moref"], kept))
    else:
        said.append("the %s was already removed (or never made%s)"
                    % (label, ", after waiting for its task %s" % ", ".join(waited) if waited else ""))
        if check_mode:
            return said[0]
    props = client.properties(vm, SNAPSHOT_PATHS)
    if props.get("runtime.consolidationNeeded") and not undo.get("consolidation_needed_before"):
        if shell is not None:
            raise SnapshotError("The disks of VM %s need consolidation after the %s was removed; the host's licence "
                                "forbids it through the API. Consolidate them in the ESXi host client (Snapshots > "
                                "Consolidate), then run teardown again." % (undo["vm_name"], label))
        task = vm.ConsolidateVMDisks_Task()
        client.wait_for_task(task, "consolidate the disks of VM %s" % undo["vm_name"], timeout)
        props = client.properties(vm, SNAPSHOT_PATHS)
        if props.get("runtime.consolidationNeeded"):
            raise SnapshotError("The disks of VM %s still need consolidation after the %s was removed and a "
                                "consolidation ran; consolidate them in the vSphere client, then run teardown again."
                                % (undo["vm_name"], label))
        said.append("consolidated its disks")
    leaves = current_leaves(props.get("config.hardware.device"))
    moved = [d for d in undo["disks"] if leaves.get(d["key"]) != d["leaf"]]
    if moved:
        before = set(s["moref"] for s in undo.get("snapshots_before") or [])
        others = [s for s in flatten_snapshots(props.get("snapshot")) if s["moref"] not in before]
        detail = "; ".join("%s writes to %s, not %s as before the freeze" % (d["target"], leaves.get(d["key"]), d["leaf"])
                           for d in moved)
        if not others:
            raise SnapshotError("After the %s was removed, %s. Consolidate the VM's disks in the vSphere client, then "
                                "run teardown again." % (label, detail))
        said.append("%s: snapshots made after the freeze by someone else are still there (%s), not ours to remove"
                    % (detail, ", ".join("%r (%s)" % (s["name"], s["moref"]) for s in others)))
    else:
        said.append("every disk writes to its leaf of before the freeze again")
    return "; ".join(said)


@undo_handler(ACTION)
def _undo_snapshot(undo, ctx):
    """A vSphere snapshot the acquisition made: removed (see the module docstring), logging in with teardown's
    ``connection`` options."""
    if not HAS_PYVMOMI:
        raise SnapshotError("Undoing the snapshot %r of VM %s on %s needs pyvmomi for the Python that runs teardown."
                            % (undo["snapshot_name"], undo["vm_name"], undo["endpoint"]))
    options = ctx.options
    if not options.get("hostname"):
        raise SnapshotError("The snapshot %r of VM %s is on %s: give teardown its connection (hostname, username, "
                            "password, and thumbprint or ca_file) to remove it."
                            % (undo["snapshot_name"], undo["vm_name"], undo["endpoint"]))
    started = time.monotonic()
    if undo.get("engine") == "ssh":
        from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import ssh_client
        from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.snapshot import ShellSnapshots
        with client_from_params(options) as client:
            with ssh_client(options) as ssh:
                sentence = remove_freeze(client, undo, ctx.check_mode, options.get("timeout") or DEFAULT_TIMEOUT,
                                         shell=ShellSnapshots(ssh))
        return "%s (%.1f s)" % (sentence, time.monotonic() - started) if not ctx.check_mode else sentence
    with client_from_params(options) as client:
        sentence = remove_freeze(client, undo, ctx.check_mode, options.get("timeout") or DEFAULT_TIMEOUT)
    return "%s (%.1f s)" % (sentence, time.monotonic() - started) if not ctx.check_mode else sentence
