# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collector's verification of one evidence volume, in one module run (``volume_verify``).

The steps are those the collector role used to make in six tasks, each a module run of its own:

1. the volume's backing file is mounted read-only (``loop_mount.mount_readonly``: a read-only loop device, journaled);
2. the case folder on it (its root, or the folder the host's attach step named) is looked at for ``manifest.json``
   and ``custody.jsonl``; each must be a regular file where it is there (a link or anything else is refused: nothing
   on the volume decides what the collector reads);
3. a volume with neither a manifest nor the digests its host reported at the source is refused: there is nothing
   to verify it against;
4. where both are there, the manifest's artifacts and digests must be those the host reported when it took them;
5. one hash run: the whole backing file first (the volume image as delivered, over its logical size), then every
   artifact against its digests at the source (``hash_and_verify``; a mismatch raises, naming each file);
6. a verification record is appended beside the backing file (``append_record``; earlier records are kept).

A failure at any step leaves the volume mounted read-only, as journaled: the caller's unmount or the case's teardown
takes it back. Nothing is written before step 6, and step 6 writes only when every artifact matched.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import stat

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, ManifestError, VmcollectError
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_and_verify, normalize_expected
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.record import append_record
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import loop_mount
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work

MODULE = "volume_verify"
MANIFEST = "manifest.json"
CUSTODY = "custody.jsonl"
MANIFEST_MAX = 64 * 1024 * 1024  # a manifest lists artifacts and events; a larger file is not one
LEFT = "The volume is left read-only as it is, for examination."


def case_folder(mountpoint, subdir):
    """Where the case folder lies on the mounted volume: its root, or ``subdir`` (relative, inside it)."""
    if not subdir:
        return mountpoint
    norm = os.path.normpath(subdir)
    if os.path.isabs(subdir) or norm == "." or norm.split(os.sep)[0] == "..":
        raise InvalidInputError("The case folder %r on the volume must be a relative path inside it." % subdir)
    return os.path.join(mountpoint, norm)


def _regular(path, volume):
    """True when ``path`` is a regular file, False when nothing is there; anything else is refused."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise ManifestError("%s on the volume of %s cannot be read: %s. %s" % (path, volume, exc.strerror, LEFT),
                            failed_path=path)
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError("%s on the volume of %s is not a regular file (a link, a folder or a device); the collector "
                            "reads only the files the host wrote. %s" % (path, volume, LEFT), failed_path=path)
    return True


def read_manifest(path, volume):
    """The case manifest at ``path`` (a regular file, read without following a link), as a dict with ``artifacts``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(MANIFEST_MAX + 1)
    except OSError as exc:
        raise ManifestError("The case manifest %s on the volume of %s cannot be read: %s. %s"
                            % (path, volume, exc.strerror, LEFT), failed_path=path)
    if len(data) > MANIFEST_MAX:
        raise ManifestError("The case manifest %s on the volume of %s is larger than %d MiB: it is not one. %s"
                            % (path, volume, MANIFEST_MAX >> 20, LEFT), failed_path=path)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise ManifestError("The case manifest %s on the volume of %s is not JSON (%s). %s" % (path, volume, exc, LEFT),
                            failed_path=path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        raise ManifestError("The case manifest %s on the volume of %s lists no artifacts (no \"artifacts\" object). %s"
                            % (path, volume, LEFT), failed_path=path)
    return manifest


def _digests(artifacts):
    return dict((name, a.get("digests") if isinstance(a, dict) else a) for name, a in artifacts.items())


def check_against_source(manifest, source_artifacts, path, volume):
    """Refuse a manifest whose artifacts or digests differ from those the host reported at the source."""
    on_volume = _digests(manifest["artifacts"])
    at_source = _digests(source_artifacts)
    differ = sorted(name for name in set(on_volume) | set(at_source) if on_volume.get(name) != at_source.get(name)
                    or (name in on_volume) != (name in at_source))
    if differ:
        raise ManifestError("The manifest on the volume of %s does not list the artifacts and digests that host reported "
                            "when it took them; they differ for %s (%s). %s" % (volume, differ, path, LEFT),
                            failed_path=path, differ=differ)


def expected_digests(artifacts, case_dir):
    """``{absolute path on the mounted volume: digests}`` of each artifact (its ``path`` is relative to the case)."""
    expected = {}
    for name, a in artifacts.items():
        if not isinstance(a, dict):
            raise ManifestError("The artifact %r is not described by an object with its path and digests. %s"
                                % (name, LEFT))
        rel = a.get("path", name)
        if not isinstance(rel, str) or os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
            raise ManifestError("The artifact %r names the path %r, which is not inside the case folder. %s"
                                % (name, rel, LEFT))
        if not isinstance(a.get("digests"), dict) or not a["digests"]:
            raise ManifestError("The artifact %r has no digests to verify it against. %s" % (name, LEFT))
        expected[os.path.join(case_dir, os.path.normpath(rel))] = a["digests"]
    return normalize_expected(expected)


def verify_volume(journal, image, mountpoint, record_path, volume, verified_on, subdir="", source_artifacts=None,
                  algorithms=("sha256",), check_mode=False, progress=None):
    """Mount ``image`` read-only, verify the case on it and append the record; returns the module's result.

    ``source_artifacts`` (None: the host reported none) is ``{name: {path, digests, ...}}`` as the host's manifest
    lists them when it took them. ``volume`` names the host whose volume it is (in messages and nothing else).
    ``progress(phase, done, total, path)`` is hash_and_verify's (``hash 1/3`` is the backing file)."""
    mounted = loop_mount.mount_readonly(journal, journal.case_id, image, mountpoint, check_mode=check_mode)
    case_dir = case_folder(mounted["mountpoint"], subdir)
    res = {"changed": mounted["changed"], "mount": mounted, "case_dir": case_dir,
           "plan": mounted.get("plan", []) + [
               "look for %s and %s in %s" % (MANIFEST, CUSTODY, case_dir),
               "hash %s as delivered, then each artifact of the case against its digests at the source" % image,
               "append a verification record to %s" % record_path]}
    if check_mode:
        res["changed"] = True
        return res
    try:
        return _verify_mounted(journal, mounted, case_dir, res, record_path, volume, verified_on, source_artifacts,
                               algorithms, progress)
    except VmcollectError as exc:
        # the volume stays mounted read-only (journaled): the run changed the host if it mounted it
        exc.details.setdefault("changed", mounted["changed"])
        exc.details.setdefault("mount", mounted)
        raise


def _verify_mounted(journal, mounted, case_dir, res, record_path, volume, verified_on, source_artifacts, algorithms,
                    progress):
    image = mounted["image"]
    manifest_path = os.path.join(case_dir, MANIFEST)
    manifest = read_manifest(manifest_path, volume) if _regular(manifest_path, volume) else None
    custody = _regular(os.path.join(case_dir, CUSTODY), volume)
    if manifest is None and source_artifacts is None:
        raise ManifestError("The volume of %s holds no case manifest (%s), and its host reported no digests taken at the "
                            "source: there is nothing to verify its evidence against. %s" % (volume, manifest_path, LEFT),
                            failed_path=manifest_path)
    if manifest is not None and source_artifacts is not None:
        check_against_source(manifest, source_artifacts, manifest_path, volume)
    artifacts = source_artifacts if source_artifacts is not None else manifest["artifacts"]
    expected = expected_digests(artifacts, case_dir)
    with at_work(journal, MODULE, "hash %s and %d artifact(s)" % (image, len(expected))):
        files = hash_and_verify([image], algorithms, expected, progress=progress)
    volume_hash, verified = files[0], files[1:]
    prefix = case_dir.rstrip(os.sep) + os.sep
    record = {
        "case_id": journal.case_id,
        "volume": image,
        "volume_digests": volume_hash["digests"],
        "verified_on": verified_on,
        "result": "verified",
        "files": [f["path"][len(prefix):] if f["path"].startswith(prefix) else f["path"] for f in verified],
        "digests": [f["digests"] for f in verified],
    }
    appended = append_record(record_path, record, create=True)
    res.update(changed=True, manifest=manifest, manifest_found=manifest is not None, custody_found=custody,
               volume_hash=volume_hash, files=verified, record=appended,
               msg="%d artifact(s) on the volume of %s match the digests taken at the source; the record is line %d of %s."
                   % (len(verified), volume, appended["line"], record_path))
    return res
