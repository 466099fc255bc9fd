# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""labstore.py - the storage stack of the lab's simulated ESXi host (lab/vcsim/storage*.go runs it).

Not a tool for people: the simulator runs it inside its own network namespace, reads one JSON
document from stdout and copies the stderr lines into its log. Standard library only; run it with
Debian's /usr/bin/python3. See BEHAVIOUR-storage.md for what it stands in for.

  probe   --portal ADDR[:PORT] --initiator IQN [--user NAME] [--timeout S]
          SendTargets discovery at the portal, then a login to every target it offers and the
          disk LUNs of each (iscsi-ls -s), then per disk LUN: standard INQUIRY and the unit serial
          number page (iscsi-inq), READ CAPACITY(16) (iscsi-readcapacity16) and the raw device
          identification page 0x83 (libiscsi through ctypes: iscsi-inq prints binary designators
          as C strings, so an NAA identifier cannot be read from it). All with libiscsi, as the
          initiator IQN given. The CHAP secret is LIBISCSI_CHAP_PASSWORD in this program's
          environment, which libiscsi reads itself: never argv.
  create  --state-dir D --id ID --portal ADDR:PORT --target IQN --lun N --initiator IQN
          [--user NAME --secret-file F] --start-sector S --end-sector E --sector-size B
          --label L --mountpoint M
          qemu-storage-daemon (driver=iscsi, CHAP secret read from F, FUSE export D/ID.export),
          losetup, a GPT with one partition of the VMFS type from S to E (sfdisk), a loop device
          on that partition, mkfs.ext4 on it (the lab's stand-in for VMFS), mount on M. Rolled
          back on failure. D/ID.json records it all first, so destroy and sweep find it again.
  destroy --state-dir D --id ID [--force] [--delete-partition]
          umount, detach the loop devices on the export, stop qemu-storage-daemon, remove the
          files (idempotent). --force: a busy mount is detached lazily instead of failing.
          --delete-partition: before the daemon stops, delete the VMFS partition from the LUN's
          GPT (what RemoveDatastore does to a VMFS volume on ESXi; the data blocks stay).
  partition --state-dir D --id ID --portal ADDR:PORT --target IQN --lun N --initiator IQN
          [--user NAME --secret-file F] [--part NUMBER:START:END:TYPE-GUID ...]
          write a new GPT on the LUN (UpdateDiskPartitions, what partedUtil setptbl does on ESXi):
          qemu-storage-daemon (writable FUSE export D/ID.export), sfdisk with exactly the partitions given
          (none: an empty GPT), then the daemon is stopped and its files removed (destroy). Nothing is
          formatted or mounted.
  sweep   --state-dir D
          destroy --force for every record left in D (after the simulator was killed).

Exit status: 0 when the request was carried out (a probe that found nothing, or whose logins
failed, is carried out: its JSON says what happened), 1 when it failed, 2 on bad usage.
"""

import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

VMFS_GUID = "AA31E02A-400F-11DB-9590-000C2911D1B8"
CMD_TIMEOUT = 20          # seconds per libiscsi tool run (a portal that drops packets must not hang a rescan)
QSD_START_TIMEOUT = 60
QSD_STOP_TIMEOUT = 30


def log(msg):
    sys.stderr.write("labstore: %s\n" % msg)
    sys.stderr.flush()


class Failure(Exception):
    pass


def run(argv, timeout=CMD_TIMEOUT, env=None, check=False, input_text=None):
    """(rc, stdout, stderr); rc 124 on a timeout."""
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                           timeout=timeout, env=env, input=input_text, check=False)
    except subprocess.TimeoutExpired:
        if check:
            raise Failure("%s did not finish within %d s" % (argv[0], timeout))
        return 124, "", "timed out after %d s" % timeout
    except OSError as exc:
        if check:
            raise Failure("%s: %s" % (argv[0], exc))
        return 127, "", str(exc)
    if check and p.returncode != 0:
        raise Failure("%s failed (exit %d): %s" % (" ".join(argv[:2]), p.returncode, (p.stderr or p.stdout).strip()))
    return p.returncode, p.stdout, p.stderr


# -- probe ----------------------------------------------------------------------------------------

def split_portal(text, default_port=3260):
    text = text.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$", text) or re.match(r"^([^:\[\]]+)(?::(\d+))?$", text)
    if not m:
        raise Failure("%r is not an address[:port]" % text)
    return m.group(1), int(m.group(2) or default_port)


def join_portal(addr, port):
    return "[%s]:%d" % (addr, port) if ":" in addr else "%s:%d" % (addr, port)


def iscsi_url(portal, user, target=None, lun=None):
    # the password is never in the URL: libiscsi takes it from LIBISCSI_CHAP_PASSWORD
    url = "iscsi://%s%s" % ("%s@" % user if user else "", portal)
    if target is not None:
        url += "/%s/%d" % (target, lun)
    return url


def parse_ls(out):
    """iscsi-ls -s output -> [{iqn, portal, tpgt, luns: [{lun, type}]}]."""
    targets, cur = [], None
    for line in out.splitlines():
        m = re.match(r"^Target:(\S+) Portal:(\S+?)(?:,(\d+))?$", line.strip())
        if m:
            cur = {"iqn": m.group(1), "portal": m.group(2), "tpgt": int(m.group(3) or 1), "luns": []}
            targets.append(cur)
            continue
        m = re.match(r"^Lun:(\d+)\s+Type:(\S+)", line.strip())
        if m and cur is not None:
            cur["luns"].append({"lun": int(m.group(1)), "type": m.group(2)})
    return targets


def parse_fields(out):
    fields = {}
    for line in out.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = val
    return fields


class Libiscsi(object):
    """The libiscsi calls iscsi-ls and iscsi-inq cannot stand in for (Debian 12's libiscsi7, 1.19): a login to
    ONE target and its REPORT LUNS (iscsi-ls -s exits at the first target whose login fails, so the targets
    after it would never be listed), and raw INQUIRY data (iscsi-inq prints binary designators as C strings)."""

    # struct scsi_task (x86_64, libiscsi 1.19): int status @0, int expxferlen @12, enum residual_status @32,
    # size_t residual @40, struct scsi_data datain {int size @64; unsigned char *data @72}. Checked at run
    # time against expxferlen - residual, so another layout is detected instead of read as garbage.
    STATUS, EXPXFERLEN, RESIDUAL_STATUS, RESIDUAL, DATAIN_SIZE, DATAIN_DATA = 0, 12, 32, 40, 64, 72

    def __init__(self):
        lib = ctypes.CDLL(ctypes.util.find_library("iscsi") or "libiscsi.so.7")
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        sigs = {
            "iscsi_create_context": (vp, [cp]),
            "iscsi_destroy_context": (ci, [vp]),
            "iscsi_set_targetname": (ci, [vp, cp]),
            "iscsi_set_session_type": (ci, [vp, ci]),
            "iscsi_set_header_digest": (ci, [vp, ci]),
            "iscsi_set_initiator_username_pwd": (ci, [vp, cp, cp]),
            "iscsi_set_timeout": (ci, [vp, ci]),
            "iscsi_full_connect_sync": (ci, [vp, cp, ci]),
            "iscsi_get_error": (cp, [vp]),
            "iscsi_reportluns_sync": (vp, [vp, ci, ci]),
            "iscsi_inquiry_sync": (vp, [vp, ci, ci, ci, ci]),
            "iscsi_logout_sync": (ci, [vp]),
            "scsi_free_scsi_task": (None, [vp]),
        }
        for fname, (res, argt) in sigs.items():
            fn = getattr(lib, fname)
            fn.restype, fn.argtypes = res, argt
        self.lib = lib
        self.ctx = None

    def error(self):
        return (self.lib.iscsi_get_error(self.ctx) or b"").decode("utf-8", "replace")

    def login(self, initiator, portal, target, user, password):
        lib = self.lib
        self.ctx = lib.iscsi_create_context(initiator.encode())
        if not self.ctx:
            raise Failure("iscsi_create_context failed")
        lib.iscsi_set_targetname(self.ctx, target.encode())
        lib.iscsi_set_session_type(self.ctx, 2)       # ISCSI_SESSION_NORMAL
        lib.iscsi_set_header_digest(self.ctx, 1)      # ISCSI_HEADER_DIGEST_NONE_CRC32C, as iscsi-ls
        lib.iscsi_set_timeout(self.ctx, CMD_TIMEOUT)
        if user:
            lib.iscsi_set_initiator_username_pwd(self.ctx, user.encode(), (password or "").encode())
        if lib.iscsi_full_connect_sync(self.ctx, portal.encode(), -1) != 0:
            msg = self.error()
            self.close(logout=False)
            raise Failure(msg or "login failed")

    def close(self, logout=True):
        if self.ctx:
            if logout:
                self.lib.iscsi_logout_sync(self.ctx)
            self.lib.iscsi_destroy_context(self.ctx)
            self.ctx = None

    def _task(self, task, what):
        if not task:
            raise Failure("%s failed: %s" % (what, self.error()))

        def at(off, ctype):
            return ctype.from_address(task + off).value

        try:
            if at(self.STATUS, ctypes.c_int) != 0:
                raise Failure("%s: SCSI status %d" % (what, at(self.STATUS, ctypes.c_int)))
            size, data = at(self.DATAIN_SIZE, ctypes.c_int), at(self.DATAIN_DATA, ctypes.c_void_p)
            want = at(self.EXPXFERLEN, ctypes.c_int)
            if at(self.RESIDUAL_STATUS, ctypes.c_int) == 1:  # SCSI_RESIDUAL_UNDERFLOW
                want -= at(self.RESIDUAL, ctypes.c_size_t)
            if size != want or size < 0 or size > 65536 or (size and not data):
                raise Failure("libiscsi's struct scsi_task is not laid out as expected (datain size %d, want %d)"
                              % (size, want))
            return ctypes.string_at(data, size) if size else b""
        finally:
            self.lib.scsi_free_scsi_task(task)

    def report_luns(self):
        raw = self._task(self.lib.iscsi_reportluns_sync(self.ctx, 0, 4096), "REPORT LUNS")
        luns = []
        for off in range(8, 8 + min(len(raw) - 8, int.from_bytes(raw[:4], "big")), 8):
            method = raw[off] >> 6
            if method == 0:
                luns.append(raw[off + 1])
            elif method == 1:
                luns.append(((raw[off] & 0x3F) << 8) | raw[off + 1])
        return luns

    def inquiry(self, lun, page=None):
        return self._task(self.lib.iscsi_inquiry_sync(self.ctx, lun, 0 if page is None else 1, page or 0, 255),
                          "INQUIRY" + ("" if page is None else " page 0x%02x" % page))


def parse_designators(page):
    """VPD page 0x83 -> [{type, code_set, association, hex, text}]."""
    found, off = [], 4
    end = 4 + ((page[2] << 8) | page[3]) if len(page) >= 4 else 0
    while off + 4 <= min(end, len(page)):
        code_set, assoc, dtype, length = page[off] & 0x0F, (page[off + 1] >> 4) & 0x3, page[off + 1] & 0x0F, page[off + 3]
        value = page[off + 4:off + 4 + length]
        names = {0: "vendor", 1: "t10", 2: "eui64", 3: "naa", 4: "relative_port", 5: "port_group", 6: "lu_group",
                 7: "md5", 8: "scsi_name"}
        item = {"type": names.get(dtype, str(dtype)), "code_set": code_set, "association": assoc, "hex": value.hex()}
        if code_set in (2, 3):
            item["text"] = value.rstrip(b"\0").decode("ascii", "replace")
        found.append(item)
        off += 4 + length
    return found


def probe_lun(args, session, target, portal, lun):
    """Everything the ESXi host learns about one disk LUN; None if the LUN is not a disk."""
    std = session.inquiry(lun)
    if not std or std[0] & 0x1F != 0 or std[0] >> 5 != 0:   # peripheral: connected direct-access block device
        return None
    info = {"lun": lun, "standard_inquiry": std.hex()}
    try:
        info["designators"] = parse_designators(session.inquiry(lun, 0x83))
    except Failure as exc:
        log("%s LUN %d at %s: no device identification page (%s)" % (target, lun, portal, exc))
        info["designators"] = []
    url = iscsi_url(portal, args.user, target, lun)
    base = ["-i", args.initiator]
    rc, out, err = run(["iscsi-inq"] + base + [url])
    if rc != 0:
        raise Failure("iscsi-inq: %s" % (err or out).strip())
    f = parse_fields(out)
    info["vendor"] = f.get("Vendor", "")
    info["model"] = f.get("Product", "")
    info["revision"] = f.get("Revision", "")
    m = re.match(r"\s*(\d+)", f.get("Version", ""))
    info["ansi_version"] = int(m.group(1)) if m else 0
    rc, out, err = run(["iscsi-inq"] + base + ["-e", "1", "-c", "128", url])
    m = re.search(r"Unit Serial Number:\[(.*)\]", out)
    info["serial"] = m.group(1).strip() if rc == 0 and m else ""
    rc, out, err = run(["iscsi-readcapacity16"] + base + [url])
    if rc != 0:
        raise Failure("iscsi-readcapacity16: %s" % (err or out).strip())
    f = parse_fields(out)
    try:
        info["blocks"] = int(f["RETURNED LOGICAL BLOCK ADDRESS"]) + 1
        info["block_size"] = int(f["LOGICAL BLOCK LENGTH IN BYTES"])
    except (KeyError, ValueError):
        raise Failure("iscsi-readcapacity16 printed no capacity: %s" % out.strip())
    m = re.search(r"LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:(\d+)", out)
    info["lbppbe"] = int(m.group(1)) if m else 0
    m = re.search(r"LBPME:(\d+)", out)
    info["lbpme"] = int(m.group(1)) if m else 0
    return info


def cmd_probe(args):
    password = os.environ.get("LIBISCSI_CHAP_PASSWORD") if args.user else None
    addr, port = split_portal(args.portal)
    portal = join_portal(addr, port)
    who = "%s%s" % (args.initiator, " (CHAP user %s)" % args.user if args.user else "")
    res = {"portal": portal, "initiator": args.initiator, "user": args.user or "", "discovery": "ok", "targets": []}
    env = dict(os.environ)
    if not args.user:
        env.pop("LIBISCSI_CHAP_PASSWORD", None)
    # SendTargets discovery (a discovery session: tgt answers it without CHAP and lists only the targets
    # whose ACL admits this initiator name)
    rc, out, err = run(["iscsi-ls", "-i", args.initiator, iscsi_url(portal, args.user)], env=env, timeout=args.timeout)
    targets = parse_ls(out)
    if rc != 0 and not targets:
        res["discovery"] = "failed"
        res["error"] = " ".join((err + " " + out).split()) or "iscsi-ls exit %d" % rc
        log("rescan %s as %s: SendTargets discovery failed: %s; no LUN from it" % (portal, who, res["error"]))
        print(json.dumps(res))
        return 0
    if not targets:
        log("rescan %s as %s: the portal offers no target to this initiator; no LUN from it" % (portal, who))
    for t in targets:
        t["login"], t["luns"] = "ok", []
        session = Libiscsi()
        try:
            session.login(args.initiator, t["portal"], t["iqn"], args.user, password)
        except Failure as exc:
            t["login"], t["error"] = "failed", str(exc)
            log("rescan %s as %s: target %s at %s offered, login failed: %s; no LUN from it"
                % (portal, who, t["iqn"], t["portal"], exc))
            res["targets"].append(t)
            continue
        try:
            for lun in session.report_luns():
                try:
                    disk = probe_lun(args, session, t["iqn"], t["portal"], lun)
                except Failure as exc:
                    log("rescan %s: %s LUN %d at %s: %s" % (portal, t["iqn"], lun, t["portal"], exc))
                    continue
                if disk:
                    t["luns"].append(disk)
        except Failure as exc:
            t["login"], t["error"] = "failed", str(exc)
            log("rescan %s as %s: target %s at %s: %s" % (portal, who, t["iqn"], t["portal"], exc))
        finally:
            session.close()
        log("rescan %s as %s: target %s at %s: %d disk LUN(s)%s" % (
            portal, who, t["iqn"], t["portal"], len(t["luns"]),
            "".join(" [LUN %d: %d x %d B, serial %r]" % (d["lun"], d["blocks"], d["block_size"], d["serial"])
                    for d in t["luns"])))
        res["targets"].append(t)
    print(json.dumps(res))
    return 0


# -- create / destroy -------------------------------------------------------------------------------

def paths(state_dir, ident):
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$", ident):
        raise Failure("bad id %r" % ident)
    base = os.path.join(state_dir, ident)
    return {"record": base + ".json", "export": base + ".export", "pidfile": base + ".qsd.pid"}


def write_record(path, rec):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_record(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except (IOError, OSError):
        return []


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (IOError, OSError, IndexError):
        return False


def qsd_pids(export):
    """qemu-storage-daemon processes serving this export file (found by argv, never by a bare pid)."""
    marker = ("mountpoint=%s," % export.replace(",", ",,")).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        argv = cmdline(int(name))
        if argv and b"qemu-storage-daemon" in os.path.basename(argv[0]) and any(marker in a + b"," for a in argv):
            if alive(int(name)):
                found.append(int(name))
    return found


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountinfo():
    """[(mountpoint, source, fstype)] of this mount namespace."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _sep, right = line.partition(" - ")
            a, b = left.split(), right.split()
            result.append((_unescape(a[4]), _unescape(b[1]) if len(b) > 1 else "", b[0]))
    return result


def is_mounted(path):
    return any(m[0] == path for m in mountinfo())


def loops_on(backing):
    found = []
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith("loop"):
            continue
        try:
            with open("/sys/block/%s/loop/backing_file" % name) as f:
                b = f.read().strip()
        except (IOError, OSError):
            continue
        if b in (backing, backing + " (deleted)"):
            found.append("/dev/" + name)
    return found


def start_qsd(args, p):
    blockdev = ["driver=iscsi", "node-name=lun0", "transport=tcp", "portal=%s" % args.portal.replace(",", ",,"),
                "target=%s" % args.target.replace(",", ",,"), "lun=%d" % args.lun,
                "initiator-name=%s" % args.initiator.replace(",", ",,"), "timeout=%d" % CMD_TIMEOUT]
    argv = ["qemu-storage-daemon"]
    if args.user:
        argv += ["--object", "secret,id=chap0,file=%s" % args.secret_file.replace(",", ",,")]
        blockdev += ["user=%s" % args.user.replace(",", ",,"), "password-secret=chap0"]
    argv += ["--blockdev", ",".join(blockdev),
             "--export", "type=fuse,id=vcsim-lun,node-name=lun0,mountpoint=%s,writable=on"
             % p["export"].replace(",", ",,"),
             "--pidfile", p["pidfile"], "--daemonize"]
    # --daemonize: the parent exits once the child logged in and set up the export (or failed)
    rc, out, err = run(argv, timeout=QSD_START_TIMEOUT)
    if rc != 0:
        for pid in qsd_pids(p["export"]):
            os.kill(pid, signal.SIGKILL)
        msg = (err or out).strip()
        raise Failure("qemu-storage-daemon could not attach LUN %d of %s at %s: %s"
                      % (args.lun, args.target, args.portal, msg.rsplit(": ", 1)[-1] if msg else "exit %d" % rc))
    pids = qsd_pids(p["export"])
    if not pids:
        raise Failure("qemu-storage-daemon reported success but no daemon serves %s" % p["export"])
    return pids[0]


def cmd_create(args):
    p = paths(args.state_dir, args.id)
    if os.path.exists(p["record"]):
        raise Failure("a datastore with id %s is already recorded in %s" % (args.id, args.state_dir))
    rec = {"id": args.id, "export": p["export"], "pidfile": p["pidfile"], "mountpoint": args.mountpoint,
           "target": args.target, "portal": args.portal, "lun": args.lun, "initiator": args.initiator,
           "start_sector": args.start_sector, "end_sector": args.end_sector, "sector_size": args.sector_size,
           "state": "creating"}
    write_record(p["record"], rec)
    try:
        os.close(os.open(p["export"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        t0 = time.time()
        rec["qsd_pid"] = start_qsd(args, p)
        write_record(p["record"], rec)
        log("%s: qemu-storage-daemon %d logged in to %s LUN %d at %s as %s and exports it as %s (%.1f s)"
            % (args.id, rec["qsd_pid"], args.target, args.lun, args.portal, args.initiator, p["export"],
               time.time() - t0))
        size = os.stat(p["export"]).st_size
        ss = args.sector_size
        if args.start_sector < 34 or args.end_sector <= args.start_sector or (args.end_sector + 1) * ss > size:
            raise Failure("partition sectors %d-%d do not fit the LUN (%d bytes)" % (args.start_sector, args.end_sector, size))
        rc, disk, err = run(["losetup", "--find", "--show", p["export"]], check=True)
        disk = disk.strip()
        try:
            script = "label: gpt\nunit: sectors\nstart=%d, size=%d, type=%s\n" % (
                args.start_sector, args.end_sector - args.start_sector + 1, VMFS_GUID)
            run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--wipe", "always", disk], input_text=script,
                check=True, timeout=60)
            rc, dump, err = run(["sfdisk", "--dump", disk], check=True)
            log("%s: GPT written on %s: %s" % (args.id, disk, " ".join(
                line.split(":", 1)[1].strip() for line in dump.splitlines() if line.startswith(disk))))
        finally:
            run(["losetup", "-d", disk])
        rc, part, err = run(["losetup", "--find", "--show", "--offset", str(args.start_sector * ss), "--sizelimit",
                             str((args.end_sector - args.start_sector + 1) * ss), p["export"]], check=True)
        rec["part_loop"] = part.strip()
        write_record(p["record"], rec)
        run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", "-L", args.label[:16], rec["part_loop"]],
            check=True, timeout=600)
        rc, out, err = run(["blkid", "-p", "-s", "UUID", "-o", "value", rec["part_loop"]])
        rec["ext4_uuid"] = out.strip()
        os.makedirs(args.mountpoint, mode=0o755, exist_ok=True)
        run(["mount", "-t", "ext4", rec["part_loop"], args.mountpoint], check=True, timeout=120)
        rec["state"] = "mounted"
        write_record(p["record"], rec)
        log("%s: partition 1 (sectors %d-%d, VMFS type) formatted ext4 (UUID %s) on %s, mounted on %s"
            % (args.id, args.start_sector, args.end_sector, rec["ext4_uuid"], rec["part_loop"], args.mountpoint))
    except BaseException as exc:
        log("%s: create failed (%s); rolling back" % (args.id, exc))
        try:
            destroy(args.state_dir, args.id, force=True)
        except Failure as exc2:
            log("%s: rollback incomplete: %s" % (args.id, exc2))
        raise
    print(json.dumps(rec))
    return 0


def cmd_partition(args):
    p = paths(args.state_dir, args.id)
    parts = []
    for spec in args.part or []:
        m = re.match(r"^(\d+):(\d+):(\d+):([0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12})$",
                     spec)
        if not m:
            raise Failure("bad --part %r (NUMBER:START:END:TYPE-GUID)" % spec)
        g = m.group(4).replace("-", "").upper()
        parts.append((int(m.group(1)), int(m.group(2)), int(m.group(3)),
                      "%s-%s-%s-%s-%s" % (g[:8], g[8:12], g[12:16], g[16:20], g[20:])))
    try:
        os.close(os.open(p["export"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        pid = start_qsd(args, p)
        size = os.stat(p["export"]).st_size
        for n, start, end, _g in parts:
            if n < 1 or n > 128 or start < 34 or end <= start or (end + 1) * 512 > size - 33 * 512:
                raise Failure("partition %d (sectors %d-%d) does not fit the LUN (%d bytes)" % (n, start, end, size))
        script = "label: gpt\nunit: sectors\n" + "".join(
            "%s%d : start=%d, size=%d, type=%s\n" % (p["export"], n, start, end - start + 1, g)
            for n, start, end, g in sorted(parts))
        run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--wipe", "always", p["export"]], input_text=script,
            check=True, timeout=60)
        rc, dump, err = run(["sfdisk", "--dump", p["export"]], check=True)
        log("%s: qemu-storage-daemon %d: GPT written on %s LUN %d: %s" % (args.id, pid, args.target, args.lun, " ".join(
            line.split(":", 1)[1].strip() for line in dump.splitlines() if line.startswith(p["export"])) or "no partitions"))
    finally:
        destroy(args.state_dir, args.id, force=True)
    print(json.dumps({"id": args.id, "partitions": len(parts)}))
    return 0


def stop_qsd(pid, export):
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + QSD_STOP_TIMEOUT
    while time.time() < deadline:
        if pid not in qsd_pids(export):
            return "stopped qemu-storage-daemon %d" % pid
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return "killed qemu-storage-daemon %d (no exit %d s after SIGTERM)" % (pid, QSD_STOP_TIMEOUT)


def delete_partition(export, number):
    """Delete partition NUMBER from the GPT on the exported LUN (through a loop device, as the rest)."""
    rc, disk, err = run(["losetup", "--find", "--show", export], check=True)
    disk = disk.strip()
    try:
        run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--delete", disk, str(number)], check=True, timeout=60)
        run(["blockdev", "--flushbufs", disk])
    finally:
        run(["losetup", "-d", disk])
    return "deleted partition %d from the GPT (data blocks not wiped)" % number


def destroy(state_dir, ident, force=False, delete_part=False):
    p = paths(state_dir, ident)
    rec = read_record(p["record"]) or {}
    mp = rec.get("mountpoint")
    done = []
    if mp and is_mounted(mp):
        os.sync()
        rc, out, err = run(["umount", mp], timeout=300)
        if rc != 0:
            if not force:
                raise Failure("cannot unmount %s: %s" % (mp, err.strip()))
            run(["umount", "-l", mp])
            done.append("detached the busy mount %s lazily" % mp)
        else:
            done.append("unmounted %s" % mp)
    for dev in loops_on(p["export"]):
        rc, out, err = run(["losetup", "-d", dev])
        done.append("detached %s" % dev if rc == 0 else "could not detach %s: %s" % (dev, err.strip()))
    if delete_part and qsd_pids(p["export"]):
        done.append(delete_partition(p["export"], 1))
    for pid in qsd_pids(p["export"]):
        done.append(stop_qsd(pid, p["export"]))
    if any(m[0] == p["export"] for m in mountinfo()):  # a dead FUSE export (daemon killed)
        rc, out, err = run(["umount", p["export"]])
        if rc != 0:
            run(["umount", "-l", p["export"]])
        done.append("unmounted the dead FUSE export %s" % p["export"])
    for key in ("export", "pidfile"):
        try:
            os.unlink(p[key])
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise Failure("cannot remove %s: %s" % (p[key], exc))
    if mp:
        try:
            os.rmdir(mp)
        except OSError:
            pass
    left = loops_on(p["export"]) + qsd_pids(p["export"])
    if left or (mp and is_mounted(mp)):
        raise Failure("%s: still attached after destroy: %s" % (ident, left or mp))
    if os.path.exists(p["record"]):
        os.unlink(p["record"])
    log("%s: %s" % (ident, "; ".join(done) or "nothing was attached"))
    return done


def cmd_destroy(args):
    done = destroy(args.state_dir, args.id, force=args.force, delete_part=args.delete_partition)
    print(json.dumps({"id": args.id, "done": done}))
    return 0


def cmd_sweep(args):
    result, failed = [], False
    if os.path.isdir(args.state_dir):
        for name in sorted(os.listdir(args.state_dir)):
            if not name.endswith((".json", ".export")):
                continue
            ident = name.rsplit(".", 1)[0]
            if any(r["id"] == ident for r in result):
                continue
            try:
                result.append({"id": ident, "done": destroy(args.state_dir, ident, force=True)})
            except Failure as exc:
                failed = True
                log("sweep %s: %s" % (ident, exc))
                result.append({"id": ident, "error": str(exc)})
    print(json.dumps({"swept": result}))
    return 1 if failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="labstore.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = ap.add_subparsers(dest="cmd")
    pr = sub.add_parser("probe")
    pr.add_argument("--portal", required=True)
    pr.add_argument("--initiator", required=True)
    pr.add_argument("--user")
    pr.add_argument("--timeout", type=int, default=CMD_TIMEOUT)
    cr = sub.add_parser("create")
    for opt in ("--state-dir", "--id", "--portal", "--target", "--initiator", "--label", "--mountpoint"):
        cr.add_argument(opt, required=True)
    for opt in ("--lun", "--start-sector", "--end-sector"):
        cr.add_argument(opt, required=True, type=int)
    cr.add_argument("--sector-size", type=int, default=512)
    cr.add_argument("--user")
    cr.add_argument("--secret-file")
    de = sub.add_parser("destroy")
    de.add_argument("--state-dir", required=True)
    de.add_argument("--id", required=True)
    de.add_argument("--force", action="store_true")
    de.add_argument("--delete-partition", action="store_true")
    pa = sub.add_parser("partition")
    for opt in ("--state-dir", "--id", "--portal", "--target", "--initiator"):
        pa.add_argument(opt, required=True)
    pa.add_argument("--lun", required=True, type=int)
    pa.add_argument("--user")
    pa.add_argument("--secret-file")
    pa.add_argument("--part", action="append")
    sw = sub.add_parser("sweep")
    sw.add_argument("--state-dir", required=True)
    args = ap.parse_args(argv)
    if not args.cmd:
        ap.print_usage(sys.stderr)
        return 2
    if args.cmd in ("create", "partition") and bool(args.user) != bool(args.secret_file):
        ap.error("--user and --secret-file go together")
    if getattr(args, "user", None) and not re.match(r"^[A-Za-z0-9._:-]{1,255}$", args.user):
        log("the CHAP name %r cannot be used here: the lab passes it in a libiscsi URL / QEMU option "
            "(letters, digits, '.', '_', ':' and '-' only)" % args.user)
        return 1
    try:
        return {"probe": cmd_probe, "create": cmd_create, "partition": cmd_partition, "destroy": cmd_destroy,
                "sweep": cmd_sweep}[args.cmd](args)
    except Failure as exc:
        log("%s failed: %s" % (args.cmd, exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
