# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freeze every disk of a KVM domain at one point in time, and put it back afterwards.

How: one atomic, disk-only, external snapshot without libvirt metadata. QEMU starts writing
the guest's changes into a new qcow2 overlay per disk and reopens the original images
read-only, so the originals (the whole backing chain) are frozen, bit for bit in their own
format, for as long as the acquisition takes. Undo: ``blockcommit --active`` merges the
overlay back and pivots to the original (the guest's own writes land where they would have
landed without us), then the overlay file goes. A domain that stopped meanwhile is undone
offline: ``qemu-img commit`` of the overlay and the disk source restored in the persistent
definition.

Why not libvirt's backup API: it exports a logical copy of what the guest sees, written by
QEMU, while the job runs; the original files (their format, qcow2 metadata, internal
snapshots) are not what gets preserved, our own sparse copy-and-hash cannot do the copy, and
the copy cannot be resumed after an interruption.

Every change is journaled before it is made (action ``kvm.external_snapshot``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time
import xml.etree.ElementTree as ET

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import SnapshotError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import runner as _runner
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import undo_handler, utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import (  # libvirt: None without the bindings
    connect,
    domain_for_undo,
    libvirt_errors,
    disk_sizes,
    find_domain,
    libvirt,
    parse_domain_xml,
)

ACTION = "kvm.external_snapshot"
# an overlay holds every guest write made during the acquisition: merging a big one on slow storage can take
# many minutes, so the bound is generous; it only stops a merge that storage has hung
COMMIT_TIMEOUT = 3600.0
OVERLAY_TAG = "vmcollect"


def overlay_path(source, case_id, overlay_dir=None):
    """Where the overlay of ``source`` goes: beside it unless ``overlay_dir`` is given."""
    folder = overlay_dir or os.path.dirname(source)
    return os.path.join(folder, "%s.%s-%s.qcow2" % (os.path.basename(source), OVERLAY_TAG, case_id))


def plan(info, case_id, overlay_dir=None):
    """Decide per disk: freeze with an overlay, take as it is, or skip. Raises on disks that
    cannot be frozen; never silently drops one.

    ``info`` is parse_domain_xml()'s result. Returns dict(freeze, as_is, skipped).
    """
    freeze, as_is = [], []
    skipped = [{"target": d["target"], "device": d["device"], "path": d.get("path"),
                "reason": "%s: removable media is not acquired as a disk" % d["device"]}
               for d in info["skipped_disks"]]
    for disk in info["disks"]:
        target = disk["target"]
        if disk["device"] == "floppy":
            skipped.append({"target": target, "device": "floppy", "path": disk.get("path"),
                            "reason": "floppy: removable media is not acquired as a disk"})
            continue
        if disk.get("shareable"):
            raise SnapshotError(
                "Disk %s is shareable: another VM may write to it, so a snapshot of this VM cannot freeze it. "
                "Acquire it from a host where no VM uses it." % target, disk=target)
        if disk.get("transient"):
            raise SnapshotError("Disk %s is transient (its writes are discarded at shutdown); external "
                                "snapshots of transient disks are not supported." % target, disk=target)
        if disk["type"] not in ("file", "block") or not disk.get("path"):
            raise SnapshotError("Disk %s is a %s disk; only file and block device disks can be frozen here."
                                % (target, disk["type"]), disk=target)
        if disk.get("readonly"):
            as_is.append(disk)  # QEMU cannot write it: already frozen
            continue
        freeze.append(dict(disk, overlay=overlay_path(disk["path"], case_id, overlay_dir)))
    if not freeze and not as_is:
        raise SnapshotError("The VM has no disk that can be acquired.")
    return {"freeze": freeze, "as_is": as_is, "skipped": skipped}


def snapshot_xml(case_id, disks, freeze):
    """The <domainsnapshot> document: every disk named (``disks``: all of them, CD-ROMs too),
    overlays for the ones to freeze."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = "%s-%s" % (OVERLAY_TAG, case_id)
    ET.SubElement(root, "description").text = "dfir.vmcollect case %s: disks frozen for acquisition" % case_id
    elems = ET.SubElement(root, "disks")
    overlays = dict((d["target"], d["overlay"]) for d in freeze)
    for disk in disks:
        if disk["target"] in overlays:
            e = ET.SubElement(elems, "disk", name=disk["target"], snapshot="external", type="file")
            ET.SubElement(e, "driver", type="qcow2")
            ET.SubElement(e, "source", file=overlays[disk["target"]])
        else:
            ET.SubElement(elems, "disk", name=disk["target"], snapshot="no")
    return ET.tostring(root).decode()


def frozen_image(disk):
    """The acquisition's view of a frozen disk: the image and its whole backing chain."""
    chain = [{"path": disk["path"], "format": disk.get("format")}]
    chain.extend({"path": b.get("path"), "format": b.get("format")} for b in disk.get("backing_chain") or [])
    return {"target": disk["target"], "device": disk["device"], "path": disk["path"],
            "format": disk.get("format"), "type": disk["type"], "chain": chain, "overlay": disk.get("overlay")}


def _live_sources(dom):
    return dict((d["target"], d.get("path")) for d in parse_domain_xml(dom.XMLDesc(0))["disks"])


def _running(dom):
    return dom.isActive() == 1


@libvirt_errors("freeze the disks", error=SnapshotError)
def freeze(journal, uri, name=None, uuid=None, overlay_dir=None, quiesce=False, check_mode=False, qemu_img=None):
    """Freeze the domain's disks; idempotent for a case (an existing freeze is reported, not redone).

    Returns dict(changed, vm, frozen, skipped_disks, snapshot_time, method, note). Not ``skipped``:
    Ansible reads a true ``skipped`` in a result as "this task was skipped".
    """
    with connect(uri) as conn:
        dom = find_domain(conn, name=name, uuid=uuid)
        info = parse_domain_xml(dom.XMLDesc(0))
        vm = {"name": dom.name(), "uuid": dom.UUIDString(), "running": _running(dom)}
        existing = journal.find(ACTION, uuid=vm["uuid"])
        if existing:
            return _already_frozen(dom, vm, existing[0])
        if overlay_dir and not os.path.isabs(overlay_dir):
            raise SnapshotError("The overlay folder %s is relative; give an absolute path." % overlay_dir)
        p = plan(info, journal.case_id, overlay_dir)
        result = {"vm": vm, "skipped_disks": p["skipped"], "method": "external disk-only snapshot (atomic)"}
        if not vm["running"]:
            # nothing runs that could write: the files are frozen as long as the VM stays off. The
            # XML of a VM that is not running says nothing about backing chains: ask qemu-img.
            for disk in p["freeze"] + p["as_is"]:
                disk.update(disk_sizes(dom, disk, False, qemu_img))
                if disk.get("sizes_error"):
                    raise SnapshotError("The backing chain of disk %s cannot be read, so the images to acquire are "
                                        "unknown: %s" % (disk["target"], disk["sizes_error"]), disk=disk["target"])
            result.update(changed=False, frozen=[frozen_image(d) for d in p["freeze"] + p["as_is"]],
                          snapshot_time=utc_now(), method="none: the VM is shut off",
                          note="The VM is not running; its disk files were taken as they are. Do not start "
                               "it until the acquisition is over.")
            for f in result["frozen"]:
                f["overlay"] = None
            return result
        for d in p["freeze"]:
            if os.path.lexists(d["overlay"]):
                raise SnapshotError(
                    "The overlay path %s already exists and this case's journal does not know it; it is not "
                    "ours to overwrite. Remove it or give another overlay_dir." % d["overlay"], overlay=d["overlay"])
        frozen = [frozen_image(d) for d in p["freeze"] + p["as_is"]]
        if check_mode:
            result.update(changed=True, frozen=frozen, snapshot_time=None)
            return result
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        undo = {"uri": uri, "uuid": vm["uuid"], "name": vm["name"],
                "disks": [{"target": d["target"], "base": d["path"], "base_format": d.get("format"),
                           "base_type": d["type"], "overlay": d["overlay"]} for d in p["freeze"]],
                # not needed to undo: the definition as found, for the custody record (the journal's records
                # end up in the case manifest)
                "inactive_xml": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if dom.isPersistent() else None}
        change = journal.record_change(ACTION, undo, "freeze the disks of VM %s (%s) with overlays %s"
                                       % (vm["name"], vm["uuid"], ", ".join(d["overlay"] for d in p["freeze"])),
                                       module="take_snapshot")
        if p["freeze"]:
            xml = snapshot_xml(journal.case_id, info["disks"] + info["skipped_disks"], p["freeze"])
            try:
                dom.snapshotCreateXML(xml, flags)
            except libvirt.libvirtError as exc:
                what = "quiesce the guest's filesystems (is the guest agent running?)" if quiesce else "freeze the disks"
                raise SnapshotError("libvirt could not %s of VM %s: %s. Nothing was frozen; the journal entry is "
                                    "undone by teardown." % (what, vm["name"], exc.get_error_message()),
                                    vm=vm)
        snapshot_time = utc_now()
        journal.mark_applied(change, snapshot_time=snapshot_time)
        result.update(changed=True, frozen=frozen, snapshot_time=snapshot_time,
                      note="Crash-consistent: the guest's filesystems were %squiesced." % ("" if quiesce else "not "))
        return result


def _already_frozen(dom, vm, record):
    sources = _live_sources(dom) if _running(dom) else {}
    for d in record["undo"]["disks"]:
        if vm["running"] and sources.get(d["target"]) != d["overlay"]:
            now = sources.get(d["target"])
            raise SnapshotError(
                "The journal says disk %s of VM %s was frozen with overlay %s, but the VM now uses %s. Run "
                "teardown for this case before freezing again." % (d["target"], vm["name"], d["overlay"], now), vm=vm)
    info = parse_domain_xml(dom.XMLDesc(0))
    by_target = dict((d["target"], d) for d in info["disks"])
    frozen = []
    for d in record["undo"]["disks"]:
        # the live XML now shows the overlay on top; the frozen image is the base below it
        disk = by_target.get(d["target"], {})
        chain = disk.get("backing_chain") or []
        frozen.append(frozen_image({"target": d["target"], "device": "disk", "path": d["base"],
                                    "format": d["base_format"], "type": d["base_type"],
                                    "backing_chain": chain[1:] if chain else [], "overlay": d["overlay"]}))
    return {"changed": False, "vm": vm, "frozen": frozen, "skipped_disks": [], "method": "external disk-only snapshot (atomic)",
            "snapshot_time": record.get("time"), "note": "Already frozen for this case (journal entry %s)." % record["id"]}


# -- undo ------------------------------------------------------------------------------------

def _commit_online(dom, target, base, overlay, timeout=COMMIT_TIMEOUT):
    """Merge ``overlay`` into ``base`` (its immediate backing file) while the VM runs, then pivot.

    SHALLOW is essential: without it libvirt merges the overlay down to the BOTTOM of the chain,
    writing into an older image of the original chain and dropping the frozen image from it.
    Idempotent: a disk already back on ``base`` is left alone, a running merge is waited for.
    """
    current = _live_sources(dom).get(target)
    if current == base:
        return "%s already back on %s" % (target, base)
    if current != overlay:
        raise SnapshotError("Disk %s now reads %s, which is neither the overlay %s nor the frozen image %s; "
                            "teardown does not touch a disk it cannot account for." % (target, current, overlay, base))
    if not dom.blockJobInfo(target, 0):
        dom.blockCommit(target, None, None, 0,
                        libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
    deadline = time.monotonic() + timeout
    while True:
        job = dom.blockJobInfo(target, 0)
        if not job:
            break  # no job any more: pivoted by an earlier run, or the merge ended without a pivot
        if job.get("cur") == job.get("end"):
            try:
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)  # synchronous
                break
            except libvirt.libvirtError as exc:
                if "not ready" not in (exc.get_error_message() or ""):
                    raise
        if time.monotonic() > deadline:
            raise SnapshotError("Merging overlay %s back into %s did not finish within %d s; the block job is "
                                "still running. Run teardown again to keep waiting." % (overlay, base, timeout))
        time.sleep(0.05)
    now = _live_sources(dom).get(target)
    if now != base:
        raise SnapshotError("After merging overlay %s, disk %s reads %s instead of the frozen image %s."
                            % (overlay, target, now, base))
    return "%s merged back into %s and pivoted" % (target, base)


def _commit_offline(overlay, base):
    """qemu-img commit of an overlay nobody runs on; its writes go into ``base``."""
    if not os.path.exists(overlay):
        return "overlay %s already gone" % overlay
    rc, out, err = _runner.run(["qemu-img", "commit", "-q", "-f", "qcow2", overlay], timeout=COMMIT_TIMEOUT)
    if rc == _runner.TIMED_OUT_RC:
        raise SnapshotError("qemu-img commit of %s into %s did not finish within %.0f s and was killed; the overlay "
                            "is intact (a commit can be repeated). Check the storage, then run teardown again."
                            % (overlay, base, COMMIT_TIMEOUT))
    if rc != 0:
        raise SnapshotError("qemu-img commit of %s failed: %s" % (overlay, (err or out).strip()))
    return "overlay %s committed into %s offline" % (overlay, base)


def _restore_persistent_sources(conn, dom, disks):
    """Point the persistent definition's disks back to their bases (the VM is off)."""
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    by_target = dict((d["target"], d) for d in disks)
    touched = False
    for disk in root.findall("./devices/disk"):
        tgt = disk.find("target")
        d = by_target.get(tgt.get("dev") if tgt is not None else None)
        src = disk.find("source")
        if d is None or src is None:
            continue
        key = "dev" if d["base_type"] == "block" else "file"
        if src.get(key) == d["base"] and disk.get("type") == d["base_type"]:
            continue
        disk.set("type", d["base_type"])
        for attr in ("file", "dev"):
            src.attrib.pop(attr, None)
        src.set(key, d["base"])
        drv = disk.find("driver")
        if drv is not None and d.get("base_format"):
            drv.set("type", d["base_format"])
        for bs in disk.findall("backingStore"):
            disk.remove(bs)
        touched = True
    if touched:
        conn.defineXML(ET.tostring(root).decode())
    return touched


@undo_handler(ACTION)
@libvirt_errors("merge the overlays back", error=SnapshotError, teardown_hint=False)
def undo_freeze(undo, ctx):
    """Merge every overlay back and remove it; restore the persistent definition if needed."""
    done = []
    with domain_for_undo(undo["uri"], undo["uuid"]) as (conn, dom):
        if dom is None:
            left = [d["overlay"] for d in undo["disks"] if os.path.exists(d["overlay"])]
            if not left:
                return "VM %s (%s) is gone and no overlay is left" % (undo["name"], undo["uuid"])
            raise SnapshotError("The VM %s (%s) no longer exists, but its overlays %s hold the guest's writes since "
                                "the freeze; they were left in place. Commit them by hand (qemu-img commit) or "
                                "remove them, then run teardown again." % (undo["name"], undo["uuid"], left))
        running = _running(dom)
        for d in reversed(undo["disks"]):
            if ctx.check_mode:
                done.append("would merge %s back into %s and remove it" % (d["overlay"], d["base"]))
                continue
            if running:
                done.append(_commit_online(dom, d["target"], d["base"], d["overlay"]))
            else:
                done.append(_commit_offline(d["overlay"], d["base"]))
        # A stopped VM's definition still names the overlays; a running one's was updated by libvirt on the
        # pivot, which this makes sure of. Either way it must name the original images again.
        if not ctx.check_mode and dom.isPersistent() and _restore_persistent_sources(conn, dom, undo["disks"]):
            done.append("persistent definition points at the original images again")
    for d in undo["disks"]:
        if ctx.check_mode or not os.path.exists(d["overlay"]):
            continue
        os.unlink(d["overlay"])
        done.append("removed %s" % d["overlay"])
    return "; ".join(done) if done else "nothing to undo"
