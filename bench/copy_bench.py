# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: evidence_copy's core against cp --sparse=always (with and without sha256sum), in one run.

    python bench/copy_bench.py [--size-gib 8] [--allocated-pct 10 | --data-mib 1024] [--algorithms sha256,md5]
                               [--rounds 3] [--dir /var/tmp] [--format raw|qcow2] [--no-hash-tools]

    BENCH_COLLECTIONS=<tree>/.build/collections runs another tree's code (an earlier commit's: before and after
    in one session).

Writes one sparse raw image (``--size-gib`` virtual, ``--allocated-pct`` of it random data
in 1-16 MiB islands at random offsets, fixed seed), warms the page cache with one read of it,
then runs each contender ``--rounds`` times interleaved, deleting the copy after each run.
With ``--format qcow2`` the same data is first converted to a thin qcow2 (``qemu-img convert``
allocates only the data clusters), the usual form of a thin KVM disk, and that file is copied:

* ``cp --sparse=always`` alone (coreutils; no fsync: its data may still be in the page cache)
* ``cp --sparse=always`` + ``sync`` of the copy (the same durability as evidence_copy)
* ``cp --sparse=always`` + ``sha256sum`` (and ``md5sum``...) of the copy (the usual copy-then-hash)
* ``hash_verify`` core on the source (hash_path: the cost of hashing the logical size, holes as zeros)
* evidence_copy's core: copy + hash in one read, fsync, no read-back (in a forked child: its peak RSS)
* evidence_copy's core with the read-back (the copy's cached pages are dropped first, so the
  read-back comes from the disk: that part is not a warm-cache number)
* reading the copy once from the disk (a synced copy whose cached pages were dropped, untimed, first): its data
  extents, found with SEEK_DATA/SEEK_HOLE, into one reused buffer. Holes are not on the disk and are not read.

The headline is evidence_copy (no read-back) against max(cp + sync, hashing alone): one pass should cost the slower
of the two. Each median is printed with its (min-max) over the interleaved rounds, with the read-back's cost against
reading the copy once, and evidence_copy's peak RSS.

Before every run the copy is deleted and ``sync`` runs, untimed: no contender pays for the
dirty pages the one before it left to write back (``cp`` alone leaves the whole copy dirty).
The page cache is not dropped between runs (that would be root-wide); every contender reads
the source from a warm cache and writes into the page cache, so the comparison is of CPU and
write cost, not of the source disk. It prints medians and ratios; it asserts nothing.
"""

from __future__ import print_function

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# BENCH_COLLECTIONS: another tree's collections path (an earlier commit's, for a before/after in one session)
sys.path.insert(0, os.environ.get("BENCH_COLLECTIONS") or os.path.join(os.path.dirname(HERE), ".build", "collections"))

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import copy_evidence  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_path  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB


def make_image(path, size, allocated_pct, seed=42):
    """Sparse raw image with random data islands covering about ``allocated_pct`` of it."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    rng = random.Random(seed)
    target = size * allocated_pct // 100
    slots = size // (16 * MIB)  # one island at most per 16 MiB slot, so islands never overlap
    chosen = sorted(rng.sample(range(slots), min(slots, max(1, target // (8 * MIB)))))
    per = target // len(chosen)
    with open(path + ".tmp", "wb") as f:
        f.truncate(size)
        for slot in chosen:
            length = max(MIB, min(16 * MIB, int(per * rng.uniform(0.5, 1.5)))) // 4096 * 4096
            f.seek(slot * 16 * MIB + rng.randrange(0, 16 * MIB - length + 1, 4096))
            f.write(os.urandom(length))
    os.rename(path + ".tmp", path)


def sh(*cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout.decode()


def unlink(*paths):
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def in_child(fn):
    """Run ``fn`` (returning a dict of digests) in a forked child: (digests, peak RSS of the child in bytes)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, exit without cleanup handlers
        os.close(rfd)
        code = 0
        try:
            os.write(wfd, json.dumps(fn()).encode())
        except BaseException:  # pylint: disable=broad-except
            code = 1
        os._exit(code)  # pylint: disable=protected-access
    os.close(wfd)
    chunks = []
    while True:
        data = os.read(rfd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(rfd)
    dummy, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise SystemExit("the child running evidence_copy failed (status %d)" % status)
    return json.loads(b"".join(chunks).decode()), usage.ru_maxrss * 1024


def drop_cache(path):
    """Write back and drop the cached pages of one file (not the machine's whole cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=int, default=8)
    ap.add_argument("--allocated-pct", type=int, default=10)
    ap.add_argument("--data-mib", type=int, default=0,
                    help="the data to place, in MiB (instead of --allocated-pct); the virtual size grows to 4x it")
    ap.add_argument("--algorithms", default="sha256", help="comma-separated, e.g. sha256,md5")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    ap.add_argument("--keep", action="store_true", help="keep the source image for the next run")
    ap.add_argument("--format", choices=["raw", "qcow2"], default="raw",
                    help="qcow2: copy the same data as a thin qcow2 file (converted with qemu-img)")
    ap.add_argument("--no-hash-tools", action="store_true",
                    help="leave out cp + sha256sum (coreutils hashes at ~130 MiB/s: minutes on a large raw image)")
    args = ap.parse_args()
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    size_gib = args.size_gib
    pct = args.allocated_pct
    if args.data_mib:
        size_gib = max(size_gib, -(-args.data_mib * 4 // 1024))
        pct = max(1, round(100.0 * args.data_mib / (size_gib * 1024)))

    raw = os.path.join(args.dir, "vmcollect-copy-bench-%dGiB-%dpct.raw" % (size_gib, pct))
    dest = os.path.join(args.dir, "vmcollect-copy-bench.copy")
    make_image(raw, size_gib * GIB, pct)
    src = raw
    if args.format == "qcow2":
        src = raw[:-len(".raw")] + ".qcow2"
        if not os.path.exists(src):
            sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src)
    size = os.path.getsize(src)  # the file's length: what cp copies and the digests cover
    allocated = os.stat(src).st_blocks * 512
    hash_path(src, ["md5"])  # warm the page cache with the data extents
    tools = {"sha256": "sha256sum", "md5": "md5sum", "sha1": "sha1sum", "sha512": "sha512sum"}
    rss = {}

    def cp():
        sh("cp", "--sparse=always", src, dest)
        return {}

    def cp_sync():
        sh("cp", "--sparse=always", src, dest)
        sh("sync", dest)  # coreutils sync FILE: fsync of the copy
        return {}

    def cp_hashsum():
        sh("cp", "--sparse=always", src, dest)
        return dict((alg, sh(tools[alg], dest).split()[0]) for alg in algorithms)

    def hash_only():
        return hash_path(src, algorithms)["digests"]

    def read_copy_once():
        # untimed set-up is excluded by the caller: see PREPARE. What is on the disk: the data extents
        # (SEEK_DATA/SEEK_HOLE), into one reused buffer; holes are not on the disk and are not read.
        fd = os.open(dest, os.O_RDONLY)
        buf = memoryview(bytearray(8 * MIB))
        try:
            end = os.fstat(fd).st_size
            offset = 0
            while offset < end:
                try:
                    offset = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:  # ENXIO: no data after offset
                    break
                stop = os.lseek(fd, offset, os.SEEK_HOLE)
                while offset < stop:
                    offset += os.preadv(fd, [buf[:min(8 * MIB, stop - offset)]], offset)
        finally:
            os.close(fd)
        return {}

    def ec(verify, name):
        def run():
            digests, peak = in_child(lambda: copy_evidence(src, dest, algorithms, verify=verify)["digests"])
            rss.setdefault(name, []).append(peak)
            return digests
        return run

    label = "+".join(algorithms)
    headline = "evidence_copy copy+%s, no read-back" % label
    with_rb = "evidence_copy copy+%s+read-back" % label
    read_once = "read the copy once from the disk"
    contenders = [
        ("cp --sparse=always", cp),
        ("cp --sparse=always + sync", cp_sync),
    ] + ([] if args.no_hash_tools else [
        ("cp --sparse=always + %s" % "+".join(tools[a] for a in algorithms), cp_hashsum),
    ]) + [
        ("hash_verify %s of the source" % label, hash_only),
        (headline, ec(False, headline)),
        (with_rb, ec(True, with_rb)),
        (read_once, read_copy_once),
    ]
    times = dict((name, []) for name, dummy in contenders)
    digests = {}
    for dummy in range(args.rounds):
        for name, fn in contenders:
            unlink(dest)
            if name == read_once:  # PREPARE, untimed: a synced copy whose pages are not cached
                sh("cp", "--sparse=always", src, dest)
                drop_cache(dest)
            os.sync()  # untimed: no contender pays for the writeback the one before it left behind
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            for alg, value in result.items():
                if digests.setdefault(alg, value) != value:
                    raise SystemExit("%s disagrees on %s: %s != %s" % (name, alg, value, digests[alg]))
            if os.path.exists(dest):
                copied = os.stat(dest).st_blocks * 512
                if copied > allocated + 16 * MIB:
                    raise SystemExit("%s wrote %d bytes for %d allocated: holes were filled" % (name, copied, allocated))
    unlink(dest)

    med = dict((name, statistics.median(t)) for name, t in times.items())
    print("source: %s (%s of %d GiB virtual), file %d MiB, %d MiB allocated (%.1f%%), %s, %d rounds interleaved, %d CPUs, "
          "Python %s, %s" % (src, args.format, size_gib, size // MIB, allocated // MIB, 100.0 * allocated / size, label,
                             args.rounds, os.cpu_count(), sys.version.split()[0], sh("cp", "--version").splitlines()[0]))
    print("page cache warm for the source; not dropped between runs")
    print("%-46s %10s %17s %11s %11s" % ("contender", "median s", "(min-max)", "virt MiB/s", "data MiB/s"))
    for name, dummy in contenders:
        spread = "(%.3f-%.3f)" % (min(times[name]), max(times[name]))
        print("%-46s %10.3f %17s %11.0f %11.0f"
              % (name, med[name], spread, size / MIB / med[name], allocated / MIB / med[name]))
    print("all contenders that hash agree on %s, and no copy filled its holes: yes" % label)
    floor = max(med["cp --sparse=always + sync"], med["hash_verify %s of the source" % label])
    print("HEADLINE ratio evidence_copy(copy+hash, no read-back) / max(cp + sync, hash alone): %.2fx (target <= 1.05)"
          % (med[headline] / floor))
    print("ratio read-back cost (with - without read-back) / reading the copy once from the disk: %.2fx (target <= 1.00)"
          % ((med[with_rb] - med[headline]) / med[read_once]))
    if not args.no_hash_tools:
        print("ratio evidence_copy(copy+hash, no read-back) / cp + hash tools: %.2fx" % (
            med[headline] / med["cp --sparse=always + %s" % "+".join(tools[a] for a in algorithms)]))
    for name in (headline, with_rb):
        print("peak RSS of %s: %.0f MiB (max of %d runs)" % (name, max(rss[name]) / MIB, len(rss[name])))
    if not args.keep:
        unlink(raw, src)


if __name__ == "__main__":
    main()
