# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Acquire the RAM of a running KVM domain into an image file, by the method asked for.

Methods (one that cannot be used is an error, never replaced by another):

* ``pmemsave``: QMP ``pmemsave`` through libvirt's monitor passthrough. The guest keeps
  running, so the image is smeared over the copy's duration. QEMU writes the file itself, as
  the user it runs as; see ``take_pmemsave`` for how the file is made writable to it and
  taken back.
* ``pmemsave_paused``: the same with the guest paused (journaled before the pause, resumed in a
  ``finally``, and by teardown after a crash).
* ``core_dump``: libvirt's ``coreDumpWithFormat`` memory-only, an ELF core file; libvirt and
  QEMU pause the guest for the whole dump. ``dump-guest-memory`` is never sent over QMP: libvirtd
  9.0 crashes when QEMU reports a dump it did not start.
* ``background_snapshot``: QEMU's ``background-snapshot`` migration capability (userfaultfd
  write protection) to an ``fd:`` target: a new file (``<dest>.stream.partial``) whose fd is
  handed to QEMU with ``getfd`` (``exec:`` would be killed by libvirt's seccomp filter). The
  guest pauses for a few milliseconds. Then its RAM is extracted into a sparse raw image
  (``_migration_stream``) and the stream file removed. Not a pipe: if this process died
  mid-snapshot, QEMU 7.2 would get EPIPE and its failure path leaves guest RAM write-protected,
  which wedged the VM on the lab; a file lets QEMU finish alone. QEMU 7.2 needs
  ``vm.unprivileged_userfaultfd=1`` when it does not run as root; that sysctl and the
  capability are journaled before they are changed and put back as soon as the snapshot is over.

Every image goes to ``<dest>.partial`` (journaled as a created file before it exists), is
fsynced, owned by the module's user with mode 0640, hashed in one read, and renamed to
``<dest>``. Guest pauses are measured from libvirt lifecycle events (SUSPENDED to RESUMED)
received by an event loop thread registered before the acquisition starts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import io
import json
import os
import pwd
import stat
import threading
import time
import xml.etree.ElementTree as ET

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    InvalidInputError,
    MemoryAcquisitionError,
    VmcollectError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.uffd import FEATURE_WP_HUGETLBFS_SHMEM, kernel_features
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import absolute, hash_path, normalize_algorithms
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.space import free_bytes, memory_need
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UndoContext, undo_handler, utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import (  # libvirt*: None without the bindings
    connect,
    domain_for_undo,
    find_domain,
    libvirt,
    libvirt_errors,
    libvirt_qemu,
    parse_domain_xml,
    power_state,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import layout as _layout
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.migration_stream import extract_ram

METHODS = ("pmemsave", "pmemsave_paused", "core_dump", "background_snapshot")
FORMATS = ("raw", "elf")
PAGE_SIZE = 4096  # the host's base page: what userfaultfd write-protects page by page
PARTIAL_SUFFIX = ".partial"
IMAGE_MODE = 0o640
MIB = 1024 * 1024
UFFD_SYSCTL = "vm.unprivileged_userfaultfd"
CAPABILITY = "background-snapshot"
FD_NAME = "vmcollect-memory"
MIGRATION_POLL = 0.02  # seconds between two query-migrate
MIGRATION_TIMEOUT_MIN = 300.0
MIGRATION_SECONDS_PER_GIB = 120.0
EVENT_WAIT = 2.0  # seconds to wait for a RESUMED event after the guest was resumed
STREAM_BUFFER = 1024 * 1024
STREAM_SUFFIX = ".stream.partial"
RANGE_FILE = "%s.range-%x.partial"  # dest, guest-physical address: pmemsave's copy of a range above the PCI hole
ACTION_SUSPEND = "kvm.domain_suspended"
ACTION_CAPABILITY = "kvm.migration_capability"
# libvirt's lifecycle event numbers (virDomainEventType), fixed by libvirt's ABI
EVENT_SUSPENDED = 3
EVENT_RESUMED = 4
EVENT_STOPPED = 5
_ACTIVE_MIGRATION = ("setup", "active", "device", "pre-switchover", "cancelling", "wait-unplug")
ELF_NOTE = "ELF core written from the raw image: one PT_LOAD per guest-physical range (p_paddr), the holes left out."
TAINT_NOTE = ("qemu-monitor-command marks the domain as tainted (custom-monitor) in libvirt's log of the VM; "
              "record it in the custody log.")


# ------------------------------------------------------------------------ pause measurement

def pause_intervals(events, until):
    """Guest pauses in ms from lifecycle events ``[(monotonic, event, detail)]``: each SUSPENDED
    to the next RESUMED (or STOPPED); a pause still open at the end lasts until ``until``."""
    pauses = []
    since = None
    for when, event, dummy in events:
        if event == EVENT_SUSPENDED and since is None:
            since = when
        elif event in (EVENT_RESUMED, EVENT_STOPPED) and since is not None:
            pauses.append(round((when - since) * 1000.0, 1))
            since = None
    if since is not None:
        pauses.append(round((until - since) * 1000.0, 1))
    return pauses


def guest_pause_ms(pauses, qemu_downtime_ms=None):
    """The guest's pause to record: the sum of the event-measured pauses, or QEMU's own measure of it when that is
    longer. Events are stamped when this process receives them; a SUSPENDED and its RESUMED delivered in one batch
    measure next to nothing (0.0 ms seen on the lab for a background snapshot QEMU timed at 2 ms), so the record
    must never say less than QEMU measured."""
    measured = round(sum(pauses), 1)
    if qemu_downtime_ms is not None and qemu_downtime_ms > measured:
        return float(qemu_downtime_ms)
    return measured


_EVENT_LOOP = {"thread": None}


def _run_event_loop():
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            time.sleep(0.1)


def start_event_loop():
    """libvirt's default event loop in a daemon thread; must run before a connection is opened."""
    if _EVENT_LOOP["thread"] is not None:
        return
    libvirt.virEventRegisterDefaultImpl()
    thread = threading.Thread(target=_run_event_loop, name="vmcollect-libvirt-events")
    thread.daemon = True
    thread.start()
    _EVENT_LOOP["thread"] = thread


class PauseWatch(object):
    """Records one domain's lifecycle events (arrival time, event, detail) while it is open."""

    def __init__(self, conn, dom):
        self.conn = conn
        self.events = []
        self._cond = threading.Condition()
        self._id = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None)

    def _event(self, conn, dom, event, detail, opaque):
        with self._cond:
            self.events.append((time.monotonic(), event, detail))
            self._cond.notify_all()

    def _paused(self):
        last = [e for e in self.events if e[1] in (EVENT_SUSPENDED, EVENT_RESUMED, EVENT_STOPPED)]
        return bool(last) and last[-1][1] == EVENT_SUSPENDED

    def wait_unpaused(self, timeout=EVENT_WAIT):
        """Wait until a SUSPENDED event seen so far is followed by its RESUMED (events come late)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._paused() and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def pauses(self):
        with self._cond:
            return pause_intervals(list(self.events), time.monotonic())

    def close(self):
        try:
            self.conn.domainEventDeregisterAny(self._id)
        except libvirt.libvirtError:
            pass


# ------------------------------------------------------------------------ facts and plan

def _libvirt_message(exc):
    return str(exc.get_error_message() or exc).strip().rstrip(".")


def parse_dac_label(label):
    """``+64055:+64055`` or ``libvirt-qemu:kvm`` (libvirt's DAC seclabel) -> (uid, gid), or None."""
    if not label or ":" not in label:
        return None
    user, group = label.split(":", 1)
    try:
        uid = int(user[1:]) if user.startswith("+") else pwd.getpwnam(user).pw_uid
        if group.startswith("+"):
            gid = int(group[1:])
        else:
            import grp  # only needed for named groups
            gid = grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):
        return None
    return uid, gid


def qemu_identity(xml_text, name, proc=procfs.PROC):
    """(uid, gid) QEMU runs as: the live XML's DAC label, else the owner of its process."""
    root = ET.fromstring(xml_text)
    for sec in root.findall("seclabel"):
        if sec.get("model") == "dac":
            ident = parse_dac_label((sec.findtext("label") or "").strip())
            if ident:
                return ident
    needle = "guest=%s," % name.replace(",", ",,")
    for pid in procfs.find_pids(lambda argv: any(needle in arg for arg in argv), proc):
        try:
            st = os.stat(os.path.join(proc, str(pid)))
        except OSError:
            continue  # it ended meanwhile
        return st.st_uid, st.st_gid
    raise MemoryAcquisitionError("Cannot tell which user the QEMU of VM %s runs as (no DAC label in its live XML, "
                                 "no process found)." % name)


def _groups(uid, gid):
    try:
        return set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        return {gid}


def untraversable(folder, uid, gid):
    """The first folder on the way to ``folder`` that user ``uid`` cannot search, or None (mode bits only)."""
    if uid == 0:
        return None
    groups = _groups(uid, gid)
    path = folder
    chain = []
    while True:
        chain.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(chain):
        st = os.stat(path)
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return path
    return None


def read_sysctl(name):
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return f.read().strip()


def write_sysctl(name, value):
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write("%s\n" % value)


def vm_facts(dom):
    """What the plan needs from the domain: name, uuid, state, RAM, machine, QEMU's user."""
    xml = dom.XMLDesc(0)
    info = parse_domain_xml(xml)
    state, reason = dom.state(0)
    vm = {"name": dom.name(), "uuid": dom.UUIDString(), "state": power_state(state, reason)[0],
          "ram": info["memory_bytes"],
          "machine": info["os"]["machine"]}
    vm["running"] = state == libvirt.VIR_DOMAIN_RUNNING
    vm["active"] = bool(dom.isActive())
    vm["qemu_uid"], vm["qemu_gid"] = qemu_identity(xml, vm["name"]) if vm["active"] else (None, None)
    return vm


def check_destination(dest, force, journal):
    """The destination's folder must exist; an existing file is refused unless ``force``; an
    existing partial is refused unless this case's journal created it."""
    dest = absolute(dest)
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise DestinationError("The folder %s of the memory image does not exist; create it first." % folder,
                               dest=dest)
    if os.path.lexists(dest):
        if not os.path.isfile(dest) or os.path.islink(dest):
            raise DestinationError("%s exists and is not a regular file; it is not overwritten." % dest, dest=dest)
        if not force:
            raise DestinationError("%s exists already; give another dest, or force=true to replace it." % dest,
                                   dest=dest)
    for work in [dest + PARTIAL_SUFFIX, dest + STREAM_SUFFIX] + sorted(glob.glob(glob.escape(dest) + ".range-*.partial")):
        if os.path.lexists(work) and not journal.find("file.created", path=work):
            raise DestinationError("%s exists and this case's journal did not create it; it is not ours to overwrite."
                                   % work, dest=dest)
    return dest, dest + PARTIAL_SUFFIX


def plan(vm, dest, method, journal, force=False):
    """Check everything that can be checked before a change; returns the plan (check mode's result)."""
    label = "%s (%s)" % (vm["name"], vm["uuid"])
    if not vm["active"]:
        raise MemoryAcquisitionError("The VM %s is %s; a VM that is not running has no memory to acquire."
                                     % (label, vm["state"]), vm=_vm_public(vm))
    if method == "background_snapshot" and not vm["running"]:
        raise MemoryAcquisitionError(
            "The VM %s is %s. QEMU 7.2 resumes a paused guest at the end of a background snapshot, so that method is "
            "refused for a guest that is not running; a paused guest is frozen anyway: use pmemsave or core_dump."
            % (label, vm["state"]), vm=_vm_public(vm))
    dest, partial = check_destination(dest, force, journal)
    folder = os.path.dirname(dest)
    free = free_bytes(folder)
    need = memory_need(vm["ram"], method)  # the space rule evidence_plan sums up (_evidence/space.py)
    if free < need:
        raise DestinationError("%s has %d MiB free; the memory image of VM %s needs %d MiB (its RAM%s plus a margin)."
                               % (folder, free // MIB, label, need // MIB,
                                  " twice: the stream, then the image" if method == "background_snapshot" else ""),
                               dest=dest, free_bytes=free,
                               needed_bytes=need)
    if method in ("pmemsave", "pmemsave_paused"):
        blocked = untraversable(folder, vm["qemu_uid"], vm["qemu_gid"])
        if blocked:
            raise DestinationError("QEMU writes a pmemsave image itself, as uid %d, which cannot reach %s (%s is not "
                                   "searchable for it); choose a dest whose folders QEMU can enter."
                                   % (vm["qemu_uid"], folder, blocked), dest=dest)
    return {"vm": _vm_public(vm), "method": method, "dest": dest, "partial": partial, "stream": dest + STREAM_SUFFIX,
            "size": vm["ram"],
            "free_bytes": free, "needed_bytes": need, "host_changes": planned_changes(vm, method, dest),
            "smeared": method == "pmemsave"}


def _vm_public(vm):
    return {"name": vm["name"], "uuid": vm["uuid"], "state": vm["state"], "ram_bytes": vm["ram"]}


def planned_changes(vm, method, dest):
    partial = dest + PARTIAL_SUFFIX
    changes = ["create %s (renamed to the image when complete)" % partial]
    if method in ("pmemsave", "pmemsave_paused"):
        if vm["qemu_uid"]:
            changes.append("make %s writable for QEMU's uid %d while QEMU writes it" % (partial, vm["qemu_uid"]))
        changes.append("for each RAM range above the PCI hole in QEMU's memory map (read at run time), create %s for "
                       "QEMU to write, copy it to its address in the image, remove it" % (dest + ".range-<address>.partial"))
    if method == "pmemsave_paused" and vm["running"]:
        changes.append("pause VM %s for the copy and resume it" % vm["name"])
    if method == "background_snapshot":
        if vm["qemu_uid"] and read_sysctl(UFFD_SYSCTL) == "0":
            changes.append("set %s from 0 to 1 for the snapshot, then back to 0" % UFFD_SYSCTL)
        changes.append("turn QEMU's migration capability %s on for the snapshot, then off" % CAPABILITY)
        changes.append("create %s for QEMU's migration stream, removed once its RAM is extracted" % (dest + STREAM_SUFFIX))
    return changes


# ------------------------------------------------------------------------ QEMU monitor

def qmp(dom, execute, arguments=None, files=None):
    """One QMP command through libvirt's passthrough; QEMU's error becomes MemoryAcquisitionError."""
    cmd = {"execute": execute}
    if arguments is not None:
        cmd["arguments"] = arguments
    try:
        if files:
            text = libvirt_qemu.qemuMonitorCommandWithFiles(dom, json.dumps(cmd), files, 0)[0]
        else:
            text = libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0)
    except libvirt.libvirtError as exc:
        raise MemoryAcquisitionError("QEMU's monitor did not run %s: %s." % (execute, _libvirt_message(exc)),
                                     qmp_command=execute)
    reply = json.loads(text)
    if "error" in reply:
        raise MemoryAcquisitionError("QEMU refused %s: %s." % (execute, reply["error"].get("desc", reply["error"])),
                                     qmp_command=execute)
    return reply.get("return")


def capability_state(dom, name=CAPABILITY):
    """A migration capability's state (True/False), or None if this QEMU does not have it."""
    for cap in qmp(dom, "query-migrate-capabilities"):
        if cap.get("capability") == name:
            return bool(cap.get("state"))
    return None


def set_capability(dom, state, name=CAPABILITY):
    qmp(dom, "migrate-set-capabilities", {"capabilities": [{"capability": name, "state": state}]})


def read_layout(dom):
    """The guest's RAM in guest-physical memory, from QEMU's own monitor (_kvm/layout.py): a read."""
    mtree = qmp(dom, "human-monitor-command", {"command-line": "info mtree -f"})
    blocks = qmp(dom, "human-monitor-command", {"command-line": "info ramblock"})
    try:
        return _layout.guest_ram_layout(mtree, blocks)
    except VmcollectError as exc:
        raise MemoryAcquisitionError(exc.message)


def read_memdevs(dom):
    """QEMU's memory backends (query-memdev: id, size, share, ...): a read."""
    return qmp(dom, "query-memdev") or []


def special_memory(layout, memdevs):
    """What of the guest's RAM is not plain anonymous memory of 4 KiB pages: ["ram-node0 (2048 KiB pages)",
    "pc.ram (shared)"]."""
    out = ["%s (%d KiB pages)" % (b, ps // 1024) for b, ps in sorted((layout.get("page_sizes") or {}).items())
           if ps != PAGE_SIZE]
    out += ["%s (shared)" % m.get("id", "a memory backend") for m in memdevs if m.get("share")]
    return out


def check_write_protect(vm, layout, memdevs, features=kernel_features):
    """Refuse, before any change, guest RAM this kernel cannot write-protect: hugetlbfs or shared memory on a kernel
    without userfaultfd's write protection of such memory. Where the kernel has it, QEMU decides (it refuses the
    capability when it cannot track the guest's memory). Returns what was special about the guest's memory."""
    special = special_memory(layout, memdevs)
    if not special:
        return []
    offered, why = features()
    if offered is not None and not offered & FEATURE_WP_HUGETLBFS_SHMEM:
        raise MemoryAcquisitionError(
            "The RAM of VM %s is %s. This kernel (%s) cannot write-protect hugepages or shared memory (its userfaultfd "
            "does not offer UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19 and later), which a background snapshot needs. "
            "Use core_dump or pmemsave_paused: they pause the guest for the whole copy. Nothing was changed."
            % (vm["name"], ", ".join(special), os.uname()[2]))
    return special


def migration_status(dom):
    return (qmp(dom, "query-migrate") or {}).get("status")


# ------------------------------------------------------------------------ the image file

def create_journaled_file(journal, partial, what="the partial memory image", owner=None):
    """Journal, then create an empty file (mode 0600; owned by ``owner`` (uid, gid) if given); returns its fd.

    A file of that name left by an earlier run of this case (its journal created it) is replaced.
    """
    if journal.find("file.created", path=partial) and os.path.lexists(partial):
        os.unlink(partial)
    change = journal.record_change("file.created", {"path": partial}, "create %s %s" % (what, partial),
                                   module="pmemsave")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    if owner:
        os.fchown(fd, owner[0], owner[1])
    journal.mark_applied(change)
    return fd


def seal(partial):
    """fsync the written image and make it the module user's, mode 0640 (QEMU may have owned it)."""
    fd = os.open(partial, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fchown(fd, os.getuid(), os.getgid())
        os.fchmod(fd, IMAGE_MODE)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def publish(partial, dest):
    os.rename(partial, dest)
    fsync_dir(os.path.dirname(dest))


# ------------------------------------------------------------------------ the methods

def take_pmemsave(journal, dom, vm, p, layout=None):
    """QMP pmemsave of each guest-physical span of QEMU's memory map (read first), QEMU writing the files itself.

    QEMU opens each file by name (``fopen(..., "wb")``), as the user libvirt runs it as: each is created empty by this
    module, owned by that user (mode 0600), so QEMU needs no write access to the folder, only to search the folders
    above it; ``seal`` takes the image back. The span from 0 (the low RAM) goes straight into the partial image; a
    span above it (the RAM above the PCI hole) goes into ``<dest>.range-<gpa>.partial``, which ``place_spans``
    then copies to its guest-physical address in the image, so the image's offsets are guest-physical addresses
    as the background snapshot's are.
    """
    layout = layout or read_pmemsave_layout(dom, vm, p)
    owner = (vm["qemu_uid"], vm["qemu_gid"]) if vm["qemu_uid"] else None
    os.close(create_journaled_file(journal, p["partial"], owner=owner))
    ranges = []
    for gpa, size in _layout.read_spans(layout):
        path = p["partial"] if gpa == 0 else range_file(p["dest"], gpa)
        if gpa:
            os.close(create_journaled_file(journal, path, "the memory range file", owner=owner))
            ranges.append((gpa, size, path))
        qmp(dom, "pmemsave", {"val": gpa, "size": size, "filename": path})
    return {"notes": [TAINT_NOTE], "layout": _layout.public_layout(layout), "ranges": ranges}


def range_file(dest, gpa):
    return RANGE_FILE % (dest, gpa)


def read_pmemsave_layout(dom, vm, p):
    """QEMU's memory map (a read of its monitor), with the room its range files need checked: before any change."""
    layout = read_layout(dom)
    p["layout"] = layout
    check_span_space(vm, p, _layout.read_spans(layout))
    return layout


def check_span_space(vm, p, spans):
    """The spans off 0 need room for their range files too (each copied into the image, then removed)."""
    extra = sum(size for gpa, size in spans if gpa)
    if not extra:
        return
    folder = os.path.dirname(p["dest"])
    need = p["needed_bytes"] + extra
    free = free_bytes(folder)
    if free < need:
        raise DestinationError("%s has %d MiB free; pmemsave of VM %s needs %d MiB: the image and, for its RAM above "
                               "the PCI hole, a range file of %d MiB. Nothing was changed."
                               % (folder, free // MIB, vm["name"], need // MIB, extra // MIB),
                               dest=p["dest"], free_bytes=free, needed_bytes=need)


def place_spans(journal, p, out):
    """Copy each range file of ``take_pmemsave`` to its guest-physical address in the partial image (its all-zero
    pieces left as holes), then remove it; the image's size becomes the top of the layout."""
    ranges = out.pop("ranges", [])
    fd = os.open(p["partial"], os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        if ranges or os.fstat(fd).st_size < p["layout"]["end"]:
            os.ftruncate(fd, p["layout"]["end"])
        for gpa, size, path in ranges:
            src = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                if os.fstat(src).st_size != size:
                    raise MemoryAcquisitionError("QEMU's pmemsave wrote %d bytes of the range at 0x%x into %s; %d were "
                                                 "asked for." % (os.fstat(src).st_size, gpa, path, size))
                _layout.place(src, fd, gpa, size)
            finally:
                os.close(src)
        os.fsync(fd)
    finally:
        os.close(fd)
    for gpa, size, path in ranges:
        restore(journal, [c["id"] for c in journal.find("file.created", path=path)], strict=True)
    if ranges:
        out["notes"].append("The image's offsets are guest-physical addresses (QEMU's memory map: %s): pmemsave "
                            "copied the low RAM from 0 and each range above the PCI hole on its own, placed at its "
                            "address; the PCI hole is a hole of zeros." % describe_ranges(p["layout"]))
    if p.get("format") == "elf":
        _to_elf(journal, p, p["layout"])
        out["format"] = "elf"
        out["notes"].append(ELF_NOTE)
    return out


def describe_ranges(layout):
    return "; ".join("%s at 0x%x-0x%x" % (r["block"], r["gpa"], r["gpa"] + r["size"] - 1) for r in layout["ranges"])


def take_pmemsave_paused(journal, dom, vm, p):
    """Pause (journaled first), pmemsave, resume in a finally; a guest already paused stays so. The range files are
    placed after the resume."""
    if not vm["running"]:
        out = take_pmemsave(journal, dom, vm, p)
        out["notes"].insert(0, "The VM was already %s; it was neither paused nor resumed by this module." % vm["state"])
        return out
    layout = read_pmemsave_layout(dom, vm, p)  # before the pause
    undo = {"uri": p["uri"], "uuid": vm["uuid"], "name": vm["name"]}
    change = journal.record_change(ACTION_SUSPEND, undo, "pause VM %s (%s) for a memory copy" % (vm["name"], vm["uuid"]),
                                   module="pmemsave")
    try:
        dom.suspend()
    except libvirt.libvirtError as exc:
        raise MemoryAcquisitionError("libvirt could not pause VM %s: %s." % (vm["name"], _libvirt_message(exc)))
    journal.mark_applied(change)
    try:
        out = take_pmemsave(journal, dom, vm, p, layout)
    except BaseException:
        restore(journal, [change])
        raise
    failed = restore(journal, [change])
    if failed:
        raise MemoryAcquisitionError("The memory image of VM %s was taken, but resuming the VM failed. %s"
                                     % (vm["name"], failed))
    out["notes"].insert(0, "The guest was paused for the copy, so the image is of one instant.")
    return out


def take_core_dump(journal, dom, vm, p):
    """libvirt's memory-only core dump (ELF) into the partial; libvirt writes the file."""
    os.close(create_journaled_file(journal, p["partial"]))
    flags = libvirt.VIR_DUMP_MEMORY_ONLY
    try:
        dom.coreDumpWithFormat(p["partial"], libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, flags)
    except libvirt.libvirtError as exc:
        raise MemoryAcquisitionError("libvirt could not dump the memory of VM %s: %s."
                                     % (vm["name"], _libvirt_message(exc)))
    return {"format": "elf", "notes": ["ELF core file (memory only, with the guest's physical memory map), written by "
                                       "libvirt; libvirt and QEMU pause the guest for the whole dump."]}


def migration_timeout(ram):
    return max(MIGRATION_TIMEOUT_MIN, MIGRATION_SECONDS_PER_GIB * ram / 1024.0 / MIB)


def take_background_snapshot(journal, dom, vm, p):
    """sysctl and capability on (journaled), snapshot into a file, both back, then RAM extracted."""
    status = migration_status(dom)
    if status in _ACTIVE_MIGRATION:
        raise MemoryAcquisitionError("A migration of VM %s is already %s; a background snapshot cannot start now."
                                     % (vm["name"], status))
    cap = capability_state(dom)
    if cap is None:
        raise MemoryAcquisitionError("This QEMU has no %s migration capability (QEMU 6.0 or later is needed)." % CAPABILITY)
    layout = read_layout(dom)  # where each RAM block lies in guest-physical memory, as QEMU says it (a read)
    special = check_write_protect(vm, layout, read_memdevs(dom))
    p["layout"] = layout
    changes = []
    made = []  # journal ids of the sysctl and capability changes
    try:
        if vm["qemu_uid"] and read_sysctl(UFFD_SYSCTL) == "0":
            made.append(_change_sysctl(journal, "1", changes))
        if not cap:
            made.append(_change_capability(journal, dom, vm, p["uri"], changes))
        stream_change, downtime = _snapshot_to(journal, dom, vm, p["stream"])
    except BaseException:
        restore(journal, made)  # best effort: the error in flight is the one to report
        raise
    failed = restore(journal, made)
    if failed:
        raise MemoryAcquisitionError("The background snapshot of VM %s was taken, but putting the host back failed. %s"
                                     % (vm["name"], failed))
    stats = _extract(journal, p, stream_change)
    stats["qemu_downtime_ms"] = downtime
    changes.append("migration stream %s written by QEMU, removed after its RAM was extracted" % p["stream"])
    notes = [TAINT_NOTE, "A consistent image of the instant the snapshot began: QEMU write-protects guest RAM "
             "(userfaultfd) and saves each page before the guest may change it.",
             "The image's offsets are guest-physical addresses (QEMU's memory map: %s); what lies between the RAM "
             "ranges (the PCI hole below 4 GiB, the legacy VGA/ROM window) is a hole of zeros."
             % describe_ranges(layout)]
    if special:
        notes.append("Guest RAM that is not anonymous memory of 4 KiB pages (%s) was write-protected by this kernel's "
                     "userfaultfd (UFFD_FEATURE_WP_HUGETLBFS_SHMEM) and tracked by QEMU." % ", ".join(special))
    stats.pop("layout", None)
    out = {"notes": notes, "host_changes": changes, "stream": stats, "layout": _layout.public_layout(layout)}
    if p.get("format") == "elf":
        _to_elf(journal, p, layout)
        out["format"] = "elf"
        notes.append(ELF_NOTE)
    return out


def _to_elf(journal, p, layout):
    """The raw image in the partial rewritten as an ELF core (its data copied extent by extent), in its place."""
    elf = p["partial"] + ".elf"
    out_fd = create_journaled_file(journal, elf, "the ELF core being written")
    try:
        raw_fd = os.open(p["partial"], os.O_RDONLY)
        try:
            _layout.write_elf(raw_fd, layout, out_fd, _layout.data_extents)
        finally:
            os.close(raw_fd)
        os.fsync(out_fd)
    finally:
        os.close(out_fd)
    os.rename(elf, p["partial"])


def _snapshot_to(journal, dom, vm, stream):
    """Hand QEMU an fd of a new file (journaled), migrate into it, wait; returns the file's journal id
    and the pause QEMU measured itself (ms).

    A file, not a pipe: if this process dies mid-snapshot, QEMU still completes it. With a pipe
    QEMU 7.2 gets EPIPE and its failure path leaves guest RAM write-protected: a vCPU that
    faults while holding the global lock wedges the VM (seen on the lab).
    """
    fd = create_journaled_file(journal, stream, "the migration stream")
    try:
        qmp(dom, "getfd", {"fdname": FD_NAME}, files=[fd])
    finally:
        os.close(fd)
    change = journal.find("file.created", path=stream)[0]["id"]
    try:
        qmp(dom, "migrate", {"uri": "fd:%s" % FD_NAME})
    except VmcollectError:
        _close_fd_quietly(dom)
        raise
    status = _wait_migration(dom, vm)
    if status.get("status") != "completed":
        raise MemoryAcquisitionError("QEMU's background snapshot of VM %s ended %s: %s." % (
            vm["name"], status.get("status"), status.get("error-desc", "no reason given")))
    return change, status.get("downtime")


def _extract(journal, p, stream_change):
    """RAM from the stream file into the partial image (sparse), then the stream file goes."""
    out_fd = create_journaled_file(journal, p["partial"])
    try:
        with io.open(p["stream"], "rb", buffering=STREAM_BUFFER) as stream:
            stats = extract_ram(stream, out_fd, name="the migration stream %s" % p["stream"], layout=p.get("layout"))
        os.fsync(out_fd)
    finally:
        os.close(out_fd)
    restore(journal, [stream_change], strict=True)  # the stream file goes, through its file.created handler
    return stats


def restore(journal, change_ids, strict=False):
    """Undo the host changes of an acquisition right after it: the journal's records ``change_ids``
    replayed newest first through their undo handlers (``Journal.replay``, which marks each one
    undone). The replay stops at the first that fails; that one and the older ones stay in the
    journal for teardown. Returns the failure's sentence (None when all were undone), or raises it
    when ``strict``."""
    records = [r for r in journal.pending() if r["id"] in change_ids]
    try:
        journal.replay(records, UndoContext())
    except VmcollectError as exc:
        if strict:
            raise
        return exc.message
    return None


def _change_sysctl(journal, value, changes):
    original = read_sysctl(UFFD_SYSCTL)
    change = journal.record_change("sysctl", {"name": UFFD_SYSCTL, "original": original},
                                   "set %s from %s to %s for a background snapshot" % (UFFD_SYSCTL, original, value),
                                   module="pmemsave")
    write_sysctl(UFFD_SYSCTL, value)
    journal.mark_applied(change)
    changes.append("%s set from %s to %s, then back to %s" % (UFFD_SYSCTL, original, value, original))
    return change


def _change_capability(journal, dom, vm, uri, changes):
    undo_rec = {"uri": uri, "uuid": vm["uuid"], "name": vm["name"], "capability": CAPABILITY, "original": False,
                "fdname": FD_NAME}
    change = journal.record_change(ACTION_CAPABILITY, undo_rec, "turn on the migration capability %s of VM %s (%s)"
                                   % (CAPABILITY, vm["name"], vm["uuid"]), module="pmemsave")
    try:
        set_capability(dom, True)
    except MemoryAcquisitionError as exc:  # QEMU checked the guest's memory and the kernel, and said no
        journal.mark_undone(change, "never made: QEMU refused it (%s)" % exc.message)
        raise MemoryAcquisitionError("%s The background snapshot cannot be taken of VM %s (QEMU refuses to track "
                                     "writes to its memory); core_dump and pmemsave_paused pause the guest for the "
                                     "whole copy instead." % (exc.message, vm["name"]), **exc.details)
    journal.mark_applied(change)
    changes.append("migration capability %s of VM %s turned on, then off" % (CAPABILITY, vm["name"]))
    return change


def _close_fd_quietly(dom):
    try:
        qmp(dom, "closefd", {"fdname": FD_NAME})
    except VmcollectError:
        pass


def _wait_migration(dom, vm):
    timeout = migration_timeout(vm["ram"])
    deadline = time.monotonic() + timeout
    while True:
        status = qmp(dom, "query-migrate") or {}
        if status.get("status") not in _ACTIVE_MIGRATION:
            return status
        if time.monotonic() > deadline:
            _cancel_migration(dom)
            raise MemoryAcquisitionError("QEMU's background snapshot of VM %s did not complete within %d s; it was "
                                         "cancelled." % (vm["name"], timeout))
        time.sleep(MIGRATION_POLL)


_TAKERS = {"pmemsave": take_pmemsave, "pmemsave_paused": take_pmemsave_paused, "core_dump": take_core_dump,
           "background_snapshot": take_background_snapshot}


# ------------------------------------------------------------------------ entry point

def check_options(method, fmt, algorithms):
    if method not in METHODS:
        raise InvalidInputError("The method %r is not one of %s." % (method, ", ".join(METHODS)))
    if fmt not in FORMATS:
        raise InvalidInputError("The format %r is not one of %s." % (fmt, ", ".join(FORMATS)))
    return normalize_algorithms(algorithms)


@libvirt_errors("take the memory", error=MemoryAcquisitionError)
def acquire(journal, uri, dest, method, name=None, uuid=None, algorithms=("sha256",), fmt="raw", force=False,
            check_mode=False):
    """Acquire the RAM of the VM into ``dest`` by ``method``; see the pmemsave module's RETURN."""
    algorithms = check_options(method, fmt, algorithms)
    start_event_loop()
    with connect(uri) as conn:
        dom = find_domain(conn, name=name, uuid=uuid)
        vm = vm_facts(dom)
        p = plan(vm, dest, method, journal, force)
        p["uri"] = uri
        p["format"] = fmt
        if check_mode:
            return dict(_plan_result(p), changed=True)
        watch = PauseWatch(conn, dom)
        try:
            started, t0 = utc_now(), time.monotonic()
            out = _TAKERS[method](journal, dom, vm, p)
            if method in ("pmemsave", "pmemsave_paused"):
                place_spans(journal, p, out)  # after the resume: the guest does not wait for the copy
            acquired = time.monotonic() - t0
            watch.wait_unpaused()
            pauses = watch.pauses()
        finally:
            watch.close()
    seal(p["partial"])
    hashed = hash_path(p["partial"], algorithms)
    publish(p["partial"], p["dest"])
    result = _plan_result(p)
    result.update(changed=True, size=hashed["size"], digests=hashed["digests"], format=out.get("format", fmt),
                  pause_ms=guest_pause_ms(pauses, out.get("stream", {}).get("qemu_downtime_ms")), pauses_ms=pauses, acquire_seconds=round(acquired, 3),
                  wall_seconds=round(time.monotonic() - t0, 3), hash_seconds=hashed["seconds"], notes=out["notes"],
                  host_changes=_done_changes(p, out), started_at=started, finished_at=utc_now())
    if "stream" in out:
        result["stream"] = out["stream"]
    if "layout" in out:
        result["layout"] = out["layout"]
    return result


def _plan_result(p):
    return {"vm": p["vm"], "method": p["method"], "dest": p["dest"], "size": p["size"], "free_bytes": p["free_bytes"],
            "needed_bytes": p["needed_bytes"], "host_changes": p["host_changes"], "smeared": p["smeared"]}


def _done_changes(p, out):
    done = ["created %s, renamed to %s when complete" % (p["partial"], p["dest"])]
    if p["method"] == "pmemsave_paused" and any("pause VM" in c for c in p["host_changes"]):
        done.append("VM %s paused for the copy and resumed" % p["vm"]["name"])
    return done + out.get("host_changes", [])


# ------------------------------------------------------------------------ undo (teardown)

@undo_handler(ACTION_SUSPEND)
@libvirt_errors("resume the VM", teardown_hint=False)
def undo_suspend(undo, ctx):
    """Resume a VM that a memory copy paused, if it is still paused (a kill -9 mid-copy)."""
    with domain_for_undo(undo["uri"], undo["uuid"]) as (dummy, dom):
        if dom is None:
            return "VM %s (%s) is gone; nothing to resume" % (undo["name"], undo["uuid"])
        state, reason = dom.state(0)
        if state != libvirt.VIR_DOMAIN_PAUSED or reason != libvirt.VIR_DOMAIN_PAUSED_USER:
            return "VM %s is %s; nothing to resume" % (undo["name"], " ".join(power_state(state, reason)))
        if ctx.check_mode:
            return "would resume VM %s" % undo["name"]
        dom.resume()
        return "resumed VM %s" % undo["name"]


@undo_handler(ACTION_CAPABILITY)
@libvirt_errors("turn the migration capability back off", teardown_hint=False)
def undo_capability(undo, ctx):
    """Turn a migration capability back off (cancelling a snapshot still running after a crash)."""
    with domain_for_undo(undo["uri"], undo["uuid"]) as (dummy, dom):
        if dom is None:
            return "VM %s (%s) is gone, and its capability with it" % (undo["name"], undo["uuid"])
        if not dom.isActive():
            return "VM %s is not running; its QEMU and the capability are gone" % undo["name"]
        if capability_state(dom, undo["capability"]) == undo["original"]:
            return "migration capability %s of VM %s is off as found" % (undo["capability"], undo["name"])
        if ctx.check_mode:
            return "would turn the migration capability %s of VM %s off" % (undo["capability"], undo["name"])
        _cancel_migration(dom)
        _close_fd_quietly(dom)
        set_capability(dom, undo["original"], undo["capability"])
        return "turned the migration capability %s of VM %s off" % (undo["capability"], undo["name"])


def _cancel_migration(dom, timeout=30.0):
    if migration_status(dom) not in _ACTIVE_MIGRATION:
        return
    qmp(dom, "migrate_cancel")
    deadline = time.monotonic() + timeout
    while migration_status(dom) in _ACTIVE_MIGRATION:
        if time.monotonic() > deadline:
            raise MemoryAcquisitionError("A background snapshot still runs %d s after it was cancelled." % timeout)
        time.sleep(MIGRATION_POLL)
