# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch one file of an ESXi datastore over HTTPS onto local storage, with the forensic copy's engine.

The host's own file service is read: ``GET https://<host>:<port>/folder/<path>?dcPath=<dc>&dsName=<ds>``
with the API session's cookie (``vmware_soap_session``, which a real ESXi requires), HEAD for the size and
modification time, and Range requests. Only GET and HEAD are ever sent: nothing on the host changes (no
snapshot, no file, no service, no setting).

The copy itself is ``_evidence.copy``'s: ``HttpsSource`` is a source of ``hashing.read_extents`` (extents,
``read_into``, ``check_unchanged``), so the same read feeds one hash thread per algorithm and the writer of
``<dest>.partial``, checkpointed in ``<dest>.partial.json``, synced, read back from storage (cache dropped) and
only then published under ``dest``. The writer leaves all-zero 64 KiB pieces unwritten (holes: the file service
cannot tell holes, it sends zeros), and ``areas`` (the byte ranges that hold data, from QueryChangedDiskAreas with change
id '*') are the only ranges fetched at all; the rest is hashed as zeros. The digests cover the whole logical file.

Resuming, without fetching again what is already here: at every checkpoint the sidecar also records the digests
of a prefix ``[0, offset)`` of the file, taken by the hash threads from the fetched bytes (a copy of each hash
state, once per ``MARK_BYTES``) at an offset the partial file holds durably. A rerun with the same source identity
(size, modification time, areas) hashes that prefix from the partial file on local storage, compares it with the
recorded digests, and fetches only the rest; a prefix that does not match starts the copy over. The read-back at
the end compares the whole copy with the digests of the run.

Within a run, a dropped connection is resumed with a Range from the last byte received (``retries`` times in a
row without a byte received, with a backoff); HTTP 401 logs in again once and repeats the request.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect
import datetime
import email.utils
import hashlib
import http.client
import os
import re
import ssl
import threading
import time
from urllib.parse import quote

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
    VmcollectError,
    VsphereConnectionError,
    VsphereError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import copy as _copy
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import (
    DEFAULT_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SUPPORTED_ALGORITHMS,
    FileSource,
    HashConsumer,
    absolute,
    normalize_algorithms,
    read_extents,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.space import allocated_bytes, free_bytes, image_need
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import open_source
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as _client

MIB = 1024 * 1024
DEFAULT_RETRIES = 5
DEFAULT_REQUEST_TIMEOUT = 120
BACKOFF = 1.0  # seconds before the first reconnection, doubled after each failure in a row...
BACKOFF_MAX = 15.0  # ...up to this
MARK_BYTES = _copy.CHECKPOINT_BYTES  # hashed bytes between two prefix digests (resume points)
_MARKS_KEPT = 64  # prefix digests kept per algorithm (64 x 64 MiB: hashing may run far ahead of a slow fdatasync)
_ERROR_BODY = 4096  # bytes of an error answer kept for the message
USER_AGENT = "dfir.vmcollect datastore_fetch"
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


# -- names ---------------------------------------------------------------------------------------

def folder_url_path(datastore, relative, datacenter):
    """The request target of a datastore file: '/folder/<path>?dcPath=<dc>&dsName=<ds>', every part quoted
    (spaces, brackets, '#', '?', '&' and non-ASCII in any of them)."""
    return "/folder/%s?dcPath=%s&dsName=%s" % (
        quote(relative, safe="/"), quote(datacenter, safe=""), quote(datastore, safe=""))


def split_source(src, datastores=()):
    """('datastore', 'relative/path') of ``src`` ('[datastore name] folder/file name.vmdk'); a path that names no
    file, or a datastore the host does not have (when ``datastores`` are known), is refused."""
    datastore, relative = _client.parse_datastore_path(src, datastores)
    if relative.endswith("/"):
        raise InvalidInputError("The datastore path %r names a folder; give '[datastore] folder/file'." % (src,))
    relative = relative.lstrip("/")
    if not relative:
        raise InvalidInputError("The datastore path %r names no file; give '[datastore] folder/file'." % (src,))
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise InvalidInputError("The datastore path %r has an empty, '.' or '..' part; give the file's plain path."
                                % (src,))
    if datastores and datastore not in datastores:
        raise InvalidInputError("The datastore path %r names the datastore %r, which the host does not have; it has "
                                "%s." % (src, datastore, ", ".join(repr(d) for d in sorted(datastores)) or "none"))
    return datastore, relative


def normalize_areas(areas, size=None):
    """``[{start, length}]`` (or ``(start, length)`` pairs) -> sorted, merged ``[(start, length)]`` within
    ``[0, size)``. An area past the end of the file, or a negative or non-integer number, is refused: areas that do
    not fit the file were taken from another disk. ``size`` None checks the form only."""
    result = []
    for area in areas or []:
        try:
            if isinstance(area, dict):
                start, length = area["start"], area["length"]
            else:
                start, length = area
            if isinstance(start, bool) or isinstance(length, bool):
                raise TypeError
            start, length = int(start), int(length)
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError("The area %r is not {start, length} in bytes." % (area,))
        if start < 0 or length < 0:
            raise InvalidInputError("The area %r has a negative start or length." % (area,))
        if size is not None and start + length > size:
            raise InvalidInputError(
                "The area %r ends at byte %d, past the end of the file (%d bytes): the areas are not this file's "
                "(areas are offsets of the virtual disk, which equal the file's only for its flat extent)."
                % (area, start + length, size))
        if length:
            result.append((start, length))
    result.sort()
    merged = []
    for start, length in result:
        if merged and start <= merged[-1][0] + merged[-1][1]:
            last_start, last_length = merged[-1]
            merged[-1] = (last_start, max(last_start + last_length, start + length) - last_start)
        else:
            merged.append((start, length))
    return merged


def areas_fingerprint(areas):
    """A short digest of the area list (part of the source's identity: other areas, another logical content)."""
    if areas is None:
        return "whole"
    h = hashlib.sha256()
    for start, length in areas:
        h.update(("%d+%d;" % (start, length)).encode("ascii"))
    return h.hexdigest()[:32]


def http_date_utc(value):
    """An HTTP date ('Sun, 06 Dec 2026 06:30:22 GMT') as ISO 8601 UTC, or None."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.timezone.utc)
    return parsed.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the HTTP session -------------------------------------------------------------------------------

class ClientSession(object):
    """What ``HttpsSource`` needs of a vSphere session, from a logged-in ``_vsphere.client.VsphereClient``.

    Any object with the same five members will do (the unit tests use a local HTTPS server): ``where``
    ('host[:port]'), ``connection()`` (a new HTTPSConnection with the session's TLS checks), ``cookie()`` (the
    Cookie header value), ``relogin()`` and ``tls_record()``; ``convert(exc, step)`` turns a TLS or socket error
    into the collection's exception (or None).
    """

    def __init__(self, client, timeout=DEFAULT_REQUEST_TIMEOUT):
        self.client = client
        self.timeout = timeout
        self.where = client.where

    def connection(self):
        return self.client.http_connection(timeout=self.timeout)

    def cookie(self):
        return self.client.cookie_header()

    def relogin(self):
        self.client.disconnect()
        self.client.connect()

    def tls_record(self):
        return self.client.tls_record()

    def convert(self, exc, step):
        return _client.error_for(exc, step, self.client.where, self.client.secrets(), VsphereConnectionError,
                                 self.client.ssl_context)


def _fatal(exc):
    """A TLS failure that no retry can mend: the peer is not the host we trust."""
    return isinstance(exc, (ssl.SSLCertVerificationError, _client.ThumbprintMismatch))


class _Retry(Exception):
    """One attempt failed in a way a new connection may mend (the connection dropped, a 5xx answer)."""


class HttpsSource(object):
    """A datastore file read over HTTPS: a source of ``hashing.read_extents``.

    ``head()`` reads the size and modification time; ``extents()`` covers ``[start, size)`` with the ``areas`` as
    data and the rest as holes (no areas: all data); ``read_into(view, offset)`` fills ``view`` from a GET with a
    Range to the end of the area that holds ``offset``, reusing the connection and the open answer while reads
    follow each other; ``check_unchanged()`` asks HEAD again. Counters: ``fetched_bytes``, ``requests``,
    ``reconnects``, ``relogins``.
    """

    def __init__(self, session, url_path, name, retries=DEFAULT_RETRIES, backoff=BACKOFF, sleep=time.sleep):
        self.session = session
        self.url_path = url_path
        self.name = name
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self._sleep = sleep
        self.size = None
        self.last_modified = None
        self.areas = None
        self._area_starts = []
        self.start = 0
        self.fetched_bytes = 0
        self.requests = 0
        self.reconnects = 0
        self.relogins = 0
        self._conn = None
        self._resp = None
        self._pos = None  # the offset the open answer delivers next
        self._resp_end = None
        self._failures = 0

    # -- the source protocol ----------------------------------------------------------------------
    def configure(self, size, last_modified, areas=None, start=0):
        """The identity the reads are checked against, the data areas (None: the whole file) and where the
        extents start (a resumed fetch starts at its verified prefix)."""
        self.size = size
        self.last_modified = last_modified
        self.areas = areas
        self._area_starts = [a[0] for a in areas] if areas is not None else []
        self.start = start
        return self

    def extents(self):
        pos = self.start
        if self.areas is None:
            if pos < self.size:
                yield pos, self.size - pos, True
            return
        for start, length in self.areas:
            end = start + length
            if end <= pos:
                continue
            if start > pos:
                yield pos, start - pos, False
                pos = start
            yield pos, end - pos, True
            pos = end
        if pos < self.size:
            yield pos, self.size - pos, False

    def _area_end(self, offset):
        if self.areas is None:
            return self.size
        i = bisect.bisect_right(self._area_starts, offset) - 1
        if i >= 0:
            start, length = self.areas[i]
            if start <= offset < start + length:
                return start + length
        raise EvidenceSourceError("Byte %d of %s is not in a data area (an internal error)." % (offset, self.name))

    def read_into(self, view, offset):
        filled = 0
        total = len(view)
        while filled < total:
            pos = offset + filled
            try:
                if self._resp is None or self._pos != pos:
                    self._open_range(pos, self._area_end(pos))
                try:
                    got = self._resp.readinto(view[filled:])
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retry("the connection failed at byte %d (%s)" % (pos, _describe(exc)))
                if not got:
                    raise _Retry("the connection ended at byte %d, before the %d bytes asked for"
                                 % (pos, self._resp_end - self._pos))
            except _Retry as exc:
                self._failed(str(exc), pos)
                continue
            filled += got
            self._pos += got
            self.fetched_bytes += got
            self._failures = 0
            if self._pos >= self._resp_end:
                self._resp = None  # read whole: the connection serves the next request

    def check_unchanged(self):
        size, last_modified = self._head_values()
        if size != self.size or (self.last_modified and last_modified != self.last_modified):
            raise EvidenceSourceError(
                "The datastore file %s changed while it was fetched (size %d -> %d, modified %s -> %s); its digest "
                "would describe no real state. Fetch a frozen file (a VM's base disk under a snapshot)."
                % (self.name, self.size, size, self.last_modified, last_modified), failed_path=self.name)

    # -- HTTP -------------------------------------------------------------------------------------
    def head(self):
        """(size, Last-Modified or None) from a HEAD request."""
        return self._head_values()

    def _head_values(self):
        while True:
            try:
                resp = self._request("HEAD")
                self._drain(resp)
                if resp.status != 200:
                    self._refuse(resp, "HEAD")
                length = resp.getheader("Content-Length")
                if length is None or not length.strip().isdigit():
                    raise EvidenceSourceError(
                        "%s answered HEAD for %s without a Content-Length; its size cannot be known."
                        % (self.session.where, self.name), failed_path=self.name)
                return int(length), resp.getheader("Last-Modified")
            except _Retry as exc:
                self._failed(str(exc), None)

    def _open_range(self, start, end):
        """Open a GET of ``[start, end)`` and check that it is that part of the same file."""
        if self._resp is not None:  # an answer not read to its end: its connection cannot carry another request
            self._drop()
        resp = self._request("GET", {"Range": "bytes=%d-%d" % (start, end - 1)})
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
            if not match or int(match.group(1)) != start:
                self._drop()
                raise EvidenceSourceError(
                    "%s answered a Range request for bytes %d-%d of %s with Content-Range %r; the fetch cannot go on."
                    % (self.session.where, start, end - 1, self.name, resp.getheader("Content-Range")),
                    failed_path=self.name)
            total = match.group(3)
            if total != "*" and int(total) != self.size:
                self._drop()
                self._changed("its size is now %s bytes, it was %d" % (total, self.size))
            last = int(match.group(2)) + 1
        elif resp.status == 200 and start == 0:  # a server that ignores Range: the whole file from its start
            length = resp.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) != self.size:
                self._drop()
                self._changed("its size is now %s bytes, it was %d" % (length, self.size))
            last = self.size
        elif resp.status == 200:
            self._drop()
            raise EvidenceSourceError(
                "%s ignores Range requests (it answered 200 to a request for bytes %d-%d of %s); a file cannot be "
                "fetched by areas or resumed from that server." % (self.session.where, start, end - 1, self.name),
                failed_path=self.name)
        elif resp.status == 416:
            self._drain(resp)
            self._changed("a request for bytes %d-%d was refused as past its end (HTTP 416)" % (start, end - 1))
        else:
            self._drain(resp)
            self._refuse(resp, "GET")
        modified = resp.getheader("Last-Modified")
        if self.last_modified and modified and modified != self.last_modified:
            self._drop()
            self._changed("its modification time is now %s, it was %s" % (modified, self.last_modified))
        self._resp = resp
        self._pos = start
        self._resp_end = min(end, last)

    def _request(self, method, headers=None):
        """Send one request (a new connection when there is none), logging in again once on HTTP 401."""
        relogged = False
        fresh_retry = False
        while True:
            if self._resp is not None:  # an answer not read to its end: its connection cannot carry another
                self._drop()
            reused = self._conn is not None
            all_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            all_headers.update(headers or {})
            try:
                all_headers["Cookie"] = self.session.cookie()
                if self._conn is None:
                    self._conn = self.session.connection()
                self.requests += 1
                self._conn.request(method, self.url_path, headers=all_headers)
                resp = self._conn.getresponse()
            except VmcollectError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if _fatal(exc):
                    raise self._converted(exc, "fetch %s" % self.name)
                if reused and not fresh_retry:  # the host closed an idle kept-alive connection: not a failure
                    fresh_retry = True
                    continue
                raise _Retry("%s %s failed (%s)" % (method, self.name, _describe(exc)))
            if resp.status == 401:
                self._drain(resp)
                if relogged:
                    raise VsphereConnectionError(
                        "%s refused the session cookie (HTTP 401) for %s again right after a new login; the user may "
                        "lack the privilege to read datastore files (Datastore.Browse). Nothing was changed on the "
                        "host." % (self.session.where, self.name), failed_path=self.name)
                self._drop()
                self.session.relogin()
                self.relogins += 1
                relogged = True
                continue
            if resp.status >= 500:
                self._drain(resp)
                self._drop()
                raise _Retry("%s %s got HTTP %d %s" % (method, self.name, resp.status, resp.reason))
            return resp

    def _converted(self, exc, step):
        convert = getattr(self.session, "convert", None)
        error = convert(exc, step) if convert is not None else None
        return error or VsphereConnectionError("The TLS connection to %s was refused: %s; nothing was sent."
                                               % (self.session.where, _describe(exc)))

    def _failed(self, why, pos):
        """A failed attempt: drop the connection, wait, and go on, unless ``retries`` failed in a row."""
        self._drop()
        self._failures += 1
        if self._failures > self.retries:
            where = " at byte %d" % pos if pos is not None else ""
            raise EvidenceSourceError(
                "Fetching %s from %s stopped%s: %s, %d time(s) in a row. Check the host and the network, then run "
                "the task again: it resumes from the part already on local storage."
                % (self.name, self.session.where, where, why, self._failures), failed_path=self.name)
        self.reconnects += 1
        if self.backoff:
            self._sleep(min(self.backoff * (2 ** (self._failures - 1)), BACKOFF_MAX))

    def _refuse(self, resp, method):
        body = getattr(resp, "vmc_body", b"")[:300].decode("utf-8", "replace").strip()
        if resp.status == 404:
            raise EvidenceSourceError(
                "%s has no file %s (HTTP 404 for %s %s): check the datastore path and the datacenter (dcPath)."
                % (self.session.where, self.name, method, _path_only(self.url_path)), failed_path=self.name)
        if resp.status == 403:
            raise EvidenceSourceError(
                "%s refused to serve %s (HTTP 403): the user needs the privilege Datastore.Browse on its datastore."
                % (self.session.where, self.name), failed_path=self.name)
        raise EvidenceSourceError("%s answered %s of %s with HTTP %d %s%s."
                                  % (self.session.where, method, self.name, resp.status, resp.reason,
                                     (": %s" % body) if body else ""), failed_path=self.name)

    def _changed(self, what):
        raise EvidenceSourceError(
            "The datastore file %s changed while it was fetched (%s); its digest would describe no real state. "
            "Fetch a frozen file (a VM's base disk under a snapshot)." % (self.name, what), failed_path=self.name)

    @staticmethod
    def _drain(resp):
        """Read a short answer (HEAD, an error) to its end so its connection can be reused; keep its start."""
        try:
            resp.vmc_body = resp.read(_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            resp.vmc_body = b""

    def _drop(self):
        self._resp = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._conn = None

    def close(self):
        self._drop()


def _describe(exc):
    text = str(exc) or type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text) if type(exc).__name__ not in text else text


def _path_only(url_path):
    return url_path.split("?", 1)[0]


# -- resuming from a verified prefix ----------------------------------------------------------------

class MarkingHashConsumer(HashConsumer):
    """A ``HashConsumer`` that also keeps the digest of the prefix it has hashed, once per ``every`` bytes.

    Every algorithm sees the same blocks, so their marks fall on the same offsets; ``PrefixMarks`` picks the
    latest offset all of them marked."""

    def __init__(self, hasher, every=MARK_BYTES):
        HashConsumer.__init__(self, hasher, remember_holes=True)
        self.every = max(int(every), 1)
        self.marks = {}
        self._next = self.every
        self._lock = threading.Lock()

    def consume(self, view, offset, is_data):
        HashConsumer.consume(self, view, offset, is_data)
        end = offset + len(view)
        if end >= self._next:
            digest = self.hasher.copy().hexdigest()
            with self._lock:
                self.marks[end] = digest
                if len(self.marks) > _MARKS_KEPT:
                    del self.marks[min(self.marks)]
            self._next = end + self.every

    def marked(self):
        with self._lock:
            return dict(self.marks)


class PrefixMarks(object):
    """The ``prefix`` record of the sidecar: ``{offset, digests}`` of the latest offset at or below what the
    partial file holds durably, for which every algorithm has a digest (or the record the run started from)."""

    def __init__(self, consumers, initial=None):
        self.consumers = consumers
        self.initial = initial or {"offset": 0, "digests": {}}

    def __call__(self, upto):
        snapshots = [(c.hasher.name, c.marked()) for c in self.consumers]  # the hash threads go on meanwhile
        common = None
        for dummy, marks in snapshots:
            offsets = set(o for o in marks if o <= upto)
            common = offsets if common is None else common & offsets
        best = max(common) if common else 0
        if best <= self.initial["offset"]:
            return {"prefix": self.initial}
        return {"prefix": {"offset": best, "digests": dict((name, marks[best]) for name, marks in snapshots)}}


class _Prefix(object):
    """The first ``end`` bytes of a local source (the partial copy), as a source of ``read_extents``."""

    def __init__(self, source, end):
        self.source = source
        self.size = end

    def extents(self):
        for offset, length, is_data in self.source.extents():
            if offset >= self.size:
                return
            yield offset, min(length, self.size - offset), is_data

    def read_into(self, view, offset):
        self.source.read_into(view, offset)

    def check_unchanged(self):
        self.source.check_unchanged()


def _usable_prefix(sidecar, resume, algorithms):
    """The sidecar's verified-prefix record if a rerun can start from it: ``{offset, digests}`` or None."""
    record = (sidecar or {}).get("prefix")
    if not resume or not isinstance(record, dict):
        return None
    offset = record.get("offset")
    digests = record.get("digests")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 < offset <= resume:
        return None
    if not isinstance(digests, dict) or any(not isinstance(digests.get(a), str) for a in algorithms):
        return None
    return {"offset": offset, "digests": dict((a, digests[a]) for a in algorithms)}


def _hash_prefix(partial, prefix, consumers, block_size):
    """Hash the partial copy's ``[0, offset)`` into ``consumers``; True when it equals the recorded digests."""
    fd, st = open_source(partial)
    try:
        read_extents(_Prefix(FileSource(fd, st, partial, verb="read back"), prefix["offset"]), consumers,
                     block_size, threaded=True)
    finally:
        os.close(fd)
    return all(c.hasher.copy().hexdigest() == prefix["digests"][c.hasher.name] for c in consumers)


# -- the fetch ------------------------------------------------------------------------------------

def fetch_file(session, src, dest, datacenter, algorithms=("sha256",), expected=None, force=False, areas=None,
               areas_note=None, block_size=DEFAULT_BLOCK_SIZE, retries=DEFAULT_RETRIES, mode=_copy.DEFAULT_MODE,
               check_mode=False, verify=True, datastores=(), modified_lookup=None, backoff=BACKOFF,
               checkpoint_bytes=_copy.CHECKPOINT_BYTES, mark_bytes=MARK_BYTES, progress=None, progress_file=None):
    """Fetch the datastore file ``src`` ('[datastore] folder/file') to the local ``dest``; see the module docstring.

    ``session`` is a ``ClientSession`` or alike. ``areas`` ([{start, length}] or None: the whole file) are the only
    ranges fetched, the rest is hashed as zeros; ``areas_note`` says where they came from (for ``areas_used``).
    ``modified_lookup(datastore, relative)`` gives the file's modification time when HEAD has no Last-Modified
    (the datastore browser). ``progress(phase, done, total)`` and ``progress_file`` (a path) as in
    ``copy_evidence``; ``verify=False`` skips the read-back (benchmarks only: the module always verifies).

    Returns the module's result: evidence_copy's shape plus src_url, transport, copied_by, tls, areas_used,
    fetched_bytes, zero_bytes, requests, reconnects, relogins, source_identity.
    """
    dest = absolute(dest)
    want = _copy.normalize_expected_digests(expected)
    algorithms = normalize_algorithms(algorithms)
    algorithms += [a for a in SUPPORTED_ALGORITHMS if a in want and a not in algorithms]
    mode = _copy.parse_mode(mode)
    block_size = max(int(block_size), MIN_BLOCK_SIZE)
    if not datacenter:
        raise InvalidInputError("No datacenter for dcPath was given or found.")
    datastore, relative = split_source(src, datastores)
    url_path = folder_url_path(datastore, relative, datacenter)
    src_url = "https://%s%s" % (session.where, url_path)
    folder = os.path.dirname(dest)
    partial = dest + _copy.PARTIAL_SUFFIX
    sidecar_path = dest + _copy.SIDECAR_SUFFIX
    reporter = _copy.Reporter(_copy.progress_file_for(progress_file, src, dest, check_mode), progress)

    _copy._check_destination(src, dest, None)  # pylint: disable=protected-access
    if areas is not None:
        normalize_areas(areas)  # refused before anything is asked of the host
    source = HttpsSource(session, url_path, src, retries, backoff)
    try:
        size, last_modified, identity_from, wanted, area_bytes = _identify(source, datastore, relative, areas,
                                                                           modified_lookup)
        identity = ["https", session.where, datacenter, datastore, relative, size, last_modified,
                    areas_fingerprint(wanted)]
        free = free_bytes(folder)
        result = _copy._result(src, dest, size, area_bytes, size - area_bytes, free)  # pylint: disable=protected-access
        result.update(
            src_url=src_url, transport="https", copied_by="datastore_fetch", tls=session.tls_record(),
            datastore=datastore, datacenter=datacenter, fetched_bytes=0, zero_bytes=0, requests=0,
            reconnects=0, relogins=0, rate_mib_s=None,
            source_identity={"size": size, "modified": http_date_utc(last_modified) or last_modified,
                             "from": identity_from if last_modified else "size only (no modification time)"},
            areas_used=_areas_used(wanted, area_bytes, size, areas_note))
        if os.path.exists(dest):
            if check_mode:
                return _check_existing_plan(result, dest, src, size)
            done = _copy._compare_existing(source, src, dest, algorithms, want, block_size,  # pylint: disable=W0212
                                           reporter, result, force)
            if done:
                return _finish(result, source)
        sidecar = _copy.read_sidecar(sidecar_path)
        resume = _copy._resume_point(sidecar, partial, identity, size)  # pylint: disable=protected-access
        prefix = _usable_prefix(sidecar, resume, algorithms)
        try:
            reclaim = allocated_bytes(os.lstat(partial))
        except OSError:
            reclaim = 0
        need = image_need(area_bytes)
        if free + reclaim < need:
            raise DestinationError(
                "Not enough free space for a copy of %s in %s: %d bytes (%.1f MiB) are free, %d bytes (%.1f MiB) are "
                "needed (the %d bytes of data to fetch, all-zero blocks not counted as they are not known before the "
                "fetch, plus a margin of %d); nothing was fetched or written."
                % (src, folder, free + reclaim, (free + reclaim) / float(MIB), need, need / float(MIB), area_bytes,
                   need - area_bytes),
                failed_path=dest, free_bytes=free + reclaim, needed_bytes=need)
        result["changed"] = True
        result["resumed_from"] = prefix["offset"] if prefix else 0
        if check_mode:
            result["msg"] = ("Would fetch %s (%s) to %s: %d bytes, %d of them in data areas to fetch%s; %d bytes are "
                             "free there. Check mode sent HEAD only." % (
                                 src, src_url, dest, size, area_bytes,
                                 ", resuming at byte %d" % prefix["offset"] if prefix else "", free))
            return _finish(result, source)
        consumers = [MarkingHashConsumer(hashlib.new(a), mark_bytes) for a in algorithms]
        restarted = False
        if prefix:
            if not _hash_prefix(partial, prefix, consumers, block_size):
                restarted = True
                _copy._remove_failed_copy(partial, sidecar_path, folder)  # pylint: disable=protected-access
                resume, prefix = 0, None
                consumers = [MarkingHashConsumer(hashlib.new(a), mark_bytes) for a in algorithms]
                result["resumed_from"] = 0
        source.configure(size, source.last_modified, wanted, start=prefix["offset"] if prefix else 0)
        _copy._copy(source, identity, src, dest, partial, sidecar_path, folder, algorithms, want,  # pylint: disable=W0212
                    block_size, mode, resume, checkpoint_bytes, reporter, verify, force, result, consumers=consumers,
                    skip_zeros=True, state_extra=PrefixMarks(consumers, prefix))
        result["data_bytes"] = area_bytes
        result["hole_bytes"] = size - area_bytes
        result["msg"] = "Fetched %s (%s) to %s: %d bytes, %d fetched over HTTPS%s, %d written (%d in all-zero blocks " \
                        "left as holes)%s%s." % (
                            src, src_url, dest, size, source.fetched_bytes,
                            ", resumed at byte %d" % prefix["offset"] if prefix else "", result["written_bytes"],
                            result["zero_bytes"],
                            "; the partial copy did not match the digests recorded when it was fetched, so the copy "
                            "started over" if restarted else "",
                            ", verified by reading it back" if verify else ", not verified")
        return _finish(result, source)
    finally:
        source.close()


def _areas_used(areas, area_bytes, size, note):
    used = {"source": "given areas" if areas is not None else "whole file", "areas": len(areas or []),
            "area_bytes": area_bytes, "size": size, "fraction": round(area_bytes / float(size), 6) if size else 1.0}
    used.update(note or {})
    return used


def _check_existing_plan(result, dest, src, size):
    dest_size = os.stat(dest).st_size
    result["changed"] = dest_size != size
    result["msg"] = ("%s exists with %d bytes; a run would fetch %s (%d bytes) to compare it%s. Check mode sent HEAD "
                     "only." % (dest, dest_size, src, size,
                                "" if dest_size == size else " (they differ: refused unless force=true)"))
    return result


def _finish(result, source):
    result.update(fetched_bytes=source.fetched_bytes, requests=source.requests, reconnects=source.reconnects,
                  relogins=source.relogins)
    if result.get("seconds"):
        result["rate_mib_s"] = round(source.fetched_bytes / float(MIB) / result["seconds"], 1)
    return result


def _identify(source, datastore, relative, areas, modified_lookup):
    """HEAD the source and fix what identifies it: (size, last_modified, where that time came from, the wanted areas
    normalised against the size or None, the bytes in them). The source is configured with them."""
    size, last_modified = source.head()
    identity_from = "HEAD"
    if not last_modified and modified_lookup is not None:
        last_modified = modified_lookup(datastore, relative)
        identity_from = "datastore browser"
    wanted = normalize_areas(areas, size) if areas is not None else None
    source.configure(size, last_modified if identity_from == "HEAD" else None, wanted)
    area_bytes = sum(length for dummy, length in wanted) if wanted is not None else size
    return size, last_modified, identity_from, wanted, area_bytes


def hash_file(session, src, datacenter, algorithms=("sha256",), areas=None, areas_note=None,
              block_size=DEFAULT_BLOCK_SIZE, retries=DEFAULT_RETRIES, datastores=(), modified_lookup=None,
              backoff=BACKOFF, progress=None):
    """Hash the datastore file ``src`` over HTTPS without keeping it anywhere: ``fetch_file``'s read (HEAD, Range
    GETs of the ``areas`` only, the rest hashed as zeros, one thread per algorithm, the identity checked again at
    the end) with no destination. For a copy made on the host itself (vmkfstools_clone), whose source must be
    hashed where it lies. Sends GET and HEAD only. ``progress(done, total)`` is called after every block.

    Returns dict(src, src_url, datastore, datacenter, size, data_bytes, hole_bytes, digests, fetched_bytes,
    requests, reconnects, relogins, seconds, mib_per_s, source_identity, areas_used, tls)."""
    algorithms = normalize_algorithms(algorithms)
    block_size = max(int(block_size), MIN_BLOCK_SIZE)
    if not datacenter:
        raise InvalidInputError("No datacenter for dcPath was given or found.")
    datastore, relative = split_source(src, datastores)
    if areas is not None:
        normalize_areas(areas)
    url_path = folder_url_path(datastore, relative, datacenter)
    source = HttpsSource(session, url_path, src, retries, backoff)
    try:
        size, last_modified, identity_from, wanted, area_bytes = _identify(source, datastore, relative, areas,
                                                                           modified_lookup)
        hashers = [hashlib.new(a) for a in algorithms]
        stats = read_extents(source, [HashConsumer(h) for h in hashers], block_size, progress, threaded=True)
        seconds = stats["seconds"]
        return {
            "src": src, "src_url": "https://%s%s" % (session.where, url_path), "datastore": datastore,
            "datacenter": datacenter, "size": size, "data_bytes": stats["data_bytes"],
            "hole_bytes": stats["hole_bytes"], "digests": dict((h.name, h.hexdigest()) for h in hashers),
            "fetched_bytes": source.fetched_bytes, "requests": source.requests, "reconnects": source.reconnects,
            "relogins": source.relogins, "seconds": round(seconds, 3),
            "mib_per_s": round(size / float(MIB) / seconds, 1) if seconds > 0 else None,
            "source_identity": {"size": size, "modified": http_date_utc(last_modified) or last_modified,
                                "from": identity_from if last_modified else "size only (no modification time)"},
            "areas_used": _areas_used(wanted, area_bytes, size, areas_note), "tls": session.tls_record()}
    finally:
        source.close()


# -- the host's side: datacenter, datastores, modification time, changed areas -----------------------

@_client.vsphere_errors("list the datacenters and datastores")
def host_names(client):
    """(datacenter for dcPath, [datastore names]): the client's datacenter, else the only one there is."""
    datastores = [_client.unescape_name(v.get("name")) for dummy, v in client.retrieve(_client.vim.Datastore, ["name"])]
    if client.datacenter:
        return client.datacenter, datastores
    datacenters = client.retrieve(_client.vim.Datacenter, ["name"])
    names = sorted(_client.unescape_name(v.get("name")) for dummy, v in datacenters)
    if len(names) == 1:
        return names[0], datastores
    if not names:
        return "ha-datacenter", datastores
    raise InvalidInputError("%s has %d datacenters (%s); give datacenter, the one whose datastore holds the file."
                            % (client.where, len(names), ", ".join(repr(n) for n in names)))


def browser_modified(client, datastore, relative):
    """The file's modification time (ISO 8601) from the datastore browser, for a host whose HEAD has no
    Last-Modified. Reads only (SearchDatastore_Task lists a folder)."""
    return _browser_modified(client, datastore, relative)


@_client.vsphere_errors("look the file up in the datastore browser")
def _browser_modified(client, datastore, relative):
    vim = _client.vim
    found = [(obj, v) for obj, v in client.retrieve(vim.Datastore, ["name", "browser"])
             if _client.unescape_name(v.get("name")) == datastore]
    if not found:
        return None
    folder, dummy, name = relative.rpartition("/")
    spec = vim.host.DatastoreBrowser.SearchSpec(
        matchPattern=["*"],  # brackets are glob syntax: match all, pick by name
        details=vim.host.DatastoreBrowser.FileInfo.Details(fileSize=True, modification=True, fileType=False,
                                                           fileOwner=False))
    task = found[0][1]["browser"].SearchDatastore_Task(datastorePath=_client.datastore_path(datastore, folder),
                                                       searchSpec=spec)
    what = "look up %s in the datastore browser" % _client.datastore_path(datastore, relative)
    result = client.wait_for_task(task, what)
    for info in getattr(result, "file", None) or []:
        if info.path == name and info.modification is not None:
            return info.modification.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return None


def _walk_snapshots(nodes):
    for node in nodes or []:
        yield node
        yield from _walk_snapshots(getattr(node, "childSnapshotList", None))


@_client.vsphere_errors("query the changed disk areas")
def changed_disk_areas(client, vm, disk_key, size, snapshot=None):
    """The data areas of a VM disk from QueryChangedDiskAreas(snapshot, disk_key, offset, '*'), page by page.

    Returns ``(areas or None, note)``: None (fetch the whole file) when the VM has no changed block tracking, the
    disk is not the size of the file (not its flat extent), or the host cannot answer; ``note`` says which."""
    vim = _client.vim
    vm_obj = _find_vm(client, vm)
    name = _client.moref(vm_obj)
    props = client.properties(vm_obj, ["name", "config.changeTrackingEnabled", "config.hardware.device", "snapshot"])
    label = "VM %s (%s)" % (props.get("name"), name)
    disk = [d for d in props.get("config.hardware.device") or []
            if isinstance(d, vim.vm.device.VirtualDisk) and d.key == disk_key]
    if not disk:
        raise InvalidInputError("%s has no disk with the device key %s." % (label, disk_key))
    snap_obj = None
    if snapshot:
        info = props.get("snapshot")
        nodes = [n for n in _walk_snapshots(getattr(info, "rootSnapshotList", None))
                 if _client.moref(n.snapshot) == snapshot]
        if not nodes:
            raise InvalidInputError("%s has no snapshot %s." % (label, snapshot))
        snap_obj = nodes[0].snapshot
    note = {"vm": name, "disk_key": disk_key, "snapshot": snapshot}
    if not props.get("config.changeTrackingEnabled"):
        note.update(source="whole file", reason="changed block tracking is off for %s" % label)
        return None, note
    capacity = getattr(disk[0], "capacityInBytes", None)
    if capacity is not None and capacity != size:
        note.update(source="whole file", reason="the disk holds %d bytes, the file %d: the file is not the disk's "
                                                "flat extent, whose offsets the areas are" % (capacity, size))
        return None, note
    areas = []
    start = 0
    pages = 0
    try:
        while start < size:
            info = vm_obj.QueryChangedDiskAreas(snapshot=snap_obj, deviceKey=disk_key, startOffset=start,
                                                changeId="*")
            pages += 1
            for area in getattr(info, "changedArea", None) or []:
                areas.append({"start": area.start, "length": area.length})
            following = info.startOffset + info.length
            if following <= start:
                raise VsphereError("%s answered QueryChangedDiskAreas from byte %d without moving on (next %d)."
                                   % (client.where, start, following))
            start = following
    except _client.vmodl.MethodFault as fault:
        note.update(source="whole file", reason="QueryChangedDiskAreas failed: %s"
                    % _client.fault_sentence(fault, "query the changed disk areas", client.where))
        return None, note
    note.update(source="changed block tracking", pages=pages)
    return areas, note


def _find_vm(client, vm):
    """A VM by moref ('vm-42') or by name."""
    for obj, dummy in client.retrieve(_client.vim.VirtualMachine, ["name"]):
        if _client.moref(obj) == vm:
            return obj
    return client.find_vm(name=vm)


def run(params, check_mode=False):
    """The module's work from its params: connect, find dcPath and the areas, fetch, log out."""
    if (params.get("request_timeout") or 0) <= 0 and params.get("request_timeout") is not None:
        raise InvalidInputError("request_timeout must be a positive number of seconds, not %s."
                                % params["request_timeout"])
    if params.get("retries") is not None and params["retries"] < 0:
        raise InvalidInputError("retries must be 0 or more, not %s." % params["retries"])
    if params.get("areas") is not None:
        normalize_areas(params["areas"])  # refused before the host is asked anything
    with _client.client_from_params(params) as client:
        session = ClientSession(client, params.get("request_timeout") or DEFAULT_REQUEST_TIMEOUT)
        datacenter, datastores = host_names(client)
        datastore, relative = split_source(params["src"], datastores)
        areas, note = params.get("areas"), None
        changed = params.get("changed_areas")
        if changed:
            probe = HttpsSource(session, folder_url_path(datastore, relative, datacenter), params["src"],
                                params.get("retries", DEFAULT_RETRIES))
            try:
                size = probe.head()[0]
            finally:
                probe.close()
            areas, note = changed_disk_areas(client, changed["vm"], changed["disk_key"], size, changed.get("snapshot"))
        return fetch_file(
            session, params["src"], params["dest"], datacenter, params.get("algorithms") or ["sha256"],
            params.get("expected"), params.get("force", False), areas, note,
            params.get("block_size") or DEFAULT_BLOCK_SIZE, params.get("retries", DEFAULT_RETRIES),
            params.get("mode", _copy.DEFAULT_MODE), check_mode, datastores=datastores,
            modified_lookup=lambda ds, rel: browser_modified(client, ds, rel),
            progress_file=params.get("progress_file"))
