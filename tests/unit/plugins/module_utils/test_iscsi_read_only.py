# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""iscsi_attach read_only=true: a LUN that already holds evidence is attached and mounted without a write.

Same fakes as test_iscsi_initiator.py (a fake runner, fake /proc, /sys and /dev, a fake iscsiadm). The
userspace path runs for real in tests/integration/targets/iscsi_attach, which proves the LUN's backing
file is byte-identical after a read-only attach and detach.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import initiator as ii
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiAttachError

from test_iscsi_initiator import IQN, host, journal, oi_params, params  # noqa: F401 pylint: disable=unused-import

OURS = (0, "TYPE=ext4\nLABEL=vmcollect\nUSAGE=filesystem\n")


def _progs(host, name):
    return [c for c in host.calls if os.path.basename(c[0]) == name]


def _fake_loop(host):
    """losetup that attaches loop7 to the export (sysfs entries, a /dev node) and detaches it."""
    block = host.sys / "block" / "loop7"

    def run_losetup(args):
        if "--find" in args:
            (block / "loop").mkdir(parents=True)
            (block / "loop" / "backing_file").write_text(args[-1] + "\n")
            (block / "dev").write_text("0:0\n")  # the fake node below is a plain file: st_rdev 0:0
            (host.dev / "loop7").write_text("")
            return 0, str(host.dev / "loop7") + "\n", ""
        if "-d" in args:
            shutil.rmtree(str(block))
            return 0, "", ""
        return 1, "", "unexpected"

    host.run_losetup = run_losetup


def _fake_blockdev(host):
    host.read_only_devices = set()

    def run_blockdev(args):
        if args[0] == "--setro":
            host.read_only_devices.add(args[1])
        if args[0] == "--getro":
            return 0, "1\n" if args[1] in host.read_only_devices else "0\n", ""
        return 0, "", ""

    host.run_blockdev = run_blockdev


@pytest.fixture
def userspace(host, monkeypatch):
    monkeypatch.setattr(ii, "start_qsd", lambda cfg, export_file, pid_file: 4242)
    monkeypatch.setattr(ii, "start_watchdog", lambda cfg, pid, note_file: 4343)
    monkeypatch.setattr(ii, "find_qsd", lambda export_id, pid_file=None: None)
    _fake_loop(host)
    return host


def test_qsd_opens_the_lun_read_only_and_exports_it_not_writable(tmp_path, host):
    cfg = ii.validate(params(tmp_path, read_only=True))
    argv = ii.qsd_argv(cfg, "/run/x/a.export", "/run/x/a.pid", 7)
    assert "read-only=on" in argv[argv.index("--blockdev") + 1].split(",")
    assert argv[argv.index("--export") + 1].split(",")[-1] == "writable=off"
    cfg = ii.validate(params(tmp_path))
    argv = ii.qsd_argv(cfg, "/run/x/a.export", "/run/x/a.pid", 7)
    assert "read-only=on" not in argv[argv.index("--blockdev") + 1].split(",")
    assert argv[argv.index("--export") + 1].split(",")[-1] == "writable=on"


def test_read_only_never_goes_with_format_force(tmp_path):
    with pytest.raises(InvalidInputError, match="never formats it; it cannot go with format=force"):
        ii.validate(params(tmp_path, read_only=True, format="force"))
    assert ii.validate(params(tmp_path, read_only=True, format="never"))["read_only"] is True
    assert ii.validate(params(tmp_path))["read_only"] is False


@pytest.mark.parametrize("found,message", [
    ({"blank": True}, "carries nothing \\(it is blank\\)"),
    ({"blank": False, "type": "ext4", "label": "other"}, "carries ext4 labelled other"),
    ({"blank": False, "type": None, "signatures": ["LVM2_member"]}, "carries LVM2_member"),
])
def test_read_only_never_formats(found, message):
    for mode in ("if_blank", "never"):
        with pytest.raises(IscsiAttachError, match=message + ".*never formats"):
            ii.decide_format(found, "ext4", "vmcollect", mode, read_only=True)
    assert ii.decide_format({"blank": False, "type": "ext4", "label": "vmcollect"}, "ext4", "vmcollect", "if_blank",
                            read_only=True) is False


def test_read_only_mount_options():
    assert ii.read_only_options("ext4") == "ro,noload"
    assert ii.read_only_options("ext3") == "ro,noload"
    assert ii.read_only_options("xfs") == "ro,norecovery"
    assert ii.read_only_options("ext2") == "ro"


def test_check_mode_plan(tmp_path, host, journal):
    res = ii.attach(journal, params(tmp_path, read_only=True), check_mode=True)
    assert res["changed"] and res["read_only"] and len(res["plan"]) == 5
    assert "read-only" in res["plan"][0] and res["plan"][2] == "attach a read-only loop device to the export"
    assert "never formatted" in res["plan"][3] and "ro,noload" in res["plan"][4]
    assert host.calls == [] and not journal.exists()


def test_userspace_read_only_attach_and_detach(tmp_path, userspace, journal):
    host = userspace
    host.blkid = OURS
    p = params(tmp_path, read_only=True)
    res = ii.attach(journal, p)
    assert res["changed"] and res["read_only"] and res["formatted"] is False
    (losetup,) = [c for c in _progs(host, "losetup") if "--find" in c]
    assert losetup[1] == "--read-only"
    (mount,) = _progs(host, "mount")
    assert mount[1:5] == ["-t", "ext4", "-o", "ro,noload"] and mount[-1] == p["mountpoint"]
    assert _progs(host, "mkfs.ext4") == [] and host.formatted == []
    assert [r["undo"].get("read_only") for r in journal.pending() if r["action"] in (ii.ACTION_QSD, ii.ACTION_MOUNT)] \
        == [True, True]
    out = ii.detach(journal, p)
    assert out["changed"] and journal.pending() == []
    assert ii.mount_at(p["mountpoint"]) is None and not os.path.exists(str(host.sys / "block" / "loop7"))


def test_userspace_read_only_refuses_a_blank_lun_and_takes_everything_back(tmp_path, userspace, journal):
    host = userspace
    p = params(tmp_path, read_only=True)
    with pytest.raises(IscsiAttachError, match="carries nothing \\(it is blank\\).*never formats") as info:
        ii.attach(journal, p)
    assert _progs(host, "mkfs.ext4") == [] and _progs(host, "mount") == []
    assert info.value.details["rolled_back"] and journal.pending() == []
    assert not os.path.exists(p["mountpoint"]) and not os.path.exists(str(host.sys / "block" / "loop7"))


def test_open_iscsi_read_only_sets_the_disk_read_only_before_anything(tmp_path, host, journal):
    _fake_blockdev(host)
    host.blkid = OURS
    p = oi_params(tmp_path, read_only=True)
    res = ii.attach(journal, p)
    assert res["changed"] and res["formatted"] is False
    disk = str(host.dev / "sdx")
    assert host.read_only_devices == {disk}
    setro = host.calls.index(["/usr/sbin/blockdev", "--setro", disk])
    first_probe = min(i for i, c in enumerate(host.calls) if os.path.basename(c[0]) in ("blkid", "wipefs"))
    (mount,) = _progs(host, "mount")
    assert setro < first_probe < host.calls.index(mount)
    assert mount[1:5] == ["-t", "ext4", "-o", "ro,noload"]
    assert _progs(host, "mkfs.ext4") == []
    ii.detach(journal, p)
    assert host.sessions == set() and host.nodes == {} and host.ifaces == set() and journal.pending() == []


def test_open_iscsi_read_only_refuses_a_blank_lun(tmp_path, host, journal):
    _fake_blockdev(host)
    with pytest.raises(IscsiAttachError, match="never formats"):
        ii.attach(journal, oi_params(tmp_path, read_only=True))
    assert host.formatted == [] and host.sessions == set() and host.ifaces == set() and journal.pending() == []


def test_open_iscsi_disk_that_stays_writable_is_not_mounted(tmp_path, host, journal):
    host.blkid = OURS  # no fake blockdev: --getro answers nothing
    with pytest.raises(IscsiAttachError, match="cannot be made read-only"):
        ii.attach(journal, oi_params(tmp_path, read_only=True))
    assert _progs(host, "mount") == [] and host.sessions == set() and journal.pending() == []


def test_read_only_and_read_write_do_not_share_an_attachment(tmp_path, host, journal):
    _fake_blockdev(host)
    host.blkid = OURS
    ii.attach(journal, oi_params(tmp_path, read_only=True))
    assert not ii.attach(journal, oi_params(tmp_path, read_only=True))["changed"]
    with pytest.raises(IscsiAttachError, match="read-only for this case; detach it .* before attaching it read-write"):
        ii.attach(journal, oi_params(tmp_path))
    assert ii.mount_at(oi_params(tmp_path)["mountpoint"]) is not None  # the read-only attachment is left as it was
    ii.detach(journal, oi_params(tmp_path))
    assert journal.pending() == []
