# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: pmemsave's four methods against `virsh dump --memory-only`, in one run.

    /usr/bin/python3 bench/memory_bench.py [--ram-mib 256 1024] [--rounds 3] [--lab-dir /var/tmp/vmcollect-lab]

Needs the lab (lab/up.sh) and root. For each RAM size it boots a throwaway copy of the lab
guest (``vmc-test-mem-bench-<MiB>``, TCG, its own disk copy, never the shared guest), waits for
its init, then runs each contender ``--rounds`` times interleaved:

* baseline: ``virsh dump --memory-only --format elf`` (libvirt's core dump);
* pmemsave, pmemsave_paused, core_dump, background_snapshot through the module's code
  (``_kvm_memory.acquire``: journal, image written, fsynced and hashed with sha256).

Guest pause = SUSPENDED to RESUMED lifecycle events from libvirt's event loop, for the baseline
too. "acquire s" is until the image is written (what virsh dump does), "wall s" adds hashing.
It prints medians and ratios to the baseline; the target is a background_snapshot pause under
50 ms at every RAM size. Above the PCI hole split (3 GiB on pc) every image is placed by QEMU's
memory map (issue 12). Every round runs on the same guest: the first background snapshot pauses
it for a few ms, the later ones longer, because QEMU's write protection of all guest RAM (one
UFFDIO_WRITEPROTECT in the stop window) is cheap on the 2 MiB mappings untouched RAM has and costs
tens of ms once the first snapshot's page-by-page release has split them (docs/architecture.md).
It asserts nothing. Domains, images, journal, QEMU logs are removed at
the end, also after a failure.
"""

from __future__ import print_function

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import connect, find_domain  # noqa: E402

URI = "qemu:///system"
CASE = "bench-memory"
BASELINE = "virsh dump --memory-only"
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{lab}/guest/images/vmlinuz</kernel>
    <initrd>{lab}/guest/images/initrd.gz</initrd>
    <cmdline>console=ttyS0 rdinit=/init panic=-1</cmdline>
  </os>
  <features><acpi/><vmcoreinfo state='on'/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{work}/vda.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{work}/console.log'/><target port='0'/></serial>
    <console type='file'><source path='{work}/console.log'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def virsh(*args):
    return subprocess.run(["virsh", "-c", URI] + list(args), check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT).stdout.decode()


def boot(name, mib, lab, work):
    os.makedirs(work)
    shutil.copy(os.path.join(lab, "guest", "build", "vda.qcow2"), os.path.join(work, "vda.qcow2"))
    xml = os.path.join(work, "domain.xml")
    with open(xml, "w") as f:
        f.write(DOMAIN_XML.format(name=name, mib=mib, lab=lab, work=work))
    virsh("create", xml)
    console = os.path.join(work, "console.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with open(console, "rb") as f:
            text = f.read()
        if b"LAB-INIT-DONE" in text:
            return text.split(b"LAB-MARKER=")[1].split()[0].decode()
        time.sleep(0.2)
    raise SystemExit("%s did not finish booting" % name)


def baseline(name, dest):
    """virsh dump --memory-only, its pause measured from lifecycle events on a connection of our own."""
    with connect(URI) as conn:
        watch = km.PauseWatch(conn, find_domain(conn, name=name))
        try:
            t0 = time.monotonic()
            virsh("dump", name, dest, "--memory-only", "--format", "elf")
            wall = time.monotonic() - t0
            watch.wait_unpaused()
            pauses = watch.pauses()
        finally:
            watch.close()
    return {"pause_ms": sum(pauses), "acquire_seconds": wall, "wall_seconds": wall}


def marker_in(path, marker):
    with open(path, "rb") as f:
        return marker.encode() in f.read()


def methods_for(dummy_mib):
    """Every method, at every size: pmemsave copies each range of QEMU's memory map on its own (issue 12)."""
    return list(km.METHODS)


def run_size(mib, args, results):
    name = "vmc-test-mem-bench-%d" % mib
    work = os.path.join(args.dir, str(mib))
    journal = Journal(CASE, os.path.join(args.dir, "journal"))
    try:
        marker = boot(name, mib, args.lab_dir, work)
        contenders = [BASELINE] + methods_for(mib)
        for dummy in range(args.rounds):
            for contender in contenders:
                dest = os.path.join(work, "ram.img")
                if contender == BASELINE:
                    r = baseline(name, dest)
                else:
                    r = km.acquire(journal, URI, dest, contender, name=name)
                if not marker_in(dest, marker):
                    raise SystemExit("%s at %d MiB: the RAM marker is not in the image" % (contender, mib))
                os.unlink(dest)
                results.setdefault((mib, contender), []).append(r)
                time.sleep(1.0)  # let the guest settle between two acquisitions
    finally:
        journal.teardown()
        subprocess.run(["virsh", "-c", URI, "destroy", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
        log = os.path.join(args.lab_dir, "hosts", "kvm", "var-log-libvirt", "qemu", name + ".log")
        if os.path.exists(log):
            os.unlink(log)


def report(results, args):
    print("pmemsave methods vs `virsh dump --memory-only --format elf`; libvirt %s; QEMU TCG guests; %d rounds, "
          "medians; %d CPUs" % (virsh("--version").strip(), args.rounds, os.cpu_count()))
    print("%-8s %-26s %10s %10s %9s %11s %12s" % ("RAM MiB", "contender", "pause ms", "acquire s", "wall s",
                                                  "pause/base", "acquire/base"))
    for mib in args.ram_mib:
        base = results[(mib, BASELINE)]
        base_pause = statistics.median(r["pause_ms"] for r in base)
        base_acq = statistics.median(r["acquire_seconds"] for r in base)
        for contender in [BASELINE] + methods_for(mib):
            rs = results[(mib, contender)]
            pause = statistics.median(r["pause_ms"] for r in rs)
            acq = statistics.median(r["acquire_seconds"] for r in rs)
            wall = statistics.median(r["wall_seconds"] for r in rs)
            print("%-8d %-26s %10.1f %10.3f %9.3f %10.3fx %11.2fx" % (
                mib, contender, pause, acq, wall, pause / base_pause if base_pause else 0, acq / base_acq))
    for mib in args.ram_mib:
        rs = results[(mib, "background_snapshot")]
        print("background_snapshot %d MiB, each round: pause (events) %s ms, QEMU's own downtime %s ms" % (
            mib, ", ".join("%.1f" % r["pause_ms"] for r in rs),
            ", ".join(str(r["stream"]["qemu_downtime_ms"]) for r in rs)))
    worst = max(max(r["pause_ms"] for r in results[(mib, "background_snapshot")]) for mib in args.ram_mib)
    print("background_snapshot: worst pause %.1f ms over all rounds and sizes (target < 50 ms): %s"
          % (worst, "met" if worst < 50 else "NOT met"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ram-mib", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lab-dir", default=os.environ.get("LAB_DIR", "/var/tmp/vmcollect-lab"))
    ap.add_argument("--dir", help="work folder (default: <lab-dir>/work/memory_bench)")
    args = ap.parse_args()
    args.dir = args.dir or os.path.join(args.lab_dir, "work", "memory_bench")
    km.start_event_loop()
    results = {}
    os.makedirs(args.dir, exist_ok=True)
    os.chmod(args.dir, 0o755)
    try:
        for mib in args.ram_mib:
            run_size(mib, args, results)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    report(results, args)


if __name__ == "__main__":
    main()
