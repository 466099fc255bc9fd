# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""setup_iscsi_target's logic that does not need a tgtd: options, names, the firewall script,
/proc parsing, sparse files, the backing-file undo, and the apt install path (mocked: tgt is already
installed on the lab machines, so installing it is tested here only)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import target as t
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiTargetError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UNDO_HANDLERS, Journal, UndoContext

DO = UndoContext()
PLAN = UndoContext(check_mode=True)

GOOD = dict(backing_file="/evidence/c/kvm1.lun", size="20G", initiator_iqn="iqn.2026-11.io.x:init",
            initiator_addresses=["10.0.0.2"], portal_address="10.0.0.1", chap_user="u1",
            chap_password="a-long-secret-1")


@pytest.mark.parametrize("value,expected", [
    ("20G", 20 * 1024 ** 3), ("20GiB", 20 * 1024 ** 3), ("512M", 512 * 1024 ** 2), ("1.5T", 3 * 1024 ** 4 // 2),
    (1048576, 1048576), ("4096", 4096), ("64k", 65536), ("512B", 512),
])
def test_parse_size(value, expected):
    assert t.parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "10X", "-1G", "0", "1000", "1.1k"])
def test_parse_size_refused(value):
    with pytest.raises(InvalidInputError):
        t.parse_size(value)


def test_derive_iqn():
    assert t.derive_iqn("Case_42") == "iqn.2026-11.io.dfir.vmcollect:case-42"
    assert t.derive_iqn("Case_42", "KVM host 1") == "iqn.2026-11.io.dfir.vmcollect:case-42:kvm-host-1"


@pytest.mark.parametrize("iqn", ["iqn.2026-11.io.x", "iqn.2026-11.io.x:a.b:c-d", "eui.0123456789abcdef"])
def test_iqn_ok(iqn):
    assert t.check_iqn(iqn, "x") == iqn


@pytest.mark.parametrize("iqn", ["", "iqn.26-1.x:y", "iqn.2026-11.io.x:a b", "iqn.2026-11.io.x:a,b", "IQN.2026-11.x",
                                 "iqn.2026-11.io.x:" + "a" * 220])
def test_iqn_refused(iqn):
    with pytest.raises(InvalidInputError):
        t.check_iqn(iqn, "x")


def test_build_spec_present():
    options = dict(GOOD)
    options["initiator_addresses"] = ["10.0.0.3", "10.0.0.2", "10.0.1.0/24"]
    spec = t.build_spec("case-1", "present", target_name="kvm1", **options)
    assert spec["target_iqn"] == "iqn.2026-11.io.dfir.vmcollect:case-1:kvm1"
    assert spec["size"] == 20 * 1024 ** 3
    assert spec["initiator_addresses"] == ["10.0.0.2", "10.0.0.3", "10.0.1.0/24"]
    assert spec["firewall_table"].startswith("vmcollect_") and len(spec["firewall_table"]) == 22
    assert spec["control_port"] == 60 and spec["portal_port"] == 3260


@pytest.mark.parametrize("change,message", [
    (dict(backing_file="rel/x.lun"), "relative"),
    (dict(size=None), "needs size"),
    (dict(chap_password="tiny-pw"), "12 to 255"),
    (dict(portal_address="0.0.0.0"), "every address"),
    (dict(initiator_addresses=["fd00::1"]), "family"),
    (dict(initiator_addresses=["10.0.0.1/24"]), "no host bits"),
    (dict(chap_user="a,b"), "CHAP user name"),
    (dict(mutual_chap_user="m1"), "both"),
    (dict(mutual_chap_user="m1", mutual_chap_password="a-long-secret-1"), "differ"),
    (dict(mutual_chap_user="u1", mutual_chap_password="another-secret-2"), "differ from chap_user"),
    (dict(backing_file="/a,b"), "comma"),
])
def test_build_spec_refused(change, message):
    options = dict(GOOD, **change)
    with pytest.raises(InvalidInputError) as exc:
        t.build_spec("case-1", "present", **options)
    assert message in exc.value.message
    for secret in ("a-long-secret-1", "another-secret-2", "tiny-pw"):
        assert secret not in exc.value.message


def test_remove_backing_file_only_with_absent():
    with pytest.raises(InvalidInputError):
        t.build_spec("case-1", "readonly", remove_backing_file=True)
    assert t.build_spec("case-1", "absent", remove_backing_file=True)["remove_backing_file"]


def test_firewall_script():
    options = dict(GOOD)
    options["initiator_addresses"] = ["10.0.0.2", "10.0.0.7"]
    spec = t.build_spec("case-1", "present", **options)
    script = t.firewall_script(spec)
    assert "table inet %s {" % spec["firewall_table"] in script
    assert 'comment "dfir.vmcollect case case-1"' in script
    assert "ip daddr 10.0.0.1 tcp dport 3260 ip saddr != { 10.0.0.2, 10.0.0.7 } counter reject with tcp reset" in script
    assert "a-long-secret-1" not in script


def test_firewall_state_parses_nft_json(monkeypatch):
    out = ('{"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": "vmcollect_x"}}, {"rule": {"expr": ['
           '{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.1"}},'
           '{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 3261}},'
           '{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": '
           '["10.0.0.3", {"prefix": {"addr": "10.0.1.0", "len": 24}}]}}}, {"counter": {}}, {"reject": {}}]}}]}')
    monkeypatch.setattr(t, "run", lambda argv, data=None, env=None: (0, out, ""))
    assert t.firewall_state("vmcollect_x") == {"daddr": "10.0.0.1", "dport": 3261, "allowed": ["10.0.0.3", "10.0.1.0/24"]}
    monkeypatch.setattr(t, "run", lambda argv, data=None, env=None: (1, "", "Error: No such file or directory"))
    assert t.firewall_state("vmcollect_x") is None


def test_owner_case_and_control_port():
    argv = t.daemon_argv("/usr/sbin/tgtd", dict(control_port=61, portal_address="10.0.0.1", portal_port=3261,
                                                case_id="case.1-x"))
    assert argv == ["/usr/sbin/tgtd", "-C", "61", "--iscsi", "portal=10.0.0.1:3261", "--pid-file",
                    "/var/run/tgtd/dfir-vmcollect.case.1-x.61.pid"]
    assert t._owner_case(argv) == "case.1-x"
    assert t._control_port_of(argv) == "61"
    assert t._owner_case(["tgtd", "-f"]) is None
    assert t._control_port_of(["tgtd", "-f"]) == "0"
    assert t._describe({"argv": ["/usr/sbin/tgtd", "-f"], "pid": 5}) == \
        "the system's tgt service (tgtd pid 5, control port 0)"
    assert t.portal_text("fd00::1", 3260) == "[fd00::1]:3260"


def test_hex_addresses_of_proc_net_tcp():
    assert t._hex_address("0101D50A", 4) == "10.213.1.1"
    assert t._hex_address("00000000", 4) == "0.0.0.0"
    assert t._hex_address("00000000000000000000000000000000", 6) == "::"
    assert t._hex_address("00000000000000000000000001000000", 6) == "::1"


def test_listeners_finds_a_real_listener():
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        port = sock.getsockname()[1]
        found = t.listeners(port)
        assert [(f["address"], f["pid"]) for f in found] == [("127.0.0.1", os.getpid())]
    finally:
        sock.close()
    assert t.address_is_local("127.0.0.1")
    assert not t.address_is_local("192.0.2.99")


def test_create_sparse(tmp_path):
    path = str(tmp_path / "lun")
    facts = t.create_sparse(path, 64 * 1024 * 1024)
    st = os.stat(path)
    assert st.st_size == 64 * 1024 * 1024 and st.st_blocks == 0 and facts["allocated"] == 0
    assert st.st_mode & 0o777 == 0o600
    with pytest.raises(OSError):
        t.create_sparse(path, 512)  # never opens an existing file


def test_undo_backing_keeps_unless_asked(tmp_path):
    path = str(tmp_path / "lun")
    t.create_sparse(path, 4096)
    with open(path, "r+b") as f:
        f.write(b"ext4 made here")
        os.fsync(f.fileno())
    undo = UNDO_HANDLERS[t.A_BACKING]
    assert undo({"path": path}, DO).startswith("kept")
    assert os.path.exists(path)
    assert undo({"path": path, "remove": True}, PLAN).startswith("would remove")
    assert undo({"path": path, "remove": True}, DO).startswith("removed")
    assert not os.path.exists(path)
    assert undo({"path": path, "remove": True}, DO).endswith("not there")


def test_a_backing_file_nothing_was_written_to_is_removed_with_the_folder_made_for_it(tmp_path):
    """An attach that failed before any write leaves a sparse file of no data: no evidence, so it is not kept."""
    folder = tmp_path / "collector" / "case-1"
    path = str(folder / "kvm1.img")
    undo_rec = {"path": path, "created_dirs": [str(tmp_path / "collector"), str(folder)]}
    t.create_sparse(path, 1 << 30, str(folder))
    undo = UNDO_HANDLERS[t.A_BACKING]
    assert undo(undo_rec, PLAN).startswith("would remove the backing file %s: nothing was ever written" % path)
    assert os.path.exists(path)
    assert "nothing was ever written to it (no evidence), and its folder" in undo(undo_rec, DO)
    assert not os.path.exists(str(tmp_path / "collector"))


def test_grow_sparse_extends_with_a_hole_and_never_shrinks(tmp_path):
    path = str(tmp_path / "lun")
    t.create_sparse(path, 1 << 20)
    with open(path, "r+b") as f:
        f.write(b"data" * 1024)
    before = open(path, "rb").read()
    assert t.room_size(path, 8 << 20) == 9 << 20  # 4 KiB of data + 8 MiB, rounded up to MiB
    t.grow_sparse(path, 9 << 20)
    assert os.stat(path).st_size == 9 << 20 and open(path, "rb").read(1 << 20) == before
    t.grow_sparse(path, 1 << 20)
    assert os.stat(path).st_size == 9 << 20
    assert UNDO_HANDLERS[t.A_GROWN]({"path": path, "from": 1 << 20, "to": 9 << 20}, DO).startswith("left the backing file")


def test_every_action_has_a_handler():
    for action in (t.A_PACKAGES, t.A_DAEMON, t.A_BACKING, t.A_FIREWALL, t.A_TARGET, t.A_ACCOUNT, t.A_BINDING,
                   t.A_LUN, t.A_ACL, t.A_READONLY, t.A_GROWN):
        assert UNDO_HANDLERS[action] is t.UNDO[action]


def test_undo_readonly_never_makes_writable():
    assert "left read-only" in t.undo_readonly({"lun": 1, "target_iqn": "iqn.2026-11.x:y"}, DO)


class FakeApt(object):
    """apt-get and the policy-rc.d guard, as the install path sees them."""

    def __init__(self, guard_path):
        self.calls = []
        self.guard_path = guard_path
        self.guard_seen = None

    def __call__(self, argv, data=None, env=None, timeout=None):
        assert timeout is None or 0 < timeout <= t.APT_TIMEOUT
        self.calls.append((argv, env))
        if argv[:2] == ["apt-get", "-s"]:
            return 0, "NOTE: simulation\nInst libconfig-general-perl (2.65-2 Debian:12)\nInst tgt (1:1.0.85-1)\n" \
                      "Conf tgt (1:1.0.85-1)\n", ""
        if argv[:2] == ["apt-get", "-y"] and "install" in argv:
            with open(self.guard_path) as f:
                self.guard_seen = f.read()
            return 0, "", ""
        if argv[0] == "dpkg-query":
            return 0, "install ok installed", ""
        if argv[:3] == ["apt-get", "-y", "purge"]:
            return 0, "", ""
        raise AssertionError(argv)


def test_install_path_is_guarded_and_journaled(tmp_path, monkeypatch):
    guard = str(tmp_path / "policy-rc.d")
    monkeypatch.setattr(t, "POLICY_RC_D", guard)
    apt = FakeApt(guard)
    monkeypatch.setattr(t, "run", apt)
    journal = Journal("case-1", str(tmp_path / "journal"))
    steps = t._Steps(journal, {}, False)
    t.install_tgt(steps)
    assert "exit 101" in apt.guard_seen  # no service starts during the install
    assert not os.path.exists(guard)  # and the guard is gone again
    install = [c for c in apt.calls if c[0][:2] == ["apt-get", "-y"]][0]
    assert install[0] == ["apt-get", "-y", "--no-install-recommends", "install", "tgt"]
    assert install[1] == {"DEBIAN_FRONTEND": "noninteractive"}
    pending = journal.pending()
    assert [r["action"] for r in pending] == [t.A_PACKAGES]  # the guard's record is undone already
    assert pending[0]["undo"] == {"packages": ["libconfig-general-perl", "tgt"]}
    result = journal.teardown()
    assert result["undone"][0]["result"] == "purged libconfig-general-perl, tgt"
    assert apt.calls[-1][0] == ["apt-get", "-y", "purge", "libconfig-general-perl", "tgt"]


def test_install_check_mode_changes_nothing(tmp_path, monkeypatch):
    guard = str(tmp_path / "policy-rc.d")
    monkeypatch.setattr(t, "POLICY_RC_D", guard)
    apt = FakeApt(guard)
    monkeypatch.setattr(t, "run", apt)
    journal = Journal("case-1", str(tmp_path / "journal"))
    steps = t._Steps(journal, {}, True)
    t.install_tgt(steps)
    assert steps.done == ["would: install the package(s) libconfig-general-perl, tgt"]
    assert [c[0][:2] for c in apt.calls] == [["apt-get", "-s"]]
    assert not journal.exists() and not os.path.exists(guard)


def test_install_refused_with_a_permissive_policy(tmp_path, monkeypatch):
    guard = tmp_path / "policy-rc.d"
    guard.write_text("#!/bin/sh\nexit 0\n")
    monkeypatch.setattr(t, "POLICY_RC_D", str(guard))
    calls = []

    def fake(argv, data=None, env=None, timeout=None):
        calls.append(argv)
        if argv[:2] == ["apt-get", "-s"]:
            return 0, "Inst tgt (1)\n", ""
        return 0, "", ""

    monkeypatch.setattr(t, "run", fake)
    journal = Journal("case-1", str(tmp_path / "journal"))
    with pytest.raises(IscsiTargetError) as exc:
        t.install_tgt(t._Steps(journal, {}, False))
    assert "would let the package start" in exc.value.message
    assert not journal.exists()
    assert not any("install" in a and "-s" not in a for a in calls)


def test_undo_packages_not_installed(monkeypatch):
    monkeypatch.setattr(t, "run", lambda argv, data=None, env=None: (1, "", "no packages found"))
    assert t.undo_packages({"packages": ["tgt"]}, DO) == "package(s) tgt: not installed"
