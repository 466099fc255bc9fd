# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach an iSCSI LUN on a KVM host as a mounted filesystem, and detach it again.

Two initiators:

``userspace`` (default): ``qemu-storage-daemon`` logs in with libiscsi and exports the LUN as a
FUSE file; ``losetup`` makes it a block device; a filesystem on it is mounted where the
acquisition writes. Nothing of the kernel's iSCSI stack and no iscsid state is used. The CHAP
secret reaches QEMU through a pipe (``--object secret,file=/proc/self/fd/N``): it is never in
argv and never in a file. ``--daemonize`` returns only after the daemon has read the secret and
logged in, so a wrong secret fails the start itself.

``open-iscsi``: an iface record of our own (``vmc-...``) carrying the initiator name, a
non-persistent SendTargets discovery through it, one node record created for the target (CHAP
written into the record file directly, since ``iscsiadm -o update -v`` would put the secret in
argv), login, the ``/dev/disk/by-path`` device, filesystem, mount. Detach logs out and deletes
exactly the node record and iface it created.

Formatting rule: a filesystem is made only on a blank LUN (no signature known to ``blkid -p`` or
``wipefs``). A LUN with a ``filesystem`` carrying ``filesystem_label`` is mounted as it is (a rerun
finds what the acquisition already wrote); anything else is refused, never formatted, unless
``format=force``.

Every step is journaled before it is made, with one undo handler per action
(``iscsi.dir_created``, ``iscsi.qsd_started``, ``iscsi.loop_attached``, ``iscsi.mounted``,
``iscsi.iface_created``, ``iscsi.node_created``, ``iscsi.session_logged_in``, plus the generic
``file.created`` for the FUSE export file). ``state=absent`` replays this attachment's records
through the same handlers and marks them undone, so ``teardown`` afterwards finds nothing to do,
and ``teardown`` alone (also after ``kill -9``) detaches everything.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import os
import re
import signal
import socket
import struct
import sys
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, IscsiAttachError, VmcollectError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import runner as _runner
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, missing_dirs, write_atomic
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.names import check_iqn
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UndoContext, undo_handler

# seconds an iSCSI request may wait for the target (userspace initiator) before it fails with EIO
DEFAULT_REQUEST_TIMEOUT = 30
ACTION_DIR = "iscsi.dir_created"
ACTION_WATCHDOG = "iscsi.watchdog_started"
WATCHDOG_MARKER = "vmcollect-link-watchdog"
ACTION_FILE = "file.created"
ACTION_QSD = "iscsi.qsd_started"
ACTION_LOOP = "iscsi.loop_attached"
ACTION_MOUNT = "iscsi.mounted"
ACTION_IFACE = "iscsi.iface_created"
ACTION_NODE = "iscsi.node_created"
ACTION_SESSION = "iscsi.session_logged_in"

DEFAULT_RUN_DIR = "/run/dfir-vmcollect"
DEFAULT_NODE_DIR = "/etc/iscsi/nodes"
DEFAULT_LABEL = "vmcollect"
FILESYSTEMS = {
    # mkfs arguments before the label; -m 0: no blocks reserved for root on an evidence volume
    "ext4": ["-q", "-F", "-m", "0"],
    "ext3": ["-q", "-F", "-m", "0"],
    "ext2": ["-q", "-F", "-m", "0"],
    "xfs": ["-q"],
}
LABEL_MAX = {"ext4": 16, "ext3": 16, "ext2": 16, "xfs": 12}
FORMAT_CHOICES = ("if_blank", "never", "force")
# mount options that keep a read-only mount from replaying the journal (read_only, and loop_mount)
NO_RECOVERY = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery"}
# qemu-storage-daemon --daemonize returns once it has logged in and exported the LUN: seconds, unless the
# target does not answer; then the start is killed rather than left to retry forever
QSD_START_TIMEOUT = 120.0
QSD_STOP_TIMEOUT = 60.0
# Generous but finite bounds for the slow commands (every other command: the runner's 120 s default or less).
# mkfs on a blank multi-TiB LUN writes its metadata over the storage link (xfs and ext2/3 with no lazy init);
# sync and umount of the evidence volume write back every dirty page of the acquisition at link speed.
MKFS_TIMEOUT = 3600.0
FLUSH_TIMEOUT = 3600.0
DEVICE_TIMEOUT = 30.0
_SECRET_MASK = "********"

# Roots of the kernel's views, replaced by unit tests
PROC = "/proc"
SYS = "/sys"
DEV = "/dev"


# the collection's command runner (bounded: every call has a timeout); unit tests replace it with a fake
RUNNER = _runner.run
_SEARCH_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]


def _run(argv, **kwargs):
    return RUNNER(argv, **kwargs)


def find_bin(name):
    """The absolute path of a program (PATH, then the usual sbin folders), or None."""
    for folder in os.environ.get("PATH", "").split(os.pathsep) + _SEARCH_PATH:
        if folder and os.path.isabs(folder):
            cand = os.path.join(folder, name)
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return None


def _bin(name):
    found = find_bin(name)
    if not found:
        raise IscsiAttachError("The program %s is not installed on this host; it is needed to attach or detach "
                               "the iSCSI LUN." % name, program=name)
    return found


def _mask(text, secrets):
    for s in secrets:
        if s:
            text = text.replace(s, _SECRET_MASK)
    return text.strip()


# -- identities ----------------------------------------------------------------------------------

def attachment_id(case_id, mountpoint):
    """A short name unique per case and mountpoint, usable as a QEMU id and an open-iscsi iface name."""
    digest = hashlib.sha256(("%s\0%s" % (case_id, os.path.normpath(mountpoint))).encode("utf-8")).hexdigest()
    name = "vmc-%s-%s" % (case_id, digest[:8])
    # it names QEMU's block node too ("<id>-lun"), and QEMU refuses node names over 31 characters
    if len(name) > 27 or not re.match(r"^[A-Za-z][A-Za-z0-9._-]*$", name):
        name = "vmc-%s" % digest[:16]
    return name


def qemu_opt(value):
    """Escape a value for QEMU's key=value,... option syntax (a comma is doubled)."""
    return str(value).replace(",", ",,")


def portal_string(address, port):
    address = address.strip()
    if ":" in address and not address.startswith("["):
        address = "[%s]" % address  # IPv6
    return "%s:%d" % (address, port)


# -- validation ----------------------------------------------------------------------------------

def validate(p):
    """Check the options of a present/absent request; returns a normalised dict."""
    cfg = dict(p)
    mp = cfg.get("mountpoint")
    if not mp or not os.path.isabs(mp):
        raise InvalidInputError("The mountpoint %r is not an absolute path; give one." % (mp,))
    cfg["mountpoint"] = os.path.normpath(mp)
    if cfg.get("initiator", "userspace") not in ("userspace", "open-iscsi"):
        raise InvalidInputError("The initiator must be userspace or open-iscsi, not %r." % cfg.get("initiator"))
    cfg.setdefault("initiator", "userspace")
    run_dir = cfg.get("run_dir") or os.path.join(DEFAULT_RUN_DIR, cfg["case_id"])
    if not os.path.isabs(run_dir):
        raise InvalidInputError("The run_dir %s is relative; give an absolute path." % run_dir)
    cfg["run_dir"] = os.path.normpath(run_dir)
    cfg["attachment"] = attachment_id(cfg["case_id"], cfg["mountpoint"])
    cfg.setdefault("node_dir", DEFAULT_NODE_DIR)
    if cfg.get("state", "present") == "absent":
        return cfg
    for key in ("portal_address", "target_iqn", "initiator_iqn"):
        if not cfg.get(key):
            raise InvalidInputError("Option %s is required to attach (state=present)." % key)
    for key in ("target_iqn", "initiator_iqn"):
        check_iqn(cfg[key], key)
    cfg["portal_port"] = int(cfg.get("portal_port") or 3260)
    if not 0 < cfg["portal_port"] < 65536:
        raise InvalidInputError("portal_port %d is not a TCP port." % cfg["portal_port"])
    if re.search(r"[\s,/]", cfg["portal_address"]):
        raise InvalidInputError("portal_address %r is not a host name or an address." % cfg["portal_address"])
    cfg["lun"] = int(cfg.get("lun") if cfg.get("lun") is not None else 1)
    if not 0 <= cfg["lun"] < 16384:
        raise InvalidInputError("LUN %d is out of range (0-16383)." % cfg["lun"])
    cfg["timeout"] = int(cfg.get("timeout") if cfg.get("timeout") is not None else DEFAULT_REQUEST_TIMEOUT)
    if cfg["timeout"] < 0:
        raise InvalidInputError("timeout %d is negative; give seconds, or 0 to wait forever." % cfg["timeout"])
    if bool(cfg.get("chap_user")) != bool(cfg.get("chap_password")):
        raise InvalidInputError("chap_user and chap_password go together; give both or neither.")
    if bool(cfg.get("mutual_chap_user")) != bool(cfg.get("mutual_chap_password")):
        raise InvalidInputError("mutual_chap_user and mutual_chap_password go together; give both or neither.")
    if cfg.get("mutual_chap_user") and not cfg.get("chap_user"):
        raise InvalidInputError("Mutual CHAP needs CHAP in the other direction too (chap_user/chap_password).")
    if cfg.get("mutual_chap_user") and cfg["initiator"] == "userspace":
        raise InvalidInputError("Mutual CHAP is not available with initiator=userspace: QEMU's iSCSI driver cannot "
                                "check the target's secret. Use initiator=open-iscsi, or one-way CHAP.")
    for key in ("chap_user", "mutual_chap_user"):
        if cfg.get(key) and re.search(r"[\s\x00-\x1f]", cfg[key]):
            raise InvalidInputError("%s must not contain white space or control characters." % key)
    for key in ("chap_password", "mutual_chap_password"):
        if cfg.get(key) and re.search(r"[\r\n\x00]", cfg[key]):
            raise InvalidInputError("%s must not contain line breaks or NUL characters." % key)
    fs = cfg.get("filesystem") or "ext4"
    if fs not in FILESYSTEMS:
        raise InvalidInputError("The filesystem %r is not supported; use one of %s." % (fs, ", ".join(sorted(FILESYSTEMS))))
    cfg["filesystem"] = fs
    label = cfg.get("filesystem_label") or DEFAULT_LABEL
    if len(label) > LABEL_MAX[fs] or not re.match(r"^[A-Za-z0-9._-]+$", label):
        raise InvalidInputError("The filesystem label %r is not usable for %s: at most %d letters, digits, '.', '_' "
                                "or '-'." % (label, fs, LABEL_MAX[fs]))
    cfg["filesystem_label"] = label
    cfg["format"] = cfg.get("format") or "if_blank"
    if cfg["format"] not in FORMAT_CHOICES:
        raise InvalidInputError("format must be one of %s." % ", ".join(FORMAT_CHOICES))
    cfg["read_only"] = bool(cfg.get("read_only"))
    if cfg["read_only"] and cfg["format"] == "force":
        raise InvalidInputError("read_only=true attaches a LUN that already holds evidence and never formats it; it "
                                "cannot go with format=force.")
    return cfg


def _secrets(cfg):
    return [cfg.get("chap_password"), cfg.get("mutual_chap_password")]


# -- what the kernel shows --------------------------------------------------------------------------

def _unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts():
    """This mount namespace's mounts: list of dict(mountpoint, majmin, fstype, source)."""
    result = []
    with open(os.path.join(PROC, "self", "mountinfo")) as f:
        for line in f:
            left, _sep, right = line.partition(" - ")
            a, b = left.split(), right.split()
            if len(a) < 5 or len(b) < 2:
                continue
            result.append({"mountpoint": _unescape_mountinfo(a[4]), "majmin": a[2], "fstype": b[0],
                           "source": _unescape_mountinfo(b[1])})
    return result


def mount_at(mountpoint):
    """The topmost mount at ``mountpoint``, or None."""
    found = None
    for m in mounts():
        if m["mountpoint"] == mountpoint:
            found = m
    return found


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except (IOError, OSError):
        return default


def loops_backed_by(backing_file):
    """Loop devices whose backing file is ``backing_file``: list of dict(device, majmin)."""
    found = []
    block = os.path.join(SYS, "block")
    try:
        names = sorted(os.listdir(block))
    except OSError:
        return found
    for name in names:
        if not name.startswith("loop"):
            continue
        backing = _read(os.path.join(block, name, "loop", "backing_file"))
        if backing and (backing == backing_file or backing == backing_file + " (deleted)"):
            found.append({"device": os.path.join(DEV, name), "majmin": _read(os.path.join(block, name, "dev")),
                          "name": name})
    return found


def block_majmin(device):
    """major:minor of a block device node, or None."""
    try:
        st = os.stat(device)
    except OSError:
        return None
    return "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))


def _is_zombie(pid):
    return procfs.is_zombie(pid, PROC)


def _export_marker(export_id):
    return "type=fuse,id=%s," % export_id


def _is_qsd_argv(argv, export_id):
    return bool(argv) and "qemu-storage-daemon" in os.path.basename(argv[0]) and any(
        a.startswith(_export_marker(export_id)) for a in argv)


def is_our_qsd(pid, export_id):
    """Whether ``pid`` is the qemu-storage-daemon serving our export (never trust a bare pid file)."""
    return _is_qsd_argv(procfs.read_cmdline(pid, PROC), export_id)


def find_qsd(export_id, pid_file=None):
    """The pid of our qemu-storage-daemon: from the pid file when it names ours, else by scanning /proc."""
    pid = _read(pid_file) if pid_file else None
    if pid and pid.isdigit() and is_our_qsd(int(pid), export_id) and not _is_zombie(int(pid)):
        return int(pid)
    found = procfs.find_pids(lambda argv: _is_qsd_argv(argv, export_id), PROC)
    return found[0] if found else None


def _fs_facts(mountpoint):
    st = os.statvfs(mountpoint)
    return {"size_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}


# -- filesystem signatures and formatting --------------------------------------------------------------

def probe(device):
    """What the LUN carries: dict(blank, type, label, signatures). Reads only (blkid -p, wipefs -n)."""
    rc, out, err = _run([_bin("blkid"), "-p", "-o", "export", device], timeout=120)
    info = {}
    if rc == 0:
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key] = value
    elif rc != 2:  # 2: nothing found
        raise IscsiAttachError("blkid could not probe %s (exit %d): %s" % (device, rc, err.strip()), device=device)
    rc, out, err = _run([_bin("wipefs"), "-n", "--noheadings", "--output", "TYPE,OFFSET", device], timeout=120)
    if rc != 0:
        raise IscsiAttachError("wipefs could not probe %s (exit %d): %s" % (device, rc, err.strip()), device=device)
    signatures = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    kind = info.get("TYPE") or info.get("PTTYPE") or (signatures[0] if signatures else None)
    return {"blank": not info and not signatures, "type": kind, "label": info.get("LABEL"),
            "usage": info.get("USAGE"), "signatures": signatures}


def decide_format(found, fs, label, mode, read_only=False):
    """True to make a filesystem, False to mount what is there; raises for a LUN we must not touch.

    ``read_only`` (a LUN that already holds evidence) never formats: only our own filesystem is mounted.
    """
    ours = found.get("type") == fs and found.get("label") == label
    if ours:
        return False
    if read_only:
        what = ("nothing (it is blank)" if found.get("blank") else
                found.get("type") or ", ".join(found.get("signatures") or []) or "unknown data")
        raise IscsiAttachError(
            "The LUN carries %s%s, not the %s filesystem labelled %s that holds this collection's evidence; read_only "
            "attaches only that and never formats. Check the target and LUN; nothing was written to it."
            % (what, " labelled %s" % found["label"] if found.get("label") else "", fs, label),
            found_type=found.get("type"), found_label=found.get("label"))
    if found.get("blank"):
        if mode == "never":
            raise IscsiAttachError("The LUN is blank and format=never; it has no filesystem to mount.")
        return True
    if mode == "force":
        return True
    what = found.get("type") or ", ".join(found.get("signatures") or []) or "unknown data"
    raise IscsiAttachError(
        "The LUN already carries %s%s, not the %s filesystem labelled %s that this collection makes. It is not formatted: it may be evidence or "
        "another case's data. Check the target and LUN, or set format=force to overwrite it."
        % (what, " labelled %s" % found["label"] if found.get("label") else "", fs, label),
        found_type=found.get("type"), found_label=found.get("label"))


def make_filesystem(device, fs, label):
    rc, out, err = _run([_bin("mkfs.%s" % fs)] + FILESYSTEMS[fs] + ["-L", label, device], timeout=MKFS_TIMEOUT)
    if rc != 0:
        raise IscsiAttachError("mkfs.%s on %s failed (exit %d): %s" % (fs, device, rc, (err or out).strip()),
                               device=device)


# -- directories ----------------------------------------------------------------------------------

def _missing_dirs(path):
    try:
        return missing_dirs(path)
    except NotADirectoryError as exc:
        raise IscsiAttachError("%s exists and is not a folder." % exc.filename, folder=exc.filename)


def _make_dirs(journal, cfg, path, mode, module="iscsi_attach"):
    for folder in _missing_dirs(path):
        rec = journal.record_change(ACTION_DIR, {"attachment": cfg["attachment"], "path": folder},
                                    "create the folder %s" % folder, module=module)
        try:
            os.mkdir(folder, mode)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        os.chmod(folder, mode)
        fsync_dir(os.path.dirname(folder))
        journal.mark_applied(rec)


@undo_handler(ACTION_DIR)
def _undo_dir(undo, ctx):
    path = undo["path"]
    if not os.path.isdir(path):
        return "%s was already gone" % path
    if mount_at(path):
        if ctx.check_mode:  # the mount's own undo comes first
            return "would remove the folder %s once it is unmounted" % path
        raise IscsiAttachError("%s is still a mountpoint; it is not removed." % path, folder=path)
    if os.listdir(path):
        return "left %s: it is not empty" % path
    if ctx.check_mode:
        return "would remove the folder %s" % path
    os.rmdir(path)
    return "removed the folder %s" % path


# -- qemu-storage-daemon ---------------------------------------------------------------------------

def qsd_argv(cfg, export_file, pid_file, secret_fd=None):
    """The daemon's argv. The CHAP secret is never in it: QEMU reads it from an inherited pipe."""
    att = cfg["attachment"]
    blockdev = ["driver=iscsi", "node-name=%s-lun" % att, "transport=tcp",
                "portal=%s" % qemu_opt(portal_string(cfg["portal_address"], cfg["portal_port"])),
                "target=%s" % qemu_opt(cfg["target_iqn"]), "lun=%d" % cfg["lun"],
                "initiator-name=%s" % qemu_opt(cfg["initiator_iqn"])]
    if cfg.get("timeout"):  # a request the target does not answer fails (EIO) instead of hanging the writer
        blockdev.append("timeout=%d" % cfg["timeout"])
    if cfg.get("read_only"):  # QEMU opens the LUN read-only and refuses every write to it
        blockdev.append("read-only=on")
    argv = [_bin("qemu-storage-daemon")]
    if cfg.get("chap_user"):
        argv += ["--object", "secret,id=%s-chap,file=/proc/self/fd/%d" % (att, secret_fd)]
        blockdev += ["user=%s" % qemu_opt(cfg["chap_user"]), "password-secret=%s-chap" % att]
    argv += ["--blockdev", ",".join(blockdev),
             "--export", "%s%s" % (_export_marker(att), ",".join([
                 "node-name=%s-lun" % att, "mountpoint=%s" % qemu_opt(export_file),
                 "writable=%s" % ("off" if cfg.get("read_only") else "on")])),
             "--pidfile", pid_file, "--daemonize"]
    return argv


PROBE_TIMEOUT = 5.0


def diagnose_portal(address, port, reason, timeout=PROBE_TIMEOUT):
    """One sentence on why a login failed, from a TCP connection to the portal made now: the storage link is down (no
    route, no answer), nothing listens there, or the portal answers and the target refused the login (its name, the
    initiator's name or the CHAP secret); and what to do."""
    portal = portal_string(address, port)
    try:
        sock = socket.create_connection((address, port), timeout)
    except socket.timeout:
        return ("The storage link is down: %s does not answer from this host within %.0f s. Check this host's storage "
                "interface and route to it, the network between, and the collector's firewall; then run again (the "
                "collector was released; nothing is kept as evidence)." % (portal, timeout))
    except (IOError, OSError) as exc:
        if exc.errno == errno.ECONNREFUSED:
            return ("Nothing listens at %s: the collector's target is not running there. Check the collector (its tgtd "
                    "and portal address); then run again." % portal)
        return ("The storage link is down: this host cannot reach %s (%s). Check this host's storage interface and route "
                "to it, and the network between; then run again (the collector was released; nothing is kept as "
                "evidence)." % (portal, exc.strerror or exc))
    sock.close()
    if re.search(r"auth|login|CHAP|not authori[sz]ed|initiator", reason or "", re.I):
        return ("The portal %s answers, and the target refused the login: the initiator's name, its address or the CHAP "
                "secret is not the one the target allows." % portal)
    return "The portal %s answers from this host now; the link may have been down for a moment: run again." % portal


def start_qsd(cfg, export_file, pid_file):
    """Start the daemon; returns its pid. With --daemonize, QEMU's parent exits only once the child has
    read the secret, logged in and set up the export (or failed), so its exit status is the login's."""
    fds = []
    try:
        if cfg.get("chap_user"):
            r, w = os.pipe()
            fds = [r]
            os.write(w, cfg["chap_password"].encode("utf-8"))
            os.close(w)
        argv = qsd_argv(cfg, export_file, pid_file, fds[0] if fds else None)
        rc, out, err = _run(argv, pass_fds=fds, timeout=QSD_START_TIMEOUT, daemonizes=True)
    finally:
        for fd in fds:
            os.close(fd)
    if rc == _runner.TIMED_OUT_RC:
        # its foreground part was killed; the daemon it forked (a session of its own) may still try to log in
        pid = find_qsd(cfg["attachment"], pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        raise IscsiAttachError("qemu-storage-daemon did not attach LUN %d of %s at %s within %.0f s and was killed%s. %s"
                               % (cfg["lun"], cfg["target_iqn"], portal_string(cfg["portal_address"], cfg["portal_port"]),
                                  QSD_START_TIMEOUT, " (daemon %d too)" % pid if pid is not None else "",
                                  diagnose_portal(cfg["portal_address"], cfg["portal_port"], "")))
    if rc != 0:
        msg = _mask(err or out, _secrets(cfg))
        # QEMU repeats the whole --blockdev string; the reason follows the last ": "
        reason = msg.rsplit(": iSCSI: ", 1)[-1] if ": iSCSI: " in msg else msg
        raise IscsiAttachError("qemu-storage-daemon could not attach LUN %d of %s at %s: %s. %s"
                               % (cfg["lun"], cfg["target_iqn"], portal_string(cfg["portal_address"], cfg["portal_port"]),
                                  reason.strip().rstrip("."),
                                  diagnose_portal(cfg["portal_address"], cfg["portal_port"], reason)), qsd_error=msg)
    pid = find_qsd(cfg["attachment"], pid_file)
    if pid is None:
        raise IscsiAttachError("qemu-storage-daemon reported success but no daemon serves the export %s."
                               % export_file)
    return pid


@undo_handler(ACTION_QSD)
def _undo_qsd(undo, ctx):
    """Stop our qemu-storage-daemon (SIGTERM: it flushes and logs out), then make sure the FUSE mount is gone."""
    export_id, export_file = undo["export_id"], undo["export_file"]
    pid = find_qsd(export_id, undo.get("pid_file"))
    done = []
    if pid is not None:
        if ctx.check_mode:
            return "would stop qemu-storage-daemon %d (export %s)" % (pid, export_id)
        if os.path.exists(export_file):
            _fsync_path(export_file)
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + undo.get("stop_timeout", QSD_STOP_TIMEOUT)
        while time.time() < deadline:
            if not is_our_qsd(pid, export_id) or _is_zombie(pid):
                break
            time.sleep(0.1)
        else:
            raise IscsiAttachError("qemu-storage-daemon %d did not stop within %.0f s after SIGTERM (is the target "
                                   "reachable?)." % (pid, undo.get("stop_timeout", QSD_STOP_TIMEOUT)), pid=pid)
        done.append("stopped qemu-storage-daemon %d" % pid)
    stale = mount_at(export_file)
    if stale and stale["fstype"].startswith("fuse"):
        # the daemon died without unmounting its export (kill -9): the mount is dead, take it away
        if ctx.check_mode:
            return "would unmount the dead FUSE export %s" % export_file
        rc, out, err = _run([_bin("umount"), export_file], timeout=60)
        if rc != 0:
            raise IscsiAttachError("The dead FUSE export %s cannot be unmounted: %s" % (export_file, err.strip()))
        done.append("unmounted the dead FUSE export %s" % export_file)
    pid_file = undo.get("pid_file")
    if pid_file and os.path.lexists(pid_file):
        # QEMU removes its pid file when it exits cleanly, not when it is killed
        if ctx.check_mode:
            return "would remove the stale pid file %s" % pid_file
        os.unlink(pid_file)
        done.append("removed the stale pid file %s" % pid_file)
    return "; ".join(done) or "qemu-storage-daemon for %s was not running" % export_id


def _fsync_path(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the link watchdog --------------------------------------------------------------------------------

# QEMU 7.2's iSCSI driver never fails a request once the TCP connection is gone: libiscsi retries the
# login forever (measured: qemu-storage-daemon at 100% CPU for 15 minutes, also after the link came back)
# and every write to the LUN hangs in the kernel (D state) without an error. The watchdog, a small process
# beside the daemon, watches the daemon's own TCP connection to the portal; when it has been gone for
# ``timeout`` seconds it writes why into a note file and SIGKILLs the daemon. The kernel then aborts the
# FUSE connection, so every pending and later write fails with EIO at once: the copy stops with an I/O
# error instead of hanging, and the detach can proceed. It exits by itself when the daemon exits.
WATCHDOG_SOURCE = r"""
import os, signal, sys, time
marker, export_id, qsd, remote, timeout, note = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6]

def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""

def connected():
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % qsd):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (qsd, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (qsd, table)) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[2] == remote and cols[3] == "01" and cols[9] in inodes:
                return True
    return False

lost = None
while ("type=fuse,id=%s," % export_id) in cmdline(qsd):
    now = time.monotonic()
    if connected():
        lost = None
    elif lost is None:
        lost = now
    elif now - lost >= timeout:
        with open(note, "w") as f:
            f.write("the iSCSI connection of qemu-storage-daemon %d to the portal was lost for %.0f s; the daemon was "
                    "stopped at %s UTC so that every pending write to the LUN fails instead of hanging\n"
                    % (qsd, now - lost, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        os.kill(qsd, signal.SIGKILL)
        break
    time.sleep(1)
"""


def proc_net_address(address, port):
    """How /proc/net/tcp{,6} writes a remote address: the raw bytes as native-endian 32-bit words, in hex."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if family == socket.AF_INET:
        try:
            address = socket.gethostbyname(address)
        except socket.error as exc:
            raise IscsiAttachError("The portal address %s cannot be resolved: %s." % (address, exc))
    raw = socket.inet_pton(family, address)
    words = struct.unpack("=%dI" % (len(raw) // 4), raw)
    return "%s:%04X" % ("".join("%08X" % w for w in words), port)


def watchdog_pids(export_id):
    """Running watchdogs of ``export_id`` (argv: python3 -c SOURCE marker export_id ...)."""
    return procfs.find_pids(lambda argv: argv[3:5] == [WATCHDOG_MARKER, export_id], PROC)


def start_watchdog(cfg, qsd_pid, note_file):
    """Start the link watchdog of ``cfg``'s daemon (detached: it outlives this module); returns its pid."""
    # the interpreter running this module (the host's pinned python3), not whatever python3 PATH finds first
    argv = [sys.executable or _bin("python3"), "-c", WATCHDOG_SOURCE, WATCHDOG_MARKER, cfg["attachment"], str(qsd_pid),
            proc_net_address(cfg["portal_address"], cfg["portal_port"]), str(cfg["timeout"]), note_file]
    # not waited for: the watchdog runs until its daemon ends (spawn returns once the program is executed)
    return _runner.spawn(argv)


@undo_handler(ACTION_WATCHDOG)
def _undo_watchdog(undo, ctx):
    pids = watchdog_pids(undo["export_id"])
    if not pids:
        return "the link watchdog of %s was not running" % undo["export_id"]
    if ctx.check_mode:
        return "would stop the link watchdog %s" % ", ".join(map(str, pids))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
    return "stopped the link watchdog %s" % ", ".join(map(str, pids))


def link_lost(cfg):
    """The watchdog's note when it stopped the daemon of ``cfg`` because the iSCSI link was lost, else None."""
    try:
        with open(_userspace_paths(cfg)[2]) as f:
            return f.read().strip() or None
    except (IOError, OSError):
        return None


# -- loop device ----------------------------------------------------------------------------------

def attach_loop(export_file, read_only=False):
    # no --direct-io: measured on this platform (QEMU 7.2 FUSE export, kernel 6.x), mkfs.ext4 through a
    # direct-I/O loop over the export wrote a filesystem that e2fsck finds corrupt; buffered is sound.
    # --read-only: the kernel refuses every write to the device, whatever the filesystem tries
    rc, out, err = _run([_bin("losetup")] + (["--read-only"] if read_only else []) + ["--find", "--show", export_file],
                        timeout=60)
    if rc != 0 or not out.strip():
        raise IscsiAttachError("losetup could not attach %s (exit %d): %s" % (export_file, rc, err.strip()))
    return out.strip()


@undo_handler(ACTION_LOOP)
def _undo_loop(undo, ctx):
    """Flush and detach every loop device backed by our export file (none if losetup never ran)."""
    loops = loops_backed_by(undo["export_file"])
    if not loops:
        return "no loop device was attached to %s" % undo["export_file"]
    if ctx.check_mode:
        return "would detach %s" % ", ".join(lo["device"] for lo in loops)
    for lo in loops:
        for m in mounts():
            if m["majmin"] == lo["majmin"]:
                raise IscsiAttachError("%s is still mounted on %s; it is not detached." % (lo["device"], m["mountpoint"]))
        _run([_bin("blockdev"), "--flushbufs", lo["device"]], timeout=600)
        rc, out, err = _run([_bin("losetup"), "-d", lo["device"]], timeout=120)
        if rc != 0 and loops_backed_by(undo["export_file"]):
            raise IscsiAttachError("losetup -d %s failed: %s" % (lo["device"], err.strip()))
    # the loop wrote through the page cache into the FUSE file: make QEMU flush to the target
    _fsync_path(undo["export_file"])
    return "detached %s" % ", ".join(lo["device"] for lo in loops)


# -- mount ------------------------------------------------------------------------------------------

def _ours_mounted(undo):
    """The mount at the recorded mountpoint when it is ours (our loop device or our iSCSI disk), else None."""
    m = mount_at(undo["mountpoint"])
    if not m:
        return None, None
    wanted = set()
    if undo.get("export_file"):
        wanted.update(lo["majmin"] for lo in loops_backed_by(undo["export_file"]))
    if undo.get("device"):
        mm = block_majmin(undo["device"])
        if mm:
            wanted.add(mm)
    if undo.get("majmin"):
        wanted.add(undo["majmin"])
    return (m if m["majmin"] in wanted else None), m


def set_read_only(device):
    """Make the kernel refuse every write to a block device (``blockdev --setro``), and check it did."""
    rc, out, err = _run([_bin("blockdev"), "--setro", device], timeout=60)
    if rc == 0:
        rc, out, err = _run([_bin("blockdev"), "--getro", device], timeout=60)
        if rc == 0 and out.strip() != "1":
            rc, err = 1, "it still reports read-write"
    if rc != 0:
        raise IscsiAttachError("%s cannot be made read-only (blockdev exit %d): %s; it is not mounted."
                               % (device, rc, err.strip()), device=device)


def read_only_options(fs):
    """Mount options that write nothing: ``ro`` and no journal replay (ext3/ext4 ``noload``, xfs ``norecovery``).

    A read-only ext4 mount without ``noload`` still replays a dirty journal; a read-write one writes the
    superblock (mount count, times) even if nothing else is written.
    """
    return "ro," + NO_RECOVERY[fs] if fs in NO_RECOVERY else "ro"


def mount_device(device, mountpoint, fs, read_only=False):
    rc, out, err = _run([_bin("mount"), "-t", fs] + (["-o", read_only_options(fs)] if read_only else [])
                        + [device, mountpoint], timeout=600)
    if rc != 0:
        raise IscsiAttachError("mount of %s on %s failed (exit %d): %s" % (device, mountpoint, rc, err.strip()),
                               device=device)


@undo_handler(ACTION_MOUNT)
def _undo_mount(undo, ctx):
    """Flush and unmount the LUN's filesystem (never a lazy unmount: what is written must be on the target)."""
    ours, found = _ours_mounted(undo)
    mp = undo["mountpoint"]
    if ours is None:
        if found is not None:
            return "%s is mounted from something that is not this attachment (%s); left alone" % (mp, found["source"])
        return "%s was not mounted" % mp
    if ctx.check_mode:
        return "would unmount %s" % mp
    _run([_bin("sync"), "-f", mp], timeout=FLUSH_TIMEOUT)
    rc, out, err = _run([_bin("umount"), mp], timeout=FLUSH_TIMEOUT)
    if rc != 0:
        raise IscsiAttachError("%s cannot be unmounted: %s. Something still uses it (see fuser -vm %s); stop it and "
                               "detach again." % (mp, err.strip(), mp), mountpoint=mp)
    return "unmounted %s" % mp


# -- open-iscsi --------------------------------------------------------------------------------------

def _iscsiadm(args, cfg_secrets=(), timeout=120):
    rc, out, err = _run([_bin("iscsiadm")] + args, timeout=timeout)
    return rc, out, _mask(err, cfg_secrets)


ISCSI_ERR_SESS_EXISTS = 15
ISCSI_ERR_NO_OBJS_FOUND = 21
ISCSI_ERR_LOGIN_AUTH_FAILED = 24


def iface_exists(iface):
    rc, out, err = _iscsiadm(["-m", "iface", "-I", iface])
    return rc == 0


@undo_handler(ACTION_IFACE)
def _undo_iface(undo, ctx):
    if not iface_exists(undo["iface"]):
        return "iface %s was already gone" % undo["iface"]
    if ctx.check_mode:
        return "would delete iface %s" % undo["iface"]
    rc, out, err = _iscsiadm(["-m", "iface", "-I", undo["iface"], "-o", "delete"])
    if rc != 0:
        raise IscsiAttachError("iscsiadm could not delete iface %s (exit %d): %s" % (undo["iface"], rc, err))
    return "deleted iface %s" % undo["iface"]


def _node_args(undo):
    return ["-m", "node", "-T", undo["target_iqn"], "-p", undo["portal"], "-I", undo["iface"]]


def node_exists(undo):
    rc, out, err = _iscsiadm(_node_args(undo))
    return rc == 0


@undo_handler(ACTION_NODE)
def _undo_node(undo, ctx):
    if not node_exists(undo):
        return "node record %s %s (iface %s) was already gone" % (undo["target_iqn"], undo["portal"], undo["iface"])
    if ctx.check_mode:
        return "would delete the node record %s %s (iface %s)" % (undo["target_iqn"], undo["portal"], undo["iface"])
    rc, out, err = _iscsiadm(_node_args(undo) + ["-o", "delete"])
    if rc != 0:
        raise IscsiAttachError("iscsiadm could not delete the node record of %s (exit %d): %s"
                               % (undo["target_iqn"], rc, err))
    return "deleted the node record %s %s (iface %s)" % (undo["target_iqn"], undo["portal"], undo["iface"])


def session_exists(undo):
    """Whether a session to the target through our iface exists (iscsiadm -m session lists them)."""
    rc, out, err = _iscsiadm(["-m", "session"])
    if rc != 0:
        return False
    # "tcp: [3] 10.0.0.1:3260,1 iqn.x (non-flash)"
    addr = undo["portal"]
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3] == undo["target_iqn"] and parts[2].split(",")[0] == addr:
            return True
    return False


@undo_handler(ACTION_SESSION)
def _undo_session(undo, ctx):
    if not session_exists(undo):
        return "no session to %s was logged in" % undo["target_iqn"]
    if ctx.check_mode:
        return "would log out of %s" % undo["target_iqn"]
    device = undo.get("device")
    if device and os.path.exists(device):
        _run([_bin("blockdev"), "--flushbufs", device], timeout=600)
    rc, out, err = _iscsiadm(_node_args(undo) + ["--logout"])
    if rc not in (0, ISCSI_ERR_NO_OBJS_FOUND):
        raise IscsiAttachError("iscsiadm could not log out of %s (exit %d): %s" % (undo["target_iqn"], rc, err))
    return "logged out of %s" % undo["target_iqn"]


def parse_sendtargets(out):
    """Lines "10.0.0.1:3260,1 iqn..." -> list of dict(portal, tpgt, target)."""
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or "," not in parts[0]:
            continue
        portal, _sep, tpgt = parts[0].rpartition(",")
        found.append({"portal": portal, "tpgt": tpgt, "target": parts[1]})
    return found


def node_record_file(node_dir, target_iqn, portal, tpgt, iface):
    """The record file open-iscsi keeps for a node: <node_dir>/<iqn>/<addr>,<port>,<tpgt>/<iface>."""
    address, _sep, port = portal.rpartition(":")
    return os.path.join(node_dir, target_iqn, "%s,%s,%s" % (address, port, tpgt), iface)


def write_chap(record_file, cfg):
    """Put CHAP settings into a node record file directly (iscsiadm -o update would put the secret in argv)."""
    try:
        with open(record_file) as f:
            lines = f.read().splitlines()
    except (IOError, OSError) as exc:
        raise IscsiAttachError("The node record %s cannot be read to set CHAP: %s" % (record_file, exc.strerror),
                               record=record_file)
    keep = [ln for ln in lines if not ln.strip().startswith("node.session.auth.")]
    auth = ["node.session.auth.authmethod = CHAP",
            "node.session.auth.username = %s" % cfg["chap_user"],
            "node.session.auth.password = %s" % cfg["chap_password"]]
    if cfg.get("mutual_chap_user"):
        auth += ["node.session.auth.username_in = %s" % cfg["mutual_chap_user"],
                 "node.session.auth.password_in = %s" % cfg["mutual_chap_password"]]
    # "# END RECORD" closes the record: settings go before it
    if keep and keep[-1].strip() == "# END RECORD":
        keep = keep[:-1] + auth + [keep[-1]]
    else:
        keep += auth
    write_atomic(record_file, "\n".join(keep) + "\n", mode=0o600)


def wait_for_lun_device(cfg, portal, timeout=DEVICE_TIMEOUT):
    """The block device of our LUN: udev's by-path link, or the session's SCSI disk in sysfs."""
    by_path = os.path.join(DEV, "disk", "by-path", "ip-%s-iscsi-%s-lun-%d" % (portal, cfg["target_iqn"], cfg["lun"]))
    deadline = time.time() + timeout
    while True:
        if os.path.exists(by_path):
            return by_path, os.path.realpath(by_path)
        dev = _sysfs_lun_device(cfg["target_iqn"], cfg["lun"])
        if dev:
            return dev, dev
        if time.time() >= deadline:
            raise IscsiAttachError("Logged in to %s, but no block device for LUN %d appeared within %.0f s."
                                   % (cfg["target_iqn"], cfg["lun"], timeout))
        time.sleep(0.2)


def _sysfs_lun_device(target_iqn, lun):
    base = os.path.join(SYS, "class", "iscsi_session")
    try:
        sessions = os.listdir(base)
    except OSError:
        return None
    for s in sessions:
        if _read(os.path.join(base, s, "targetname")) != target_iqn:
            continue
        dev_dir = os.path.join(base, s, "device")
        for root, dirs, _files in os.walk(dev_dir):
            name = os.path.basename(root)
            if re.match(r"^\d+:\d+:\d+:%d$" % lun, name) and "block" in dirs:
                disks = os.listdir(os.path.join(root, "block"))
                if disks:
                    return os.path.join(DEV, disks[0])
    return None


# -- the attachment as a whole -----------------------------------------------------------------------

def _records(journal, attachment):
    return [r for r in journal.pending() if r.get("undo", {}).get("attachment") == attachment]


def _rollback(journal, attachment, exc, what):
    """After a failed attach (or loop_mount), whatever failed: take back what this attempt made (the
    attachment's journal records, through ``Journal.replay``), then raise.

    The collection's errors keep their kind; any other exception (an OSError, a bug) becomes an
    IscsiAttachError that names it, ``what`` saying what was being done. Both carry what was undone
    (``rolled_back``) or why taking it back failed too (``rollback_error``). KeyboardInterrupt and
    SystemExit are re-raised as they are, after the rollback.
    """
    error = exc
    if isinstance(exc, Exception) and not isinstance(exc, VmcollectError):
        error = IscsiAttachError("%s failed: %s: %s." % (what, type(exc).__name__, str(exc).rstrip(".")),
                                 error_type=type(exc).__name__)
    try:
        undone = journal.replay(_records(journal, attachment), UndoContext())
    except Exception as rb_exc:  # pylint: disable=broad-except
        if isinstance(error, VmcollectError):
            error.details["rollback_error"] = str(rb_exc)
            error.message += (" Taking back what was attached also failed (%s); run dfir.vmcollect.teardown for the "
                              "case." % rb_exc)
            error.args = (error.message,)
        raise error
    if isinstance(error, VmcollectError):
        error.details["rolled_back"] = [u["result"] for u in undone]
        if error is not exc:
            error.message += " What this attempt had made was taken back; fix the cause and run it again."
            error.args = (error.message,)
    raise error


def _attaching(cfg):
    return "Attaching LUN %s of %s on %s" % (cfg["lun"], cfg["target_iqn"], cfg["mountpoint"])


def _result_base(cfg):
    res = {"initiator": cfg["initiator"], "mountpoint": cfg["mountpoint"], "filesystem": cfg.get("filesystem"),
           "filesystem_label": cfg.get("filesystem_label"), "attachment": cfg["attachment"], "device": None,
           "formatted": False, "size_bytes": None, "free_bytes": None, "lun_size_bytes": None,
           "qsd_pid": None, "export_file": None, "session": None, "read_only": cfg.get("read_only", False), "plan": []}
    return res


def _pending_target(records):
    for r in records:
        if r["action"] in (ACTION_QSD, ACTION_NODE, ACTION_SESSION) and r["undo"].get("target_iqn"):
            return r["undo"]
    return None


def _userspace_paths(cfg):
    """The FUSE export file, the daemon's pidfile, and the note the link watchdog leaves when it fires."""
    return (os.path.join(cfg["run_dir"], "%s.export" % cfg["attachment"]),
            os.path.join(cfg["run_dir"], "%s.pid" % cfg["attachment"]),
            os.path.join(cfg["run_dir"], "%s.link-lost" % cfg["attachment"]))


def _inspect_userspace(cfg):
    """The live state of a userspace attachment: dict(healthy, pid, device, mount)."""
    export_file, pid_file, dummy = _userspace_paths(cfg)
    pid = find_qsd(cfg["attachment"], pid_file)
    loops = loops_backed_by(export_file)
    m = mount_at(cfg["mountpoint"])
    healthy = bool(pid and len(loops) == 1 and m and m["majmin"] == loops[0]["majmin"])
    return {"healthy": healthy, "pid": pid, "device": loops[0]["device"] if loops else None, "mount": m,
            "export_file": export_file}


def _inspect_open_iscsi(cfg, records):
    sess = [r for r in records if r["action"] == ACTION_SESSION]
    mnt = [r for r in records if r["action"] == ACTION_MOUNT]
    if not sess or not mnt:
        return {"healthy": False}
    undo = sess[0]["undo"]
    ours, _found = _ours_mounted(mnt[0]["undo"])
    healthy = session_exists(undo) and ours is not None
    return {"healthy": healthy, "device": mnt[0]["undo"].get("device"), "undo": undo}


def _same_target(cfg, undo):
    return (undo.get("target_iqn") == cfg["target_iqn"] and undo.get("lun") == cfg["lun"]
            and undo.get("portal") == portal_string(cfg["portal_address"], cfg["portal_port"]))


def _check_mountpoint(mp):
    if os.path.lexists(mp):
        if not os.path.isdir(mp) or os.path.islink(mp):
            raise IscsiAttachError("The mountpoint %s exists and is not a folder." % mp, mountpoint=mp)
        if mount_at(mp):
            raise IscsiAttachError("Something is already mounted on %s, and this case did not mount it; choose another "
                                   "mountpoint." % mp, mountpoint=mp)
        if os.listdir(mp):
            raise IscsiAttachError("The mountpoint %s is not empty; mounting over it would hide its files. Choose an "
                                   "empty or new folder." % mp, mountpoint=mp)


def attach(journal, params, check_mode=False):
    """state=present: returns the result dict (changed, mountpoint, device, ...)."""
    cfg = validate(dict(params, state="present"))
    res = _result_base(cfg)
    records = _records(journal, cfg["attachment"])
    if records:
        undo = _pending_target(records)
        if undo and not _same_target(cfg, undo):
            raise IscsiAttachError(
                "The mountpoint %s already holds LUN %s of %s at %s for this case; detach it (state=absent) before "
                "attaching another LUN there." % (cfg["mountpoint"], undo.get("lun"), undo.get("target_iqn"), undo.get("portal")),
                mountpoint=cfg["mountpoint"])
        if undo and bool(undo.get("read_only")) != cfg["read_only"]:
            raise IscsiAttachError(
                "The mountpoint %s holds LUN %s of %s %s for this case; detach it (state=absent) before attaching it "
                "%s." % (cfg["mountpoint"], undo.get("lun"), undo.get("target_iqn"),
                         "read-only" if undo.get("read_only") else "read-write",
                         "read-only" if cfg["read_only"] else "read-write"), mountpoint=cfg["mountpoint"])
        if cfg["initiator"] == "userspace":
            live = _inspect_userspace(cfg)
        else:
            live = _inspect_open_iscsi(cfg, records)
        if live["healthy"]:
            res.update(changed=False, device=live.get("device"), qsd_pid=live.get("pid"),
                       export_file=live.get("export_file"), **_fs_facts(cfg["mountpoint"]))
            if cfg["initiator"] == "open-iscsi":
                res["session"] = _session_facts(live["undo"], live.get("device"))
            found_fs = mount_at(cfg["mountpoint"])
            res["filesystem"] = found_fs["fstype"] if found_fs else res["filesystem"]
            res["lun_size_bytes"] = _device_size(live.get("device"))
            res["plan"] = ["already attached and mounted"]
            return res
        res["plan"].append("take back the half-made attachment left by an earlier run")
        undone = journal.replay(records, UndoContext(check_mode))
        if check_mode:
            res["plan"].extend(u["result"] for u in undone)
    _check_mountpoint(cfg["mountpoint"])
    if cfg["initiator"] == "userspace":
        return _attach_userspace(journal, cfg, res, check_mode)
    return _attach_open_iscsi(journal, cfg, res, check_mode)


def _device_size(device):
    if not device:
        return None
    name = os.path.basename(os.path.realpath(device))
    size = _read(os.path.join(SYS, "block", name, "size"))
    return int(size) * 512 if size and size.isdigit() else None


def _format_and_mount(journal, cfg, res, device, mount_undo):
    found = probe(device)
    fmt = decide_format(found, cfg["filesystem"], cfg["filesystem_label"], cfg["format"], cfg["read_only"])
    if fmt:
        make_filesystem(device, cfg["filesystem"], cfg["filesystem_label"])
    res["formatted"] = fmt
    res["filesystem_grown"] = None if fmt or cfg["read_only"] else grow_filesystem(device, cfg["filesystem"])
    _make_dirs(journal, cfg, cfg["mountpoint"], 0o755)
    rec = journal.record_change(ACTION_MOUNT, dict(mount_undo, attachment=cfg["attachment"], mountpoint=cfg["mountpoint"],
                                                   read_only=cfg["read_only"]),
                                "mount %s%s on %s" % (device, " read-only" if cfg["read_only"] else "", cfg["mountpoint"]),
                                module="iscsi_attach")
    mount_device(device, cfg["mountpoint"], cfg["filesystem"], cfg["read_only"])
    if fmt:
        # QEMU (user libvirt-qemu) writes into subfolders the role creates: the root stays root's, 0755
        os.chown(cfg["mountpoint"], 0, 0)
        os.chmod(cfg["mountpoint"], 0o755)
    journal.mark_applied(rec, device=device, formatted=fmt, found_type=found.get("type"), found_label=found.get("label"))
    res.update(device=device, lun_size_bytes=_device_size(device), **_fs_facts(cfg["mountpoint"]))


def ext_facts(device):
    """The superblock of an ext2/3/4 filesystem (dumpe2fs -h, reads only) as a dict, {} when there is none."""
    rc, out, err = _run([_bin("dumpe2fs"), "-h", device], timeout=120)
    if rc != 0:
        return {}
    return dict((k.strip(), v.strip()) for k, sep, v in (ln.partition(":") for ln in out.splitlines()) if sep)


def ext_size(facts):
    try:
        return int(facts["Block count"]) * int(facts["Block size"])
    except (KeyError, ValueError):
        return None


def grow_filesystem(device, fs):
    """Grow the ext3/ext4 filesystem of an unmounted LUN to the LUN when the LUN is larger (the collector grew the
    volume of a case whose earlier run was killed, to make room for a rerun beside what that run left). Its files are
    not touched, only its free space grows.

    Offline, before the mount: an online resize needs CAP_SYS_RESOURCE, which a host in a container lacks, and the
    offline one is as safe on a filesystem that a read-only check (``e2fsck -f -n``) finds clean first. A filesystem
    that is not clean is not grown (the plan's space check then says the volume is short). Returns dict(from_bytes,
    to_bytes), or None when nothing was grown."""
    if fs not in ("ext3", "ext4"):
        return None
    facts, lun = ext_facts(device), _device_size(device)
    before = ext_size(facts)
    if before is None or lun is None or lun - before < 4 * 1024 * 1024:
        return None
    if facts.get("Filesystem state") != "clean" or "needs_recovery" in facts.get("Filesystem features", ""):
        return None
    rc, out, err = _run([_bin("e2fsck"), "-f", "-n", device], timeout=MKFS_TIMEOUT)
    if rc != 0:
        raise IscsiAttachError("The LUN grew to %d bytes, but a read-only check of its filesystem (e2fsck -f -n) found "
                               "problems (exit %d), so it was not grown; nothing was written to it: %s"
                               % (lun, rc, (out or err).strip()[-2000:]), device=device)
    rc, out, err = _run([_bin("resize2fs"), "-f", device], timeout=MKFS_TIMEOUT)
    if rc != 0:
        raise IscsiAttachError("The LUN grew to %d bytes, but resize2fs could not grow its filesystem (%d bytes) to it "
                               "(exit %d): %s" % (lun, before, rc, (err or out).strip()), device=device)
    return {"from_bytes": before, "to_bytes": ext_size(ext_facts(device))}


def _filesystem_plan(cfg, lun):
    """The last two steps of the plan: the filesystem rule and the mount."""
    if cfg["read_only"]:
        return ["check that %s carries the %s filesystem labelled %s (read_only: it is never formatted)"
                % (lun, cfg["filesystem"], cfg["filesystem_label"]),
                "mount it read-only (%s: no journal replay, nothing written) on %s"
                % (read_only_options(cfg["filesystem"]), cfg["mountpoint"])]
    return ["make an %s filesystem labelled %s if %s is blank (format=%s)"
            % (cfg["filesystem"], cfg["filesystem_label"], lun, cfg["format"]),
            "mount it on %s" % cfg["mountpoint"]]


def _attach_userspace(journal, cfg, res, check_mode):
    export_file, pid_file, note_file = _userspace_paths(cfg)
    res["export_file"] = export_file
    for prog in ("qemu-storage-daemon", "losetup", "blkid", "wipefs", "mount", "umount", "blockdev", "sync") + (
            () if cfg["read_only"] else ("mkfs.%s" % cfg["filesystem"],)):
        _bin(prog)
    portal = portal_string(cfg["portal_address"], cfg["portal_port"])
    res["plan"] += [
        "start qemu-storage-daemon: log in to %s at %s as %s%s, export LUN %d%s as %s"
        % (cfg["target_iqn"], portal, cfg["initiator_iqn"], " with CHAP user %s" % cfg["chap_user"] if cfg.get("chap_user") else "",
           cfg["lun"], " read-only" if cfg["read_only"] else "", export_file),
        "start its link watchdog (stops it after %d s without a connection, so writes fail instead of hanging)"
        % cfg["timeout"] if cfg["timeout"] else "no link watchdog (timeout=0: a lost link hangs every write)",
        "attach a %sloop device to the export" % ("read-only " if cfg["read_only"] else "")] + _filesystem_plan(cfg, "the LUN")
    if check_mode:
        res.update(changed=True, formatted=None)
        return res
    if os.path.lexists(export_file) and not loops_backed_by(export_file) and not mount_at(export_file):
        raise IscsiAttachError("The export file %s exists and the journal does not know it; remove it or choose "
                               "another run_dir." % export_file)
    try:
        _make_dirs(journal, cfg, cfg["run_dir"], 0o700)
        rec = journal.record_change(ACTION_FILE, {"attachment": cfg["attachment"], "path": export_file},
                                    "create the FUSE export file %s" % export_file, module="iscsi_attach")
        os.close(os.open(export_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        journal.mark_applied(rec)
        rec = journal.record_change(
            ACTION_QSD, {"attachment": cfg["attachment"], "export_id": cfg["attachment"], "export_file": export_file,
                         "pid_file": pid_file, "target_iqn": cfg["target_iqn"], "lun": cfg["lun"], "portal": portal,
                         "read_only": cfg["read_only"]},
            "start qemu-storage-daemon for LUN %d of %s at %s, exported as %s"
            % (cfg["lun"], cfg["target_iqn"], portal, export_file), module="iscsi_attach")
        pid = start_qsd(cfg, export_file, pid_file)
        journal.mark_applied(rec, pid=pid)
        res["qsd_pid"] = pid
        if cfg["timeout"]:
            rec = journal.record_change(ACTION_FILE, {"attachment": cfg["attachment"], "path": note_file},
                                        "the link watchdog's note %s (written only if it fires)" % note_file,
                                        module="iscsi_attach")
            journal.mark_applied(rec)
            rec = journal.record_change(
                ACTION_WATCHDOG, {"attachment": cfg["attachment"], "export_id": cfg["attachment"]},
                "start the link watchdog of qemu-storage-daemon %d (stops it after %d s without a connection to %s)"
                % (pid, cfg["timeout"], portal), module="iscsi_attach")
            journal.mark_applied(rec, pid=start_watchdog(cfg, pid, note_file))
        rec = journal.record_change(ACTION_LOOP, {"attachment": cfg["attachment"], "export_file": export_file},
                                    "attach a %sloop device to %s" % ("read-only " if cfg["read_only"] else "", export_file),
                                    module="iscsi_attach")
        device = attach_loop(export_file, cfg["read_only"])
        journal.mark_applied(rec, device=device)
        _format_and_mount(journal, cfg, res, device, {"export_file": export_file})
    except BaseException as exc:  # pylint: disable=broad-except
        _rollback(journal, cfg["attachment"], exc, _attaching(cfg))
    res["changed"] = True
    return res


def _session_facts(undo, device):
    return {"target_iqn": undo["target_iqn"], "portal": undo["portal"], "iface": undo["iface"], "lun": undo.get("lun"),
            "device": device}


def _attach_open_iscsi(journal, cfg, res, check_mode):
    iface = cfg["attachment"]
    portal = portal_string(cfg["portal_address"], cfg["portal_port"])
    for prog in ("iscsiadm", "blkid", "wipefs", "mount", "umount", "blockdev", "sync") + (
            () if cfg["read_only"] else ("mkfs.%s" % cfg["filesystem"],)):
        _bin(prog)
    res["plan"] += [
        "create the iface %s with initiator name %s" % (iface, cfg["initiator_iqn"]),
        "discover %s at %s through it (SendTargets, nothing stored)" % (cfg["target_iqn"], portal),
        "create its node record%s and log in%s"
        % (" with CHAP user %s" % cfg["chap_user"] if cfg.get("chap_user") else "",
           ", then make the LUN's disk read-only" if cfg["read_only"] else "")] + _filesystem_plan(cfg, "LUN %d" % cfg["lun"])
    if check_mode:
        res.update(changed=True, formatted=None)
        return res
    if iface_exists(iface):
        raise IscsiAttachError("An open-iscsi iface named %s exists and this case's journal does not know it; it is not "
                               "ours to change." % iface, iface=iface)
    secrets = _secrets(cfg)
    base = {"attachment": cfg["attachment"], "iface": iface, "target_iqn": cfg["target_iqn"], "portal": portal,
            "lun": cfg["lun"], "read_only": cfg["read_only"]}
    try:
        rec = journal.record_change(ACTION_IFACE, base, "create the open-iscsi iface %s" % iface, module="iscsi_attach")
        rc, out, err = _iscsiadm(["-m", "iface", "-I", iface, "-o", "new"])
        if rc != 0:
            raise IscsiAttachError("iscsiadm could not create the iface %s (exit %d): %s" % (iface, rc, err.strip()))
        rc, out, err = _iscsiadm(["-m", "iface", "-I", iface, "-o", "update", "-n", "iface.initiatorname",
                                  "-v", cfg["initiator_iqn"]])
        if rc != 0:
            raise IscsiAttachError("iscsiadm could not set the initiator name of iface %s (exit %d): %s"
                                   % (iface, rc, err.strip()))
        journal.mark_applied(rec)
        rc, out, err = _iscsiadm(["-m", "discovery", "-t", "sendtargets", "-p", portal, "-I", iface, "-o", "nonpersistent"])
        if rc != 0:
            raise IscsiAttachError("SendTargets discovery at %s failed (iscsiadm exit %d): %s" % (portal, rc, err.strip()))
        offered = [t for t in parse_sendtargets(out) if t["target"] == cfg["target_iqn"]]
        if not offered:
            raise IscsiAttachError("The portal %s does not offer %s to %s (offered: %s)."
                                   % (portal, cfg["target_iqn"], cfg["initiator_iqn"],
                                      ", ".join(t["target"] for t in parse_sendtargets(out)) or "nothing"))
        tpgt = offered[0]["tpgt"]
        if node_exists(base):
            raise IscsiAttachError("A node record for %s at %s through iface %s exists already; it is not ours."
                                   % (cfg["target_iqn"], portal, iface))
        rec = journal.record_change(ACTION_NODE, dict(base, tpgt=tpgt), "create the node record of %s at %s (iface %s)"
                                    % (cfg["target_iqn"], portal, iface), module="iscsi_attach")
        rc, out, err = _iscsiadm(["-m", "node", "-T", cfg["target_iqn"], "-p", "%s,%s" % (portal, tpgt), "-I", iface,
                                  "-o", "new"])
        if rc != 0:
            raise IscsiAttachError("iscsiadm could not create the node record (exit %d): %s" % (rc, err.strip()))
        rc, out, err = _iscsiadm(_node_args(base) + ["-o", "update", "-n", "node.startup", "-v", "manual"])
        if rc != 0:
            raise IscsiAttachError("iscsiadm could not update the node record (exit %d): %s" % (rc, err.strip()))
        if cfg.get("chap_user"):
            write_chap(node_record_file(cfg["node_dir"], cfg["target_iqn"], portal, tpgt, iface), cfg)
        journal.mark_applied(rec)
        rec = journal.record_change(ACTION_SESSION, base, "log in to %s at %s (iface %s)" % (cfg["target_iqn"], portal, iface),
                                    module="iscsi_attach")
        rc, out, err = _iscsiadm(_node_args(base) + ["--login"], secrets, timeout=180)
        if rc == ISCSI_ERR_LOGIN_AUTH_FAILED:
            raise IscsiAttachError("The target %s refused the CHAP credentials of %s." % (cfg["target_iqn"], cfg.get("chap_user")))
        if rc not in (0, ISCSI_ERR_SESS_EXISTS):
            raise IscsiAttachError("open-iscsi could not log in to %s at %s (iscsiadm exit %d): %s"
                                   % (cfg["target_iqn"], portal, rc, (err or out).strip()), iscsiadm_rc=rc)
        link, device = wait_for_lun_device(cfg, portal)
        journal.mark_applied(rec, device=link)
        res["session"] = _session_facts(base, link)
        if cfg["read_only"]:  # before anything reads or mounts it; the flag goes with the disk at logout
            set_read_only(device)
        _format_and_mount(journal, cfg, res, device, {"device": device, "majmin": block_majmin(device)})
    except BaseException as exc:  # pylint: disable=broad-except
        _rollback(journal, cfg["attachment"], exc, _attaching(cfg))
    res["changed"] = True
    return res


def detach(journal, params, check_mode=False):
    """state=absent: undo this attachment's journal records (marks them undone). Returns the result dict."""
    cfg = validate(dict(params, state="absent"))
    records = _records(journal, cfg["attachment"])
    res = {"initiator": cfg.get("initiator"), "mountpoint": cfg["mountpoint"], "attachment": cfg["attachment"],
           "changed": bool(records), "undone": []}
    if not records:
        res["plan"] = ["nothing of this case is attached at %s" % cfg["mountpoint"]]
        return res
    lost = link_lost(cfg)  # read before the undo removes the note
    res["undone"] = journal.replay(records, UndoContext(check_mode))
    res["plan"] = [u["result"] for u in res["undone"]]
    if lost:
        res["link_lost"] = lost
    return res
