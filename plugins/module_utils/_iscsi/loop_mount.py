# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk image (the collector's LUN backing file) mounted read-only, to verify the evidence on it.

The image is attached to a loop device with ``losetup --read-only``: the kernel refuses every write
to the device, so not a byte of the image can change, whatever the filesystem does. The filesystem
is mounted ``ro`` without journal recovery (``noload`` for ext3/ext4, ``norecovery`` for xfs), so a
volume that was not cleanly detached is read as it is, not repaired.

An image that carries a GPT (the LUN of an ESXi host, which put a datastore on it) is read at its one partition: the
loop device is made at that partition's offset and size (``losetup --offset --sizelimit``).

A VMFS volume (what a real ESXi host writes there) is recognised by its own headers (``vmfs_volume``: the LVM device
header at 1 MiB, magic 0xC001D00D, whose major version is the VMFS version; the filesystem descriptor 2 MiB into the
volume, magic 0x2FABF15E) and mounted read-only through FUSE on the read-only loop device: ``vmfs6-fuse`` (Debian's
vmfs6-tools) for VMFS 6, ``vmfs-fuse`` (vmfs-tools) for VMFS 5. Both refuse to open VMFS 5/6 read-write; they
get ``-o ro`` besides, and ``blkdev,fsname=<loop device>`` makes the kernel mount a ``fuseblk`` filesystem on that
device, so the mount carries the loop device's major:minor like a kernel filesystem would, and the same undo handler
unmounts it. The FUSE daemon is journaled as a process at work (``module.running``, ``_journal.running``), so a
teardown after a killed playbook stops it first (SIGTERM: it unmounts and ends). A volume neither reader reads (VMFS-L,
an unknown version, a VMFS header without its filesystem descriptor) is refused by name: it is never mounted as
something else, and nothing claims it was verified.

Every step is journaled with the undo handlers of ``_iscsi_initiator`` (folders, loop device, mount),
grouped under one attachment id per case and mountpoint, so ``teardown`` or ``state=absent`` take
it all back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import struct
import time
import uuid

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiAttachError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import RUNNING, UndoContext
# registers the undo handler of RUNNING (the FUSE daemon is journaled as a process at work)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import running as _running  # noqa: F401 pylint: disable=unused-import
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.initiator import (
    ACTION_LOOP,
    ACTION_MOUNT,
    NO_RECOVERY,
    _bin,
    _make_dirs,
    _missing_dirs,
    _records,
    _rollback,
    _run,
    attachment_id,
    block_majmin,
    find_bin,
    loops_backed_by,
    mount_at,
    probe,
    read_only_options,
)

MODULE = "loop_mount"

SECTOR = 512
# the GPT partition type of a VMFS datastore (ESXi's partedUtil "vmfs")
GPT_VMFS = "aa31e02a-400f-11db-9590-000c2911d1b8"
# what blkid calls a VMFS volume
VMFS_TYPES = ("VMFS", "VMFS_volume_member")

# VMFS on disk (vmfs-tools' libvmfs/vmfs_volume.h and vmfs_fs.h, dissect.vmfs' c_lvm.py and c_vmfs.py; checked on
# ESXi-made VMFS 5 and 6 volumes). Offsets from the start of the partition (the LVM device) or of the volume.
LVM_HEADER_OFFSET = 0x100000    # the LVM device header (LVM_DevMetadata)
LVM_MAGIC = 0xC001D00D          # its magic, then u32 majorVersion: 5 (VMFS 5), 6 (VMFS 6); 3 on VMFS 3
LVM_DATA_OFFSET_AT = 0x7A       # u64 dataOffset in that header: where the volume's first physical extent starts
FS_DESCRIPTOR_OFFSET = 0x200000  # the filesystem descriptor (FS3_Descriptor), from the start of the volume
FS_MAGIC = 0x2FABF15E           # its magic, then u32 majorVersion (14 on VMFS 5, 24 on VMFS 6), u8 minorVersion
FS_MAGIC_LOCAL = 0x2FABF15F     # VMFS-L: ESXi's own system volume (OSDATA), never a datastore
FS_VMFS6_MAJOR = 24
FS_LABEL_AT, FS_LABEL_SIZE = 0x1D, 128
# the reader of each VMFS version (LVM major version): program, Debian/Ubuntu package, the FUSE subtype it mounts as.
# VMFS 3 (vmfs-fuse reads it) is left out: no ESXi that makes a datastore for this collection writes it, and no
# VMFS 3 volume was at hand to check where its descriptor lies.
VMFS_READERS = {5: ("vmfs-fuse", "vmfs-tools", "vmfs"), 6: ("vmfs6-fuse", "vmfs6-tools", "vmfs6")}
READER_START_TIMEOUT = 600.0  # opening a volume reads its metadata only
READER_STOP_WAIT = 10.0       # after the unmount, the FUSE daemon ends by itself; then teardown's SIGTERM
POLL = 0.1


def gpt_partition(path):
    """The one partition of a GPT image as dict(offset, size, type_guid, index), or None when it has no GPT.

    Reads the primary header at LBA 1 (512-byte sectors, as the collector's LUNs have) and its entries. An image
    with no partition or several is refused: which one holds the evidence would be a guess.
    """
    with open(path, "rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if len(header) < 92 or header[:8] != b"EFI PART":
            return None
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if not 0 < count <= 1024 or entry_size < 128 or entry_size > 4096:
            raise IscsiAttachError("%s has a GPT header with %d entries of %d bytes; it is not read." % (path, count, entry_size))
        f.seek(entries_lba * SECTOR)
        raw = f.read(count * entry_size)
    parts = []
    for i in range(len(raw) // entry_size):
        entry = raw[i * entry_size:(i + 1) * entry_size]
        if entry[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        parts.append({"index": i + 1, "offset": first * SECTOR, "size": (last - first + 1) * SECTOR,
                      "type_guid": str(uuid.UUID(bytes_le=entry[:16]))})
    if len(parts) != 1:
        raise IscsiAttachError("%s has a GPT with %d partitions; the evidence is read from an image with one only, and "
                               "it is not mounted." % (path, len(parts)), partitions=parts)
    return parts[0]


def vmfs_volume(path, offset=0):
    """The VMFS volume whose LVM device starts at ``offset`` of ``path``, or None when there is no VMFS LVM header.

    Returns dict(version, fs_major, fs_minor, label, local, descriptor): ``version`` is the LVM device
    header's major version (5 or 6, 3 on VMFS 3: the one the readers go by); the filesystem descriptor is looked for at the
    header's data offset plus 2 MiB (where the volume's first extent puts it); ``descriptor`` False when it is not
    there (a further extent of a volume spanning several LUNs, or a device ESXi never formatted). Reads only.
    """
    with open(path, "rb") as f:
        f.seek(offset + LVM_HEADER_OFFSET)
        header = f.read(LVM_DATA_OFFSET_AT + 8)
        if len(header) < LVM_DATA_OFFSET_AT + 8 or struct.unpack_from("<I", header, 0)[0] != LVM_MAGIC:
            return None
        lvm_version = struct.unpack_from("<I", header, 4)[0]
        data_offset = struct.unpack_from("<Q", header, LVM_DATA_OFFSET_AT)[0]
        f.seek(offset + data_offset + FS_DESCRIPTOR_OFFSET)
        fsd = f.read(FS_LABEL_AT + FS_LABEL_SIZE)
    volume = {"version": lvm_version, "fs_major": None, "fs_minor": None, "label": None,
              "local": False, "descriptor": False}
    if len(fsd) == FS_LABEL_AT + FS_LABEL_SIZE and struct.unpack_from("<I", fsd, 0)[0] in (FS_MAGIC, FS_MAGIC_LOCAL):
        volume.update(descriptor=True, local=struct.unpack_from("<I", fsd, 0)[0] == FS_MAGIC_LOCAL,
                      fs_major=struct.unpack_from("<I", fsd, 4)[0], fs_minor=fsd[8],
                      label=fsd[FS_LABEL_AT:].split(b"\0")[0].decode("utf-8", "replace"))
    return volume


def vmfs_reader(volume, where):
    """The program that reads ``volume`` (``vmfs_volume``) as dict(program, path, package, subtype); raises with a
    sentence when none can (VMFS-L, an unknown version, no filesystem descriptor, the program not installed)."""
    not_verified = "It is not mounted, and the evidence on it is NOT verified here."
    version = volume["version"]
    if version not in VMFS_READERS:
        raise IscsiAttachError("%s holds a VMFS volume of LVM version %d; this collection reads VMFS 5 (vmfs-fuse) and "
                               "VMFS 6 (vmfs6-fuse) only. %s" % (where, version, not_verified), vmfs=volume)
    if not volume["descriptor"]:
        raise IscsiAttachError("%s holds a VMFS %d LVM header but no VMFS filesystem descriptor where the volume's "
                               "first extent puts it (a further extent of a datastore spanning several LUNs, or a "
                               "device ESXi never formatted). %s" % (where, version, not_verified), vmfs=volume)
    if volume["local"]:
        raise IscsiAttachError("%s holds a VMFS-L volume (ESXi's own system volume, not a datastore), which neither "
                               "reader reads. %s" % (where, not_verified), vmfs=volume)
    if (volume["fs_major"] >= FS_VMFS6_MAJOR) != (version == 6):
        raise IscsiAttachError("%s holds a VMFS LVM header of version %d and a filesystem descriptor of version %d.%d, "
                               "which do not belong together. %s" % (where, version, volume["fs_major"],
                                                                     volume["fs_minor"], not_verified), vmfs=volume)
    program, package, subtype = VMFS_READERS[version]
    path = find_bin(program)
    if path is None:
        raise IscsiAttachError("%s holds a VMFS %d volume; reading it needs %s (Debian/Ubuntu package %s), which is not "
                               "installed on this host: install %s and run this again. %s"
                               % (where, version, program, package, package, not_verified),
                               vmfs=volume, program=program, package=package)
    return {"program": program, "path": path, "package": package, "subtype": subtype}


def reader_pids(program_path, device, mountpoint):
    """Live FUSE daemons of ``program_path`` serving ``device`` on ``mountpoint`` (found by their argv), oldest first."""
    pids = procfs.find_pids(lambda argv: argv[0] == program_path and argv[-2:] == [device, mountpoint])
    return sorted(pids, key=lambda pid: procfs.start_ticks(pid) or 0)


def _where(image, part):
    return ("the partition %d of %s" % (part["index"], image)) if part is not None else image


def _config(case_id, image, mountpoint):
    for name, value in (("image", image), ("mountpoint", mountpoint)):
        if not value or not os.path.isabs(value):
            raise InvalidInputError("The %s %r is not an absolute path; give one." % (name, value))
    return {"attachment": attachment_id(case_id, mountpoint), "image": os.path.normpath(image),
            "mountpoint": os.path.normpath(mountpoint)}


def _ours(cfg):
    """The mount at the mountpoint if it is a read-only loop device of the image, else None (raises if foreign)."""
    m = mount_at(cfg["mountpoint"])
    if m is None:
        return None
    ours = dict((lo["majmin"], lo) for lo in loops_backed_by(cfg["image"]))
    if m["majmin"] not in ours:
        raise IscsiAttachError("%s is already a mountpoint of %s, not of the image %s; it is left alone."
                               % (cfg["mountpoint"], m["source"], cfg["image"]), mountpoint=cfg["mountpoint"])
    return ours[m["majmin"]]


def check_readable(image, part, fs, vmfs=None):
    """How the image is mounted: ``"kernel"`` (ext3, ext4, xfs: blkid's type ``fs``) or ``"vmfs"`` (``vmfs``, the volume
    ``vmfs_volume`` found, with a reader installed); raises with a sentence otherwise.

    A filesystem the kernel mounts wins (the lab's ext4 in a VMFS-typed partition). A partition or signature that says
    VMFS without a volume a reader can read is refused by name: it is never mounted as something else, nor reported
    verified.
    """
    where = _where(image, part)
    if fs in NO_RECOVERY:
        return "kernel"
    if vmfs is not None:
        vmfs_reader(vmfs, where)
        return "vmfs"
    if fs in VMFS_TYPES or (part is not None and part["type_guid"] == GPT_VMFS):
        raise IscsiAttachError("%s is marked as VMFS (found: %s) but holds no VMFS volume header (magic 0x%08X at 1 MiB); "
                               "it is not mounted, and the evidence on it is NOT verified here."
                               % (where, fs or "a VMFS partition without a signature blkid knows", LVM_MAGIC),
                               found_type=fs, vmfs=True)
    raise IscsiAttachError("%s holds no ext3, ext4, xfs or VMFS filesystem (found: %s); it is not mounted."
                           % (where, fs or "no signature"), found_type=fs)


def mount_readonly(journal, case_id, image, mountpoint, check_mode=False):
    """Mount ``image`` read-only on ``mountpoint``; returns the result dict (changed, device, filesystem, plan)."""
    cfg = _config(case_id, image, mountpoint)
    if not os.path.isfile(cfg["image"]):
        raise InvalidInputError("The image %s is not a regular file." % cfg["image"], failed_path=cfg["image"])
    res = {"changed": False, "image": cfg["image"], "mountpoint": cfg["mountpoint"], "attachment": cfg["attachment"],
           "plan": []}
    found = _ours(cfg)
    if found is not None:
        res.update(device=found["device"], msg="%s is already mounted read-only on %s." % (cfg["image"], cfg["mountpoint"]))
        return res
    if os.path.isdir(cfg["mountpoint"]) and os.listdir(cfg["mountpoint"]):
        raise InvalidInputError("The mountpoint %s is not empty; give an empty or new folder." % cfg["mountpoint"])
    _missing_dirs(cfg["mountpoint"])  # raises if something that is not a folder is in the way
    part = gpt_partition(cfg["image"])
    offset = part["offset"] if part is not None else 0
    # a VMFS-typed partition: its volume and reader are known before any change (a missing reader refuses here)
    vmfs = vmfs_volume(cfg["image"], offset) if part is not None and part["type_guid"] == GPT_VMFS else None
    if vmfs is not None:
        vmfs_reader(vmfs, _where(cfg["image"], part))
    res["changed"] = True
    res["partition"] = part
    at = ""
    if part is not None:
        at = " at its partition %d (offset %d, %d bytes)" % (part["index"], part["offset"], part["size"])
    how = "mount its filesystem read-only, without journal recovery, on %s" % cfg["mountpoint"]
    if vmfs is not None:
        how = ("mount its VMFS %d volume %r read-only with %s (a FUSE daemon on the read-only loop device) on %s"
               % (vmfs["version"], vmfs["label"], VMFS_READERS[vmfs["version"]][0], cfg["mountpoint"]))
    res["plan"] = ["attach %s to a read-only loop device%s" % (cfg["image"], at), how]
    if check_mode:
        return res
    try:
        _make_dirs(journal, cfg, cfg["mountpoint"], 0o755, module=MODULE)
        rec = journal.record_change(ACTION_LOOP, {"attachment": cfg["attachment"], "export_file": cfg["image"]},
                                    "attach %s to a read-only loop device" % cfg["image"], module=MODULE)
        window = []
        if part is not None:
            window = ["--offset", str(part["offset"]), "--sizelimit", str(part["size"])]
        rc, out, err = _run([_bin("losetup"), "--read-only", "--find", "--show"] + window + [cfg["image"]], timeout=60)
        if rc != 0 or not out.strip():
            raise IscsiAttachError("losetup could not attach %s read-only (exit %d): %s" % (cfg["image"], rc, err.strip()))
        device = out.strip()
        journal.mark_applied(rec, device=device)
        fs = probe(device).get("type")
        if vmfs is None and fs in VMFS_TYPES:  # a bare VMFS device (no partition table)
            vmfs = vmfs_volume(cfg["image"], offset)
        if check_readable(cfg["image"], part, fs, vmfs) == "vmfs":
            fs, facts = _mount_vmfs(journal, cfg, device, vmfs, _where(cfg["image"], part))
            res["vmfs"] = facts
        else:
            rec = journal.record_change(ACTION_MOUNT, {"attachment": cfg["attachment"], "mountpoint": cfg["mountpoint"],
                                                       "export_file": cfg["image"]},
                                        "mount %s read-only on %s" % (device, cfg["mountpoint"]), module=MODULE)
            rc, out, err = _run([_bin("mount"), "-t", fs, "-o", read_only_options(fs), device, cfg["mountpoint"]],
                                timeout=600)
            if rc != 0:
                raise IscsiAttachError("mount of %s on %s failed (exit %d): %s"
                                       % (device, cfg["mountpoint"], rc, err.strip()))
            journal.mark_applied(rec)
    except BaseException as exc:  # pylint: disable=broad-except
        # take back what this attempt made, then raise (any other exception as an IscsiAttachError)
        _rollback(journal, cfg["attachment"], exc, "Mounting %s read-only on %s" % (cfg["image"], cfg["mountpoint"]))
    how = fs
    if "vmfs" in res:
        how = "VMFS %d through %s" % (res["vmfs"]["version"], res["vmfs"]["reader"])
    res.update(device=device, filesystem=fs,
               msg="Mounted %s read-only (%s, %s) on %s." % (cfg["image"], device, how, cfg["mountpoint"]))
    return res


def _mount_vmfs(journal, cfg, device, vmfs, where):
    """Mount the VMFS volume on the read-only loop ``device`` with its FUSE reader; journal the mount and the daemon.

    ``blkdev,fsname=<device>`` makes it a ``fuseblk`` mount of the loop device (its major:minor in mountinfo, as for
    ext4), so ``iscsi.mounted``'s undo (sync, umount, never lazy) and ``_ours`` know it as this image's. The daemon is
    then journaled as a process at work (``module.running``): a teardown stops it first, and it unmounts as it ends.
    Returns (filesystem, facts).
    """
    reader = vmfs_reader(vmfs, where)
    rec = journal.record_change(ACTION_MOUNT, {"attachment": cfg["attachment"], "mountpoint": cfg["mountpoint"],
                                               "export_file": cfg["image"], "reader": reader["program"]},
                                "mount the VMFS %d volume on %s read-only on %s with %s"
                                % (vmfs["version"], device, cfg["mountpoint"], reader["program"]), module=MODULE)
    options = "ro,blkdev,fsname=%s,subtype=%s" % (device, reader["subtype"])
    # the program forks its FUSE daemon once the volume is mounted: stdout/stderr go to files, only it is waited for
    rc, out, err = _run([reader["path"], "-o", options, device, cfg["mountpoint"]], timeout=READER_START_TIMEOUT,
                        daemonizes=True)
    messages = [ln.strip() for ln in (out + "\n" + err).splitlines() if ln.strip()]
    if rc != 0:
        raise IscsiAttachError("%s could not mount the VMFS %d volume of %s read-only on %s (exit %d): %s. It is not "
                               "mounted, and the evidence on it is NOT verified here."
                               % (reader["program"], vmfs["version"], where, cfg["mountpoint"], rc,
                                  "; ".join(messages[-10:]) or "no message"), vmfs=vmfs)
    m = mount_at(cfg["mountpoint"])
    if m is None or m["majmin"] != block_majmin(device) or not m["fstype"].startswith("fuseblk"):
        raise IscsiAttachError("%s ended without error, but %s is not a read-only FUSE mount of %s (found: %s)."
                               % (reader["program"], cfg["mountpoint"], device, m and m["fstype"]), vmfs=vmfs)
    journal.mark_applied(rec, fstype=m["fstype"])
    pids = reader_pids(reader["path"], device, cfg["mountpoint"])
    if not pids:
        raise IscsiAttachError("%s mounted %s, but its FUSE daemon is not running." % (reader["program"], cfg["mountpoint"]))
    pid = pids[-1]
    what = "serves the VMFS %d volume of %s read-only on %s" % (vmfs["version"], where, cfg["mountpoint"])
    rec = journal.record_change(RUNNING, {"attachment": cfg["attachment"], "pid": pid,
                                          "start_ticks": procfs.start_ticks(pid), "module": reader["program"],
                                          "what": what, "mountpoint": cfg["mountpoint"]},
                                "%s (pid %d) %s" % (reader["program"], pid, what), module=MODULE)
    journal.mark_applied(rec)
    facts = dict(vmfs, reader=reader["program"], package=reader["package"], reader_pid=pid, fstype=m["fstype"],
                 messages=messages)
    return "vmfs%d" % vmfs["version"], facts


def _wait_gone(records, seconds=READER_STOP_WAIT):
    """Wait until the processes of ``records`` (``module.running``) have ended, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    for r in records:
        while procfs.is_alive(int(r["undo"]["pid"]), r["undo"].get("start_ticks")) and time.monotonic() < deadline:
            time.sleep(POLL)


def unmount(journal, case_id, image, mountpoint, check_mode=False):
    """Undo what mount_readonly did for this image and mountpoint; returns the result dict.

    The mount is undone first (umount, never lazy: a mount still in use is reported, not hidden); a VMFS volume's
    FUSE daemon then ends by itself, and its record says so (or it is stopped, if it has not ended within
    READER_STOP_WAIT seconds); then the loop device and the folders.
    """
    cfg = _config(case_id, image, mountpoint)
    records = _records(journal, cfg["attachment"])
    ctx = UndoContext(check_mode)
    first = [r for r in records if r["action"] == ACTION_MOUNT]
    undone = journal.replay(first, ctx)
    if not check_mode:
        _wait_gone([r for r in records if r["action"] == RUNNING])
    undone += journal.replay([r for r in records if r not in first], ctx)
    return {"changed": bool(records), "image": cfg["image"], "mountpoint": cfg["mountpoint"], "undone": undone,
            "msg": ("Unmounted %s and detached its loop device." % cfg["mountpoint"]) if records
            else "%s was not mounted by this collection." % cfg["mountpoint"]}
