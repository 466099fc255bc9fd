# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read what one disk extent of the lab holds, for the lab's tests (lab/vcsim/BEHAVIOUR-vms.md, "SEsparse deltas").

A flat extent is read as it is; a snapshot delta's ``-sesparse.vmdk`` is a VMware SEsparse file and is read through
its grain directory and grain tables: only what the delta itself holds (4 KiB grains), zeros where it holds none (its
parent is not followed). Little-endian u64 fields, sectors of 512 bytes: const header at 0 (magic 0xcafebabe, 26
fields), grain directory entry ``0x10000000 << 32 | table`` per 16 MiB, grain table entries of type 3 (allocated,
grain number ``((e >> 48) & 0xfff) | ((e & 0xffffffffffff) << 12)``), type 1/2 read as zeros.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

SESPARSE_MAGIC = 0xCAFEBABE
GRAIN = 4096
TABLE_ENTRIES = 4096


def header(fh):
    """The 26 fields of an SEsparse const header as a dict, or None when fh is not an SEsparse extent."""
    fh.seek(0)
    raw = fh.read(512)
    if len(raw) < 512 or struct.unpack_from("<Q", raw)[0] != SESPARSE_MAGIC:
        return None
    names = ("magic version capacity grain_size grain_table_size flags r1 r2 r3 r4 volatile_header_offset "
             "volatile_header_size journal_header_offset journal_header_size journal_offset journal_size "
             "grain_dir_offset grain_dir_size grain_tables_offset grain_tables_size free_bitmap_offset "
             "free_bitmap_size backmap_offset backmap_size grains_offset grains_size").split()
    return dict(zip(names, struct.unpack_from("<26Q", raw)))


def _u64(fh, pos):
    fh.seek(pos)
    raw = fh.read(8)
    return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0


def _grain(fh, h, vg):
    """File offset of virtual grain vg (None: zero grain; 0: the delta does not hold it)."""
    table, idx = divmod(vg, TABLE_ENTRIES)
    de = _u64(fh, h["grain_dir_offset"] * 512 + table * 8)
    if de >> 32 != 0x10000000:
        return 0
    te = _u64(fh, (h["grain_tables_offset"] + (de & 0xFFFFFFFF) * 64) * 512 + idx * 8)
    kind = te >> 60
    if kind == 3:
        g = ((te >> 48) & 0xFFF) | ((te & 0xFFFFFFFFFFFF) << 12)
        return (h["grains_offset"] + g * 8) * 512
    return None if kind in (1, 2) else 0


def grains(path):
    """{virtual grain number: file offset (None for a zero grain)} of every grain an SEsparse extent holds."""
    out = {}
    with open(path, "rb") as fh:
        h = header(fh)
        assert h is not None, "%s is not an SEsparse extent" % path
        ntables = -(-h["capacity"] // (8 * TABLE_ENTRIES))
        fh.seek(h["grain_dir_offset"] * 512)
        directory = struct.unpack("<%dQ" % ntables, fh.read(ntables * 8))
        for t, de in enumerate(directory):
            if de >> 32 != 0x10000000:
                continue
            fh.seek((h["grain_tables_offset"] + (de & 0xFFFFFFFF) * 64) * 512)
            for i, te in enumerate(struct.unpack("<%dQ" % TABLE_ENTRIES, fh.read(TABLE_ENTRIES * 8))):
                if te:
                    out[t * TABLE_ENTRIES + i] = _grain(fh, h, t * TABLE_ENTRIES + i)
    return out


def read_extent(path, offset, length):
    """length bytes at offset of a lab disk extent: a flat file as it is; an SEsparse delta through its tables,
    zeros where the delta holds no grain."""
    with open(path, "rb") as fh:
        h = header(fh)
        if h is None:
            fh.seek(offset)
            return fh.read(length)
        out = bytearray()
        while len(out) < length:
            pos = offset + len(out)
            vg, within = divmod(pos, GRAIN)
            n = min(length - len(out), GRAIN - within)
            at = _grain(fh, h, vg)
            data = b""
            if at:
                fh.seek(at + within)
                data = fh.read(n)
            out += data.ljust(n, b"\0")
        return bytes(out)
