# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""datastore_upload's input checks: every problem in one sentence each, before the host is asked anything. The writes
themselves are tested against the simulator (tests/integration/test_vmkfstools_clone.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import upload


def test_a_good_file_passes(tmp_path):
    src = tmp_path / "manifest.json"
    src.write_text("{}")
    upload.check_inputs([{"src": str(src), "dest": "[dfir-case-1] case-1/manifest.json"}])


def test_every_problem_is_named_at_once(tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.write_text("x")
    monkeypatch.setattr(upload, "MAX_FILE", 0)
    with pytest.raises(InvalidInputError) as err:
        upload.check_inputs([{"src": "relative/manifest.json", "dest": "[ds] a/manifest.json"},
                             {"src": str(big), "dest": "no datastore here"}])
    msg = err.value.message
    assert "files[0].src 'relative/manifest.json' is not an existing file" in msg
    assert "files[1].src %s holds more than 0 bytes" % big in msg
    assert msg.count("files[1].dest") == 1


def test_nothing_to_write_is_refused():
    with pytest.raises(InvalidInputError) as err:
        upload.check_inputs([])
    assert "files is empty" in err.value.message
