# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one space rule of the collection: what evidence needs at its destination, and what a LUN holds.

Every check of free space uses these functions, so a plan that fits is never refused later by the
step that writes (``evidence_plan`` before any change, ``evidence_copy`` before a copy, ``pmemsave``
before a memory image, the iSCSI LUN's size):

* one image needs its **allocated** bytes (``st_blocks * 512``: a copy writes data, never holes; a
  block device is all data) plus a **margin** of ``max(64 MiB, 1%)`` of them (``image_need``);
* RAM needs ``copies * RAM + margin(RAM)`` (``memory_need``): one copy for ``pmemsave``,
  ``pmemsave_paused`` and ``core_dump``, two for ``background_snapshot`` (at its peak the migration
  stream and the image extracted from it lie side by side), none for ``none``;
* a plan needs the sum over its images, each real file counted once (a backing file shared by two
  disks, or one file named twice through a link, is copied and counted once), plus its RAM
  (``plan_bytes``). Since every term is at least what its own step checks and at least what that
  step leaves written, each step of the acquisition, in any order, finds what it checks for;
* the free bytes of a destination are ``f_bavail * f_frsize`` of the nearest folder that exists
  (``free_at``): a case folder that is not made yet lives on its parent's filesystem;
* a LUN for a plan has ``1.1 * plan + 128 MiB`` rounded down to MiB, at least 256 MiB
  (``lun_bytes``); a LUN of ``n`` bytes offers ``n - n/32 - 128 MiB`` once it carries ext4
  (``lun_usable_bytes``, see there why it is not the ``n - n/50 - 64 MiB`` used before).

Only the standard library; reads only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import open_source, source_size
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import missing_dirs

MIB = 1024 * 1024
GIB = 1024 * MIB
MARGIN_MIN = 64 * MIB  # kept free beyond the data of one write, at least...
MARGIN_DIVISOR = 100  # ...or 1% of it, whichever is larger

# RAM copies at the peak of each method (pmemsave's own check uses memory_need too)
# snapshot: an ESXi memory snapshot's .vmem, copied once (its .vmsn is small: the image margin covers it)
MEMORY_COPIES = {"none": 0, "pmemsave": 1, "pmemsave_paused": 1, "core_dump": 1, "background_snapshot": 2,
                 "snapshot": 1}
MEMORY_METHODS = ("none", "pmemsave", "pmemsave_paused", "core_dump", "background_snapshot", "snapshot")

LUN_EXTRA = 128 * MIB  # a LUN sized from a plan: 10% more, plus this, rounded down to MiB...
LUN_MIN = 256 * MIB  # ...and never less than this
EXT4_FIXED = 128 * MIB  # what ext4 takes off a LUN: n // EXT4_DIVISOR plus this (lun_usable_bytes)
EXT4_DIVISOR = 32


# -- the rule for one write ---------------------------------------------------------------------------

def margin(nbytes):
    """The free space kept beyond ``nbytes`` of data written: 64 MiB, or 1% of it when that is more."""
    return max(MARGIN_MIN, int(nbytes) // MARGIN_DIVISOR)


def image_need(allocated):
    """Free bytes a copy of an image with ``allocated`` bytes needs at its destination (evidence_copy's check)."""
    return int(allocated) + margin(allocated)


def allocated_bytes(st, size=None):
    """Bytes a file occupies on its filesystem (``st_blocks * 512``); a block device: ``size``, all of it data."""
    if stat.S_ISREG(st.st_mode):
        return st.st_blocks * 512
    if size is None:
        raise InvalidInputError("The allocated size of something that is not a regular file needs its size.")
    return size


def memory_copies(method):
    """How many RAM-sized files a memory method has on the destination at its peak."""
    if method not in MEMORY_COPIES:
        raise InvalidInputError("The memory method %r is not one of %s." % (method, ", ".join(MEMORY_METHODS)))
    return MEMORY_COPIES[method]


def memory_need(ram, method):
    """Free bytes the memory image of ``ram`` bytes needs by ``method`` (pmemsave's check): copies x RAM + margin."""
    ram = int(ram)
    if ram < 0:
        raise InvalidInputError("The memory size %d is negative." % ram)
    copies = memory_copies(method)
    if not copies or not ram:
        return 0
    return copies * ram + margin(ram)


def plan_bytes(allocations, memory_bytes=0, memory_method="none"):
    """Free bytes a plan needs: ``image_need`` of each image (each real file once) plus ``memory_need``."""
    return sum(image_need(a) for a in allocations) + memory_need(memory_bytes, memory_method)


# -- measuring ----------------------------------------------------------------------------------------

def _absolute(path, what):
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidInputError("The %s %r is not an absolute path; give one (a relative path would be resolved "
                                "against whatever folder the connection left). Nothing was changed." % (what, path),
                                failed_path=path)
    return os.path.normpath(path)


def measure_image(path):
    """``(stat, size, allocated)`` of one image, following links; a block device's size is read from it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            what = "is a link to nothing" if os.path.islink(path) else "does not exist"
            raise EvidenceSourceError("The image %s %s on this host; give the paths of the disk images and of their "
                                      "backing files as this host sees them. Nothing was changed." % (path, what),
                                      failed_path=path)
        raise EvidenceSourceError("The image %s cannot be examined: %s. Nothing was changed." % (path, exc.strerror),
                                  failed_path=path)
    if stat.S_ISREG(st.st_mode):
        return st, st.st_size, allocated_bytes(st)
    if stat.S_ISBLK(st.st_mode):
        fd, st = open_source(path)  # read-only, without moving the access time
        try:
            size = source_size(fd, st)
        finally:
            os.close(fd)
        return st, size, size
    raise EvidenceSourceError("The image %s is neither a regular file nor a block device. Nothing was changed."
                              % path, failed_path=path)


def measure_images(paths):
    """One dict per path, in order: path, real_path, size_bytes, allocated_bytes, margin_bytes, bytes_needed,
    same_as (the path listed earlier that is the same file: this one then needs nothing)."""
    seen = {}
    result = []
    for given in paths or []:
        path = _absolute(given, "image")
        st, size, allocated = measure_image(path)
        key = (st.st_dev, st.st_ino)
        entry = {"path": path, "real_path": os.path.realpath(path), "size_bytes": size, "allocated_bytes": allocated,
                 "margin_bytes": margin(allocated), "bytes_needed": image_need(allocated), "same_as": seen.get(key)}
        if entry["same_as"] is not None:
            entry.update(margin_bytes=0, bytes_needed=0)
        else:
            seen[key] = path
        result.append(entry)
    return result


def measure_remote_images(images):
    """Images measured where they lie (an ESXi datastore): one dict per given ``{path, size_bytes, allocated_bytes}``,
    in measure_images' shape; a path listed twice is counted once."""
    seen = set()
    result = []
    for given in images or []:
        if not isinstance(given, dict) or not given.get("path"):
            raise InvalidInputError("Each remote image needs a path, size_bytes and allocated_bytes; got %r." % (given,))
        try:
            size = int(given.get("size_bytes") or 0)
            allocated = int(given.get("allocated_bytes", size) or 0)
        except (TypeError, ValueError):
            raise InvalidInputError("The remote image %s has sizes that are not numbers of bytes: %r."
                                    % (given["path"], given))
        if size < 0 or allocated < 0:
            raise InvalidInputError("The remote image %s has a negative size." % given["path"])
        path = given["path"]
        entry = {"path": path, "real_path": path, "size_bytes": size, "allocated_bytes": allocated,
                 "margin_bytes": margin(allocated), "bytes_needed": image_need(allocated),
                 "same_as": path if path in seen else None}
        if entry["same_as"] is not None:
            entry.update(margin_bytes=0, bytes_needed=0)
        seen.add(path)
        result.append(entry)
    return result


def free_bytes(folder):
    """Bytes an unprivileged writer may still use on the filesystem of an existing ``folder``."""
    vfs = os.statvfs(folder)
    return vfs.f_bavail * vfs.f_frsize


def existing_ancestor(path):
    """The nearest folder at or above ``path`` that exists; raises if something else is in the way."""
    try:
        missing = missing_dirs(path)
    except NotADirectoryError as exc:
        raise DestinationError("%s exists and is not a folder, so the destination %s cannot be made there. Nothing "
                               "was changed." % (exc.filename, path), failed_path=path)
    return os.path.dirname(missing[0]) if missing else path


def free_at(dest):
    """``(folder measured, free bytes)`` for a destination folder that may not exist yet."""
    folder = existing_ancestor(_absolute(dest, "destination"))
    return folder, free_bytes(folder)


# -- the LUN ----------------------------------------------------------------------------------------------

def lun_bytes(bytes_needed):
    """Size of a LUN for a plan of ``bytes_needed``: 10% more plus 128 MiB, rounded down to MiB, at least 256 MiB."""
    return max((int(bytes_needed) * 11 // 10 + LUN_EXTRA) // MIB * MIB, LUN_MIN)


def lun_usable_bytes(size):
    """Bytes a plan may count on in a LUN of ``size`` bytes once it carries ext4 (``mkfs.ext4 -m 0``).

    ext4 takes its inode tables (1/64 of the LUN with mke2fs's defaults, 1/16 below 512 MiB), a
    journal that grows by steps to 1 GiB from 128 GiB up, and the kernel holds back 2% or 16 MiB
    (whichever is less) from every writer. Measured with e2fsprogs 1.47 on sparse files from 256 MiB
    to 8 TiB, ext4 takes 2.4-2.7% between 16 and 200 GiB, so ``size - size/50 - 64 MiB`` (used before)
    promised up to 490 MB more than the filesystem offers between 2 and 200 GiB. ``size/32 + 128 MiB``
    stays above what ext4 takes at every size measured.
    """
    size = int(size)
    return max(0, size - size // EXT4_DIVISOR - EXT4_FIXED)


# -- the plan as evidence_plan reports it ----------------------------------------------------------------------

_TEXT_BOOLEANS = dict([(w, True) for w in ("true", "yes", "on", "1")] + [(w, False) for w in ("false", "no", "off", "0", "")])


def _lun_size(lun):
    """None (no LUN), or dict(size_bytes=None: sized from the plan | int: a given size)."""
    if isinstance(lun, str):  # a templated true/false arrives as text
        lun = _TEXT_BOOLEANS.get(lun.strip().lower(), lun)
    if lun is None or lun is False:
        return None
    if lun is True:
        return {"size_bytes": None}
    if not isinstance(lun, dict):
        raise InvalidInputError("lun must be true, false or a dictionary (with size_bytes for a LUN of a given size), "
                                "not %r." % (lun,))
    unknown = sorted(set(lun) - {"size_bytes"})
    if unknown:
        raise InvalidInputError("lun knows only size_bytes, not %s." % ", ".join(unknown))
    size = lun.get("size_bytes")
    if size is None:
        return {"size_bytes": None}
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise InvalidInputError("lun.size_bytes %r is not a number of bytes." % (size,))
    if isinstance(lun.get("size_bytes"), bool) or size <= 0:
        raise InvalidInputError("lun.size_bytes %r is not a positive number of bytes." % (lun.get("size_bytes"),))
    return {"size_bytes": size}


def _mib(nbytes):
    return "%.1f MiB" % (nbytes / float(MIB)) if nbytes < GIB else "%.2f GiB" % (nbytes / float(GIB))


def _what(images, memory, e01_bytes=0):
    """The plan in words, for a refusal: how many images, the biggest, and the RAM."""
    counted = [i for i in images if i["same_as"] is None]
    parts = []
    if counted:
        big = max(counted, key=lambda i: i["allocated_bytes"])
        parts.append("%d image%s, the biggest %s with %d bytes (%s) allocated"
                     % (len(counted), "" if len(counted) == 1 else "s", big["path"], big["allocated_bytes"],
                        _mib(big["allocated_bytes"])))
    else:
        parts.append("no image")
    if memory["bytes_needed"]:
        parts.append("%s of RAM by %s (%s)" % (_mib(memory["bytes"]), memory["method"],
                                               "twice: the stream, then the image" if memory["copies"] == 2 else "once"))
    if e01_bytes:
        parts.append("%s for the E01s of the disks" % _mib(e01_bytes))
    return " and ".join(parts)


def e01_need(images):
    """Free bytes the E01s of the disks of ``images`` need: their allocated data once more, plus the margin.

    An E01 holds each chunk of the guest's bytes once, compressed or not (a chunk that does not shrink is stored as it
    is), and compresses the runs of zeros to almost nothing; so the allocated data of the images (each real file once)
    bounds it, the same guest block written in two layers counted twice.
    """
    allocated = sum(i["allocated_bytes"] for i in images if i["same_as"] is None)
    return image_need(allocated) if allocated else 0


def evaluate(images, memory_bytes=0, memory_method="none", dest=None, lun=None, fail_when_short=True, reserve_bytes=0,
             remote_images=None, e01=False):
    """The plan of ``images`` and RAM against ``dest``'s free space and/or a LUN (see evidence_plan's RETURN).

    Reads only. Raises DestinationError (with the whole plan in its details) when it does not fit and
    ``fail_when_short``.
    """
    lun = _lun_size(lun)
    try:
        memory_bytes = int(memory_bytes or 0)
    except (TypeError, ValueError):
        raise InvalidInputError("memory_bytes %r is not a number of bytes." % (memory_bytes,))
    memory_method = memory_method or "none"
    measured = measure_images(images) + measure_remote_images(remote_images)
    copies = memory_copies(memory_method)
    memory = {"bytes": memory_bytes, "method": memory_method, "copies": copies if memory_bytes else 0,
              "margin_bytes": margin(memory_bytes) if copies and memory_bytes else 0,
              "bytes_needed": memory_need(memory_bytes, memory_method)}
    try:
        reserve_bytes = int(reserve_bytes or 0)
    except (TypeError, ValueError):
        raise InvalidInputError("reserve_bytes %r is not a number of bytes." % (reserve_bytes,))
    if reserve_bytes < 0:
        raise InvalidInputError("reserve_bytes %d is negative." % reserve_bytes)
    e01_bytes = e01_need(measured) if e01 else 0
    needed = sum(i["bytes_needed"] for i in measured) + memory["bytes_needed"] + reserve_bytes + e01_bytes
    result = {"changed": False, "bytes_needed": needed, "images": measured, "memory": memory, "fits": True,
              "reserve_bytes": reserve_bytes, "e01_bytes": e01_bytes}
    short = []
    if dest is not None:
        folder, free = free_at(dest)
        result.update(dest=os.path.normpath(dest), measured_at=folder, bytes_free=free)
        if free < needed:
            short.append("The destination %s has %d bytes (%s) free%s, but the plan needs %d bytes (%s): %s."
                         % (result["dest"], free, _mib(free),
                            "" if folder == result["dest"] else " (measured at %s, the nearest folder that exists)"
                            % folder, needed, _mib(needed), _what(measured, memory, e01_bytes)))
    if lun is not None:
        size = lun["size_bytes"] if lun["size_bytes"] is not None else lun_bytes(needed)
        usable = lun_usable_bytes(size)
        result.update(lun_bytes=size, lun_usable_bytes=usable)
        if usable < needed:
            short.append("A LUN of %d bytes (%s) offers about %d bytes (%s) once it carries ext4, but the plan needs "
                         "%d bytes (%s): %s. Give a larger LUN, or none to size it from the plan."
                         % (size, _mib(size), usable, _mib(usable), needed, _mib(needed), _what(measured, memory, e01_bytes)))
    result["fits"] = not short
    if short:
        result["msg"] = " ".join(short) + " Nothing was changed."
        if fail_when_short:
            details = dict(result)
            del details["msg"]
            raise DestinationError(result["msg"], **details)
    else:
        where = ""
        if dest is not None:
            where += "; %s has %d bytes (%s) free" % (result["dest"], result["bytes_free"], _mib(result["bytes_free"]))
        if lun is not None:
            where += "; a LUN of %d bytes offers about %d" % (result["lun_bytes"], result["lun_usable_bytes"])
        result["msg"] = "The plan needs %d bytes (%s)%s." % (needed, _mib(needed), where)
    return result
