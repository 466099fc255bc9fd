# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: datastore_fetch's core against curl of the same URL (+ sha256sum of the file), in one run.

    python bench/fetch_bench.py [--env ENVFILE] [--size-mib 1024] [--allocated-pct 25] [--rounds 3] [--dir /var/tmp]

Needs the lab's vSphere simulator: ``--env`` (or ``VMCOLLECT_VCSIM_ENV``) names the env file of a running one
(``lab/vcsim/vcsim.sh start ENVFILE``); without it one is started with lab/vcsim/vcsim.sh under ``LAB_DIR`` and
stopped at the end. The simulator serves a datastore from a local folder: the bench writes one sparse file there
(``--size-mib``, ``--allocated-pct`` of it random data in 1-16 MiB islands at random offsets, fixed seed, the rest
holes) and fetches it over HTTPS (``GET /folder/...?dcPath=&dsName=``, loopback, TLS 1.3 with the simulator's
certificate pinned) with each contender, ``--rounds`` times interleaved, deleting the copy after each run:

* ``curl -o`` of the URL (with the session cookie) to a file, no hash
* ``curl -o`` + ``sha256sum`` of the file: the usual fetch-then-hash, the headline's baseline
* datastore_fetch's core (``fetch_file``): fetch + sha256 in one read, sparse write, fsync, no read-back
* datastore_fetch's core as the module runs it: the same + the read-back from storage (cache dropped)
* the same with ``areas`` (the file's data islands, as QueryChangedDiskAreas would give them): only those fetched

The session is logged in once, before the runs (the module logs in per task: about 0.1 s more on the simulator).
Before every run the copy is deleted and ``sync`` runs, untimed. The source file is read once first, so the
simulator serves it from the page cache: the comparison is of transfer, hashing and writing, not of the disk.
Every digest must agree with the others, and every datastore_fetch copy must have kept its holes. The simulator
runs on the same machine and uses CPU for TLS too. It prints medians and ratios; it asserts nothing.
"""

from __future__ import print_function

import argparse
import hashlib
import json
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

from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as vc  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as f  # noqa: E402

MIB = 1024 * 1024


def make_file(path, size, allocated_pct, seed=42):
    """Sparse file with random data islands covering about ``allocated_pct`` of it; returns the islands."""
    rng = random.Random(seed)
    target = size * allocated_pct // 100
    slots = size // (16 * MIB)  # one island at most per 16 MiB slot, so islands never overlap
    chosen = sorted(rng.sample(range(slots), min(slots, max(1, target // (8 * MIB)))))
    per = target // len(chosen)
    islands = []
    with open(path + ".tmp", "wb") as fh:
        fh.truncate(size)
        for slot in chosen:
            length = max(MIB, min(16 * MIB, int(per * rng.uniform(0.5, 1.5)))) // 4096 * 4096
            offset = slot * 16 * MIB + rng.randrange(0, 16 * MIB - length + 1, 4096)
            fh.seek(offset)
            fh.write(os.urandom(length))
            islands.append((offset, length))
    os.rename(path + ".tmp", path)
    return islands


def sh(*cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout.decode()


def unlink(*paths):
    for p in paths:
        for q in (p, p + ".partial", p + ".partial.json"):
            if os.path.exists(q):
                os.unlink(q)


def start_simulator():
    envfile = os.path.join(tempfile.mkdtemp(prefix="vmcollect-fetch-bench-"), "vcsim-fetch-bench.json")
    ctl = os.path.join(os.environ.get("VMCOLLECT_VCSIM_DIR", os.path.join(ROOT, "lab", "vcsim")), "vcsim.sh")
    subprocess.run(["bash", ctl, "start", envfile], check=True, stdout=subprocess.DEVNULL)
    return envfile, lambda: subprocess.run(["bash", ctl, "stop", envfile], check=False, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=os.environ.get("VMCOLLECT_VCSIM_ENV"), help="env file of a running simulator")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--allocated-pct", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"), help="where the copies go")
    args = ap.parse_args()

    stop = None
    envfile = args.env
    if not envfile:
        envfile, stop = start_simulator()
    with open(envfile) as fh:
        env = json.load(fh)
    ds = env["datastores"][0]
    folder = os.path.join(ds["local_path"], "vmcollect-fetch-bench")
    os.makedirs(folder, exist_ok=True)
    name = "bench [1]-flat.vmdk"
    local = os.path.join(folder, name)
    size = args.size_mib * MIB
    islands = make_file(local, size, args.allocated_pct)
    allocated = os.stat(local).st_blocks * 512
    h = hashlib.sha256()
    with open(local, "rb") as fh:  # warm the page cache; the reference digest
        for chunk in iter(lambda: fh.read(4 * MIB), b""):
            h.update(chunk)
    reference = h.hexdigest()
    src = "[%s] vmcollect-fetch-bench/%s" % (ds["name"], name)
    dest = os.path.join(args.dir, "vmcollect-fetch-bench.copy")
    areas = [{"start": o, "length": n} for o, n in islands]

    client = vc.VsphereClient(env["host"], env["username"], env["password"], port=env["port"],
                              thumbprint=env["thumbprint_sha256"])
    client.connect()
    try:
        session = f.ClientSession(client)
        datacenter, datastores = f.host_names(client)
        url = "https://%s%s" % (session.where, f.folder_url_path(ds["name"], "vmcollect-fetch-bench/" + name, datacenter))
        cookie = client.cookie_header()

        def curl():
            sh("curl", "-sS", "--fail", "--cacert", env["cert_file"], "-H", "Cookie: " + cookie, "-o", dest, url)
            return {}

        def curl_sha256sum():
            curl()
            return {"sha256": sh("sha256sum", dest).split()[0]}

        def fetch(verify, with_areas=False):
            def run():
                r = f.fetch_file(session, src, dest, datacenter, ["sha256"], verify=verify, datastores=datastores,
                                 areas=areas if with_areas else None)
                return r["digests"]
            return run

        contenders = [
            ("curl -o", curl, False),
            ("curl -o + sha256sum", curl_sha256sum, False),
            ("datastore_fetch fetch+sha256, no read-back", fetch(False), True),
            ("datastore_fetch fetch+sha256+read-back", fetch(True), True),
            ("datastore_fetch by areas, +read-back", fetch(True, True), True),
        ]
        times = dict((n, []) for n, dummy, dummy2 in contenders)
        for dummy in range(args.rounds):
            for cname, fn, sparse in contenders:
                unlink(dest)
                os.sync()  # untimed: no contender pays for the writeback the one before it left behind
                t0 = time.perf_counter()
                result = fn()
                times[cname].append(time.perf_counter() - t0)
                if result.get("sha256", reference) != reference:
                    raise SystemExit("%s: sha256 %s differs from the file's %s" % (cname, result["sha256"], reference))
                if sparse and os.stat(dest).st_blocks * 512 > allocated + 16 * MIB:
                    raise SystemExit("%s wrote %d bytes for %d allocated: holes were filled"
                                     % (cname, os.stat(dest).st_blocks * 512, allocated))
        unlink(dest)
    finally:
        client.disconnect()
        shutil.rmtree(folder, ignore_errors=True)
        if stop is not None:
            stop()

    med = dict((n, statistics.median(t)) for n, t in times.items())
    print("source: %s, %d MiB, %d MiB allocated (%.1f%%) in %d islands, served by the lab's vcsim over HTTPS on "
          "loopback; %d rounds, %d CPUs, Python %s, %s" % (
              src, size // MIB, allocated // MIB, 100.0 * allocated / size, len(islands), args.rounds, os.cpu_count(),
              sys.version.split()[0], sh("curl", "--version").splitlines()[0].split(" (")[0]))
    print("copies in %s; page cache warm for the source; the session logged in once before the runs" % args.dir)
    print("%-44s %10s %12s" % ("contender", "median s", "MiB/s"))
    for cname, dummy, dummy2 in contenders:
        print("%-44s %10.3f %12.0f" % (cname, med[cname], size / MIB / med[cname]))
    print("every digest equals sha256 of the file, and no datastore_fetch copy filled its holes: yes")
    module = med["datastore_fetch fetch+sha256+read-back"]
    base = med["curl -o + sha256sum"]
    print("HEADLINE ratio datastore_fetch (fetch+hash+read-back, as the module) / (curl -o + sha256sum): %.2fx"
          % (module / base))
    print("ratio datastore_fetch fetch+sha256, no read-back / (curl -o + sha256sum): %.2fx"
          % (med["datastore_fetch fetch+sha256, no read-back"] / base))
    print("ratio datastore_fetch fetch+sha256, no read-back / curl -o alone: %.2fx"
          % (med["datastore_fetch fetch+sha256, no read-back"] / med["curl -o"]))
    print("ratio datastore_fetch by areas (+read-back) / (curl -o + sha256sum): %.2fx"
          % (med["datastore_fetch by areas, +read-back"] / base))


if __name__ == "__main__":
    main()
