# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest-visible bytes of a disk's frozen chain (qcow2 and raw layers, or an ESXi disk's levels: flat extents and
SEsparse or vmfsSparse deltas, each with its descriptor), read with the standard library only.

The chain is given explicitly, top first: ``[{"path": ..., "format": "qcow2" | "raw"}, ...]``. The backing file
name written in a qcow2 header is never followed (a copied chain still names the original host's base path); it
is only reported, and checked against the chain given: a layer whose header names no backing file cannot have a
layer below it, and the last qcow2 layer must name none (else the chain given is missing a layer).

qcow2 is read as docs/interop/qcow2.txt of QEMU describes it: versions 2 and 3, any cluster size from 512 bytes
to 2 MiB, L1/L2 tables, zero clusters (version 3), compressed clusters (deflate; zstd is refused), extended L2
entries (subclusters). Encrypted images and images with an external data file are refused. An unallocated cluster
reads through to the next layer; below the last layer, and past a layer's own virtual size, the guest sees zeros
(as QEMU shows them). A data cluster that lies past the end of its file reads as zeros there, as in QEMU.

An ESXi level is its extent with its descriptor: ``{"path": extent, "format": "raw" | "vmdk-sparse", "descriptor":
...}``. A flat extent is raw, its size the descriptor's. A delta is read as QEMU's vmdk driver reads it: SEsparse
(grain directory of 16 MiB grain tables, u64 entries, 4 KiB grains; unmapped and zeroed grains read as zeros; a
journal left to replay is refused) or vmfsSparse (COWD: u32 sector offsets, 0 reads the parent). A descriptor must
describe its extent as the extent's header does, and a delta's parentCID must be the CID of the level below it.

``iter_extents`` yields ``(offset, length, data or None)`` (None: zeros, never read); ``logical_digests`` hashes the
whole byte stream, zeros included, in one pass (zero runs from one preallocated zero buffer) and can hand the same
stream to a sink; ``write_raw`` writes it as a sparse raw file. ``qemu_json`` and ``open_command`` tell an examiner
how to open the same chain with ``qemu-img`` without the original host's paths.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import shlex
import stat
import struct
import zlib

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import DEFAULT_MODE, DestWriter
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import (
    DEFAULT_BLOCK_SIZE,
    HashConsumer,
    identity,
    normalize_algorithms,
    read_extents,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import (
    SEEK_DATA,
    SEEK_HOLE,
    open_source,
    source_size,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.vmdk_descriptor import parse_descriptor
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir

FORMATS = ("qcow2", "raw", "vmdk-sparse")
QCOW2_MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # 2 MiB: QEMU's limit too
MAX_L1_BYTES = 32 * 1024 * 1024  # QEMU's limit on the L1 table
SECTOR = 512

# header extensions
_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_FEATURE_NAMES = 0x6803F857
_EXT_DATA_FILE = 0x44415441

# incompatible feature bits
_INCOMPAT_DIRTY = 1 << 0
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_INCOMPAT_COMPRESSION = 1 << 3
_INCOMPAT_EXTL2 = 1 << 4
_INCOMPAT_KNOWN = _INCOMPAT_DIRTY | _INCOMPAT_CORRUPT | _INCOMPAT_DATA_FILE | _INCOMPAT_COMPRESSION | _INCOMPAT_EXTL2

_COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}
_CRYPT_METHODS = {1: "AES", 2: "LUKS"}

_OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of L1 and standard L2 entries
_COMPRESSED = 1 << 62
_ZERO_FLAG = 1

# kinds of a run of guest bytes
ZERO, DATA, COMPRESSED, BELOW = 0, 1, 2, 3
_L2_CACHE = 64  # L2 tables kept per layer (reading is sequential: one at a time is in use)


def _image_error(path, message, **details):
    details.setdefault("failed_path", path)
    return EvidenceSourceError("The disk image %s %s" % (path, message), **details)


def normalize_layers(layers):
    """``[{"path", "format"}]`` checked for form: absolute paths, known formats, raw only as the last layer."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise InvalidInputError("A disk's chain needs at least one layer: a list of {path, format}, top first.")
    result = []
    for index, layer in enumerate(layers):
        if isinstance(layer, (list, tuple)) and len(layer) == 2:
            layer = {"path": layer[0], "format": layer[1]}
        if not isinstance(layer, dict) or not layer.get("path") or not layer.get("format"):
            raise InvalidInputError("Layer %d of the chain is not a {path, format} pair: %r." % (index + 1, layer))
        path = str(layer["path"])
        fmt = str(layer["format"]).lower()
        if fmt not in FORMATS:
            raise InvalidInputError("The layer %s has the format %r; this reader knows %s."
                                    % (path, layer["format"], " and ".join(FORMATS)), failed_path=path)
        if fmt == "raw" and index != len(layers) - 1:
            raise InvalidInputError("The raw layer %s is not the last of the chain: a raw image has no backing file, "
                                    "so nothing can lie below it. Give the chain top first." % path,
                                    failed_path=path)
        if fmt == "vmdk-sparse" and index == len(layers) - 1:
            raise InvalidInputError("The sparse VMDK extent %s is the last layer of the chain, but a snapshot's "
                                    "delta always has a parent: the guest saw the parent's data where the delta "
                                    "has none. Give the chain down to the base disk, top first." % path,
                                    failed_path=path)
        entry = {"path": path, "format": fmt}
        if layer.get("descriptor"):
            entry["descriptor"] = str(layer["descriptor"])
        elif fmt == "vmdk-sparse":
            raise InvalidInputError("The sparse VMDK extent %s needs its descriptor (the .vmdk text file of the same "
                                    "level): it gives the extent's type, size and parent." % path, failed_path=path)
        result.append(entry)
    return result


def _pread_exact(fd, length, offset, path, what, kind="a qcow2 image", error=_image_error):
    """``length`` bytes at ``offset``; a file that ends before them is ``error`` (it is truncated or not ``kind``)."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise error(path, "ends at byte %d, inside its %s (bytes %d-%d): the file is truncated or not %s."
                        % (offset + len(data), what, offset, offset + length - 1, kind))
        data += more
    return data


def _read_into(fd, view, offset):
    """Fill ``view`` from ``offset``; what lies past the end of the file reads as zeros (QEMU pads short reads)."""
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            view[done:] = bytes(total - done)
            return
        done += n


class RawLayer(object):
    """A raw image: its bytes are the guest's; past its end, zeros."""

    fmt = "raw"

    def __init__(self, path, fd, st):
        self.path = path
        self.fd = fd
        self.st = st
        self.size = source_size(fd, st)
        self.backing_file = None
        self.backing_format = None

    def info(self):
        return {"path": self.path, "format": "raw", "virtual_size": self.size}

    def runs(self, start, end):
        """``(offset, length, kind, host)`` over ``[start, end)`` (end <= size); holes of a sparse file are zeros."""
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    data = end
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                    yield pos, end - pos, DATA, pos
                    return
                else:
                    raise
            data = min(data, end)
            if data > pos:
                yield pos, data - pos, ZERO, None
            if data >= end:
                return
            hole = min(os.lseek(self.fd, data, SEEK_HOLE), end)
            yield data, hole - data, DATA, data
            pos = hole

    def read_into(self, view, host):
        _read_into(self.fd, view, host)


class Qcow2Layer(object):
    """One qcow2 image: header, L1 table, L2 tables read on demand; never its header's backing file."""

    fmt = "qcow2"

    def __init__(self, path, fd, st):
        self.path = path
        self.fd = fd
        self.st = st
        self.file_size = source_size(fd, st)
        self._l2_cache = {}
        self._parse_header()

    # -- header -------------------------------------------------------------------------------------------
    def _parse_header(self):
        path = self.path
        head = os.pread(self.fd, 4096, 0)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            raise _image_error(path, "is not a qcow2 image (it does not start with the qcow2 magic QFI\\xfb); "
                                     "give its format as raw if it is a raw image.")
        (version, backing_offset, backing_size, cluster_bits, size, crypt_method, l1_size, l1_offset,
         dummy_refcount_offset, dummy_refcount_clusters, nb_snapshots, dummy_snapshots_offset) = struct.unpack(
            ">IQIIQIIQQIIQ", head[4:72])
        if version not in (2, 3):
            raise _image_error(path, "is a qcow2 image of version %d; this reader knows versions 2 and 3." % version)
        self.version = version
        incompatible = compatible = autoclear = 0
        header_length = 72
        compression_type = 0
        if version >= 3:
            if len(head) < 104:
                raise _image_error(path, "is too short for a qcow2 version 3 header.")
            incompatible, compatible, autoclear, dummy_refcount_order, header_length = struct.unpack(
                ">QQQII", head[72:104])
            if header_length < 104 or header_length % 8:
                raise _image_error(path, "has a qcow2 header length of %d bytes (at least 104, a multiple of 8)."
                                   % header_length)
            if header_length > 104:
                compression_type = head[104]
        if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            raise _image_error(path, "has clusters of 2^%d bytes; qcow2 clusters are 512 bytes to 2 MiB."
                               % cluster_bits)
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.size = size
        self.nb_snapshots = nb_snapshots
        self.dirty = bool(incompatible & _INCOMPAT_DIRTY)
        self.corrupt = bool(incompatible & _INCOMPAT_CORRUPT)
        self.lazy_refcounts = bool(compatible & 1)
        extensions = self._parse_extensions(header_length)
        self.backing_format = extensions.get(_EXT_BACKING_FORMAT)
        self.backing_file = None
        if backing_offset:
            if backing_size > 1023:
                raise _image_error(path, "names a backing file of %d bytes (at most 1023)." % backing_size)
            raw_name = _pread_exact(self.fd, backing_size, backing_offset, path, "backing file name")
            self.backing_file = raw_name.decode("utf-8", "replace")
        unknown = incompatible & ~_INCOMPAT_KNOWN
        if unknown:
            names = extensions.get(_EXT_FEATURE_NAMES, {})
            bits = [b for b in range(64) if unknown >> b & 1]
            raise _image_error(path, "uses incompatible qcow2 features this reader does not know (%s); QEMU's "
                                     "qemu-img can convert it to raw." % ", ".join(
                                         names.get(b, "bit %d" % b) for b in bits), unknown_features=bits)
        if crypt_method:
            raise _image_error(path, "is encrypted (%s, qcow2 crypt method %d); this reader does not decrypt. "
                                     "Decrypt it with qemu-img convert and the key, then image the result."
                               % (_CRYPT_METHODS.get(crypt_method, "unknown"), crypt_method),
                               crypt_method=crypt_method)
        if incompatible & _INCOMPAT_DATA_FILE:
            name = extensions.get(_EXT_DATA_FILE)
            raise _image_error(path, "keeps its guest data in an external data file%s (qcow2 data_file); this reader "
                                     "reads only data inside the image. Image the data file, or convert the pair "
                                     "with qemu-img." % (" (%s)" % name if name else ""), data_file=name)
        if incompatible & _INCOMPAT_COMPRESSION or compression_type:
            if compression_type != 0:
                raise _image_error(path, "compresses clusters with %s (qcow2 compression type %d); this reader "
                                         "decodes zlib (deflate) only: the standard library has no zstd. Convert it "
                                         "with a qemu-img built with zstd."
                                   % (_COMPRESSION_TYPES.get(compression_type, "an unknown method"),
                                      compression_type), compression_type=compression_type)
        self.compression_type = _COMPRESSION_TYPES.get(compression_type, str(compression_type))
        self.extended_l2 = bool(incompatible & _INCOMPAT_EXTL2)
        if self.extended_l2 and cluster_bits < 14:
            raise _image_error(path, "has extended L2 entries with clusters smaller than 16 KiB, which qcow2 does "
                                     "not allow.")
        entry_bytes = 16 if self.extended_l2 else 8
        self.l2_bits = cluster_bits - (4 if self.extended_l2 else 3)
        self.l2_entries = 1 << self.l2_bits
        self.entry_bytes = entry_bytes
        self.subcluster_size = self.cluster_size // 32
        need = -(-size // (self.cluster_size * self.l2_entries)) if size else 0
        if l1_size < need:
            raise _image_error(path, "has an L1 table of %d entries; its virtual size of %d bytes needs %d."
                               % (l1_size, size, need))
        if l1_size * 8 > MAX_L1_BYTES:
            raise _image_error(path, "has an L1 table of %d entries, more than QEMU allows." % l1_size)
        if l1_offset % self.cluster_size and need:
            raise _image_error(path, "has its L1 table at byte %d, not at a cluster boundary." % l1_offset)
        self.l1_offset = l1_offset
        raw_l1 = _pread_exact(self.fd, need * 8, l1_offset, path, "L1 table") if need else b""
        self.l1 = struct.unpack(">%dQ" % need, raw_l1)
        # the compressed cluster descriptor: offset in bits 0..x-1, extra 512-byte sectors in x..61
        self._csize_shift = 62 - (cluster_bits - 8)
        self._coffset_mask = (1 << self._csize_shift) - 1
        self._csize_mask = (1 << (cluster_bits - 8)) - 1

    def _parse_extensions(self, header_length):
        """{type: value}: strings for the backing format and data file, {bit: name} of incompatible features."""
        found = {}
        offset = header_length
        end = min(self.cluster_size, self.file_size)
        while offset + 8 <= end:
            ext_type, length = struct.unpack(">II", _pread_exact(self.fd, 8, offset, self.path, "header extensions"))
            if ext_type == _EXT_END:
                break
            data = _pread_exact(self.fd, length, offset + 8, self.path, "header extensions") if length else b""
            if ext_type in (_EXT_BACKING_FORMAT, _EXT_DATA_FILE):
                found[ext_type] = data.decode("utf-8", "replace")
            elif ext_type == _EXT_FEATURE_NAMES:
                names = {}
                for i in range(0, len(data) - 47, 48):
                    if data[i] == 0:  # incompatible features
                        names[data[i + 1]] = data[i + 2:i + 48].rstrip(b"\0").decode("ascii", "replace")
                found[ext_type] = names
            offset += 8 + ((length + 7) & ~7)
        return found

    def info(self):
        return {
            "path": self.path, "format": "qcow2", "virtual_size": self.size, "version": self.version,
            "cluster_size": self.cluster_size, "backing_file": self.backing_file,
            "backing_format": self.backing_format, "compression_type": self.compression_type,
            "extended_l2": self.extended_l2, "dirty": self.dirty, "corrupt": self.corrupt,
            "snapshots": self.nb_snapshots,
        }

    # -- mapping ------------------------------------------------------------------------------------------
    def _l2(self, l1_index):
        """The L2 table (tuple of 64-bit entries) of an L1 entry, or None when it is unallocated."""
        table = self._l2_cache.get(l1_index)
        if table is not None:
            return table
        entry = self.l1[l1_index] if l1_index < len(self.l1) else 0
        offset = entry & _OFFSET_MASK
        if not offset:
            return None
        if offset % self.cluster_size:
            raise _image_error(self.path, "is corrupt: L1 entry %d points to an L2 table at byte %d, not at a "
                                          "cluster boundary." % (l1_index, offset))
        raw = _pread_exact(self.fd, self.cluster_size, offset, self.path, "L2 table %d" % l1_index)
        table = struct.unpack(">%dQ" % (self.cluster_size // 8), raw)
        if len(self._l2_cache) >= _L2_CACHE:
            self._l2_cache.clear()
        self._l2_cache[l1_index] = table
        return table

    def _cluster(self, entry, guest):
        """What one guest cluster is: [(start, end, kind, host)] in guest offsets, from its (first) L2 entry."""
        cs = self.cluster_size
        if entry & _COMPRESSED:
            coffset = entry & self._coffset_mask
            sectors = ((entry >> self._csize_shift) & self._csize_mask) + 1
            return [(guest, guest + cs, COMPRESSED, (coffset, sectors * SECTOR - (coffset & (SECTOR - 1)), guest))]
        host = entry & _OFFSET_MASK
        if entry & _ZERO_FLAG and not self.extended_l2:
            if self.version < 3:
                raise _image_error(self.path, "is corrupt: the zero flag is set for guest offset %d in a version 2 "
                                              "image." % guest)
            return [(guest, guest + cs, ZERO, None)]
        if host and host % cs:
            raise _image_error(self.path, "is corrupt: guest offset %d maps to host byte %d, not at a cluster "
                                          "boundary." % (guest, host))
        return [(guest, guest + cs, DATA if host else BELOW, host or None)]

    def _subclusters(self, entry, bitmap, guest):
        """The pieces of a cluster with extended L2 entries: 32 subclusters allocated, zero or unallocated."""
        if entry & _COMPRESSED:
            return self._cluster(entry, guest)
        host = entry & _OFFSET_MASK
        if host % self.cluster_size:
            raise _image_error(self.path, "is corrupt: guest offset %d maps to host byte %d, not at a cluster "
                                          "boundary." % (guest, host))
        sub = self.subcluster_size
        pieces = []
        for i in range(32):
            alloc = bitmap >> i & 1
            zero = bitmap >> (32 + i) & 1
            start = guest + i * sub
            if alloc and zero:
                raise _image_error(self.path, "is corrupt: subcluster %d at guest offset %d is marked both "
                                              "allocated and zero." % (i, start))
            if alloc:
                if not host:
                    raise _image_error(self.path, "is corrupt: subcluster %d at guest offset %d is allocated in a "
                                                  "cluster without a host offset." % (i, start))
                kind, where = DATA, host + i * sub
            elif zero:
                kind, where = ZERO, None
            else:
                kind, where = BELOW, None
            pieces.append((start, start + sub, kind, where))
        return pieces

    def runs(self, start, end):
        """``(offset, length, kind, host)`` over ``[start, end)`` (end <= size), in order, not coalesced.

        kind DATA: host is the file offset of ``offset``; COMPRESSED: host is (file offset, compressed length,
        guest offset of the cluster); ZERO: reads zeros; BELOW: unallocated here, read the next layer.
        """
        cbits = self.cluster_bits
        cs = self.cluster_size
        span_bits = cbits + self.l2_bits
        pos = start
        while pos < end:
            l1_index = pos >> span_bits
            table_end = min(end, (l1_index + 1) << span_bits)
            table = self._l2(l1_index)
            if table is None:
                yield pos, table_end - pos, BELOW, None
                pos = table_end
                continue
            while pos < table_end:
                guest = pos & ~(cs - 1)
                index = (pos >> cbits) & (self.l2_entries - 1)
                if self.extended_l2:
                    pieces = self._subclusters(table[2 * index], table[2 * index + 1], guest)
                else:
                    pieces = self._cluster(table[index], guest)
                stop = min(guest + cs, table_end)
                for p_start, p_end, kind, host in pieces:
                    lo = max(p_start, pos)
                    hi = min(p_end, stop)
                    if lo >= hi:
                        continue
                    if kind == DATA:
                        host += lo - p_start
                    yield lo, hi - lo, kind, host
                pos = stop

    def read_into(self, view, host):
        _read_into(self.fd, view, host)

    def decompress(self, coffset, csize, guest):
        """The cluster stored compressed at ``coffset`` (raw deflate), as bytes of the cluster size."""
        data = os.pread(self.fd, csize, coffset)
        try:
            out = zlib.decompressobj(-15).decompress(data, self.cluster_size)
        except zlib.error as exc:
            raise _image_error(self.path, "is corrupt: the compressed cluster at guest offset %d (host byte %d) "
                                          "does not inflate: %s." % (guest, coffset, exc))
        if len(out) != self.cluster_size:
            raise _image_error(self.path, "is corrupt: the compressed cluster at guest offset %d (host byte %d) "
                                          "inflates to %d bytes, not %d."
                               % (guest, coffset, len(out), self.cluster_size))
        return out


# -- VMware sparse extents: an ESXi snapshot's delta ------------------------------------------------------------
SESPARSE_MAGIC = 0xCAFEBABE
SESPARSE_VOLATILE_MAGIC = 0xCAFECAFE
SESPARSE_VERSION = 0x0000000200000001
COWD_MAGIC = b"COWD"
KDMV_MAGIC = b"KDMV"
_SES_GT_ENTRIES = 4096  # a grain table is 64 sectors of u64 entries
_COWD_GT_ENTRIES = 4096  # a vmfsSparse grain table holds 4096 u32 entries
_VMDK_GT_CACHE = 64
_SES_FIELDS = ("magic", "version", "capacity", "grain_size", "grain_table_size", "flags", "reserved1", "reserved2",
               "reserved3", "reserved4", "volatile_header_offset", "volatile_header_size", "journal_header_offset",
               "journal_header_size", "journal_offset", "journal_size", "grain_dir_offset", "grain_dir_size",
               "grain_tables_offset", "grain_tables_size", "free_bitmap_offset", "free_bitmap_size", "backmap_offset",
               "backmap_size", "grains_offset", "grains_size")


def _vmdk_error(path, message, **details):
    details.setdefault("failed_path", path)
    return EvidenceSourceError("The VMDK extent %s %s" % (path, message), **details)


class _VmdkSparseLayer(object):
    """What the two ESXi delta formats share: a grain directory of grain tables, each read on demand.

    A subclass sets ``size``, ``grain_bytes``, ``gt_entries``, ``directory`` (the directory's entries) and
    implements ``_table_offset(entry, index)`` (None: no table) and ``_grain(entry, guest)`` ((kind, host)).
    """

    fmt = "vmdk-sparse"
    subformat = ""

    def __init__(self, path, fd, st):
        self.path = path
        self.fd = fd
        self.st = st
        self.file_size = source_size(fd, st)
        self.backing_file = None
        self.backing_format = None
        self._tables = {}
        self._parse_header()

    def _read(self, length, offset, what):
        return _pread_exact(self.fd, length, offset, self.path, what, "a %s extent" % self.subformat, _vmdk_error)

    def _table(self, index):
        table = self._tables.get(index)
        if table is not None:
            return table
        offset = self._table_offset(self.directory[index] if index < len(self.directory) else 0, index)
        if offset is None:
            return None
        raw = self._read(self.gt_entries * self.entry_bytes, offset, "grain table %d" % index)
        table = struct.unpack("<%d%s" % (self.gt_entries, "Q" if self.entry_bytes == 8 else "I"), raw)
        if len(self._tables) >= _VMDK_GT_CACHE:
            self._tables.clear()
        self._tables[index] = table
        return table

    def runs(self, start, end):
        """``(offset, length, kind, host)`` over ``[start, end)``: DATA (host: file offset), ZERO or BELOW."""
        grain = self.grain_bytes
        span = grain * self.gt_entries
        pos = start
        while pos < end:
            index = pos // span
            table_end = min(end, (index + 1) * span)
            table = self._table(index)
            if table is None:
                yield pos, table_end - pos, BELOW, None
                pos = table_end
                continue
            while pos < table_end:
                guest = pos - pos % grain
                kind, host = self._grain(table[(pos // grain) % self.gt_entries], guest)
                stop = min(guest + grain, table_end)
                if kind == DATA:
                    host += pos - guest
                yield pos, stop - pos, kind, host
                pos = stop

    def read_into(self, view, host):
        _read_into(self.fd, view, host)

    def info(self):
        return {"path": self.path, "format": self.fmt, "subformat": self.subformat, "virtual_size": self.size,
                "grain_size": self.grain_bytes, "backing_file": self.backing_file}


class SeSparseLayer(_VmdkSparseLayer):
    """An SEsparse extent (ESXi 6.5+ on VMFS6, and every delta over 2 TiB): 4 KiB grains, u64 table entries.

    Read as QEMU's vmdk driver reads it (the format is not published): an entry of type 0 reads through to the
    parent, 1 (unmapped by the guest) and 2 (zeroed) read as zeros, 3 holds the grain's number. A journal left to
    replay is refused: the tables may then not hold the last writes.
    """

    subformat = "seSparse"
    entry_bytes = 8

    def _parse_header(self):
        head = self._read(512, 0, "header")
        h = dict(zip(_SES_FIELDS, struct.unpack("<26Q", head[:208])))
        if h["magic"] != SESPARSE_MAGIC:
            raise _vmdk_error(self.path, "is not an SEsparse extent (its first 8 bytes are not the SEsparse magic "
                                         "0xcafebabe).")
        if h["version"] != SESPARSE_VERSION:
            raise _vmdk_error(self.path, "is an SEsparse extent of version 0x%016x; this reader knows 0x%016x."
                              % (h["version"], SESPARSE_VERSION))
        if h["grain_size"] != 8 or h["grain_table_size"] != 64:
            raise _vmdk_error(self.path, "has SEsparse grains of %d sectors and grain tables of %d sectors; this "
                                         "reader knows 8 and 64 (ESXi's)." % (h["grain_size"], h["grain_table_size"]))
        if h["flags"] or h["reserved1"] or h["reserved2"] or h["reserved3"] or h["reserved4"] or any(head[208:]):
            raise _vmdk_error(self.path, "has SEsparse header flags or reserved fields this reader does not know "
                                         "(flags 0x%x)." % h["flags"])
        volatile = self._read(512, h["volatile_header_offset"] * SECTOR, "volatile header")
        vmagic, free_gt, next_txn, replay = struct.unpack("<4Q", volatile[:32])
        if vmagic != SESPARSE_VOLATILE_MAGIC:
            raise _vmdk_error(self.path, "is corrupt: its SEsparse volatile header (sector %d) lacks its magic "
                                         "0xcafecafe." % h["volatile_header_offset"])
        if replay:
            raise _vmdk_error(self.path, "has a journal that was never replayed (its host stopped while changing "
                                         "it): its grain tables may not hold the last writes. Let ESXi open the "
                                         "disk once (it replays the journal) on a copy, never on the evidence.")
        self.header = h
        self.free_gt_number = free_gt
        self.next_txn = next_txn
        self.size = h["capacity"] * SECTOR
        self.grain_bytes = 8 * SECTOR
        self.gt_entries = _SES_GT_ENTRIES
        need = -(-self.size // (self.grain_bytes * self.gt_entries))
        if need > h["grain_dir_size"] * SECTOR // 8:
            raise _vmdk_error(self.path, "is corrupt: its grain directory of %d entries cannot cover its capacity "
                                         "of %d sectors (%d needed)." % (h["grain_dir_size"] * SECTOR // 8,
                                                                         h["capacity"], need))
        raw = self._read(need * 8, h["grain_dir_offset"] * SECTOR, "grain directory") if need else b""
        self.directory = struct.unpack("<%dQ" % need, raw)

    def _table_offset(self, entry, index):
        if not entry:
            return None
        if entry >> 32 != 0x10000000:
            raise _vmdk_error(self.path, "is corrupt: grain directory entry %d is 0x%016x (an allocated entry "
                                         "starts with 0x10000000)." % (index, entry))
        return (self.header["grain_tables_offset"] + (entry & 0xFFFFFFFF) * 64) * SECTOR

    def _grain(self, entry, guest):
        kind = entry >> 60
        if kind == 0:
            if entry:
                raise _vmdk_error(self.path, "is corrupt: the grain at guest offset %d has the entry 0x%016x."
                                  % (guest, entry))
            return BELOW, None
        if kind in (1, 2):
            return ZERO, None
        if kind == 3:
            number = ((entry & 0x0FFF000000000000) >> 48) | ((entry & 0x0000FFFFFFFFFFFF) << 12)
            return DATA, (self.header["grains_offset"] + number * 8) * SECTOR
        raise _vmdk_error(self.path, "is corrupt: the grain at guest offset %d has the entry 0x%016x (type %d)."
                          % (guest, entry, kind))


class CowdLayer(_VmdkSparseLayer):
    """A vmfsSparse ("COWD") extent, ESXi's delta on VMFS5 and older: u32 entries, sector offsets, 0 = parent."""

    subformat = "vmfsSparse"
    entry_bytes = 4

    def _parse_header(self):
        head = self._read(44, 0, "header")
        if head[:4] != COWD_MAGIC:
            raise _vmdk_error(self.path, "is not a vmfsSparse extent (it does not start with COWD).")
        (version, flags, sectors, granularity, l1_offset, l1_size, dummy_file_sectors, dummy_cyl, dummy_heads,
         dummy_spt) = struct.unpack("<10I", head[4:44])
        if version != 1:
            raise _vmdk_error(self.path, "is a vmfsSparse extent of version %d; this reader knows version 1."
                              % version)
        if not granularity or granularity & (granularity - 1) or granularity > 0x200000:
            raise _vmdk_error(self.path, "has grains of %d sectors; a vmfsSparse grain is a power of two sectors."
                              % granularity)
        self.flags = flags
        self.size = sectors * SECTOR
        self.grain_bytes = granularity * SECTOR
        self.gt_entries = _COWD_GT_ENTRIES
        need = -(-self.size // (self.grain_bytes * self.gt_entries))
        if need > l1_size:
            raise _vmdk_error(self.path, "is corrupt: its grain directory of %d entries cannot cover its %d sectors "
                                         "(%d needed)." % (l1_size, sectors, need))
        raw = self._read(need * 4, l1_offset * SECTOR, "grain directory") if need else b""
        self.directory = struct.unpack("<%dI" % need, raw)

    def _table_offset(self, entry, index):
        return entry * SECTOR if entry else None

    def _grain(self, entry, guest):
        return (DATA, entry * SECTOR) if entry else (BELOW, None)


def _open_vmdk_sparse(path, fd, st):
    """The delta extent's class, told by its first bytes."""
    head = os.pread(fd, 8, 0)
    if head[:4] == COWD_MAGIC:
        return CowdLayer(path, fd, st)
    if len(head) == 8 and struct.unpack("<Q", head)[0] == SESPARSE_MAGIC:
        return SeSparseLayer(path, fd, st)
    if head[:4] == KDMV_MAGIC:
        raise _vmdk_error(path, "is a hosted sparse extent (KDMV: VMware Workstation's monolithicSparse or "
                                "stream-optimized), not an ESXi delta; convert it with qemu-img first.")
    raise _vmdk_error(path, "is neither an SEsparse nor a vmfsSparse extent (its first bytes are %s); give the "
                            "data file of a flat disk as raw." % (head[:8].hex() or "empty"))


_FLAT_TYPES = ("VMFS", "FLAT")
_SPARSE_TYPES = {"seSparse": "SESPARSE", "vmfsSparse": "VMFSSPARSE"}


def _read_descriptor(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read(1024 * 1024 + 1)
    except (IOError, OSError) as exc:
        raise EvidenceSourceError("The VMDK descriptor %s cannot be read: %s." % (path, exc.strerror or exc),
                                  failed_path=path)
    if len(data) > 1024 * 1024:
        raise EvidenceSourceError("The file %s is larger than 1 MiB: not a VMware descriptor." % path,
                                  failed_path=path)
    return parse_descriptor(data, path)


def _check_descriptor(layer, desc, descriptor):
    """The descriptor must describe this one extent the way the extent's own header does."""
    if len(desc["extents"]) != 1:
        raise InvalidInputError("The descriptor %s lists %d extents; this reader reads disks of one extent per "
                                "level (ESXi's)." % (descriptor, len(desc["extents"])), failed_path=descriptor)
    extent = desc["extents"][0]
    want = _SPARSE_TYPES.get(layer.subformat) if layer.fmt == "vmdk-sparse" else None
    if layer.fmt == "vmdk-sparse" and (extent["type"] != want or desc["create_type"] != layer.subformat):
        raise InvalidInputError("The descriptor %s says createType %s with a %s extent, but %s is a %s extent."
                                % (descriptor, desc["create_type"], extent["type"], layer.path, layer.subformat),
                                failed_path=descriptor)
    if layer.fmt == "raw" and (extent["type"] not in _FLAT_TYPES or extent["offset"]):
        raise InvalidInputError("The descriptor %s describes a %s extent at offset %d; a raw layer is a flat extent "
                                "from its first byte (VMFS or FLAT, offset 0)."
                                % (descriptor, extent["type"], extent["offset"] or 0), failed_path=descriptor)
    if not extent["file"] or os.path.isabs(extent["file"]):
        raise InvalidInputError("The descriptor %s names its extent as %r; a descriptor beside its extent names it "
                                "by a relative file name." % (descriptor, extent["file"]), failed_path=descriptor)
    size = extent["sectors"] * SECTOR
    if layer.fmt == "vmdk-sparse" and size != layer.size:
        raise InvalidInputError("The descriptor %s gives %d sectors, but its extent %s holds %d."
                                % (descriptor, extent["sectors"], layer.path, layer.size // SECTOR),
                                failed_path=descriptor)
    layer.size = size  # a flat extent's guest-visible size is the descriptor's, whatever the file's length
    layer.descriptor = {"path": descriptor, "cid": desc["cid"], "parent_cid": desc["parent_cid"],
                        "create_type": desc["create_type"], "parent_hint": desc["parent_hint"],
                        "extent_file": extent["file"]}
    layer.backing_file = desc["parent_hint"]


def _coalesce(runs):
    """Merge neighbouring runs that read the same way (zeros; the same layer's contiguous host bytes)."""
    cur = None
    for run in runs:
        if run[1] <= 0:
            continue
        if cur is not None:
            off, length, kind, layer, host = cur
            if run[2] == kind and run[0] == off + length and (
                    kind in (ZERO, BELOW) or (kind == DATA and run[3] == layer and run[4] == host + length)):
                cur = (off, length + run[1], kind, layer, host)
                continue
            yield cur
        cur = run
    if cur is not None:
        yield cur


class Chain(object):
    """The open layers of one disk, top first. Use as a context manager (it closes the files)."""

    def __init__(self, layers):
        self.spec = normalize_layers(layers)
        self.layers = []
        try:
            for layer in self.spec:
                fd, st = open_source(layer["path"])
                try:
                    if layer["format"] == "vmdk-sparse":
                        opened = _open_vmdk_sparse(layer["path"], fd, st)
                    else:
                        opened = (Qcow2Layer if layer["format"] == "qcow2" else RawLayer)(layer["path"], fd, st)
                except BaseException:
                    os.close(fd)
                    raise
                self.layers.append(opened)
                opened.descriptor = None
                if layer.get("descriptor"):
                    _check_descriptor(opened, _read_descriptor(layer["descriptor"]), layer["descriptor"])
            self._check_chain()
        except BaseException:
            self.close()
            raise
        self.size = self.layers[0].size
        self._current = None
        self._cache_key = None
        self._cache = None

    def _check_chain(self):
        seen = {}
        for index, layer in enumerate(self.layers):
            key = (layer.st.st_dev, layer.st.st_ino)
            if key in seen:
                raise InvalidInputError("The file %s appears twice in the chain (also as %s)."
                                        % (layer.path, seen[key]), failed_path=layer.path)
            seen[key] = layer.path
            below = self.layers[index + 1] if index + 1 < len(self.layers) else None
            if layer.fmt == "vmdk-sparse":
                self._check_vmdk_parent(layer, below)
            if layer.fmt != "qcow2":
                continue
            if below is None and layer.backing_file:
                raise InvalidInputError(
                    "The last layer given, %s, names a backing file in its header (%s): the guest saw that file's "
                    "data where this layer has none, so the chain given is incomplete. Add the copy of that backing "
                    "file as the next layer." % (layer.path, layer.backing_file), failed_path=layer.path,
                    header_backing_file=layer.backing_file)
            if below is not None and not layer.backing_file:
                raise InvalidInputError(
                    "The layer %s names no backing file in its header, yet the chain gives %s below it: the guest "
                    "never saw that layer. Give the chain as the VM used it, top first." % (layer.path, below.path),
                    failed_path=layer.path)
            if below is not None and layer.backing_format and layer.backing_format != below.fmt:
                raise InvalidInputError(
                    "The layer %s names a backing file of format %s in its header, but the chain gives %s as %s."
                    % (layer.path, layer.backing_format, below.path, below.fmt), failed_path=below.path)

    @staticmethod
    def _check_vmdk_parent(layer, below):
        """A delta's descriptor names its parent's CID: the level below must be that parent."""
        if below.descriptor is None or layer.descriptor is None:
            if below.fmt == "qcow2":
                raise InvalidInputError("The layer %s is a qcow2 image below the VMDK delta %s; an ESXi delta's "
                                        "parent is a VMDK." % (below.path, layer.path), failed_path=below.path)
            return
        try:
            match = int(layer.descriptor["parent_cid"], 16) == int(below.descriptor["cid"], 16)
        except (TypeError, ValueError):
            match = False
        if not match:
            raise InvalidInputError(
                "The descriptor %s names a parent with CID %s, but the level given below it, %s, has CID %s: that "
                "is not the parent the guest read through (or it changed after the delta was made). Give the "
                "chain as the VM used it, top first."
                % (layer.descriptor["path"], layer.descriptor["parent_cid"], below.descriptor["path"],
                   below.descriptor["cid"]),
                failed_path=below.descriptor["path"])
        if below.size != layer.size:
            raise InvalidInputError("The delta %s is %d bytes but its parent %s is %d: ESXi keeps every level of a "
                                    "disk the same size." % (layer.path, layer.size, below.path, below.size),
                                    failed_path=below.path)

    def close(self):
        for layer in self.layers:
            try:
                os.close(layer.fd)
            except OSError:
                pass
        self.layers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def info(self):
        layers = []
        for layer in self.layers:
            facts = layer.info()
            if layer.descriptor is not None:
                facts["descriptor"] = dict(layer.descriptor)
            layers.append(facts)
        return {"size": self.size, "layers": layers}

    def _map(self, index, start, end):
        """Runs ``(offset, length, kind, layer index, host)`` of ``[start, end)`` as layer ``index`` shows it."""
        if index >= len(self.layers):
            yield start, end - start, ZERO, -1, None
            return
        layer = self.layers[index]
        stop = min(end, layer.size)
        if start < stop:
            pieces = _coalesce((off, length, kind, index, host) for off, length, kind, host in layer.runs(start, stop))
            for off, length, kind, dummy, host in pieces:
                if kind == BELOW:
                    yield from self._map(index + 1, off, off + length)
                else:
                    yield off, length, kind, index, host
        if stop < end:
            begin = max(start, stop)
            yield begin, end - begin, ZERO, -1, None

    def runs(self):
        """Coalesced runs ``(offset, length, kind, layer index, host)`` covering ``[0, size)`` in order."""
        return _coalesce(self._map(0, 0, self.size))

    # -- the source interface of hashing.read_extents ------------------------------------------------------
    def extents(self):
        for run in self.runs():
            self._current = run
            yield run[0], run[1], run[2] != ZERO

    def read_into(self, view, offset):
        """Fill ``view`` with the guest bytes at ``offset`` (inside the run ``extents`` yielded last)."""
        start, dummy, kind, index, host = self._current
        layer = self.layers[index]
        if kind == DATA:
            layer.read_into(view, host + offset - start)
            return
        coffset, csize, guest = host
        if self._cache_key != (index, coffset):
            self._cache = layer.decompress(coffset, csize, guest)
            self._cache_key = (index, coffset)
        begin = offset - guest
        view[:] = self._cache[begin:begin + len(view)]

    def check_unchanged(self):
        for layer in self.layers:
            after = os.fstat(layer.fd)
            if stat.S_ISREG(layer.st.st_mode) and identity(layer.st) != identity(after):
                raise EvidenceSourceError(
                    "The layer %s changed while it was read (size or modification time moved); the digest would "
                    "describe no real state." % layer.path, failed_path=layer.path)


def describe(layers):
    """The chain's virtual size and each layer's facts (format, version, cluster size, header backing name...)."""
    with Chain(layers) as chain:
        return chain.info()


def virtual_size(layers):
    """The guest-visible size in bytes: the top layer's virtual size."""
    with Chain(layers) as chain:
        return chain.size


def iter_extents(layers, chunk=DEFAULT_BLOCK_SIZE):
    """Yield ``(offset, length, data)`` covering the disk in order: ``data`` is bytes (at most ``chunk`` long),
    or None for a run of zeros that was not read (unallocated, zero clusters, holes, past a layer's end)."""
    chunk = max(int(chunk), SECTOR)
    with Chain(layers) as chain:
        for offset, length, is_data in chain.extents():
            if not is_data:
                yield offset, length, None
                continue
            end = offset + length
            while offset < end:
                n = min(chunk, end - offset)
                buf = bytearray(n)
                chain.read_into(memoryview(buf), offset)
                yield offset, n, bytes(buf)
                offset += n
        chain.check_unchanged()


class SinkWriter(object):
    """A consumer of the read that writes every byte, zeros included, to a binary file object or a pipe."""

    wants_holes = True
    name = "sink"

    def __init__(self, sink):
        self.sink = sink
        self.written = 0

    def consume(self, view, offset, is_data):
        total = len(view)
        done = 0
        while done < total:
            n = self.sink.write(view[done:])
            done += total - done if n is None else n
        self.written += total


def hash_stream(chain, algorithms, consumers, chunk):
    hashers = [hashlib.new(alg) for alg in algorithms]
    stats = read_extents(chain, [HashConsumer(h) for h in hashers] + list(consumers), chunk)
    return {"size": stats["size"], "digests": dict((h.name, h.hexdigest()) for h in hashers),
            "data_bytes": stats["data_bytes"], "seconds": round(stats["seconds"], 6)}


def logical_digests(layers, algorithms=("sha256",), sink=None, chunk=DEFAULT_BLOCK_SIZE, consumers=()):
    """Hash the guest-visible byte stream of the chain (every byte, zeros included) in one pass.

    ``sink``: a binary file object or pipe that gets the same stream. ``consumers``: more consumers in the
    shape of ``hashing.read_extents`` (``name``, ``wants_holes``, ``consume(view, offset, is_data)``).
    Returns dict(size, digests {algorithm: hex}, data_bytes (bytes read from the layers), seconds).
    """
    algorithms = normalize_algorithms(algorithms)
    extra = list(consumers) + ([SinkWriter(sink)] if sink is not None else [])
    with Chain(layers) as chain:
        return hash_stream(chain, algorithms, extra, chunk)


def write_raw(layers, dest, algorithms=("sha256",), chunk=DEFAULT_BLOCK_SIZE, mode=DEFAULT_MODE):
    """Write the chain as one raw image at ``dest`` (absolute, must not exist): zeros stay holes.

    Runs of zeros are never written and all-zero 64 KiB pieces of data are skipped too; the file is fsynced,
    its folder too. A failed write removes the partial file. Returns dict(path, size, digests, data_bytes,
    written_bytes, seconds): the digests are of the stream written (sparse or not, the file reads the same).
    """
    algorithms = normalize_algorithms(algorithms)
    if not isinstance(dest, str) or not os.path.isabs(dest):
        raise InvalidInputError("The raw image's path %r is not absolute; give an absolute path." % (dest,))
    dest = os.path.normpath(dest)
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise DestinationError("The folder %s of the raw image does not exist; create it first." % folder,
                               failed_path=dest)
    with Chain(layers) as chain:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise DestinationError("The raw image %s exists already; it is evidence once written and is never "
                                       "overwritten. Move it away or choose another path." % dest, failed_path=dest)
            raise DestinationError("The raw image %s cannot be created: %s." % (dest, exc.strerror),
                                   failed_path=dest)
        ok = False
        try:
            _sized(fd, dest, mode, chain.size)
            writer = DestWriter(fd, dest, skip_zeros=True)
            try:
                result = hash_stream(chain, algorithms, [writer], chunk)
            except BaseException:
                try:
                    writer.wait()
                except Exception:  # pylint: disable=broad-except
                    pass  # the first error is the one raised
                raise
            writer.wait()
            _durable(fd, dest)
            ok = True
        finally:
            os.close(fd)
            if not ok:
                os.unlink(dest)
    fsync_dir(folder)
    result["path"] = dest
    result["written_bytes"] = writer.written
    return result


def _sized(fd, path, mode, size):
    try:
        os.fchmod(fd, mode)
        os.ftruncate(fd, size)
    except OSError as exc:
        raise DestinationError("The raw image %s cannot be given its size of %d bytes: %s. The partial file was "
                               "removed." % (path, size, exc.strerror), failed_path=path)


def _durable(fd, path):
    try:
        os.fsync(fd)
    except OSError as exc:
        raise DestinationError("The raw image %s cannot be made durable (fsync): %s. The partial file was removed."
                               % (path, exc.strerror), failed_path=path)


def _layer_pairs(layers_rel):
    pairs = []
    for layer in normalize_layers(layers_rel):
        if "\0" in layer["path"] or "\0" in layer.get("descriptor", ""):
            raise InvalidInputError("The layer path %r holds a NUL byte." % layer["path"])
        pairs.append((layer["path"], layer["format"]))
    return pairs


def _is_vmdk_chain(layers_rel):
    return any(str(layer.get("format", "")).lower() == "vmdk-sparse" for layer in layers_rel
               if isinstance(layer, dict))


def vmdk_links(layers_rel):
    """For a chain with VMDK deltas: ``[(link, target)]``, each level's descriptor and extent under the names the
    host gave them (``<level>/<name>``), since a descriptor names its extent and QEMU finds it by that name; the
    copies in the case folder carry other names. ``layers_rel`` items need ``descriptor`` and ``extent_file``."""
    links = []
    for index, layer in enumerate(layers_rel):
        descriptor = layer.get("descriptor")
        extent = layer.get("extent_file")
        if not descriptor or not extent:
            raise InvalidInputError("Level %d of the VMDK chain (%s) needs its descriptor and the extent name the "
                                    "descriptor gives." % (index, layer.get("path")))
        for name in (os.path.basename(descriptor), extent):
            if not name or "/" in name or name in (".", "..") or "\0" in name:
                raise InvalidInputError("The VMDK name %r cannot be a file name." % (name,))
        if os.path.basename(descriptor) == extent:
            raise InvalidInputError("The descriptor %s names itself as its extent." % descriptor)
        links.append(("%d/%s" % (index, os.path.basename(descriptor)), descriptor))
        links.append(("%d/%s" % (index, extent), layer["path"]))
    return links


def qemu_json(layers_rel):
    """A ``json:{...}`` descriptor of the chain for QEMU, with each layer's backing given explicitly.

    The paths are used as given (relative to the folder the command runs in); no header's backing path is
    followed: every layer names the next as its ``backing``, and the last layer's ``backing`` is null. A chain with
    VMDK deltas opens each level through its descriptor (QEMU reads a delta only over a VMDK parent whose CID
    matches), under the names of ``vmdk_links``.
    """
    node = None
    if _is_vmdk_chain(layers_rel):
        _layer_pairs(layers_rel)
        for link, dummy in reversed(vmdk_links(layers_rel)[0::2]):
            node = {"driver": "vmdk", "file": {"driver": "file", "filename": link}, "backing": node}
    else:
        for path, fmt in reversed(_layer_pairs(layers_rel)):
            node = {"driver": fmt, "file": {"driver": "file", "filename": path}, "backing": node}
    node["read-only"] = True
    return "json:" + json.dumps(node, separators=(",", ":"), ensure_ascii=True)


def open_command(layers_rel, out_name):
    """The exact shell command, run in the case folder, that writes the chain as a raw image ``out_name``.

    For a chain with VMDK deltas it first links each level's copies under the host's names into a temporary folder
    (nothing in the case folder changes), runs ``qemu-img`` there and removes the folder.
    """
    if not out_name or "\0" in str(out_name):
        raise InvalidInputError("The output name %r of the qemu-img command is empty or holds a NUL byte."
                                % (out_name,))
    if not _is_vmdk_chain(layers_rel):
        parts = ("qemu-img", "convert", "-O", "raw", qemu_json(layers_rel), str(out_name))
        return " ".join(shlex.quote(part) for part in parts)
    links = vmdk_links(layers_rel)
    levels = sorted(set(link.split("/", 1)[0] for link, dummy in links), key=int)
    steps = ['d="$(mktemp -d)"', 'mkdir %s' % " ".join('"$d/%s"' % level for level in levels)]
    steps.extend('ln -s "$PWD/"%s "$d/"%s' % (shlex.quote(target), shlex.quote(link)) for link, target in links)
    convert = " ".join(shlex.quote(part) for part in ("qemu-img", "convert", "-O", "raw", qemu_json(layers_rel)))
    out = str(out_name)
    out = shlex.quote(out) if os.path.isabs(out) else '"$OLDPWD/"%s' % shlex.quote(out)
    steps.append('(cd "$d" && %s %s)' % (convert, out))
    return '%s; rc=$?; rm -rf "$d"; [ "$rc" = 0 ]' % " && ".join(steps)
