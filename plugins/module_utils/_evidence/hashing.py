# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hash files and block devices in one read with several algorithms at once.

One reader fills buffers from a small pool; every algorithm has its own thread that
hashes each buffer (hashlib releases the GIL on large updates, so the algorithms really
run in parallel); a buffer goes back to the pool once every algorithm has hashed it.
With a single algorithm there is no thread at all: read and hash in one loop (unless the
caller asks for a reading thread, to overlap cold reads with hashing). ``read_extents`` is
that one read, of any source that yields ``(offset, length, is_data)`` extents and reads into
buffers (``FileSource`` here, a datastore file over HTTPS in ``_vsphere.fetch``); its consumers
are hashers here, and hashers plus a destination writer in ``copy`` (one fan-out for both).

Holes of sparse files are hashed as zeros without being read. Sources are opened
read-only, with O_NOATIME where allowed, and a regular file whose size, inode or mtime
changes while it is hashed is an error: its digest would describe no real state.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import heapq
import mmap
import os
import queue
import stat
import threading
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    ChecksumFileError,
    EvidenceSourceError,
    HashMismatchError,
    InvalidInputError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import (
    iter_extents,
    open_noatime,
    open_source,
    source_size,
)

SUPPORTED_ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
# hex digest length -> algorithm, to read sha256sum/md5sum-style files and bare digests
ALGORITHM_BY_HEX_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
DEFAULT_BLOCK_SIZE = 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
_POOL_DEPTH = 4  # buffers in flight per multi-algorithm hash
# Holes are hashed from one zero buffer this large: fewer, larger updates (and, threaded, fewer
# hand-overs). Untouched, calloc'ed memory maps the kernel's zero page: it costs no RAM.
HOLE_CHUNK = 16 * 1024 * 1024
# A read-back carries the hash state over the source's holes of at least SKIP_MIN bytes that the copy
# has too, the SKIP_KEPT longest of them (two hash states per hole and algorithm).
SKIP_MIN = 4 * 1024 * 1024
SKIP_KEPT = 4096
SKIP = "skip"  # the third kind of extent: zeros the consumers may skip (see CarryingHashConsumer)
_ZEROS = []


def _zeros():
    """One shared all-zero buffer of HOLE_CHUNK bytes, made on first use (the kernel's zero page: no RAM)."""
    if not _ZEROS:
        _ZEROS.append(memoryview(bytes(HOLE_CHUNK)))
    return _ZEROS[0]


_HEX = frozenset("0123456789abcdef")


def normalize_algorithms(algorithms):
    """Return the algorithms lower-cased, de-duplicated, in the given order; reject unknown ones."""
    result = []
    for name in algorithms:
        alg = str(name).strip().lower().replace("-", "")
        if alg not in SUPPORTED_ALGORITHMS:
            raise InvalidInputError("The hash algorithm %r is not supported; use one of %s."
                                    % (name, ", ".join(SUPPORTED_ALGORITHMS)))
        if alg not in result:
            result.append(alg)
    if not result:
        raise InvalidInputError("At least one hash algorithm is needed.")
    return result


def normalize_digest(digest, algorithm=None):
    """Lower-case hex digest checked for form; infer the algorithm from its length if not given."""
    value = str(digest).strip().lower()
    if not value or not set(value) <= _HEX:
        raise InvalidInputError("%r is not a hexadecimal digest." % (digest,))
    inferred = ALGORITHM_BY_HEX_LENGTH.get(len(value))
    if algorithm is None:
        if inferred is None:
            raise InvalidInputError("The digest %r has %d hex digits, which matches none of %s."
                                    % (digest, len(value), ", ".join(SUPPORTED_ALGORITHMS)))
        return inferred, value
    algorithm = normalize_algorithms([algorithm])[0]
    if inferred != algorithm:
        raise InvalidInputError("The digest %r is not a %s digest (%d hex digits)." % (digest, algorithm, len(value)))
    return algorithm, value


class HashConsumer(object):
    """Feeds every block, holes included (as zeros), to one hashlib object.

    With ``remember_holes``, it also keeps the hash state at both ends of the source's longest holes
    (``holes()``): a read-back of the copy can then carry the state over a hole that the copy has
    too instead of hashing its zeros again (``CarryingHashConsumer``). Only holes of ``SKIP_MIN``
    bytes or more are kept, and only the ``SKIP_KEPT`` longest: the memory stays bounded whatever
    the size. Every algorithm sees the same blocks, so all keep the same holes.
    """

    wants_holes = True

    def __init__(self, hasher, remember_holes=False):
        self.hasher = hasher
        self.name = "hash-%s" % hasher.name
        self._holes = [] if remember_holes else None  # a heap of (length, start, end, state at start, at end)
        self._open = None  # [start, end, state at start] of the hole being hashed

    def consume(self, view, offset, is_data):
        if self._holes is not None:
            self._note(offset, len(view), is_data)
        self.hasher.update(view)

    def _note(self, offset, length, is_data):
        if self._open is not None and (is_data or self._open[1] != offset):
            self._close()
        if not is_data:
            if self._open is None:
                self._open = [offset, offset, self.hasher.copy()]
            self._open[1] = offset + length

    def _close(self):
        start, end, state = self._open
        self._open = None
        if end - start < SKIP_MIN:
            return
        item = (end - start, start, end, state, self.hasher.copy())
        if len(self._holes) < SKIP_KEPT:
            heapq.heappush(self._holes, item)
        elif item[:2] > self._holes[0][:2]:
            heapq.heapreplace(self._holes, item)

    def holes(self):
        """``{start: (end, state at start, state at end)}`` of the holes kept (after the read)."""
        if self._holes is None:
            return {}
        if self._open is not None:
            self._close()
        return dict((start, (end, first, last)) for dummy, start, end, first, last in self._holes)


class CarryingHashConsumer(HashConsumer):
    """Hashes a copy read back, carrying the source read's hash state over the holes they share.

    ``holes`` is ``HashConsumer.holes()`` of the source's read with the same algorithm. A range
    handed to ``skip`` reads as zeros in the copy (its filesystem reports a hole there). If the
    state reached so far equals the source's at the start of the same hole (their digests are
    equal, so the bytes hashed up to there are), the state at its end is the source's, which
    hashed the same zeros: it is taken over (``carried`` counts those bytes). Otherwise the zeros
    are hashed. Either way the digest is that of the copy's whole logical content.
    """

    def __init__(self, hasher, holes):
        HashConsumer.__init__(self, hasher)
        self._source_holes = holes
        self.carried = 0

    def skip(self, offset, length):
        hole = self._source_holes.get(offset)
        if hole is not None and hole[0] == offset + length and self.hasher.digest() == hole[1].digest():
            self.hasher = hole[2].copy()
            self.carried += length
            return
        _feed_zeros(self, length, offset)


def _feed_zeros(consumer, length, offset):
    """Hand ``length`` zeros from ``offset`` on to a consumer, as holes, from the shared zero buffer."""
    zeros = _zeros()
    done = 0
    while done < length:
        n = min(length - done, len(zeros))
        consumer.consume(zeros[:n], offset + done, False)
        done += n


def _skip(consumer, length, offset):
    """Zeros the consumer may skip (``CarryingHashConsumer.skip``); one without ``skip`` is fed them."""
    if hasattr(consumer, "skip"):
        consumer.skip(offset, length)
    else:
        _feed_zeros(consumer, length, offset)


class _Ticket(object):
    """One block shared by all consumers; its buffer is recycled when the last one is done."""

    __slots__ = ("buf", "length", "offset", "is_data", "_left", "_lock", "_pool")

    def __init__(self, buf, length, offset, is_data, consumers, pool):
        self.buf = buf
        self.length = length
        self.offset = offset
        self.is_data = is_data
        self._left = consumers
        self._lock = threading.Lock()
        self._pool = pool  # None for the shared zero buffer: nothing to recycle

    def release(self):
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last and self._pool is not None:
            self._pool.put(self.buf)


class _SerialSink(object):
    """One consumer: it runs in the reading thread."""

    def __init__(self, consumers, block_size):
        self._consumers = consumers
        self._buf = bytearray(block_size)
        self._zero = memoryview(bytes(max(block_size, HOLE_CHUNK)))

    def buffer(self):
        return self._buf

    def submit(self, buf, length, offset):
        view = memoryview(buf)[:length]
        for c in self._consumers:
            c.consume(view, offset, True)

    def submit_zeros(self, length, offset):
        view = self._zero[:length]
        for c in self._consumers:
            if c.wants_holes:
                c.consume(view, offset, False)

    def submit_skip(self, length, offset):
        for c in self._consumers:
            if c.wants_holes:
                _skip(c, length, offset)

    def finish(self):
        pass

    def close(self):
        pass


class _ThreadedSink(object):
    """Several consumers (hash algorithms, a destination writer): one thread each, fed the same buffers.

    The reader fills buffers from a small pool; each filled buffer goes to every consumer's
    queue in order and back to the pool when the last consumer is done with it. A consumer
    that does not want holes (a writer) never sees them. The first error of any consumer
    stops the others and is raised in the reading thread.
    """

    def __init__(self, consumers, block_size, depth=_POOL_DEPTH):
        self._pool = queue.Queue()
        # anonymous maps: reading 982 MiB into fresh ones took 0.17 s of CPU, into fresh bytearrays 0.7 s (issue 14)
        for dummy in range(depth):
            self._pool.put(mmap.mmap(-1, block_size))
        self._zero = bytes(max(block_size, HOLE_CHUNK))
        self._queues = [queue.Queue() for dummy in consumers]
        self._hole_queues = [q for c, q in zip(consumers, self._queues) if c.wants_holes]
        self._errors = []
        self._abort = False
        self._threads = []
        for c, q in zip(consumers, self._queues):
            t = threading.Thread(target=self._work, args=(c, q), name="vmcollect-%s" % c.name)
            t.daemon = True
            t.start()
            self._threads.append(t)

    def _work(self, consumer, q):
        while True:
            ticket = q.get()
            if ticket is None:
                return
            try:
                if self._errors or self._abort:
                    pass
                elif ticket.is_data is SKIP:
                    _skip(consumer, ticket.length, ticket.offset)
                else:
                    consumer.consume(memoryview(ticket.buf)[:ticket.length], ticket.offset, ticket.is_data)
            except Exception as exc:  # a writer's OSError, a VmcollectError: raised by the reader
                self._errors.append(exc)
            finally:
                ticket.release()

    def _raise_worker_error(self):
        if self._errors:
            raise self._errors[0]

    def buffer(self):
        while True:
            self._raise_worker_error()  # consumers that failed skip their work: stop reading
            try:
                return self._pool.get(timeout=1.0)
            except queue.Empty:
                pass

    def submit(self, buf, length, offset):
        ticket = _Ticket(buf, length, offset, True, len(self._queues), self._pool)
        for q in self._queues:
            q.put(ticket)

    def submit_zeros(self, length, offset):
        if self._hole_queues:
            ticket = _Ticket(self._zero, length, offset, False, len(self._hole_queues), None)
            for q in self._hole_queues:
                q.put(ticket)

    def submit_skip(self, length, offset):
        if self._hole_queues:
            ticket = _Ticket(None, length, offset, SKIP, len(self._hole_queues), None)
            for q in self._hole_queues:
                q.put(ticket)

    def finish(self):
        """Let every consumer do all the work queued, then raise the first error, if any."""
        self._stop()
        self._raise_worker_error()

    def close(self):
        """Stop without doing the work still queued (the read failed or was interrupted)."""
        self._abort = True
        self._stop()

    def _stop(self):
        if not self._threads:
            return
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        self._threads = []


def _read_exact(fd, offset, view, path, verb="hashed"):
    """Fill ``view`` from ``offset``; a short file is an error (it shrank while read)."""
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise EvidenceSourceError(
                "The file %s ended at byte %d while being %s; it changed under the read."
                % (path, offset + done, verb), failed_path=path)
        done += n


def identity(st):
    """What must not move while a regular file is read: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileSource(object):
    """An open regular file or block device as a source of ``read_extents``.

    A source has a ``size``, ``extents()`` (``(offset, length, is_data)`` ranges covering
    ``[0, size)`` in order; holes read as zeros), ``read_into(view, offset)`` (fill ``view``
    exactly, or raise) and ``check_unchanged()`` (raise if the source moved while it was read).
    ``_vsphere.fetch`` has a datastore file over HTTPS in the same shape.
    """

    def __init__(self, fd, st, path, sparse=True, verb="hashed"):
        self.fd = fd
        self.st = st
        self.path = path
        self.sparse = sparse
        self.verb = verb
        self.size = source_size(fd, st)

    def extents(self):
        return iter_extents(self.fd, self.size) if self.sparse else [(0, self.size, True)]

    def read_into(self, view, offset):
        _read_exact(self.fd, offset, view, self.path, self.verb)

    def check_unchanged(self):
        st_after = os.fstat(self.fd)
        if stat.S_ISREG(self.st.st_mode) and identity(self.st) != identity(st_after):
            raise EvidenceSourceError(
                "The file %s changed while it was being %s (size or modification time moved); "
                "its digest would describe no real state." % (self.path, self.verb), failed_path=self.path)


def read_extents(source, consumers, block_size=DEFAULT_BLOCK_SIZE, progress=None, threaded=False):
    """Read a source (``FileSource`` or alike) once, in order, feeding every block to every consumer.

    ``consumers`` have ``name``, ``wants_holes`` and ``consume(view, offset, is_data)``; with
    one consumer it runs in the reading thread (unless ``threaded``: then reads from a cold
    disk overlap the hashing), with several each gets a thread of its own fed from the same
    buffers. Holes are handed, as zeros and without a read, to consumers
    that want them. An extent of the kind ``SKIP`` instead of a bool (``ReadBackSource``) is zeros
    too, handed whole to the ``skip(offset, length)`` of consumers that have one (the others get
    the zeros). ``progress(done_bytes, total_bytes)`` is called after every block.
    ``source.check_unchanged()`` runs after the read.

    Returns a dict: size, data_bytes (bytes read), hole_bytes (bytes not read), seconds.
    """
    block_size = max(int(block_size), MIN_BLOCK_SIZE)
    size = source.size
    sink = (_ThreadedSink if threaded or len(consumers) > 1 else _SerialSink)(consumers, block_size)
    data_bytes = hole_bytes = 0
    started = time.monotonic()
    try:
        for offset, length, is_data in source.extents():
            end = offset + length
            if is_data is SKIP:
                sink.submit_skip(length, offset)
                hole_bytes += length
                offset = end
                if progress is not None:
                    progress(offset, size)
            while offset < end:
                n = min(block_size if is_data else max(block_size, HOLE_CHUNK), end - offset)
                if is_data:
                    buf = sink.buffer()
                    source.read_into(memoryview(buf)[:n], offset)
                    sink.submit(buf, n, offset)
                    data_bytes += n
                else:
                    sink.submit_zeros(n, offset)
                    hole_bytes += n
                offset += n
                if progress is not None:
                    progress(offset, size)
        sink.finish()
    finally:
        sink.close()
    seconds = time.monotonic() - started
    source.check_unchanged()
    return {"size": size, "data_bytes": data_bytes, "hole_bytes": hole_bytes, "seconds": seconds}


def read_source(fd, st_before, path, consumers, block_size=DEFAULT_BLOCK_SIZE, sparse=True, progress=None,
                verb="hashed", threaded=False):
    """``read_extents`` of an open regular file or block device (see there and ``FileSource``).

    A regular file whose identity (device, inode, size, mtime) moved meanwhile is an error.
    """
    return read_extents(FileSource(fd, st_before, path, sparse, verb), consumers, block_size, progress, threaded)


def hash_result(path, hashers, stats):
    """The result dict of hash_path from hashlib objects and read_source's stats."""
    seconds = stats["seconds"]
    return {
        "path": path,
        "size": stats["size"],
        "digests": dict((h.name, h.hexdigest()) for h in hashers),
        "seconds": round(seconds, 6),
        "mib_per_s": round(stats["size"] / 1048576.0 / seconds, 1) if seconds > 0 else None,
        "data_bytes": stats["data_bytes"],
        "hole_bytes": stats["hole_bytes"],
    }


def hash_path(path, algorithms=("sha256",), block_size=DEFAULT_BLOCK_SIZE, sparse=True, progress=None,
              threaded=False):
    """Hash one regular file or block device in a single read.

    Returns a dict: path, size, digests {algorithm: hex}, seconds, mib_per_s,
    data_bytes (bytes actually read) and hole_bytes (bytes hashed as zeros without a read).
    ``progress(done_bytes, total_bytes)`` is called after every block, if given.
    ``threaded`` reads in a thread of its own even for one algorithm (for cold reads).
    """
    algorithms = normalize_algorithms(algorithms)
    fd, st = open_source(path)
    try:
        hashers = [hashlib.new(alg) for alg in algorithms]
        stats = read_source(fd, st, path, [HashConsumer(h) for h in hashers], block_size, sparse, progress,
                            threaded=threaded)
    finally:
        os.close(fd)
    return hash_result(path, hashers, stats)


def _unescape_gnu(name):
    """Undo coreutils' escaping of a file name (a line that starts with a backslash)."""
    out = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_checksum_text(text, source="checksum file"):
    """Parse sha256sum/md5sum/sha1sum/sha512sum output (text or binary mode) and BSD-tag lines.

    Returns a list of ``(name, algorithm, hexdigest)`` in file order. Blank lines and lines
    starting with ``#`` are skipped; anything else that is not a checksum line is an error.
    """
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        try:
            if " (" in body and ") = " in body and body.split(" (", 1)[0].isalnum():
                # BSD tag style: SHA256 (name) = digest
                tag, rest = body.split(" (", 1)
                name, digest = rest.rsplit(") = ", 1)
                algorithm, digest = normalize_digest(digest, tag)
            else:
                digest, sep, name = body.partition(" ")
                if not sep or not name or name[0] not in " *":
                    raise ValueError("expected '<digest>  <name>'")
                name = name[1:]
                algorithm, digest = normalize_digest(digest)
        except ValueError as exc:
            raise ChecksumFileError(
                "Line %d of %s is not a checksum line (%s): %r" % (lineno, source, exc, line[:200]),
                checksum_file=source, line=lineno)
        if escaped:
            name = _unescape_gnu(name)
        if not name:
            raise ChecksumFileError("Line %d of %s names no file." % (lineno, source),
                                    checksum_file=source, line=lineno)
        entries.append((name, algorithm, digest))
    return entries


def read_checksum_file(path):
    """Read a checksum file; relative names are resolved against the file's own folder.

    Returns ``{absolute_path: {algorithm: hexdigest}}`` in file order.
    """
    try:
        with os.fdopen(open_noatime(path), "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except (IOError, OSError) as exc:
        raise ChecksumFileError("The checksum file %s cannot be read: %s." % (path, exc.strerror),
                                checksum_file=path)
    base = os.path.dirname(os.path.abspath(path))
    expected = {}
    for name, algorithm, digest in parse_checksum_text(text, path):
        full = os.path.normpath(os.path.join(base, name))
        known = expected.setdefault(full, {})
        if known.get(algorithm, digest) != digest:
            raise ChecksumFileError("The checksum file %s lists two different %s digests for %s."
                                    % (path, algorithm, name), checksum_file=path)
        known[algorithm] = digest
    return expected


def absolute(path):
    """The one spelling of a path used to match files, expectations and checksum lines.

    Paths must be absolute: on a remote host the module's working directory is whatever
    the connection left (the login's home), so a relative path would name an arbitrary file.
    """
    if not os.path.isabs(path):
        raise InvalidInputError("The path %s is relative; give an absolute path." % path, failed_path=path)
    return os.path.normpath(path)


def normalize_expected(expected):
    """``{path: digest | {algorithm: digest}}`` -> ``{abs path: {algorithm: digest}}``."""
    result = {}
    for path, value in (expected or {}).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        digests = {}
        for algorithm, digest in items:
            alg, hexd = normalize_digest(digest, algorithm)
            digests[alg] = hexd
        result[absolute(path)] = digests
    return result


def collect_expected(inline=None, checksum_file=None, paths=()):
    """Merge inline expectations with a checksum file into ``{abs path: {algorithm: digest}}``.

    With ``paths``, only their lines of the checksum file count, and each must be listed.
    The two sources must not disagree about a digest.
    """
    expected = normalize_expected(inline)
    if not checksum_file:
        return expected
    absolute(checksum_file)
    listed = read_checksum_file(checksum_file)
    wanted = [absolute(p) for p in paths or ()]
    for path, full in zip(paths or (), wanted):
        if full not in listed:
            raise ChecksumFileError("The checksum file %s lists no digest for %s." % (checksum_file, path),
                                    checksum_file=checksum_file, failed_path=path)
    for full, digests in listed.items():
        if wanted and full not in wanted:
            continue
        mine = expected.setdefault(full, {})
        for algorithm, digest in digests.items():
            if mine.get(algorithm, digest) != digest:
                raise InvalidInputError("The expected %s digest for %s differs between the expected option and %s."
                                        % (algorithm, full, checksum_file), failed_path=full)
            mine[algorithm] = digest
    return expected


def compare(result, expected_digests):
    """Add ``verified`` and ``checked`` to a hash result; return the list of mismatch sentences."""
    mismatches = []
    for algorithm in sorted(expected_digests):
        want = expected_digests[algorithm]
        got = result["digests"].get(algorithm)
        if got != want:
            mismatches.append("%s: %s expected %s, got %s" % (result["path"], algorithm, want, got))
    result["checked"] = sorted(expected_digests)
    result["verified"] = not mismatches
    return mismatches


def check_readable(paths):
    """Fail before any long read if a path is missing, unreadable or of the wrong type."""
    for path in paths:
        fd, dummy = open_source(path)
        os.close(fd)


def _file_progress(progress, index, paths):
    """hash_path's ``progress(done, total)`` for the ``index``-th of ``paths``, as ``progress(phase, done, total,
    path)``; None without ``progress``."""
    if progress is None:
        return None
    phase = "hash %d/%d" % (index + 1, len(paths))
    return lambda done, total: progress(phase, done, total, paths[index])


def hash_and_verify(paths, algorithms=("sha256",), expected=None, block_size=DEFAULT_BLOCK_SIZE, progress=None):
    """Hash ``paths`` (each in one read) and compare with ``expected`` where given.

    ``expected`` is ``{abs path: {algorithm: digest}}``; any algorithm it names is hashed
    too. Paths that ``expected`` lists but ``paths`` does not are added. Raises
    HashMismatchError naming every file that differs (with all results in ``details``).
    ``progress(phase, done, total, path)`` is called after every block, the phase naming the
    file's place (``hash 2/3``).
    """
    algorithms = normalize_algorithms(algorithms)
    expected = expected or {}
    ordered = []
    for path in list(paths or ()) + list(expected):
        full = absolute(path)
        if full not in ordered:
            ordered.append(full)
    if not ordered:
        raise EvidenceSourceError("No path to hash was given.")
    check_readable(ordered)
    results = []
    mismatches = []
    for index, path in enumerate(ordered):
        want = expected.get(path, {})
        algs = algorithms + [a for a in SUPPORTED_ALGORITHMS if a in want and a not in algorithms]
        result = hash_path(path, algs, block_size=block_size, progress=_file_progress(progress, index, ordered))
        if want:
            mismatches.extend(compare(result, want))
        else:
            result["checked"] = []
            result["verified"] = None
        results.append(result)
    if mismatches:
        failed = sum(1 for r in results if r["verified"] is False)
        raise HashMismatchError(
            "Hash mismatch for %d of %d file(s): %s." % (failed, len(results), "; ".join(mismatches)),
            files=results, mismatches=mismatches)
    return results
