# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the migration stream reader, on small synthetic QEMU 7.2 streams built here,
written to real (sparse) files; and of the pure helpers of the memory acquisition."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import json
import os
import shutil
import struct
import tempfile
import threading

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import space
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import migration_stream as ms
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, MigrationStreamError

PAGE = 4096


def page(byte):
    return bytes(bytearray([byte])) * PAGE


class Stream(object):
    """Builds a migration stream the way QEMU 7.2's savevm.c and ram.c write one."""

    def __init__(self, machine=b"pc-i440fx-7.2", magic=ms.QEMU_VM_FILE_MAGIC, version=3):
        self.b = bytearray(struct.pack(">II", magic, version))
        self.b += bytes(bytearray([ms.QEMU_VM_CONFIGURATION])) + struct.pack(">I", len(machine)) + machine

    def raw(self, data):
        self.b += data
        return self

    def subsection(self, name, payload):
        self.b += bytes(bytearray([ms.QEMU_VM_SUBSECTION, len(name)])) + name + struct.pack(">I", 1) + payload
        return self

    def start(self, section_id=2, idstr=b"ram", version=4):
        self.b += bytes(bytearray([ms.QEMU_VM_SECTION_START])) + struct.pack(">I", section_id)
        self.b += bytes(bytearray([len(idstr)])) + idstr + struct.pack(">II", 0, version)
        return self

    def part(self, section_id=2, kind=ms.QEMU_VM_SECTION_PART):
        self.b += bytes(bytearray([kind])) + struct.pack(">I", section_id)
        return self

    def mem_size(self, blocks, ignore_shared=False):
        self.b += struct.pack(">Q", sum(length for dummy, length in blocks) | ms.RAM_SAVE_FLAG_MEM_SIZE)
        for name, length in blocks:
            self.b += bytes(bytearray([len(name)])) + name + struct.pack(">Q", length)
            if ignore_shared:
                self.b += struct.pack(">Q", 0xFEED0000)
        return self

    def _header(self, addr, flags, block):
        if block is None:
            self.b += struct.pack(">Q", addr | flags | ms.RAM_SAVE_FLAG_CONTINUE)
        else:
            self.b += struct.pack(">Q", addr | flags) + bytes(bytearray([len(block)])) + block

    def page(self, addr, data, block=None):
        self._header(addr, ms.RAM_SAVE_FLAG_PAGE, block)
        self.b += data
        return self

    def zero(self, addr, block=None, fill=0):
        self._header(addr, ms.RAM_SAVE_FLAG_ZERO, block)
        self.b += bytes(bytearray([fill]))
        return self

    def eos(self):
        self.b += struct.pack(">Q", ms.RAM_SAVE_FLAG_EOS)
        return self

    def footer(self, section_id=2):
        self.b += bytes(bytearray([ms.QEMU_VM_SECTION_FOOTER])) + struct.pack(">I", section_id)
        return self

    def devices(self, page_size=PAGE, names=("timer", "cpu")):
        """Device state as QEMU writes it after RAM: FULL sections, EOF, the JSON description."""
        for n, name in enumerate(names):
            self.b += bytes(bytearray([ms.QEMU_VM_SECTION_FULL])) + struct.pack(">I", 10 + n)
            self.b += bytes(bytearray([len(name)])) + name.encode() + struct.pack(">II", 0, 1) + b"\x00\x01\x02\x00"
            self.footer(10 + n)
        desc = json.dumps({"page_size": page_size, "devices": [{"name": n} for n in names]}).encode()
        self.b += bytes(bytearray([ms.QEMU_VM_EOF, ms.QEMU_VM_VMDESCRIPTION])) + struct.pack(">I", len(desc)) + desc
        return self

    def bytes(self):
        return bytes(self.b)


def basic_stream():
    """pc.ram of 4 pages (data, zero, data out of order, continue) plus a firmware block."""
    s = Stream().start().mem_size([(b"pc.ram", 4 * PAGE), (b"pc.bios", PAGE)]).eos().footer()
    s.part().page(0, page(0x41), b"pc.ram").page(3 * PAGE, page(0x44)).zero(PAGE).page(0, page(0xEE), b"pc.bios")
    s.page(2 * PAGE, page(0x43), b"pc.ram").eos().footer()
    return s.devices()


def extract(tmp_path, data, **kw):
    out = str(tmp_path / "ram.raw")
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        result = ms.extract_ram(io.BufferedReader(io.BytesIO(data)), fd, **kw)
    finally:
        os.close(fd)
    with open(out, "rb") as f:
        return result, f.read(), out


def test_pages_land_at_their_offsets_and_zero_pages_stay_holes(tmp_path):
    result, image, out = extract(tmp_path, basic_stream().bytes())
    assert image == page(0x41) + bytes(PAGE) + page(0x43) + page(0x44)
    assert result["size"] == 4 * PAGE
    assert result["blocks"] == {"pc.ram": 4 * PAGE, "pc.bios": PAGE}
    assert result["pages"] == {"pc.ram": 4, "pc.bios": 1}
    assert (result["data_pages"], result["zero_pages"], result["missing_pages"]) == (3, 1, 0)
    assert result["out_of_order"] == 2  # the zero page at 1 and the page at 2 came after page 3
    assert result["machine"] == "pc-i440fx-7.2"
    assert result["devices"] == ["timer", "cpu"]
    assert result["stream_bytes"] == len(basic_stream().bytes())
    fd = os.open(out, os.O_RDONLY)
    try:
        assert os.lseek(fd, PAGE, os.SEEK_HOLE) == PAGE  # the zero page was never written
        assert os.lseek(fd, PAGE, os.SEEK_DATA) == 2 * PAGE
    finally:
        os.close(fd)


def test_an_all_zero_data_page_is_not_written(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", 2 * PAGE)]).page(0, bytes(PAGE), b"pc.ram").page(PAGE, page(1)).eos()
    result, image, out = extract(tmp_path, s.devices().bytes())
    assert image == bytes(PAGE) + page(1)
    assert (result["data_pages"], result["zero_pages"]) == (1, 1)


def test_a_zero_record_with_a_fill_byte_writes_that_byte(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).zero(0, b"pc.ram", fill=0x5A).eos().devices()
    dummy, image, out = extract(tmp_path, s.bytes())
    assert image == page(0x5A)


@pytest.mark.parametrize("policy,expected", [("first", 0x11), ("last", 0x22)])
def test_a_page_sent_twice(tmp_path, policy, expected):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(0, page(0x11), b"pc.ram").page(0, page(0x22)).eos()
    result, image, out = extract(tmp_path, s.devices().bytes(), duplicates=policy)
    assert image == page(expected)
    assert (result["duplicates"], result["conflicts"]) == (1, 1)


def test_an_identical_second_copy_is_no_conflict(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(0, page(0x11), b"pc.ram").page(0, page(0x11)).eos()
    result, dummy, out = extract(tmp_path, s.devices().bytes())
    assert (result["duplicates"], result["conflicts"]) == (1, 0)


def test_unknown_duplicate_policy(tmp_path):
    with pytest.raises(InvalidInputError):
        extract(tmp_path, basic_stream().bytes(), duplicates="any")


def test_missing_pages_are_an_error_unless_allowed(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", 3 * PAGE)]).page(0, page(1), b"pc.ram").eos().devices()
    with pytest.raises(MigrationStreamError, match="lacks 2 of the 3 pages"):
        extract(tmp_path, s.bytes())
    result, image, dummy = extract(tmp_path, s.bytes(), require_complete=False)
    assert result["missing_pages"] == 2 and len(image) == 3 * PAGE


@pytest.mark.parametrize("cut", [3, 8, 30, 100, 5000])
def test_a_truncated_stream_says_where(tmp_path, cut):
    data = basic_stream().bytes()
    with pytest.raises(MigrationStreamError, match="truncated"):
        extract(tmp_path, data[:cut])


def test_a_stream_cut_right_after_the_ram_is_accepted_without_device_description(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(0, page(7), b"pc.ram").eos().footer().raw(b"\x00")
    result, image, dummy = extract(tmp_path, s.bytes())
    assert image == page(7) and result["devices"] is None


def test_not_a_migration_stream(tmp_path):
    with pytest.raises(MigrationStreamError, match="not a migration stream"):
        extract(tmp_path, b"\x7fELF" + bytes(100))


def test_unknown_version(tmp_path):
    with pytest.raises(MigrationStreamError, match="version 2"):
        extract(tmp_path, Stream(version=2).bytes())


def test_unsupported_page_encodings_are_refused(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)])
    s.raw(struct.pack(">Q", ms.RAM_SAVE_FLAG_XBZRLE) + b"\x06pc.ram" + bytes(16))
    with pytest.raises(MigrationStreamError, match="XBZRLE"):
        extract(tmp_path, s.bytes())


def test_unknown_ram_flags_are_refused(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).raw(struct.pack(">Q", 0x400))
    with pytest.raises(MigrationStreamError, match="unknown RAM flags 0x400"):
        extract(tmp_path, s.bytes())


def test_continue_before_any_block(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(0, page(1))
    with pytest.raises(MigrationStreamError, match="before naming one"):
        extract(tmp_path, s.bytes())


def test_a_page_beyond_the_block(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(PAGE, page(1), b"pc.ram")
    with pytest.raises(MigrationStreamError, match="beyond the end"):
        extract(tmp_path, s.bytes())


def test_a_page_of_an_unlisted_block(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(0, page(1), b"vga.vram")
    with pytest.raises(MigrationStreamError, match="vga.vram"):
        extract(tmp_path, s.bytes())


def test_the_block_asked_for_is_missing(tmp_path):
    s = Stream().start().mem_size([(b"ram-node0", PAGE)]).page(0, page(1), b"ram-node0").eos().devices()
    with pytest.raises(MigrationStreamError, match="no RAM block named pc.ram .blocks: ram-node0"):
        extract(tmp_path, s.bytes())
    result, image, dummy = extract(tmp_path, s.bytes(), block="ram-node0")
    assert image == page(1)


def test_another_iterative_section_is_refused(tmp_path):
    s = Stream().start(idstr=b"block")
    with pytest.raises(MigrationStreamError, match="'block'"):
        extract(tmp_path, s.bytes())


def test_a_part_of_a_section_never_started(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).eos().part(section_id=9)
    with pytest.raises(MigrationStreamError, match="section 9"):
        extract(tmp_path, s.bytes())


def test_a_footer_naming_another_section(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).eos().footer(section_id=3)
    with pytest.raises(MigrationStreamError, match="names section 3, not 2"):
        extract(tmp_path, s.bytes())


def test_end_section_and_commands_are_read(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", 2 * PAGE)]).eos().footer()
    s.raw(bytes(bytearray([ms.QEMU_VM_COMMAND])) + struct.pack(">HH", 0x0B, 2) + b"xy")
    s.part(kind=ms.QEMU_VM_SECTION_END).page(PAGE, page(9), b"pc.ram").zero(0).eos().footer().devices()
    result, image, dummy = extract(tmp_path, s.bytes())
    assert image == bytes(PAGE) + page(9)


def test_configuration_subsections(tmp_path):
    """Target page bits set the page size; x-ignore-shared adds a guest address per block."""
    caps = struct.pack(">I", 1) + b"\x0fx-ignore-shared"
    s = Stream().subsection(b"configuration/target-page-bits", struct.pack(">I", 13))
    s.subsection(b"configuration/capabilities", caps).subsection(b"configuration/uuid", bytes(16))
    s.start().mem_size([(b"pc.ram", 2 * 8192)], ignore_shared=True)
    s.page(8192, b"\x01" * 8192, b"pc.ram").zero(0).eos().devices(page_size=8192)
    result, image, dummy = extract(tmp_path, s.bytes())
    assert result["page_size"] == 8192
    assert image == bytes(8192) + b"\x01" * 8192


def test_an_unknown_configuration_subsection(tmp_path):
    s = Stream().subsection(b"configuration/new-thing", b"")
    with pytest.raises(MigrationStreamError, match="new-thing"):
        extract(tmp_path, s.bytes())


def test_page_size_disagreeing_with_the_description(tmp_path):
    s = Stream().start().mem_size([(b"pc.ram", PAGE)]).page(0, page(1), b"pc.ram").eos().devices(page_size=65536)
    with pytest.raises(MigrationStreamError, match="page size is 65536"):
        extract(tmp_path, s.bytes())


def test_find_vmdesc():
    assert ms.find_vmdesc(b"junk") is None
    desc = b'{"page_size": 4096, "devices": []}'
    assert ms.find_vmdesc(b"\x01\x02\x00\x06" + struct.pack(">I", len(desc)) + desc)["page_size"] == 4096


def test_reads_a_pipe_sequentially(tmp_path):
    """The reader needs no seek: it works on a pipe, the way QEMU writes a stream."""
    data = basic_stream().bytes()
    r, w = os.pipe()

    def writer():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(data), 777):
                f.write(data[i:i + 777])

    t = threading.Thread(target=writer)
    t.start()
    out = str(tmp_path / "ram.raw")
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with io.open(r, "rb", buffering=1024) as stream:
            result = ms.extract_ram(stream, fd)
    finally:
        os.close(fd)
        t.join()
    assert result["stream_bytes"] == len(data) and result["missing_pages"] == 0


def test_output_is_truncated_to_the_block(tmp_path):
    out = tmp_path / "ram.raw"
    out.write_bytes(b"\xff" * (10 * PAGE))
    fd = os.open(str(out), os.O_RDWR)
    try:
        ms.extract_ram(io.BufferedReader(io.BytesIO(basic_stream().bytes())), fd)
    finally:
        os.close(fd)
    assert out.read_bytes() == page(0x41) + bytes(PAGE) + page(0x43) + page(0x44)


# -- pure helpers of the memory acquisition --------------------------------------------------

def test_pause_intervals():
    S, R, X = km.EVENT_SUSPENDED, km.EVENT_RESUMED, km.EVENT_STOPPED
    assert km.pause_intervals([], 5.0) == []
    assert km.pause_intervals([(1.0, S, 0), (1.004, R, 0)], 9.0) == [4.0]
    events = [(1.0, R, 0), (2.0, S, 0), (2.5, 2, 0), (3.0, R, 0), (4.0, S, 0), (4.1, X, 0), (5.0, S, 0)]
    assert km.pause_intervals(events, 5.25) == [1000.0, 100.0, 250.0]


def test_parse_dac_label():
    assert km.parse_dac_label("+64055:+107") == (64055, 107)
    assert km.parse_dac_label("root:root") == (0, 0)
    assert km.parse_dac_label("no-such-user-here:root") is None
    assert km.parse_dac_label("") is None


def test_qemu_identity_from_the_live_xml(tmp_path):
    xml = ("<domain><name>x</name><seclabel type='dynamic' model='selinux'><label>a:b</label></seclabel>"
           "<seclabel type='dynamic' model='dac'><label>+64055:+64055</label></seclabel></domain>")
    assert km.qemu_identity(xml, "x") == (64055, 64055)
    with pytest.raises(Exception, match="Cannot tell"):
        km.qemu_identity("<domain><name>x</name></domain>", "x", proc=str(tmp_path))


def test_memory_space_rule():
    # pmemsave checks the space rule evidence_plan sums up, not a rule of its own
    assert km.memory_need is space.memory_need and km.free_bytes is space.free_bytes
    assert set(km.METHODS) == set(space.MEMORY_METHODS) - {"none", "snapshot"}  # snapshot: ESXi's
    assert km.memory_need(256 * km.MIB, "pmemsave") == 320 * km.MIB
    assert km.memory_need(256 * km.MIB, "background_snapshot") == 576 * km.MIB
    assert km.memory_need(100 * 1024 * km.MIB, "core_dump") == 101 * 1024 * km.MIB


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make folders of other owners")
def test_untraversable():
    base = tempfile.mkdtemp(dir="/tmp")  # /tmp is searchable by all; pytest's tmp_path is not
    try:
        os.chmod(base, 0o755)
        inner = os.path.join(base, "a", "b")
        os.makedirs(inner)
        os.chmod(os.path.join(base, "a"), 0o700)
        assert km.untraversable(inner, 0, 0) is None
        assert km.untraversable(inner, 64055, 64055) == os.path.join(base, "a")
        os.chmod(os.path.join(base, "a"), 0o711)
        assert km.untraversable(inner, 64055, 64055) is None
    finally:
        shutil.rmtree(base)


def test_the_recorded_pause_is_never_less_than_qemu_measured():
    # SUSPENDED and RESUMED received in one batch: the events say 0.0 ms, QEMU says 2 ms
    assert km.guest_pause_ms([0.0], 2) == 2.0
    assert km.guest_pause_ms([3.25, 1.0], 2) == 4.2  # the events' sum when it is longer
    assert km.guest_pause_ms([0.0, 0.0]) == 0.0  # no QEMU measure: the events alone
    assert km.guest_pause_ms([], None) == 0.0
