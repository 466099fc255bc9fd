# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a long module run (a copy, a fetch, a clone, a hash), shown while it runs.

A module that takes ``progress_file`` rewrites that JSON file (atomic replace, at most once a second) as it works:
``phase``, ``bytes_done``, ``bytes_total``, ``rate_mib_s``, ``eta_s``, ``src``, ``dest``, ``updated``. Its action plugin
(``ProgressAction``) runs the module as the ``normal`` action does, in a thread of the worker, and meanwhile reads
that file every ``vmcollect_progress_interval`` seconds (a variable, default ``DEFAULT_INTERVAL``; ``0`` turns it
off) over a copy of the task's connection: one ``cat`` per reading, no module run. Each reading becomes a line of
``ansible-playbook``'s output, which AWX and ansible-runner record as a job event, so a job's idle timeout does not
kill a long copy that is making progress. A module run shorter than the interval shows no line and costs nothing more
than the progress folder: the action's remote temporary folder, made before and removed after the run, as for a
module that is not pipelined. A ``progress_file`` the task gives itself is read where it is and left there.

The module runs as it would without the plugin (pipelined, one connection, the same arguments but the progress file),
so what it journals, how a killed playbook leaves it (running on to its end, stopped by the case's teardown) and what
it returns are unchanged. Check mode and ``async`` tasks run the module exactly as the ``normal`` action does.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import json
import posixpath
import shlex
import threading
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

display = Display()

DEFAULT_INTERVAL = 15.0  # seconds between two progress lines
INTERVAL_VAR = "vmcollect_progress_interval"
PROGRESS_NAME = "progress.json"
GIB = 1024.0 ** 3
MIB = 1024.0 ** 2


def progress_interval(value):
    """The interval in seconds from the variable's value (None: the default); 0 or less turns progress off."""
    if value is None or value == "":
        return DEFAULT_INTERVAL
    try:
        interval = float(value)
    except (TypeError, ValueError):
        raise AnsibleActionFail("%s must be a number of seconds (0 turns progress off), not %r." % (INTERVAL_VAR, value))
    return max(interval, 0.0)


def _size(count):
    if count >= GIB:
        return "%.1f GiB" % (count / GIB)
    return "%.0f MiB" % (count / MIB)


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return "%dh%02dm%02ds" % (hours, minutes, seconds)
    if minutes:
        return "%dm%02ds" % (minutes, seconds)
    return "%ds" % seconds


def format_progress(host, action, state, elapsed, now=None):
    """One line of progress: ``host``, the module's short name, what the progress file said (``state``: dict or
    None when there is none yet) and the seconds the run has taken (``elapsed``). ``now`` (Unix time) tells a report
    that stopped moving: its age is shown when it is older than a few seconds."""
    head = "PROGRESS [%s] %s, %s in" % (host, action, _duration(elapsed))
    if not state:
        return "%s: at work, no progress reported yet" % head
    name = posixpath.basename(to_text(state.get("dest") or state.get("src") or ""))
    phase = state.get("phase") or "work"
    done = state.get("bytes_done") or 0
    total = state.get("bytes_total") or 0
    parts = ["%s %s" % (phase, name) if name else phase]
    if total:
        parts.append("%s of %s (%d%%)" % (_size(done), _size(total), int(100.0 * done / total)))
    elif done:
        parts.append(_size(done))
    if state.get("rate_mib_s") and phase != "done":
        parts.append("%.0f MiB/s" % float(state["rate_mib_s"]))
    if state.get("eta_s") is not None and phase != "done":
        parts.append("ETA %s" % _duration(float(state["eta_s"])))
    if now is not None and state.get("updated"):
        age = now - float(state["updated"])
        if age >= 5:
            parts.append("last report %s ago" % _duration(age))
    return "%s: %s" % (head, ", ".join(parts))


def parse_progress(text):
    """The progress file's JSON object, or None (not written yet, or read while it was being replaced)."""
    try:
        state = json.loads(text)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


class ProgressAction(ActionBase):
    """The ``normal`` action, plus progress lines while the module runs (see the module docstring)."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super(ProgressAction, self).run(tmp, task_vars)
        del tmp  # tmp no longer has any effect
        task_vars = task_vars or {}
        interval = progress_interval(self._templar.template(task_vars.get(INTERVAL_VAR)))
        wrap_async = self._task.async_val and not self._connection.has_native_async
        if wrap_async or self._task.check_mode or not interval:
            result = merge_hash(result, self._execute_module(task_vars=task_vars, wrap_async=wrap_async))
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        try:
            result = merge_hash(result, self._run_watched(task_vars, interval))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _run_watched(self, task_vars, interval):
        args = dict(self._task.args)
        if not args.get("progress_file"):
            args["progress_file"] = posixpath.join(self._make_tmp_path(), PROGRESS_NAME)
        outcome = {}

        def work():
            try:
                outcome["result"] = self._execute_module(module_args=args, task_vars=task_vars)
            # handed to the task's own thread, which raises it
            except BaseException as e:  # pylint: disable=broad-except
                outcome["error"] = e

        worker = threading.Thread(target=work, name="vmcollect-module")
        worker.daemon = True  # a killed worker process does not wait for it
        started = time.monotonic()
        worker.start()
        reader = None
        action = self._task.action.rsplit(".", 1)[-1]
        host = task_vars.get("inventory_hostname", "?")
        while True:
            worker.join(interval)
            if not worker.is_alive():
                break
            if reader is None:
                reader = copy.copy(self._connection)  # its own command state; the module's run keeps the original
            state = self._read(reader, args["progress_file"])
            display.display(format_progress(host, action, state, time.monotonic() - started, time.time()))
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _read(self, connection, path):
        """The progress file's state, read with one command over ``connection``; None when it cannot be read."""
        command = "cat -- %s 2>/dev/null" % shlex.quote(path)
        if connection.allow_executable and self._play_context.executable:
            command = "%s -c %s" % (self._play_context.executable, shlex.quote(command))
        try:
            rc, stdout, dummy = connection.exec_command(command, sudoable=False)
        # a failed reading is a missed line, not a failed task
        except Exception as e:  # pylint: disable=broad-except
            display.vvv("Progress not read from %s: %s" % (path, to_text(e)))
            return None
        if rc != 0:
            return None
        return parse_progress(to_text(stdout, errors="surrogate_or_replace"))
