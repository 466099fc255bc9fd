# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The custody log (_evidence/custody.py) on real files: a hash chain sha256sum can check, append only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import custody as c
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import CustodyError, InvalidInputError

CONTROLLER = {"user": "jdoe", "host": "ws1", "extra_vars": {"kvm_acquire_case_id": "case-1",
                                                            "esxi_acquire_password": "s3cret",
                                                            "nested": {"chap_secret": "x", "ok": 1}}}


def ev(name, **details):
    return {"event": name, "module": "test", "summary": "%s happened." % name, "details": details}


def raw(path):
    with open(path, "rb") as f:
        return f.read()


def test_chain_is_what_sha256sum_prints(tmp_path):
    path = str(tmp_path / "case" / c.NAME)
    first = c.append(path, "case-1", [ev("plan"), ev("freeze")], controller=CONTROLLER)
    assert first["created"] and first["changed"] and first["first_seq"] == 1 and first["records"] == 2
    second = c.append(path, "case-1", [ev("copy", bytes=5)])
    assert second["first_seq"] == 3 and not second["created"]
    lines = raw(path).splitlines(True)
    assert len(lines) == 3
    recs = [json.loads(line) for line in lines]
    assert recs[0]["prev"] == c.GENESIS and [r["seq"] for r in recs] == [1, 2, 3]
    for before, rec in zip(lines, recs[1:]):
        # the digest of the line before, as a person checks it with coreutils
        out = subprocess.run(["sha256sum"], input=before, stdout=subprocess.PIPE, check=True).stdout
        assert rec["prev"] == out.split()[0].decode()
    assert recs[0]["controller"]["extra_vars"]["esxi_acquire_password"] == c.REDACTED
    assert recs[0]["controller"]["extra_vars"]["nested"] == {"chap_secret": c.REDACTED, "ok": 1}
    assert b"s3cret" not in raw(path)
    assert recs[0]["controller"]["collection_version"]
    assert c.verify(path)["records"] == 3


@pytest.mark.parametrize("tamper", ["change", "remove", "swap", "insert", "truncate"])
def test_any_change_breaks_the_chain_and_nothing_is_appended(tmp_path, tamper):
    path = str(tmp_path / c.NAME)
    c.append(path, "case-1", [ev("plan"), ev("freeze"), ev("copy"), ev("manifest")])
    lines = raw(path).splitlines(True)
    if tamper == "change":
        lines[1] = lines[1].replace(b"freeze happened", b"freeze hapPened")
    elif tamper == "remove":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    with open(path, "wb") as f:
        f.write(b"".join(lines)[:-3] if tamper == "truncate" else b"".join(lines))
    before = raw(path)
    with pytest.raises(CustodyError) as err:
        c.append(path, "case-1", [ev("verify")])
    assert err.value.details["broken_at"] in (2, 3, 4)
    with pytest.raises(CustodyError):
        c.verify(path)
    assert raw(path) == before


def test_a_rewritten_but_equal_record_is_refused(tmp_path):
    path = str(tmp_path / c.NAME)
    c.append(path, "case-1", [ev("plan")])
    rec = json.loads(raw(path))
    with open(path, "w") as f:
        f.write(json.dumps(rec, indent=None) + "\n")  # same facts, other spacing: the digest the next line holds differs
    with pytest.raises(CustodyError, match="canonical form"):
        c.verify(path)


def test_continue_from_copies_then_checks_the_prefix(tmp_path):
    volume = str(tmp_path / "volume" / c.NAME)
    c.append(volume, "case-1", [ev("plan"), ev("manifest")])
    collector = str(tmp_path / "collector" / c.NAME)
    out = c.append(collector, "case-1", [ev("readonly"), ev("verify")], continue_from=volume)
    assert out["imported"] and out["first_seq"] == 3 and out["records"] == 4
    assert raw(collector).startswith(raw(volume))
    again = c.append(collector, "case-1", [ev("reverify")], continue_from=volume)
    assert not again["imported"] and again["first_seq"] == 5
    assert c.verify(collector)["records"] == 5
    with open(volume, "ab") as f:  # the volume's log grew after the copy: the two no longer agree
        f.write(b"")
    other = str(tmp_path / "other" / c.NAME)
    c.append(other, "case-1", [ev("plan")])
    with pytest.raises(CustodyError, match="does not begin with"):
        c.append(collector, "case-1", [ev("reverify")], continue_from=other)


def test_check_mode_writes_nothing_and_counts(tmp_path):
    path = str(tmp_path / "new" / c.NAME)
    out = c.append(path, "case-1", [ev("plan")], check_mode=True)
    assert out["changed"] and out["first_seq"] == 1 and out["created_folders"]
    assert not (tmp_path / "new").exists()


def test_other_case_and_bad_events_refused(tmp_path):
    path = str(tmp_path / c.NAME)
    c.append(path, "case-1", [ev("plan")])
    with pytest.raises(CustodyError, match="belongs to case case-1"):
        c.append(path, "case-2", [ev("plan")])
    with pytest.raises(InvalidInputError):
        c.append(path, "case-1", [{"event": "Not One Word"}])
    with pytest.raises(InvalidInputError):
        c.append(path, "case-1", [{"event": "plan", "extra": 1}])
    with pytest.raises(InvalidInputError):
        c.append("relative/custody.jsonl", "case-1", [ev("plan")])


def test_create_false_leaves_a_missing_log_missing(tmp_path):
    path = str(tmp_path / "no-case" / c.NAME)
    out = c.append(path, "case-1", [ev("teardown")], create=False)
    assert out["missing"] and not out["changed"] and not (tmp_path / "no-case").exists()
    c.append(path, "case-1", [ev("plan")])
    assert c.append(path, "case-1", [ev("teardown")], create=False)["first_seq"] == 2


def test_keep_copies_writes_byte_for_byte_once_and_replaces_a_changed_copy(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "manifest.json").write_bytes(b'{"artifacts": {}}\n')
    (volume / "SHA256SUMS").write_bytes(b"\x00binary \xff bytes\n")
    records = tmp_path / "records"
    records.mkdir()
    sources = [str(volume / "manifest.json"), str(volume / "SHA256SUMS")]
    assert c.keep_copies(str(records), sources, check_mode=True) == [str(records / "manifest.json"),
                                                                     str(records / "SHA256SUMS")]
    assert not list(records.iterdir())
    assert c.keep_copies(str(records), sources) == [str(records / "manifest.json"), str(records / "SHA256SUMS")]
    for name in ("manifest.json", "SHA256SUMS"):
        assert raw(str(records / name)) == raw(str(volume / name))
        assert (records / name).stat().st_mode & 0o777 == 0o640
    assert c.keep_copies(str(records), sources) == []
    (volume / "manifest.json").write_bytes(b'{"artifacts": {"a": 1}}\n')
    assert c.keep_copies(str(records), sources) == [str(records / "manifest.json")]
    assert raw(str(records / "manifest.json")) == b'{"artifacts": {"a": 1}}\n'
    assert sorted(p.name for p in records.iterdir()) == ["SHA256SUMS", "manifest.json"]


def test_keep_copies_refuses_a_relative_or_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="not an absolute path"):
        c.keep_copies(str(tmp_path), ["manifest.json"])
    with pytest.raises(Exception, match="cannot be read"):
        c.keep_copies(str(tmp_path), [str(tmp_path / "nope" / "manifest.json")])
    with pytest.raises(InvalidInputError, match="same name"):
        c.keep_copies(str(tmp_path), [str(tmp_path / "a" / "SHA256SUMS"), str(tmp_path / "b" / "SHA256SUMS")])


def test_keep_copies_checks_every_path_before_copying_any(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"{}\n")
    records = tmp_path / "records"
    records.mkdir()
    with pytest.raises(InvalidInputError, match="Nothing was copied"):
        c.keep_copies(str(records), [str(tmp_path / "manifest.json"), "SHA256SUMS"])
    assert not list(records.iterdir())


def test_append_keeping_appends_then_copies_and_leaves_a_missing_log_missing(tmp_path):
    """What evidence_custody and evidence_report's custody option run: the records first, then the copies beside."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "manifest.json").write_bytes(b'{"artifacts": {}}\n')
    host_log = str(volume / c.NAME)
    c.append(host_log, "case-1", [ev("plan")])
    path = str(tmp_path / "records" / c.NAME)
    keep = [str(volume / "manifest.json")]
    out = c.append_keeping(path, "case-1", [ev("verify")], continue_from=host_log, keep=keep)
    assert out["changed"] and out["imported"] and out["records"] == 2
    assert out["copied"] == [str(tmp_path / "records" / "manifest.json")]
    assert raw(str(tmp_path / "records" / "manifest.json")) == raw(keep[0])
    again = c.append_keeping(path, "case-1", [], continue_from=host_log, keep=keep)
    assert not again["changed"] and again["copied"] == []
    missing = c.append_keeping(str(tmp_path / "none" / c.NAME), "case-1", [ev("x")], keep=keep, create=False)
    assert missing["missing"] and missing["copied"] == [] and not (tmp_path / "none").exists()
