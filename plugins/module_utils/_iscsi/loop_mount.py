# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk image (the collector's LUN backing file) mounted read-only, to verify the evidence on it.

The image is attached to a loop device with ``losetup --read-only``: the kernel refuses every write
to the device, so not a byte of the image can change, whatever the filesystem does. The filesystem
is mounted ``ro`` without journal recovery (``noload`` for ext3/ext4, ``norecovery`` for xfs), so a
volume that was not cleanly detached is read as it is, not repaired.

Every step is journaled with the undo handlers of ``_iscsi_initiator`` (folders, loop device, mount),
grouped under one attachment id per case and mountpoint, so ``teardown`` or ``state=absent`` take
it all back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

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
    res["changed"] = True
    res["plan"] = ["attach %s to a read-only loop device" % cfg["image"],
                   "mount its filesystem read-only, without journal recovery, on %s" % cfg["mountpoint"]]
    if check_mode:
        return res
    try:
        _make_dirs(journal, cfg, cfg["mountpoint"], 0o755, module=MODULE)
        rec = journal.record_change(ACTION_LOOP, {"attachment": cfg["attachment"], "export_file": cfg["image"]},
                                    "attach %s to a read-only loop device" % cfg["image"], module=MODULE)
        rc, out, err = _run([_bin("losetup"), "--read-only", "--find", "--show", cfg["image"]], timeout=60)
        if rc != 0 or not out.strip():
            raise IscsiAttachError("losetup could not attach %s read-only (exit %d): %s" % (cfg["image"], rc, err.strip()))
        device = out.strip()
        journal.mark_applied(rec, device=device)
        fs = probe(device).get("type")
        if fs not in NO_RECOVERY:
            raise IscsiAttachError("%s holds no ext3, ext4 or xfs filesystem (found: %s); it is not mounted."
                                   % (cfg["image"], fs or "no signature"), found_type=fs)
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
