# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The teardown module as Ansible runs it: its connection option reaches the undo handlers and nothing else."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import journal as j
from ansible_collections.dfir.vmcollect.plugins.modules import teardown

testing = pytest.importorskip("ansible.module_utils.testing")  # ansible-core 2.19+

PASSWORD = "vCenter-Secret-99"
SEEN = []


@j.undo_handler("test.module_remote")
def _undo_remote(undo, ctx):
    SEEN.append(dict(ctx.options))
    opts = ctx.options
    return "removed %s on %s as %s (password %s)" % (undo["thing"], opts.get("hostname"), opts.get("username"),
                                                     opts.get("password"))


def _run(args, capsys):
    with testing.patch_module_args(args):
        with pytest.raises(SystemExit):
            teardown.main()
    return json.loads(capsys.readouterr().out)


def test_connection_reaches_the_handler_and_is_neither_journaled_nor_returned(tmp_path, capsys):
    del SEEN[:]
    journal = j.Journal("case-td", str(tmp_path / "journal"))
    journal.record_change("test.module_remote", {"thing": "snapshot vmcollect-1"}, "a snapshot on the ESXi host")
    out = _run({"case_id": "case-td", "journal_dir": str(tmp_path / "journal"), "keep_journal": True,
                "connection": {"hostname": "vcsim.lab", "username": "administrator", "password": PASSWORD}}, capsys)
    assert SEEN == [{"hostname": "vcsim.lab", "username": "administrator", "password": PASSWORD,
                     "validate_certs": True}]
    assert out["changed"] and not out.get("failed")
    assert out["undone"][0]["result"] == "removed snapshot vmcollect-1 on vcsim.lab as administrator (password ********)"
    assert PASSWORD not in json.dumps(out)  # not in the result, the records or the echoed invocation
    with open(journal.path) as f:
        assert PASSWORD not in f.read()


def test_without_connection_handlers_get_empty_options(tmp_path, capsys):
    del SEEN[:]
    j.Journal("case-td", str(tmp_path / "journal")).record_change("test.module_remote", {"thing": "x"}, "x")
    out = _run({"case_id": "case-td", "journal_dir": str(tmp_path / "journal")}, capsys)
    assert SEEN == [{}] and out["removed"]


def test_the_password_is_no_log():
    spec = teardown.argument_spec()["connection"]["options"]
    assert spec["password"]["no_log"] is True
    assert not any(o.get("no_log") for k, o in spec.items() if k != "password")
