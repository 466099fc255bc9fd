# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one way this collection runs a program: argv without a shell, text out, and a bound on every wait.

``run()`` returns ``(rc, stdout, stderr)`` as text. Every call has a finite timeout (default
``DEFAULT_TIMEOUT``). A child that outlives it is killed with its whole process group (every child
starts in a session of its own), then waited for, with its pipes, for at most ``KILL_GRACE``
seconds: a child stuck in the kernel on dead storage (D state) cannot die, and a grandchild that
left the group can hold the pipes open forever. After that the pipes are closed and the call
returns ``TIMED_OUT_RC`` with ``timed out after N s`` as its stderr. A program that cannot be
started returns ``NOT_STARTED_RC`` and a sentence. Nothing is logged: argv, data and env are never
written anywhere by this module (a secret belongs in ``data`` or in an inherited pipe, never in argv).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import signal
import subprocess
import tempfile

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError

DEFAULT_TIMEOUT = 120.0
# seconds to wait for a killed child and its pipes before giving up on them
KILL_GRACE = 5.0
TIMED_OUT_RC = -9
NOT_STARTED_RC = 127


def _check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise InvalidInputError("A command needs a finite, positive timeout in seconds, not %r." % (timeout,))
    return float(timeout)


def _text(data):
    return data.decode("utf-8", "replace") if data else ""


def _kill_group(proc):
    """SIGKILL the child's process group (its session: it was started with start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # the group is gone already
        try:
            proc.kill()
        except OSError:
            pass


def _give_up(proc):
    """The killed child did not finish within KILL_GRACE: close our ends of its pipes and leave it."""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except (IOError, OSError):
                pass
    # proc.returncode stays None: subprocess keeps the Popen and reaps the child if it ever ends


def _timed_out(timeout):
    return "timed out after %g s" % timeout


def run(argv, data=None, timeout=DEFAULT_TIMEOUT, pass_fds=(), env=None, cwd=None, daemonizes=False):
    """Run ``argv`` (a list, no shell) and return ``(rc, stdout, stderr)`` as text.

    data: text written to the program's stdin (else stdin is /dev/null). pass_fds: file descriptors
    the program inherits. env: variables added to this process's environment. timeout: seconds
    (finite) before the program and its process group are killed; the call then returns rc -9 and
    "timed out after N s". daemonizes: the program forks a daemon and its foreground part exits
    (``tgtd``, ``qemu-storage-daemon --daemonize``); the daemon inherits stdout and stderr, so they go
    to temporary files instead of pipes and only the foreground process is waited for; ``data`` is
    refused then (it would pass through a file: hand a secret over an inherited pipe in ``pass_fds``).
    """
    timeout = _check_timeout(timeout)
    argv = [str(a) for a in argv]
    if daemonizes:
        if data is not None:
            raise InvalidInputError("A program that daemonizes gets no stdin data; pass a pipe in pass_fds.")
        return _run_daemonizing(argv, timeout, pass_fds, env, cwd)
    try:
        # not run_command (module_utils get no AnsibleModule): a child bounded in time, in a process group of its own
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(pass_fds),
                                close_fds=True, cwd=cwd, env=dict(os.environ, **env) if env else None,
                                start_new_session=True)
    except OSError as exc:
        return NOT_STARTED_RC, "", "%s cannot be started: %s" % (argv[0], exc.strerror or exc)
    try:
        out, err = proc.communicate(data.encode("utf-8") if data is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired as first:
        _kill_group(proc)
        try:
            out = proc.communicate(timeout=KILL_GRACE)[0]
        except subprocess.TimeoutExpired as second:
            out = second.output or first.output
            _give_up(proc)
        return TIMED_OUT_RC, _text(out), _timed_out(timeout)
    return proc.returncode, _text(out), _text(err)


def _run_daemonizing(argv, timeout, pass_fds, env, cwd):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # not run_command (module_utils get no AnsibleModule): a child bounded in time, in a process group of its own
            # pylint: disable-next=ansible-bad-function
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=tuple(pass_fds),
                                    close_fds=True, cwd=cwd or "/", env=dict(os.environ, **env) if env else None,
                                    start_new_session=True)
        except OSError as exc:
            return NOT_STARTED_RC, "", "%s cannot be started: %s" % (argv[0], exc.strerror or exc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                _give_up(proc)
            rc = None
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(_text(f.read()))
    if rc is None:
        return TIMED_OUT_RC, texts[0], _timed_out(timeout)
    return rc, texts[0], texts[1]


def spawn(argv, cwd="/"):
    """Start a long-running program detached from this one (own session, stdio on /dev/null); its pid.

    Nothing waits for it: it is meant to outlive the module (the link watchdog). Popen returns once
    the program is executed, so this call is bounded by the exec itself.
    """
    argv = [str(a) for a in argv]
    with open(os.devnull, "r+b") as null:
        # not run_command (module_utils get no AnsibleModule): a child bounded in time, in a process group of its own
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.Popen(argv, stdin=null, stdout=null, stderr=null, close_fds=True, cwd=cwd,
                                start_new_session=True)
    return proc.pid
