# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_plan and evidence_record as Ansible runs them: result shape, check mode, failures as sentences."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

import pytest

from ansible_collections.dfir.vmcollect.plugins.modules import evidence_plan, evidence_record

testing = pytest.importorskip("ansible.module_utils.testing")  # ansible-core 2.19+
MIB = 1024 * 1024


def _run(module, args, capsys):
    with testing.patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def _image(tmp_path, name, data):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        f.write(os.urandom(data))
    return path


def test_plan_reads_only_in_check_mode_too(tmp_path, capsys):
    img = _image(tmp_path, "vda.raw", MIB)
    for check in (False, True):
        out = _run(evidence_plan, {"images": [img], "memory_bytes": 256 * MIB, "memory_method": "core_dump",
                                   "dest": str(tmp_path / "case"), "lun": "true", "_ansible_check_mode": check}, capsys)
        assert not out["changed"] and out["fits"] and not out.get("failed")
        assert out["memory"]["copies"] == 1 and out["lun_bytes"] >= 256 * MIB and "path" not in out
    assert not os.path.exists(str(tmp_path / "case"))


def test_plan_short_fails_with_the_plan_in_the_result(tmp_path, capsys):
    img = _image(tmp_path, "vda.raw", MIB)
    out = _run(evidence_plan, {"images": [img], "memory_bytes": 1 << 60, "memory_method": "pmemsave",
                               "dest": str(tmp_path / "case")}, capsys)
    assert out["failed"] and not out["changed"] and out["fits"] is False
    assert out["msg"].startswith("The destination %s has " % (tmp_path / "case"))
    assert out["msg"].endswith("Nothing was changed.") and "the biggest %s" % img in out["msg"]
    assert out["bytes_needed"] > out["bytes_free"] and out["images"][0]["path"] == img


def test_record_check_mode_then_append(tmp_path, capsys):
    path = str(tmp_path / "sub" / "lun.img.verified.json")
    out = _run(evidence_record, {"path": path, "record": {"ok": True}, "create": True, "_ansible_check_mode": True},
               capsys)
    assert out["changed"] and out["line"] == 1 and not os.path.exists(str(tmp_path / "sub"))
    out = _run(evidence_record, {"path": path, "record": {"ok": True}, "create": True}, capsys)
    assert out["changed"] and out["line"] == 1 and out["record"]["recorded_at"].endswith("Z")
    out = _run(evidence_record, {"path": path, "record": {"ok": False}}, capsys)
    assert out["line"] == 2
    with open(path) as f:
        assert [json.loads(line)["ok"] for line in f] == [True, False]
    out = _run(evidence_record, {"path": str(tmp_path / "none.json"), "record": {"ok": True}}, capsys)
    assert out["failed"] and not out["changed"] and "set create=true" in out["msg"]
