# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage test bed (not a test file) of tests/integration/lab/test_vcsim_storage.py and
tests/integration/test_esxi_iscsi_datastore.py: what both build, each with names and addresses of its own.

Two network namespaces ("ESXi host" and "collector") joined by a veth storage link (collector .5/30, ESXi host .6/30,
the simulator's management address /32 on the ESXi host's lo), a tgtd of its own on a private control port in the
collector namespace with one target, its LUNs and a CHAP account, set up through the collection's TgtClient (the CHAP
secret never in an argv: a watch records any process whose argv holds it), and vcsim started by vcsim.sh inside the
ESXi namespace (VCSIM_NETNS / VCSIM_LISTEN). The root namespace gets no address of the bed: pyVmomi and the modules
reach the simulator through a TCP forwarder on 127.0.0.1 whose upstream sockets are opened inside the ESXi namespace
(setns in a short-lived thread). Teardown stops all of it and removes what it made; ``check_gone`` proves it.
Also the readers of what a LUN holds (the GPT, a file of the ext4 stand-in for VMFS) and of what a simulator's
datastores left attached.
"""

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import vcsim_helpers
from vcsim_helpers import LAB_DIR, VCSIM
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs

TOOLS = ("ip", "nsenter", "tgtd", "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "qemu-storage-daemon", "losetup",
         "sfdisk", "mkfs.ext4", "debugfs")
VMFS_GUID = "AA31E02A-400F-11DB-9590-000C2911D1B8"

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, tgtd, losetup, mount)")
NEEDS_TOOLS = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason="needs %s (tgt, libiscsi-bin, qemu-utils, e2fsprogs, util-linux, iproute2)" % ", ".join(TOOLS))


def run(*argv, **kw):
    """vcsim_helpers.run, but check=True and a timeout of 120 s unless kw says otherwise."""
    kw.setdefault("check", True)
    kw.setdefault("timeout", 120)
    return vcsim_helpers.run(*argv, **kw)


# -- a TCP forwarder into the ESXi namespace -----------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _connect_in_netns(ns, addr):
    """A TCP connection made from inside network namespace ns (only the short-lived thread enters it)."""
    box = {}

    def work():
        fd = os.open("/run/netns/" + ns, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + ns)
            box["sock"] = socket.create_connection(addr, timeout=30)
        except Exception as exc:  # pylint: disable=broad-except
            box["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["sock"]


class Forwarder(object):
    """127.0.0.1:<port> -> addr inside network namespace ns. Only the accept thread closes its listening socket: a
    socket closed under a thread blocked in accept() frees its descriptor number for the next socket opened (another
    Forwarder's), whose connections that thread would then take and send to its own, old upstream."""

    def __init__(self, ns, addr):
        self.ns, self.addr = ns, addr
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            while not self.closed:
                try:
                    down = self.lsock.accept()[0]
                except socket.timeout:
                    continue
                except OSError:
                    return
                down.settimeout(None)
                if self.closed:
                    down.close()
                    return
                try:
                    up = _connect_in_netns(self.ns, self.addr)
                except OSError:
                    down.close()
                    continue
                for a, b in ((down, up), (up, down)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        finally:
            self.lsock.close()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        # the accept thread sees it within its timeout and closes the socket itself; shutdown wakes it at once
        self.closed = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- what a LUN holds, what a simulator left attached -----------------------------------------------

def gpt(image):
    """[(start, size, type GUID)] of the partitions in the GPT of a disk image."""
    dump = run("sfdisk", "--dump", image, check=False).stdout
    return [(int(m.group(1)), int(m.group(2)), m.group(3))
            for m in re.finditer(r"start=\s*(\d+), size=\s*(\d+), type=([0-9A-F-]+)", dump)]


def debugfs_cat(image, offset, path):
    """A file of the ext4 at offset in a disk image, read with debugfs (read-only)."""
    return subprocess.run(["debugfs", "-R", "cat " + path, "%s?offset=%d" % (image, offset)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, check=True).stdout


def attached(state_dir):
    """What is still attached from a vcsim state folder: mounts, loop devices, qemu-storage-daemon."""
    root = os.path.dirname(state_dir)
    left = []
    with open("/proc/self/mountinfo") as f:
        left += ["mount " + line.split()[4] for line in f if line.split()[4].startswith(root + "/")]
    for name in os.listdir("/sys/block"):
        try:
            with open("/sys/block/%s/loop/backing_file" % name) as f:
                if f.read().startswith(state_dir):
                    left.append("loop " + name)
        except OSError:
            pass
    left += ["qemu-storage-daemon %d" % pid for pid in procfs.find_pids(
        lambda argv: "qemu-storage-daemon" in " ".join(argv) and state_dir in " ".join(argv))]
    return left


# -- the bed -----------------------------------------------------------------------------------------

class Simulator(object):
    """One simulator run by vcsim.sh in the ESXi namespace on addr (its env file; its log, datastore folder and
    storage state named as vcsim.sh names them) and the forwarder on 127.0.0.1 that reaches it from here."""

    def __init__(self, envfile, ns, addr, args=None):
        self.envfile, self.ns, self.addr, self.args = envfile, ns, addr, args
        self.name = vcsim_helpers.sim_name(envfile)
        self.log = os.path.join(LAB_DIR, "run", self.name + ".log")
        self.dsdir = os.path.join(LAB_DIR, "vcsim-ds", self.name)
        self.state_dir = os.path.join(self.dsdir, ".labstore")
        self.env = self.fwd = None

    def start(self):
        env = {"VCSIM_NETNS": self.ns, "VCSIM_LISTEN": "%s:%d" % self.addr}
        if self.args is not None:
            env["VCSIM_ARGS"] = self.args
        r = run("bash", os.path.join(VCSIM, "vcsim.sh"), "start", self.envfile, env=env, timeout=300, check=False)
        assert r.returncode == 0, r.stdout
        with open(self.envfile) as f:
            self.env = json.load(f)
        self.fwd = Forwarder(self.ns, self.addr)

    def stop(self):
        if self.fwd is not None:
            self.fwd.close()
            self.fwd = None
        return run("bash", os.path.join(VCSIM, "vcsim.sh"), "stop", self.envfile, timeout=180, check=False)

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def check_gone(self):
        """Nothing of it is left (mounts, loop devices, qemu-storage-daemon, its datastore folder); its log removed."""
        assert attached(self.state_dir) == []
        assert not os.path.exists(self.dsdir)
        if os.path.exists(self.log):
            os.remove(self.log)


class StorageBed(object):
    """Namespaces, the veth storage link, tgtd with one target (1) and its LUNs, the simulated ESXi host.

    A subclass names its namespaces and addresses, the target and its CHAP user, the first tgtd control port it may
    take (port_base: one free in the next 1000, after this process's id), and sets, in its __init__, self.luns
    {lun: (backing file, size, serial, scsi_id)} and self.esx, the Simulator started last in up() (start_vcsim) and
    stopped first in down() (stop_vcsim)."""

    ns_esx = ns_coll = None
    coll_stor = esx_stor = esx_mgmt = None
    target_iqn = chap_user = None
    port_base = None

    def __init__(self, tmp):
        from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.tgt import TgtClient
        self.tmp = tmp
        self.secret = secrets.token_hex(8)  # 16 characters
        self.luns = {}
        self.esx = self.stopped = None
        self.run_netns_existed = os.path.isdir("/run/netns")
        self.run_tgtd_existed = os.path.isdir("/run/tgtd")
        self.port = next(p for p in range(self.port_base + os.getpid() % 500, self.port_base + 1000)
                         if not os.path.exists("/run/tgtd/socket.%d" % p))
        self.tgt = TgtClient(self.port)
        self.argv_hits = []
        self._watch = True
        threading.Thread(target=self._watch_argv, daemon=True).start()

    def _watch_argv(self):
        """The CHAP secret must never be in any process's argv."""
        while self._watch:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        cmd = f.read().decode(errors="replace")
                except OSError:
                    continue
                if self.secret in cmd:
                    self.argv_hits.append(cmd.replace("\0", " ")[:200])
            time.sleep(0.05)

    def up(self):
        for ns in (self.ns_esx, self.ns_coll):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.ns_coll, "link", "add", "name", "stor1", "type", "veth", "peer", "name", "stor0",
            "netns", self.ns_esx)
        run("ip", "-n", self.ns_coll, "addr", "add", self.coll_stor + "/30", "dev", "stor1")
        run("ip", "-n", self.ns_esx, "addr", "add", self.esx_stor + "/30", "dev", "stor0")
        run("ip", "-n", self.ns_esx, "addr", "add", self.esx_mgmt + "/32", "dev", "lo")
        run("ip", "-n", self.ns_coll, "link", "set", "stor1", "up")
        run("ip", "-n", self.ns_esx, "link", "set", "stor0", "up")
        run("ip", "netns", "exec", self.ns_coll, "tgtd", "-C", str(self.port),
            "--iscsi", "portal=%s:3260" % self.coll_stor)
        for _i in range(100):
            if self.tgt.running():
                break
            time.sleep(0.05)
        self.tgt.new_target(1, self.target_iqn)
        for n, (backing, size, serial, scsi_id) in sorted(self.luns.items()):
            with open(backing, "wb") as f:
                f.truncate(size)
            self.tgt.new_lun(1, n, backing)
            self.tgt.update_lun(1, n, scsi_sn=serial, scsi_id=scsi_id)
        self.tgt.new_account(self.chap_user, self.secret)
        self.tgt.bind_account(1, self.chap_user)
        self.start_vcsim()

    def start_vcsim(self):
        self.esx.start()

    def stop_vcsim(self):
        return self.esx.stop()

    def down(self):
        """Everything up() started stopped and what it made removed, whatever failed: vcsim.sh stop's result."""
        self._watch = False
        stop = self.stop_vcsim()
        try:
            for t in self.tgt.targets():
                self.tgt.delete_target(t["tid"], force=True)
            self.tgt.stop()
        except Exception:  # pylint: disable=broad-except
            pass
        for _i in range(50):
            if not self.tgt.running():
                break
            time.sleep(0.1)
        for suffix in ("", ".lock"):
            try:
                os.unlink("/run/tgtd/socket.%d%s" % (self.port, suffix))
            except OSError:
                pass
        for ns in (self.ns_esx, self.ns_coll):
            if os.path.exists("/run/netns/" + ns):
                pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE, universal_newlines=True,
                                      check=False).stdout
                for pid in pids.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
                subprocess.run(["ip", "netns", "del", ns], check=False)
        if not self.run_tgtd_existed:
            try:
                os.rmdir("/run/tgtd")
            except OSError:
                pass
        if not self.run_netns_existed and os.path.isdir("/run/netns") and not os.listdir("/run/netns"):
            subprocess.run(["umount", "/run/netns"], check=False, stderr=subprocess.DEVNULL)
            try:
                os.rmdir("/run/netns")
            except OSError:
                pass
        return stop

    @contextlib.contextmanager
    def running(self):
        """Up for the with block (a module fixture's yield), down after it whatever happened (self.stopped: how
        vcsim.sh stop went)."""
        try:
            self.up()
            yield self
        finally:
            self.stopped = self.down()

    def check_gone(self):
        """After down(): the CHAP secret was in no process's argv, the namespaces and the simulator are gone."""
        assert self.argv_hits == [], "the CHAP secret was in a process's argv: %s" % self.argv_hits[:3]
        for ns in (self.ns_esx, self.ns_coll):
            assert not os.path.exists("/run/netns/" + ns)
        self.esx.check_gone()

    # -- the simulated ESXi host -----------------------------------------------------------------------------
    @property
    def env(self):
        return self.esx.env

    def log_text(self):
        return self.esx.log_text()
