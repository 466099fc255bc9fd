# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for tgtd's control socket: what ``tgtadm`` does, without ``tgtadm``.

Why: ``tgtadm --mode account --op new --password X`` puts a CHAP secret into a process's
argv, which every user of the host (and, in a lab, every "host") can read in ``ps``. This
client speaks tgtd's management protocol itself, so secrets only ever travel through a unix
socket that only root can use (tgtd checks SO_PEERCRED: uid and gid 0).

The protocol (tgt 1.0.85, ``usr/tgtadm.h``, ``usr/tgtadm.c``, ``usr/mgmt.c``; checked byte for
byte against ``strace tgtadm`` on Debian 12's tgt 1:1.0.85-1+deb12u1):

* connect to the unix socket ``/var/run/tgtd/socket.<control port>``;
* send ``struct tgtadm_req`` (120 bytes, native byte order)::

      enum mode; enum op; char lld[64]; uint32 len; int32 tid; uint64 sid; uint64 lun;
      uint32 cid, host_no, device_type, ac_dir, pack, force;

  followed by the parameter text (``len`` = 120 + its length), for example
  ``targetname=iqn...``, ``path=/x,bstype=rdwr``, ``user=u,password=p``,
  ``initiator-name=iqn...`` or ``targetOps thin_provisioning=1,`` (what ``--params`` sends);
* receive ``struct tgtadm_rsp`` (``uint32 err; uint32 len``) and ``len - 8`` bytes of text
  (``show`` operations).

A LUN's SCSI identity (tgt 1.0.85, ``usr/spc.c``): tgtd gives every LUN ``scsi_id`` ``"IET     "``
+ tid + lun and ``scsi_sn`` ``"beaf"`` + tid + lun, so LUN 1 of tid 1 looks the same on every tgtd.
Only ``--op update`` sets them (``--op new`` ignores both). Each holds at most 36 characters
(``SCSI_ID_LEN``, ``SCSI_SN_LEN`` in ``usr/tgtd.h``; tgtd cuts longer values without a word).
``scsi_sn`` is VPD page 0x80 (the serial number, right-aligned in 36 bytes padded with spaces).
``scsi_id`` is VPD page 0x83's T10 designator as it is, and its NAA type 6 designator (the
``naa.6...`` name ESXi gives the device): tgtd reads each character as a hexadecimal digit (any
other character counts as 0), keeps the last 32 digits and puts 6 into the first (``naa_of``).
Page 0x83's third designator, NAA type 3, stays tid << 32 | lun: no parameter sets it.

The error numbers are tgt 1.0.85's ``enum tgtadm_errno`` (the order of tgtadm's message table).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import socket
import struct

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiTargetError

SOCKET_DIR = "/var/run/tgtd"

# enum tgtadm_mode
MODE_SYSTEM, MODE_TARGET, MODE_DEVICE, MODE_PORTAL, MODE_LLD, MODE_SESSION, MODE_CONNECTION, MODE_ACCOUNT = range(8)
# enum tgtadm_op
OP_NEW, OP_DELETE, OP_SHOW, OP_BIND, OP_UNBIND, OP_UPDATE, OP_STATS, OP_START, OP_STOP = range(9)
ACCOUNT_INCOMING, ACCOUNT_OUTGOING = 0, 1
TYPE_DISK = 0
UINT64_MAX = 0xFFFFFFFFFFFFFFFF
# usr/tgtd.h: the longest scsi_id and scsi_sn a LUN keeps
SCSI_ID_LEN = 36
SCSI_SN_LEN = 36

REQUEST = struct.Struct("=II64sIiQQIIIIII")
RESPONSE = struct.Struct("=II")

# enum tgtadm_errno, in order, with tgtadm's messages
ERRORS = (
    ("TGTADM_SUCCESS", "success"),
    ("TGTADM_UNKNOWN_ERR", "unknown error"),
    ("TGTADM_NOMEM", "out of memory"),
    ("TGTADM_NO_DRIVER", "can't find the driver"),
    ("TGTADM_NO_TARGET", "can't find the target"),
    ("TGTADM_NO_LUN", "can't find the logical unit"),
    ("TGTADM_NO_SESSION", "can't find the session"),
    ("TGTADM_NO_CONNECTION", "can't find the connection"),
    ("TGTADM_NO_BINDING", "can't find the binding"),
    ("TGTADM_TARGET_EXIST", "this target already exists"),
    ("TGTADM_BINDING_EXIST", "this binding already exists"),
    ("TGTADM_LUN_EXIST", "this logical unit number already exists"),
    ("TGTADM_ACL_EXIST", "this access control rule already exists"),
    ("TGTADM_ACL_NOEXIST", "this access control rule does not exist"),
    ("TGTADM_USER_EXIST", "this account already exists"),
    ("TGTADM_NO_USER", "can't find the account"),
    ("TGTADM_TOO_MANY_USER", "too many accounts"),
    ("TGTADM_INVALID_REQUEST", "invalid request"),
    ("TGTADM_OUTACCOUNT_EXIST", "this target already has an outgoing account"),
    ("TGTADM_TARGET_ACTIVE", "this target is still active"),
    ("TGTADM_LUN_ACTIVE", "this logical unit is still active"),
    ("TGTADM_DRIVER_ACTIVE", "this driver is busy"),
    ("TGTADM_UNSUPPORTED_OPERATION", "this operation isn't supported"),
    ("TGTADM_UNKNOWN_PARAM", "unknown parameter"),
    ("TGTADM_PREVENT_REMOVAL", "this device has Prevent Removal set"),
)
NO_TARGET, NO_LUN, NO_BINDING = 4, 5, 8
TARGET_EXIST, BINDING_EXIST, LUN_EXIST, ACL_EXIST, ACL_NOEXIST, USER_EXIST, NO_USER = 9, 10, 11, 12, 13, 14, 15


def error_name(code):
    return ERRORS[code][0] if 0 <= code < len(ERRORS) else "TGTADM_ERROR_%d" % code


def error_message(code):
    return ERRORS[code][1] if 0 <= code < len(ERRORS) else "unknown tgtadm error %d" % code


class TgtdError(IscsiTargetError):
    """tgtd answered a request with an error (``code`` is its tgtadm_errno)."""

    def __init__(self, message, code, **details):
        IscsiTargetError.__init__(self, message, tgtadm_error=error_name(code), **details)
        self.code = code


class TgtdNotRunning(IscsiTargetError):
    """Nothing answers on the control socket."""


def socket_path(control_port, socket_dir=SOCKET_DIR):
    return os.path.join(socket_dir, "socket.%d" % control_port)


def pack_request(mode, op, params=b"", tid=-1, sid=0, lun=UINT64_MAX, cid=0, host_no=0,
                 device_type=TYPE_DISK, ac_dir=ACCOUNT_INCOMING, force=0, lld="iscsi"):
    """The bytes of one request (header + parameter text)."""
    if not isinstance(params, bytes):
        params = params.encode("utf-8")
    if b"\0" in params:
        raise IscsiTargetError("A tgtd request parameter holds a NUL byte, which tgtd cannot read.")
    if params:
        # the text is NUL-terminated, as tgtadm sends it: tgtd parses it as a C string, and without the
        # terminator it reads past the end into whatever its buffer held ("invalid request" at random)
        params += b"\0"
    header = REQUEST.pack(mode, op, lld.encode("ascii"), REQUEST.size + len(params), tid, sid, lun, cid,
                          host_no, device_type, ac_dir, 0, force)
    return header + params


class TgtClient(object):
    """One tgtd instance, reached through its control port."""

    def __init__(self, control_port, socket_dir=SOCKET_DIR, timeout=30.0):
        self.control_port = int(control_port)
        self.path = socket_path(self.control_port, socket_dir)
        self.timeout = timeout

    # -- transport ------------------------------------------------------------------------
    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (OSError, socket.error) as exc:
            sock.close()
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise TgtdNotRunning("No tgtd answers on control port %d (%s)." % (self.control_port, self.path),
                                     control_port=self.control_port)
            raise IscsiTargetError("tgtd's control socket %s cannot be reached: %s." % (self.path, exc.strerror),
                                   control_port=self.control_port)
        return sock

    def running(self):
        try:
            self._connect().close()
        except TgtdNotRunning:
            return False
        return True

    def server_pid(self):
        """PID of the process that listens on the control socket (SO_PEERCRED), or None."""
        try:
            sock = self._connect()
        except TgtdNotRunning:
            return None
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return struct.unpack("3i", creds)[0]
        finally:
            sock.close()

    @staticmethod
    def _recv_exactly(sock, size):
        chunks = []
        while size:
            chunk = sock.recv(size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks), size

    def request(self, mode, op, params="", what="a request", **fields):
        """Send one request; return the response text. Raises TgtdError on tgtd's refusal.

        ``what`` names the request in messages: the parameters never appear in a message (they
        can hold a password).
        """
        data = pack_request(mode, op, params, **fields)
        sock = self._connect()
        try:
            try:
                sock.sendall(data)
                head, missing = self._recv_exactly(sock, RESPONSE.size)
                if missing:
                    raise IscsiTargetError("tgtd on control port %d closed the connection without answering %s."
                                           % (self.control_port, what), control_port=self.control_port)
                err, length = RESPONSE.unpack(head)
                text = b""
                if not err and length > RESPONSE.size:
                    text, missing = self._recv_exactly(sock, length - RESPONSE.size)
                    if missing:
                        raise IscsiTargetError("tgtd on control port %d sent a truncated answer to %s."
                                               % (self.control_port, what), control_port=self.control_port)
            except socket.timeout:
                raise IscsiTargetError("tgtd on control port %d did not answer %s within %d s."
                                       % (self.control_port, what, self.timeout), control_port=self.control_port)
        finally:
            sock.close()
        if err:
            raise TgtdError("tgtd on control port %d refused %s: %s." % (self.control_port, what, error_message(err)),
                            err, control_port=self.control_port)
        return text.rstrip(b"\0").decode("utf-8", "replace")

    # -- operations ------------------------------------------------------------------------
    def show_system(self):
        return self.request(MODE_SYSTEM, OP_SHOW, what="showing the system")

    def stop(self):
        """``tgtadm --op delete --mode system``: tgtd exits (it ignores SIGTERM)."""
        return self.request(MODE_SYSTEM, OP_DELETE, what="stopping the daemon")

    def show_targets_text(self):
        return self.request(MODE_TARGET, OP_SHOW, what="listing the targets")

    def targets(self):
        return parse_targets(self.show_targets_text())

    def accounts(self):
        return parse_accounts(self.request(MODE_ACCOUNT, OP_SHOW, what="listing the accounts"))

    def new_target(self, tid, name):
        self.request(MODE_TARGET, OP_NEW, "targetname=%s" % name, tid=tid, what="creating target %s" % name)

    def delete_target(self, tid, force=True):
        self.request(MODE_TARGET, OP_DELETE, tid=tid, force=1 if force else 0, what="deleting target %d" % tid)

    def target_params(self, tid):
        """``--mode target --op show --tid N``: the iSCSI session parameters a login negotiates from, as a dict."""
        text = self.request(MODE_TARGET, OP_SHOW, tid=tid, what="showing the parameters of target %d" % tid)
        return dict(line.strip().split("=", 1) for line in text.splitlines() if "=" in line)

    def update_target(self, tid, name, value):
        """``--mode target --op update --tid N --name K --value V`` (a session parameter for the next logins)."""
        if not name.isalnum() or not str(value).isalnum():
            raise IscsiTargetError("The target parameter %r=%r is not a tgtd session parameter." % (name, value))
        self.request(MODE_TARGET, OP_UPDATE, "%s=%s" % (name, value), tid=tid,
                     what="setting %s of target %d" % (name, tid))

    def new_lun(self, tid, lun, backing_store, bstype="rdwr"):
        self.request(MODE_DEVICE, OP_NEW, "path=%s,bstype=%s" % (backing_store, bstype), tid=tid, lun=lun,
                     what="creating LUN %d of target %d" % (lun, tid))

    def update_lun(self, tid, lun, **params):
        """``--mode logicalunit --op update --params k=v,...`` (thin_provisioning, readonly, scsi_id, scsi_sn...)."""
        check_lun_params(params)
        text = "targetOps %s," % ",".join("%s=%s" % (k, v) for k, v in sorted(params.items()))
        self.request(MODE_DEVICE, OP_UPDATE, text, tid=tid, lun=lun,
                     what="updating LUN %d of target %d (%s)" % (lun, tid, ", ".join(sorted(params))))

    def delete_lun(self, tid, lun):
        self.request(MODE_DEVICE, OP_DELETE, tid=tid, lun=lun, what="deleting LUN %d of target %d" % (lun, tid))

    def bind_initiator_name(self, tid, iqn):
        self.request(MODE_TARGET, OP_BIND, "initiator-name=%s" % iqn, tid=tid,
                     what="allowing initiator %s on target %d" % (iqn, tid))

    def unbind_initiator_name(self, tid, iqn):
        self.request(MODE_TARGET, OP_UNBIND, "initiator-name=%s" % iqn, tid=tid,
                     what="removing initiator %s from target %d" % (iqn, tid))

    def new_account(self, user, password):
        check_chap_user(user)
        self.request(MODE_ACCOUNT, OP_NEW, "user=%s,password=%s" % (user, password),
                     what="creating the CHAP account %s" % user)

    def delete_account(self, user):
        self.request(MODE_ACCOUNT, OP_DELETE, "user=%s" % user, what="deleting the CHAP account %s" % user)

    def bind_account(self, tid, user, outgoing=False):
        self.request(MODE_ACCOUNT, OP_BIND, "user=%s" % user, tid=tid,
                     ac_dir=ACCOUNT_OUTGOING if outgoing else ACCOUNT_INCOMING,
                     what="binding the CHAP account %s to target %d" % (user, tid))

    def unbind_account(self, tid, user, outgoing=False):
        self.request(MODE_ACCOUNT, OP_UNBIND, "user=%s" % user, tid=tid,
                     ac_dir=ACCOUNT_OUTGOING if outgoing else ACCOUNT_INCOMING,
                     what="unbinding the CHAP account %s from target %d" % (user, tid))


_CHAP_USER = re.compile(r"^[A-Za-z0-9._:@-]{1,255}$")


def check_chap_user(user):
    """tgtd splits parameters at commas: a user name is kept to a safe alphabet."""
    if not _CHAP_USER.match(user or ""):
        raise InvalidInputError("The CHAP user name %r is not usable; use 1-255 letters, digits, '.', '_', ':', "
                                "'@' and '-'." % (user,))
    return user


_LUN_VALUE = re.compile(r"^[A-Za-z0-9._:-]+$")
_LUN_VALUE_LIMITS = {"scsi_id": SCSI_ID_LEN, "scsi_sn": SCSI_SN_LEN}


def check_lun_params(params):
    """tgtd splits parameters at commas, and cuts a scsi_id or scsi_sn longer than it keeps without a word: values
    are kept to a safe alphabet, and those two to tgtd's length."""
    for key, value in sorted(params.items()):
        text = str(value)
        limit = _LUN_VALUE_LIMITS.get(key)
        if not _LUN_VALUE.match(text) or (limit and len(text) > limit):
            raise InvalidInputError("The LUN parameter %s=%r is not usable; use %sletters, digits, '.', '_', ':' and "
                                    "'-'." % (key, value, "1 to %d " % limit if limit else ""))
    return params


def naa_of(scsi_id):
    """The NAA type 6 designator tgtd makes of ``scsi_id`` (VPD page 0x83), as ESXi names the device: ``naa.6...``.

    ``usr/spc.c`` update_vpd_83: every character is one hexadecimal digit (strtoul base 16 of that
    character alone, so any other character is 0), shifted into a 128-bit number; the top digit
    becomes 6 (NAA IEEE Registered Extended).
    """
    value = 0
    for char in str(scsi_id)[:SCSI_ID_LEN]:
        digit = int(char, 16) if char in "0123456789abcdefABCDEF" else 0
        value = (value << 4 | digit) & ((1 << 128) - 1)
    value = value & ((1 << 124) - 1) | 6 << 124
    return "naa.%032x" % value


# -- parsing `show` output ----------------------------------------------------------------------

def _indent(line):
    return len(line) - len(line.lstrip(" "))


def parse_targets(text):
    """``tgtadm --mode target --op show`` output -> list of dicts.

    Each: tid, name, state, sessions [{initiator, addresses}], luns [{lun, type, scsi_id, scsi_sn,
    size_mb, readonly, thin, online, bstype, path}], accounts [{user, outgoing}], acls [str].
    """
    targets = []
    cur = section = lun = nexus = None
    for line in text.splitlines():
        if not line.strip():
            continue
        stripped = line.strip()
        depth = _indent(line)
        m = re.match(r"^Target (\d+): (.*)$", line)
        if m:
            cur = {"tid": int(m.group(1)), "name": m.group(2).strip(), "state": None, "sessions": [], "luns": [],
                   "accounts": [], "acls": []}
            targets.append(cur)
            section = lun = nexus = None
            continue
        if cur is None:
            continue
        if depth == 4:
            section = stripped.rstrip(":")
            lun = nexus = None
            continue
        if section == "System information":
            if stripped.startswith("State:"):
                cur["state"] = stripped.split(":", 1)[1].strip()
        elif section == "I_T nexus information":
            if stripped.startswith("I_T nexus:"):
                nexus = {"initiator": None, "addresses": []}
                cur["sessions"].append(nexus)
            elif nexus is not None and stripped.startswith("Initiator:"):
                nexus["initiator"] = stripped.split(":", 1)[1].strip().split(" alias:")[0].strip()
            elif nexus is not None and stripped.startswith("IP Address:"):
                nexus["addresses"].append(stripped.split(":", 1)[1].strip())
        elif section == "LUN information":
            if stripped.startswith("LUN:"):
                lun = {"lun": int(stripped.split(":", 1)[1]), "type": None, "scsi_id": None, "scsi_sn": None,
                       "size_mb": None, "readonly": None, "thin": None, "online": None, "bstype": None, "path": None}
                cur["luns"].append(lun)
            elif lun is not None and ":" in stripped:
                key, value = [s.strip() for s in stripped.split(":", 1)]
                if key == "Type":
                    lun["type"] = value
                elif key == "SCSI ID":
                    lun["scsi_id"] = value
                elif key == "SCSI SN":
                    lun["scsi_sn"] = value
                elif key == "Size":
                    m = re.match(r"^(\d+) MB", value)
                    lun["size_mb"] = int(m.group(1)) if m else None
                elif key == "Readonly":
                    lun["readonly"] = value == "Yes"
                elif key == "Thin-provisioning":
                    lun["thin"] = value == "Yes"
                elif key == "Online":
                    lun["online"] = value == "Yes"
                elif key == "Backing store type":
                    lun["bstype"] = value
                elif key == "Backing store path":
                    lun["path"] = None if value == "None" else value
        elif section == "Account information":
            if stripped.endswith(" (outgoing)"):
                cur["accounts"].append({"user": stripped[:-len(" (outgoing)")], "outgoing": True})
            else:
                cur["accounts"].append({"user": stripped, "outgoing": False})
        elif section == "ACL information":
            cur["acls"].append(stripped)
    return targets


def parse_accounts(text):
    """``tgtadm --mode account --op show`` -> list of user names."""
    users = []
    for line in text.splitlines():
        if line.strip() and line.startswith(" "):
            users.append(line.strip())
    return users
