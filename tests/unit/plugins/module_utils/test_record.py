# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_record's logic (_evidence/record.py) on real files: append only, never rewrite."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import record as r
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError


def lines(path):
    with open(path, "rb") as f:
        return f.read().splitlines(True)


def test_create_then_append_never_rewrites(tmp_path):
    path = str(tmp_path / "case" / "lun.img.verified.json")
    first = r.append_record(path, {"sha256": "a" * 64, "verified": True}, create=True)
    assert first["changed"] and first["created"] and first["line"] == 1
    assert first["created_folders"] == [str(tmp_path / "case")]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(str(tmp_path / "case")).st_mode) == 0o750
    before = lines(path)
    assert hashlib.sha256(before[0]).hexdigest() == first["sha256"] and first["bytes"] == len(before[0])
    ino = os.stat(path).st_ino
    second = r.append_record(path, {"sha256": "b" * 64, "verified": False, "recorded_at": "2026-01-01T00:00:00Z"})
    after = lines(path)
    assert second["line"] == 2 and not second["created"] and second["created_folders"] == []
    assert after[0] == before[0], "the first record was rewritten"
    assert os.stat(path).st_ino == ino, "the file was replaced"
    assert json.loads(after[1].decode()) == {"sha256": "b" * 64, "verified": False, "recorded_at": "2026-01-01T00:00:00Z"}
    assert hashlib.sha256(after[1]).hexdigest() == second["sha256"]
    rec = json.loads(after[0].decode())
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", rec["recorded_at"])
    assert rec == first["record"]


def test_one_line_whatever_the_record_holds(tmp_path):
    path = str(tmp_path / "r.jsonl")
    res = r.append_record(path, {"note": "two\nlines", "name": "caf\u00e9", "nested": {"b": [1, 2]}}, create=True)
    (line,) = lines(path)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.decode("ascii")
    assert json.loads(line.decode())["note"] == "two\nlines" and res["record"]["name"] == "caf\u00e9"


def test_missing_file_or_folder_without_create(tmp_path):
    with pytest.raises(DestinationError, match="does not exist; set create=true"):
        r.append_record(str(tmp_path / "none.jsonl"), {"a": 1})
    with pytest.raises(DestinationError, match="folder .* does not exist; set create=true"):
        r.append_record(str(tmp_path / "no" / "none.jsonl"), {"a": 1})
    assert os.listdir(str(tmp_path)) == []


def test_check_mode_writes_nothing(tmp_path):
    path = str(tmp_path / "sub" / "r.jsonl")
    res = r.append_record(path, {"a": 1}, create=True, check_mode=True)
    assert res["changed"] and res["created"] and res["line"] == 1 and res["created_folders"] == [str(tmp_path / "sub")]
    assert os.listdir(str(tmp_path)) == []
    r.append_record(path, {"a": 1}, create=True)
    r.append_record(path, {"a": 2})
    before = lines(path)
    res = r.append_record(path, {"a": 3}, check_mode=True)
    assert res["line"] == 3 and not res["created"] and lines(path) == before


def test_torn_last_line_is_refused_and_left(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":')
    with pytest.raises(DestinationError, match="last line of .* is not complete"):
        r.append_record(str(path), {"b": 2})
    assert path.read_bytes() == b'{"a":1}\n{"a":'


def test_refusals(tmp_path):
    with pytest.raises(InvalidInputError, match="not an absolute path"):
        r.append_record("rel.jsonl", {"a": 1}, create=True)
    with pytest.raises(InvalidInputError, match="cannot be written as JSON"):
        r.append_record(str(tmp_path / "r.jsonl"), {"a": float("nan")}, create=True)
    with pytest.raises(InvalidInputError, match="must be a dictionary"):
        r.append_record(str(tmp_path / "r.jsonl"), ["a"], create=True)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DestinationError, match="cannot be opened: Is a directory"):
        r.append_record(str(tmp_path / "dir.jsonl"), {"a": 1})
    with pytest.raises(DestinationError, match="not a regular file"):
        r.append_record(str(tmp_path / "dir.jsonl"), {"a": 1}, check_mode=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(DestinationError, match="is not a folder"):
        r.append_record(str(tmp_path / "file" / "r.jsonl"), {"a": 1}, create=True)


def test_concurrent_appends_each_get_a_line(tmp_path):
    """Writers in other processes at the same time: every record is one whole line, line numbers unique."""
    path = str(tmp_path / "r.jsonl")
    script = textwrap.dedent("""
        import json, sys
        sys.path[:0] = %r
        from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import record as r
        out = [r.append_record(sys.argv[1], {"writer": int(sys.argv[2]), "i": i, "pad": "x" * 5000}, create=True)["line"]
               for i in range(40)]
        print(json.dumps(out))
    """ % (sys.path,))
    procs = [subprocess.Popen([sys.executable, "-c", script, path, str(n)], stdout=subprocess.PIPE) for n in range(4)]
    numbers = []
    for p in procs:
        out, dummy = p.communicate(timeout=60)
        assert p.returncode == 0
        numbers += json.loads(out.decode())
    got = lines(path)
    assert sorted(numbers) == list(range(1, 161)) and len(got) == 160
    for n, line in enumerate(got, 1):
        rec = json.loads(line.decode())
        assert rec["pad"] == "x" * 5000
