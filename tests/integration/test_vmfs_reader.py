# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""loop_mount reads real ESXi-made VMFS 5 and VMFS 6 volumes, read-only, the way the collector reads its LUN.

Nothing on Linux writes VMFS, so the volumes come from ESXi: the test data of the ``dissect.vmfs`` source
distribution on PyPI (``tests/_data/vmfs/vmfs5.bin.gz`` and ``vmfs6.bin.gz``: each one whole VMFS partition - the LVM
device header at 1 MiB, the volume from 17 MiB - 2080 MiB, sparse). They are AGPL-3.0 test data: downloaded at test
time with pip (pinned version and sha256) into a cache outside the repository (``$VMCOLLECT_CACHE_DIR``, default
``~/.cache/dfir-vmcollect``, keyed by version), never committed. Each is wrapped as the collector's LUN holds it: a
sparse disk with a GPT whose partition 1, of the VMFS type GUID, starts at sector 2048 (as ESXi's partedUtil makes it).

Their contents are those ``dissect.vmfs``' own tests (tests/test_vmfs.py) assert. Two of them the Debian readers do
NOT read as ESXi wrote them (checked against dissect.vmfs, block by block): vmfs6-fuse 0.2.1 returns zeros for the one
block of the thin ``normal-flat.vmdk`` (69 GiB, single-indirect pointer blocks) at 42 GiB, and vmfs-fuse 0.2.5 zeros
for the block of ``large-flat.vmdk`` (42 TiB, double-indirect) at 117 GiB. ``KNOWN_MISREADS`` names them: the test
fails when a reader misreads anything else, and also when one of them is read right (a fixed reader: update the
documentation that warns about it).

Without PyPI (no network), root, /dev/fuse or the readers the test skips saying why; with VMCOLLECT_REQUIRE_LAB=1
(``make test``, CI) each of those is a failure instead, as for the lab.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ansible_module, COLLECTIONS

DISSECT_VMFS = "dissect.vmfs==3.13"
SDIST = "dissect_vmfs-3.13.tar.gz"
SDIST_SHA256 = "904a4116b944acfc6a7a9de013ae1db14c760cb76138fd77c6a5b510b98c828d"
MEMBERS = {"vmfs5": "dissect_vmfs-3.13/tests/_data/vmfs/vmfs5.bin.gz",
           "vmfs6": "dissect_vmfs-3.13/tests/_data/vmfs/vmfs6.bin.gz"}
CACHE = os.path.join(os.environ.get("VMCOLLECT_CACHE_DIR")
                     or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dfir-vmcollect"),
                     "dissect.vmfs-3.13")
VMFS_GUID = "AA31E02A-400F-11DB-9590-000C2911D1B8"
SECTOR = 512
MIB = 1 << 20
GIB = 1 << 30
READERS = {"vmfs5": "vmfs-fuse", "vmfs6": "vmfs6-fuse"}
KNOWN_MISREADS = {"vmfs5": {"large-flat.vmdk: 0x42 at 117 GiB"}, "vmfs6": {"normal-flat.vmdk: 0x42 at 42 GiB"}}


def _cannot(reason):
    if os.environ.get("VMCOLLECT_REQUIRE_LAB") == "1":
        pytest.fail("VMCOLLECT_REQUIRE_LAB=1, but the VMFS reader cannot be tested: %s" % reason, pytrace=False)
    pytest.skip(reason)


def _download():
    """The two gzipped volumes in the cache (downloaded and checked once per version); dict name -> path."""
    paths = dict((name, os.path.join(CACHE, name + ".bin.gz")) for name in MEMBERS)
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".download-", dir=CACHE)
    try:
        req = os.path.join(work, "requirements.txt")
        with open(req, "w") as f:
            f.write("%s --hash=sha256:%s\n" % (DISSECT_VMFS, SDIST_SHA256))
        try:
            pip = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                  "--disable-pip-version-check", "-r", req, "-d", work], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            _cannot("pip download %s took more than 600 s (no PyPI?)" % DISSECT_VMFS)
        sdist = os.path.join(work, SDIST)
        if pip.returncode != 0 or not os.path.exists(sdist):
            _cannot("the ESXi-made VMFS test volumes cannot be downloaded (pip download %s, exit %d): %s"
                    % (DISSECT_VMFS, pip.returncode, pip.stdout.strip()[-500:]))
        digest = hashlib.sha256()
        with open(sdist, "rb") as f:
            for block in iter(lambda: f.read(MIB), b""):
                digest.update(block)
        assert digest.hexdigest() == SDIST_SHA256, "%s is not the pinned sdist" % sdist
        with tarfile.open(sdist) as tar:
            for name, member in MEMBERS.items():
                src = tar.extractfile(member)
                with open(paths[name] + ".part", "wb") as out:
                    shutil.copyfileobj(src, out)
                os.rename(paths[name] + ".part", paths[name])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return paths


def _make_disk(gz_path, disk):
    """A sparse disk holding the VMFS partition of ``gz_path`` as GPT partition 1 (VMFS type) at sector 2048."""
    size = 0  # the partition's size: the volume's uncompressed length
    unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip; 2x faster than the gzip module
    zero = bytes(MIB)
    with open(disk, "wb") as out, open(gz_path, "rb") as src:
        out.seek(2048 * SECTOR)
        for chunk in iter(lambda: src.read(1 << 16), b""):
            while chunk:
                data = unzip.decompress(chunk, MIB)
                chunk = unzip.unconsumed_tail
                if data == zero[:len(data)]:
                    out.seek(len(data), os.SEEK_CUR)  # a hole, as dd conv=sparse leaves it
                else:
                    out.write(data)
                size += len(data)
        assert not unzip.flush() and unzip.eof, "%s is truncated" % gz_path
        out.truncate(2048 * SECTOR + size + MIB)  # room for the backup GPT
    table = "label: gpt\nfirst-lba: 34\n1 : start=2048, size=%d, type=%s\n" % (size // SECTOR, VMFS_GUID)
    done = subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", disk], input=table, check=False,
                          universal_newlines=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout
    return size


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """The two ESXi-made volumes, each in a GPT disk as on the collector's LUN: dict name -> (disk, timings)."""
    if os.geteuid() != 0:
        _cannot("loop devices and FUSE mounts need root")
    if not os.path.exists("/dev/fuse"):
        _cannot("/dev/fuse is missing")
    for name, program in READERS.items():
        if shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            _cannot("%s is not installed (scripts/setup.sh installs vmfs6-tools and vmfs-tools)" % program)
    if shutil.which("sfdisk", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        _cannot("sfdisk is not installed (package fdisk)")
    if not os.path.isdir(os.path.join(COLLECTIONS, "ansible_collections", "dfir", "vmcollect")):
        _cannot("the collection is not built under %s (scripts/setup.sh)" % COLLECTIONS)
    started = time.monotonic()
    gz = _download()
    downloaded = time.monotonic() - started
    folder = tmp_path_factory.mktemp("vmfs")
    made = dict((name, str(folder / ("%s-lun.img" % name))) for name in MEMBERS)
    with ThreadPoolExecutor(len(made)) as pool:  # zlib lets go of the GIL: one volume per core
        list(pool.map(lambda name: _make_disk(gz[name], made[name]), made))
    sys.stderr.write("\nVMFS test volumes: download/cache %.1f s, disks built in %.1f s\n"
                     % (downloaded, time.monotonic() - started - downloaded))
    yield made
    for disk in made.values():  # 2 GiB sparse each: pytest keeps its last temporary folders
        os.unlink(disk)


# -- what the host shows --------------------------------------------------------------------------

def _mount_at(mountpoint):
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _sep, right = line.partition(" - ")
            if left.split()[4] == mountpoint:
                found = {"majmin": left.split()[2], "options": left.split()[5], "fstype": right.split()[0]}
    return found


def _loops_of(image):
    found = []
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open("/sys/block/%s/loop/backing_file" % name) as f:
                if f.read().strip() in (image, image + " (deleted)"):
                    found.append(name)
        except (IOError, OSError):
            continue
    return found


def _alive(pid):
    """Whether the process runs (a zombie has ended: it holds nothing, it only waits to be reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (IOError, OSError):
        return False


def _nothing_left(image, mountpoint, pid):
    deadline = time.monotonic() + 10
    while (_loops_of(image) or _alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)  # a loop device detached while still open goes once it is closed
    assert _mount_at(mountpoint) is None
    assert not os.path.exists(mountpoint)
    assert _loops_of(image) == [], "a loop device of %s is left" % image
    assert not _alive(pid), "the FUSE daemon %d still runs" % pid


def _image_state(image):
    st = os.stat(image)
    return st.st_size, st.st_mtime_ns, st.st_blocks


# -- the known contents (dissect.vmfs tests/test_vmfs.py) -----------------------------------------------

BIG = (b"Kusjes van SRT<3" * (1024 * 64)) + b"\n"
BIGGER_SHA256 = hashlib.sha256(b"".join(bytes([i % 256]) * MIB for i in range(128))).hexdigest()


def _read_at(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _content_checks(root, label):
    """Every known fact of the volume as name -> bool (True: read as ESXi wrote it)."""
    checks = {}

    def check(name, fn):
        try:
            checks[name] = bool(fn())
        except (IOError, OSError):
            checks[name] = False

    check("small: 'tiny\\n'", lambda: _read_at(os.path.join(root, "small"), 0, 100) == b"tiny\n")
    check("big: size", lambda: os.path.getsize(os.path.join(root, "big")) == 1024 * 64 * 16 + 1)
    check("bigger: size", lambda: os.path.getsize(os.path.join(root, "bigger")) == 128 * MIB)
    check("directory: file1..file100",
          lambda: sorted(os.listdir(os.path.join(root, "directory"))) == sorted("file%d" % i for i in range(1, 101)))
    check("directory: contents", lambda: all(_read_at(os.path.join(root, "directory", "file%d" % i), 0, 100)
                                             == ("File %d\n" % i).encode() for i in range(1, 101)))
    check("symlink", lambda: os.readlink(os.path.join(root, "symlink")) == "/vmfs/volumes/%s/small" % label)
    check("normal.vmdk: thin descriptor", lambda: b'RW 144703488 VMFS "normal-flat.vmdk"' in _read_at(
        os.path.join(root, "normal.vmdk"), 0, 4096) and b'ddb.thinProvisioned = "1"' in _read_at(
        os.path.join(root, "normal.vmdk"), 0, 4096))
    check("normal-flat.vmdk: size", lambda: os.path.getsize(os.path.join(root, "normal-flat.vmdk")) == 69 * GIB)
    check("normal-flat.vmdk: zeros at 0", lambda: _read_at(os.path.join(root, "normal-flat.vmdk"), 0, 512) == bytes(512))
    check("normal-flat.vmdk: 0x42 at 42 GiB",
          lambda: _read_at(os.path.join(root, "normal-flat.vmdk"), 42 * GIB, 512) == b"\x42" * 512)
    check("large-flat.vmdk: size", lambda: os.path.getsize(os.path.join(root, "large-flat.vmdk")) == 42 * 1024 * GIB)
    check("large-flat.vmdk: 0x42 at 117 GiB",
          lambda: _read_at(os.path.join(root, "large-flat.vmdk"), 117 * GIB, 512) == b"\x42" * 512)
    check("rdm-rdm.vmdk: size", lambda: os.path.getsize(os.path.join(root, "rdm-rdm.vmdk")) == 6969 * GIB)
    return checks


def _write_refused(root):
    try:
        with open(os.path.join(root, "small"), "r+b"):
            return False
    except OSError as exc:
        return exc.errno in (30, 13)  # EROFS (EACCES where permissions are checked first)


# -- the tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vmfs5", "vmfs6"])
def test_an_esxi_made_vmfs_volume_is_read_read_only_then_unmounted(disks, name, tmp_path):
    image, mnt = disks[name], str(tmp_path / "verify" / name)
    common = {"case_id": "case-vmfs", "journal_dir": str(tmp_path / "journal"), "image": image, "mountpoint": mnt}
    before = _image_state(image)
    started = time.monotonic()

    ok, res, out = ansible_module("loop_mount", dict(common, state="mounted"))
    assert ok and res["changed"], out
    version = int(name[-1])
    assert res["filesystem"] == name and res["partition"]["offset"] == 2048 * SECTOR
    assert res["vmfs"]["version"] == version and res["vmfs"]["label"] == name and res["vmfs"]["reader"] == READERS[name]
    assert READERS[name] in res["plan"][1]
    loop = os.path.basename(res["device"])
    with open("/sys/block/%s/ro" % loop) as f:
        assert f.read().strip() == "1", "the loop device is not read-only"
    m = _mount_at(mnt)
    assert m is not None and m["fstype"].startswith("fuseblk") and m["options"].split(",")[0] == "ro", m
    with open("/sys/block/%s/dev" % loop) as f:
        assert m["majmin"] == f.read().strip()
    pid = res["vmfs"]["reader_pid"]
    assert _alive(pid)
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        assert os.path.basename(f.read().split(b"\0")[0].decode()) == READERS[name]
    # the journal holds the mount and the FUSE daemon, so a teardown finds and stops it
    with open(os.path.join(common["journal_dir"], "case-vmfs", os.uname()[1] + ".jsonl")) as f:
        records = [json.loads(line) for line in f]
    running = [r for r in records if r.get("action") == "module.running"]
    assert [r["undo"]["pid"] for r in running] == [pid] and running[0]["undo"]["module"] == READERS[name]
    assert [r["undo"]["reader"] for r in records if r.get("action") == "iscsi.mounted"] == [READERS[name]]

    # a second run finds it mounted and changes nothing
    ok, again, out = ansible_module("loop_mount", dict(common, state="mounted"))
    assert ok and not again["changed"] and again["device"] == res["device"], out

    checks = _content_checks(mnt, name)
    misread = set(k for k, v in checks.items() if not v)
    wrong, right = sorted(misread - KNOWN_MISREADS[name]), sorted(KNOWN_MISREADS[name] - misread)
    assert misread == KNOWN_MISREADS[name], "read wrong now: %s; read right now: %s" % (wrong, right)
    assert _write_refused(mnt), "a file of the VMFS volume could be opened for writing"

    # the collector's check: its files hashed through the mount against the digests known at the source
    ok, hashed, out = ansible_module("hash_verify", {"expected": {
        os.path.join(mnt, "big"): hashlib.sha256(BIG).hexdigest(), os.path.join(mnt, "bigger"): BIGGER_SHA256,
        os.path.join(mnt, "small"): hashlib.sha256(b"tiny\n").hexdigest()}})
    assert ok and len(hashed["files"]) == 3, out

    ok, res2, out = ansible_module("loop_mount", dict(common, state="absent"))
    assert ok and res2["changed"], out
    results = dict((u["action"], u["result"]) for u in res2["undone"])
    assert results["iscsi.mounted"] == "unmounted %s" % mnt
    assert results["module.running"] == "%s (pid %d) had ended" % (READERS[name], pid)  # it ended with its mount
    assert results["iscsi.loop_attached"].startswith("detached /dev/loop")
    _nothing_left(image, mnt, pid)
    assert _image_state(image) == before, "the image changed"
    sys.stderr.write("\n%s: mounted, read, hashed and unmounted in %.1f s\n" % (name, time.monotonic() - started))


# vmfs5 outside the CI budget (make test-slow): the daemon and its teardown are the same for both versions
@pytest.mark.parametrize("name", [pytest.param("vmfs5", marks=pytest.mark.slow), "vmfs6"])
def test_teardown_stops_the_fuse_daemon_of_a_mounted_vmfs_volume(disks, name, tmp_path):
    """As after a killed playbook: the volume is still mounted, and the case's teardown finds and stops its reader."""
    image, mnt = disks[name], str(tmp_path / "verify" / name)
    journal_dir = str(tmp_path / "journal")
    common = {"case_id": "case-vmfs-kill", "journal_dir": journal_dir, "image": image, "mountpoint": mnt}

    ok, plan, out = ansible_module("loop_mount", dict(common, state="mounted"), check=True)
    assert ok and plan["changed"] and "VMFS %s" % name[-1] in plan["plan"][1] and READERS[name] in plan["plan"][1], out
    assert _mount_at(mnt) is None and _loops_of(image) == [] and not os.path.exists(journal_dir)

    ok, res, out = ansible_module("loop_mount", dict(common, state="mounted"))
    assert ok, out
    pid = res["vmfs"]["reader_pid"]
    assert _read_at(os.path.join(mnt, "small"), 0, 10) == b"tiny\n"

    ok, torn, out = ansible_module("teardown", {"case_id": "case-vmfs-kill", "journal_dir": journal_dir})
    assert ok and torn["changed"], out
    results = [(u["action"], u["result"]) for u in torn["undone"]]
    # the daemon first (it unmounts as it ends), then the mount (gone with it), the loop device, the folders
    stopped = ("stopped %s (pid %d), still at work after its playbook ended: serves the VMFS %s volume of the "
               "partition 1 of %s read-only on %s" % (READERS[name], pid, name[-1], image, mnt))
    assert results[0] == ("module.running", stopped), results
    assert results[1] == ("iscsi.mounted", "%s was not mounted" % mnt), results
    assert results[2][0] == "iscsi.loop_attached" and results[2][1].startswith("detached"), results
    _nothing_left(image, mnt, pid)
    assert not os.path.exists(os.path.join(journal_dir, "case-vmfs-kill"))
