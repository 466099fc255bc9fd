# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Forensic copy of one file or block device: sparse, hashed in the same read, verified, resumable.

One read of the source (``hashing.read_extents``) feeds the hash threads and a destination
writer from the same buffers. Holes are never read and never written: the destination is
truncated to its final size and only data extents are written, so holes stay holes. The
source is a local file here (``hashing.FileSource``); ``_vsphere.fetch`` gives the same
engine a datastore file read over HTTPS (its all-zero blocks are not written either).

On the destination side:

* the copy goes to ``<dest>.partial``; a sidecar ``<dest>.partial.json`` records the source's
  identity and ``copied_upto``, the offset below which the partial file is complete (updated
  after an fdatasync every ``checkpoint_bytes`` of data written);
* a rerun with the same source identity resumes: the source is still read and hashed whole
  (a digest cannot be saved half-way), but the complete prefix is not written again;
* when the copy is written and fsynced, its cached pages are dropped and it is read back from
  storage; only if its digests equal the source's is it renamed to ``<dest>``. A copy that fails
  verification (against the source, or the source against ``expected``) is deleted with its
  sidecar: nothing is left that looks verified, and no rerun resumes from a bad prefix.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import stat
import threading
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    HashMismatchError,
    InvalidInputError,
    VmcollectError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, write_atomic
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import (
    DEFAULT_BLOCK_SIZE,
    SKIP,
    SUPPORTED_ALGORITHMS,
    CarryingHashConsumer,
    FileSource,
    HashConsumer,
    absolute,
    hash_result,
    identity,
    normalize_algorithms,
    normalize_digest,
    read_extents,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.space import allocated_bytes, free_bytes, image_need
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import (
    data_runs,
    iter_extents,
    open_source,
    source_size,
)

MIB = 1024 * 1024
# The read-back comes from the disk, not from the cache: reads of 4 MiB took 1.16 s for 973 MiB of data here, of
# 1 MiB 1.75 s and of 8 MiB 1.44 s (medians of 5, issue 14). Four of them are in flight at most.
READ_BACK_BLOCK_SIZE = 4 * MIB
PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".partial.json"
SIDECAR_FORMAT = 1
CHECKPOINT_BYTES = 64 * MIB  # data written between two fdatasync + sidecar updates
# Data written between two requests to the kernel to start writing the copy back (POSIX_FADV_DONTNEED on
# what was written since: Linux starts the writeback and does not wait for it). The disk then writes while
# the copy goes on, instead of in bursts at each checkpoint's fdatasync. 0: leave it to the kernel.
WRITEBACK_BYTES = 8 * MIB
# The writer's thread runs at this nice value: where the CPU is short (hashing sha256 and md5 and writing on two
# cores), the hash threads go first and the writer uses what they leave; it waits for its disk anyway when the disk is
# the slower. Measured (issue 14, 982 MiB qcow2 onto tmpfs, sha256+md5, medians of 7): 2.28 s against 2.44 s, hashing
# alone 2.01 s; onto the ext4 disk 2.86 s against 2.88 s. 0 leaves it alone.
WRITER_NICE = 5
PROGRESS_INTERVAL = 1.0  # seconds between two rewrites of the progress file
DEFAULT_MODE = 0o640


def parse_mode(value):
    """A file mode from an octal string (``'0640'``) or an int (YAML's unquoted ``0640``)."""
    if isinstance(value, bool):
        raise InvalidInputError("The mode %r is not an octal file mode such as '0640'." % (value,))
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip()
        if not text or any(c not in "01234567" for c in text):
            raise InvalidInputError("The mode %r is not an octal file mode such as '0640'." % (value,))
        mode = int(text, 8)
    if mode < 0 or mode > 0o7777:
        raise InvalidInputError("The mode %r is not an octal file mode such as '0640'." % (value,))
    return mode


def normalize_expected_digests(expected):
    """``{algorithm: digest}`` -> normalized, the algorithm checked against the digest's length."""
    result = {}
    for algorithm, digest in (expected or {}).items():
        alg, value = normalize_digest(digest, algorithm)
        result[alg] = value
    return result


def read_sidecar(path):
    """The sidecar of an interrupted copy as a dict, or None when missing or unreadable."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (IOError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def scan_extents(fd, size):
    """``(data_bytes, hole_bytes)`` of an open source, from SEEK_DATA/SEEK_HOLE alone (no read)."""
    data = 0
    for dummy, length, is_data in iter_extents(fd, size):
        if is_data:
            data += length
    return data, size - data


class ProgressFile(object):
    """Rewrites a JSON progress file (atomic replace) at most once per ``interval`` seconds.

    Its folder must exist; write errors later on are ignored: the copy matters more than
    its progress report.
    """

    def __init__(self, path, src, dest, interval=None):
        if not os.path.isdir(os.path.dirname(path)):
            raise InvalidInputError("The folder of the progress file %s does not exist." % path, failed_path=path)
        self.path = path
        self.src = src
        self.dest = dest
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self._last = None
        self._phase = None
        self._phase_started = None

    def start(self, phase, total, data_bytes):
        self._phase = phase
        self._phase_started = time.monotonic()
        self._total = total
        self._data_bytes = data_bytes
        self.update(0, force=True)

    def update(self, done, force=False):
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._phase_started
        rate = done / elapsed if elapsed > 0 else 0.0
        state = {
            "phase": self._phase,
            "src": self.src,
            "dest": self.dest,
            "bytes_done": done,
            "bytes_total": self._total,
            "data_bytes": self._data_bytes,
            "rate_mib_s": round(rate / MIB, 1),
            "eta_s": round((self._total - done) / rate, 1) if rate > 0 else None,
            "updated": round(time.time(), 3),
        }
        try:
            write_atomic(self.path, json.dumps(state, sort_keys=True) + "\n", durable=False)
        except (IOError, OSError):
            pass

    def finish(self, done):
        self._phase = "done"
        self.update(done, force=True)

    def report(self, phase, done, total, src=None, dest=None):
        """``update`` for a caller that only says its phase, bytes done and total, for one source (and destination)
        after another: a new phase, source or destination starts a new rate and ETA."""
        if (src, dest) != (self.src, self.dest):
            self.src, self.dest = src, dest
            self._phase = None
        if phase != self._phase:
            self.start(phase, total, None)
        self._total = total
        self.update(done)


def progress_file_for(path, src, dest, check_mode=False):
    """The ProgressFile of a module's ``progress_file`` option, or None (none given, or check mode, which writes
    nothing)."""
    if check_mode or not path:
        return None
    return ProgressFile(absolute(path), src, dest)


class Reporter(object):
    """Fans the reading thread's ``(done, total)`` out to a progress file and a caller's callback."""

    def __init__(self, progress_file, callback):
        self.progress_file = progress_file
        self.callback = callback

    def phase(self, name, total, data_bytes):
        if self.progress_file is not None:
            self.progress_file.start(name, total, data_bytes)

        def report(done, size):
            if self.progress_file is not None:
                self.progress_file.update(done)
            if self.callback is not None:
                self.callback(name, done, size)

        return report

    def done(self, size):
        if self.progress_file is not None:
            self.progress_file.finish(size)


class DestWriter(object):
    """A consumer of the source read that writes data blocks to the partial file.

    Holes are never handed to it (``wants_holes`` False): the partial file was truncated
    to its final size, so they read as zeros without a write. Blocks that end at or below
    ``skip_below`` (the complete prefix of a resumed copy) are not written again. With
    ``skip_zeros``, the all-zero 64 KiB pieces of data blocks are not written either (a
    source that cannot tell its holes, such as a file read over HTTPS); ``zero_bytes``
    counts them.

    Every ``checkpoint_bytes`` of data written, a checkpoint thread fdatasyncs the file and
    then records with ``checkpoint(copied_upto)`` the offset the writer had reached when the
    sync started (everything below it was written before, so the sync made it durable). The
    writer does not wait for it: a sync never stalls the read and the hashing. One checkpoint
    runs at a time; ``wait()`` joins it and raises its error, if any.
    """

    wants_holes = False
    name = "writer"

    def __init__(self, fd, path, skip_below=0, checkpoint_bytes=CHECKPOINT_BYTES, checkpoint=None, skip_zeros=False):
        self.fd = fd
        self.path = path
        self.skip_below = skip_below
        self.skip_zeros = skip_zeros
        self.zero_bytes = 0
        self.checkpoint_bytes = max(int(checkpoint_bytes), 1)
        self.checkpoint = checkpoint
        self.written = 0
        self.done_upto = skip_below
        self._pending = 0
        self._unflushed = 0
        self._flushed_upto = skip_below
        self._niced = False
        self._syncing = None
        self._errors = []

    def consume(self, view, offset, is_data):
        if WRITER_NICE and not self._niced:
            self._niced = True
            if threading.current_thread() is not threading.main_thread():  # never the module's own thread
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
                except (AttributeError, OSError):
                    pass
        end = offset + len(view)
        if end > self.skip_below:
            start = max(offset, self.skip_below)
            part = view[start - offset:]
            if self.skip_zeros:
                written = 0
                for begin, length in data_runs(part, start):
                    self._write(part[begin:begin + length], start + begin)
                    written += length
                self.zero_bytes += len(part) - written
            else:
                self._write(part, start)
            self.done_upto = end
            if WRITEBACK_BYTES and self._unflushed >= WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, self._flushed_upto, end - self._flushed_upto, os.POSIX_FADV_DONTNEED)
                self._flushed_upto = end
                self._unflushed = 0
        if self._pending >= self.checkpoint_bytes and (self._syncing is None or not self._syncing.is_alive()):
            self._raise_error()
            self._pending = 0
            self._syncing = threading.Thread(target=self._checkpoint, args=(self.done_upto,),
                                             name="vmcollect-checkpoint")
            self._syncing.daemon = True
            self._syncing.start()

    def _write(self, view, offset):
        done = 0
        total = len(view)
        try:
            while done < total:
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as exc:
            raise _write_error(self.path, exc, offset + done)
        self.written += total
        self._pending += total
        self._unflushed += total

    def _checkpoint(self, upto):
        try:
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise _write_error(self.path, exc, None)
            if self.checkpoint is not None:
                self.checkpoint(upto)
        except Exception as exc:  # raised by the writer or by wait()
            self._errors.append(exc)

    def _raise_error(self):
        if self._errors:
            raise self._errors[0]

    def wait(self):
        """Join the checkpoint in flight (before the file is closed), then raise its error."""
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None
        self._raise_error()


def _join_quietly(writer):
    """After a failed or interrupted read: let the checkpoint in flight end; the first error wins."""
    try:
        writer.wait()
    except Exception:  # pylint: disable=broad-except
        pass


def _write_error(path, exc, offset):
    where = " at byte %d" % offset if offset is not None else ""
    if exc.errno == errno.ENOSPC:
        return DestinationError("The destination filesystem of %s is full%s; free space and run again: the copy "
                                "resumes where it stopped." % (path, where), failed_path=path)
    return DestinationError("Writing %s failed%s: %s." % (path, where, exc.strerror), failed_path=path)


def _mismatches(what, got, want):
    result = []
    for algorithm in sorted(want):
        if got.get(algorithm) != want[algorithm]:
            result.append("%s: %s expected %s, got %s" % (what, algorithm, want[algorithm], got.get(algorithm)))
    return result


def _check_destination(src, dest, src_st):
    """Refuse a destination whose folder is missing or that is not a file path we may create.

    ``src_st`` is the local source's stat (None for a source on another host)."""
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise DestinationError("The destination folder %s does not exist; create it first." % folder,
                               failed_path=dest)
    if dest == src:
        raise InvalidInputError("The source and the destination are the same path %s." % src, failed_path=dest)
    for path in (dest, dest + PARTIAL_SUFFIX):
        try:
            st = os.lstat(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise DestinationError("The destination %s cannot be examined: %s." % (path, exc.strerror),
                                   failed_path=path)
        if not stat.S_ISREG(st.st_mode):
            raise DestinationError("The destination %s exists and is not a regular file (a folder, a link or a "
                                   "device); give the path of a file to create." % path, failed_path=path)
        if src_st is not None and (st.st_dev, st.st_ino) == (src_st.st_dev, src_st.st_ino):
            raise InvalidInputError("The destination %s is the source %s itself." % (path, src), failed_path=path)


def _resume_point(sidecar, partial, src_identity, size):
    """Where an interrupted copy can resume (0: from scratch) and why."""
    if sidecar is None:
        return 0
    try:
        st = os.lstat(partial)
    except OSError:
        return 0
    if list(sidecar.get("source_identity") or []) != list(src_identity) or st.st_size != size:
        return 0
    upto = sidecar.get("copied_upto")
    if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0 or upto > size:
        return 0
    return upto


def _remove_failed_copy(partial, sidecar, folder):
    _unlink_quiet(sidecar)
    _unlink_quiet(partial)
    fsync_dir(folder)


def _publish(partial, dest, force):
    """Give the verified partial file its final name; without ``force`` never replace a file."""
    if force:
        os.rename(partial, dest)
        return
    try:
        os.link(partial, dest)  # fails with EEXIST: no file that appeared meanwhile is replaced
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise DestinationError("The destination %s appeared while the copy was written; it was left as it is "
                                   "and the verified copy is %s." % (dest, partial), failed_path=dest)
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(dest):  # a filesystem without hard links: check, then rename
            raise DestinationError("The destination %s appeared while the copy was written; it was left as it is "
                                   "and the verified copy is %s." % (dest, partial), failed_path=dest)
        os.rename(partial, dest)
        return
    os.unlink(partial)


def _result(src, dest, size, data_bytes, hole_bytes, free):
    return {
        "changed": False, "src": src, "dest": dest, "size": size, "data_bytes": data_bytes,
        "hole_bytes": hole_bytes, "free_bytes": free, "digests": {}, "dest_digests": {}, "verified": False,
        "resumed_from": 0, "seconds": None, "mib_per_s": None, "verify_seconds": None, "verify_carried_bytes": None,
    }


def _rate(size, seconds):
    return round(size / float(MIB) / seconds, 1) if seconds else None


def copy_evidence(src, dest, algorithms=("sha256",), expected=None, force=False, block_size=DEFAULT_BLOCK_SIZE,
                  mode=DEFAULT_MODE, progress_file=None, check_mode=False, verify=True,
                  checkpoint_bytes=CHECKPOINT_BYTES, progress=None):
    """Copy ``src`` to ``dest`` sparse-aware, hashing in the same read, then verify the copy.

    ``expected`` is ``{algorithm: digest}`` of the source; its algorithms are hashed too.
    ``progress(phase, done, total)`` is called from the reading thread after every block
    (phases ``copy``, ``hash``, ``verify``); an exception it raises interrupts the copy as a
    kill would, leaving ``<dest>.partial`` and its sidecar for a resume. ``verify=False``
    skips the read-back (benchmarks only: the module always verifies).

    Returns the module's result dict (see evidence_copy's RETURN).
    """
    src = absolute(src)
    dest = absolute(dest)
    if progress_file is not None:
        progress_file = absolute(progress_file)
    want = normalize_expected_digests(expected)
    algorithms = normalize_algorithms(algorithms)
    algorithms += [a for a in SUPPORTED_ALGORITHMS if a in want and a not in algorithms]
    mode = parse_mode(mode)
    folder = os.path.dirname(dest)
    partial = dest + PARTIAL_SUFFIX
    sidecar_path = dest + SIDECAR_SUFFIX
    reporter = Reporter(progress_file_for(progress_file, src, dest, check_mode), progress)

    fd, st = open_source(src)
    try:
        size = source_size(fd, st)
        _check_destination(src, dest, st)
        data_bytes, hole_bytes = scan_extents(fd, size)
        free = free_bytes(folder)
        result = _result(src, dest, size, data_bytes, hole_bytes, free)
        if os.path.exists(dest):
            done = _compare_existing(FileSource(fd, st, src), src, dest, algorithms, want, block_size, reporter,
                                     result, force)
            if done:
                return result
        src_identity = identity(st)
        sidecar = read_sidecar(sidecar_path)
        resume = _resume_point(sidecar, partial, src_identity, size)
        # a partial file is either reused (resume) or truncated (restart): its blocks count as free
        try:
            reclaim = allocated_bytes(os.lstat(partial))
        except OSError:
            reclaim = 0
        allocated = allocated_bytes(st, size)
        need = image_need(allocated)  # the space rule evidence_plan sums up (_evidence/space.py)
        if free + reclaim < need:
            raise DestinationError(
                "Not enough free space for a copy of %s in %s: %d bytes (%.1f MiB) are free, %d bytes (%.1f MiB) are "
                "needed (the source's %d allocated bytes plus a margin of %d); nothing was written."
                % (src, folder, free + reclaim, (free + reclaim) / float(MIB), need, need / float(MIB), allocated,
                   need - allocated),
                failed_path=dest, free_bytes=free + reclaim, needed_bytes=need)
        result["resumed_from"] = resume
        result["changed"] = True
        if check_mode:
            if want:
                hashed = _hash_source(FileSource(fd, st, src), algorithms, block_size, reporter, "hash")
                result["digests"] = hashed["digests"]
                _raise_source_mismatch(src, hashed["digests"], want)
            result["msg"] = "Would copy %s to %s: %d bytes, %d of them data%s; %d bytes are free there." % (
                src, dest, size, data_bytes, ", resuming at byte %d" % resume if resume else "", free)
            return result
        _copy(FileSource(fd, st, src, verb="copied"), list(src_identity), src, dest, partial, sidecar_path, folder,
              algorithms, want, block_size, mode, resume, checkpoint_bytes, reporter, verify, force, result)
    finally:
        os.close(fd)
    return result


def _hash_source(source, algorithms, block_size, reporter, phase):
    """Read and hash a source (``hashing.FileSource`` or alike) without writing."""
    consumers = [HashConsumer(hashlib.new(a), remember_holes=True) for a in algorithms]
    report = reporter.phase(phase, source.size, None)
    stats = read_extents(source, consumers, block_size, progress=report, threaded=True)
    return {"digests": dict((c.hasher.name, c.hasher.hexdigest()) for c in consumers), "seconds": stats["seconds"],
            "data_bytes": stats["data_bytes"], "consumers": consumers}


class ReadBackSource(FileSource):
    """The copy, read back after it was fsynced and its cached pages dropped, as a source of ``read_extents``.

    Its extents are its own (SEEK_DATA/SEEK_HOLE on the copy): data is read from storage, holes read as
    zeros. A hole of the copy that covers a whole hole the source's read remembered (``skips``:
    ``{start: end}``) is handed out as a ``SKIP`` extent: the hash consumers carry the source's state
    over it (``CarryingHashConsumer``) instead of hashing its zeros again.
    """

    def __init__(self, fd, st, path, skips):
        FileSource.__init__(self, fd, st, path, verb="read back")
        self.skips = sorted(skips.items())

    def extents(self):
        skips = self.skips
        i = 0
        for offset, length, is_data in iter_extents(self.fd, self.size):
            end = offset + length
            if is_data:
                yield offset, length, True
                continue
            while i < len(skips) and skips[i][0] < offset:
                i += 1
            while i < len(skips) and skips[i][1] <= end:
                start, stop = skips[i]
                if start > offset:
                    yield offset, start - offset, False
                yield start, stop - start, SKIP
                offset = stop
                i += 1
            if offset < end:
                yield offset, end - offset, False


def read_back(path, consumers, block_size=DEFAULT_BLOCK_SIZE, progress=None):
    """Hash the copy ``path`` from storage with the algorithms of ``consumers`` (the source's read, done).

    ``consumers`` are ``HashConsumer``s made with ``remember_holes``; where the copy has a hole over a
    hole they remembered, the hash state is carried over it. Returns ``hash_path``'s result and
    ``carried_bytes``: the bytes of holes that were not hashed again.
    """
    holes = [c.holes() for c in consumers]
    shared = set((start, hole[0]) for start, hole in holes[0].items()) if holes else set()
    for kept in holes[1:]:
        shared &= set((start, hole[0]) for start, hole in kept.items())
    carriers = [CarryingHashConsumer(hashlib.new(c.hasher.name), kept) for c, kept in zip(consumers, holes)]
    fd, st = open_source(path)
    try:
        stats = read_extents(ReadBackSource(fd, st, path, dict(shared)), carriers,
                             max(block_size, READ_BACK_BLOCK_SIZE), progress=progress, threaded=True)
    finally:
        os.close(fd)
    result = hash_result(path, [c.hasher for c in carriers], stats)
    result["carried_bytes"] = min(c.carried for c in carriers) if carriers else 0
    return result


def _raise_source_mismatch(src, digests, want):
    mismatches = _mismatches(src, digests, want)
    if mismatches:
        raise HashMismatchError(
            "The source %s does not match the expected digest (it is not the evidence hashed earlier): %s."
            % (src, "; ".join(mismatches)), failed_path=src, digests=digests, mismatches=mismatches)


def _compare_existing(source, src, dest, algorithms, want, block_size, reporter, result, force):
    """An existing destination: equal to the source (True: nothing to do), refused, or to replace (False).

    Telling equal from different reads both (a different size needs no read).
    """
    dest_size = os.stat(dest).st_size
    if dest_size == result["size"]:
        hashed = _hash_source(source, algorithms, block_size, reporter, "hash")
        result["digests"] = hashed["digests"]
        result["seconds"] = round(hashed["seconds"], 6)
        result["mib_per_s"] = _rate(result["size"], hashed["seconds"])
        _raise_source_mismatch(src, hashed["digests"], want)
        report = reporter.phase("verify", dest_size, None)
        theirs = read_back(dest, hashed["consumers"], block_size, progress=report)
        result["dest_digests"] = theirs["digests"]
        result["verify_seconds"] = theirs["seconds"]
        result["verify_carried_bytes"] = theirs["carried_bytes"]
        if theirs["digests"] == hashed["digests"]:
            reporter.done(dest_size)
            result["verified"] = True
            result["msg"] = "%s already holds a verified copy of %s; nothing was written." % (dest, src)
            return True
        why = "its %s digest is %s, the source's is %s" % (
            algorithms[0], theirs["digests"][algorithms[0]], hashed["digests"][algorithms[0]])
    else:
        why = "it has %d bytes, the source has %d" % (dest_size, result["size"])
    if not force:
        raise DestinationError(
            "The destination %s already exists and differs from the source %s (%s); it was left untouched. "
            "Choose another destination, or set force=true to replace it." % (dest, src, why),
            failed_path=dest, **dict((k, result[k]) for k in ("digests", "dest_digests") if result[k]))
    result.update(digests={}, dest_digests={}, seconds=None, mib_per_s=None, verify_seconds=None,
                  verify_carried_bytes=None)
    return False


def _open_partial(partial, resume, mode):
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if not resume:
        flags |= os.O_TRUNC
    try:
        fd = os.open(partial, flags, mode)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise DestinationError("The partial copy %s cannot be created: %s." % (partial, exc.strerror),
                               failed_path=partial)
    return fd


def _copy(source, source_identity, src, dest, partial, sidecar_path, folder, algorithms, want, block_size, mode,
          resume, checkpoint_bytes, reporter, verify, force, result, consumers=None, skip_zeros=False,
          state_extra=None):
    """Write ``source`` to ``partial`` while hashing it, verify, publish as ``dest``; fills ``result``.

    ``consumers`` are the hash consumers (``HashConsumer`` or alike: ``.hasher``) when the caller made them (they
    may have hashed a prefix already); ``state_extra(upto)`` returns more keys for the sidecar at each checkpoint.
    """
    size = result["size"]
    state = {
        "format": SIDECAR_FORMAT, "src": src, "dest": dest, "source_identity": source_identity,
        "algorithms": algorithms, "block_size": block_size, "copied_upto": resume,
    }

    def checkpoint(upto):
        state["copied_upto"] = upto
        if state_extra is not None:
            state.update(state_extra(upto))
        try:
            write_atomic(sidecar_path, json.dumps(state, sort_keys=True) + "\n")
        except OSError as exc:
            raise _write_error(sidecar_path, exc, None)

    if not resume:  # no sidecar may outlive the truncation below and vouch for a prefix
        _unlink_quiet(sidecar_path)
    out = _open_partial(partial, resume, mode)
    writer = DestWriter(out, partial, resume, checkpoint_bytes, checkpoint, skip_zeros)
    try:
        checkpoint(resume)  # before the first byte: the partial file is ours, and how far it is complete
        try:
            os.ftruncate(out, size)  # holes stay holes: only data extents are written below
        except OSError as exc:
            raise _write_error(partial, exc, None)
        if consumers is None:
            consumers = [HashConsumer(hashlib.new(a), remember_holes=True) for a in algorithms]
        hashers = [c.hasher for c in consumers]
        started = time.monotonic()
        report = reporter.phase("copy", size, result["data_bytes"])
        try:
            stats = read_extents(source, list(consumers) + [writer], block_size, progress=report)
        except BaseException:
            _join_quietly(writer)  # never close the file under a checkpoint's fdatasync
            raise
        writer.wait()
        try:
            os.fsync(out)
            fsync_dir(folder)
        except OSError as exc:
            raise _write_error(partial, exc, None)
        checkpoint(size)
        seconds = time.monotonic() - started
        if hasattr(os, "posix_fadvise"):  # read the copy back from storage, not from the page cache
            os.posix_fadvise(out, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(out)
    digests = dict((h.name, h.hexdigest()) for h in hashers)
    result.update(digests=digests, data_bytes=stats["data_bytes"], hole_bytes=stats["hole_bytes"],
                  seconds=round(seconds, 6), mib_per_s=_rate(size, seconds), written_bytes=writer.written)
    if skip_zeros:
        result["zero_bytes"] = writer.zero_bytes
    try:
        _raise_source_mismatch(src, digests, want)
    except HashMismatchError:
        _remove_failed_copy(partial, sidecar_path, folder)
        raise
    if verify:
        report = reporter.phase("verify", size, result["data_bytes"])
        try:
            back = read_back(partial, consumers, block_size, progress=report)
        except VmcollectError as exc:  # unreadable, or changed under the read-back: not verified
            _remove_failed_copy(partial, sidecar_path, folder)
            raise DestinationError(
                "The copy %s could not be read back and verified (%s); the copy was deleted, nothing is left at the "
                "destination. Check the destination storage and run again." % (dest, exc.message.rstrip(".")),
                failed_path=dest, digests=digests)
        result.update(dest_digests=back["digests"], verify_seconds=back["seconds"],
                      verify_carried_bytes=back["carried_bytes"])
        mismatches = _mismatches(dest, back["digests"], digests)
        if mismatches:
            _remove_failed_copy(partial, sidecar_path, folder)
            raise HashMismatchError(
                "The copy %s read back differs from the source %s (%s); the copy was deleted, nothing is left at "
                "the destination. Check the destination storage and run again."
                % (dest, src, "; ".join(mismatches)),
                failed_path=dest, digests=digests, dest_digests=back["digests"], mismatches=mismatches)
        result["verified"] = True
    _unlink_quiet(sidecar_path)  # first: a crash before the rename restarts the copy, never trusts it
    _publish(partial, dest, force)
    fsync_dir(folder)
    reporter.done(size)
    result["msg"] = "Copied %s to %s (%d bytes, %d of data written%s)%s." % (
        src, dest, size, writer.written, ", resumed at byte %d" % resume if resume else "",
        ", verified by reading it back" if verify else ", not verified")
    return result
