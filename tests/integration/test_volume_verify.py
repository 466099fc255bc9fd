# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_verify on real volumes: ext4 images made here (mkfs.ext4 -d), mounted through a read-only loop device.

What the collector does with each evidence volume, in one module run: the iSCSI acquisitions (test_acquire_kvm_iscsi,
test_acquire_esxi_iscsi) walk its usual path on the lab; here each refusal and the two ways of finding the case (the
volume's root, a folder of it) on volumes made for the purpose, with no lab: the backend in this process with a journal
of its own, the module once through ansible (its argument spec and check mode). Needs root, losetup and mkfs.ext4;
without them the tests skip saying why (a failure with VMCOLLECT_REQUIRE_LAB=1, as in CI).
"""

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from conftest import ansible_module

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import HashMismatchError, ManifestError
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import loop_mount
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.verify import verify_volume
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal

CASE = "vv-case"


@pytest.fixture(autouse=True)
def _can_mount():
    missing = [t for t in ("losetup", "mkfs.ext4", "mount") if shutil.which(t) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "volume_verify mounts through a loop device: root is needed"
    elif missing:
        reason = "%s not found" % ", ".join(missing)
    if reason:
        if os.environ.get("VMCOLLECT_REQUIRE_LAB") == "1":
            pytest.fail("VMCOLLECT_REQUIRE_LAB=1, but %s" % reason, pytrace=False)
        pytest.skip(reason)


def _artifacts(files):
    return dict((name, {"path": name, "size": len(data), "digests": {"sha256": hashlib.sha256(data).hexdigest()}})
                for name, data in files.items())


def _volume(tmp_path, files, manifest=True, custody=True, subdir="", extra=None):
    """An ext4 image holding ``files`` (name -> bytes) in its case folder, with manifest.json (their digests) and
    custody.jsonl; returns (image path, the artifacts as the host reported them)."""
    tree = tmp_path / "tree"
    case = tree / subdir if subdir else tree
    case.mkdir(parents=True)
    for name, data in files.items():
        (case / name).parent.mkdir(parents=True, exist_ok=True)
        (case / name).write_bytes(data)
    artifacts = _artifacts(files)
    if manifest:
        manifest_doc = {"case": {"case_id": CASE, "examiner": "tester"}, "artifacts": artifacts}
        (case / "manifest.json").write_text(json.dumps(manifest_doc))
    if custody:
        (case / "custody.jsonl").write_text('{"event":"plan"}\n')
    for name, target in (extra or {}).items():
        os.symlink(target, str(case / name))
    image = str(tmp_path / "kvm1.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), image, "16M"], check=True)
    return image, artifacts


def _run(tmp_path, image, **kw):
    journal = Journal(CASE, str(tmp_path / "journal"))
    return journal, verify_volume(journal, image, str(tmp_path / "mnt"), image + ".verified.jsonl", "kvm1", "collector1",
                                  **kw)


@pytest.fixture
def undo(tmp_path):
    """Undo whatever a test left mounted (the journal's teardown, as the collector's release does)."""
    yield
    if os.path.exists(str(tmp_path / "journal")):
        Journal(CASE, str(tmp_path / "journal")).teardown()
    assert not os.path.ismount(str(tmp_path / "mnt"))


def _records(image):
    with open(image + ".verified.jsonl") as f:
        return [json.loads(line) for line in f]


def test_verifies_against_the_source_digests_and_appends_a_record(tmp_path, undo):
    files = {"vm/disk.qcow2": os.urandom(300000), "vm/ram.raw": b"\0" * 70000 + b"x"}
    image, artifacts = _volume(tmp_path, files)
    before = hashlib.sha256(open(image, "rb").read()).hexdigest()
    dummy, res = _run(tmp_path, image, source_artifacts=artifacts, algorithms=["sha256", "md5"])
    assert res["changed"] and res["manifest_found"] and res["custody_found"]
    assert res["manifest"]["artifacts"] == artifacts
    assert res["volume_hash"]["digests"]["sha256"] == before and "md5" in res["volume_hash"]["digests"]
    assert [f["verified"] for f in res["files"]] == [True, True]
    (rec,) = _records(image)
    assert rec == dict(res["record"]["record"], recorded_at=rec["recorded_at"])
    assert rec["files"] == sorted(files) and rec["volume"] == image and rec["volume_digests"]["sha256"] == before
    assert rec["result"] == "verified" and rec["verified_on"] == "collector1" and rec["case_id"] == CASE
    assert res["record"]["line"] == 1
    # mounted read-only: the kernel refuses a write, and the image's bytes did not change
    with pytest.raises(OSError):
        open(os.path.join(res["case_dir"], "new"), "w").close()
    # again, the volume still mounted: a second record, earlier ones kept
    dummy, again = _run(tmp_path, image, source_artifacts=artifacts)
    assert not again["mount"]["changed"] and again["record"]["line"] == 2 and len(_records(image)) == 2
    # loop_mount state=absent takes back volume_verify's mount (the collector's unmount when no release follows)
    down = loop_mount.unmount(Journal(CASE, str(tmp_path / "journal")), CASE, image, str(tmp_path / "mnt"))
    assert down["changed"] and not os.path.ismount(str(tmp_path / "mnt"))
    assert hashlib.sha256(open(image, "rb").read()).hexdigest() == before


def test_a_case_folder_of_the_volume_and_no_manifest_is_verified_against_the_source(tmp_path, undo):
    files = {"vm/disk-flat.vmdk": os.urandom(5000)}
    image, artifacts = _volume(tmp_path, files, manifest=False, custody=False, subdir="case-7")
    dummy, res = _run(tmp_path, image, subdir="case-7", source_artifacts=artifacts)
    assert res["case_dir"] == str(tmp_path / "mnt" / "case-7")
    assert not res["manifest_found"] and res["manifest"] is None and not res["custody_found"]
    assert _records(image)[0]["files"] == ["vm/disk-flat.vmdk"]


def test_without_source_digests_the_manifest_on_the_volume_is_the_reference(tmp_path, undo):
    image, dummy = _volume(tmp_path, {"vm/a.raw": b"a" * 4096})
    dummy, res = _run(tmp_path, image)
    assert [f["verified"] for f in res["files"]] == [True]


def test_neither_a_manifest_nor_source_digests_is_refused(tmp_path, undo):
    image, dummy = _volume(tmp_path, {"vm/a.raw": b"a"}, manifest=False)
    with pytest.raises(ManifestError) as err:
        _run(tmp_path, image)
    assert "holds no case manifest" in err.value.message and "nothing to verify" in err.value.message
    assert err.value.details["changed"] is True  # it was mounted; the teardown takes it back
    assert not os.path.exists(image + ".verified.jsonl")


def test_a_manifest_that_differs_from_the_source_digests_is_refused(tmp_path, undo):
    image, artifacts = _volume(tmp_path, {"vm/a.raw": b"a", "vm/b.raw": b"b"})
    told = json.loads(json.dumps(artifacts))
    told["vm/b.raw"]["digests"]["sha256"] = "0" * 64
    told["vm/c.raw"] = dict(told["vm/a.raw"], path="vm/c.raw")
    with pytest.raises(ManifestError) as err:
        _run(tmp_path, image, source_artifacts=told)
    assert "does not list the artifacts and digests that host reported" in err.value.message
    assert err.value.details["differ"] == ["vm/b.raw", "vm/c.raw"]
    assert not os.path.exists(image + ".verified.jsonl")


def test_an_artifact_that_changed_fails_naming_it_and_writes_no_record(tmp_path, undo):
    image, artifacts = _volume(tmp_path, {"vm/a.raw": b"a" * 100, "vm/b.raw": b"b" * 100}, manifest=False)
    told = json.loads(json.dumps(artifacts))
    told["vm/b.raw"]["digests"]["sha256"] = hashlib.sha256(b"c" * 100).hexdigest()
    with pytest.raises(HashMismatchError) as err:
        _run(tmp_path, image, source_artifacts=told)
    assert len(err.value.details["mismatches"]) == 1 and "vm/b.raw: sha256 expected" in err.value.details["mismatches"][0]
    assert not os.path.exists(image + ".verified.jsonl")


@pytest.mark.parametrize("name", ["manifest.json", "custody.jsonl"])
def test_a_link_in_place_of_a_record_is_refused(tmp_path, undo, name):
    image, artifacts = _volume(tmp_path, {"vm/a.raw": b"a"}, manifest=name != "manifest.json",
                               custody=name != "custody.jsonl", extra={name: "/etc/passwd"})
    with pytest.raises(ManifestError) as err:
        _run(tmp_path, image, source_artifacts=artifacts)
    assert "is not a regular file" in err.value.message and name in err.value.message


@pytest.mark.parametrize("artifact, says", [
    ({"path": "../../etc/passwd"}, "not inside the case folder"),
    ({"digests": {}}, "has no digests"),
    ({"digests": "0" * 64}, "has no digests"),
    ("vm/a.raw", "is not described by an object"),
])
def test_an_artifact_outside_the_case_or_without_digests_is_refused(tmp_path, undo, artifact, says):
    image, artifacts = _volume(tmp_path, {"vm/a.raw": b"a"}, manifest=False)
    told = dict(artifacts["vm/a.raw"], **artifact) if isinstance(artifact, dict) else artifact
    with pytest.raises(ManifestError) as err:
        _run(tmp_path, image, source_artifacts={"x": told})
    assert says in err.value.message


def test_the_module_checks_then_verifies(tmp_path):
    image, artifacts = _volume(tmp_path, {"vm/a.raw": b"a" * 1000})
    args = dict(case_id=CASE, journal_dir=str(tmp_path / "journal"), image=image, mountpoint=str(tmp_path / "mnt"),
                source_artifacts=artifacts, record=image + ".verified.jsonl", volume="kvm1", verified_on="collector1")
    ok, plan, out = ansible_module("volume_verify", args, check=True)
    assert ok and plan["changed"] and any("read-only loop device" in s for s in plan["plan"]), out
    assert not os.path.ismount(str(tmp_path / "mnt")) and not os.path.exists(image + ".verified.jsonl")
    ok, res, out = ansible_module("volume_verify", args)
    try:
        assert ok and res["changed"] and res["record"]["line"] == 1 and res["files"][0]["verified"], out
    finally:
        ok, down, out = ansible_module("teardown", dict(case_id=CASE, journal_dir=str(tmp_path / "journal")))
    assert ok and not os.path.ismount(str(tmp_path / "mnt")), out
