# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The case manifest on real folders; SHA256SUMS checked with sha256sum -c itself."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import manifest as m
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, ManifestError
from ansible_collections.dfir.vmcollect.plugins.module_utils._version import VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def _artifact(case, rel, data):
    path = os.path.join(case, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    digest = hashlib.sha256(data).hexdigest()
    return {"path": path, "kind": "disk", "size": len(data), "digests": {"sha256": digest},
            "dest_digests": {"sha256": digest}, "method": "test"}


def test_manifest_and_sums_verify_with_sha256sum(tmp_path):
    case = str(tmp_path / "case 42")
    os.mkdir(case)
    arts = [_artifact(case, "Windows XP/disk 1.vmdk", b"a" * 1000), _artifact(case, "mem.raw", b"b" * 10)]
    result = m.update(case, "case-42", examiner="J. Doe", artifacts=arts, tools={"qemu": "7.2"})
    assert result["changed"]
    manifest = json.load(open(result["paths"]["manifest"]))
    assert manifest["case"]["examiner"] == "J. Doe" and manifest["case"]["created"].endswith("Z")
    assert set(manifest["artifacts"]) == {"Windows XP/disk 1.vmdk", "mem.raw"}
    assert manifest["tools"] == {"qemu": "7.2", "dfir.vmcollect": VERSION}
    subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=case, check=True, stdout=subprocess.DEVNULL)


def test_idempotent_merge_and_no_write_when_unchanged(tmp_path):
    case = str(tmp_path)
    art = _artifact(case, "a.raw", b"x")
    m.update(case, "c1", artifacts=[art])
    before = os.stat(os.path.join(case, m.MANIFEST)).st_mtime_ns
    again = m.update(case, "c1", artifacts=[art])
    assert not again["changed"]
    assert os.stat(os.path.join(case, m.MANIFEST)).st_mtime_ns == before
    second = _artifact(case, "b.raw", b"y")
    merged = m.update(case, "c1", artifacts=[second])
    assert merged["changed"] and set(merged["manifest"]["artifacts"]) == {"a.raw", "b.raw"}


def test_check_mode_writes_nothing(tmp_path):
    result = m.update(str(tmp_path), "c1", artifacts=[_artifact(str(tmp_path), "a", b"1")], check_mode=True)
    assert result["changed"] and not os.path.exists(result["paths"]["manifest"])


def test_refusals(tmp_path):
    case = str(tmp_path / "case")
    os.mkdir(case)
    m.update(case, "case-1", artifacts=[_artifact(case, "a", b"1")])
    with pytest.raises(ManifestError, match="holds case case-1, not case-2"):
        m.update(case, "case-2")
    with pytest.raises(InvalidInputError, match="not inside the case folder"):
        m.update(case, "case-1", artifacts=[{"path": str(tmp_path / "outside")}])
    with pytest.raises(ManifestError, match="does not exist"):
        m.update(str(tmp_path / "nope"), "case-1")
    with open(os.path.join(case, m.MANIFEST), "w") as f:
        f.write("{broken")
    with pytest.raises(ManifestError, match="cannot be read"):
        m.update(case, "case-1")


def test_version_matches_galaxy_yml():
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        assert re.search(r"^version: %s$" % re.escape(VERSION), f.read(), re.M)
