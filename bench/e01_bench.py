# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: our E01 writer from a qcow2 chain against ewfacquire alone on a raw image of the same bytes, in one run.

    python bench/e01_bench.py [--size-mib 512] [--rounds 3] [--compression fast] [--dir /var/tmp]

Builds one source in a temporary folder: a raw image of ``--size-mib`` MiB (a quarter random bytes, a quarter
text that compresses, half zeros), and the same bytes as a qcow2 image (zeros unallocated). The page cache is warmed
first, so every contender reads from memory. Contenders, run ``--rounds`` times interleaved:

* ``evidence_image e01`` - ``ewf.acquire_e01`` on the qcow2: our qcow2 reader streams the guest's bytes into
  ewfacquirestream, hashing sha256 and md5 in the same pass (ewf computes md5 and sha1 itself);
* ``ewfacquire -u`` - ewfacquire alone on the raw image (md5 and sha1), unattended: the baseline;
* ``cat raw | ewfacquirestream`` - the streaming tool alone, fed by cat: what the pipe itself costs;
* ``logical_digests`` - our read and hashing of the qcow2 alone (sha256+md5), no E01.

All E01s use EnCase 6, deflate at ``--compression``, 64 sectors per chunk, sha1 as the additional digest. It prints
the median wall time and throughput per contender and the ratio of ours to ewfacquire's (no assertion: a busy
machine is not a failed build). Every E01 must store the same MD5, the one our stream computed.
"""

from __future__ import print_function

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import diskimage, ewf  # noqa: E402

MIB = 1024 * 1024
EWF_OPTIONS = ["-f", "encase6", "-b", "64", "-d", "sha1", "-C", "bench", "-E", "1", "-e", "bench", "-D", "bench",
               "-N", "bench"]


def make_source(folder, size_mib):
    """raw and qcow2 images of the same bytes: per 4 MiB, 1 MiB random, 1 MiB text, 2 MiB zeros."""
    raw = os.path.join(folder, "disk.raw")
    text = (b"The quick brown fox jumps over the lazy dog; forensic text compresses. " * 16000)[:MIB]
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
        for block in range(0, size_mib, 4):
            f.seek(block * MIB)
            f.write(os.urandom(MIB))
            f.write(text)
    qcow2 = os.path.join(folder, "disk.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    return raw, qcow2


def warm(path):
    with open(path, "rb") as f:
        while f.read(16 * MIB):
            pass


def stored_md5(stem):
    info = ewf.stored_info(stem + ".E01")
    return info and info["digests"].get("md5")


def clear(folder, name):
    for entry in os.listdir(folder):
        if entry.startswith(name + ".E") or entry.startswith("." + name + "."):
            os.unlink(os.path.join(folder, entry))


def ours(qcow2, out, compression):
    stem = os.path.join(out, "ours")
    clear(out, "ours")
    result = ewf.acquire_e01([{"path": qcow2, "format": "qcow2"}], stem, {"case_number": "bench"},
                             compression=compression)
    return result["media_digests"]["md5"]


def ewfacquire(raw, out, compression):
    stem = os.path.join(out, "acquire")
    clear(out, "acquire")
    subprocess.run(["ewfacquire", "-u", "-q", "-c", "deflate:%s" % compression, "-t", stem] + EWF_OPTIONS + [raw],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return stored_md5(stem)


def stream_cat(raw, out, compression):
    stem = os.path.join(out, "stream")
    clear(out, "stream")
    with open(raw, "rb") as src:
        subprocess.run(["ewfacquirestream", "-q", "-c", "deflate:%s" % compression, "-t", stem] + EWF_OPTIONS,
                       stdin=src, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return stored_md5(stem)


def digests_only(qcow2):
    return diskimage.logical_digests([{"path": qcow2, "format": "qcow2"}], ["sha256", "md5"])["digests"]["md5"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compression", default="fast", choices=ewf.COMPRESSIONS)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    args = ap.parse_args()
    for tool in ("qemu-img", "ewfacquire", "ewfacquirestream", "ewfinfo"):
        if not shutil.which(tool):
            raise SystemExit("%s is not installed (Debian packages qemu-utils, ewf-tools)" % tool)

    work = tempfile.mkdtemp(prefix="vmcollect-e01-bench-", dir=args.dir)
    try:
        raw, qcow2 = make_source(work, args.size_mib)
        out = os.path.join(work, "out")
        os.mkdir(out)
        warm(raw)
        warm(qcow2)
        contenders = [
            ("evidence_image e01 (qcow2)", lambda: ours(qcow2, out, args.compression)),
            ("ewfacquire -u (raw)", lambda: ewfacquire(raw, out, args.compression)),
            ("cat raw | ewfacquirestream", lambda: stream_cat(raw, out, args.compression)),
            ("logical_digests sha256+md5 (qcow2)", lambda: digests_only(qcow2)),
        ]
        times = dict((name, []) for name, dummy in contenders)
        md5 = None
        for dummy in range(args.rounds):
            for name, fn in contenders:
                t0 = time.perf_counter()
                got = fn()
                times[name].append(time.perf_counter() - t0)
                if md5 is None:
                    md5 = got
                if got != md5:
                    raise SystemExit("%s gives MD5 %s, not %s" % (name, got, md5))
        sizes = dict((n, sum(os.path.getsize(os.path.join(out, e)) for e in os.listdir(out) if e.startswith(n + ".")))
                     for n in ("ours", "acquire", "stream"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = dict((name, statistics.median(t)) for name, t in times.items())
    print("source: %d MiB (1/4 random, 1/4 text, 1/2 zeros), qcow2 and raw; %d rounds, %d CPUs, Python %s, %s"
          % (args.size_mib, args.rounds, os.cpu_count(), sys.version.split()[0], ewf.tool_version()))
    print("E01: EnCase 6, deflate:%s, 64 sectors per chunk, md5+sha1 by ewf; E01 bytes: ours %d, ewfacquire %d, "
          "stream %d" % (args.compression, sizes["ours"], sizes["acquire"], sizes["stream"]))
    print("%-36s %10s %10s" % ("contender", "median s", "MiB/s"))
    for name, dummy in contenders:
        print("%-36s %10.3f %10.0f" % (name, med[name], args.size_mib / med[name]))
    print("every E01 stores the MD5 our stream computed: yes (%s)" % md5)
    ratio = med["evidence_image e01 (qcow2)"] / med["ewfacquire -u (raw)"]
    print("ratio time, evidence_image e01 from qcow2 / ewfacquire alone on raw: %.2fx" % ratio)
    print("ratio time, evidence_image e01 / cat | ewfacquirestream: %.2fx"
          % (med["evidence_image e01 (qcow2)"] / med["cat raw | ewfacquirestream"]))


if __name__ == "__main__":
    main()
