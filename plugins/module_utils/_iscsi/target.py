# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An iSCSI target on the collector that the KVM host writes its evidence into, and its undo.

One private ``tgtd`` per control port (``tgtd -C <port> --iscsi portal=ADDR:PORT``), never the
distribution's tgt service. A target holds one thin LUN (LUN 1) backed by a sparse file; access
needs CHAP (incoming; mutual optional), the initiator's IQN (tgt ACL) AND its address: tgt ORs
its ``-I``/``-Q`` rules, so only the IQN is bound in tgt and the address is enforced by an
nftables table of the target's own that rejects TCP to the portal from any other source.

Every step converges: it looks at what is there, and only what is missing is made, each change
written to the case's journal before it is made. So a rerun changes nothing, and a rerun after a
crash finishes the job. State ``readonly`` switches the LUN read-only after the acquisition (tgtd
then refuses every write with DATA PROTECT, also in sessions that are already open); ``absent``
replays this target's journal records (the backing file, the evidence, is kept unless asked).

CHAP secrets go to tgtd through its control socket (``_tgt``), never through any argv, and are
never written to the journal or returned.

The LUN gets a SCSI identity of its own (``lun_identity``): tgt's default is the same for LUN 1
of tid 1 on every tgtd, and ESXi takes two devices with one identifier for two paths to one device
(it could write one case's datastore onto another case's LUN). Its serial number and NAA name come
from the target's IQN, so they differ between cases and hosts and stay the same on every export of
the same case's volume.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiTargetError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import runner as _runner
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, missing_dirs, remove_empty_dirs
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.procfs import fd_targets, pids as _pids, read_cmdline
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.names import check_iqn, derive_iqn
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UndoContext, undo_handler
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import tgt as _tgt

LUN = 1
# hexadecimal digits of the IQN's SHA-256 in the LUN's serial number (scsi_sn; tgt keeps 36): 80 bits, and it fits
# the 20-character serial fields some tools show
SERIAL_DIGITS = 20
IDENTITY = ("scsi_id", "scsi_sn", "naa")
PIDFILE_PREFIX = "dfir-vmcollect."
POLICY_RC_D = "/usr/sbin/policy-rc.d"
START_TIMEOUT = 10.0
# tgtd's foreground part only parses its options and forks; a start that takes longer is stuck
DAEMON_FORK_TIMEOUT = 30.0
# apt-get install/purge may download from a slow mirror and run maintainer scripts
APT_TIMEOUT = 900.0
STOP_TIMEOUT = 15.0
MODULE = "setup_iscsi_target"

A_PACKAGES = "tgt.packages_installed"
A_DAEMON = "tgt.daemon"
A_BACKING = "tgt.backing_file"
A_FIREWALL = "nft.table"
A_TARGET = "tgt.target"
A_ACCOUNT = "tgt.account"
A_BINDING = "tgt.account_binding"
A_LUN = "tgt.lun"
A_ACL = "tgt.acl"
A_READONLY = "tgt.lun_readonly"
A_GROWN = "tgt.backing_file_grown"
TARGET_ACTIONS = (A_ACL, A_READONLY, A_LUN, A_BINDING, A_ACCOUNT, A_TARGET, A_FIREWALL, A_GROWN, A_BACKING)

_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}


# -- external commands (one place, so unit tests can replace it) -------------------------------

def run(argv, data=None, env=None, timeout=_runner.DEFAULT_TIMEOUT):
    """Run a command without a shell (``_host.runner``, bounded by ``timeout``); returns (rc, stdout, stderr)."""
    return _runner.run(argv, data=data, env=env, timeout=timeout)


def which(name):
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return None


# -- option checks --------------------------------------------------------------------------------

def parse_size(value):
    """Bytes from an int or '20G', '512M', '1.5T', '20GiB' (powers of 1024); a multiple of 512."""
    text = str(value).strip()
    m = re.match(r"^(\d+(?:\.\d+)?)\s*(?:([kmgtpKMGTP])(?:i?[bB])?|[bB])?$", text)
    if not m:
        raise InvalidInputError("The size %r is not a size; give bytes or a number with K, M, G or T (powers of "
                                "1024), for example 20G." % (value,))
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if size <= 0 or size % 512:
        raise InvalidInputError("The size %s (%d bytes) must be a positive multiple of 512 bytes." % (value, size))
    return size


def _address(text, option):
    try:
        return ipaddress.ip_address(u"%s" % text)
    except ValueError:
        raise InvalidInputError("%s %r is not an IP address." % (option, text))


def _network(text, option):
    try:
        return ipaddress.ip_network(u"%s" % text, strict=True)
    except ValueError:
        raise InvalidInputError("%s %r is not an IP address or network (address/prefix with no host bits)."
                                % (option, text))


def firewall_table(target_iqn, control_port):
    digest = hashlib.sha256(("%s|%d" % (target_iqn, control_port)).encode("utf-8")).hexdigest()[:12]
    return "vmcollect_%s" % digest


def lun_identity(target_iqn):
    """The SCSI identity of a target's LUN, from its IQN (case and host): dict(scsi_id, scsi_sn, naa).

    Of the IQN's SHA-256 in hexadecimal: scsi_id is 6 and its first 31 digits, which tgtd makes the NAA type 6
    designator ``naa.<scsi_id>`` as it is (the name ESXi gives the device); scsi_sn, the serial number (VPD page
    0x80), is its first SERIAL_DIGITS digits. The same IQN gives the same identity on every export.
    """
    digest = hashlib.sha256(target_iqn.encode("utf-8")).hexdigest()
    scsi_id = "6" + digest[:31]
    return {"scsi_id": scsi_id, "scsi_sn": digest[:SERIAL_DIGITS], "naa": _tgt.naa_of(scsi_id)}


def identity_of(lun):
    """The SCSI identity a LUN presents (from tgtd's show output): dict(scsi_id, scsi_sn, naa), None when unknown."""
    scsi_id = (lun or {}).get("scsi_id")
    return {"scsi_id": scsi_id, "scsi_sn": (lun or {}).get("scsi_sn"), "naa": _tgt.naa_of(scsi_id) if scsi_id else None}


def pidfile(case_id, control_port):
    return os.path.join(_tgt.SOCKET_DIR, "%s%s.%d.pid" % (PIDFILE_PREFIX, case_id, control_port))


def portal_text(address, port):
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def build_spec(case_id, state, target_iqn=None, target_name=None, backing_file=None, size=None, initiator_iqn=None,
               initiator_addresses=None, portal_address=None, portal_port=3260, chap_user=None, chap_password=None,
               mutual_chap_user=None, mutual_chap_password=None, control_port=60, install=False,
               remove_backing_file=False, reuse_backing_file=False, grow=False):
    """Check and normalise the options; returns the spec dict every step works from."""
    spec = {"case_id": case_id, "state": state, "control_port": int(control_port), "install": bool(install),
            "remove_backing_file": bool(remove_backing_file), "reuse_backing_file": bool(reuse_backing_file),
            "grow": bool(grow),
            "portal_port": int(portal_port)}
    spec["target_iqn"] = check_iqn(target_iqn, "target_iqn") if target_iqn else derive_iqn(case_id, target_name)
    if not 0 <= spec["control_port"] <= 32767:
        raise InvalidInputError("control_port %d is out of range (0-32767)." % spec["control_port"])
    if not 1 <= spec["portal_port"] <= 65535:
        raise InvalidInputError("portal_port %d is out of range (1-65535)." % spec["portal_port"])
    spec["firewall_table"] = firewall_table(spec["target_iqn"], spec["control_port"])
    if remove_backing_file and state != "absent":
        raise InvalidInputError("remove_backing_file is only used with state=absent; the evidence is never removed "
                                "otherwise.")
    if state != "present":
        spec["backing_file"] = backing_file
        return spec
    missing = [name for name, value in (("backing_file", backing_file), ("size", size),
                                        ("initiator_iqn", initiator_iqn), ("initiator_addresses", initiator_addresses),
                                        ("portal_address", portal_address), ("chap_user", chap_user),
                                        ("chap_password", chap_password)) if not value]
    if missing:
        raise InvalidInputError("state=present needs %s." % ", ".join(missing))
    if not os.path.isabs(backing_file):
        raise InvalidInputError("The backing file %s is relative; give an absolute path." % backing_file)
    spec["backing_file"] = os.path.normpath(backing_file)
    if "," in spec["backing_file"]:
        raise InvalidInputError("The backing file path %s holds a comma, which tgtd cannot take." % backing_file)
    spec["size"] = parse_size(size)
    spec["initiator_iqn"] = check_iqn(initiator_iqn, "initiator_iqn")
    portal = _address(portal_address, "portal_address")
    if portal.is_unspecified:
        raise InvalidInputError("portal_address %s would listen on every address; give the one address the "
                                "initiator reaches." % portal)
    spec["portal_address"] = str(portal)
    nets = sorted(set(_network(a, "initiator_addresses") for a in initiator_addresses),
                  key=lambda n: (n.version, n.network_address, n.prefixlen))
    other = [str(n) for n in nets if n.version != portal.version]
    if other:
        raise InvalidInputError("initiator_addresses %s are not of the portal address's family (IPv%d)."
                                % (", ".join(other), portal.version))
    spec["initiator_addresses"] = [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in nets]
    spec["chap_user"] = _tgt.check_chap_user(chap_user)
    _check_secret(chap_password, "chap_password")
    spec["chap_password"] = chap_password
    if bool(mutual_chap_user) != bool(mutual_chap_password):
        raise InvalidInputError("Mutual CHAP needs both mutual_chap_user and mutual_chap_password.")
    spec["mutual_chap_user"] = _tgt.check_chap_user(mutual_chap_user) if mutual_chap_user else None
    if mutual_chap_password:
        _check_secret(mutual_chap_password, "mutual_chap_password")
        if mutual_chap_password == chap_password:
            raise InvalidInputError("mutual_chap_password must differ from chap_password (RFC 7143 forbids one "
                                    "secret for both directions).")
        if mutual_chap_user == chap_user:
            raise InvalidInputError("mutual_chap_user must differ from chap_user: tgtd keeps one list of accounts.")
    spec["mutual_chap_password"] = mutual_chap_password
    return spec


def _check_secret(secret, option):
    if len(secret) < 12 or len(secret) > 255 or any(c in secret for c in "\0\r\n"):
        raise InvalidInputError("%s must be 12 to 255 characters without NUL or line breaks (many initiators "
                                "refuse shorter CHAP secrets)." % option)


# -- the host: processes, listeners, firewall -----------------------------------------------------

def daemon_argv(tgtd, spec):
    return [tgtd, "-C", str(spec["control_port"]), "--iscsi",
            "portal=%s" % portal_text(spec["portal_address"], spec["portal_port"]),
            "--pid-file", pidfile(spec["case_id"], spec["control_port"])]


def _owner_case(argv):
    """The case id in the pid-file argument of a tgtd started by this collection, or None."""
    if not argv or "--pid-file" not in argv[:-1]:
        return None
    name = os.path.basename(argv[argv.index("--pid-file") + 1])
    if name.startswith(PIDFILE_PREFIX) and name.endswith(".pid"):
        return name[len(PIDFILE_PREFIX):-4].rsplit(".", 1)[0]
    return None


def _control_port_of(argv):
    for i, arg in enumerate(argv or []):
        if arg in ("-C", "--control-port") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--control-port="):
            return arg.split("=", 1)[1]
    return "0"


def _hex_address(text, version):
    raw = bytes.fromhex(text)
    if version == 4:
        return str(ipaddress.ip_address(raw[::-1]))
    # /proc/net/tcp6: four little-endian 32-bit words
    return str(ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))


def listeners(port):
    """TCP listeners on ``port`` in this network namespace: [{address, inode, pid, argv}]."""
    found = []
    for name, version in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except (IOError, OSError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port:
                found.append({"address": _hex_address(addr, version), "inode": fields[9], "pid": None, "argv": None})
    if found:
        wanted = dict(("socket:[%s]" % f["inode"], f) for f in found)
        for pid in _pids():
            for target in fd_targets(pid):
                if target in wanted and wanted[target]["pid"] is None:
                    wanted[target]["pid"] = pid
                    wanted[target]["argv"] = read_cmdline(pid)
    return found


def _describe(listener):
    argv = listener.get("argv") or []
    prog = os.path.basename(argv[0]) if argv else "an unknown process"
    if prog == "tgtd":
        case = _owner_case(argv)
        if case:
            return "the tgtd of dfir.vmcollect case %s (pid %s, control port %s)" % (
                case, listener["pid"], _control_port_of(argv))
        port = _control_port_of(argv)
        if port == "0":
            return "the system's tgt service (tgtd pid %s, control port 0)" % listener["pid"]
        return "a tgtd not started by dfir.vmcollect (pid %s, control port %s)" % (listener["pid"], port)
    return "%s (pid %s)" % (prog, listener.get("pid"))


def address_is_local(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
        return True
    except (OSError, socket.error):
        return False
    finally:
        sock.close()


def firewall_script(spec):
    fam = "ip6" if ":" in spec["portal_address"] else "ip"
    allowed = ", ".join(spec["initiator_addresses"])
    return "\n".join([
        "table inet %s {" % spec["firewall_table"],
        '  comment "%s"' % ("dfir.vmcollect case %s" % spec["case_id"])[:128],
        "  chain input {",
        "    type filter hook input priority filter - 10; policy accept;",
        "    %s daddr %s tcp dport %d %s saddr != { %s } counter reject with tcp reset" % (
            fam, spec["portal_address"], spec["portal_port"], fam, allowed),
        "  }",
        "}", ""])


def firewall_state(name, nft="nft"):
    """The table's rule as dict(daddr, dport, allowed), {} for a table without our rule, None if missing."""
    rc, out, err = run([nft, "-j", "list", "table", "inet", name])
    if rc:
        if rc == 1 and "No such file or directory" in err:  # not 127: nft itself missing
            return None
        raise IscsiTargetError("nft cannot list the table inet %s: %s" % (name, err.strip()), table=name)
    state = {}
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            match = expr.get("match")
            if not match:
                continue
            field = match.get("left", {}).get("payload", {}).get("field")
            right = match.get("right")
            if field == "daddr":
                state["daddr"] = right
            elif field == "dport":
                state["dport"] = right
            elif field == "saddr":
                values = right.get("set", []) if isinstance(right, dict) else [right]
                state["allowed"] = sorted(_nft_value(v) for v in values)
    return state


def _nft_value(value):
    if isinstance(value, dict) and "prefix" in value:
        return "%s/%s" % (value["prefix"]["addr"], value["prefix"]["len"])
    return str(value)


# -- the target as it is now ----------------------------------------------------------------------

def inspect_daemon(spec, tgtd_argv=None):
    """Who answers on the control port: dict(state='none'|'ours'|'foreign', pid, argv, case)."""
    client = _tgt.TgtClient(spec["control_port"])
    pid = client.server_pid()
    if pid is None:
        return {"state": "none", "pid": None, "argv": None, "case": None}
    argv = read_cmdline(pid)
    case = _owner_case(argv)
    ours = case == spec["case_id"] and (tgtd_argv is None or argv[1:] == tgtd_argv[1:])
    return {"state": "ours" if ours else "foreign", "pid": pid, "argv": argv, "case": case}


def find_target(client, iqn):
    for target in client.targets():
        if target["name"] == iqn:
            return target
    return None


def _lun(target):
    for lun in (target or {}).get("luns", []):
        if lun["lun"] == LUN:
            return lun
    return None


def config_view(spec, target=None, fw=None, backing_size=None):
    """A target's configuration for diffs and results; never a secret."""
    if target is None:
        return {}
    lun = _lun(target) or {}
    return {
        "target_iqn": target["name"], "tid": target["tid"], "lun": LUN if lun else None,
        "backing_file": lun.get("path"), "size": backing_size, "thin": lun.get("thin"), "readonly": lun.get("readonly"),
        "scsi_id": lun.get("scsi_id"), "scsi_sn": lun.get("scsi_sn"),
        "incoming_user": [a["user"] for a in target["accounts"] if not a["outgoing"]],
        "outgoing_user": [a["user"] for a in target["accounts"] if a["outgoing"]],
        "initiator_iqns": list(target["acls"]),
        "initiator_addresses": (fw or {}).get("allowed"),
        "control_port": spec["control_port"], "firewall_table": spec["firewall_table"] if fw is not None else None,
    }


# -- present ----------------------------------------------------------------------------------

class _Steps(object):
    """Records what is done (or would be, in check mode) as sentences."""

    def __init__(self, journal, spec, check_mode):
        self.journal, self.spec, self.check_mode = journal, spec, check_mode
        self.done = []

    def change(self, action, undo, description, make):
        """Journal ``action`` then call ``make()``; returns make()'s result (None in check mode)."""
        self.done.append(("would: " if self.check_mode else "") + description)
        if self.check_mode:
            return None
        same = self.journal.find(action, **undo)
        if same and not same[0]["applied"]:
            change_id = same[0]["id"]  # recorded by a run that stopped before the change: finish it
        else:
            change_id = self.journal.record_change(action, undo, description, module=MODULE)
        result = make()
        self.journal.mark_applied(change_id, **(result if isinstance(result, dict) else {}))
        return result

    def pending(self, action, **match):
        return self.journal.find(action, **match)


def _target_undo(spec, **extra):
    return dict({"control_port": spec["control_port"], "target_iqn": spec["target_iqn"]}, **extra)


def present(journal, spec, check_mode=False):
    steps = _Steps(journal, spec, check_mode)
    tgtd = which("tgtd")
    if tgtd is None:
        if not spec["install"]:
            raise IscsiTargetError("tgt is not installed on this host (no tgtd); install the package tgt, or set "
                                   "install=true to have it installed (and removed again by teardown).")
        install_tgt(steps)
        tgtd = which("tgtd") or "/usr/sbin/tgtd"
    nft = which("nft")
    if nft is None:
        raise IscsiTargetError("nft (nftables) is not installed on this host; the initiator's address cannot be "
                               "enforced without it.")
    argv = daemon_argv(tgtd, spec)
    daemon = inspect_daemon(spec)
    _check_daemon(spec, daemon, argv)
    client = _tgt.TgtClient(spec["control_port"])
    target = find_target(client, spec["target_iqn"]) if daemon["state"] == "ours" else None
    before_fw = firewall_state(spec["firewall_table"], nft)
    backing_size = os.stat(spec["backing_file"]).st_size if os.path.exists(spec["backing_file"]) else None
    before = config_view(spec, target, before_fw, backing_size)
    if target is not None:
        _check_existing(journal, spec, target, before_fw, backing_size)
    _check_portal_peers(journal, spec)
    if daemon["state"] == "none":
        _check_portal_free(spec)
    grown_from = None
    if backing_size is not None and spec["reuse_backing_file"] and spec["grow"]:
        # never shrunk: room_size is at least the file's size; an exported file is not grown under its initiator
        spec["size"] = room_size(spec["backing_file"], spec["size"]) if target is None else backing_size
        grown_from = backing_size if spec["size"] > backing_size else None
    if backing_size is not None and spec["reuse_backing_file"] and backing_size != spec["size"] and grown_from is None:
        raise IscsiTargetError("The backing file %s exists with %s bytes, not the %s asked for; an evidence store is "
                               "never resized. Ask for its size to export it again." % (
                                   spec["backing_file"], backing_size, spec["size"]), backing_file=spec["backing_file"])
    if backing_size is not None and not spec["reuse_backing_file"] and not journal.find(
            A_BACKING, path=spec["backing_file"], target_iqn=spec["target_iqn"]):
        raise IscsiTargetError("The backing file %s exists already and was not created for target %s by case %s. "
                               "It may be evidence: choose a new path (it is never reused or overwritten)."
                               % (spec["backing_file"], spec["target_iqn"], spec["case_id"]),
                               backing_file=spec["backing_file"])

    # 1. the backing file: sparse, created by this case, never reused from elsewhere
    if not os.path.exists(spec["backing_file"]):
        folder = os.path.dirname(spec["backing_file"])
        undo = {"path": spec["backing_file"], "target_iqn": spec["target_iqn"], "control_port": spec["control_port"],
                # the folders made for it (the case's folder on the collector), removed with it when it holds nothing
                "created_dirs": missing_dirs(folder)}
        description = "create the sparse backing file %s (%d bytes)%s" % (
            spec["backing_file"], spec["size"], " and its folder" if undo["created_dirs"] else "")
        steps.change(A_BACKING, undo, description, lambda: create_sparse(spec["backing_file"], spec["size"], folder))
    elif grown_from is not None:
        undo = {"path": spec["backing_file"], "target_iqn": spec["target_iqn"], "from": grown_from, "to": spec["size"]}
        description = ("grow the backing file %s from %d to %d bytes (sparse): room for a whole acquisition beside the "
                       "%d bytes it holds" % (spec["backing_file"], grown_from, spec["size"],
                                              allocated_bytes(spec["backing_file"])))
        steps.change(A_GROWN, undo, description, lambda: grow_sparse(spec["backing_file"], spec["size"]))

    # 2. the firewall, before the portal listens
    if before_fw is None:
        undo = _target_undo(spec, family="inet", table=spec["firewall_table"], portal_address=spec["portal_address"],
                            portal_port=spec["portal_port"], allowed=spec["initiator_addresses"])
        steps.change(A_FIREWALL, undo, "add the nftables table inet %s: TCP to %s only from %s" % (
            spec["firewall_table"], portal_text(spec["portal_address"], spec["portal_port"]),
            ", ".join(spec["initiator_addresses"])), lambda: _nft_apply(nft, spec))

    # 3. our own tgtd on the control port
    if daemon["state"] == "none":
        undo = {"control_port": spec["control_port"], "argv": argv,
                "pidfile": pidfile(spec["case_id"], spec["control_port"]),
                "created": _socket_files_missing(spec["control_port"])}
        result = steps.change(A_DAEMON, undo, "start tgtd on control port %d with the portal %s" % (
            spec["control_port"], portal_text(spec["portal_address"], spec["portal_port"])),
            lambda: start_daemon(argv, spec))
        daemon = {"state": "ours", "pid": (result or {}).get("pid")}

    # 4. the target, CHAP before the LUN, the initiator's IQN last
    tid = target["tid"] if target else None
    new_target = target is None
    if target is None:
        tid = 1 if check_mode and daemon["pid"] is None else _free_tid(client)
        steps.change(A_TARGET, _target_undo(spec, tid=tid), "create target %s (tid %d)" % (spec["target_iqn"], tid),
                     lambda: client.new_target(tid, spec["target_iqn"]))
        target = {"tid": tid, "name": spec["target_iqn"], "luns": [], "accounts": [], "acls": [], "sessions": []}
    accounts = client.accounts() if daemon["pid"] else []
    bound = dict((a["user"], a["outgoing"]) for a in target["accounts"])
    for user, password, outgoing in ((spec["chap_user"], spec["chap_password"], False),
                                     (spec["mutual_chap_user"], spec["mutual_chap_password"], True)):
        if not user:
            continue
        kind = "outgoing (mutual) CHAP account" if outgoing else "incoming CHAP account"
        if user not in accounts:
            steps.change(A_ACCOUNT, _target_undo(spec, user=user, outgoing=outgoing), "add the %s %s" % (kind, user),
                         lambda u=user, p=password: client.new_account(u, p))
        elif not journal.find(A_ACCOUNT, user=user, control_port=spec["control_port"],
                              target_iqn=spec["target_iqn"]):
            raise IscsiTargetError("The CHAP account %s exists already on tgtd control port %d and is not this "
                                   "target's; give each target a CHAP user of its own." % (user, spec["control_port"]))
        if user not in bound:
            steps.change(A_BINDING, _target_undo(spec, tid=tid, user=user, outgoing=outgoing),
                         "bind the %s %s to target %s" % (kind, user, spec["target_iqn"]),
                         lambda u=user, o=outgoing: client.bind_account(tid, u, outgoing=o))
    lun = _lun(target)
    identity = lun_identity(spec["target_iqn"])
    if lun is None:
        steps.change(A_LUN, _target_undo(spec, tid=tid, lun=LUN, backing_file=spec["backing_file"]),
                     "add LUN %d (thin, serial %s, %s; backed by %s) to target %s" % (
                         LUN, identity["scsi_sn"], identity["naa"], spec["backing_file"], spec["target_iqn"]),
                     lambda: _new_thin_lun(client, tid, spec["backing_file"], identity))
    else:
        settings = lun_settings(lun, identity)
        if settings:
            # a crash between the LUN and its settings: the LUN's record covers them (they go with the LUN)
            steps.done.append(("would: " if check_mode else "") + "set %s on LUN %d of target %s" % (
                ", ".join("%s=%s" % item for item in sorted(settings.items())), LUN, spec["target_iqn"]))
            if not check_mode:
                client.update_lun(tid, LUN, **settings)
    # the session parameters, before the initiator is allowed in: a login negotiates from them
    params = session_settings({} if check_mode and new_target else client.target_params(tid))
    if params:  # they go with the target, as the LUN's settings go with the LUN
        steps.done.append(("would: " if check_mode else "") + "set %s on target %s" % (
            ", ".join("%s=%s" % item for item in sorted(params.items())), spec["target_iqn"]))
        if not check_mode:
            for name, value in sorted(params.items()):
                client.update_target(tid, name, value)
    if spec["initiator_iqn"] not in target["acls"]:
        steps.change(A_ACL, _target_undo(spec, tid=tid, initiator_iqn=spec["initiator_iqn"]),
                     "allow the initiator %s on target %s" % (spec["initiator_iqn"], spec["target_iqn"]),
                     lambda: client.bind_initiator_name(tid, spec["initiator_iqn"]))

    after = {
        "target_iqn": spec["target_iqn"], "tid": tid, "lun": LUN, "backing_file": spec["backing_file"],
        "size": spec["size"], "thin": True, "readonly": False, "scsi_id": identity["scsi_id"],
        "scsi_sn": identity["scsi_sn"], "incoming_user": [spec["chap_user"]],
        "outgoing_user": [spec["mutual_chap_user"]] if spec["mutual_chap_user"] else [],
        "initiator_iqns": [spec["initiator_iqn"]], "initiator_addresses": spec["initiator_addresses"],
        "control_port": spec["control_port"], "firewall_table": spec["firewall_table"],
    }
    return _result(spec, steps, before, after, tid=tid, readonly=False, tgtd_pid=daemon.get("pid"), **identity)


def _result(spec, steps, before, after, **extra):
    result = {
        "changed": bool(steps.done), "actions": steps.done, "target_iqn": spec["target_iqn"], "lun": LUN,
        "portal": portal_text(spec["portal_address"], spec["portal_port"]) if spec.get("portal_address") else None,
        "backing_file": spec.get("backing_file"), "size": spec.get("size"), "thin": True,
        "control_port": spec["control_port"], "firewall_table": spec["firewall_table"],
        "diff": {"before": before, "after": after},
    }
    result.update(extra)
    return result


def _check_daemon(spec, daemon, argv):
    if daemon["state"] == "foreign":
        if daemon["case"]:
            raise IscsiTargetError("Control port %d is used by the tgtd of dfir.vmcollect case %s (pid %s); use "
                                   "another control_port for case %s." % (spec["control_port"], daemon["case"],
                                                                          daemon["pid"], spec["case_id"]),
                                   tgtd_pid=daemon["pid"])
        raise IscsiTargetError("Control port %d is used by a tgtd this collection did not start (pid %s, %s), "
                               "probably the system's tgt service; it is never changed. Use another control_port."
                               % (spec["control_port"], daemon["pid"], " ".join(daemon["argv"] or [])),
                               tgtd_pid=daemon["pid"])
    if daemon["state"] == "ours" and daemon["argv"][1:] != argv[1:]:
        raise IscsiTargetError("This case's tgtd on control port %d serves another portal (%s); a tgtd has one "
                               "portal, so use another control_port for %s."
                               % (spec["control_port"], " ".join(daemon["argv"][1:]),
                                  portal_text(spec["portal_address"], spec["portal_port"])), tgtd_pid=daemon["pid"])


def _check_existing(journal, spec, target, fw, backing_size):
    """An existing target must be this case's and configured as asked: evidence stores are never re-shaped."""
    iqn = spec["target_iqn"]
    if not journal.find(A_TARGET, target_iqn=iqn, control_port=spec["control_port"]):
        raise IscsiTargetError("Target %s exists on tgtd control port %d but was not created by case %s; it is left "
                               "alone." % (iqn, spec["control_port"], spec["case_id"]))
    lun = _lun(target)
    problems = []
    if lun is not None and lun["path"] != spec["backing_file"]:
        problems.append("its LUN is backed by %s, not %s" % (lun["path"], spec["backing_file"]))
    if backing_size is not None and backing_size != spec["size"]:
        problems.append("its backing file holds %d bytes, not %d (an evidence store is never resized)"
                        % (backing_size, spec["size"]))
    others = [a for a in target["acls"] if a != spec["initiator_iqn"]]
    if others:
        problems.append("it allows the initiator(s) %s, not only %s" % (", ".join(others), spec["initiator_iqn"]))
    users = [a["user"] for a in target["accounts"] if not a["outgoing"]]
    if users and users != [spec["chap_user"]]:
        problems.append("its CHAP user is %s, not %s" % (", ".join(users), spec["chap_user"]))
    outgoing = [a["user"] for a in target["accounts"] if a["outgoing"]]
    if outgoing and outgoing != [spec["mutual_chap_user"]]:
        problems.append("its mutual CHAP user is %s, not %s" % (", ".join(outgoing), spec["mutual_chap_user"]))
    if fw and fw.get("allowed") is not None and fw["allowed"] != sorted(spec["initiator_addresses"]):
        problems.append("its firewall allows %s, not %s" % (", ".join(fw["allowed"]),
                                                            ", ".join(spec["initiator_addresses"])))
    if problems:
        raise IscsiTargetError("Target %s exists with another configuration: %s. Remove it first (state=absent; the "
                               "backing file is kept) or use another target." % (iqn, "; ".join(problems)),
                               problems=problems)
    if lun is not None and lun["readonly"]:
        raise IscsiTargetError("The LUN of target %s is read-only: its acquisition is over, and state=present would "
                               "make the evidence writable again. Nothing was changed." % iqn)
    identity = lun_identity(iqn)
    if lun is not None and target["sessions"] and any(lun.get(k) != identity[k] for k in ("scsi_id", "scsi_sn")):
        raise IscsiTargetError("LUN %d of target %s presents the SCSI identity scsi_id %r, scsi_sn %r, not its own "
                               "(serial %s, %s), and %s logged in: a device's identity is not changed under its "
                               "initiators. Log them out, or remove the target (state=absent; the backing file is "
                               "kept) and set it up again. Nothing was changed." % (
                                   LUN, iqn, lun.get("scsi_id"), lun.get("scsi_sn"), identity["scsi_sn"],
                                   identity["naa"], _initiators_text(target)),
                               scsi_id=lun.get("scsi_id"), scsi_sn=lun.get("scsi_sn"))


def _initiators_text(target):
    names = sorted(set(s["initiator"] or "an unnamed initiator" for s in target["sessions"]))
    return "%s %s" % (", ".join(names), "is" if len(names) == 1 else "are")


# The iSCSI session parameters the target offers (tgt 1.0.85's defaults in brackets). With its defaults an initiator
# sends writes as 8 KiB PDUs [MaxRecvDataSegmentLength 8192] and waits for a ready-to-transfer before the data of
# each write [InitialR2T Yes], 256 KiB per round trip [MaxBurstLength]: 512 MiB copied onto the lab's LUN took 4.3-5.9 s
# (cp + sync, through qemu-storage-daemon's libiscsi), with these 2.9-3.8 s (issue 14). Each is an RFC 7143 login key:
# an initiator declares its own limits or negotiates these down; they change no byte written.
SESSION_PARAMS = {
    "MaxRecvDataSegmentLength": "262144",
    "MaxXmitDataSegmentLength": "262144",
    "FirstBurstLength": "262144",
    "MaxBurstLength": "1048576",
    "InitialR2T": "No",
}


def session_settings(current):
    """The session parameters a target lacks ({} when it has them all)."""
    return dict((k, v) for k, v in SESSION_PARAMS.items() if current.get(k) != v)


def lun_settings(lun, identity):
    """The tgt parameters an existing LUN lacks (thin provisioning, its SCSI identity): {} when it has them all."""
    settings = {}
    if not lun["thin"]:
        settings["thin_provisioning"] = 1
    for key in ("scsi_id", "scsi_sn"):
        if lun.get(key) != identity[key]:
            settings[key] = identity[key]
    return settings


def _check_portal_peers(journal, spec):
    """Targets of one portal share one address filter: they must allow the same initiator addresses."""
    for rec in journal.find(A_FIREWALL, control_port=spec["control_port"]):
        undo = rec["undo"]
        if undo["target_iqn"] != spec["target_iqn"] and sorted(undo["allowed"]) != sorted(spec["initiator_addresses"]):
            raise IscsiTargetError(
                "Target %s already uses the portal of tgtd control port %d for the addresses %s; a portal filters "
                "addresses for all its targets, so give target %s a control_port and portal_port of its own."
                % (undo["target_iqn"], spec["control_port"], ", ".join(undo["allowed"]), spec["target_iqn"]))


def _check_portal_free(spec):
    if not address_is_local(spec["portal_address"]):
        raise IscsiTargetError("The portal address %s is not an address of this host." % spec["portal_address"])
    wild = ("0.0.0.0", "::")
    for listener in listeners(spec["portal_port"]):
        if listener["address"] in wild + (spec["portal_address"],):
            who = _describe(listener)
            raise IscsiTargetError("%s%s already listens on %s port %d, so tgtd cannot open the portal %s; it is "
                                   "left alone. Use another portal_port." % (
                                       who[0].upper(), who[1:], listener["address"], spec["portal_port"],
                                       portal_text(spec["portal_address"], spec["portal_port"])),
                                   listener_pid=listener["pid"])


def _free_tid(client):
    used = set(t["tid"] for t in client.targets())
    tid = 1
    while tid in used:
        tid += 1
    return tid


def _new_thin_lun(client, tid, backing_file, identity):
    """The LUN, then its settings in one update (tgtd takes scsi_id and scsi_sn only there); its identity goes to the
    journal with the change."""
    client.new_lun(tid, LUN, backing_file)
    client.update_lun(tid, LUN, thin_provisioning=1, scsi_id=identity["scsi_id"], scsi_sn=identity["scsi_sn"])
    return dict(identity)


def _nft_apply(nft, spec):
    rc, out, err = run([nft, "-f", "-"], data=firewall_script(spec))
    if rc:
        raise IscsiTargetError("nft refused the table inet %s: %s" % (spec["firewall_table"], (err or out).strip()),
                               table=spec["firewall_table"])


def _socket_files_missing(control_port):
    path = _tgt.socket_path(control_port)
    missing = [p for p in (path, path + ".lock") if not os.path.lexists(p)]
    if not os.path.isdir(_tgt.SOCKET_DIR):
        missing.insert(0, _tgt.SOCKET_DIR)
    return missing


def allocated_bytes(path):
    """Bytes of data a (sparse) file holds: its allocated blocks."""
    return os.stat(path).st_blocks * 512


def room_size(path, size):
    """The size a reused backing file needs for ``size`` more bytes beside the data it holds (what an earlier,
    incomplete run left), rounded up to MiB; at least its own size."""
    mib = 1024 * 1024
    wanted = (allocated_bytes(path) + int(size) + mib - 1) // mib * mib
    return max(wanted, os.stat(path).st_size)


def grow_sparse(path, size):
    """Extend an existing file to ``size`` bytes with a hole (its data is not touched); never shrinks it."""
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"size": size}


@undo_handler(A_GROWN)
def undo_grown(undo, ctx):
    """A backing file grown for a rerun: it holds evidence beyond its old size now, so it is never shrunk back (an
    evidence store, like the backing file itself, outlives every teardown)."""
    return ("left the backing file %s at %d bytes (grown from %d): it holds the case's evidence, which no teardown "
            "changes" % (undo["path"], undo["to"], undo["from"]))


def create_sparse(path, size, folder=None):
    """A new sparse file of ``size`` bytes (mode 0600), and its folder (mode 0750) when missing; never opens an
    existing one."""
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, 0o750)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path))
    st = os.stat(path)
    return {"inode": st.st_ino, "allocated": st.st_blocks * 512}


def start_daemon(argv, spec):
    """Start tgtd (it daemonizes), wait for its control socket, and prove it listens exactly on the portal.

    tgtd 1.0.85 does not fail when its portal cannot be bound: it falls back to 0.0.0.0:3260 and
    [::]:3260. So the listeners are checked, and a tgtd that is not where it should be is stopped.
    """
    rc, out, err = _runner.run(argv, timeout=DAEMON_FORK_TIMEOUT, daemonizes=True)
    if rc == _runner.TIMED_OUT_RC:
        raise IscsiTargetError("tgtd did not go into the background within %.0f s (it normally does at once) and was "
                               "killed; nothing listens on control port %d." % (DAEMON_FORK_TIMEOUT, spec["control_port"]))
    if rc:
        raise IscsiTargetError("tgtd did not start (exit %d): %s" % (rc, (err or out).strip() or "no message"))
    client = _tgt.TgtClient(spec["control_port"])
    deadline = time.time() + START_TIMEOUT
    pid = None
    while time.time() < deadline:
        pid = client.server_pid()
        if pid and read_cmdline(pid) == argv:
            break
        time.sleep(0.05)
    else:
        raise IscsiTargetError("tgtd did not answer on control port %d within %d s."
                               % (spec["control_port"], START_TIMEOUT))
    # the control socket answers before the portal listens: wait for the portal too
    while True:
        mine = [entry for entry in listeners(spec["portal_port"]) + listeners(3260) if entry["pid"] == pid]
        if mine or time.time() > deadline:
            break
        time.sleep(0.05)
    where = sorted(set(entry["address"] for entry in mine))
    if where != [spec["portal_address"]]:
        _stop(client, pid)
        raise IscsiTargetError("tgtd could not open the portal %s (it listened on %s instead) and was stopped again."
                               % (portal_text(spec["portal_address"], spec["portal_port"]),
                                  ", ".join(where) or "nothing"))
    return {"pid": pid}


def _stop(client, pid):
    client.stop()
    deadline = time.time() + STOP_TIMEOUT
    while time.time() < deadline:
        if not read_cmdline(pid):  # gone (None), or a zombie ([])
            return
        time.sleep(0.05)
    raise IscsiTargetError("tgtd pid %d did not exit within %d s after it was asked to." % (pid, STOP_TIMEOUT))


# -- the package (only when tgt is missing and install=true) -------------------------------------

def install_tgt(steps):
    """apt-get install tgt without starting the distribution's service (policy-rc.d guard)."""
    rc, out, err = run(["apt-get", "-s", "-y", "--no-install-recommends", "install", "tgt"])
    if rc:
        raise IscsiTargetError("apt-get cannot install tgt: %s" % (err or out).strip())
    packages = sorted(set(m.group(1) for m in re.finditer(r"^Inst (\S+)", out, re.M)))
    guard_id = None
    if os.path.lexists(POLICY_RC_D):
        rc = run([POLICY_RC_D, "tgt", "start"])[0]
        if rc != 101:
            raise IscsiTargetError("%s exists and would let the package start the system's tgt service; install tgt "
                                   "yourself with its service disabled." % POLICY_RC_D)
    elif not steps.check_mode:
        guard_id = steps.journal.record_change("file.created", {"path": POLICY_RC_D},
                                               "add %s so installing tgt starts no service" % POLICY_RC_D,
                                               module=MODULE)
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# dfir.vmcollect: no service starts while tgt is installed\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
        steps.journal.mark_applied(guard_id)
    try:
        def install():
            code, sout, serr = run(["apt-get", "-y", "--no-install-recommends", "install", "tgt"],
                                   env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=APT_TIMEOUT)
            if code:
                raise IscsiTargetError("apt-get install tgt failed: %s" % (serr or sout).strip()[-2000:])
            return {"packages": packages}
        steps.change(A_PACKAGES, {"packages": packages}, "install the package(s) %s" % ", ".join(packages or ["tgt"]),
                     install)
    finally:
        if guard_id:  # the guard goes through its file.created handler, marked undone
            steps.journal.replay([r for r in steps.journal.pending() if r["id"] == guard_id], UndoContext())


# -- readonly and absent ------------------------------------------------------------------------

def _own_target(journal, spec):
    daemon = inspect_daemon(spec)
    if daemon["state"] == "foreign":
        raise IscsiTargetError("Control port %d is served by a tgtd that is not case %s's (pid %s); nothing was "
                               "changed." % (spec["control_port"], spec["case_id"], daemon["pid"]))
    target = None
    if daemon["state"] == "ours":
        target = find_target(_tgt.TgtClient(spec["control_port"]), spec["target_iqn"])
    if target is not None and not journal.find(A_TARGET, target_iqn=spec["target_iqn"],
                                               control_port=spec["control_port"]):
        raise IscsiTargetError("Target %s on tgtd control port %d was not created by case %s; it is left alone."
                               % (spec["target_iqn"], spec["control_port"], spec["case_id"]))
    return daemon, target


def readonly(journal, spec, check_mode=False):
    steps = _Steps(journal, spec, check_mode)
    daemon, target = _own_target(journal, spec)
    lun = _lun(target)
    if lun is None:
        raise IscsiTargetError("Target %s has no LUN %d on tgtd control port %d to make read-only (is it set up for "
                               "case %s?)." % (spec["target_iqn"], LUN, spec["control_port"], spec["case_id"]))
    client = _tgt.TgtClient(spec["control_port"])
    fw = firewall_state(spec["firewall_table"], which("nft") or "nft")
    size = os.stat(lun["path"]).st_size if lun["path"] and os.path.exists(lun["path"]) else None
    before = config_view(spec, target, fw, size)
    if not lun["readonly"]:
        steps.change(A_READONLY, _target_undo(spec, tid=target["tid"], lun=LUN),
                     "make LUN %d of target %s read-only" % (LUN, spec["target_iqn"]),
                     lambda: client.update_lun(target["tid"], LUN, readonly=1))
    after = dict(before, readonly=True)
    spec = dict(spec, backing_file=lun["path"], size=size)
    return _result(spec, steps, before, after, tid=target["tid"], readonly=True, thin=lun["thin"],
                   tgtd_pid=daemon["pid"], portal=_portal_of(daemon), **identity_of(lun))


def _portal_of(daemon):
    for arg in daemon.get("argv") or []:
        if arg.startswith("portal="):
            return arg[len("portal="):]
    return None


def absent(journal, spec, check_mode=False):
    """Undo this target's journal records newest first; the case's tgtd too when it serves nothing else."""
    steps = _Steps(journal, spec, check_mode)
    daemon, target = _own_target(journal, spec)
    fw = firewall_state(spec["firewall_table"], which("nft") or "nft")
    lun = _lun(target)
    size = os.stat(lun["path"]).st_size if lun and lun["path"] and os.path.exists(lun["path"]) else None
    before = config_view(spec, target, fw, size)
    mine = [r for r in journal.pending() if r["action"] in TARGET_ACTIONS
            and r["undo"].get("target_iqn") == spec["target_iqn"] and r["undo"].get("control_port") == spec["control_port"]]
    if spec["remove_backing_file"] and spec.get("backing_file") and os.path.exists(spec["backing_file"]) and not any(
            r["action"] == A_BACKING and r["undo"]["path"] == spec["backing_file"] for r in mine):
        raise IscsiTargetError("remove_backing_file: %s is not a pending creation of target %s in case %s's journal "
                               "(it was kept when the target was removed earlier, or it is not this case's); nothing "
                               "was changed." % (spec["backing_file"], spec["target_iqn"], spec["case_id"]))
    # the case's tgtd goes when no other target is left on it (in journal order: before the firewall)
    others = [r for r in journal.pending() if r["action"] == A_TARGET and r["undo"].get("control_port") ==
              spec["control_port"] and r["undo"].get("target_iqn") != spec["target_iqn"]]
    if not others:
        mine.extend(journal.find(A_DAEMON, control_port=spec["control_port"]))
    kept = None
    for i, rec in enumerate(mine):
        if rec["action"] == A_BACKING:
            kept = rec["undo"]["path"]
            mine[i] = dict(rec, undo=dict(rec["undo"], remove=spec["remove_backing_file"]))
    undone = journal.replay(mine, UndoContext(steps.check_mode))
    steps.done.extend(("would: " if steps.check_mode else "") + u["result"] for u in undone)
    return _result(dict(spec, backing_file=kept or spec.get("backing_file")), steps, before, {}, tid=None,
                   readonly=None, tgtd_pid=None, thin=None, portal=_portal_of(daemon), **dict.fromkeys(IDENTITY))


# -- undo handlers ------------------------------------------------------------------------------

def _client_for(undo):
    client = _tgt.TgtClient(undo["control_port"])
    return client if client.running() else None


def _target_alive(client, undo):
    """The target of a record, if tgtd still has it under the recorded tid and name."""
    for target in client.targets():
        if target["tid"] == undo.get("tid", target["tid"]) and target["name"] == undo["target_iqn"]:
            return target
    return None


def _gone(undo, what):
    return "%s: already gone (no tgtd on control port %d)" % (what, undo["control_port"])


@undo_handler(A_ACL)
def undo_acl(undo, ctx):
    what = "initiator %s on target %s" % (undo["initiator_iqn"], undo["target_iqn"])
    client = _client_for(undo)
    if client is None:
        return _gone(undo, what)
    target = _target_alive(client, undo)
    if target is None or undo["initiator_iqn"] not in target["acls"]:
        return "%s: was not allowed" % what
    if ctx.check_mode:
        return "would remove the %s" % what
    client.unbind_initiator_name(target["tid"], undo["initiator_iqn"])
    return "removed the %s" % what


@undo_handler(A_READONLY)
def undo_readonly(undo, ctx):
    # never made writable again: the LUN goes with its target (an earlier record), the evidence stays read-only
    return "LUN %d of target %s left read-only (it is removed with the target; evidence is never made writable " \
           "again)" % (undo["lun"], undo["target_iqn"])


@undo_handler(A_LUN)
def undo_lun(undo, ctx):
    what = "LUN %d of target %s" % (undo["lun"], undo["target_iqn"])
    client = _client_for(undo)
    if client is None:
        return _gone(undo, what)
    target = _target_alive(client, undo)
    if target is None or _lun(target) is None:
        return "%s: was not there" % what
    if target["sessions"]:
        # a LUN in use cannot be deleted; the target's own undo deletes it with force
        return "%s: left for the target's removal (initiators are logged in)" % what
    if ctx.check_mode:
        return "would delete %s (the backing file stays)" % what
    client.delete_lun(target["tid"], undo["lun"])
    return "deleted %s (the backing file stays)" % what


@undo_handler(A_BINDING)
def undo_binding(undo, ctx):
    what = "CHAP account %s on target %s" % (undo["user"], undo["target_iqn"])
    client = _client_for(undo)
    if client is None:
        return _gone(undo, what)
    target = _target_alive(client, undo)
    if target is None or not any(a["user"] == undo["user"] for a in target["accounts"]):
        return "%s: was not bound" % what
    if ctx.check_mode:
        return "would unbind the %s" % what
    client.unbind_account(target["tid"], undo["user"], outgoing=undo.get("outgoing", False))
    return "unbound the %s" % what


@undo_handler(A_ACCOUNT)
def undo_account(undo, ctx):
    what = "CHAP account %s" % undo["user"]
    client = _client_for(undo)
    if client is None:
        return _gone(undo, what)
    if undo["user"] not in client.accounts():
        return "%s: was not there" % what
    if ctx.check_mode:
        return "would delete the %s" % what
    client.delete_account(undo["user"])
    return "deleted the %s" % what


@undo_handler(A_TARGET)
def undo_target(undo, ctx):
    what = "target %s (tid %d)" % (undo["target_iqn"], undo["tid"])
    client = _client_for(undo)
    if client is None:
        return _gone(undo, what)
    target = _target_alive(client, undo)
    if target is None:
        return "%s: was not there" % what
    if ctx.check_mode:
        return "would delete %s" % what
    client.delete_target(target["tid"], force=True)
    return "deleted %s%s" % (what, " and logged out its %d session(s)" % len(target["sessions"])
                             if target["sessions"] else "")


@undo_handler(A_FIREWALL)
def undo_firewall(undo, ctx):
    nft = which("nft") or "nft"
    if firewall_state(undo["table"], nft) is None:
        return "nftables table inet %s: already gone" % undo["table"]
    if ctx.check_mode:
        return "would delete the nftables table inet %s" % undo["table"]
    rc, out, err = run([nft, "delete", "table", "inet", undo["table"]])
    if rc and firewall_state(undo["table"], nft) is not None:
        raise IscsiTargetError("nft cannot delete the table inet %s: %s" % (undo["table"], (err or out).strip()))
    return "deleted the nftables table inet %s" % undo["table"]


@undo_handler(A_BACKING)
def undo_backing(undo, ctx):
    path = undo["path"]
    if not os.path.lexists(path):
        return "backing file %s: not there" % path
    asked = undo.get("remove")
    if not asked and os.stat(path).st_blocks:
        return "kept the backing file %s (evidence)" % path
    # removed when asked, or when nothing was ever written to it (the attach failed before a filesystem was made): it
    # holds no evidence then, and only what holds evidence is kept as evidence
    why = "" if asked else ": nothing was ever written to it"
    if ctx.check_mode:
        return "would remove the backing file %s%s" % (path, why)
    os.unlink(path)
    fsync_dir(os.path.dirname(path))
    if not asked:
        folders = remove_empty_dirs(undo.get("created_dirs") or [])
        return "removed the backing file %s%s (no evidence)%s" % (
            path, why, ", and its folder %s" % ", ".join(folders) if folders else "")
    return "removed the backing file %s" % path


@undo_handler(A_DAEMON)
def undo_daemon(undo, ctx):
    port = undo["control_port"]
    client = _tgt.TgtClient(port)
    pid = client.server_pid()
    if pid is None:
        result = "tgtd on control port %d: not running" % port
    else:
        argv = read_cmdline(pid)
        if argv != undo["argv"]:
            return ("left tgtd pid %d on control port %d alone: it is not the instance this case started (%s)"
                    % (pid, port, " ".join(argv or [])))
        if ctx.check_mode:
            # the targets recorded later in the journal are still there in check mode
            return "would stop tgtd pid %d (control port %d) once it serves no target" % (pid, port)
        targets = client.targets()
        if targets:
            raise IscsiTargetError("This case's tgtd on control port %d still serves %s, which this case's journal "
                                   "does not hold; remove them (tgtadm -C %d --mode target --op delete) and run "
                                   "teardown again." % (port, ", ".join(t["name"] for t in targets), port))
        _stop(client, pid)
        result = "stopped tgtd pid %d (control port %d)" % (pid, port)
    if ctx.check_mode:
        return result
    for path in sorted(undo.get("created", []), key=len, reverse=True):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise
    return result


@undo_handler(A_PACKAGES)
def undo_packages(undo, ctx):
    installed = []
    for package in undo["packages"]:
        rc, out = run(["dpkg-query", "-W", "-f", "${Status}", package])[:2]
        if rc == 0 and out.strip().endswith(" installed"):
            installed.append(package)
    if not installed:
        return "package(s) %s: not installed" % ", ".join(undo["packages"])
    if ctx.check_mode:
        return "would purge %s" % ", ".join(installed)
    rc, out, err = run(["apt-get", "-y", "purge"] + installed, env={"DEBIAN_FRONTEND": "noninteractive"},
                       timeout=APT_TIMEOUT)
    if rc:
        raise IscsiTargetError("apt-get purge %s failed: %s" % (" ".join(installed), (err or out).strip()[-2000:]))
    return "purged %s" % ", ".join(installed)


UNDO = {A_ACL: undo_acl, A_READONLY: undo_readonly, A_LUN: undo_lun, A_BINDING: undo_binding, A_ACCOUNT: undo_account,
        A_TARGET: undo_target, A_FIREWALL: undo_firewall, A_BACKING: undo_backing, A_DAEMON: undo_daemon,
        A_PACKAGES: undo_packages, A_GROWN: undo_grown}


def setup(journal, spec, check_mode=False):
    if spec["state"] == "present":
        return present(journal, spec, check_mode)
    if spec["state"] == "readonly":
        return readonly(journal, spec, check_mode)
    return absent(journal, spec, check_mode)
