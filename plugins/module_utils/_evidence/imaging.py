# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backend of evidence_image: per disk of a case, the logical record, an E01 and a flattened raw image.

For each disk (its frozen chain copied into the case folder, top first) it computes what the case records need
(``logical``: size, digests, chain, formats and how to open it with qemu-img) and, when asked, writes the E01
(``ewf``) and a sparse raw image (``diskimage.write_raw``). Files already written are never replaced: an E01 or a
raw image that is there already is accepted when it holds this disk's bytes, else refused.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
    VmcollectError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import diskimage, ewf
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_path, normalize_algorithms

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _name(value, what):
    value = "" if value is None else str(value)
    if not _NAME.match(value) or value in (".", ".."):
        raise InvalidInputError("The %s %r must be a plain file name (letters, digits, '.', '_', '+', '-')."
                                % (what, value))
    return value


def _inside(case_dir, path, what):
    """``(absolute, relative)`` of a path given relative to the case folder or absolute inside it."""
    path = str(path)
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(case_dir, path))
    rel = os.path.relpath(full, case_dir)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise InvalidInputError("The %s %s is not inside the case folder %s." % (what, path, case_dir),
                                failed_path=path)
    real = os.path.realpath(full)
    real_rel = os.path.relpath(real, os.path.realpath(case_dir))
    if real_rel == os.pardir or real_rel.startswith(os.pardir + os.sep):
        raise InvalidInputError("The %s %s leads out of the case folder %s (through a link to %s)."
                                % (what, path, case_dir, real), failed_path=path)
    return full, rel


def _case_rel(case_dir, path):
    rel = os.path.relpath(path, case_dir)
    return path if rel.startswith(os.pardir) else rel


def plan_disk(case_dir, disk, e01_dir=None, flatten=False):
    """Check one disk's options and read its chain's headers: the layers, the logical record without digests."""
    if not isinstance(disk, dict):
        raise InvalidInputError("Each disk must be a dictionary with target, vm and layers, not %r." % (disk,))
    target = _name(disk.get("target"), "disk target")
    vm = _name(disk.get("vm"), "VM folder name of disk %s" % target)
    layers = disk.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidInputError("The disk %s needs its layers: a list of {path, format}, top first." % target)
    absolute, relative = [], []
    for layer in diskimage.normalize_layers(layers):
        full, rel = _inside(case_dir, layer["path"], "layer")
        absolute.append({"path": full, "format": layer["format"]})
        relative.append({"path": rel, "format": layer["format"]})
        if layer.get("descriptor"):
            absolute[-1]["descriptor"], relative[-1]["descriptor"] = _inside(case_dir, layer["descriptor"],
                                                                             "descriptor")
    info = diskimage.describe(absolute)
    for rel_layer, facts in zip(relative, info["layers"]):
        if facts.get("descriptor"):
            rel_layer["extent_file"] = facts["descriptor"]["extent_file"]
    out_name = "%s-%s.raw" % (vm, target)
    logical = {
        "size": info["size"],
        "chain": [layer["path"] for layer in relative],
        "formats": [layer["format"] for layer in relative],
        "descriptors": [layer.get("descriptor") for layer in relative],
        "open": {"qemu_json": diskimage.qemu_json(relative),
                 "command": diskimage.open_command(relative, out_name)},
    }
    folder = e01_dir or os.path.join(case_dir, vm, "e01")
    plan = {"target": target, "vm": vm, "layers": absolute, "layer_info": info["layers"], "logical": logical,
            "disk_path": absolute[0]["path"], "e01_stem": os.path.join(folder, target),
            "flat_path": os.path.join(case_dir, vm, "disks", "%s.flat.raw" % target) if flatten else None}
    return plan


def _e01_artifact(case_dir, plan, result, algorithms):
    """The manifest's E01 artifact: the media's facts, and each segment file's size and digests (SHA256SUMS lists
    the segment files like any artifact, so ``sha256sum -c`` and the collector check them too)."""
    files = []
    for segment in result["segments"]:
        there = hash_path(segment, algorithms)
        files.append({"path": _case_rel(case_dir, segment), "size": there["size"], "digests": there["digests"]})
    return {
        "kind": "e01",
        "size": files[0]["size"],
        "digests": files[0]["digests"],
        "dest_digests": files[0]["digests"],
        "files": files,
        "path": result["path"],
        "segments": [_case_rel(case_dir, s) for s in result["segments"]],
        "of": plan["logical"]["chain"][0],
        "media_size": result["media_size"],
        "media_digests": result["media_digests"],
        "case_fields": result["case_fields"],
        "tool": result["tool"],
        "format": result["format"],
        "compression": result["compression"],
        "target": plan["target"],
        "vm": plan["vm"],
    }


def _flatten(plan, algorithms, digests):
    """Write (or accept) the flattened raw image; returns (result dict, changed)."""
    dest = plan["flat_path"]
    folder = os.path.dirname(dest)
    if os.path.lexists(dest):
        if digests is None:
            digests = diskimage.logical_digests(plan["layers"], algorithms)["digests"]
        there = hash_path(dest, algorithms)
        if there["digests"] != digests or there["size"] != plan["logical"]["size"]:
            raise DestinationError("The raw image %s exists already and holds other bytes than this disk's (sha256 "
                                   "%s, the disk's %s); it is never overwritten. Move it away and run again."
                                   % (dest, there["digests"].get("sha256"), digests.get("sha256")),
                                   failed_path=dest)
        return {"path": dest, "size": there["size"], "digests": there["digests"], "written": False}, False
    ewf.make_folders(folder)
    result = diskimage.write_raw(plan["layers"], dest, algorithms)
    if digests is not None and result["digests"] != digests:
        raise EvidenceSourceError("The disk %s read differently twice (the E01 pass and the raw image's): %s then %s. "
                                  "Its layers changed meanwhile; nothing here can be trusted."
                                  % (plan["target"], digests, result["digests"]), failed_path=plan["disk_path"])
    return {"path": dest, "size": result["size"], "digests": result["digests"], "written": True,
            "written_bytes": result["written_bytes"]}, True


def image_disk(case_dir, plan, algorithms, e01=False, e01_fields=None, e01_compression=ewf.DEFAULT_COMPRESSION,
               check_mode=False):
    """Compute the logical digests and write what is asked for one planned disk; returns (result, changed)."""
    result = {"target": plan["target"], "vm": plan["vm"], "disk_path": plan["disk_path"],
              "logical": dict(plan["logical"]), "layers": plan["layer_info"], "e01": None, "flat": None}
    fields = None
    if e01:
        fields = dict(e01_fields or {})
        if not fields.get("evidence_number"):
            fields["evidence_number"] = plan["target"]
        fields = ewf.normalize_case_fields(fields)
    if check_mode:
        changed = False
        if e01:
            state = ewf.e01_plan(plan["e01_stem"])
            result["e01"] = {"path": state["path"], "exists": state["exists"], "case_fields": fields}
            changed = not state["exists"]
        if plan["flat_path"]:
            exists = os.path.lexists(plan["flat_path"])
            result["flat"] = {"path": plan["flat_path"], "exists": exists}
            changed = changed or not exists
        return result, changed
    changed = False
    digests = None
    if e01:
        written = ewf.acquire_e01(plan["layers"], plan["e01_stem"], fields, algorithms, compression=e01_compression)
        digests = dict((alg, written["stream_digests"][alg]) for alg in algorithms)
        result["data_bytes"] = written["data_bytes"]
        result["e01"] = _e01_artifact(case_dir, plan, written, algorithms)
        result["e01"]["written"] = written["changed"]
        changed = written["changed"]
    if plan["flat_path"]:
        result["flat"], wrote = _flatten(plan, algorithms, digests)
        digests = result["flat"]["digests"]
        changed = changed or wrote
    if digests is None:
        computed = diskimage.logical_digests(plan["layers"], algorithms)
        digests = computed["digests"]
        result["data_bytes"] = computed["data_bytes"]
    result["logical"]["digests"] = digests
    return result, changed


def image_disks(case_dir, disks, algorithms=("sha256",), e01=False, e01_dir=None, e01_fields=None,
                e01_compression=ewf.DEFAULT_COMPRESSION, flatten=False, check_mode=False):
    """All disks: each one's chain is checked first (nothing is written when one is wrong), then imaged in turn.

    Returns dict(changed, disks [...]). When a disk fails after others were written, the error's details carry
    ``disks`` (those done) and ``changed``.
    """
    if not isinstance(case_dir, str) or not os.path.isabs(case_dir):
        raise InvalidInputError("The case folder %r is not an absolute path." % (case_dir,))
    case_dir = os.path.normpath(case_dir)
    if not os.path.isdir(case_dir):
        raise InvalidInputError("The case folder %s does not exist." % case_dir, failed_path=case_dir)
    algorithms = normalize_algorithms(algorithms)
    if e01_dir:
        # an absolute folder may lie outside the case folder (a collector writes the E01s of a volume it mounted
        # read-only beside it); a relative one is inside the case folder
        e01_dir = (os.path.normpath(str(e01_dir)) if os.path.isabs(str(e01_dir))
                   else _inside(case_dir, e01_dir, "E01 folder")[0])
    if not isinstance(disks, list) or not disks:
        raise InvalidInputError("No disk was given: disks needs at least one {target, vm, layers}.")
    plans = [plan_disk(case_dir, disk, e01_dir, flatten) for disk in disks]
    seen = {}
    for plan in plans:
        for key in filter(None, (plan["e01_stem"] if e01 else None, plan["flat_path"])):
            if key in seen:
                raise InvalidInputError("The disks %s and %s would both be written to %s; give them distinct "
                                        "targets or VM folders." % (seen[key], plan["target"], key))
            seen[key] = plan["target"]
    done = []
    changed = False
    for plan in plans:
        try:
            result, wrote = image_disk(case_dir, plan, algorithms, e01, e01_fields, e01_compression, check_mode)
        except VmcollectError as exc:
            exc.details.setdefault("disks", done)
            exc.details.setdefault("changed", changed and not check_mode)
            raise
        done.append(result)
        changed = changed or wrote
    return {"changed": changed, "disks": done}
