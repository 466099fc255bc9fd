# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one command runner (_host.runner) and the callers that used to wait without a bound.

Real processes throughout. A call that would hang runs in a thread joined with a timeout, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import sys
import threading
import time

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    InvalidInputError,
    IscsiAttachError,
    IscsiTargetError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import runner
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import initiator as ii
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import target as t

# A child that ignores SIGTERM and forks a grandchild which keeps the child's stdout and stderr open.
# With ESCAPE the grandchild leaves the child's session first (as a daemon or a stuck helper would),
# so killing the child's process group does not reach it.
STUBBORN = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
escape, pid_file = sys.argv[1] == "1", sys.argv[2]
if os.fork() == 0:
    if escape:
        os.setsid()
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(120)
    os._exit(0)
print("child started", flush=True)
time.sleep(120)
"""


def bounded(seconds, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread; fails if it has not returned after ``seconds``. Returns (value, elapsed)."""
    box = {}

    def call():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    start = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "still waiting after %.1f s: the wait is not bounded" % seconds
    if "error" in box:
        raise box["error"]
    return box["value"], time.monotonic() - start


def _grandchild(pid_file):
    deadline = time.time() + 5
    while not os.path.exists(pid_file) and time.time() < deadline:
        time.sleep(0.05)
    with open(pid_file) as f:
        return int(f.read())


def _gone(pid):
    deadline = time.time() + 5
    while time.time() < deadline:
        if not procfs.read_cmdline(pid) or procfs.is_zombie(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def stubborn(tmp_path):
    """argv of a stubborn child (see STUBBORN); kills the grandchild afterwards whatever happened."""
    pid_file = str(tmp_path / "grandchild.pid")
    yield lambda escape: [sys.executable, "-c", STUBBORN, "1" if escape else "0", pid_file]
    if os.path.exists(pid_file):
        try:
            os.kill(_grandchild(pid_file), signal.SIGKILL)
        except OSError:
            pass


# -- the runner -------------------------------------------------------------------------------------

def test_run_returns_text_and_feeds_stdin_env_and_fds():
    rc, out, err = runner.run([sys.executable, "-c", "import sys; d = sys.stdin.read(); print(d.upper()); "
                               "sys.stderr.write('w\\u00e9')"], data="secret-free text")
    assert (rc, out, err) == (0, "SECRET-FREE TEXT\n", "w\u00e9")
    assert runner.run(["sh", "-c", "echo $VMC_TEST; exit 3"], env={"VMC_TEST": "x"}) == (3, "x\n", "")
    r, w = os.pipe()
    try:
        os.write(w, b"through a pipe")
        os.close(w)
        out = runner.run([sys.executable, "-c", "import os, sys; print(os.read(int(sys.argv[1]), 99).decode())",
                          str(r)], pass_fds=[r])[1]
    finally:
        os.close(r)
    assert out == "through a pipe\n"


def test_run_without_the_program_is_a_sentence():
    rc, out, err = runner.run(["/nonexistent/vmc-program"])
    assert rc == runner.NOT_STARTED_RC and out == ""
    assert err == "/nonexistent/vmc-program cannot be started: No such file or directory"


@pytest.mark.parametrize("timeout", [None, 0, -1, float("inf"), float("nan"), True, "60"])
def test_every_call_has_a_finite_timeout(timeout):
    with pytest.raises(InvalidInputError, match="finite, positive timeout"):
        runner.run(["true"], timeout=timeout)


def test_timeout_kills_the_child_and_its_group(stubborn, tmp_path):
    (rc, out, err), elapsed = bounded(10, runner.run, stubborn(False), timeout=1)
    assert (rc, out, err) == (-9, "child started\n", "timed out after 1 s")
    assert elapsed < 1 + runner.KILL_GRACE
    assert _gone(_grandchild(str(tmp_path / "grandchild.pid")))  # the whole group went


def test_a_grandchild_holding_the_pipes_does_not_hang_the_call(stubborn, monkeypatch):
    monkeypatch.setattr(runner, "KILL_GRACE", 1.0)
    (rc, out, err), elapsed = bounded(10, runner.run, stubborn(True), timeout=1)
    assert rc == -9 and err == "timed out after 1 s"
    assert elapsed < 1 + 1 + 2


def test_the_initiators_runner_is_bounded(stubborn, monkeypatch):
    """iscsi_attach's RUNNER used to kill only the child, then wait for its pipes without a bound: it hung
    here for as long as the grandchild lived."""
    monkeypatch.setattr(runner, "KILL_GRACE", 1.0)
    assert ii.RUNNER is runner.run
    (rc, _out, err), elapsed = bounded(10, ii._run, stubborn(True), timeout=1)
    assert (rc, err) == (-9, "timed out after 1 s") and elapsed < 4


def test_daemonizing_start_waits_for_the_foreground_only(tmp_path):
    """A daemon keeps stdout/stderr open; a start is over when its foreground part exits."""
    script = ("import os, sys, time\n"
              "print('foreground'); sys.stderr.write('note'); sys.stdout.flush()\n"
              "if os.fork() == 0:\n"
              "    os.setsid(); time.sleep(3); os._exit(0)\n")
    (rc, out, err), elapsed = bounded(10, runner.run, [sys.executable, "-c", script], timeout=30, daemonizes=True)
    assert (rc, out, err) == (0, "foreground\n", "note") and elapsed < 2
    with pytest.raises(InvalidInputError, match="no stdin data"):
        runner.run(["true"], data="x", daemonizes=True)


def test_daemonizing_start_that_never_returns_is_killed(stubborn):
    (rc, out, err), elapsed = bounded(10, runner.run, stubborn(False), timeout=1, daemonizes=True)
    assert (rc, out, err) == (-9, "child started\n", "timed out after 1 s") and elapsed < 1 + runner.KILL_GRACE


def test_spawn_detaches(tmp_path):
    pid = runner.spawn([sys.executable, "-c", "import time; time.sleep(30)", "vmc-spawn-test"])
    try:
        assert os.getsid(pid) == pid  # a session of its own: it outlives the module
        deadline = time.time() + 5
        while procfs.read_cmdline(pid) in ([], None) and time.time() < deadline:
            time.sleep(0.05)
        assert procfs.read_cmdline(pid)[-1] == "vmc-spawn-test"
        assert procfs.find_pids(lambda argv: argv[-1] == "vmc-spawn-test") == [pid]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# -- callers that used to wait without a bound --------------------------------------------------------

def test_target_run_has_a_finite_default_timeout_and_honours_one(stubborn):
    import inspect
    default = inspect.signature(t.run).parameters["timeout"].default
    assert 0 < default < float("inf")
    (rc, _out, err), elapsed = bounded(10, t.run, stubborn(False), timeout=1)
    assert (rc, err) == (-9, "timed out after 1 s") and elapsed < 1 + runner.KILL_GRACE


def test_tgtd_start_is_bounded(stubborn, monkeypatch):
    """A tgtd whose foreground part never returns is killed and reported (it was waited for forever)."""
    monkeypatch.setattr(t, "DAEMON_FORK_TIMEOUT", 1.0)
    with pytest.raises(IscsiTargetError, match=r"tgtd did not go into the background within 1 s .* and was killed; "
                                               r"nothing listens on control port 61\."):
        bounded(10, t.start_daemon, stubborn(False), {"control_port": 61})


def test_tgtd_start_failure_says_why(tmp_path):
    with pytest.raises(IscsiTargetError, match=r"tgtd did not start \(exit 107\): cannot bind"):
        t.start_daemon(["sh", "-c", "echo cannot bind >&2; exit 107"], {"control_port": 61})


def test_qsd_start_is_bounded(tmp_path, monkeypatch):
    """A qemu-storage-daemon whose login never returns is killed and reported."""
    fake = tmp_path / "qemu-storage-daemon"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(ii, "find_bin", lambda name: str(fake))
    monkeypatch.setattr(ii, "QSD_START_TIMEOUT", 1.0)
    cfg = {"attachment": "vmc-bounded-test", "portal_address": "192.0.2.1", "portal_port": 3260, "lun": 1,
           "target_iqn": "iqn.2026-11.io.x:t", "initiator_iqn": "iqn.2026-11.io.x:i", "timeout": 30,
           "chap_user": "u", "chap_password": "a-secret-value"}
    with pytest.raises(IscsiAttachError) as info:
        bounded(10, ii.start_qsd, cfg, str(tmp_path / "x.export"), str(tmp_path / "x.pid"))
    assert info.value.message.startswith("qemu-storage-daemon did not attach LUN 1 of iqn.2026-11.io.x:t at "
                                         "192.0.2.1:3260 within 1 s and was killed.")
    assert "a-secret-value" not in info.value.message
