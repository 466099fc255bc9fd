# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tgtd control-socket client: the request bytes tgtadm 1.0.85 sends (taken with strace), a
fake tgtd on a real unix socket, and the parser of `show` output (taken from a real tgtd)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import struct
import threading

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import tgt as _tgt
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiTargetError

# `strace -e write tgtadm -C 64 --mode target --op show` on Debian 12 (tgt 1:1.0.85-1+deb12u1)
TGTADM_TARGET_SHOW = bytes(bytearray(
    [1, 0, 0, 0, 2, 0, 0, 0] + [0] * 64 + [0x78, 0, 0, 0, 0xff, 0xff, 0xff, 0xff] + [0] * 8 + [0xff] * 8 + [0] * 24))

SHOW = """Target 1: iqn.2026-11.io.test:probe
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2026-11.io.test:init alias: none
            Connection: 0
                IP Address: 10.213.1.2
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags:
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 67 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: Yes
            SWP: No
            Thin-provisioning: Yes
            Backing store type: rdwr
            Backing store path: /var/tmp/probe.img
            Backing store flags:
    Account information:
        u1
        m1 (outgoing)
    ACL information:
        iqn.2026-11.io.test:init
Target 2: iqn.2026-11.io.test:empty
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Size: 0 MB, Block size: 1
            Backing store path: None
    Account information:
    ACL information:
"""


def test_header_is_tgtadms():
    assert _tgt.REQUEST.size == 120
    assert _tgt.pack_request(_tgt.MODE_TARGET, _tgt.OP_SHOW, lld="") == TGTADM_TARGET_SHOW


def test_account_request_layout():
    data = _tgt.pack_request(_tgt.MODE_ACCOUNT, _tgt.OP_BIND, "user=u1", tid=1, ac_dir=_tgt.ACCOUNT_OUTGOING)
    fields = _tgt.REQUEST.unpack(data[:120])
    assert fields[0:2] == (7, 3)
    assert fields[2].rstrip(b"\0") == b"iscsi"
    assert fields[3] == 120 + len("user=u1") + 1
    assert fields[4] == 1
    assert fields[10] == 1  # ac_dir
    # NUL-terminated, as tgtadm sends it (strace: write(3, "path=/tmp/x.img\0", 16)): tgtd parses a C string,
    # and without the NUL it read past the end - a random "invalid request", or a CHAP secret with junk appended
    assert data[120:] == b"user=u1\0"


def test_nul_refused():
    with pytest.raises(IscsiTargetError):
        _tgt.pack_request(_tgt.MODE_ACCOUNT, _tgt.OP_NEW, "user=a,password=b\0c")


def test_parse_targets():
    targets = _tgt.parse_targets(SHOW)
    assert [t["tid"] for t in targets] == [1, 2]
    t = targets[0]
    assert t["name"] == "iqn.2026-11.io.test:probe"
    assert t["state"] == "ready"
    assert t["sessions"] == [{"initiator": "iqn.2026-11.io.test:init", "addresses": ["10.213.1.2"]}]
    lun = t["luns"][1]
    assert lun == {"lun": 1, "type": "disk", "scsi_id": "IET     00010001", "scsi_sn": "beaf11", "size_mb": 67,
                   "readonly": True, "thin": True, "online": True, "bstype": "rdwr", "path": "/var/tmp/probe.img"}
    assert t["luns"][0]["path"] is None
    assert targets[1]["luns"][0]["scsi_id"] is None and targets[1]["luns"][0]["scsi_sn"] is None
    assert t["accounts"] == [{"user": "u1", "outgoing": False}, {"user": "m1", "outgoing": True}]
    assert t["acls"] == ["iqn.2026-11.io.test:init"]
    assert targets[1]["accounts"] == [] and targets[1]["acls"] == [] and targets[1]["sessions"] == []


def test_parse_accounts():
    assert _tgt.parse_accounts("Account list:\n    m1\n    u1\n") == ["m1", "u1"]
    assert _tgt.parse_accounts("Account list:\n") == []


@pytest.mark.parametrize("user", ["a,b", "", "a b", "x" * 256])
def test_chap_user_checked(user):
    with pytest.raises(InvalidInputError):
        _tgt.check_chap_user(user)


# scsi_id -> the NAA type 6 designator of VPD page 0x83, read with INQUIRY from tgtd 1.0.85 (Debian 12) over iSCSI
@pytest.mark.parametrize("scsi_id,naa", [
    ("IET     00030001", "naa.60000000000000000e00000000030001"),  # tgt's own, tid 3 LUN 1: letters count as 0 or hex
    ("6abc", "naa.60000000000000000000000000006abc"),
    ("0123456789abcdef0123456789abcdef0123", "naa.656789abcdef0123456789abcdef0123"),  # the last 31 digits, then 6
    ("60e88d7633e4296ef499435fa14e8f3e", "naa.60e88d7633e4296ef499435fa14e8f3e"),
])
def test_naa_of_is_tgtds(scsi_id, naa):
    assert _tgt.naa_of(scsi_id) == naa


@pytest.mark.parametrize("params", [
    {"scsi_sn": "a,b"}, {"scsi_sn": "a b"}, {"scsi_sn": ""}, {"scsi_id": "x" * 37}, {"scsi_sn": "x" * 37},
    {"thin_provisioning": "1,readonly=0"},
])
def test_lun_params_refused(params):
    """tgtd splits parameters at commas and cuts a scsi_id or scsi_sn of more than 36 characters without a word."""
    with pytest.raises(InvalidInputError):
        _tgt.check_lun_params(params)


def test_lun_params_accepted():
    params = {"scsi_id": "6" * 36, "scsi_sn": "EISD100123", "thin_provisioning": 1, "readonly": 1}
    assert _tgt.check_lun_params(params) == params


class FakeTgtd(threading.Thread):
    """Answers each connection with (err, text) from ``answers`` and keeps what it was sent."""

    def __init__(self, path, answers):
        threading.Thread.__init__(self, daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(5)
        self.answers = list(answers)
        self.received = []

    def run(self):
        while self.answers:
            conn = self.sock.accept()[0]
            head = b""
            while len(head) < 120:
                chunk = conn.recv(120 - len(head))
                if not chunk:
                    break
                head += chunk
            if len(head) < 120:  # a connection that only looked (running(), server_pid())
                conn.close()
                continue
            length = _tgt.REQUEST.unpack(head)[3]
            body = b""
            while len(body) < length - 120:
                body += conn.recv(length - 120 - len(body))
            self.received.append((_tgt.REQUEST.unpack(head), body))
            err, text = self.answers.pop(0)
            data = text.encode() + b"\0" if text else b""
            conn.sendall(struct.pack("=II", err, 8 + len(data)) + data)
            conn.close()
        self.sock.close()


def test_client_against_a_fake_tgtd(tmp_path):
    fake = FakeTgtd(str(tmp_path / "socket.5"), [(0, ""), (0, SHOW), (14, ""), (4, "")])
    fake.start()
    client = _tgt.TgtClient(5, socket_dir=str(tmp_path), timeout=5)
    client.new_account("u1", "secret-secret-1")
    assert [t["name"] for t in client.targets()] == ["iqn.2026-11.io.test:probe", "iqn.2026-11.io.test:empty"]
    with pytest.raises(_tgt.TgtdError) as exc:
        client.new_account("u1", "secret-secret-1")
    assert exc.value.code == _tgt.USER_EXIST
    assert "this account already exists" in exc.value.message
    assert "secret-secret-1" not in exc.value.message
    with pytest.raises(_tgt.TgtdError) as exc:
        client.delete_target(9)
    assert exc.value.details["tgtadm_error"] == "TGTADM_NO_TARGET"
    fake.join(5)
    assert fake.received[0][1] == b"user=u1,password=secret-secret-1\0"
    assert fake.received[3][0][4] == 9 and fake.received[3][0][12] == 1  # tid, force


def test_lun_identity_goes_in_one_update(tmp_path):
    """What `tgtadm --mode logicalunit --op update --tid 1 --lun 1 --params thin_provisioning=1,scsi_id=..,scsi_sn=..`
    sends; a value tgtd would split or cut never reaches it."""
    fake = FakeTgtd(str(tmp_path / "socket.8"), [(0, "")])
    fake.start()
    client = _tgt.TgtClient(8, socket_dir=str(tmp_path), timeout=5)
    client.update_lun(1, 1, thin_provisioning=1, scsi_sn="0e88d7633e4296ef4994",
                      scsi_id="60e88d7633e4296ef499435fa14e8f3e")
    with pytest.raises(InvalidInputError):
        client.update_lun(1, 1, scsi_sn="x" * 37)
    fake.join(5)
    assert len(fake.received) == 1
    head, body = fake.received[0]
    assert head[0:2] == (_tgt.MODE_DEVICE, _tgt.OP_UPDATE) and head[4] == 1 and head[6] == 1  # tid, lun
    assert body == (b"targetOps scsi_id=60e88d7633e4296ef499435fa14e8f3e,scsi_sn=0e88d7633e4296ef4994,"
                    b"thin_provisioning=1,\0")


def test_target_session_parameters(tmp_path):
    """What `tgtadm --lld iscsi --mode target --op update --tid 1 --name MaxRecvDataSegmentLength --value 262144`
    sends (strace, tgt 1:1.0.85-1+deb12u1: header, then "MaxRecvDataSegmentLength=262144" and its NUL), and the
    session keys `--op show --tid 1` prints, read back as a dict."""
    shown = "nop_interval=0\nMaxRecvDataSegmentLength=262144\nInitialR2T=Yes\nMaxQueueCmd=128"
    fake = FakeTgtd(str(tmp_path / "socket.9"), [(0, ""), (0, shown)])
    fake.start()
    client = _tgt.TgtClient(9, socket_dir=str(tmp_path), timeout=5)
    client.update_target(1, "MaxRecvDataSegmentLength", 262144)
    assert client.target_params(1) == {"nop_interval": "0", "MaxRecvDataSegmentLength": "262144", "InitialR2T": "Yes",
                                       "MaxQueueCmd": "128"}
    with pytest.raises(IscsiTargetError):
        client.update_target(1, "InitialR2T", "No,MaxBurstLength=1")
    fake.join(5)
    (head, body), (show, dummy) = fake.received
    assert head[0:2] == (_tgt.MODE_TARGET, _tgt.OP_UPDATE) and head[3] == 152 and head[4] == 1
    assert body == b"MaxRecvDataSegmentLength=262144\0"
    assert show[0:2] == (_tgt.MODE_TARGET, _tgt.OP_SHOW) and show[4] == 1


def test_server_pid_is_the_listener(tmp_path):
    fake = FakeTgtd(str(tmp_path / "socket.6"), [(0, "")])
    fake.start()
    client = _tgt.TgtClient(6, socket_dir=str(tmp_path))
    assert client.running()
    assert client.server_pid() == os.getpid()
    client.stop()
    fake.join(5)


def test_not_running(tmp_path):
    client = _tgt.TgtClient(7, socket_dir=str(tmp_path))
    assert not client.running()
    assert client.server_pid() is None
    with pytest.raises(_tgt.TgtdNotRunning):
        client.targets()
