# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one /proc reader (_host.procfs), on a fake tree and on this process."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket

from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs


def _process(root, pid, cmdline, state="S"):
    d = root / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(cmdline)
    (d / "stat").write_text("%d (a (b) c) %s 1 1 1" % (pid, state))


def test_read_cmdline_and_scan(tmp_path):
    _process(tmp_path, 10, b"/usr/sbin/tgtd\0-C\0\0x\0")  # an empty argument is kept
    _process(tmp_path, 11, b"renamed by setproctitle")  # no trailing NUL
    _process(tmp_path, 12, b"")  # a kernel thread
    _process(tmp_path, 13, b"/usr/sbin/tgtd\0-C\0", state="Z")
    (tmp_path / "self").mkdir()
    proc = str(tmp_path)
    assert procfs.read_cmdline(10, proc) == ["/usr/sbin/tgtd", "-C", "", "x"]
    assert procfs.read_cmdline(11, proc) == ["renamed by setproctitle"]
    assert procfs.read_cmdline(12, proc) == []
    assert procfs.read_cmdline(99, proc) is None
    assert procfs.is_zombie(13, proc) and not procfs.is_zombie(10, proc) and not procfs.is_zombie(99, proc)
    assert sorted(procfs.pids(proc)) == [10, 11, 12, 13]
    assert procfs.find_pids(lambda argv: argv[0] == "/usr/sbin/tgtd", proc) == [10]  # not the zombie
    assert procfs.pids(str(tmp_path / "none")) == [] and procfs.fd_targets(10, proc) == []


def test_this_process():
    me = os.getpid()
    with open("/proc/self/cmdline", "rb") as f:
        assert procfs.read_cmdline(me) == [a.decode() for a in f.read().split(b"\0")[:-1]]
    sock = socket.socket()
    try:
        assert "socket:[%d]" % os.fstat(sock.fileno()).st_ino in procfs.fd_targets(me)
    finally:
        sock.close()
    assert me in procfs.pids()
