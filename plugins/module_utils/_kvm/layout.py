# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a QEMU guest's RAM lies in guest-physical memory, as QEMU itself says it, and an ELF core of a raw image.

QEMU keeps guest RAM in RAM blocks (``pc.ram``; with NUMA or memory backends one block per backend, ``ram-node0``...;
hotplugged DIMMs have their own). A block is not one guest-physical range: on x86 the part above the PCI hole split
(3 GiB on ``pc`` with 4 GiB or more, 2 GiB on ``q35``...) is mapped at 4 GiB, and the legacy VGA/ROM window
(0xa0000-0xfffff) hides a piece of the first block. A migration stream sends each block by its own offsets, so an
image written by block offset has wrong addresses above the split for any reader that takes a raw image as physical
memory (Volatility 3 does).

The layout is read from QEMU, never from a table of machine types: ``info mtree -f`` (the flat view of the address
space ``memory``: each range with its type, the memory region's name and, with ``@``, the offset into it) and
``info ramblock`` (every RAM block's name and used length). In QEMU 7.2 the flat view names a RAM range by its
region, whose name is the RAM block's (``pc.ram``, ``ram-node0``: checked on this project's lab, captures in the unit
tests). The guest's RAM blocks are those with a ``ram`` range; their ``rom`` ranges (the firmware's shadow below 1
MiB that the chipset maps read-only once the firmware ran) are guest RAM too. Firmware blocks (``pc.bios``), device
memory and ``ramd`` ranges (device RAM mapped by a driver) are not.

Reading the layout is a read of QEMU's monitor (``human-monitor-command``); it changes nothing in the guest.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import struct

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import MigrationStreamError
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.migration_stream import pwrite_all

_FLATVIEW = re.compile(r"^FlatView #\d+\s*$")
_AS = re.compile(r'^\s*AS "(?P<name>[^"]*)", root: ')
_RANGE = re.compile(r"^\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+) \(prio -?\d+, (?P<type>[a-z/]+)\): "
                    r"(?P<name>.+?)(?: @(?P<offset>[0-9a-fA-F]+))?(?: KVM)?(?: \[[^\]]*\])*\s*$")
_RAMBLOCK = re.compile(r"^\s*(?P<name>\S+)\s+(?P<psize>\d+ [KMG]iB)\s+0x(?P<offset>[0-9a-fA-F]+)\s+"
                       r"0x(?P<used>[0-9a-fA-F]+)\s+0x(?P<total>[0-9a-fA-F]+)\s*$")
_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

ELF_HEADER_SIZE = 64
ELF_PHDR_SIZE = 56
ELF_DATA_ALIGN = 4096
PT_LOAD = 1
EM_X86_64 = 62
ET_CORE = 4
COPY_CHUNK = 4 << 20
PLACE_PIECE = 64 << 10
LEGACY_TOP = 1 << 20  # the legacy VGA/ROM window (0xa0000-0xfffff) lies below


def flat_ranges(text, address_space="memory"):
    """[{gpa, size, type, name, offset}] of the flat view that renders ``address_space`` in ``info mtree -f``."""
    views, current = [], None
    for line in (text or "").splitlines():
        if _FLATVIEW.match(line):
            current = {"spaces": [], "ranges": []}
            views.append(current)
            continue
        if current is None:
            continue
        m = _AS.match(line)
        if m:
            current["spaces"].append(m.group("name"))
            continue
        m = _RANGE.match(line)
        if m:
            start, end = int(m.group("start"), 16), int(m.group("end"), 16)
            current["ranges"].append({"gpa": start, "size": end - start + 1, "type": m.group("type"),
                                      "name": m.group("name").strip(),
                                      "offset": int(m.group("offset"), 16) if m.group("offset") else 0})
    for view in views:
        if address_space in view["spaces"]:
            return view["ranges"]
    raise MigrationStreamError("QEMU's `info mtree -f` has no flat view of the address space %r; the guest's memory "
                               "map could not be read." % address_space)


def ram_blocks(text):
    """{name: {used, total, page_size}} of ``info ramblock``."""
    blocks = {}
    for line in (text or "").splitlines():
        m = _RAMBLOCK.match(line)
        if m:
            number, unit = m.group("psize").split()
            blocks[m.group("name")] = {"used": int(m.group("used"), 16), "total": int(m.group("total"), 16),
                                       "page_size": int(number) * _UNITS[unit]}
    if not blocks:
        raise MigrationStreamError("QEMU's `info ramblock` lists no RAM block; the guest's RAM blocks could not be read.")
    return blocks


def guest_ram_layout(mtree_text, ramblock_text):
    """The guest's RAM in guest-physical memory: {ranges: [{gpa, size, block, offset}] sorted by gpa, blocks: {name:
    used length} of the blocks that have ranges, unplaced: {block: bytes of it no range shows}, end: the highest
    guest-physical address + 1, page_sizes: {name: the host page size backing the block}}."""
    blocks = ram_blocks(ramblock_text)
    flat = [r for r in flat_ranges(mtree_text) if r["name"] in blocks]
    # the guest's RAM blocks: those with a `ram` range; their `rom` ranges are RAM the chipset maps read-only (the
    # firmware's shadow below 1 MiB, PAM), which the guest reads as memory - firmware blocks (pc.bios) have none
    guest = set(r["name"] for r in flat if r["type"] == "ram")
    ranges = [{"gpa": r["gpa"], "size": r["size"], "block": r["name"], "offset": r["offset"]}
              for r in flat if r["name"] in guest and r["type"] in ("ram", "rom")]
    if not ranges:
        raise MigrationStreamError("QEMU's memory map shows no guest RAM (no `ram` range named after a RAM block).")
    ranges.sort(key=lambda r: r["gpa"])
    used = dict((r["block"], blocks[r["block"]]["used"]) for r in ranges)
    for r in ranges:
        if r["offset"] + r["size"] > used[r["block"]]:
            raise MigrationStreamError("QEMU's memory map places 0x%x bytes of RAM block %s at offset 0x%x, beyond its "
                                       "0x%x bytes." % (r["size"], r["block"], r["offset"], used[r["block"]]))
    shown = {}
    for r in ranges:
        shown[r["block"]] = shown.get(r["block"], 0) + r["size"]
    return {"ranges": ranges, "blocks": used, "end": max(r["gpa"] + r["size"] for r in ranges),
            "unplaced": dict((b, used[b] - shown[b]) for b in used if used[b] > shown[b]),
            "page_sizes": dict((b, blocks[b]["page_size"]) for b in used)}


def public_layout(layout):
    """The layout as the manifest records it: each range with hex addresses beside the numbers."""
    return {"ranges": [{"gpa_start": "0x%x" % r["gpa"], "gpa_end": "0x%x" % (r["gpa"] + r["size"] - 1),
                        "size": r["size"], "block": r["block"], "block_offset": "0x%x" % r["offset"]}
                       for r in layout["ranges"]],
            "blocks": layout["blocks"], "unplaced_bytes": layout["unplaced"], "image_size": layout["end"]}


def segments(layout):
    """Guest-physical ranges merged where they touch: [(gpa, size)] (one PT_LOAD each)."""
    out = []
    for r in layout["ranges"]:
        if out and out[-1][0] + out[-1][1] == r["gpa"]:
            out[-1] = (out[-1][0], out[-1][1] + r["size"])
        else:
            out.append((r["gpa"], r["size"]))
    return out


def read_spans(layout, legacy_top=LEGACY_TOP):
    """Guest-physical spans to copy one by one with ``pmemsave`` (which reads one range from an address):
    [(gpa, size)], the layout's segments with the gaps below ``legacy_top`` (1 MiB: the legacy VGA/ROM window)
    bridged, so a guest's low RAM is one span from 0 as it always was; the RAM above the PCI hole is a span of its
    own, and no span ever reads the PCI hole."""
    out = []
    for gpa, size in segments(layout):
        if out and out[-1][0] + out[-1][1] < legacy_top:
            out[-1] = (out[-1][0], gpa + size - out[-1][0])
        else:
            out.append((gpa, size))
    return out


def elf_header(segs):
    """ELF64 core header and program headers for ``segs``; returns (bytes, [file offset of each segment])."""
    phoff = ELF_HEADER_SIZE
    data = phoff + ELF_PHDR_SIZE * len(segs)
    data = (data + ELF_DATA_ALIGN - 1) // ELF_DATA_ALIGN * ELF_DATA_ALIGN
    ident = b"\x7fELF" + bytes(bytearray([2, 1, 1, 0])) + bytes(8)  # 64-bit, little endian, version 1, SysV
    head = ident + struct.pack("<HHIQQQIHHHHHH", ET_CORE, EM_X86_64, 1, 0, phoff, 0, 0, ELF_HEADER_SIZE,
                               ELF_PHDR_SIZE, len(segs), 0, 0, 0)
    offsets, phdrs = [], b""
    for gpa, size in segs:
        offsets.append(data)
        # p_type, p_flags (RWX), p_offset, p_vaddr (0: physical only), p_paddr, p_filesz, p_memsz, p_align
        phdrs += struct.pack("<IIQQQQQQ", PT_LOAD, 7, data, 0, gpa, size, size, 0)
        data += size
    return head + phdrs, offsets


def write_elf(raw_fd, layout, out_fd, extents):
    """An ELF core of the raw image ``raw_fd`` (offsets = guest-physical addresses): one PT_LOAD per guest-physical
    range, its data copied from the raw image's allocated extents only (``extents(fd, start, end)`` yields (offset,
    length) of data), so holes stay holes and the cost follows the data. Returns the ELF's size."""
    segs = segments(layout)
    header, offsets = elf_header(segs)
    os.ftruncate(out_fd, 0)
    total = offsets[-1] + segs[-1][1]
    os.ftruncate(out_fd, total)
    pwrite_all(out_fd, header, 0)
    for (gpa, size), at in zip(segs, offsets):
        for offset, length in extents(raw_fd, gpa, gpa + size):
            done = 0
            while done < length:
                chunk = os.pread(raw_fd, min(COPY_CHUNK, length - done), offset + done)
                if not chunk:
                    raise MigrationStreamError("The raw image ended at 0x%x while its ELF core was written."
                                               % (offset + done))
                pwrite_all(out_fd, chunk, at + (offset + done - gpa))
                done += len(chunk)
    return total


def place(src_fd, out_fd, at, size, chunk=COPY_CHUNK):
    """Copy ``size`` bytes of ``src_fd`` (from its start) to offset ``at`` of ``out_fd``, leaving the all-zero 64 KiB
    pieces unwritten (holes of a sparse file; ``out_fd`` must be zero there, as a new or truncated file is); returns
    the bytes written."""
    zero = bytes(PLACE_PIECE)
    chunk = max(PLACE_PIECE, chunk // PLACE_PIECE * PLACE_PIECE)  # pieces on the source's 64 KiB boundaries
    written = done = 0
    while done < size:
        data = os.pread(src_fd, min(chunk, size - done), done)
        if not data:
            raise MigrationStreamError("The range file ended after 0x%x of its 0x%x bytes." % (done, size))
        view = memoryview(data)
        for k in range(0, len(data), PLACE_PIECE):
            piece = view[k:k + PLACE_PIECE]
            if piece != zero[:len(piece)]:
                pwrite_all(out_fd, piece, at + done + k)
                written += len(piece)
        done += len(data)
    return written


def data_extents(fd, start, end):
    """(offset, length) of the allocated data of ``fd`` between ``start`` and ``end`` (SEEK_DATA/SEEK_HOLE; the
    whole range where the filesystem cannot tell)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            yield pos, end - pos  # the filesystem cannot tell: all of it
            return
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        stop = min(hole, end)
        yield data, stop - data
        pos = stop
