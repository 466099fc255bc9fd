# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress lines of a long module run (plugin_utils/progress.py): their text, and the action that reads the
progress file while the module runs. The lab's acquisitions show them over SSH (tests/integration)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import threading
import time

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.dfir.vmcollect.plugins.plugin_utils import progress as pg

GIB = 1 << 30


def test_a_line_says_the_host_the_module_the_phase_the_bytes_the_rate_and_the_eta():
    state = {"phase": "copy", "src": "/var/lib/libvirt/images/vm.qcow2", "dest": "/evidence/c/vda-00-vm.qcow2",
             "bytes_done": 3 * GIB + GIB // 10, "bytes_total": 8 * GIB, "rate_mib_s": 70.4, "eta_s": 73.2,
             "updated": 1000.0}
    assert pg.format_progress("kvm1", "evidence_copy", state, 45.2, now=1001.0) == (
        "PROGRESS [kvm1] evidence_copy, 45s in: copy vda-00-vm.qcow2, 3.1 GiB of 8.0 GiB (38%), 70 MiB/s, ETA 1m13s")


def test_a_line_before_the_first_report_a_finished_phase_and_a_report_that_stopped_moving():
    assert pg.format_progress("c1", "hash_verify", None, 3700) == \
        "PROGRESS [c1] hash_verify, 1h01m40s in: at work, no progress reported yet"
    done = {"phase": "done", "dest": "/e/m.raw", "bytes_done": 5 << 20, "bytes_total": 5 << 20, "rate_mib_s": 9.0,
            "eta_s": 0.0}
    assert pg.format_progress("h", "evidence_copy", done, 2) == "PROGRESS [h] evidence_copy, 2s in: done m.raw, 5 MiB of 5 MiB (100%)"
    stalled = {"phase": "clone", "src": "[ds] vm/vm.vmdk", "bytes_done": 0, "bytes_total": GIB, "rate_mib_s": 0.0,
               "eta_s": None, "updated": 100.0}
    assert pg.format_progress("h", "vmkfstools_clone", stalled, 30, now=125.0) == \
        "PROGRESS [h] vmkfstools_clone, 30s in: clone vm.vmdk, 0 MiB of 1.0 GiB (0%), last report 25s ago"


@pytest.mark.parametrize("value, seconds", [(None, 15.0), ("", 15.0), (0, 0.0), ("0", 0.0), ("2.5", 2.5), (-3, 0.0)])
def test_the_interval_variable(value, seconds):
    assert pg.progress_interval(value) == seconds


def test_an_interval_that_is_not_a_number_is_refused():
    with pytest.raises(AnsibleActionFail, match="vmcollect_progress_interval must be a number of seconds"):
        pg.progress_interval("often")


def test_a_progress_file_read_while_it_is_replaced_is_no_progress():
    assert pg.parse_progress("") is None and pg.parse_progress("[1]") is None
    assert pg.parse_progress('{"phase": "copy"}') == {"phase": "copy"}


# -- the action, with the module and the connection faked: what it runs, what it shows, what it removes ------------

class _Shell(object):
    tmpdir = None


class _Connection(object):
    """Runs the action's reading of the progress file on this machine, as a remote shell would."""
    allow_executable = True
    has_native_async = False
    transport = "fake"

    def __init__(self):
        self._shell = _Shell()
        self.commands = []

    def exec_command(self, cmd, in_data=None, sudoable=True):
        self.commands.append((cmd, sudoable))
        done = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        return done.returncode, done.stdout, done.stderr


class _Task(object):
    def __init__(self, args, check_mode=False, async_val=0):
        self.args = args
        self.check_mode = check_mode
        self.async_val = async_val
        self.action = "dfir.vmcollect.evidence_copy"
        self.diff = False


class _PlayContext(object):
    executable = "/bin/sh"


class _Templar(object):
    @staticmethod
    def template(value):
        return value


def _action(tmp_path, monkeypatch, args=None, check_mode=False, async_val=0, module=None):
    """A ProgressAction whose module run is ``module(args)`` (in the worker thread) and whose temporary folder is
    made under ``tmp_path``; returns (action, calls, lines)."""
    action = pg.ProgressAction.__new__(pg.ProgressAction)
    action._task = _Task(dict(args or {"src": "/s", "dest": "/d"}), check_mode, async_val)
    action._connection = _Connection()
    action._play_context = _PlayContext()
    action._templar = _Templar()
    calls = {"module": [], "removed": []}
    lines = []
    monkeypatch.setattr(pg.display, "display", lines.append)
    monkeypatch.setattr(pg.ActionBase, "run", lambda self, tmp=None, task_vars=None: {})

    def make_tmp_path():
        path = str(tmp_path / "ansible-tmp-1")
        os.mkdir(path)
        action._connection._shell.tmpdir = path
        return path

    def remove_tmp_path(path):
        calls["removed"].append(path)
        action._connection._shell.tmpdir = None

    def execute_module(module_args=None, task_vars=None, wrap_async=False):
        calls["module"].append((dict(module_args if module_args is not None else action._task.args), wrap_async))
        return module(module_args) if module else {"changed": True}

    action._make_tmp_path = make_tmp_path
    action._remove_tmp_path = remove_tmp_path
    action._execute_module = execute_module
    return action, calls, lines


def _slow_copy(args):
    """A module that works for 0.6 s and reports its progress as evidence_copy does."""
    for step in range(1, 4):
        with open(args["progress_file"] + ".tmp", "w") as f:
            json.dump({"phase": "copy", "dest": args["dest"], "bytes_done": step * GIB, "bytes_total": 3 * GIB,
                       "rate_mib_s": 100.0, "eta_s": 1.0, "updated": time.time()}, f)
        os.rename(args["progress_file"] + ".tmp", args["progress_file"])
        time.sleep(0.2)
    return {"changed": True, "dest_digests": {"sha256": "ab"}}


def test_the_module_runs_in_a_thread_while_its_progress_file_is_read_then_the_folder_goes(tmp_path, monkeypatch):
    action, calls, lines = _action(tmp_path, monkeypatch, module=_slow_copy)
    result = action.run(task_vars={"vmcollect_progress_interval": 0.1, "inventory_hostname": "kvm1"})
    assert result == {"changed": True, "dest_digests": {"sha256": "ab"}}
    ((args, wrap_async),) = calls["module"]
    assert args == {"src": "/s", "dest": "/d", "progress_file": str(tmp_path / "ansible-tmp-1" / "progress.json")}
    assert not wrap_async
    assert calls["removed"] == [str(tmp_path / "ansible-tmp-1")]
    assert len(lines) >= 3 and all(line.startswith("PROGRESS [kvm1] evidence_copy, ") for line in lines)
    assert any(" GiB of 3.0 GiB (" in line for line in lines)
    # each reading is one command, never with become, never a module run
    assert all(not sudoable and "cat -- " in cmd for cmd, sudoable in action._connection.commands)


def test_a_run_shorter_than_the_interval_shows_no_line(tmp_path, monkeypatch):
    action, calls, lines = _action(tmp_path, monkeypatch)
    assert action.run(task_vars={"vmcollect_progress_interval": 30}) == {"changed": True}
    assert lines == [] and action._connection.commands == [] and len(calls["removed"]) == 1


def test_a_progress_file_of_the_tasks_own_is_read_where_it_is(tmp_path, monkeypatch):
    own = str(tmp_path / "mine.json")
    action, calls, lines = _action(tmp_path, monkeypatch, args={"src": "/s", "dest": "/d", "progress_file": own},
                                   module=_slow_copy)
    action.run(task_vars={"vmcollect_progress_interval": 0.1})
    assert calls["module"][0][0]["progress_file"] == own and os.path.exists(own)
    assert not os.path.exists(str(tmp_path / "ansible-tmp-1")) and lines


@pytest.mark.parametrize("how", ["interval 0", "check mode", "async"])
def test_check_mode_async_and_interval_0_run_the_module_as_the_normal_action_does(tmp_path, monkeypatch, how):
    action, calls, lines = _action(tmp_path, monkeypatch, check_mode=how == "check mode",
                                   async_val=600 if how == "async" else 0)
    action.run(task_vars={"vmcollect_progress_interval": 0 if how == "interval 0" else 0.1})
    ((args, wrap_async),) = calls["module"]
    assert "progress_file" not in args and lines == [] and bool(wrap_async) == (how == "async")
    assert calls["removed"] == ([] if how == "async" else [None])


def test_a_module_that_fails_in_its_thread_fails_the_task_and_the_folder_still_goes(tmp_path, monkeypatch):
    def broken(args):
        time.sleep(0.15)
        raise RuntimeError("connection lost")

    action, calls, lines = _action(tmp_path, monkeypatch, module=broken)
    with pytest.raises(RuntimeError, match="connection lost"):
        action.run(task_vars={"vmcollect_progress_interval": 0.05})
    assert calls["removed"] == [str(tmp_path / "ansible-tmp-1")]
    assert lines and lines[0].endswith("at work, no progress reported yet")
    assert threading.active_count() >= 1
