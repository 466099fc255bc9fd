# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read guest RAM out of a QEMU migration stream into a sparse raw image (pure Python).

A migration stream is not a memory image: it is what QEMU sends to a destination QEMU. This
reader understands the part of it that carries RAM, as QEMU 7.2 writes it (stream version 3;
the format is the one ``scripts/analyze-migration.py`` in QEMU's source reads), and reads it
sequentially, so it works on a pipe as well as on a file:

* header: magic ``QEVM``, version 3; then a configuration section (machine type name, and the
  subsections QEMU 7.2 may add: target page bits, capabilities, UUID);
* the ``ram`` section (version 4), in a START section and any number of PART/END sections, each
  a list of records ``be64 address | flags`` ended by ``EOS``. The START section carries
  ``MEM_SIZE``: every RAM block's name and length. A page record names its block unless it has
  ``CONTINUE`` (same block as the record before); ``ZERO`` is followed by one fill byte, ``PAGE``
  by one target page. ``XBZRLE``, compressed pages and RDMA hooks are refused (background
  snapshots cannot use them);
* section footers (``0x7e`` + section id) after each section;
* then the device state (FULL sections), ``EOF`` and a JSON description of the devices. The
  device sections have no length field and can only be decoded with that JSON, which comes
  last; they hold no RAM, so reading stops at the first FULL section, and the rest of the
  stream is consumed (a pipe must be drained) and only its JSON tail is checked.

One RAM block (``pc.ram`` on x86: the guest's RAM) is written into the output file at its
offsets; zero pages are never written, so they stay holes of a sparse file. The other blocks
(firmware, option ROMs, video memory) are read and counted, not kept.

Which copy of a page wins when a page comes twice: in a *background snapshot* QEMU stops the
vCPUs, write-protects all guest RAM (userfaultfd) and resumes the guest; then it saves every
page once, in address order, except that a page the guest is about to write is saved first (out
of order) and only then unprotected. The dirty bitmap is filled once and never synced again,
so every page is sent exactly once, with its content at the snapshot instant. A second copy of
a page could only have been taken after the guest was allowed to write it, so the *first* copy
wins (``duplicates='first'``) and a differing second copy is counted as a conflict. Measured on
the lab (QEMU 7.2, TCG): no page came twice, pages did come out of order, and every page of
``pc.ram`` was present. In an ordinary (precopy) migration stream the opposite holds: pages
are resent after the guest dirtied them, so the last copy wins (``duplicates='last'``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import struct

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, MigrationStreamError

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3

QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

RAM_SAVE_FLAG_FULL = 0x01  # obsolete; never sent by QEMU 7.2
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200
_UNSUPPORTED = {RAM_SAVE_FLAG_XBZRLE: "XBZRLE-compressed pages", RAM_SAVE_FLAG_HOOK: "RDMA hooks",
                RAM_SAVE_FLAG_COMPRESS_PAGE: "zlib-compressed pages", RAM_SAVE_FLAG_FULL: "obsolete FULL pages"}

RAM_SECTION = "ram"
RAM_SECTION_VERSION = 4
DEFAULT_BLOCK = "pc.ram"
DEFAULT_PAGE_SIZE = 4096
DUPLICATE_POLICIES = ("first", "last")
_DRAIN_CHUNK = 1024 * 1024
_TAIL_KEPT = 16 * 1024 * 1024  # device state kept to find the JSON description at the end


class StreamReader(object):
    """Sequential big-endian reads from a binary file object, with the offset for messages."""

    def __init__(self, fileobj, name="the migration stream"):
        self.f = fileobj
        self.name = name
        self.offset = 0

    def read(self, size, what):
        data = self.f.read(size) if size else b""
        while data is not None and len(data) < size:
            more = self.f.read(size - len(data))
            if not more:
                break
            data += more
        if data is None or len(data) != size:
            got = 0 if data is None else len(data)
            raise MigrationStreamError(
                "%s ended at byte %d inside %s (%d of %d bytes); it is truncated: the migration did not "
                "complete or its writer was interrupted." % (_cap(self.name), self.offset + got, what, got, size),
                stream_offset=self.offset + got)
        self.offset += size
        return data

    def u8(self, what):
        return self.read(1, what)[0]

    def be16(self, what):
        return struct.unpack(">H", self.read(2, what))[0]

    def be32(self, what):
        return struct.unpack(">I", self.read(4, what))[0]

    def be64(self, what):
        return struct.unpack(">Q", self.read(8, what))[0]

    def str8(self, what):
        """A string prefixed by its length in one byte (section and RAM block names)."""
        return self.read(self.u8(what), what).decode("utf-8", "replace")

    def peek8(self):
        """The next byte without consuming it, or None at the end (the file object must have peek)."""
        data = self.f.peek(1)[:1]
        return data[0] if data else None

    def drain(self, keep=_TAIL_KEPT):
        """Consume the rest; returns (bytes consumed, the last ``keep`` bytes)."""
        total = 0
        tail = bytearray()
        while True:
            chunk = self.f.read(_DRAIN_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            tail += chunk
            if len(tail) > keep:
                del tail[:len(tail) - keep]
        self.offset += total
        return total, bytes(tail)


def _cap(text):
    return text[:1].upper() + text[1:]


class RamImage(object):
    """Where the pages of one RAM block go: a sparse output file, with the bookkeeping."""

    def __init__(self, out_fd, block, page_size, duplicates):
        self.out_fd = out_fd
        self.block = block
        self.page_size = page_size
        self.duplicates_policy = duplicates
        self.zero_page = bytes(page_size)
        self.size = None
        self.seen = None
        self.stats = {"data_pages": 0, "zero_pages": 0, "duplicates": 0, "conflicts": 0, "out_of_order": 0}
        self._highest = -1

    def start(self, name, length):
        if name != self.block:
            return
        if length % self.page_size:
            raise MigrationStreamError("RAM block %s is %d bytes long, not a whole number of %d-byte pages."
                                       % (self.block, length, self.page_size))
        self.size = length
        self.seen = bytearray(length // self.page_size)
        os.ftruncate(self.out_fd, 0)
        os.ftruncate(self.out_fd, length)

    def put(self, name, addr, data):
        """One page of block ``name``: ``data`` is the page's bytes, or None for a zero page."""
        if name != self.block:
            return
        if self.seen is None:
            raise MigrationStreamError("The migration stream sends pages of RAM block %s before announcing its size."
                                       % self.block)
        if addr + self.page_size > self.size:
            raise MigrationStreamError("The migration stream sends a page at 0x%x, beyond the end of RAM block %s "
                                       "(%d bytes)." % (addr, self.block, self.size))
        index = addr // self.page_size
        if data is not None and data == self.zero_page:
            data = None
        if index < self._highest:
            self.stats["out_of_order"] += 1
        self._highest = max(self._highest, index)
        if self.seen[index]:
            self._duplicate(addr, data)
            return
        self.seen[index] = 1
        if data is None:
            self.stats["zero_pages"] += 1
            return
        self.stats["data_pages"] += 1
        pwrite_all(self.out_fd, data, addr)

    def _duplicate(self, addr, data):
        self.stats["duplicates"] += 1
        old = os.pread(self.out_fd, self.page_size, addr)
        if old != (data if data is not None else self.zero_page):
            self.stats["conflicts"] += 1
            if self.duplicates_policy == "last":
                pwrite_all(self.out_fd, data if data is not None else self.zero_page, addr)

    def missing_pages(self):
        if self.seen is None:
            return None
        return len(self.seen) - sum(self.seen)


class PlacedImage(RamImage):
    """Where the pages of every RAM block of a guest-physical layout (_kvm/layout.py) go: each page at its
    guest-physical address in a sparse output file (the hole between the PCI hole split and 4 GiB stays a hole), so
    the image's offsets are guest-physical addresses. Pages of a placed block that no range shows (the piece under
    the legacy VGA/ROM window) are counted, not kept; other blocks (ROMs, video memory) are read and counted."""

    def __init__(self, out_fd, layout, page_size, duplicates):
        RamImage.__init__(self, out_fd, ", ".join(sorted(layout["blocks"])), page_size, duplicates)
        self.layout = layout
        self.seen = {}
        self.lengths = {}
        self.ranges = {}
        for r in layout["ranges"]:
            self.ranges.setdefault(r["block"], []).append((r["offset"], r["offset"] + r["size"], r["gpa"]))
        self.stats.update(unplaced_pages=0, unplaced_data_pages=0)
        self._highest = {}  # per block

    def start(self, name, length):
        if name not in self.ranges:
            return
        if length != self.layout["blocks"][name]:
            raise MigrationStreamError("The migration stream gives RAM block %s %d bytes; QEMU's memory map, read "
                                       "before the snapshot, %d." % (name, length, self.layout["blocks"][name]))
        self.seen[name] = bytearray(length // self.page_size)
        self.lengths[name] = length
        if self.size is None:
            self.size = self.layout["end"]
            os.ftruncate(self.out_fd, 0)
            os.ftruncate(self.out_fd, self.size)

    def _where(self, name, addr):
        for start, end, gpa in self.ranges[name]:
            if start <= addr < end:
                return gpa + addr - start
        return None

    def put(self, name, addr, data):
        if name not in self.ranges:
            return
        if name not in self.seen:
            raise MigrationStreamError("The migration stream sends pages of RAM block %s before announcing its size."
                                       % name)
        if addr + self.page_size > self.lengths[name]:
            raise MigrationStreamError("The migration stream sends a page at 0x%x, beyond the end of RAM block %s "
                                       "(%d bytes)." % (addr, name, self.lengths[name]))
        index = addr // self.page_size
        if data is not None and data == self.zero_page:
            data = None
        if index < self._highest.get(name, -1):
            self.stats["out_of_order"] += 1
        self._highest[name] = max(self._highest.get(name, -1), index)
        where = self._where(name, addr)
        seen = self.seen[name]
        if seen[index]:
            if where is None:
                self.stats["duplicates"] += 1
            else:
                self._duplicate(where, data)
            return
        seen[index] = 1
        if where is None:
            self.stats["unplaced_pages"] += 1
            if data is not None:
                self.stats["unplaced_data_pages"] += 1
            return
        if data is None:
            self.stats["zero_pages"] += 1
            return
        self.stats["data_pages"] += 1
        pwrite_all(self.out_fd, data, where)

    def missing_pages(self):
        if not self.seen:
            return None
        return sum(len(s) - sum(s) for s in self.seen.values()) + sum(
            self.layout["blocks"][b] // self.page_size for b in self.ranges if b not in self.seen)


def pwrite_all(fd, data, offset):
    """Write all of ``data`` at ``offset`` of ``fd`` (os.pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _read_configuration(reader, config):
    """The configuration section: the machine type, then the subsections QEMU 7.2 may send."""
    config["machine"] = reader.read(reader.be32("the configuration section"), "the machine type name").decode(
        "utf-8", "replace")
    while reader.peek8() == QEMU_VM_SUBSECTION:
        reader.u8("a configuration subsection")
        name = reader.str8("a configuration subsection name")
        reader.be32("the version of subsection %s" % name)
        if name == "configuration/target-page-bits":
            config["page_size"] = 1 << reader.be32("the target page bits")
        elif name == "configuration/capabilities":
            count = reader.be32("the capability count")
            config["capabilities"] = [reader.str8("a capability name") for dummy in range(count)]
        elif name == "configuration/uuid":
            reader.read(16, "the VM UUID")
        else:
            raise MigrationStreamError("The migration stream's configuration has a subsection %r that this reader "
                                       "does not know (it was written by a QEMU newer than 7.2?)." % name)


def _read_ram_records(reader, image, blocks, state):
    """RAM records up to and including EOS (one START, PART or END section of ``ram``)."""
    page_size = image.page_size
    mask = page_size - 1
    while True:
        word = reader.be64("a RAM record header")
        flags = word & mask
        addr = word & ~mask
        if flags & RAM_SAVE_FLAG_MEM_SIZE:
            _read_block_list(reader, image, blocks, state, addr)
            flags &= ~RAM_SAVE_FLAG_MEM_SIZE
        for flag, what in _UNSUPPORTED.items():
            if flags & flag:
                raise MigrationStreamError("The migration stream holds %s (RAM flag 0x%x at byte %d), which this "
                                           "reader cannot decode; take the snapshot with compression, XBZRLE and "
                                           "RDMA off." % (what, flag, reader.offset - 8), stream_offset=reader.offset)
        if flags & (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE):
            if flags & RAM_SAVE_FLAG_CONTINUE:
                if state["block"] is None:
                    raise MigrationStreamError("The migration stream continues a RAM block at byte %d before naming "
                                               "one." % (reader.offset - 8), stream_offset=reader.offset)
            else:
                state["block"] = reader.str8("a RAM block name")
            name = state["block"]
            if name not in blocks:
                raise MigrationStreamError("The migration stream sends a page of RAM block %r, which its block list "
                                           "does not have." % name, stream_offset=reader.offset)
            if flags & RAM_SAVE_FLAG_ZERO:
                fill = reader.u8("a zero page's fill byte")
                data = None if fill == 0 else bytes(bytearray([fill])) * page_size
            else:
                data = reader.read(page_size, "a RAM page")
            state["pages"][name] = state["pages"].get(name, 0) + 1
            image.put(name, addr, data)
        flags &= ~(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE | RAM_SAVE_FLAG_MULTIFD_FLUSH)
        if flags & RAM_SAVE_FLAG_EOS:
            return
        if flags:
            raise MigrationStreamError("The migration stream has unknown RAM flags 0x%x at byte %d."
                                       % (flags, reader.offset - 8), stream_offset=reader.offset)


def _read_block_list(reader, image, blocks, state, total):
    remaining = total
    while remaining > 0:
        name = reader.str8("a RAM block name")
        length = reader.be64("the length of RAM block %s" % name)
        if "x-ignore-shared" in state["capabilities"]:
            reader.be64("the guest address of RAM block %s" % name)
        blocks[name] = length
        image.start(name, length)
        if length > remaining:
            raise MigrationStreamError("The migration stream's RAM block list is inconsistent: block %s (%d bytes) is "
                                       "longer than the RAM left to list (%d bytes)." % (name, length, remaining))
        remaining -= length


def _footer(reader, section_id):
    if reader.peek8() == QEMU_VM_SECTION_FOOTER:
        reader.u8("a section footer")
        got = reader.be32("a section footer")
        if got != section_id:
            raise MigrationStreamError("The migration stream's section footer at byte %d names section %d, not %d."
                                       % (reader.offset - 4, got, section_id), stream_offset=reader.offset)


def find_vmdesc(tail):
    """The JSON device description that ends a stream (``EOF``, 0x06, be32 length, JSON), or None."""
    nul = tail.rfind(b"\0")
    start = tail.find(b"{", nul + 1)
    if start < 5 or tail[start - 5] != QEMU_VM_VMDESCRIPTION:
        return None
    length = struct.unpack(">I", tail[start - 4:start])[0]
    try:
        return json.loads(tail[start:start + length].decode("utf-8"))
    except ValueError:
        return None


def extract_ram(fileobj, out_fd, block=DEFAULT_BLOCK, page_size=DEFAULT_PAGE_SIZE, duplicates="first",
                name="the migration stream", require_complete=True, layout=None):
    """Read a whole migration stream from ``fileobj`` (binary, with ``peek``: io.BufferedReader)
    and write RAM block ``block`` into ``out_fd`` (truncated to the block's size; zero pages stay
    holes). The stream is read to its end.

    Returns dict: block, size, page_size, machine, blocks {name: length}, pages {name: pages
    sent}, data_pages, zero_pages, duplicates, conflicts, out_of_order, missing_pages,
    stream_bytes, device_state_bytes, devices (from the JSON description, or None).
    Raises MigrationStreamError if the stream is not one, is truncated, holds what this reader
    cannot decode, lacks the block, or (``require_complete``) misses pages of it.

    With ``layout`` (_kvm/layout.guest_ram_layout: QEMU's own memory map), every RAM block it places is written at
    its guest-physical addresses instead (``block`` is then unused): the output's offsets are guest-physical
    addresses, its size the layout's end. The result adds ``layout`` and ``unplaced_pages`` /
    ``unplaced_data_pages`` (pages of a placed block that no guest-physical range shows).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise InvalidInputError("The duplicate page policy %r is not one of %s." % (duplicates, ", ".join(DUPLICATE_POLICIES)))
    reader = StreamReader(fileobj, name)
    magic = reader.be32("the file magic")
    if magic != QEMU_VM_FILE_MAGIC:
        raise MigrationStreamError("%s does not start with QEMU's migration magic QEVM (got 0x%08x); it is not a "
                                   "migration stream." % (_cap(name), magic))
    version = reader.be32("the stream version")
    if version != QEMU_VM_FILE_VERSION:
        raise MigrationStreamError("%s has version %d; this reader knows version %d."
                                   % (_cap(name), version, QEMU_VM_FILE_VERSION))
    config = {"machine": None, "page_size": page_size, "capabilities": []}
    image = None
    blocks = {}
    state = {"block": None, "pages": {}, "capabilities": config["capabilities"]}
    sections = {}
    end = None
    ram_end = None
    while end is None:
        ram_end = reader.offset
        kind = reader.u8("a section type")
        if kind == QEMU_VM_CONFIGURATION:
            _read_configuration(reader, config)
            state["capabilities"] = config["capabilities"]
        elif kind == QEMU_VM_SECTION_START:
            section_id = reader.be32("a section id")
            idstr = reader.str8("a section name")
            reader.be32("an instance id")
            section_version = reader.be32("a section version")
            if idstr != RAM_SECTION:
                raise MigrationStreamError("The migration stream has an iterative section %r besides RAM, which this "
                                           "reader cannot skip; turn off block migration and dirty-bitmap migration."
                                           % idstr)
            if section_version != RAM_SECTION_VERSION:
                raise MigrationStreamError("The migration stream's RAM section has version %d; this reader knows %d."
                                           % (section_version, RAM_SECTION_VERSION))
            sections[section_id] = idstr
            if image is None:
                image = (PlacedImage(out_fd, layout, config["page_size"], duplicates) if layout is not None else
                         RamImage(out_fd, block, config["page_size"], duplicates))
            _read_ram_records(reader, image, blocks, state)
            _footer(reader, section_id)
        elif kind in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
            section_id = reader.be32("a section id")
            if sections.get(section_id) != RAM_SECTION:
                raise MigrationStreamError("The migration stream continues section %d at byte %d, which was never "
                                           "started as RAM." % (section_id, reader.offset - 4))
            _read_ram_records(reader, image, blocks, state)
            _footer(reader, section_id)
        elif kind == QEMU_VM_COMMAND:
            reader.be16("a command")
            reader.read(reader.be16("a command length"), "a command's data")
        elif kind == QEMU_VM_SECTION_FULL:
            end = "device state"  # no length fields from here on: RAM is over
        elif kind == QEMU_VM_EOF:
            end = "end of stream"
        else:
            raise MigrationStreamError("The migration stream has an unknown section type 0x%02x at byte %d."
                                       % (kind, reader.offset - 1), stream_offset=reader.offset - 1)
    dummy, tail = reader.drain()
    vmdesc = find_vmdesc(tail)
    if vmdesc and vmdesc.get("page_size") not in (None, config["page_size"]):
        raise MigrationStreamError("The migration stream's device description says the page size is %s, not %d."
                                   % (vmdesc.get("page_size"), config["page_size"]))
    if image is None or image.size is None:
        raise MigrationStreamError("%s holds no RAM block named %s (blocks: %s)." % (
            _cap(name), image.block if image is not None else block, ", ".join(sorted(blocks)) or "none"),
            blocks=blocks)
    result = {"block": image.block, "size": image.size, "page_size": image.page_size, "machine": config["machine"],
              "blocks": blocks, "pages": state["pages"], "missing_pages": image.missing_pages(),
              "stream_bytes": reader.offset, "device_state_bytes": reader.offset - ram_end,
              "devices": [d.get("name") for d in vmdesc.get("devices", [])] if vmdesc else None}
    result.update(image.stats)
    if layout is not None:
        result["layout"] = layout
    if require_complete and result["missing_pages"]:
        total = (sum(layout["blocks"].values()) if layout is not None else image.size) // image.page_size
        raise MigrationStreamError("%s lacks %d of the %d pages of RAM block %s; the image would have holes that are "
                                   "not zeros in the guest." % (_cap(name), result["missing_pages"], total,
                                                                image.block),
                                   missing_pages=result["missing_pages"])
    return result
