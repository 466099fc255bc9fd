# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM RAM of guests of real size: the background snapshot's image is placed by QEMU's own memory map, so its
offsets are guest-physical addresses above the PCI hole split too (issue 12).

Each guest is a throwaway copy of the lab guest (bench/memory_bench.py's, TCG, RAM allocated lazily) booted on the
lab's libvirt. For each: a background snapshot as raw and as ELF, then libvirt's core dump (QEMU's
dump-guest-memory) of the same guest right after. Every page of every PT_LOAD of QEMU's dump is compared with the raw
image at the same guest-physical address: all but the few the running guest wrote in the seconds between must be
equal, above 4 GiB as below (under the old placement by block offset, RAM above the split would sit 1 GiB lower).
Volatility 3 finds the kernel banner in the raw image, in our ELF and in QEMU's dump at one and the same address.
All are marked slow (make test-slow): a 3 GiB q35 guest (its split is at 2 GiB), pc with 4.5 GiB, q35 with 4 GiB,
pc with 8 GiB and a 2-node NUMA guest. In the CI run, the pmemsave target compares the placed image of the lab
guest byte for byte with pmemsave's.
"""

import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, VENV_BIN

sys.path.insert(0, os.path.join(ROOT, "bench"))
import memory_bench as mb  # noqa: E402  the bench's throwaway guest (its domain XML, its boot)

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km  # noqa: E402

GIB = 1 << 30
CHUNK = 1 << 20
PAGE = 4096
NUMA = ("<vcpu>1</vcpu>", "<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0' memory='{a}' unit='MiB'/>"
                          "<cell id='1' cpus='1' memory='{b}' unit='MiB'/></numa></cpu>")


def elf_loads(path):
    """[(p_paddr, p_offset, p_filesz)] of the PT_LOAD headers of an ELF64 file."""
    with open(path, "rb") as f:
        head = f.read(64)
        phoff, = struct.unpack("<Q", head[32:40])
        phnum, = struct.unpack("<H", head[56:58])
        f.seek(phoff)
        table = f.read(56 * phnum)
    out = []
    for i in range(phnum):
        p_type, dummy, p_offset, dummy2, p_paddr, p_filesz, dummy3, dummy4 = struct.unpack(
            "<IIQQQQQQ", table[i * 56:(i + 1) * 56])
        if p_type == 1:
            out.append((p_paddr, p_offset, p_filesz))
    return out


def compare(raw, dump):
    """Pages of QEMU's dump equal / different at the same address of the raw image, below and above 4 GiB."""
    counts = {"equal": 0, "differ": 0, "equal_above_4g": 0, "differ_above_4g": 0}
    with open(raw, "rb") as r, open(dump, "rb") as d:
        for paddr, offset, size in elf_loads(dump):
            for pos in range(0, size, CHUNK):
                n = min(CHUNK, size - pos)
                d.seek(offset + pos)
                a = d.read(n)
                r.seek(paddr + pos)
                b = r.read(n)
                high = paddr + pos >= 4 * GIB
                if a == b:
                    counts["equal"] += n // PAGE
                    counts["equal_above_4g"] += n // PAGE if high else 0
                    continue
                for k in range(0, n, PAGE):
                    same = a[k:k + PAGE] == b[k:k + PAGE]
                    counts["equal" if same else "differ"] += 1
                    if high:
                        counts["equal_above_4g" if same else "differ_above_4g"] += 1
    return counts


def banners_of(*paths):
    """Volatility 3's banners.Banners of each image, run side by side: {raw|elf: (address, banner)}."""
    procs = [subprocess.Popen([os.path.join(VENV_BIN, "vol"), "-q", "-f", p, "banners.Banners"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
             for p in paths]
    found = {}
    for key, proc in zip(("raw", "elf"), procs):
        out = proc.communicate(timeout=600)[0]
        hits = [line.split("\t", 1) for line in out.splitlines() if "Linux version" in line]
        found[key] = (int(hits[0][0], 16), hits[0][1].strip()) if hits else (None, out[-1000:])
    return found


def at_address(dump, address, length):
    """(address, the text at that guest-physical address of an ELF dump) - read through its PT_LOAD headers."""
    if address is None:
        return (None, None)
    for paddr, offset, size in elf_loads(dump):
        if paddr <= address < paddr + size:
            with open(dump, "rb") as f:
                f.seek(offset + address - paddr)
                return (address, f.read(length).decode("utf-8", "replace").strip())
    return (address, None)


def acquire_all(lab, tmp_path, name, mib, machine="pc", numa=None):
    work = os.path.join(lab["work_dir"], "mem-layout-%s" % name)
    shutil.rmtree(work, ignore_errors=True)
    xml = mb.DOMAIN_XML.replace("machine='pc'", "machine='%s'" % machine)
    if numa:
        xml = xml.replace(NUMA[0], NUMA[1].format(a=numa[0], b=numa[1]))
    saved, mb.DOMAIN_XML = mb.DOMAIN_XML, xml
    journal = Journal("mem-layout", str(tmp_path / "journal"))
    km.start_event_loop()
    try:
        mb.boot(name, mib, lab["lab_dir"], work)
        got = {}
        for fmt in ("raw", "elf"):
            got[fmt] = km.acquire(journal, mb.URI, os.path.join(work, "snapshot." + fmt), "background_snapshot",
                                  name=name, fmt=fmt)
        got["dump"] = km.acquire(journal, mb.URI, os.path.join(work, "dump.elf"), "core_dump", name=name)
        files = dict((k, os.path.join(work, f)) for k, f in (("raw", "snapshot.raw"), ("elf", "snapshot.elf"),
                                                             ("dump", "dump.elf")))
        counts = compare(files["raw"], files["dump"])
        banners = banners_of(files["raw"], files["elf"])
        banners["dump"] = at_address(files["dump"], banners["raw"][0], len(banners["raw"][1] or ""))
        return got, counts, banners
    finally:
        mb.DOMAIN_XML = saved
        journal.teardown()
        subprocess.run(["virsh", "-c", mb.URI, "destroy", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
        log = os.path.join(lab["lab_dir"], "hosts", "kvm", "var-log-libvirt", "qemu", name + ".log")
        if os.path.exists(log):
            os.unlink(log)


def check(got, counts, banners, mib, blocks):
    ranges = got["raw"]["layout"]["ranges"]
    assert sorted(got["raw"]["layout"]["blocks"]) == sorted(blocks)
    assert sum(r["size"] for r in ranges) + sum(got["raw"]["layout"]["unplaced_bytes"].values()) == mib << 20
    high = [r for r in ranges if int(r["gpa_start"], 16) >= 4 * GIB]
    assert high, ranges  # some RAM lies above 4 GiB
    assert got["raw"]["size"] == got["raw"]["layout"]["image_size"] == int(ranges[-1]["gpa_end"], 16) + 1
    assert got["elf"]["format"] == "elf" and got["raw"]["format"] == "raw"
    # every page of QEMU's own dump is at the same address in the raw image, but for the few the guest wrote since
    total = counts["equal"] + counts["differ"]
    assert counts["differ"] < total / 1000, counts
    assert counts["equal_above_4g"] > 100 * max(1, counts["differ_above_4g"]), counts
    # one banner address in the raw image, our ELF and QEMU's dump
    assert banners["raw"][0] is not None, banners["raw"][1]
    assert banners["raw"] == banners["elf"] == banners["dump"], banners
    assert got["raw"]["pause_ms"] is not None


@pytest.mark.slow
def test_a_3_gib_q35_guest_is_placed_at_guest_physical_addresses(lab, tmp_path):
    """q35 splits at 2 GiB: a third of this guest's RAM lies above 4 GiB."""
    got, counts, banners = acquire_all(lab, tmp_path, "vmc-test-layout-q35", 3072, "q35")
    check(got, counts, banners, 3072, ["pc.ram"])
    assert [r["gpa_start"] for r in got["raw"]["layout"]["ranges"]][-1] == "0x100000000"


@pytest.mark.slow
@pytest.mark.parametrize("machine,mib,numa,blocks", [
    ("pc", 4608, None, ["pc.ram"]),
    ("q35", 4096, None, ["pc.ram"]),
    ("pc", 8192, None, ["pc.ram"]),
    ("pc", 4096, (1024, 3072), ["ram-node0", "ram-node1"]),
], ids=["pc-4.5g", "q35-4g", "pc-8g", "numa-2-nodes"])
def test_larger_guests_and_numa_nodes_are_placed_too(lab, tmp_path, machine, mib, numa, blocks):
    got, counts, banners = acquire_all(lab, tmp_path, "vmc-test-layout-%s-%d" % (machine, mib), mib, machine, numa)
    check(got, counts, banners, mib, blocks)
