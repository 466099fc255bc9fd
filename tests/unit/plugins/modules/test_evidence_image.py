# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_image as Ansible runs it: check mode writes nothing, the records fit evidence_manifest, reruns change
nothing, failures are sentences."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.modules import evidence_image, evidence_manifest

testing = pytest.importorskip("ansible.module_utils.testing")  # ansible-core 2.19+
MIB = 1024 * 1024
MISSING = [t for t in ("qemu-img", "qemu-io", "ewfacquirestream", "ewfinfo") if not shutil.which(t)]
pytestmark = pytest.mark.skipif(bool(MISSING), reason="%s not installed (Debian packages qemu-utils, ewf-tools)"
                                % ", ".join(MISSING))


def _run(module, args, capsys):
    with testing.patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def case(tmp_path):
    """A case folder with vm/disks/vda-01.qcow2 over vda-00.raw (the header names a path outside, now gone)."""
    case = tmp_path / "case"
    disks = case / "vm" / "disks"
    disks.mkdir(parents=True)
    base = tmp_path / "orig.raw"
    with open(str(base), "wb") as f:
        f.truncate(4 * MIB)
        f.write(os.urandom(MIB))
    top = disks / "vda-01.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top), "4M"],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 3m 128k", str(top)], check=True,
                   stdout=subprocess.DEVNULL)
    ref = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(ref)], check=True)
    with open(str(ref), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.rename(str(base), str(disks / "vda-00.raw"))
    return {"dir": str(case), "sha256": digest}


def _args(case, **extra):
    args = {"case_dir": case["dir"], "disks": [{"target": "vda", "vm": "vm", "layers": [
        {"path": "vm/disks/vda-01.qcow2", "format": "qcow2"},
        {"path": os.path.join(case["dir"], "vm/disks/vda-00.raw"), "format": "raw"}]}]}
    args.update(extra)
    return args


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dummy, names in os.walk(folder) for n in names)


def test_check_mode_reads_headers_only(case, capsys):
    before = _files(case["dir"])
    out = _run(evidence_image, _args(case, e01=True, flatten=True, _ansible_check_mode=True), capsys)
    assert out["changed"] and not out.get("failed")
    disk = out["disks"][0]
    assert disk["logical"]["size"] == 4 * MIB and "digests" not in disk["logical"]
    assert disk["logical"]["chain"] == ["vm/disks/vda-01.qcow2", "vm/disks/vda-00.raw"]
    assert disk["e01"] == {"path": os.path.join(case["dir"], "vm/e01/vda.E01"), "exists": False,
                           "case_fields": {"case_number": "", "evidence_number": "vda", "examiner": "",
                                           "description": "", "notes": ""}}
    assert disk["flat"]["exists"] is False
    assert _files(case["dir"]) == before


def test_image_e01_flat_then_rerun_unchanged(case, capsys):
    fields = {"case_number": "case-42", "examiner": "J. Doe", "description": "vda", "notes": "n"}
    args = _args(case, algorithms=["sha256", "md5"], e01=True, e01_fields=fields, flatten=True)
    out = _run(evidence_image, args, capsys)
    assert out["changed"] and not out.get("failed"), out
    disk = out["disks"][0]
    logical = disk["logical"]
    assert logical["digests"]["sha256"] == case["sha256"] and set(logical["digests"]) == {"sha256", "md5"}
    assert logical["formats"] == ["qcow2", "raw"]
    assert logical["open"]["command"].startswith("qemu-img convert -O raw 'json:{")
    subprocess.run(["bash", "-c", logical["open"]["command"]], cwd=case["dir"], check=True)
    with open(os.path.join(case["dir"], "vm-vda.raw"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == case["sha256"]
    os.unlink(os.path.join(case["dir"], "vm-vda.raw"))
    e01 = disk["e01"]
    assert e01["kind"] == "e01" and e01["path"] == os.path.join(case["dir"], "vm/e01/vda.E01")
    assert e01["segments"] == ["vm/e01/vda.E01"] and e01["of"] == "vm/disks/vda-01.qcow2"
    assert e01["media_size"] == 4 * MIB and e01["media_digests"]["sha256"] == case["sha256"]
    assert e01["media_digests"]["md5"] == logical["digests"]["md5"] and len(e01["media_digests"]["sha1"]) == 40
    assert e01["case_fields"] == dict(fields, evidence_number="vda") and e01["written"]
    assert e01["tool"].startswith("ewfacquirestream ")
    assert disk["flat"]["path"] == os.path.join(case["dir"], "vm/disks/vda.flat.raw") and disk["flat"]["written"]
    # the manifest takes the E01 artifact as it is
    man = _run(evidence_manifest, {"case_dir": case["dir"], "case_id": "case-42", "artifacts": [e01]}, capsys)
    assert man["manifest"]["artifacts"]["vm/e01/vda.E01"]["media_digests"] == e01["media_digests"]
    again = _run(evidence_image, args, capsys)
    assert not again["changed"] and again["disks"][0]["logical"] == logical
    assert not again["disks"][0]["e01"]["written"] and not again["disks"][0]["flat"]["written"]


def test_failures_are_sentences(case, capsys):
    out = _run(evidence_image, _args(case, disks=[{"target": "vda", "vm": "vm", "layers": [
        {"path": "vm/disks/vda-01.qcow2", "format": "qcow2"}]}]), capsys)
    assert out["failed"] and not out["changed"] and "incomplete" in out["msg"]
    out = _run(evidence_image, _args(case, disks=[{"target": "vda", "vm": "vm", "layers": [
        {"path": "../outside.raw", "format": "raw"}]}]), capsys)
    assert out["failed"] and "not inside the case folder" in out["msg"]
    out = _run(evidence_image, _args(case, e01=True, e01_fields={"notes": "two\nlines"}), capsys)
    assert out["failed"] and "line break" in out["msg"] and not os.path.exists(os.path.join(case["dir"], "vm/e01"))
