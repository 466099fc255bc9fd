# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk image (the collector's LUN backing file) mounted read-only, to verify the evidence on it.

The image is attached to a loop device with ``losetup --read-only``: the kernel refuses every write
to the device, so not a byte of the image can change, whatever the filesystem does. The filesystem
is mounted ``ro`` without journal recovery (``noload`` for ext3/ext4, ``norecovery`` for xfs), so a
volume that was not cleanly detached is read as it is, not repaired.

An image that carries a GPT (the LUN of an ESXi host, which put a datastore on it) is read at its one partition: the
loop device is made at that partition's offset and size (``losetup --offset --sizelimit``). Its filesystem is probed
first: a VMFS volume is refused with a sentence naming the reader it needs (vmfs6-fuse, from vmfs6-tools), which this
collection does not use - it is never mounted as something else, and nothing claims it was verified.

Every step is journaled with the undo handlers of ``_iscsi_initiator`` (folders, loop device, mount),
grouped under one attachment id per case and mountpoint, so ``teardown`` or ``state=absent`` take
it all back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import struct
import uuid

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiAttachError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UndoContext
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
VMFS_READER = ("reading VMFS on Linux needs vmfs6-fuse (vmfs6-tools; vmfs-fuse for VMFS 5), which this collection "
               "does not use yet")


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


def check_readable(image, part, fs):
    """Raise unless ``fs`` (blkid's type of the image, or of its one GPT partition ``part``) is one this module mounts.

    A VMFS volume - blkid's type, or a VMFS-typed partition holding nothing else it knows - is refused with a sentence
    that names the reader it needs: it is never mounted as something else, nor reported verified.
    """
    where = ("the partition %d of %s" % (part["index"], image)) if part is not None else image
    if fs in VMFS_TYPES or (part is not None and part["type_guid"] == GPT_VMFS and fs not in NO_RECOVERY):
        raise IscsiAttachError("%s holds a VMFS volume (found: %s); %s. It is not mounted, and the evidence on it is "
                               "NOT verified here." % (where, fs or "a VMFS partition without a signature blkid knows",
                                                       VMFS_READER), found_type=fs, vmfs=True)
    if fs not in NO_RECOVERY:
        raise IscsiAttachError("%s holds no ext3, ext4 or xfs filesystem (found: %s); it is not mounted."
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
    res["changed"] = True
    res["partition"] = part
    at = ""
    if part is not None:
        at = " at its partition %d (offset %d, %d bytes)" % (part["index"], part["offset"], part["size"])
    res["plan"] = ["attach %s to a read-only loop device%s" % (cfg["image"], at),
                   "mount its filesystem read-only, without journal recovery, on %s" % cfg["mountpoint"]]
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
        check_readable(cfg["image"], part, fs)
        rec = journal.record_change(ACTION_MOUNT, {"attachment": cfg["attachment"], "mountpoint": cfg["mountpoint"],
                                                   "export_file": cfg["image"]},
                                    "mount %s read-only on %s" % (device, cfg["mountpoint"]), module=MODULE)
        rc, out, err = _run([_bin("mount"), "-t", fs, "-o", read_only_options(fs), device, cfg["mountpoint"]],
                            timeout=600)
        if rc != 0:
            raise IscsiAttachError("mount of %s on %s failed (exit %d): %s" % (device, cfg["mountpoint"], rc, err.strip()))
        journal.mark_applied(rec)
    except BaseException as exc:  # pylint: disable=broad-except
        # take back what this attempt made, then raise (any other exception as an IscsiAttachError)
        _rollback(journal, cfg["attachment"], exc, "Mounting %s read-only on %s" % (cfg["image"], cfg["mountpoint"]))
    res.update(device=device, filesystem=fs,
               msg="Mounted %s read-only (%s, %s) on %s." % (cfg["image"], device, fs, cfg["mountpoint"]))
    return res


def unmount(journal, case_id, image, mountpoint, check_mode=False):
    """Undo what mount_readonly did for this image and mountpoint; returns the result dict."""
    cfg = _config(case_id, image, mountpoint)
    records = _records(journal, cfg["attachment"])
    undone = journal.replay(records, UndoContext(check_mode))
    return {"changed": bool(records), "image": cfg["image"], "mountpoint": cfg["mountpoint"], "undone": undone,
            "msg": ("Unmounted %s and detached its loop device." % cfg["mountpoint"]) if records
            else "%s was not mounted by this collection." % cfg["mountpoint"]}
