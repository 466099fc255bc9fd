# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""E01 (EnCase 6) images of a disk's frozen chain, written by ewf-tools' ``ewfacquirestream``.

The guest-visible bytes of the chain (``diskimage``) are streamed into ``ewfacquirestream`` on its stdin while
the same pass hashes them (sha256 and md5 at least): the E01 holds exactly the stream that was hashed, which is
checked afterwards (ewf's stored MD5 must equal ours, its media size the chain's size). Programs run from argv
lists, never through a shell; case text is checked for the characters that would break EWF's header lines.

What ``ewfacquirestream`` 20140813 (Debian 12's ewf-tools) does, measured, and why this module works around it:

* ``-B <bytes>`` is never given: equal to the stream's length it drops the last partial chunk (a 33,000-byte stream
  gave a 32,768-byte image and the MD5 of those), and even for a whole number of chunks it writes an image ewfinfo
  calls corrupted, without digests, whenever a read from the pipe comes back short (a 200 MiB disk of 4 KiB
  clusters, three runs of three with a producer writing pieces of odd sizes; none without ``-B``). The media size
  is taken from the stream's end, and ewf's media size and MD5 are checked against the stream.
* a media size that is not a multiple of 512 bytes is recorded rounded down while all bytes are hashed: refused.
* a tab or newline in a case field splits EWF's header lines (the notes spill into other fields): refused.
* it overwrites an existing target without a word: the image is written under a temporary name beside the
  target and linked to the final names only when none exists (evidence once written is never overwritten).
* EnCase 6 stores MD5 and SHA1, not SHA-256: sha256 is computed here, in the same pass.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import DEFAULT_MODE
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.diskimage import (
    DEFAULT_BLOCK_SIZE,
    Chain,
    hash_stream,
    logical_digests,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import normalize_algorithms
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, make_dirs, missing_dirs
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.runner import run

ACQUIRE = "ewfacquirestream"
INFO = "ewfinfo"
CASE_FIELDS = ("case_number", "evidence_number", "examiner", "description", "notes")
_FIELD_FLAGS = {"case_number": "-C", "evidence_number": "-E", "examiner": "-e", "description": "-D", "notes": "-N"}
COMPRESSIONS = ("none", "empty-block", "fast", "best")
DEFAULT_COMPRESSION = "fast"
EWF_FORMAT = "encase6"
BYTES_PER_SECTOR = 512
SECTORS_PER_CHUNK = 64
CHUNK_BYTES = BYTES_PER_SECTOR * SECTORS_PER_CHUNK
MIN_SEGMENT = 1024 * 1024
DIR_MODE = 0o750
FINISH_TIMEOUT = 600.0  # seconds ewfacquirestream may take after the end of its input
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031
_CONTROL = re.compile(u"[\x00-\x1f\x7f]")
_SEGMENT = re.compile(r"\.(E[0-9]{2}|E[A-Z]{2}|[F-Z][A-Z]{2})$")
_HEX = re.compile(r"^[0-9a-f]+$")


def normalize_case_fields(fields):
    """The five EWF case fields as text ('' when not given); refuses unknown keys and control characters."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(CASE_FIELDS))
    if unknown:
        raise InvalidInputError("The E01 case fields %s are unknown; use %s."
                                % (", ".join(unknown), ", ".join(CASE_FIELDS)))
    result = {}
    for key in CASE_FIELDS:
        value = fields.get(key)
        value = u"" if value is None else u"%s" % (value,)
        if _CONTROL.search(value):
            raise InvalidInputError("The E01 case field %s holds a tab, a line break or another control character; "
                                    "EWF keeps its case fields on tab-separated lines, so the text would spill into "
                                    "other fields. Write it on one line without tabs." % key, field=key)
        result[key] = value
    return result


def _segment_key(path):
    ext = _SEGMENT.search(path).group(1)
    if ext[1:].isdigit():
        return int(ext[1:])
    return 100 + (ord(ext[0]) - ord("E")) * 676 + (ord(ext[1]) - 65) * 26 + (ord(ext[2]) - 65)


def segment_paths(target_stem):
    """The segment files of the E01 ``target_stem`` (``<stem>.E01``, ``.E02``... ``.EAA``...) that exist, in order."""
    folder, base = os.path.split(target_stem)
    try:
        names = os.listdir(folder)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise DestinationError("The folder %s cannot be listed: %s." % (folder, exc.strerror), failed_path=folder)
    found = [os.path.join(folder, n) for n in names
             if n.startswith(base + ".") and len(n) == len(base) + 4 and _SEGMENT.search(n)]
    return sorted(found, key=_segment_key)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def remove_stale_partials(target_stem):
    """Remove the temporary segments ``.<name>.partial-<pid>.E??`` of ``target_stem`` whose writer is gone (a run
    killed while writing): they were never published, never recorded, and never evidence. Returns their paths."""
    folder, base = os.path.split(target_stem)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    pattern = re.compile(r"^\.%s\.partial-(\d+)\.[Ee][A-Za-z0-9]{2}$" % re.escape(base))
    removed = []
    for name in sorted(names):
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            try:
                os.unlink(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise DestinationError("The temporary E01 segment %s, left by a run that ended while writing it, "
                                           "cannot be removed: %s." % (path, exc.strerror), failed_path=path)
                continue
            removed.append(path)
    if removed:
        fsync_dir(folder)
    return removed


def _program(name):
    path = shutil.which(name)
    if not path:
        raise DestinationError("%s is not installed on this host (Debian/Ubuntu package ewf-tools); it is needed to "
                               "write and read E01 images." % name)
    return path


def tool_version():
    """``"ewfacquirestream <version>"`` as the program prints it."""
    rc, out, err = run([_program(ACQUIRE), "-V"], timeout=30)
    line = (out or err).strip().splitlines()[0] if (out or err).strip() else ""
    if rc != 0 or not line.startswith(ACQUIRE):
        raise DestinationError("%s -V failed (exit %d): %s" % (ACQUIRE, rc, (err or out).strip()[-400:]))
    return line.strip()


def stored_info(first_segment):
    """What ``ewfinfo -m`` reads from an E01: media size, sectors, the digests ewf stored ({md5, sha1}).

    ``-m`` prints only the media and digest sections: no case text that could mimic them. Returns None when
    ewfinfo cannot open the image (missing segments, not finished).
    """
    rc, out, dummy = run([_program(INFO), "-m", first_segment], timeout=120, env={"LC_ALL": "C"})
    if rc != 0:
        return None
    info = {"digests": {}}
    section = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
            continue
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        value = value.strip()
        if section == "Media information":
            if key == "Media size":
                m = re.search(r"\((\d+) bytes\)", value)
                info["media_size"] = int(m.group(1)) if m else None
            elif key in ("Bytes per sector", "Number of sectors") and value.isdigit():
                info["bytes_per_sector" if key.startswith("Bytes") else "sectors"] = int(value)
        elif section == "Digest hash information" and _HEX.match(value.lower()):
            info["digests"][key.lower()] = value.lower()
    return info


def _calculated(text):
    """``{md5: hex, sha1: hex...}`` from ewfacquirestream's "<ALG> hash calculated over data:" lines."""
    found = {}
    for m in re.finditer(r"^(\w+) hash calculated over data:\s*([0-9a-fA-F]+)\s*$", text, re.M):
        found[m.group(1).lower()] = m.group(2).lower()
    return found


def _check_stem(target_stem):
    if not isinstance(target_stem, str) or not os.path.isabs(target_stem):
        raise InvalidInputError("The E01 target %r is not an absolute path (without extension); give one."
                                % (target_stem,))
    stem = os.path.normpath(target_stem)
    base = os.path.basename(stem)
    if not base or base.startswith(".") or _SEGMENT.search(base):
        raise InvalidInputError("The E01 target %s must name the image without its extension (.E01 is added), "
                                "and not start with a dot." % target_stem, failed_path=target_stem)
    return stem


def e01_plan(target_stem):
    """What is at the target now: dict(path, segments, exists). Reads nothing of the image."""
    stem = _check_stem(target_stem)
    segments = segment_paths(stem)
    return {"path": stem + ".E01", "segments": segments, "exists": bool(segments),
            "folder_exists": os.path.isdir(os.path.dirname(stem))}


class PipeWriter(object):
    """A consumer of the read that writes every byte, zeros included, into a pipe (the program's stdin)."""

    wants_holes = True
    name = "ewf-pipe"

    def __init__(self, fd):
        self.fd = fd
        self.written = 0

    def consume(self, view, offset, is_data):
        done = 0
        total = len(view)
        while done < total:
            done += os.write(self.fd, view[done:])
        self.written += total


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _unlink_all(paths):
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _tail(f):
    f.seek(0)
    return f.read().decode("utf-8", "replace")


def _argv(exe, stem, fields, compression, segment_size):
    argv = [exe, "-q", "-f", EWF_FORMAT, "-c", "deflate:%s" % compression, "-d", "sha1",
            "-b", str(SECTORS_PER_CHUNK), "-P", str(BYTES_PER_SECTOR), "-m", "fixed", "-M", "physical"]
    for key in CASE_FIELDS:
        argv += [_FIELD_FLAGS[key], fields[key]]
    if segment_size:
        argv += ["-S", str(segment_size)]
    # no -B <size>: see the module docstring (short reads from the pipe corrupt the image when it is given)
    return argv + ["-t", stem]


def _existing(chain_layers, stem, segments, size, algorithms, chunk):
    """The target exists: unchanged when it is complete and holds this stream (MD5), else refused."""
    info = stored_info(segments[0]) if segments[0] == stem + ".E01" else None
    if not info or not info["digests"].get("md5") or info.get("media_size") != size:
        raise DestinationError(
            "The E01 %s.E01 exists already but is not a complete image of %d bytes (ewfinfo %s). Evidence once "
            "written is never overwritten: move its segments (%s) away and run again."
            % (stem, size, "cannot open it" if not info else "reads a media size of %s and MD5 %s"
               % (info.get("media_size"), info["digests"].get("md5")), ", ".join(os.path.basename(s) for s in segments)),
            failed_path=stem + ".E01")
    digests = logical_digests(chain_layers, algorithms, chunk=chunk)
    if digests["digests"]["md5"] != info["digests"]["md5"]:
        raise DestinationError(
            "The E01 %s.E01 exists already and holds another image (its MD5 %s, this disk's %s). Evidence once "
            "written is never overwritten: move it away or choose another target."
            % (stem, info["digests"]["md5"], digests["digests"]["md5"]), failed_path=stem + ".E01")
    return digests, info


def _stream_into(proc, chain, algorithms, chunk):
    writer = PipeWriter(proc.stdin.fileno())
    try:
        import fcntl
        fcntl.fcntl(writer.fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, OSError, IOError):
        pass  # a bigger pipe only saves context switches
    try:
        return hash_stream(chain, algorithms, [writer], chunk), writer.written
    finally:
        proc.stdin.close()


def _run_acquire(argv, folder, chain, algorithms, chunk, temp_stem):
    """Run ewfacquirestream fed from the chain; returns (stream result, its stdout). Kills it on any failure."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # not run_command (module_utils get no AnsibleModule): a child bounded in time, in a process group of its own
            # pylint: disable-next=ansible-bad-function
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=folder, close_fds=True,
                                    start_new_session=True, env=dict(os.environ, LC_ALL="C"))
        except OSError as exc:
            raise DestinationError("%s cannot be started: %s." % (argv[0], exc.strerror or exc))
        try:
            try:
                result, written = _stream_into(proc, chain, algorithms, chunk)
            except (BrokenPipeError, OSError) as exc:
                if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
                    raise
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                raise DestinationError("%s stopped reading the disk's bytes (exit %s): %s"
                                       % (ACQUIRE, proc.returncode, (_tail(err) or _tail(out)).strip()[-600:]),
                                       failed_path=temp_stem + ".E01")
            try:
                rc = proc.wait(timeout=FINISH_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise DestinationError("%s did not finish within %d s after the end of its input; it was stopped."
                                       % (ACQUIRE, FINISH_TIMEOUT), failed_path=temp_stem + ".E01")
        except BaseException:
            if proc.returncode is None:
                _kill(proc)
            raise
        stdout = _tail(out)
        if rc != 0 or "SUCCESS" not in stdout:
            raise DestinationError("%s failed (exit %d): %s" % (ACQUIRE, rc, (_tail(err) + stdout).strip()[-800:]),
                                   failed_path=temp_stem + ".E01")
    if written != chain.size:
        raise DestinationError("Only %d of %d bytes went to %s." % (written, chain.size, ACQUIRE))
    return result, stdout


def _publish(temp_segments, temp_stem, stem, mode):
    """Give the verified segments their final names; never replace a file. Returns the final paths."""
    finals = []
    try:
        for temp in temp_segments:
            os.chmod(temp, mode)
            fd = os.open(temp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for temp in temp_segments:
            final = stem + temp[len(temp_stem):]
            try:
                os.link(temp, final)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise DestinationError("The E01 segment %s appeared while the image was written; it was left as "
                                           "it is, and nothing of this image was kept." % final, failed_path=final)
                raise DestinationError("The E01 segment %s cannot be created: %s." % (final, exc.strerror),
                                       failed_path=final)
            finals.append(final)
    except BaseException:
        _unlink_all(finals)
        raise
    return finals


def acquire_e01(layers, target_stem, case_fields, algorithms=("sha256", "md5"), compression=DEFAULT_COMPRESSION,
                segment_size=None, chunk=DEFAULT_BLOCK_SIZE, mode=DEFAULT_MODE):
    """Write the chain's guest-visible bytes as the E01 ``<target_stem>.E01`` (+ ``.E02``...), EnCase 6 format.

    Hashes the stream in the same pass (``algorithms`` plus sha256 and md5). An existing target is refused,
    unless it is complete and ewf's stored MD5 equals this stream's: then nothing is written (``changed``
    false). Missing folders of the target are created (0750).

    Returns dict(changed, path, segments, media_size, media_digests {md5, sha1 as ewf stored them, sha256 of
    the stream}, stream_digests {algorithm: hex}, ewf_digests, ewf_calculated, tool, case_fields, compression,
    data_bytes, seconds, created_folders).
    """
    stem = _check_stem(target_stem)
    fields = normalize_case_fields(case_fields)
    compression = str(compression).lower()
    if compression not in COMPRESSIONS:
        raise InvalidInputError("The E01 compression %r is unknown; use one of %s."
                                % (compression, ", ".join(COMPRESSIONS)))
    if segment_size is not None and int(segment_size) < MIN_SEGMENT:
        raise InvalidInputError("An E01 segment must be at least 1 MiB (%d bytes), not %s bytes."
                                % (MIN_SEGMENT, segment_size))
    algorithms = normalize_algorithms(list(algorithms) + ["sha256", "md5"])
    folder = os.path.dirname(stem)
    result = {"path": stem + ".E01", "case_fields": fields, "compression": compression, "format": "EnCase 6",
              "created_folders": []}
    with Chain(layers) as chain:
        size = chain.size
        if not size:
            raise InvalidInputError("The disk is empty (a virtual size of 0 bytes); there is nothing to write as E01.")
        if size % BYTES_PER_SECTOR:
            raise InvalidInputError(
                "The disk is %d bytes, not a whole number of 512-byte sectors; EWF stores whole sectors and "
                "ewfacquirestream would record a media size rounded down while hashing every byte. Image it as "
                "raw (flatten) instead." % size)
        exe = _program(ACQUIRE)
        result["tool"] = tool_version()
        segments = segment_paths(stem)
        if segments:
            digests, info = _existing(layers, stem, segments, size, algorithms, chunk)
            result.update(changed=False, segments=segments, media_size=info["media_size"],
                          stream_digests=digests["digests"], ewf_digests=info["digests"], ewf_calculated={},
                          data_bytes=digests["data_bytes"], seconds=digests["seconds"])
            result["media_digests"] = dict(info["digests"], sha256=digests["digests"]["sha256"])
            return result
        missing = make_folders(folder)
        result["created_folders"] = missing
        result["removed_partials"] = remove_stale_partials(stem)
        temp_stem = os.path.join(folder, ".%s.partial-%d" % (os.path.basename(stem), os.getpid()))
        if segment_paths(temp_stem):
            raise DestinationError("Temporary E01 segments %s.* exist already; remove them." % temp_stem,
                                   failed_path=temp_stem + ".E01")
        argv = _argv(exe, temp_stem, fields, compression, segment_size)
        started = time.monotonic()
        try:
            stream, stdout = _run_acquire(argv, folder, chain, algorithms, chunk, temp_stem)
            temp_segments = segment_paths(temp_stem)
            info = stored_info(temp_stem + ".E01") if temp_segments else None
            ours = stream["digests"]
            if not info or info.get("media_size") != size or info["digests"].get("md5") != ours["md5"]:
                raise DestinationError(
                    "The E01 written does not hold the disk's bytes as they were streamed (ewf: media size %s, MD5 "
                    "%s; the stream: %d bytes, MD5 %s). It was removed; nothing was kept."
                    % (info and info.get("media_size"), info and info["digests"].get("md5"), size, ours["md5"]),
                    failed_path=stem + ".E01")
            finals = _publish(temp_segments, temp_stem, stem, mode)
        finally:
            _unlink_all(segment_paths(temp_stem))
            fsync_dir(folder)
    result.update(changed=True, segments=finals, media_size=info["media_size"], stream_digests=ours,
                  ewf_digests=info["digests"], ewf_calculated=_calculated(stdout), data_bytes=stream["data_bytes"],
                  seconds=round(time.monotonic() - started, 6))
    result["media_digests"] = dict(info["digests"], sha256=ours["sha256"])
    return result


def make_folders(folder):
    """Create ``folder`` and its missing parents (0750, each fsynced into its parent); the folders made."""
    try:
        missing = missing_dirs(folder)
    except NotADirectoryError as exc:
        raise DestinationError("%s exists and is not a folder; the E01 cannot be written below it." % exc.filename,
                               failed_path=exc.filename)
    try:
        make_dirs(missing, DIR_MODE)
    except OSError as exc:
        raise DestinationError("The folder %s cannot be created: %s." % (exc.filename, exc.strerror),
                               failed_path=exc.filename)
    return missing
