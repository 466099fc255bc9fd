# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The case manifest: what was acquired, from where, how, when (UTC), by whom, with which tools.

Two files in the case folder, both written atomically (temporary file, fsync, rename, fsync
of the folder):

* ``manifest.json``: the case fields, one entry per artifact keyed by its path relative to
  the case folder (size, digests at the source and at the destination, method, guest pause,
  source identity, times), the tools and their versions, and events (journal records...).
* ``SHA256SUMS``: one line per artifact with a sha256 digest, in the format ``sha256sum -c``
  accepts when run inside the case folder (and hash_verify's checksum_file reads).

Updating merges: an artifact with the same path replaces the old entry; others are kept.
Nothing is written when nothing but the ``updated`` stamp would change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket

from ansible_collections.dfir.vmcollect.plugins.module_utils._case import check_case_id
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, ManifestError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import write_atomic
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import absolute
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._version import COLLECTION, VERSION

FORMAT = "dfir.vmcollect/manifest/1"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def _relative(case_dir, path):
    full = absolute(path)
    rel = os.path.relpath(full, case_dir)
    if rel.startswith(".." + os.sep) or rel == "..":
        raise InvalidInputError("The artifact %s is not inside the case folder %s." % (path, case_dir))
    if "\n" in rel or "\\" in rel:
        raise InvalidInputError("The artifact name %r cannot be written to a SHA256SUMS line." % rel)
    return rel


def load(case_dir):
    path = os.path.join(case_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (IOError, OSError, ValueError) as exc:
        raise ManifestError("The manifest %s cannot be read: %s. It is not overwritten; move it away or repair it."
                            % (path, exc), manifest=path)
    if data.get("format") != FORMAT:
        raise ManifestError("%s is not a %s manifest (format %r)." % (path, COLLECTION, data.get("format")))
    return data


def sums_text(artifacts):
    lines = []
    for rel in sorted(artifacts):
        digest = (artifacts[rel].get("dest_digests") or artifacts[rel].get("digests") or {}).get("sha256")
        if digest:
            lines.append("%s  %s\n" % (digest, rel))
    return "".join(lines)


def build(old, case_dir, case_id, examiner, description, artifacts, tools, events):
    """The new manifest dict (``old`` may be None). Pure: no I/O."""
    now = utc_now()
    manifest = old or {"format": FORMAT, "case": {"case_id": case_id, "created": now}, "artifacts": {},
                       "tools": {}, "events": []}
    if manifest["case"]["case_id"] != case_id:
        raise ManifestError("The case folder %s holds case %s, not %s; evidence of two cases is never mixed."
                            % (case_dir, manifest["case"]["case_id"], case_id))
    manifest = json.loads(json.dumps(manifest))  # a copy to compare against the old one
    if examiner:
        manifest["case"]["examiner"] = examiner
    if description:
        manifest["case"]["description"] = description
    for art in artifacts or []:
        if not art.get("path"):
            raise InvalidInputError("Every artifact needs a path.")
        entry = dict(art)
        entry["path"] = _relative(case_dir, art["path"])
        manifest["artifacts"][entry["path"]] = entry
    manifest["tools"].update(tools or {})
    manifest["tools"].setdefault(COLLECTION, VERSION)
    for event in events or []:
        if event not in manifest["events"]:
            manifest["events"].append(event)
    return manifest


def update(case_dir, case_id, examiner=None, description=None, artifacts=None, tools=None, events=None,
           check_mode=False):
    """Merge into the case folder's manifest and rewrite SHA256SUMS; returns dict(changed, manifest, paths)."""
    check_case_id(case_id)
    case_dir = absolute(case_dir)
    if not os.path.isdir(case_dir):
        raise ManifestError("The case folder %s does not exist." % case_dir)
    old = load(case_dir)
    new = build(old, case_dir, case_id, examiner, description, artifacts, tools, events)
    changed = old is None or _comparable(old) != _comparable(new)
    paths = {"manifest": os.path.join(case_dir, MANIFEST), "sha256sums": os.path.join(case_dir, SUMS)}
    if changed:
        new["case"]["updated"] = utc_now()
        new["case"]["updated_on_host"] = socket.gethostname()
        if not check_mode:
            write_atomic(paths["manifest"], json.dumps(new, indent=2, sort_keys=True) + "\n")
            write_atomic(paths["sha256sums"], sums_text(new["artifacts"]))
    return {"changed": changed, "manifest": new, "paths": paths}


def _comparable(manifest):
    data = json.loads(json.dumps(manifest))
    data["case"].pop("updated", None)
    data["case"].pop("updated_on_host", None)
    return data
