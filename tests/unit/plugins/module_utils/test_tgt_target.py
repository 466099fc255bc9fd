# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""setup_iscsi_target's logic that does not need a tgtd: options, names, the firewall script,
/proc parsing, sparse files, the backing-file undo, and the apt install path (mocked: tgt is already
installed on the lab machines, so installing it is tested here only)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import os

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import target as t
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import tgt as _tgt
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


# -- the LUN's SCSI identity ------------------------------------------------------------------------

IQN = "iqn.2026-11.io.dfir.vmcollect:case-42:kvm1"


def test_lun_identity_is_the_iqns():
    identity = t.lun_identity(IQN)
    # printf %s iqn.2026-11.io.dfir.vmcollect:case-42:kvm1 | sha256sum -> 0e88d7633e4296ef499435fa14e8f3e3...
    assert identity == {"scsi_id": "60e88d7633e4296ef499435fa14e8f3e", "scsi_sn": "0e88d7633e4296ef4994",
                        "naa": "naa.60e88d7633e4296ef499435fa14e8f3e"}
    assert identity["naa"] == "naa." + identity["scsi_id"]  # tgtd's NAA type 6 designator is the scsi_id as it is
    assert len(identity["scsi_id"]) <= 36 and len(identity["scsi_sn"]) <= 36  # tgt's SCSI_ID_LEN, SCSI_SN_LEN
    assert t.lun_identity(IQN) == identity  # the same on every export


@pytest.mark.parametrize("other", [
    "iqn.2026-11.io.dfir.vmcollect:case-43:kvm1",  # another case, same host
    "iqn.2026-11.io.dfir.vmcollect:case-42:kvm2",  # same case, another host
    "iqn.2026-11.io.dfir.vmcollect:case-42",
])
def test_lun_identity_differs_between_cases_and_hosts(other):
    mine, theirs = t.lun_identity(IQN), t.lun_identity(other)
    assert all(mine[k] != theirs[k] for k in t.IDENTITY)


def test_identity_of_a_lun_as_tgtd_shows_it():
    assert t.identity_of({"scsi_id": "IET     00010001", "scsi_sn": "beaf11"}) == {
        "scsi_id": "IET     00010001", "scsi_sn": "beaf11", "naa": "naa.60000000000000000e00000000010001"}
    assert t.identity_of(None) == dict.fromkeys(t.IDENTITY)


def test_lun_settings():
    identity = t.lun_identity(IQN)
    tgt_default = {"thin": False, "scsi_id": "IET     00010001", "scsi_sn": "beaf11"}
    assert t.lun_settings(tgt_default, identity) == {"thin_provisioning": 1, "scsi_id": identity["scsi_id"],
                                                     "scsi_sn": identity["scsi_sn"]}
    assert t.lun_settings(dict(tgt_default, thin=True, scsi_sn=identity["scsi_sn"]), identity) == {
        "scsi_id": identity["scsi_id"]}
    assert t.lun_settings({"thin": True, "scsi_id": identity["scsi_id"], "scsi_sn": identity["scsi_sn"]},
                          identity) == {}


# `tgtadm --mode target --op show --tid 1` of a new target on Debian 12's tgt 1:1.0.85 (the session keys)
TGT_SESSION_DEFAULTS = {"MaxRecvDataSegmentLength": "8192", "MaxXmitDataSegmentLength": "8192", "InitialR2T": "Yes",
                        "ImmediateData": "Yes", "FirstBurstLength": "65536", "MaxBurstLength": "262144",
                        "MaxOutstandingR2T": "1"}


class FakeTgt(object):
    """tgtd as target.py sees it through TgtClient (it stands for the class too: any control port is this one)."""

    def __init__(self):
        self.state = []
        self.users = []
        self.updates = []
        self.param_updates = []

    def __call__(self, control_port):
        return self

    def running(self):
        return True

    def server_pid(self):
        return 4242

    def targets(self):
        return copy.deepcopy(self.state)

    def accounts(self):
        return list(self.users)

    def _target(self, tid):
        return [target for target in self.state if target["tid"] == tid][0]

    def new_target(self, tid, name):
        self.state.append({"tid": tid, "name": name, "state": "ready", "sessions": [], "luns": [], "accounts": [],
                           "acls": []})

    def delete_target(self, tid, force=True):
        self.state.remove(self._target(tid))

    def new_account(self, user, password):
        self.users.append(user)

    def delete_account(self, user):
        self.users.remove(user)

    def bind_account(self, tid, user, outgoing=False):
        self._target(tid)["accounts"].append({"user": user, "outgoing": outgoing})

    def unbind_account(self, tid, user, outgoing=False):
        self._target(tid)["accounts"].remove({"user": user, "outgoing": outgoing})

    def new_lun(self, tid, lun, backing_store, bstype="rdwr"):
        # tgtd's own identity for it (usr/spc.c spc_lu_init): the same for this tid and LUN on every tgtd
        self._target(tid)["luns"].append({"lun": lun, "type": "disk", "scsi_id": "IET     %04x%04x" % (tid, lun),
                                          "scsi_sn": "beaf%d%d" % (tid, lun), "size_mb": 1, "readonly": False,
                                          "thin": False, "online": True, "bstype": bstype, "path": backing_store})

    def target_params(self, tid):
        return dict(self._target(tid).setdefault("params", dict(TGT_SESSION_DEFAULTS)))

    def update_target(self, tid, name, value):
        target = self._target(tid)
        target.setdefault("params", dict(TGT_SESSION_DEFAULTS))[name] = str(value)
        self.param_updates.append((name, str(value), list(target["acls"])))

    def update_lun(self, tid, lun, **params):
        _tgt.check_lun_params(params)
        self.updates.append(params)
        entry = [x for x in self._target(tid)["luns"] if x["lun"] == lun][0]
        for key, value in params.items():
            if key in ("thin_provisioning", "readonly"):
                entry["thin" if key == "thin_provisioning" else key] = bool(int(value))
            else:
                entry[key] = value

    def delete_lun(self, tid, lun):
        luns = self._target(tid)["luns"]
        luns.remove([x for x in luns if x["lun"] == lun][0])

    def bind_initiator_name(self, tid, iqn):
        self._target(tid)["acls"].append(iqn)

    def unbind_initiator_name(self, tid, iqn):
        self._target(tid)["acls"].remove(iqn)


@pytest.fixture
def tgt_host(tmp_path, monkeypatch):
    """The case's tgtd (a FakeTgt) runs, the firewall table is there: present() gets to the target's own steps."""
    fake = FakeTgt()
    monkeypatch.setattr(t._tgt, "TgtClient", fake)
    monkeypatch.setattr(t, "which", lambda name: "/usr/sbin/" + name)
    monkeypatch.setattr(t, "inspect_daemon", lambda spec, tgtd_argv=None: {
        "state": "ours", "pid": 4242, "case": spec["case_id"],
        "argv": t.daemon_argv("/usr/sbin/tgtd", dict({"portal_address": "10.0.0.1"}, **spec))})
    monkeypatch.setattr(t, "firewall_state", lambda name, nft="nft": {"daddr": "10.0.0.1", "dport": 3260,
                                                                      "allowed": ["10.0.0.2"]})
    return fake


def _spec(tmp_path, state="present", **extra):
    if state != "present":
        return t.build_spec("case-42", state, target_name="kvm1", backing_file=str(tmp_path / "kvm1.img"), **extra)
    return t.build_spec("case-42", "present", target_name="kvm1", **_options(tmp_path / "kvm1.img", **extra))


def _options(backing_file, **extra):
    options = dict(GOOD)
    options.update(backing_file=str(backing_file), size="1M", **extra)
    return options


def test_present_gives_the_lun_its_identity_and_returns_it(tmp_path, tgt_host):
    journal = Journal("case-42", str(tmp_path / "journal"))
    spec = _spec(tmp_path)
    identity = t.lun_identity(spec["target_iqn"])
    assert spec["target_iqn"] == IQN
    result = t.present(journal, spec)
    # one update right after the LUN is made, before the initiator is allowed: no initiator sees tgt's own identity
    assert tgt_host.updates == [{"thin_provisioning": 1, "scsi_id": identity["scsi_id"], "scsi_sn": identity["scsi_sn"]}]
    lun = t._lun(tgt_host.targets()[0])
    assert (lun["scsi_id"], lun["scsi_sn"], lun["thin"]) == (identity["scsi_id"], identity["scsi_sn"], True)
    assert dict((k, result[k]) for k in t.IDENTITY) == identity
    assert (result["diff"]["after"]["scsi_id"], result["diff"]["after"]["scsi_sn"]) == (identity["scsi_id"],
                                                                                        identity["scsi_sn"])
    assert "add LUN 1 (thin, serial 0e88d7633e4296ef4994, naa.60e88d7633e4296ef499435fa14e8f3e; backed by %s) to " \
           "target %s" % (spec["backing_file"], IQN) in result["actions"]
    # recorded with the LUN's change in the journal
    record = journal.find(t.A_LUN, target_iqn=IQN)[0]
    assert [r["facts"] for r in journal.records() if r.get("kind") == "applied" and r["ref"] == record["id"]] == \
        [identity]
    # a rerun changes nothing and says the same
    again = t.present(journal, spec)
    assert not again["changed"] and len(tgt_host.updates) == 1
    assert dict((k, again[k]) for k in t.IDENTITY) == identity
    assert again["diff"]["before"] == again["diff"]["after"]


def test_a_re_export_of_the_volume_has_the_same_identity(tmp_path, tgt_host):
    """Released (state=absent keeps the evidence) and exported again, with a tid tgtd hands out again: same identity."""
    journal = Journal("case-42", str(tmp_path / "journal"))
    first = t.present(journal, _spec(tmp_path))
    with open(str(tmp_path / "kvm1.img"), "r+b") as f:
        f.write(b"evidence")
        os.fsync(f.fileno())
    gone = t.absent(journal, _spec(tmp_path, "absent"))
    assert tgt_host.state == [] and os.path.exists(str(tmp_path / "kvm1.img"))
    assert dict((k, gone[k]) for k in t.IDENTITY) == dict.fromkeys(t.IDENTITY)
    second = t.present(journal, _spec(tmp_path, reuse_backing_file=True))
    assert second["tid"] == first["tid"] == 1
    assert dict((k, second[k]) for k in t.IDENTITY) == dict((k, first[k]) for k in t.IDENTITY)
    assert tgt_host.updates[-1] == tgt_host.updates[0]


def test_another_case_on_the_same_tid_and_lun_has_another_identity(tmp_path, tgt_host):
    one = t.present(Journal("case-42", str(tmp_path / "journal")), _spec(tmp_path))
    tgt_host.state, tgt_host.users = [], []  # another collector's tgtd: tid 1 again
    other = t.present(Journal("case-43", str(tmp_path / "journal")),
                      t.build_spec("case-43", "present", target_name="kvm1", **_options(tmp_path / "other.img")))
    assert one["tid"] == other["tid"] and one["lun"] == other["lun"]
    assert one["scsi_sn"] != other["scsi_sn"] and one["naa"] != other["naa"]


def test_a_lun_left_with_tgts_identity_gets_its_own(tmp_path, tgt_host):
    """A run that stopped between the LUN and its settings: the rerun sets them (the LUN's record covers them)."""
    journal = Journal("case-42", str(tmp_path / "journal"))
    spec = _spec(tmp_path)
    t.present(journal, spec)
    tgt_host.state[0]["luns"][0].update(scsi_id="IET     00010001", scsi_sn="beaf11", thin=False)
    identity = t.lun_identity(IQN)
    plan = t.present(journal, spec, check_mode=True)
    assert plan["actions"] == ["would: set scsi_id=%s, scsi_sn=%s, thin_provisioning=1 on LUN 1 of target %s"
                               % (identity["scsi_id"], identity["scsi_sn"], IQN)]
    assert len(tgt_host.updates) == 1
    result = t.present(journal, spec)
    assert result["changed"] and tgt_host.updates[-1] == {"thin_provisioning": 1, "scsi_id": identity["scsi_id"],
                                                          "scsi_sn": identity["scsi_sn"]}
    assert result["diff"]["before"]["scsi_sn"] == "beaf11" and result["diff"]["after"]["scsi_sn"] == identity["scsi_sn"]


def test_an_identity_is_not_changed_under_logged_in_initiators(tmp_path, tgt_host):
    journal = Journal("case-42", str(tmp_path / "journal"))
    spec = _spec(tmp_path)
    t.present(journal, spec)
    tgt_host.state[0]["luns"][0].update(scsi_id="IET     00010001", scsi_sn="beaf11")
    tgt_host.state[0]["sessions"].append({"initiator": GOOD["initiator_iqn"], "addresses": ["10.0.0.2"]})
    with pytest.raises(IscsiTargetError) as exc:
        t.present(journal, spec)
    assert "presents the SCSI identity scsi_id 'IET     00010001', scsi_sn 'beaf11', not its own (serial " \
           "0e88d7633e4296ef4994, naa.60e88d7633e4296ef499435fa14e8f3e), and %s is logged in" \
           % GOOD["initiator_iqn"] in exc.value.message
    assert len(tgt_host.updates) == 1


def test_check_mode_plans_the_identity(tmp_path, tgt_host):
    journal = Journal("case-42", str(tmp_path / "journal"))
    result = t.present(journal, _spec(tmp_path), check_mode=True)
    assert "would: add LUN 1 (thin, serial 0e88d7633e4296ef4994, naa.60e88d7633e4296ef499435fa14e8f3e; backed by " \
           "%s) to target %s" % (str(tmp_path / "kvm1.img"), IQN) in result["actions"]
    assert result["scsi_sn"] == "0e88d7633e4296ef4994" and tgt_host.state == [] and tgt_host.updates == []


def test_readonly_returns_the_identity_the_lun_presents(tmp_path, tgt_host):
    journal = Journal("case-42", str(tmp_path / "journal"))
    t.present(journal, _spec(tmp_path))
    result = t.readonly(journal, _spec(tmp_path, "readonly"))
    assert tgt_host.updates[-1] == {"readonly": 1}
    assert dict((k, result[k]) for k in t.IDENTITY) == t.lun_identity(IQN)
    assert result["diff"]["after"]["scsi_sn"] == "0e88d7633e4296ef4994" and result["diff"]["after"]["readonly"]


def test_present_offers_large_pdus_and_no_initial_r2t_before_the_initiator_may_log_in(tmp_path, tgt_host):
    """The session parameters are set on the target before its ACL lets the initiator in (a login negotiates from
    them), once: a rerun changes nothing; check mode plans them."""
    journal = Journal("case-42", str(tmp_path / "journal"))
    spec = _spec(tmp_path)
    planned = t.present(journal, spec, check_mode=True)
    assert any(a.startswith("would: set FirstBurstLength=262144, InitialR2T=No") for a in planned["actions"])
    assert tgt_host.param_updates == []
    result = t.present(journal, spec)
    assert sorted((name, value) for name, value, dummy in tgt_host.param_updates) == sorted(t.SESSION_PARAMS.items())
    assert all(acls == [] for dummy, dummy2, acls in tgt_host.param_updates), "set before the initiator was allowed"
    assert "set FirstBurstLength=262144, InitialR2T=No, MaxBurstLength=1048576, MaxRecvDataSegmentLength=262144, " \
           "MaxXmitDataSegmentLength=262144 on target %s" % IQN in result["actions"]
    again = t.present(journal, spec)
    assert not again["changed"] and len(tgt_host.param_updates) == len(t.SESSION_PARAMS)
