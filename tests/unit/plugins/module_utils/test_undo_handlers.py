# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_journal.handlers: teardown imports only the undo handlers its journal needs, and finds every one it may need."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import sys

import pytest

PKG = "ansible_collections.dfir.vmcollect.plugins.module_utils."
# every module that registers undo handlers (the teardown module imported them all before _journal.handlers)
HANDLER_MODULES = ["_journal.lock", "_journal.running", "_kvm.snapshot", "_kvm.memory", "_iscsi.target", "_iscsi.initiator",
                   "_vsphere.snapshot", "_vsphere.clone", "_esxi_shell.clone", "_vsphere.storage", "_esxi_shell.storage"]


def _python(code):
    """Run ``code`` in a new interpreter (nothing imported yet) on this test's path; its last line is JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _all_actions():
    return _python("import importlib, json\n"
                   "from %s_journal.journal import UNDO_HANDLERS\n"
                   "for m in %r: importlib.import_module(%r + m)\n"
                   "print(json.dumps(sorted(UNDO_HANDLERS)))" % (PKG, HANDLER_MODULES, PKG))


ACTIONS = _all_actions()


def test_every_handler_module_is_known():
    assert len(ACTIONS) >= 28 and "lock.held" in ACTIONS and "vsphere.vmfs_datastore" in ACTIONS


@pytest.mark.parametrize("action", ACTIONS)
def test_a_journal_action_loads_its_handler_alone(action):
    got = _python("import json, sys\n"
                  "from %s_journal.journal import Journal, UNDO_HANDLERS\n"
                  "from %s_journal import handlers\n"
                  "before = set(sys.modules)\n"
                  "handlers.load(%r)\n"
                  "print(json.dumps({'found': %r in UNDO_HANDLERS, 'libvirt': 'libvirt' in sys.modules,\n"
                  "                  'vsphere': any('_vsphere' in m for m in sys.modules)}))" % (PKG, PKG, action, action))
    assert got["found"]
    # what a KVM host's or the collector's teardown loads: no pyVmomi client, and libvirt only for a KVM change
    assert got["vsphere"] == action.startswith("vsphere.")
    if action.startswith(("lock.", "module.", "tgt.", "nft.", "iscsi.", "file.", "sysctl")):
        assert not got["libvirt"]


def test_an_unknown_action_loads_every_handler_then_is_refused(tmp_path):
    got = _python("import json\n"
                  "from %s_journal.journal import Journal, JournalError, UNDO_HANDLERS\n"
                  "from %s_journal import handlers, lock\n"
                  "j = Journal('case-h', %r)\n"
                  "j.record_change('lock.held', {'path': %r}, 'a lock')\n"
                  "with open(j.path, 'a') as f:\n"
                  "    f.write(json.dumps({'kind': 'change', 'id': 'x1', 'seq': 99, 'action': 'future.thing', 'undo': {},\n"
                  "                        'description': 'a change of a later version'}) + '\\n')\n"
                  "try:\n"
                  "    j.teardown()\n"
                  "    msg = ''\n"
                  "except JournalError as exc:\n"
                  "    msg = str(exc)\n"
                  "print(json.dumps({'msg': msg, 'all': sorted(UNDO_HANDLERS)}))"
                  % (PKG, PKG, str(tmp_path / "journal"), str(tmp_path / "nothing.lock")))
    assert "cannot undo" in got["msg"] and "future.thing" in got["msg"]
    assert set(ACTIONS) <= set(got["all"])


def test_teardowns_argument_spec_imports_no_ssh_client_and_no_handler():
    """teardown's ``ssh`` option comes from _argspec: building its argument spec loads neither the SSH client (paramiko)
    nor any handler module; a journal of the host's changes loads what it names, no more."""
    got = _python("import json, sys\n"
                  "from %s_argspec import journal_spec, ssh_option_spec\n"
                  "from %s_journal import handlers\n"
                  "spec = dict(ssh=ssh_option_spec(), **journal_spec())\n"
                  "print(json.dumps({'ssh': any(m.endswith(('_ssh.client', '_esxi_shell.host')) for m in sys.modules),\n"
                  "                  'paramiko': 'paramiko' in sys.modules,\n"
                  "                  'port': spec['ssh']['options']['port']['default']}))" % (PKG, PKG))
    assert got == {"ssh": False, "paramiko": False, "port": 22}


def test_the_ssh_clients_defaults_are_the_ssh_options():
    from ansible_collections.dfir.vmcollect.plugins.module_utils import _argspec
    from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh import client
    options = _argspec.ssh_option_spec()["options"]
    assert options["port"]["default"] == client.DEFAULT_PORT == 22
    assert options["timeout"]["default"] == client.DEFAULT_TIMEOUT
    assert options["command_timeout"]["default"] == client.DEFAULT_COMMAND_TIMEOUT
