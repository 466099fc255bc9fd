# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest-physical RAM layout from QEMU's own monitor (`info mtree -f`, `info ramblock`), RAM images placed at
guest-physical addresses from a migration stream, and their ELF core.

The captures in data/ are QEMU 7.2's (Debian 1:7.2+dfsg-7+deb12u18) answers for guests started paused (-S, TCG):
``-machine pc -m 5G``, ``-machine q35 -m 5G``, a 2-node NUMA guest (``-m 6G``, memory-backend-ram ram-node0 2 GiB
and ram-node1 4 GiB) and ``-machine pc -m 256M``."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import os
import struct

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import MigrationStreamError
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import layout as kl
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import migration_stream as ms
from test_migration_stream import PAGE, Stream, extract, page


DATA = os.path.join(os.path.dirname(__file__), "data")
GIB = 1 << 30


def capture(name):
    with open(os.path.join(DATA, "qemu72-mtree-ramblock-%s.txt" % name)) as f:
        return f.read()


def layout_of(name):
    text = capture(name)
    return kl.guest_ram_layout(text, text)


def test_pc_with_5_gib_continues_at_4_gib():
    lay = layout_of("pc5g")
    assert [(r["gpa"], r["size"], r["block"], r["offset"]) for r in lay["ranges"]] == [
        (0, 0xa0000, "pc.ram", 0),
        (0x100000, 0xc0000000 - 0x100000, "pc.ram", 0x100000),
        (4 * GIB, 2 * GIB, "pc.ram", 0xc0000000)]
    assert lay["blocks"] == {"pc.ram": 5 * GIB}
    assert lay["end"] == 6 * GIB
    assert lay["unplaced"] == {"pc.ram": 0x60000}  # under the VGA/ROM window 0xa0000-0xfffff


def test_q35_splits_at_2_gib():
    lay = layout_of("q35-5g")
    assert [(r["gpa"], r["offset"]) for r in lay["ranges"]][-1] == (4 * GIB, 2 * GIB)
    assert lay["end"] == 4 * GIB + 3 * GIB


def test_numa_nodes_are_blocks_of_their_own():
    lay = layout_of("numa")
    assert lay["blocks"] == {"ram-node0": 2 * GIB, "ram-node1": 4 * GIB}
    assert [(r["gpa"], r["block"], r["offset"]) for r in lay["ranges"]] == [
        (0, "ram-node0", 0), (0x100000, "ram-node0", 0x100000), (0x80000000, "ram-node1", 0),
        (4 * GIB, "ram-node1", 0x40000000)]
    assert kl.segments(lay)[-1] == (4 * GIB, 3 * GIB)


def test_a_small_guest_is_one_range_but_the_vga_window():
    lay = layout_of("small")
    assert kl.segments(lay) == [(0, 0xa0000), (0x100000, 256 * (1 << 20) - 0x100000)]
    pub = kl.public_layout(lay)
    assert pub["ranges"][0] == {"gpa_start": "0x0", "gpa_end": "0x9ffff", "size": 0xa0000, "block": "pc.ram",
                                "block_offset": "0x0"}


def test_a_booted_guests_read_only_shadow_of_the_firmware_is_its_ram():
    """After SeaBIOS ran, the chipset maps pieces of pc.ram below 1 MiB read-only (`rom` in the flat view): they are
    guest RAM (pmemsave reads them); the firmware's own block pc.bios at 0xfffc0000 is not."""
    lay = layout_of("booted")
    assert [(r["gpa"], r["size"], r["offset"]) for r in lay["ranges"]] == [
        (0, 0xc3000, 0), (0xc3000, 0x25000, 0xc3000), (0xe8000, 0x8000, 0xe8000), (0xf0000, 0x10000, 0xf0000),
        (0x100000, 0x10000000 - 0x100000, 0x100000)]
    assert lay["blocks"] == {"pc.ram": 0x10000000} and lay["unplaced"] == {}
    assert kl.segments(lay) == [(0, 0x10000000)]


def test_the_monitors_crlf_line_ends_are_read_alike():
    text = capture("pc5g")  # stored with \n; QEMU's human monitor answers with \r\n
    crlf = text.replace("\n", "\r\n")
    assert kl.guest_ram_layout(crlf, crlf) == kl.guest_ram_layout(text, text)


def test_no_flat_view_of_memory_or_no_ram_is_refused():
    with pytest.raises(MigrationStreamError, match="no flat view"):
        kl.flat_ranges("FlatView #0\n AS \"I/O\", root: io\n")
    with pytest.raises(MigrationStreamError, match="no RAM block"):
        kl.ram_blocks("nothing")


def small_layout():
    """A block of 12 pages: pages 0-3 at 0, pages 4-11 at guest-physical page 8 (a hole of 4 pages); a second block
    of 2 pages at page 16; one page of the first block (page 3) shown nowhere."""
    return {"ranges": [{"gpa": 0, "size": 3 * PAGE, "block": "pc.ram", "offset": 0},
                       {"gpa": 8 * PAGE, "size": 8 * PAGE, "block": "pc.ram", "offset": 4 * PAGE},
                       {"gpa": 16 * PAGE, "size": 2 * PAGE, "block": "ram-node1", "offset": 0}],
            "blocks": {"pc.ram": 12 * PAGE, "ram-node1": 2 * PAGE}, "end": 18 * PAGE,
            "unplaced": {"pc.ram": PAGE}}


def placed_stream():
    s = Stream().start().mem_size([(b"pc.ram", 12 * PAGE), (b"ram-node1", 2 * PAGE), (b"vga.vram", PAGE)])
    s.page(0, page(1), b"pc.ram").page(3 * PAGE, page(9))  # page 3 lies under no range
    for i in (1, 2):
        s.zero(i * PAGE)
    for i in range(4, 12):
        s.page(i * PAGE, page(0x10 + i))
    s.page(0, page(0x77), b"ram-node1").zero(PAGE)
    s.page(0, page(0x55), b"vga.vram")
    return s.eos().footer().devices().bytes()


def test_pages_land_at_their_guest_physical_addresses(tmp_path):
    stats, data, out = extract(tmp_path, placed_stream(), layout=small_layout())
    assert len(data) == 18 * PAGE
    assert data[:PAGE] == page(1) and data[PAGE:3 * PAGE] == bytes(2 * PAGE)
    assert data[3 * PAGE:8 * PAGE] == bytes(5 * PAGE)  # the hole: no RAM there
    for i in range(4, 12):
        assert data[(i + 4) * PAGE:(i + 5) * PAGE] == page(0x10 + i)
    assert data[16 * PAGE:17 * PAGE] == page(0x77)
    assert stats["unplaced_pages"] == 1 and stats["unplaced_data_pages"] == 1
    assert stats["missing_pages"] == 0 and stats["layout"]["end"] == 18 * PAGE
    assert os.stat(out).st_blocks * 512 < 18 * PAGE  # sparse


def test_a_block_size_other_than_the_layouts_is_refused(tmp_path):
    lay = small_layout()
    lay["blocks"]["pc.ram"] = 13 * PAGE
    with pytest.raises(MigrationStreamError, match="memory map"):
        extract(tmp_path, placed_stream(), layout=lay)


def test_the_elf_core_has_one_load_per_range_and_the_same_bytes(tmp_path):
    raw, elf = str(tmp_path / "ram.raw"), str(tmp_path / "ram.elf")
    fd = os.open(raw, os.O_RDWR | os.O_CREAT, 0o600)
    out = os.open(elf, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        ms.extract_ram(io.BufferedReader(io.BytesIO(placed_stream())), fd, layout=small_layout())
        size = kl.write_elf(fd, small_layout(), out, kl.data_extents)
    finally:
        os.close(fd)
        os.close(out)
    with open(elf, "rb") as f:
        blob = f.read()
    with open(raw, "rb") as f:
        image = f.read()
    assert len(blob) == size and blob[:4] == b"\x7fELF" and blob[4] == 2
    e_type, e_machine = struct.unpack("<HH", blob[16:20])
    phoff, = struct.unpack("<Q", blob[32:40])
    phnum, = struct.unpack("<H", blob[56:58])
    assert (e_type, e_machine, phnum) == (kl.ET_CORE, kl.EM_X86_64, 2)  # ranges that touch are one
    loads = [struct.unpack("<IIQQQQQQ", blob[phoff + i * 56:phoff + (i + 1) * 56]) for i in range(phnum)]
    assert [(p[4], p[5]) for p in loads] == [(0, 3 * PAGE), (8 * PAGE, 10 * PAGE)]
    for p_type, dummy, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, dummy2 in loads:
        assert p_type == kl.PT_LOAD and p_filesz == p_memsz and p_offset % 4096 == 0
        assert blob[p_offset:p_offset + p_filesz] == image[p_paddr:p_paddr + p_filesz]


def test_pmemsave_reads_the_low_ram_from_0_and_each_range_above_the_pci_hole_on_its_own():
    """pmemsave reads one range from an address: the legacy window below 1 MiB is bridged (one span from 0, as
    pmemsave always read a small guest), the PCI hole never is."""
    assert kl.read_spans(layout_of("small")) == [(0, 256 * (1 << 20))]
    assert kl.read_spans(layout_of("booted")) == [(0, 0x10000000)]
    assert kl.read_spans(layout_of("pc5g")) == [(0, 0xc0000000), (4 * GIB, 2 * GIB)]
    assert kl.read_spans(layout_of("q35-5g")) == [(0, 2 * GIB), (4 * GIB, 3 * GIB)]
    assert kl.read_spans(layout_of("numa")) == [(0, 3 * GIB), (4 * GIB, 3 * GIB)]


def test_a_range_file_is_placed_at_its_address_and_its_zero_pieces_stay_holes(tmp_path):
    piece = kl.PLACE_PIECE
    src = tmp_path / "range"
    data = bytearray(5 * piece + 100)
    data[piece + 7] = 1  # piece 1 has data, pieces 0, 2, 3 are zero, piece 4 and the tail have data
    data[4 * piece] = 2
    data[-1] = 3
    src.write_bytes(bytes(data))
    out = tmp_path / "image"
    at = 3 * GIB
    with open(str(out), "wb") as f:
        f.truncate(at + len(data))
    s = os.open(str(src), os.O_RDONLY)
    o = os.open(str(out), os.O_RDWR)
    try:
        written = kl.place(s, o, at, len(data), chunk=2 * piece + 12)  # chunks that do not fall on pieces
        assert written == len(data) - 3 * piece
        assert os.pread(o, len(data), at) == bytes(data)
        assert os.pread(o, piece, at - piece) == bytes(piece)
        assert list(kl.data_extents(o, 0, at + len(data)))[0][0] >= at  # nothing written below
        with pytest.raises(MigrationStreamError, match="ended after"):
            kl.place(s, o, at, len(data) + 1)
    finally:
        os.close(s)
        os.close(o)


def test_hugepages_or_shared_memory_need_the_kernels_write_protection_of_them():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import MemoryAcquisitionError
    from ansible_collections.dfir.vmcollect.plugins.module_utils._host import uffd
    from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km
    vm = {"name": "vm1"}
    plain = {"page_sizes": {"pc.ram": 4096}}
    huge = {"page_sizes": {"ram-node0": 4096, "ram-node1": 2 << 20}}

    def never():
        raise AssertionError("the kernel is not asked for plain memory")

    def old():  # a kernel before 5.19
        return uffd.FEATURE_PAGEFAULT_FLAG_WP, None

    def new():
        return uffd.FEATURE_PAGEFAULT_FLAG_WP | uffd.FEATURE_WP_HUGETLBFS_SHMEM, None

    def unknown():
        return None, "no syscall"

    assert km.check_write_protect(vm, plain, [{"id": "pc.ram", "share": False}], never) == []
    with pytest.raises(MemoryAcquisitionError,
                       match=r"ram-node1 \(2048 KiB pages\).*core_dump or pmemsave_paused.*Nothing was changed"):
        km.check_write_protect(vm, huge, [], old)
    with pytest.raises(MemoryAcquisitionError, match=r"pc.ram \(shared\)"):
        km.check_write_protect(vm, plain, [{"id": "pc.ram", "share": True}], old)
    assert km.check_write_protect(vm, huge, [], new) == ["ram-node1 (2048 KiB pages)"]
    # a kernel that cannot be asked: QEMU decides (it refuses the capability when it cannot track the memory)
    assert km.check_write_protect(vm, huge, [], unknown) == ["ram-node1 (2048 KiB pages)"]


def test_the_kernel_is_asked_for_its_userfaultfd_features():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._host import uffd
    offered, why = uffd.kernel_features()
    if offered is None:
        pytest.skip("userfaultfd cannot be opened here: %s" % why)
    assert offered & uffd.FEATURE_PAGEFAULT_FLAG_WP  # every kernel QEMU's background snapshot runs on has it


def test_a_capability_qemu_refuses_is_journaled_as_never_made_and_names_the_methods_that_work(tmp_path, monkeypatch):
    from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import MemoryAcquisitionError
    from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
    from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km

    def refuse(dom, state, name=km.CAPABILITY):
        raise MemoryAcquisitionError("QEMU refused migrate-set-capabilities: Background-snapshot is not compatible "
                                     "with guest memory configuration.", qmp_command="migrate-set-capabilities")
    monkeypatch.setattr(km, "set_capability", refuse)
    journal = Journal("cap-refused", str(tmp_path / "journal"), hostname="unit")
    vm = {"name": "vm1", "uuid": "u-1"}
    with pytest.raises(MemoryAcquisitionError, match="not compatible.*core_dump and pmemsave_paused") as err:
        km._change_capability(journal, None, vm, "qemu:///system", [])
    assert err.value.details == {"qmp_command": "migrate-set-capabilities"}
    assert journal.pending() == []  # nothing for teardown to undo, nothing to block the next run


def test_the_layout_names_the_page_size_backing_each_placed_block():
    assert layout_of("numa")["page_sizes"] == {"ram-node0": 4096, "ram-node1": 4096}
