# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One case-id rule: module_utils/_case.py, used by the modules and by the test plugin dfir.vmcollect.case_id."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils import _case
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import journal
from ansible_collections.dfir.vmcollect.plugins.test import case_id as plugin

ACCEPTED = ["c", "0", "case-42", "Case_42.v2", "demo-20261121T233913Z", "a" * 128]
REFUSED = ["", ".", "..", "-case", "_case", ".hidden", "a" * 129, "case 42", "case/42", "case\n", "case\n42",
           "caf\u00e9", None, 42, ["case"], b"case"]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepted(value):
    assert _case.is_case_id(value)
    assert _case.check_case_id(value) == value
    assert plugin.TestModule().tests()["case_id"](value) is True


@pytest.mark.parametrize("value", REFUSED)
def test_refused(value):
    assert not _case.is_case_id(value)
    with pytest.raises(InvalidInputError, match="is not usable in file names"):
        _case.check_case_id(value)
    assert plugin.TestModule().tests()["case_id"](value) is False


def test_the_journal_applies_the_same_rule(tmp_path):
    assert journal.check_case_id is _case.check_case_id
    with pytest.raises(InvalidInputError):
        journal.Journal("case\n", str(tmp_path))


def _ansible_bin(name):
    found = os.path.join(os.path.dirname(sys.executable), name)
    return found if os.path.exists(found) else shutil.which(name)


@pytest.mark.skipif(not _ansible_bin("ansible"), reason="ansible-core is not installed beside this Python")
def test_plugin_in_a_template_and_its_documentation(tmp_path):
    import ansible_collections
    roots = [os.path.dirname(p) for p in ansible_collections.__path__ if os.path.isdir(os.path.join(p, "dfir", "vmcollect"))]
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=roots[0], ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    values = ["'case-42'", "'a' * 128", "'../x'", "42", "'a' * 129"]
    expr = "{{ [%s] }}" % ", ".join("(%s) is dfir.vmcollect.case_id" % v for v in values)
    done = subprocess.run([_ansible_bin("ansible"), "localhost", "-c", "local", "-m", "debug", "-a", "msg=" + expr],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout.split("=>", 1)[1])["msg"] == [True, True, False, False, False]
    doc = subprocess.run([_ansible_bin("ansible-doc"), "-t", "test", "--json", "dfir.vmcollect.case_id"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                         check=False)
    assert doc.returncode == 0, doc.stderr
    info = json.loads(doc.stdout)["dfir.vmcollect.case_id"]
    assert info["doc"]["name"] == "case_id" and "my_case_id is dfir.vmcollect.case_id" in info["examples"]
