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
import time

import pytest

from conftest import ROOT, VENV_BIN

sys.path.insert(0, os.path.join(ROOT, "bench"))
import memory_bench as mb  # noqa: E402  the bench's throwaway guest (its domain XML, its boot)

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import layout as kl  # noqa: E402
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


def in_layout(paddr, size, layout):
    """Whether [paddr, paddr + size) overlaps the guest RAM ranges of a result's layout."""
    return any(int(r["gpa_start"], 16) < paddr + size and paddr <= int(r["gpa_end"], 16) for r in layout["ranges"])


def compare(raw, dump, layout):
    """Pages of QEMU's dump equal / different at the same address of the raw image, below and above 4 GiB. QEMU's
    dump also holds the firmware's ROM (pc.bios at 0xfffc0000): its loads outside the layout's RAM ranges are
    counted as not_ram, not compared."""
    counts = {"equal": 0, "differ": 0, "equal_above_4g": 0, "differ_above_4g": 0, "not_ram": 0}
    with open(raw, "rb") as r, open(dump, "rb") as d:
        for paddr, offset, size in elf_loads(dump):
            if not in_layout(paddr, size, layout):
                counts["not_ram"] += size // PAGE
                continue
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
                    if not same and len(counts.setdefault("first_differing", [])) < 16:
                        counts["first_differing"].append(hex(paddr + pos + k))
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


def marker_addresses(raw, marker):
    """Guest-physical addresses of the marker in a raw image (its offsets), read through its data extents only."""
    found, overlap = [], len(marker) - 1
    fd = os.open(raw, os.O_RDONLY)
    try:
        for start, length in kl.data_extents(fd, 0, os.fstat(fd).st_size):
            pos, tail = start, b""
            while pos < start + length:
                chunk = os.pread(fd, min(64 * CHUNK, start + length - pos), pos)
                data = tail + chunk
                k = data.find(marker)
                while k >= 0:
                    found.append(pos - len(tail) + k)
                    k = data.find(marker, k + 1)
                tail = data[-overlap:] if overlap else b""
                pos += len(chunk)
    finally:
        os.close(fd)
    return sorted(set(found))


def acquire_all(lab, tmp_path, name, mib, machine="pc", numa=None, methods=()):
    work = os.path.join(lab["work_dir"], "mem-layout-%s" % name)
    shutil.rmtree(work, ignore_errors=True)
    xml = mb.DOMAIN_XML.replace("machine='pc'", "machine='%s'" % machine)
    if numa:
        xml = xml.replace(NUMA[0], NUMA[1].format(a=numa[0], b=numa[1]))
    saved, mb.DOMAIN_XML = mb.DOMAIN_XML, xml
    journal = Journal("mem-layout", str(tmp_path / "journal"))
    km.start_event_loop()
    try:
        marker = mb.boot(name, mib, lab["lab_dir"], work).encode()
        got = {}
        for fmt in ("raw", "elf"):
            got[fmt] = km.acquire(journal, mb.URI, os.path.join(work, "snapshot." + fmt), "background_snapshot",
                                  name=name, fmt=fmt)
        for method in methods:  # pmemsave and pmemsave_paused: placed by the same memory map
            got[method] = km.acquire(journal, mb.URI, os.path.join(work, method + ".raw"), method, name=name)
        got["dump"] = km.acquire(journal, mb.URI, os.path.join(work, "dump.elf"), "core_dump", name=name)
        files = dict((k, os.path.join(work, f)) for k, f in (("raw", "snapshot.raw"), ("elf", "snapshot.elf"),
                                                             ("dump", "dump.elf")))
        counts = {"raw": compare(files["raw"], files["dump"], got["raw"]["layout"])}
        for method in methods:
            counts[method] = compare(os.path.join(work, method + ".raw"), files["dump"], got["raw"]["layout"])
        # the guest's marker (tmpfs, a process's argv and environment): where the raw image has it, QEMU's dump has it
        counts["marker"] = [(a, at_address(files["dump"], a, len(marker))[1] == marker.decode())
                            for a in marker_addresses(files["raw"], marker)]
        banners = banners_of(files["raw"], files["elf"])
        banners["dump"] = at_address(files["dump"], banners["raw"][0], len(banners["raw"][1] or ""))
        return got, counts, banners
    finally:
        cleanup(journal, name, work, lab, saved)


def check(got, counts, banners, mib, blocks, marker_above_4g=True):
    ranges = got["raw"]["layout"]["ranges"]
    assert sorted(got["raw"]["layout"]["blocks"]) == sorted(blocks)
    assert sum(r["size"] for r in ranges) + sum(got["raw"]["layout"]["unplaced_bytes"].values()) == mib << 20
    high = [r for r in ranges if int(r["gpa_start"], 16) >= 4 * GIB]
    assert high, ranges  # some RAM lies above 4 GiB
    assert got["raw"]["size"] == got["raw"]["layout"]["image_size"] == int(ranges[-1]["gpa_end"], 16) + 1
    assert got["elf"]["format"] == "elf" and got["raw"]["format"] == "raw"
    # every page of QEMU's own dump is at the same address in the raw image, but for the few the guest wrote since
    for key in [k for k in counts if k not in ("marker", "first_differing")]:
        c = counts[key]
        total = c["equal"] + c["differ"]
        assert c["differ"] < total / 1000, (key, c)
        assert c["equal_above_4g"] > 100 * max(1, c["differ_above_4g"]), (key, c)
        if key != "raw":
            assert got[key]["layout"] == got["raw"]["layout"] and got[key]["size"] == got["raw"]["size"], key
    # the guest's marker, placed by the guest where its allocator put it: some copy lies above 4 GiB, and every copy
    # the raw image holds is at the same guest-physical address in QEMU's dump
    assert counts["marker"], "the guest's marker is not in the raw image"
    if marker_above_4g:  # a NUMA guest's init allocates on node 0, below 4 GiB
        assert any(a >= 4 * GIB for a, dummy in counts["marker"]), counts["marker"]
    assert all(same for dummy, same in counts["marker"]), counts["marker"]
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
    methods = ("pmemsave_paused",) if (machine, mib) == ("pc", 4608) else ()  # pmemsave's ranges, placed alike
    got, counts, banners = acquire_all(lab, tmp_path, "vmc-test-layout-%s-%d" % (machine, mib), mib, machine, numa,
                                       methods)
    check(got, counts, banners, mib, blocks, marker_above_4g=not numa)


HUGEPAGES = "/proc/sys/vm/nr_hugepages"
BACKING = {
    "memfd-shared": "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>",
    "hugepages": "<memoryBacking><hugepages/><source type='memfd'/></memoryBacking>",
}


@pytest.fixture
def hugepages(lab):
    """Reserve 2 MiB hugepages for one guest, and give the kernel back what it had."""
    with open(HUGEPAGES) as f:
        before = int(f.read())

    def reserve(mib):
        try:
            with open(HUGEPAGES, "w") as f:
                f.write("%d\n" % (before + mib // 2))
        except OSError as exc:
            pytest.skip("hugepages cannot be reserved here (%s)" % exc)
        with open(HUGEPAGES) as f:
            if int(f.read()) < before + mib // 2:
                pytest.skip("the kernel could not reserve %d hugepages" % (mib // 2))
        with open(os.path.join(lab["lab_dir"], "hosts", "kvm", "etc-libvirt", "qemu.conf")) as f:
            if "hugetlbfs of the KVM host namespace" not in f.read():
                pytest.skip("the lab's KVM host has no hugetlbfs (lab/host-init.sh could not mount one)")
    yield reserve
    try:
        with open(HUGEPAGES, "w") as f:
            f.write("%d\n" % before)
    except OSError:
        pass


def paused_images(journal, name, work):
    """The guest paused; pmemsave (the module's code: "already paused"), libvirt's core dump and a background snapshot
    (what bgsnap_paused.py of the pmemsave target does: QEMU resumes the guest at its end) of that one instant.
    Returns {method: result} and the files."""
    files = dict((k, os.path.join(work, k)) for k in ("pmemsave.raw", "dump.elf", "snapshot.raw"))
    mb.virsh("suspend", name)
    got = {"pmemsave": km.acquire(journal, mb.URI, files["pmemsave.raw"], "pmemsave", name=name),
           "core_dump": km.acquire(journal, mb.URI, files["dump.elf"], "core_dump", name=name)}
    with km.connect(mb.URI) as conn:
        dom = km.find_domain(conn, name=name)
        vm = km.vm_facts(dom)
        assert not vm["running"]
        dest = files["snapshot.raw"]
        p = {"uri": mb.URI, "dest": dest, "partial": dest + km.PARTIAL_SUFFIX, "stream": dest + km.STREAM_SUFFIX}
        got["background_snapshot"] = km.take_background_snapshot(journal, dom, vm, p)
    km.seal(p["partial"])
    km.publish(p["partial"], dest)
    return got, files


def cleanup(journal, name, work, lab, saved):
    """The guest's journal torn down, the guest destroyed, its folder and QEMU log removed, the bench's XML back."""
    mb.DOMAIN_XML = saved
    journal.teardown()
    subprocess.run(["virsh", "-c", mb.URI, "destroy", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    shutil.rmtree(work, ignore_errors=True)
    log = os.path.join(lab["lab_dir"], "hosts", "kvm", "var-log-libvirt", "qemu", name + ".log")
    if os.path.exists(log):
        os.unlink(log)


@pytest.mark.parametrize("backing", [pytest.param("memfd-shared", marks=pytest.mark.slow), "hugepages"])
def test_hugepage_and_shared_memory_guests_are_write_protected_by_the_kernel(lab, tmp_path, hugepages, backing):
    """Guest RAM on hugepages (memory-backend-memfd hugetlb) or on shared memory (memfd, share=on): this kernel
    offers userfaultfd write protection of both (UFFD_FEATURE_WP_HUGETLBFS_SHMEM), so the background snapshot takes
    them. Of one paused instant, its image equals pmemsave's byte for byte and QEMU's core dump page by page, and
    holds the guest's marker where the dump has it; on the running guest, the module takes it and says how."""
    mib = 256
    if backing == "hugepages":
        hugepages(mib)
    name = "vmc-test-backing-%s" % backing
    saved = mb.DOMAIN_XML
    mb.DOMAIN_XML = saved.replace("<memory unit='MiB'>{mib}</memory>",
                                  "<memory unit='MiB'>{mib}</memory>" + BACKING[backing])
    work = os.path.join(lab["work_dir"], "mem-backing-%s" % backing)
    shutil.rmtree(work, ignore_errors=True)
    journal = Journal("mem-backing", str(tmp_path / "journal"))
    km.start_event_loop()
    try:
        marker = mb.boot(name, mib, lab["lab_dir"], work).encode()
        got, files = paused_images(journal, name, work)
        running = km.acquire(journal, mb.URI, os.path.join(work, "running.raw"), "background_snapshot", name=name)
        counts = compare(files["snapshot.raw"], files["dump.elf"], got["background_snapshot"]["layout"])
        differ = pages_differing(files["snapshot.raw"], files["pmemsave.raw"])
        where = marker_addresses(files["snapshot.raw"], marker)
        same = [at_address(files["dump.elf"], a, len(marker))[1] == marker.decode() for a in where]
        # the sysctl and the capability are back as found (the images stay: evidence)
        assert [r["action"] for r in journal.pending() if r["action"] != "file.created"] == []
    finally:
        cleanup(journal, name, work, lab, saved)
    kind = "(2048 KiB pages)" if backing == "hugepages" else "(shared)"
    for notes in (running["notes"], got["background_snapshot"]["notes"]):
        assert any(kind in n and "UFFD_FEATURE_WP_HUGETLBFS_SHMEM" in n for n in notes), notes
    assert counts["differ"] == 0 and counts["equal"] >= (mib << 20) // PAGE - 96, counts  # at most the VGA window out
    assert counts["not_ram"] == 64, counts  # QEMU's dump holds pc.bios (256 KiB) too: the layout does not
    assert differ == 0
    assert where and all(same), list(zip(where, same))


DIMM_XML = ("<memory model='dimm'><target><size unit='MiB'>{mib}</size><node>0</node></target></memory>")


@pytest.mark.slow
def test_a_hotplugged_dimm_is_a_ram_block_placed_at_its_own_range(lab, tmp_path):
    """A DIMM plugged into the running guest (virsh attach-device, pc-dimm) is a RAM block of its own in QEMU's
    memory map, in the device-memory area above the RAM: the background snapshot places it there and its layout
    names it; of one paused instant, its image equals pmemsave's (which reads guest-physical memory range by range,
    the DIMM through a range file) byte for byte, and QEMU's core dump (which has the DIMM at the same range) page
    by page."""
    mib, dimm = 256, 256
    name = "vmc-test-layout-dimm"
    saved = mb.DOMAIN_XML
    mb.DOMAIN_XML = (saved.replace("<memory unit='MiB'>{mib}</memory>",
                                   "<maxMemory slots='2' unit='MiB'>4096</maxMemory><memory unit='MiB'>{mib}</memory>")
                     .replace("<vcpu>1</vcpu>", "<vcpu>1</vcpu><cpu><numa><cell id='0' cpus='0' memory='{mib}' "
                                                "unit='MiB'/></numa></cpu>")
                     .replace("panic=-1", "panic=-1 memhp_default_state=online"))
    work = os.path.join(lab["work_dir"], "mem-layout-dimm")
    shutil.rmtree(work, ignore_errors=True)
    journal = Journal("mem-layout-dimm", str(tmp_path / "journal"))
    km.start_event_loop()
    try:
        mb.boot(name, mib, lab["lab_dir"], work)
        with open(os.path.join(work, "dimm.xml"), "w") as f:
            f.write(DIMM_XML.format(mib=dimm))
        mb.virsh("attach-device", name, os.path.join(work, "dimm.xml"), "--live")
        time.sleep(2)  # the guest onlines the DIMM (memhp_default_state=online)
        got, files = paused_images(journal, name, work)
        counts = compare(files["snapshot.raw"], files["dump.elf"], got["background_snapshot"]["layout"])
        loads = elf_loads(files["dump.elf"])
        differ = pages_differing(files["snapshot.raw"], files["pmemsave.raw"])
        used = data_pages(files["snapshot.raw"], 4 * GIB)
        snap_size = os.path.getsize(files["snapshot.raw"])
    finally:
        cleanup(journal, name, work, lab, saved)
    lay = got["background_snapshot"]["layout"]
    dimms = [r for r in lay["ranges"] if r["block"] != "ram-node0"]
    assert len(dimms) == 1 and dimms[0]["size"] == dimm << 20, lay
    start = int(dimms[0]["gpa_start"], 16)
    assert start >= 4 * GIB, lay  # the device-memory area lies above the RAM
    assert (start, dimm << 20) in [(p, s) for p, dummy, s in loads]  # QEMU's dump has the DIMM at that range too
    assert got["pmemsave"]["layout"] == lay and snap_size == got["pmemsave"]["size"] == start + (dimm << 20)
    assert counts["equal_above_4g"] == (dimm << 20) // PAGE and counts["differ"] == 0, counts
    assert differ == 0
    print("DIMM %s: %d pages with data above 4 GiB" % (dimms[0]["block"], used))


def data_pages(path, start):
    """4 KiB pages from ``start`` on that are not all zeros."""
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            x = f.read(CHUNK)
            if not x:
                return n
            n += sum(1 for k in range(0, len(x), PAGE) if x[k:k + PAGE].count(0) != PAGE)


def pages_differing(a, b):
    """4 KiB pages that differ between two files of the same size."""
    n = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert os.fstat(fa.fileno()).st_size == os.fstat(fb.fileno()).st_size
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if not x:
                return n
            if x != y:
                n += sum(1 for k in range(0, len(x), PAGE) if x[k:k + PAGE] != y[k:k + PAGE])
