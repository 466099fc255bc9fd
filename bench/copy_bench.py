# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: evidence_copy's core against cp --sparse=always (with and without sha256sum), in one run.

    python bench/copy_bench.py [--size-gib 8] [--allocated-pct 10] [--rounds 3] [--dir /var/tmp] [--format raw|qcow2]

Writes one sparse raw image (``--size-gib`` virtual, ``--allocated-pct`` of it random data
in 1-16 MiB islands at random offsets, fixed seed), warms the page cache with one read of it,
then runs each contender ``--rounds`` times interleaved, deleting the copy after each run.
With ``--format qcow2`` the same data is first converted to a thin qcow2 (``qemu-img convert``
allocates only the data clusters), the usual form of a thin KVM disk, and that file is copied:

* ``cp --sparse=always`` alone (coreutils; no fsync: its data may still be in the page cache)
* ``cp --sparse=always`` + ``sync`` of the copy (the same durability as evidence_copy)
* ``cp --sparse=always`` + ``sha256sum`` of the copy (the usual copy-then-hash)
* ``hash_verify`` core on the source (hash_path: the cost of hashing the logical size, holes as zeros)
* evidence_copy's core: copy + sha256 in one read, fsync, no read-back
* evidence_copy's core with the read-back (the copy's cached pages are dropped first, so the
  read-back comes from the disk: that part is not a warm-cache number)

Before every run the copy is deleted and ``sync`` runs, untimed: no contender pays for the
dirty pages the one before it left to write back (``cp`` alone leaves the whole copy dirty).
The page cache is not dropped between runs (that would be root-wide); every contender reads
the source from a warm cache and writes into the page cache, so the comparison is of CPU and
write cost, not of the source disk. It prints medians and ratios; it asserts nothing.
"""

from __future__ import print_function

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=int, default=8)
    ap.add_argument("--allocated-pct", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    ap.add_argument("--keep", action="store_true", help="keep the source image for the next run")
    ap.add_argument("--format", choices=["raw", "qcow2"], default="raw",
                    help="qcow2: copy the same data as a thin qcow2 file (converted with qemu-img)")
    args = ap.parse_args()

    raw = os.path.join(args.dir, "vmcollect-copy-bench-%dGiB-%dpct.raw" % (args.size_gib, args.allocated_pct))
    dest = os.path.join(args.dir, "vmcollect-copy-bench.copy")
    make_image(raw, args.size_gib * GIB, args.allocated_pct)
    src = raw
    if args.format == "qcow2":
        src = raw[:-len(".raw")] + ".qcow2"
        if not os.path.exists(src):
            sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src)
    size = os.path.getsize(src)  # the file's length: what cp copies and the digests cover
    allocated = os.stat(src).st_blocks * 512
    hash_path(src, ["md5"])  # warm the page cache with the data extents

    def cp():
        sh("cp", "--sparse=always", src, dest)
        return {}

    def cp_sync():
        sh("cp", "--sparse=always", src, dest)
        sh("sync", dest)  # coreutils sync FILE: fsync of the copy
        return {}

    def cp_sha256sum():
        sh("cp", "--sparse=always", src, dest)
        return {"sha256": sh("sha256sum", dest).split()[0]}

    def hash_only():
        return hash_path(src, ["sha256"])["digests"]

    def ec(verify):
        def run():
            r = copy_evidence(src, dest, ["sha256"], verify=verify)
            return r["digests"]
        return run

    contenders = [
        ("cp --sparse=always", cp),
        ("cp --sparse=always + sync", cp_sync),
        ("cp --sparse=always + sha256sum", cp_sha256sum),
        ("hash_verify sha256 of the source", hash_only),
        ("evidence_copy copy+sha256, no read-back", ec(False)),
        ("evidence_copy copy+sha256+read-back", ec(True)),
    ]
    times = dict((name, []) for name, dummy in contenders)
    digests = {}
    for dummy in range(args.rounds):
        for name, fn in contenders:
            unlink(dest)
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
    print("source: %s (%s of %d GiB virtual), file %d MiB, %d MiB allocated (%.1f%%), %d rounds, %d CPUs, Python %s, %s" % (
        src, args.format, args.size_gib, size // MIB, allocated // MIB, 100.0 * allocated / size, args.rounds, os.cpu_count(),
        sys.version.split()[0], sh("cp", "--version").splitlines()[0]))
    print("page cache warm for the source; not dropped between runs")
    print("%-42s %10s %12s %12s" % ("contender", "median s", "virt MiB/s", "data MiB/s"))
    for name, dummy in contenders:
        print("%-42s %10.3f %12.0f %12.0f" % (name, med[name], size / MIB / med[name], allocated / MIB / med[name]))
    print("all contenders that hash agree on sha256, and no copy filled its holes: yes")
    ec_no_verify = med["evidence_copy copy+sha256, no read-back"]
    print("ratio evidence_copy(copy+hash, no read-back) / cp alone: %.2fx (target <= 1.10)" % (ec_no_verify / med["cp --sparse=always"]))
    print("ratio evidence_copy(copy+hash, no read-back) / cp + sync: %.2fx" % (ec_no_verify / med["cp --sparse=always + sync"]))
    print("ratio evidence_copy(copy+hash, no read-back) / hash_verify of the source: %.2fx" % (
        ec_no_verify / med["hash_verify sha256 of the source"]))
    print("ratio evidence_copy(copy+hash, no read-back) / cp + sha256sum: %.2fx" % (ec_no_verify / med["cp --sparse=always + sha256sum"]))
    if not args.keep:
        unlink(raw, src)


if __name__ == "__main__":
    main()
