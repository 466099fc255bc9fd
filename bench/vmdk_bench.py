# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: the logical digest of an ESXi disk with a snapshot (flat base + SEsparse delta) by the collection's own
reader, against QEMU flattening the same chain for sha256sum, in one run.

    python bench/vmdk_bench.py [--size-mib 1024] [--base-data 0.5] [--delta-data 0.25] [--rounds 3] [--dir /var/tmp]

Builds, in a temporary folder, a thin flat extent of ``--size-mib`` MiB whose first ``--base-data`` share holds
random bytes (the rest a hole), and an SEsparse delta over it whose 4 KiB grains cover ``--delta-data`` of the disk,
spread over the whole disk (random bytes), with ESXi's descriptors (written by the unit test's writers, from the
format's facts). The page cache is warmed first. Contenders, ``--rounds`` times interleaved:

* ``diskimage sha256`` - ``diskimage.logical_digests`` on the chain (what evidence_image records, and what it streams
  into an E01);
* ``qemu-img convert`` - QEMU's vmdk driver flattens the chain through the top descriptor into a sparse raw file in
  the same folder (qemu-img writes no pipe);
* ``openssl dgst -sha256`` and ``sha256sum`` of the flattened raw file (from the page cache): hashing alone.

It prints each median (min-max) and the ratio of ours to the baseline, QEMU's flattening then the hash (what an
examiner does without this tool), with each hasher. Every digest must be equal. No assertion on
time: a busy machine is not a failed build.
"""

from __future__ import print_function

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "plugins", "module_utils"))

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import diskimage  # noqa: E402
from test_diskimage_vmdk import descriptor, write_sesparse  # noqa: E402  # pylint: disable=wrong-import-position

MIB = 1024 * 1024
GRAIN = 4096


def build(folder, size, base_share, delta_share, seed=7):
    rng = random.Random(seed)
    flat = os.path.join(folder, "vm-flat.vmdk")
    with open(flat, "wb") as f:
        f.truncate(size)
        left = int(size * base_share)
        while left > 0:
            n = min(8 * MIB, left)
            f.write(os.urandom(n))
            left -= n
    descriptor(os.path.join(folder, "vm.vmdk"), "vm-flat.vmdk", size // 512, "vmfs", "VMFS", "0000a001")
    picks = rng.sample(range(size // GRAIN), int(size * delta_share) // GRAIN)
    block = os.urandom(GRAIN * 256)
    grains = dict((g, block[(i % 256) * GRAIN:(i % 256 + 1) * GRAIN]) for i, g in enumerate(picks))
    write_sesparse(os.path.join(folder, "vm-000001-sesparse.vmdk"), size, grains)
    descriptor(os.path.join(folder, "vm-000001.vmdk"), "vm-000001-sesparse.vmdk", size // 512, "seSparse",
               "SESPARSE", "0000b002", "0000a001", "vm.vmdk")
    return [{"path": os.path.join(folder, "vm-000001-sesparse.vmdk"), "format": "vmdk-sparse",
             "descriptor": os.path.join(folder, "vm-000001.vmdk")},
            {"path": flat, "format": "raw", "descriptor": os.path.join(folder, "vm.vmdk")}]


def warm(paths):
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 * MIB):
                pass


def ours(layers):
    return diskimage.logical_digests(layers, ["sha256"])["digests"]["sha256"]


def qemu(top, out):
    """QEMU flattens the chain (qemu-img writes only to files, not to a pipe) into a sparse raw file."""
    if os.path.exists(out):
        os.unlink(out)
    subprocess.run(["qemu-img", "convert", "-O", "raw", top, out], check=True)
    return None


def sha256sum(raw):
    return subprocess.run(["sha256sum", raw], stdout=subprocess.PIPE, check=True,
                          universal_newlines=True).stdout.split()[0]


def openssl(raw):
    out = subprocess.run(["openssl", "dgst", "-sha256", "-r", raw], stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    return out.split()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--base-data", type=float, default=0.5)
    parser.add_argument("--delta-data", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    if not shutil.which("qemu-img"):
        raise SystemExit("qemu-img is missing (apt-get install qemu-utils)")
    folder = tempfile.mkdtemp(prefix="vmdk-bench-", dir=args.dir)
    try:
        size = args.size_mib * MIB
        layers = build(folder, size, args.base_data, args.delta_data)
        top = layers[0]["descriptor"]
        raw = os.path.join(folder, "flat.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", top, raw], check=True)
        warm([layer["path"] for layer in layers] + [raw])
        contenders = [("diskimage sha256", lambda: ours(layers)),
                      ("qemu-img convert", lambda: qemu(top, os.path.join(folder, "qemu.raw"))),
                      ("openssl dgst -sha256 (raw)", lambda: openssl(raw)),
                      ("sha256sum (raw)", lambda: sha256sum(raw))]
        times = dict((name, []) for name, dummy in contenders)
        digests = {}
        for dummy in range(args.rounds):
            for name, fn in contenders:
                t0 = time.monotonic()
                digests.setdefault(name, set()).add(fn())
                times[name].append(time.monotonic() - t0)
        digests.pop("qemu-img convert")
        if len(set().union(*digests.values())) != 1:
            raise SystemExit("the contenders disagree: %r" % digests)
        delta_bytes = os.stat(layers[0]["path"]).st_size
        print("disk %d MiB: base data %d%%, SEsparse delta %d%% of the disk in 4 KiB grains (delta file %.0f MiB); "
              "%d rounds, medians (min-max)"
              % (args.size_mib, args.base_data * 100, args.delta_data * 100, delta_bytes / MIB, args.rounds))
        for name, dummy in contenders:
            med = statistics.median(times[name])
            print("  %-30s %7.3f s (%.3f-%.3f)  %6.0f MiB/s of the disk"
                  % (name, med, min(times[name]), max(times[name]), args.size_mib / med))
        med = dict((name, statistics.median(t)) for name, t in times.items())
        for hasher in ("openssl dgst -sha256 (raw)", "sha256sum (raw)"):
            print("ratio ours / (qemu-img convert, then %s): %.2fx"
                  % (hasher.split(" (", maxsplit=1)[0], med["diskimage sha256"] / (med["qemu-img convert"] + med[hasher])))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
