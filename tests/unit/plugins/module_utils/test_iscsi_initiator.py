# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""iscsi_attach's logic with a fake command runner and fake /proc, /sys and /dev trees.

The userspace initiator runs for real in tests/integration/targets/iscsi_attach. open-iscsi cannot
log in on the lab (its kernel has no iscsi_tcp module and iscsiadm is not installed: lab/README.md),
so its flow is checked here against a fake iscsiadm that keeps iface, node and session state like
the real one, on a real undo journal.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import initiator as ii
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiAttachError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal, UndoContext

DO = UndoContext()
PLAN = UndoContext(check_mode=True)

SECRET = "s3cret-Chap-Value"
MUTUAL = "mutual-Chap-Value"
IQN = "iqn.2026-01.lab.vmcollect:it-att.lun"
INIT = "iqn.2026-01.lab.vmcollect:kvm1"


class FakeHost(object):
    """A fake runner plus fake kernel views under tmp_path; records every argv."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.proc = tmp_path / "proc"
        self.sys = tmp_path / "sys"
        self.dev = tmp_path / "dev"
        for d in (self.proc / "self", self.sys / "block", self.dev / "disk" / "by-path", self.sys / "class" / "iscsi_session"):
            d.mkdir(parents=True)
        self.mountinfo = self.proc / "self" / "mountinfo"
        self.mountinfo.write_text("22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n")
        self.calls = []
        self.ifaces = set()
        self.nodes = {}  # (iqn, portal, iface) -> record file
        self.sessions = set()
        self.blkid = (2, "")  # blank
        self.wipefs = ""
        self.login_rc, self.login_err = 0, ""
        self.offered = [IQN]
        self.node_dir = tmp_path / "etc-iscsi-nodes"
        self.formatted = []

    def add_mount(self, mountpoint, majmin, fstype, source):
        with open(str(self.mountinfo), "a") as f:
            f.write("40 22 %s / %s rw,relatime - %s %s rw\n" % (majmin, mountpoint.replace(" ", "\\040"), fstype, source))

    def drop_mount(self, mountpoint):
        esc = mountpoint.replace(" ", "\\040")
        lines = [ln for ln in self.mountinfo.read_text().splitlines(True) if ln.split()[4] != esc]
        self.mountinfo.write_text("".join(lines))

    def __call__(self, argv, data=None, pass_fds=(), timeout=None, daemonizes=False):
        assert timeout is not None and 0 < timeout < float("inf")  # every command is bounded
        self.calls.append(list(argv))
        prog = os.path.basename(argv[0])
        handler = getattr(self, "run_" + prog.replace("-", "_").replace(".", "_"), None)
        if handler is None:
            return 0, "", ""
        return handler(argv[1:])

    # -- programs -------------------------------------------------------------------------------
    def run_blkid(self, args):
        return self.blkid[0], self.blkid[1], ""

    def run_wipefs(self, args):
        return 0, self.wipefs, ""

    def run_mkfs_ext4(self, args):
        self.formatted.append(args[-1])
        self.blkid = (0, "TYPE=ext4\nLABEL=%s\nUSAGE=filesystem\n" % args[args.index("-L") + 1])
        return 0, "", ""

    def run_mount(self, args):
        device, mountpoint = args[-2], args[-1]
        st = os.stat(device)
        self.add_mount(mountpoint, "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)), args[1], device)
        return 0, "", ""

    def run_umount(self, args):
        self.drop_mount(args[-1])
        return 0, "", ""

    def run_iscsiadm(self, args):
        opts = dict(zip(args[::2], args[1::2]))
        mode = opts.get("-m")
        if mode == "iface":
            name = opts["-I"]
            op = opts.get("-o")
            if op == "new":
                self.ifaces.add(name)
                return 0, "New interface %s added\n" % name, ""
            if op == "delete":
                self.ifaces.discard(name)
                return 0, "", ""
            if op == "update":
                return (0, "", "") if name in self.ifaces else (21, "", "iscsiadm: Could not find iface")
            return (0, "iface.iscsi_ifacename = %s\n" % name, "") if name in self.ifaces else (
                21, "", "iscsiadm: Could not read iface %s (6)" % name)
        if mode == "discovery":
            assert opts.get("-o") == "nonpersistent"
            assert opts.get("-I") in self.ifaces
            return 0, "".join("%s,1 %s\n" % (opts["-p"], t) for t in self.offered), ""
        if mode == "session":
            if not self.sessions:
                return 21, "", "iscsiadm: No active sessions."
            return 0, "".join("tcp: [1] %s,1 %s (non-flash)\n" % (p, t) for t, p, _i in self.sessions), ""
        if mode == "node":
            portal = opts["-p"].split(",")[0]
            key = (opts["-T"], portal, opts["-I"])
            if "--login" in args:
                if key not in self.nodes:
                    return 21, "", "iscsiadm: No records found"
                if self.login_rc:
                    return self.login_rc, "", self.login_err
                self.sessions.add(key)
                disk = self.dev / "sdx"
                disk.write_text("")
                (self.dev / "disk" / "by-path" / ("ip-%s-iscsi-%s-lun-1" % (portal, key[0]))).symlink_to(disk)
                return 0, "Login to [...] successful.\n", ""
            if "--logout" in args:
                if key not in self.sessions:
                    return 21, "", "iscsiadm: No matching sessions found"
                self.sessions.discard(key)
                for link in (self.dev / "disk" / "by-path").iterdir():
                    link.unlink()
                return 0, "", ""
            op = opts.get("-o")
            if op == "new":
                tpgt = opts["-p"].split(",")[1]
                addr, port = portal.rsplit(":", 1)
                rec = self.node_dir / key[0] / ("%s,%s,%s" % (addr, port, tpgt)) / key[2]
                rec.parent.mkdir(parents=True)
                rec.write_text("# BEGIN RECORD 2.1.8\nnode.name = %s\nnode.session.auth.authmethod = None\n"
                               "iface.iscsi_ifacename = %s\n# END RECORD\n" % (key[0], key[2]))
                os.chmod(str(rec), 0o600)
                self.nodes[key] = rec
                return 0, "New iSCSI node [...] added\n", ""
            if op == "delete":
                rec = self.nodes.pop(key)
                rec.unlink()
                return 0, "", ""
            if op == "update":
                return (0, "", "") if key in self.nodes else (21, "", "iscsiadm: No records found")
            return (0, "node.name = %s\n" % key[0], "") if key in self.nodes else (21, "", "iscsiadm: No records found")
        return 7, "", "unexpected"


@pytest.fixture
def host(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path)
    monkeypatch.setattr(ii, "RUNNER", fake)
    monkeypatch.setattr(ii, "PROC", str(fake.proc))
    monkeypatch.setattr(ii, "SYS", str(fake.sys))
    monkeypatch.setattr(ii, "DEV", str(fake.dev))
    monkeypatch.setattr(ii, "find_bin", lambda name: "/usr/sbin/%s" % name)
    monkeypatch.setattr(ii, "DEVICE_TIMEOUT", 0.5)
    monkeypatch.setattr(os, "chown", lambda *a: None)
    return fake


@pytest.fixture
def journal(tmp_path):
    return Journal("it-att-unit", str(tmp_path / "journal"), hostname="kvm-unit")


def params(tmp_path, **kw):
    p = dict(case_id="it-att-unit", initiator="userspace", portal_address="10.213.1.1", portal_port=3270,
             target_iqn=IQN, lun=1, initiator_iqn=INIT, chap_user="itatt", chap_password=SECRET,
             mountpoint=str(tmp_path / "mnt" / "evidence"), filesystem="ext4", filesystem_label="vmcollect",
             format="if_blank", run_dir=str(tmp_path / "run"))
    p.update(kw)
    return p


def assert_no_secret(host):
    for argv in host.calls:
        for arg in argv:
            assert SECRET not in arg and MUTUAL not in arg, argv


# -- options and names ----------------------------------------------------------------------------

def test_attachment_id_is_a_qemu_id_and_stable():
    a = ii.attachment_id("case-42", "/srv/evidence/")
    assert a == ii.attachment_id("case-42", "/srv/evidence")
    assert a.startswith("vmc-case-42-")
    assert a != ii.attachment_id("case-42", "/srv/other")
    # QEMU refuses block node names over 31 characters, and the node is "<id>-lun" (make demo's case id
    # demo-20261121T233913Z made a 38-character node name: "Node name too long")
    for case in ("c" * 128, "demo-20261121T233913Z"):
        long_id = ii.attachment_id(case, "/x")
        assert len(long_id + "-lun") <= 31 and long_id.startswith("vmc-")


@pytest.mark.parametrize("change,message", [
    (dict(mountpoint="relative/mnt"), "not an absolute path"),
    (dict(target_iqn="not-an-iqn"), "not an iSCSI name"),
    (dict(chap_password=None), "go together"),
    (dict(mutual_chap_user="t", mutual_chap_password=MUTUAL), "not available with initiator=userspace"),
    (dict(filesystem_label="a-label-that-is-too-long"), "not usable for ext4"),
    (dict(filesystem="ntfs"), "not supported"),
    (dict(portal_port=70000), "not a TCP port"),
    (dict(chap_password="two\nlines"), "line breaks"),
])
def test_validate_refuses(tmp_path, change, message):
    with pytest.raises(InvalidInputError, match=message):
        ii.validate(params(tmp_path, **change))


def test_validate_absent_needs_only_the_mountpoint(tmp_path):
    cfg = ii.validate({"case_id": "c1", "mountpoint": "/srv/x/", "state": "absent"})
    assert cfg["mountpoint"] == "/srv/x" and cfg["run_dir"] == "/run/dfir-vmcollect/c1"


# -- qemu-storage-daemon ----------------------------------------------------------------------------

def test_qsd_argv_has_no_secret_and_names_the_export(tmp_path, host):
    cfg = ii.validate(params(tmp_path, chap_user="user,with,commas"))
    argv = ii.qsd_argv(cfg, "/run/x/a.export", "/run/x/a.pid", 7)
    joined = "\n".join(argv)
    assert SECRET not in joined
    assert "secret,id=%s-chap,file=/proc/self/fd/7" % cfg["attachment"] in argv
    assert "user=user,,with,,commas" in joined
    assert argv[argv.index("--export") + 1].startswith("type=fuse,id=%s," % cfg["attachment"])
    assert argv[-1] == "--daemonize"
    assert "timeout=30" in argv[argv.index("--blockdev") + 1].split(",")  # a cut link fails, never hangs
    cfg = ii.validate(params(tmp_path, timeout=0))
    assert "timeout=" not in ii.qsd_argv(cfg, "/run/x/a.export", "/run/x/a.pid", 7)[argv.index("--blockdev") + 1]


def test_start_qsd_hands_the_secret_through_a_pipe(tmp_path, host, monkeypatch):
    cfg = ii.validate(params(tmp_path))
    seen = {}

    def qsd(argv, data=None, pass_fds=(), timeout=None, daemonizes=False):
        assert daemonizes and timeout == ii.QSD_START_TIMEOUT  # only the foreground part is waited for
        (fd,) = pass_fds
        assert "file=/proc/self/fd/%d" % fd in " ".join(argv)
        seen["secret"] = os.read(fd, 100).decode()
        seen["eof"] = os.read(fd, 100)  # the write end is closed: nothing lingers
        return 0, "", ""

    monkeypatch.setattr(ii, "RUNNER", qsd)
    monkeypatch.setattr(ii, "find_qsd", lambda export_id, pid_file=None: 4242)
    assert ii.start_qsd(cfg, "/run/x/a.export", "/run/x/a.pid") == 4242
    assert seen == {"secret": SECRET, "eof": b""}


def test_start_qsd_failure_is_a_sentence_without_the_secret(tmp_path, host, monkeypatch):
    cfg = ii.validate(params(tmp_path))
    err = ("qemu-storage-daemon: --blockdev driver=iscsi,...: iSCSI: Failed to connect to LUN : Failed to log in to "
           "target. Status: Authentication failure(513) %s\n" % SECRET)
    monkeypatch.setattr(ii, "RUNNER", lambda argv, **kw: (1, "", err))
    with pytest.raises(IscsiAttachError) as info:
        ii.start_qsd(cfg, "/run/x/a.export", "/run/x/a.pid")
    assert "could not attach LUN 1 of %s at 10.213.1.1:3270: Failed to connect" % IQN in info.value.message
    assert "Authentication failure(513)" in info.value.message
    assert SECRET not in info.value.message and SECRET not in str(info.value.details)


def _fake_process(host, pid, argv, state="S"):
    d = host.proc / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "stat").write_text("%d (qemu-storage-d) %s 1 1 1" % (pid, state))


def test_find_qsd_trusts_only_a_matching_command_line(tmp_path, host):
    pid_file = tmp_path / "qsd.pid"
    pid_file.write_text("100\n")
    _fake_process(host, 100, ["/usr/bin/qemu-storage-daemon", "--export", "type=fuse,id=other,node-name=x"])
    _fake_process(host, 101, ["/usr/bin/qemu-storage-daemon", "--export", "type=fuse,id=vmc-a-1,node-name=x"])
    _fake_process(host, 102, ["/bin/sh", "-c", "type=fuse,id=vmc-a-1,"])
    assert ii.find_qsd("vmc-a-1", str(pid_file)) == 101
    assert ii.find_qsd("vmc-a-2", str(pid_file)) is None
    (host.proc / "101" / "stat").write_text("101 (qemu-storage-d) Z 1 1 1")
    assert ii.find_qsd("vmc-a-1") is None


def test_undo_qsd_not_running_and_dead_fuse_mount(tmp_path, host):
    export = str(tmp_path / "run" / "a.export")
    undo = {"export_id": "vmc-a-1", "export_file": export, "pid_file": str(tmp_path / "none.pid")}
    assert ii._undo_qsd(undo, DO) == "qemu-storage-daemon for vmc-a-1 was not running"
    host.add_mount(export, "0:55", "fuse", "/dev/fuse")  # the daemon was killed with SIGKILL
    assert ii._undo_qsd(undo, PLAN) == "would unmount the dead FUSE export %s" % export
    assert ii._undo_qsd(undo, DO) == "unmounted the dead FUSE export %s" % export
    assert ii.mount_at(export) is None


# -- kernel views -------------------------------------------------------------------------------------

def test_mountinfo_and_loops(tmp_path, host):
    host.add_mount("/srv/with space", "7:3", "ext4", "/dev/loop3")
    assert ii.mount_at("/srv/with space") == {"mountpoint": "/srv/with space", "majmin": "7:3", "fstype": "ext4",
                                              "source": "/dev/loop3"}
    for n, backing in ((3, "/run/a.export"), (4, "/other")):
        d = host.sys / "block" / ("loop%d" % n)
        (d / "loop").mkdir(parents=True)
        (d / "loop" / "backing_file").write_text(backing + "\n")
        (d / "dev").write_text("7:%d\n" % n)
    assert ii.loops_backed_by("/run/a.export") == [{"device": str(host.dev / "loop3"), "majmin": "7:3", "name": "loop3"}]
    undo = {"export_file": "/run/a.export"}
    with pytest.raises(IscsiAttachError, match="still mounted on /srv/with space"):
        ii._undo_loop(undo, DO)
    host.drop_mount("/srv/with space")
    assert ii._undo_loop(undo, PLAN) == "would detach %s" % (host.dev / "loop3")
    assert ii._undo_loop({"export_file": "/run/none"}, DO) == "no loop device was attached to /run/none"


def test_undo_mount_leaves_a_foreign_mount_alone(tmp_path, host):
    host.add_mount("/srv/mnt", "8:1", "ext4", "/dev/sda1")
    assert "left alone" in ii._undo_mount({"mountpoint": "/srv/mnt", "export_file": "/run/a.export"}, DO)
    assert ii._undo_mount({"mountpoint": "/srv/none", "export_file": "/run/a.export"}, DO) == "/srv/none was not mounted"


def test_undo_dir(tmp_path, host):
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("x")
    assert ii._undo_dir({"path": str(d)}, DO) == "left %s: it is not empty" % d
    (d / "f").unlink()
    assert ii._undo_dir({"path": str(d)}, PLAN).startswith("would remove")
    assert ii._undo_dir({"path": str(d)}, DO) == "removed the folder %s" % d
    assert ii._undo_dir({"path": str(d)}, DO) == "%s was already gone" % d


# -- formatting rule -------------------------------------------------------------------------------------

@pytest.mark.parametrize("blkid,wipefs,expected", [
    ((2, ""), "", {"blank": True, "type": None, "label": None}),
    ((0, "TYPE=ext4\nLABEL=vmcollect\nUSAGE=filesystem\n"), "ext4 0x438\n", {"blank": False, "type": "ext4", "label": "vmcollect"}),
    ((0, "PTTYPE=dos\n"), "dos 0x1fe\n", {"blank": False, "type": "dos", "label": None}),
    ((2, ""), "LVM2_member 0x218\n", {"blank": False, "type": "LVM2_member", "label": None}),
])
def test_probe(host, blkid, wipefs, expected):
    host.blkid, host.wipefs = blkid, wipefs
    found = ii.probe("/dev/loop0")
    assert dict((k, found[k]) for k in expected) == expected


@pytest.mark.parametrize("found,mode,expected", [
    ({"blank": True}, "if_blank", True),
    ({"blank": True}, "force", True),
    ({"blank": False, "type": "ext4", "label": "vmcollect"}, "if_blank", False),
    ({"blank": False, "type": "ext4", "label": "vmcollect"}, "force", False),
    ({"blank": False, "type": "ext4", "label": "vmcollect"}, "never", False),
    ({"blank": False, "type": "ntfs", "label": "C"}, "force", True),
])
def test_decide_format(found, mode, expected):
    assert ii.decide_format(found, "ext4", "vmcollect", mode) is expected


@pytest.mark.parametrize("found,mode,message", [
    ({"blank": False, "type": "ntfs", "label": "WINDOWS"}, "if_blank", "carries ntfs labelled WINDOWS"),
    ({"blank": False, "type": "ext4", "label": "other"}, "if_blank", "set format=force"),
    ({"blank": False, "type": None, "signatures": ["LVM2_member"]}, "never", "carries LVM2_member"),
    ({"blank": True}, "never", "blank and format=never"),
])
def test_decide_format_refuses(found, mode, message):
    with pytest.raises(IscsiAttachError, match=message):
        ii.decide_format(found, "ext4", "vmcollect", mode)


# -- userspace attach failure path (the success path runs on the lab) ---------------------------------

def test_userspace_failed_login_takes_everything_back(tmp_path, host, journal, monkeypatch):
    base_runner = host

    def runner(argv, **kw):
        if argv[0].endswith("qemu-storage-daemon"):
            base_runner.calls.append(list(argv))
            return 1, "", "qemu-storage-daemon: x: iSCSI: Failed to log in to target. Status: Authentication failure(513)"
        return base_runner(argv, **kw)

    monkeypatch.setattr(ii, "RUNNER", runner)
    p = params(tmp_path)
    with pytest.raises(IscsiAttachError) as info:
        ii.attach(journal, p)
    assert "Authentication failure(513)" in info.value.message
    assert not os.path.exists(p["run_dir"]) and not os.path.exists(p["mountpoint"])
    assert journal.pending() == []
    assert info.value.details["rolled_back"][-1] == "removed the folder %s" % p["run_dir"]
    assert_no_secret(host)


def test_any_exception_mid_attach_takes_everything_back(tmp_path, host, journal, monkeypatch):
    """Not only IscsiAttachError: an OSError after the daemon started is rolled back and reported as a sentence."""
    monkeypatch.setattr(ii, "start_qsd", lambda cfg, export_file, pid_file: 4242)
    monkeypatch.setattr(ii, "start_watchdog", lambda cfg, pid, note_file: 4343)

    def broken_loop(export_file, read_only=False):
        raise OSError(5, "Input/output error", export_file)

    monkeypatch.setattr(ii, "attach_loop", broken_loop)
    p = params(tmp_path)
    with pytest.raises(IscsiAttachError) as info:
        ii.attach(journal, p)
    assert info.value.message.startswith("Attaching LUN 1 of %s on %s failed: OSError: " % (IQN, p["mountpoint"]))
    assert "Input/output error" in info.value.message and "was taken back" in info.value.message
    assert info.value.details["error_type"] == "OSError"
    assert info.value.details["rolled_back"][-1] == "removed the folder %s" % p["run_dir"]
    assert journal.pending() == [] and not os.path.exists(p["run_dir"])


def test_a_bug_mid_attach_is_rolled_back_too(tmp_path, host, journal, monkeypatch):
    """open-iscsi: logged in, then a RuntimeError; the session, node record and iface are all taken back."""
    def broken(cfg, portal, timeout=None):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(ii, "wait_for_lun_device", broken)
    with pytest.raises(IscsiAttachError, match="failed: RuntimeError: something nobody expected") as info:
        ii.attach(journal, oi_params(tmp_path))
    assert host.sessions == set() and host.nodes == {} and host.ifaces == set()
    assert any("log" in r and "out" in r for r in info.value.details["rolled_back"])
    assert journal.pending() == []


def test_an_interrupt_mid_attach_is_rolled_back_and_stays_an_interrupt(tmp_path, host, journal, monkeypatch):
    def interrupted(cfg, portal, timeout=None):
        raise KeyboardInterrupt()

    monkeypatch.setattr(ii, "wait_for_lun_device", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ii.attach(journal, oi_params(tmp_path))
    assert host.sessions == set() and host.ifaces == set() and journal.pending() == []


def test_check_mode_changes_nothing(tmp_path, host, journal):
    p = params(tmp_path)
    res = ii.attach(journal, p, check_mode=True)
    assert res["changed"] and res["formatted"] is None and len(res["plan"]) == 5
    assert "link watchdog" in res["plan"][1]
    assert not journal.exists() and not os.path.exists(p["run_dir"])
    assert host.calls == []


def test_detach_with_nothing_attached(tmp_path, host, journal):
    res = ii.detach(journal, params(tmp_path))
    assert not res["changed"] and res["undone"] == [] and not journal.exists()


# -- open-iscsi ---------------------------------------------------------------------------------------------

def oi_params(tmp_path, **kw):
    return params(tmp_path, initiator="open-iscsi", node_dir=str(tmp_path / "etc-iscsi-nodes"), **kw)


def test_open_iscsi_attach_and_detach(tmp_path, host, journal):
    p = oi_params(tmp_path, mutual_chap_user="tgt", mutual_chap_password=MUTUAL)
    res = ii.attach(journal, p)
    att = res["attachment"]
    assert res["changed"] and res["formatted"]
    assert res["session"]["iface"] == att and res["session"]["portal"] == "10.213.1.1:3270"
    assert res["device"] == str(host.dev / "sdx")
    assert host.ifaces == {att}
    # the node record carries CHAP, written directly (mode 0600), before "# END RECORD"
    rec = host.nodes[(IQN, "10.213.1.1:3270", att)]
    text = rec.read_text().splitlines()
    assert "node.session.auth.password = %s" % SECRET in text
    assert "node.session.auth.password_in = %s" % MUTUAL in text
    assert "node.session.auth.authmethod = None" not in text and text[-1] == "# END RECORD"
    assert stat.S_IMODE(os.stat(str(rec)).st_mode) == 0o600
    assert_no_secret(host)
    # discovery stored nothing; the node record was created for this target only, with the tpgt found
    assert ["/usr/sbin/iscsiadm", "-m", "node", "-T", IQN, "-p", "10.213.1.1:3270,1", "-I", att, "-o", "new"] in host.calls
    assert ["/usr/sbin/iscsiadm", "-m", "iface", "-I", att, "-o", "update", "-n", "iface.initiatorname", "-v", INIT] in host.calls
    assert host.formatted == [str(host.dev / "sdx")]

    again = ii.attach(journal, p)
    assert not again["changed"] and again["session"]["target_iqn"] == IQN

    out = ii.detach(journal, p)
    assert [u["action"] for u in out["undone"]] == ["iscsi.mounted", "iscsi.dir_created", "iscsi.dir_created",
                                                    "iscsi.session_logged_in", "iscsi.node_created",
                                                    "iscsi.iface_created"]
    assert host.sessions == set() and host.nodes == {} and host.ifaces == set()
    assert ii.mount_at(p["mountpoint"]) is None and not os.path.exists(p["mountpoint"])
    assert journal.pending() == []
    assert journal.teardown()["undone"] == []


def test_open_iscsi_found_filesystem_is_not_formatted(tmp_path, host, journal):
    host.blkid = (0, "TYPE=ext4\nLABEL=vmcollect\n")
    res = ii.attach(journal, oi_params(tmp_path))
    assert res["changed"] and res["formatted"] is False and host.formatted == []


def test_open_iscsi_no_kernel_driver_leaves_nothing(tmp_path, host, journal):
    host.login_rc, host.login_err = 12, "iscsiadm: iSCSI driver tcp is not loaded"
    with pytest.raises(IscsiAttachError, match="iSCSI driver tcp is not loaded") as info:
        ii.attach(journal, oi_params(tmp_path))
    assert host.ifaces == set() and host.nodes == {}
    assert "deleted iface" in info.value.details["rolled_back"][-1]
    assert journal.pending() == []


def test_open_iscsi_auth_failure(tmp_path, host, journal):
    host.login_rc, host.login_err = 24, "iscsiadm: Login failed due to authorization failure"
    with pytest.raises(IscsiAttachError, match="refused the CHAP credentials of itatt"):
        ii.attach(journal, oi_params(tmp_path))
    assert host.ifaces == set() and host.nodes == {}


def test_open_iscsi_target_not_offered(tmp_path, host, journal):
    host.offered = ["iqn.2026-01.lab.vmcollect:other"]
    with pytest.raises(IscsiAttachError, match="does not offer"):
        ii.attach(journal, oi_params(tmp_path))
    assert host.ifaces == set()


def test_open_iscsi_foreign_iface_is_refused(tmp_path, host, journal):
    p = oi_params(tmp_path)
    host.ifaces.add(ii.attachment_id(p["case_id"], p["mountpoint"]))
    with pytest.raises(IscsiAttachError, match="journal does not know it"):
        ii.attach(journal, p)
    assert len(host.ifaces) == 1 and not journal.exists()


def test_teardown_after_a_crash_between_record_and_change(tmp_path, host, journal):
    """Records written, nothing made (kill -9 right after record_change): every handler copes."""
    p = oi_params(tmp_path)
    base = {"attachment": "vmc-x", "iface": "vmc-x", "target_iqn": IQN, "portal": "10.213.1.1:3270", "lun": 1}
    journal.record_change(ii.ACTION_IFACE, base, "iface")
    journal.record_change(ii.ACTION_NODE, dict(base, tpgt="1"), "node")
    journal.record_change(ii.ACTION_SESSION, base, "login")
    journal.record_change(ii.ACTION_MOUNT, dict(base, mountpoint=p["mountpoint"], device="/dev/sdz"), "mount")
    qsd = {"attachment": "vmc-y", "export_id": "vmc-y", "export_file": "/run/y.export", "pid_file": "/run/y.pid"}
    journal.record_change(ii.ACTION_QSD, qsd, "qsd")
    journal.record_change(ii.ACTION_LOOP, {"attachment": "vmc-y", "export_file": "/run/y.export"}, "loop")
    result = journal.teardown()
    assert [u["result"] for u in result["undone"]] == [
        "no loop device was attached to /run/y.export", "qemu-storage-daemon for vmc-y was not running",
        "%s was not mounted" % p["mountpoint"], "no session to %s was logged in" % IQN,
        "node record %s 10.213.1.1:3270 (iface vmc-x) was already gone" % IQN, "iface vmc-x was already gone"]
    assert result["removed"]


def test_parse_sendtargets_and_record_path():
    out = "10.0.0.1:3260,1 iqn.2026-01.a:b\n[fe80::1]:3260,2 iqn.2026-01.a:c\ngarbage\n"
    assert ii.parse_sendtargets(out) == [{"portal": "10.0.0.1:3260", "tpgt": "1", "target": "iqn.2026-01.a:b"},
                                         {"portal": "[fe80::1]:3260", "tpgt": "2", "target": "iqn.2026-01.a:c"}]
    assert ii.node_record_file("/etc/iscsi/nodes", "iqn.2026-01.a:b", "10.0.0.1:3260", "1", "vmc-x") == \
        "/etc/iscsi/nodes/iqn.2026-01.a:b/10.0.0.1,3260,1/vmc-x"
    assert ii.portal_string("fe80::1", 3260) == "[fe80::1]:3260"


# -- the link watchdog (real processes) ----------------------------------------------------------------

def test_proc_net_address_matches_the_kernels_notation():
    # /proc/net/tcp shows 10.213.1.1:3260 as 0101D50A:0CBC (little-endian words on x86)
    import sys
    expected = "0101D50A:0CBC" if sys.byteorder == "little" else "0AD50101:0CBC"
    assert ii.proc_net_address("10.213.1.1", 3260) == expected
    assert ii.proc_net_address("::1", 3260).endswith(":0CBC") and len(ii.proc_net_address("::1", 1)) == 37


def test_watchdog_kills_a_daemon_without_its_connection_and_says_why(tmp_path, monkeypatch):
    """A stand-in daemon (the marker in its argv, no TCP connection at all): killed after the timeout."""
    import subprocess
    import sys
    import time
    export_id = "vmc-wd-test"
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "type=fuse,id=%s,x" % export_id])
    note = str(tmp_path / "lost")
    cfg = {"attachment": export_id, "portal_address": "127.0.0.1", "portal_port": 3260, "timeout": 1}
    wd = ii.start_watchdog(cfg, fake.pid, note)
    try:
        assert fake.wait(timeout=10) == -9
        with open(note) as f:
            assert "iSCSI connection" in f.read()
        deadline = time.time() + 5
        while ii.watchdog_pids(export_id) and time.time() < deadline:
            time.sleep(0.1)
        assert ii.watchdog_pids(export_id) == []  # it ends with its daemon
    finally:
        if fake.poll() is None:
            fake.kill()
        subprocess.run(["pkill", "-f", ii.WATCHDOG_MARKER + " " + export_id], check=False)
    assert wd > 0
