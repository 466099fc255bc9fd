# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: hash_verify's core against sha256sum/md5sum and a plain hashlib loop, in one run.

    python bench/hash_bench.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp]

Writes one random file (fully allocated; the page cache is warmed first, so every
contender reads from memory and the comparison is of hashing, not of the disk), runs each
contender ``--rounds`` times interleaved, and prints the median wall time, throughput and
the ratios the project targets:

* sha256, hash_verify vs hashlib single pass: speed ratio >= 0.90
* sha256+md5 in one read (hash_verify) vs md5 alone (hashlib): time ratio <= 1.10

It prints ratios; it does not assert them (a busy machine is not a failed build).
"""

from __future__ import print_function

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_path  # noqa: E402

CHUNK = 1024 * 1024


def hashlib_single_pass(path, algorithms):
    """The baseline: one thread, f.read() + update() for every algorithm in turn."""
    hashers = [hashlib.new(a) for a in algorithms]
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            for h in hashers:
                h.update(chunk)
    return dict((h.name, h.hexdigest()) for h in hashers)


def coreutils(tool, path):
    out = subprocess.run([tool, path], check=True, stdout=subprocess.PIPE).stdout.decode()
    return {tool.replace("sum", ""): out.split()[0]}


def make_file(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path + ".tmp", "wb") as f:
        left = size
        while left:
            n = min(left, 16 * CHUNK)
            f.write(os.urandom(n))
            left -= n
    os.rename(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    ap.add_argument("--keep", action="store_true", help="keep the test file for the next run")
    args = ap.parse_args()

    path = os.path.join(args.dir, "vmcollect-hash-bench-%dMiB.bin" % args.size_mib)
    size = args.size_mib * CHUNK
    make_file(path, size)
    hashlib_single_pass(path, ["md5"])  # warm the page cache

    contenders = [
        ("sha256sum", lambda: coreutils("sha256sum", path)),
        ("md5sum", lambda: coreutils("md5sum", path)),
        ("hashlib sha256", lambda: hashlib_single_pass(path, ["sha256"])),
        ("hashlib md5", lambda: hashlib_single_pass(path, ["md5"])),
        ("hashlib sha256+md5 (serial)", lambda: hashlib_single_pass(path, ["sha256", "md5"])),
        ("hash_verify sha256", lambda: hash_path(path, ["sha256"])["digests"]),
        ("hash_verify md5", lambda: hash_path(path, ["md5"])["digests"]),
        ("hash_verify sha256+md5", lambda: hash_path(path, ["sha256", "md5"])["digests"]),
        ("hash_verify sha256+md5+sha1+sha512", lambda: hash_path(path, ["sha256", "md5", "sha1", "sha512"])["digests"]),
    ]
    times = dict((name, []) for name, dummy in contenders)
    digests = {}
    for dummy in range(args.rounds):
        for name, fn in contenders:
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            for alg, value in result.items():
                if digests.setdefault(alg, value) != value:
                    raise SystemExit("%s disagrees on %s: %s != %s" % (name, alg, value, digests[alg]))

    med = dict((name, statistics.median(t)) for name, t in times.items())
    print("file: %s, %d MiB, %d rounds, %d CPUs, Python %s" % (
        path, args.size_mib, args.rounds, os.cpu_count(), sys.version.split()[0]))
    print("%-36s %10s %10s" % ("contender", "median s", "MiB/s"))
    for name, dummy in contenders:
        print("%-36s %10.3f %10.0f" % (name, med[name], args.size_mib / med[name]))
    print("all contenders agree on every digest: yes")
    r1 = med["hashlib sha256"] / med["hash_verify sha256"]
    r2 = med["hash_verify sha256+md5"] / med["hashlib md5"]
    r3 = med["sha256sum"] / med["hash_verify sha256"]
    print("ratio sha256 speed, hash_verify / hashlib single pass: %.2fx (target >= 0.90)" % r1)
    print("ratio sha256+md5 time, hash_verify one read / hashlib md5 alone: %.2fx (target <= 1.10)" % r2)
    print("ratio sha256 speed, hash_verify / sha256sum: %.2fx" % r3)
    if not args.keep:
        os.unlink(path)


if __name__ == "__main__":
    main()
