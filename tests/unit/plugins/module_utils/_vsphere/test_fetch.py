# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of datastore_fetch's core against a local HTTPS server that behaves like ESXi's /folder service.

The server (a self-signed certificate made at test time, HTTP/1.1 keep-alive) serves files of a folder per
datastore at ``/folder/<path>?dcPath=<dc>&dsName=<ds>``, answers HEAD and single Range requests, requires the
``vmware_soap_session`` cookie of a login it handed out (401 otherwise, as ESXi does), and can drop a connection
mid-answer, expire the session once, ignore Range, or stall. It records every request, so the tests can show that
only GET and HEAD were sent and where each Range started. The copies land on real local files (sparse, checked
with st_blocks)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import email.utils
import hashlib
import http.client
import http.cookies
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    HashMismatchError,
    InvalidInputError,
    VsphereConnectionError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import copy as c
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import data_runs, is_zero
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as f

MIB = 1024 * 1024
KIB = 1024
DC = "ha-datacenter"
DS = "Local DS [0]"  # a datastore name with a space and brackets, as ESXi allows
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))))


# -- the server ----------------------------------------------------------------------------------

class FolderServer(object):
    """ESXi's /folder file service in miniature (see the module docstring)."""

    def __init__(self, root, certfile, keyfile):
        self.root = root
        self.tokens = set()
        self.log = []  # dicts: method, path, range, cookie_ok, status
        self.lock = threading.Lock()
        self.drops = []  # for each coming GET: drop the connection after this many body bytes (None: no drop)
        self.expire_at = None  # the request number (1-based) before which every session expires once
        self.reject_all = False
        self.ignore_range = False
        self.delay = 0.0  # seconds per 64 KiB chunk sent
        self.hang_up = False  # close every connection after its answer without saying so (an idle keep-alive timeout)
        self.count = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server.serve(self, head=True)

            def do_GET(self):
                server.serve(self, head=False)

            def refuse(self):
                server.record(self, 405, False)
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = do_DELETE = do_MOVE = do_COPY = refuse

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="folder-server")
        self.thread.daemon = True
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def login(self):
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens.add(token)
        return token

    def record(self, handler, status, cookie_ok):
        with self.lock:
            self.log.append({"method": handler.command, "path": handler.path, "range": handler.headers.get("Range"),
                             "cookie_ok": cookie_ok, "status": status})

    def _authorized(self, handler):
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(handler.headers.get("Cookie") or "")
        except http.cookies.CookieError:
            return False
        morsel = jar.get("vmware_soap_session")
        with self.lock:
            return not self.reject_all and morsel is not None and morsel.value.strip('"') in self.tokens

    def _file(self, handler):
        parts = urlsplit(handler.path)
        if not parts.path.startswith("/folder/"):
            return None
        query = parse_qs(parts.query)
        if query.get("dcPath") != [DC] or len(query.get("dsName", [])) != 1:
            return None
        base = os.path.join(self.root, query["dsName"][0])
        path = os.path.normpath(os.path.join(base, unquote(parts.path[len("/folder/"):])))
        return path if path.startswith(base + os.sep) and os.path.isfile(path) else None

    def _reply(self, handler, status, headers=(), cookie_ok=True):
        self.record(handler, status, cookie_ok)
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()

    def serve(self, handler, head):
        with self.lock:
            self.count += 1
            if self.expire_at == self.count:
                self.tokens.clear()
        if not self._authorized(handler):
            return self._reply(handler, 401, [("Content-Length", "0")], cookie_ok=False)
        path = self._file(handler)
        if path is None:
            return self._reply(handler, 404, [("Content-Length", "0")])
        st = os.stat(path)
        size = st.st_size
        modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end, status = 0, size - 1, 200
        wanted = handler.headers.get("Range")
        if wanted and not self.ignore_range:
            first, dummy, last = wanted.split("=", 1)[1].partition("-")
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if start >= size:
                return self._reply(handler, 416, [("Content-Range", "bytes */%d" % size), ("Content-Length", "0")])
            status = 206
        headers = [("Content-Length", str(end - start + 1)), ("Last-Modified", modified), ("Accept-Ranges", "bytes")]
        if status == 206:
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
        self._reply(handler, status, headers)
        if head:
            return None
        with self.lock:
            drop = self.drops.pop(0) if self.drops else None
        sent = 0
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left:
                n = min(64 * KIB, left)
                if drop is not None:
                    n = min(n, drop - sent)
                    if n <= 0:
                        handler.close_connection = True
                        handler.connection.shutdown(socket.SHUT_RDWR)  # no TLS close_notify: a cut line
                        return None
                chunk = fh.read(n)
                try:
                    handler.wfile.write(chunk)
                except OSError:
                    handler.close_connection = True
                    return None
                sent += len(chunk)
                left -= len(chunk)
                if self.delay:
                    time.sleep(self.delay)
        if self.hang_up:
            handler.close_connection = True
        return None

    def requests(self, method=None):
        with self.lock:
            return [r for r in self.log if method is None or r["method"] == method]


class Session(object):
    """The five members fetch needs of a vSphere session (see fetch.ClientSession)."""

    def __init__(self, server, cafile, timeout=10):
        self.server = server
        self.where = "127.0.0.1:%d" % server.port
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.timeout = timeout
        self.token = server.login()
        self.logins = 1

    def connection(self):
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.ctx, timeout=self.timeout)

    def cookie(self):
        return 'vmware_soap_session="%s"' % self.token

    def relogin(self):
        self.token = self.server.login()
        self.logins += 1

    def tls_record(self):
        return {"verified": True, "how": "ca_file", "thumbprint_sha256": None}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, crt = str(folder / "key.pem"), str(folder / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return crt, key


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "datastores"
    (root / DS / "vm [1] x").mkdir(parents=True)
    return str(root)


@pytest.fixture
def server(store, cert):
    srv = FolderServer(store, cert[0], cert[1])
    yield srv
    srv.stop()


@pytest.fixture
def session(server, cert):
    return Session(server, cert[0])


@pytest.fixture
def dest_dir(tmp_path):
    d = tmp_path / "evidence store"
    d.mkdir()
    return str(d)


def put(store, name, size, islands, zero_islands=()):
    """A sparse file in the datastore folder: random data at ``islands``, explicit (allocated) zeros at
    ``zero_islands``; returns (datastore path, local path)."""
    path = os.path.join(store, DS, "vm [1] x", name)
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, length in zero_islands:
            fh.seek(offset)
            fh.write(bytes(length))
        for offset, length in islands:
            fh.seek(offset)
            fh.write(os.urandom(length))
    return "[%s] vm [1] x/%s" % (DS, name), path


def digest(path, algorithm="sha256"):
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def fetch(session, src, dest, **kw):
    kw.setdefault("backoff", 0)
    kw.setdefault("datastores", [DS, "other"])
    return f.fetch_file(session, src, dest, DC, **kw)


def leftovers(dest):
    return [p for p in (dest, dest + ".partial", dest + ".partial.json") if os.path.lexists(p)]


class Interrupt(Exception):
    pass


def interrupt_after(nbytes, phase="copy"):
    def progress(name, done, total):
        if name == phase and done >= nbytes:
            raise Interrupt("interrupted at %d" % done)
    return progress


ISLANDS = [(0, 3 * MIB), (8 * MIB + 12345, 2 * MIB), (20 * MIB, 1 * MIB)]  # 6 MiB of data in 24 MiB


@pytest.fixture
def disk(store):
    """24 MiB, three random islands (one not aligned), 4 MiB of allocated zeros, holes elsewhere."""
    return put(store, "disk [1]-flat.vmdk", 24 * MIB, ISLANDS, zero_islands=[(12 * MIB, 4 * MIB)])


# -- the fetch -----------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithms", [["sha256"], ["md5", "sha1", "sha256", "sha512"]])
def test_fetch_equals_the_file_sparse_with_only_get_and_head(session, server, disk, dest_dir, algorithms):
    src, local = disk
    dest = os.path.join(dest_dir, "disk [1]-flat.vmdk")
    before = os.stat(local)
    r = fetch(session, src, dest, algorithms=algorithms)
    assert r["changed"] and r["verified"] and leftovers(dest) == [dest]
    assert same_bytes(dest, local)
    for alg in algorithms:
        assert r["digests"][alg] == r["dest_digests"][alg] == digest(local, alg)
    assert r["size"] == 24 * MIB and r["fetched_bytes"] == 24 * MIB and r["data_bytes"] == 24 * MIB
    assert r["hole_bytes"] == 0
    # the zeros the server sent (holes and the allocated zero island) were not written: of the 64 KiB pieces, those
    # that hold data were (the unaligned island touches one piece more), the all-zero ones stayed holes
    assert r["written_bytes"] == 6 * MIB + 64 * KIB and r["zero_bytes"] == 18 * MIB - 64 * KIB
    assert os.stat(dest).st_blocks * 512 <= 6 * MIB + 128 * KIB  # follows the data, not the 24 MiB, not the zeros
    assert os.stat(local).st_blocks * 512 >= 10 * MIB  # while the source holds 4 MiB of allocated zeros
    assert r["transport"] == "https" and r["copied_by"] == "datastore_fetch"
    assert r["src_url"] == ("https://%s/folder/vm%%20%%5B1%%5D%%20x/disk%%20%%5B1%%5D-flat.vmdk?dcPath=ha-datacenter"
                            "&dsName=Local%%20DS%%20%%5B0%%5D" % session.where)
    assert session.token not in json.dumps(r)
    assert r["areas_used"]["source"] == "whole file" and r["areas_used"]["fraction"] == 1.0
    assert r["source_identity"]["from"] == "HEAD" and r["source_identity"]["modified"].endswith("Z")
    assert r["tls"] == session.tls_record()
    assert r["seconds"] > 0 and r["rate_mib_s"] > 0 and r["mib_per_s"] > 0
    # nothing but GET and HEAD, every one with the session cookie; one GET for the whole file
    assert set(x["method"] for x in server.requests()) == {"GET", "HEAD"}
    assert all(x["cookie_ok"] for x in server.requests())
    assert [x["range"] for x in server.requests("GET")] == ["bytes=0-%d" % (24 * MIB - 1)]
    assert r["requests"] == len(server.requests())
    after = os.stat(local)
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)


def test_areas_fetch_only_the_data_and_hash_the_rest_as_zeros(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    areas = [{"start": o, "length": n} for o, n in ISLANDS]
    areas.append({"start": 1 * MIB, "length": 2 * MIB})  # overlaps the first: merged
    r = fetch(session, src, dest, areas=areas, areas_note=None)
    assert r["verified"] and r["digests"]["sha256"] == digest(local)  # outside the islands the file is zeros
    assert r["fetched_bytes"] == 6 * MIB and r["data_bytes"] == 6 * MIB and r["hole_bytes"] == 18 * MIB
    assert r["areas_used"]["source"] == "given areas" and r["areas_used"]["areas"] == 3
    assert r["areas_used"]["area_bytes"] == 6 * MIB and r["areas_used"]["fraction"] == 0.25
    assert [x["range"] for x in server.requests("GET")] == [
        "bytes=%d-%d" % (o, o + n - 1) for o, n in ISLANDS]
    assert os.stat(dest).st_blocks * 512 <= 7 * MIB
    assert same_bytes(dest, local)


def test_areas_are_the_logical_content(session, disk, dest_dir):
    """Data outside the areas is taken as unallocated: the copy and its digest hold zeros there."""
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    r = fetch(session, src, dest, areas=[{"start": 0, "length": 3 * MIB}])
    with open(local, "rb") as fh:
        want = hashlib.sha256(fh.read(3 * MIB) + bytes(21 * MIB)).hexdigest()
    assert r["digests"]["sha256"] == want == digest(dest)


def test_dropped_connection_resumes_from_the_last_byte_received(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    cut = 5 * MIB + 777
    server.drops = [cut, None]
    r = fetch(session, src, dest)
    assert r["verified"] and r["digests"]["sha256"] == digest(local)
    assert r["reconnects"] == 1
    gets = [x["range"] for x in server.requests("GET")]
    assert gets == ["bytes=0-%d" % (24 * MIB - 1), "bytes=%d-%d" % (cut, 24 * MIB - 1)]
    assert r["fetched_bytes"] == 24 * MIB  # not a byte fetched twice


def test_too_many_drops_in_a_row_stop_with_a_sentence_and_leave_a_resumable_copy(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    server.drops = [2 * MIB, 0, 0, 0]  # progress, then three answers that give nothing
    with pytest.raises(EvidenceSourceError) as err:
        fetch(session, src, dest, retries=2, checkpoint_bytes=MIB, mark_bytes=MIB)
    assert "stopped at byte %d" % (2 * MIB) in err.value.message and "3 time(s) in a row" in err.value.message
    assert "resumes" in err.value.message
    assert os.path.exists(dest + ".partial") and os.path.exists(dest + ".partial.json")
    r = fetch(session, src, dest)
    assert r["verified"] and r["digests"]["sha256"] == digest(local)


def recorded_sleeps(monkeypatch):
    """Every backoff the https source would sleep, recorded instead of slept (no timed assertion)."""
    slept = []
    real = f.HttpsSource.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self._sleep = slept.append
    monkeypatch.setattr(f.HttpsSource, "__init__", init)
    return slept


def test_a_dropped_connection_waits_its_backoff_doubling_each_time(session, server, disk, dest_dir, monkeypatch):
    src, local = disk
    server.drops = [2 * MIB, 0, None]  # progress, one answer that gives nothing, then the rest
    slept = recorded_sleeps(monkeypatch)
    r = fetch(session, src, os.path.join(dest_dir, "d.vmdk"), backoff=1.0)
    assert r["digests"]["sha256"] == digest(local) and r["reconnects"] == 2
    assert slept == [1.0, 2.0]


def test_a_kept_alive_connection_the_host_closed_is_reopened_at_once(session, server, disk, dest_dir, monkeypatch):
    src, local = disk
    server.hang_up = True
    slept = recorded_sleeps(monkeypatch)
    r = fetch(session, src, os.path.join(dest_dir, "d.vmdk"), areas=[{"start": o, "length": n} for o, n in ISLANDS],
              backoff=1.0)
    assert r["digests"]["sha256"] == digest(local) and r["reconnects"] == 0
    assert slept == []  # no backoff: not a failure
    assert len(server.requests("GET")) == 3


def test_an_empty_file(session, store, dest_dir):
    src, local = put(store, "empty.vmsd", 0, [])
    r = fetch(session, src, os.path.join(dest_dir, "empty.vmsd"), algorithms=["md5"])
    assert r["verified"] and r["size"] == 0 and r["digests"]["md5"] == hashlib.md5(b"").hexdigest()


def test_session_expired_once_logs_in_again_once(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    server.expire_at = 2  # HEAD passes, the GET finds the session gone
    r = fetch(session, src, dest)
    assert r["verified"] and r["digests"]["sha256"] == digest(local)
    assert r["relogins"] == 1 and session.logins == 2
    assert [x["status"] for x in server.requests()][:3] == [200, 401, 206]


def test_a_cookie_refused_again_after_a_new_login_fails_and_changes_nothing(session, server, disk, dest_dir):
    src, dummy = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    server.reject_all = True
    with pytest.raises(VsphereConnectionError) as err:
        fetch(session, src, dest)
    assert "HTTP 401" in err.value.message and "again right after a new login" in err.value.message
    assert session.logins == 2 and leftovers(dest) == []
    assert session.token not in err.value.message


def test_the_cookie_is_what_the_server_wants(session, server, disk, dest_dir):
    """Without the session cookie the server refuses (as ESXi does): the fetch logs in and sends the new one."""
    src, local = disk
    session.token = "not-a-session"
    r = fetch(session, src, os.path.join(dest_dir, "d.vmdk"))
    assert r["relogins"] == 1 and r["digests"]["sha256"] == digest(local)
    assert server.requests()[0]["status"] == 401 and all(x["cookie_ok"] for x in server.requests()[1:])


def test_rerun_after_interruption_fetches_only_the_rest(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    with pytest.raises(Interrupt):
        fetch(session, src, dest, checkpoint_bytes=MIB, mark_bytes=MIB, block_size=256 * KIB,
              progress=interrupt_after(14 * MIB))
    with open(dest + ".partial.json") as fh:
        side = json.load(fh)
    prefix = side["prefix"]["offset"]
    assert 0 < prefix <= side["copied_upto"] < 24 * MIB
    assert side["prefix"]["digests"]["sha256"] == hashlib.sha256(open(local, "rb").read(prefix)).hexdigest()
    server.log[:] = []
    r = fetch(session, src, dest, checkpoint_bytes=MIB, mark_bytes=MIB)
    assert r["verified"] and r["digests"]["sha256"] == digest(local) == r["dest_digests"]["sha256"]
    assert r["resumed_from"] == prefix and r["fetched_bytes"] == 24 * MIB - prefix
    assert [x["range"] for x in server.requests("GET")] == ["bytes=%d-%d" % (prefix, 24 * MIB - 1)]
    assert leftovers(dest) == [dest] and same_bytes(dest, local)


def test_a_partial_copy_that_does_not_match_its_recorded_digests_starts_over(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    with pytest.raises(Interrupt):
        fetch(session, src, dest, checkpoint_bytes=MIB, mark_bytes=MIB, progress=interrupt_after(14 * MIB))
    with open(dest + ".partial", "r+b") as fh:  # the storage lost a byte of the verified prefix
        fh.seek(100)
        fh.write(b"\xff")
    server.log[:] = []
    r = fetch(session, src, dest)
    assert r["verified"] and r["digests"]["sha256"] == digest(local) and same_bytes(dest, local)
    assert r["resumed_from"] == 0 and r["fetched_bytes"] == 24 * MIB and "started over" in r["msg"]


def test_a_source_changed_between_runs_starts_over(session, server, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    with pytest.raises(Interrupt):
        fetch(session, src, dest, checkpoint_bytes=MIB, mark_bytes=MIB, progress=interrupt_after(14 * MIB))
    st = os.stat(local)
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10 ** 9))
    r = fetch(session, src, dest)
    assert r["resumed_from"] == 0 and r["fetched_bytes"] == 24 * MIB and r["digests"]["sha256"] == digest(local)


def test_other_areas_are_another_source(session, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    with pytest.raises(Interrupt):
        fetch(session, src, dest, checkpoint_bytes=MIB, mark_bytes=MIB, progress=interrupt_after(14 * MIB))
    r = fetch(session, src, dest, areas=[{"start": o, "length": n} for o, n in ISLANDS])
    assert r["resumed_from"] == 0 and r["digests"]["sha256"] == digest(local)


def test_a_source_that_changes_while_fetched_is_an_error(session, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")

    def touch(name, done, total):
        if name == "copy" and done >= 4 * MIB and not touch.done:
            touch.done = True
            st = os.stat(local)
            os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns + 3 * 10 ** 9))
    touch.done = False
    with pytest.raises(EvidenceSourceError) as err:
        fetch(session, src, dest, progress=touch)
    assert "changed while it was fetched" in err.value.message
    assert not os.path.exists(dest)


def test_kill_9_mid_fetch_then_the_rerun_fetches_the_rest(session, server, disk, dest_dir, cert):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    server.delay = 0.01  # 64 KiB per 10 ms: about 6 MiB/s
    script = textwrap.dedent("""
        import http.client, ssl
        from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as f
        class S(object):
            where = "127.0.0.1:%(port)d"
            def connection(self):
                return http.client.HTTPSConnection("127.0.0.1", %(port)d,
                                                   context=ssl.create_default_context(cafile=%(ca)r), timeout=10)
            def cookie(self):
                return 'vmware_soap_session="%(token)s"'
            def relogin(self):
                pass
            def tls_record(self):
                return {}
        f.fetch_file(S(), %(src)r, %(dest)r, %(dc)r, datastores=[%(ds)r], checkpoint_bytes=1048576,
                     mark_bytes=1048576)
    """) % {"port": server.port, "ca": cert[0], "token": session.token, "src": src,
            "dest": dest, "dc": DC, "ds": DS}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = c.read_sidecar(dest + ".partial.json")
            if state and state.get("prefix", {}).get("offset", 0) >= 4 * MIB:
                break
            assert child.poll() is None, "the fetch ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no verified prefix of 4 MiB within 60 s")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not os.path.exists(dest) and os.path.exists(dest + ".partial")
    server.delay = 0
    with open(dest + ".partial.json") as fh:
        prefix = json.load(fh)["prefix"]["offset"]
    server.log[:] = []
    r = fetch(session, src, dest)
    assert r["verified"] and r["digests"]["sha256"] == digest(local) and same_bytes(dest, local)
    assert r["resumed_from"] == prefix >= 4 * MIB and r["fetched_bytes"] == 24 * MIB - prefix
    assert server.requests("GET")[0]["range"] == "bytes=%d-%d" % (prefix, 24 * MIB - 1)


def test_rerun_with_the_copy_in_place_changes_nothing(session, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    first = fetch(session, src, dest)
    mtime = os.stat(dest).st_mtime_ns
    again = fetch(session, src, dest)
    assert not again["changed"] and again["verified"] and "nothing was written" in again["msg"]
    assert again["digests"] == again["dest_digests"] == first["digests"]
    assert os.stat(dest).st_mtime_ns == mtime


def test_an_existing_different_destination_is_refused_unless_forced(session, disk, dest_dir):
    src, local = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    with open(dest, "wb") as fh:
        fh.write(b"something else")
    with pytest.raises(DestinationError) as err:
        fetch(session, src, dest)
    assert "force=true" in err.value.message
    with open(dest, "rb") as fh:
        assert fh.read() == b"something else"
    r = fetch(session, src, dest, force=True)
    assert r["verified"] and same_bytes(dest, local)


def test_expected_digest_mismatch_leaves_nothing(session, disk, dest_dir):
    src, dummy = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    with pytest.raises(HashMismatchError) as err:
        fetch(session, src, dest, expected={"sha256": "0" * 64})
    assert "does not match the expected digest" in err.value.message
    assert leftovers(dest) == []


def test_check_mode_sends_head_only_and_writes_nothing(session, server, disk, dest_dir):
    src, dummy = disk
    dest = os.path.join(dest_dir, "disk.vmdk")
    r = fetch(session, src, dest, check_mode=True, expected={"md5": "0" * 32},
              areas=[{"start": 0, "length": 3 * MIB}])
    assert r["changed"] and r["size"] == 24 * MIB and r["digests"] == {} and not r["verified"]
    assert "Would fetch" in r["msg"] and "HEAD only" in r["msg"] and r["areas_used"]["area_bytes"] == 3 * MIB
    assert leftovers(dest) == [] and os.listdir(dest_dir) == []
    assert [x["method"] for x in server.requests()] == ["HEAD"]


def test_missing_file_and_wrong_datacenter_are_sentences(session, store, dest_dir):
    with pytest.raises(EvidenceSourceError) as err:
        fetch(session, "[%s] vm [1] x/nope.vmdk" % DS, os.path.join(dest_dir, "x"))
    assert "HTTP 404" in err.value.message and "check the datastore path" in err.value.message
    put(store, "a.vmdk", MIB, [(0, MIB)])
    with pytest.raises(EvidenceSourceError):
        f.fetch_file(session, "[%s] vm [1] x/a.vmdk" % DS, os.path.join(dest_dir, "x"), "dc2", backoff=0)


def test_refusals_before_any_request(session, server, disk, dest_dir):
    src, dummy = disk
    with pytest.raises(InvalidInputError):
        fetch(session, src, "relative/dest")
    with pytest.raises(DestinationError):
        fetch(session, src, os.path.join(dest_dir, "missing folder", "x"))
    with pytest.raises(InvalidInputError) as err:
        fetch(session, "[nosuch] a/b.vmdk", os.path.join(dest_dir, "x"))
    assert "does not have" in err.value.message
    with pytest.raises(InvalidInputError):
        fetch(session, "%s" % DS, os.path.join(dest_dir, "x"))
    with pytest.raises(InvalidInputError):
        fetch(session, src, os.path.join(dest_dir, "x"), areas=[{"start": -1, "length": 5}])
    assert server.requests() == []
    with pytest.raises(InvalidInputError) as err:  # known only after HEAD: past the end of the file
        fetch(session, src, os.path.join(dest_dir, "x"), areas=[{"start": 24 * MIB - 1, "length": 2}])
    assert "past the end" in err.value.message
    assert [x["method"] for x in server.requests()] == ["HEAD"]


def test_a_server_that_ignores_range_cannot_serve_areas(session, server, disk, dest_dir):
    src, local = disk
    server.ignore_range = True
    r = fetch(session, src, os.path.join(dest_dir, "whole"))  # from byte 0 a whole answer is fine
    assert r["digests"]["sha256"] == digest(local)
    with pytest.raises(EvidenceSourceError) as err:
        fetch(session, src, os.path.join(dest_dir, "areas"), areas=[{"start": MIB, "length": MIB}])
    assert "ignores Range requests" in err.value.message


def test_an_untrusted_certificate_is_not_retried(server, disk, dest_dir, tmp_path, monkeypatch):
    src, dummy = disk
    slept = recorded_sleeps(monkeypatch)

    class Untrusting(Session):
        def __init__(self, srv):
            Session.__init__(self, srv, None)
            self.ctx = ssl.create_default_context()  # the system's anchors: not our self-signed certificate

    s = Untrusting(server)
    with pytest.raises(VsphereConnectionError) as err:
        f.fetch_file(s, src, os.path.join(dest_dir, "x"), DC, datastores=[DS])  # default backoff: would sleep
    assert slept == [] and "nothing was sent" in err.value.message
    assert server.requests() == []


# -- the pieces ----------------------------------------------------------------------------------

def test_split_source_and_url_quoting():
    assert f.split_source("[SAN [gold]] vm [1]/vm [1]-flat.vmdk", ["SAN [gold]", "SAN"]) == (
        "SAN [gold]", "vm [1]/vm [1]-flat.vmdk")
    assert f.split_source("[datastore1] Windows XP/Windows XP.vmsn") == ("datastore1", "Windows XP/Windows XP.vmsn")
    for bad in ("no brackets", "[ds]", "[ds] folder/", "[ds] a/../b", "[ds] ./b"):
        with pytest.raises(InvalidInputError):
            f.split_source(bad)
    assert f.folder_url_path("SAN [gold]", "vm #1/a&b?.vmdk", "DC 1/x") == (
        "/folder/vm%20%231/a%26b%3F.vmdk?dcPath=DC%201%2Fx&dsName=SAN%20%5Bgold%5D")


def test_normalize_areas():
    assert f.normalize_areas([{"start": 10, "length": 5}, (0, 4), (4, 2), (12, 10), (30, 0)], 100) == [
        (0, 6), (10, 12)]
    assert f.normalize_areas([], 100) == []
    for bad in ([{"start": "x", "length": 1}], [{"start": 1}], [(True, 2)], [(-1, 2)], [(1, -2)]):
        with pytest.raises(InvalidInputError):
            f.normalize_areas(bad, 100)
    with pytest.raises(InvalidInputError):
        f.normalize_areas([(90, 11)], 100)
    assert f.areas_fingerprint(None) == "whole" and f.areas_fingerprint([(0, 1)]) != f.areas_fingerprint([(0, 2)])


def test_extents_cover_the_file_from_the_start_offset():
    s = f.HttpsSource(None, "/", "x").configure(100, None, [(10, 20), (50, 10)])
    assert list(s.extents()) == [(0, 10, False), (10, 20, True), (30, 20, False), (50, 10, True), (60, 40, False)]
    s.configure(100, None, [(10, 20), (50, 10)], start=15)
    assert list(s.extents()) == [(15, 15, True), (30, 20, False), (50, 10, True), (60, 40, False)]
    s.configure(100, None, None, start=40)
    assert list(s.extents()) == [(40, 60, True)]
    s.configure(100, None, [(0, 100)], start=100)
    assert list(s.extents()) == []


def test_prefix_marks_pick_the_latest_offset_every_algorithm_reached():
    a = f.MarkingHashConsumer(hashlib.new("sha256"), every=10)
    b = f.MarkingHashConsumer(hashlib.new("md5"), every=10)
    data = os.urandom(35)
    for off in range(0, 35, 5):
        a.consume(memoryview(data)[off:off + 5], off, True)
    for off in range(0, 20, 5):
        b.consume(memoryview(data)[off:off + 5], off, True)
    marks = f.PrefixMarks([a, b], {"offset": 5, "digests": {"sha256": "x", "md5": "y"}})
    want = {"sha256": hashlib.sha256(data[:20]).hexdigest(), "md5": hashlib.md5(data[:20]).hexdigest()}
    assert marks(100) == {"prefix": {"offset": 20, "digests": want}}
    assert marks(15)["prefix"]["offset"] == 10
    assert marks(7)["prefix"] == {"offset": 5, "digests": {"sha256": "x", "md5": "y"}}


def test_is_zero():
    assert is_zero(memoryview(bytes(MIB))) and is_zero(memoryview(bytearray(10))) and is_zero(memoryview(b""))
    for where in (0, 4095, 4096, MIB - 1):
        buf = bytearray(MIB)
        buf[where] = 1
        assert not is_zero(memoryview(buf))
    buf = bytearray(3 * MIB)
    assert is_zero(memoryview(buf)[:MIB + 3])


def test_dest_writer_skips_zero_blocks_only_when_asked(tmp_path):
    for skip, expect in ((True, 64 * KIB), (False, 128 * KIB)):
        path = str(tmp_path / ("w%s" % skip))
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            os.ftruncate(fd, 128 * KIB)
            w = c.DestWriter(fd, path, skip_zeros=skip)
            w.consume(memoryview(bytes(64 * KIB)), 0, True)
            w.consume(memoryview(b"\x01" * (64 * KIB)), 64 * KIB, True)
            w.wait()
            assert w.written == expect and w.zero_bytes == 128 * KIB - expect and w.done_upto == 128 * KIB
        finally:
            os.close(fd)
    assert os.stat(str(tmp_path / "wTrue")).st_blocks * 512 <= 64 * KIB + 4096


def test_data_runs_follow_64k_pieces_at_file_offsets():
    buf = bytearray(MIB)
    assert data_runs(memoryview(buf), 0) == []
    buf[20] = 1  # piece 0
    buf[3 * 64 * KIB + 7] = 1  # piece 3
    buf[4 * 64 * KIB] = 1  # piece 4: one run with 3
    buf[MIB - 1] = 1  # the last piece
    assert data_runs(memoryview(buf), 0) == [(0, 64 * KIB), (3 * 64 * KIB, 2 * 64 * KIB), (15 * 64 * KIB, 64 * KIB)]
    # a view that starts mid-piece: pieces follow the file's offsets, not the view's
    assert data_runs(memoryview(buf)[10:], 10) == [(0, 64 * KIB - 10), (3 * 64 * KIB - 10, 2 * 64 * KIB),
                                                   (15 * 64 * KIB - 10, 64 * KIB)]
    assert data_runs(memoryview(b"\x00" * 100 + b"\x01"), 64 * KIB - 100) == [(100, 1)]


def test_http_date_utc():
    assert f.http_date_utc("Sun, 06 Dec 2026 06:30:22 GMT") == "2026-12-06T06:30:22Z"
    assert f.http_date_utc(None) is None and f.http_date_utc("garbage") is None


# -- changed block tracking (QueryChangedDiskAreas), with pyVmomi's own data objects ----------------

class FakeVm(object):
    def __init__(self, moref, pages=None, fault=None):
        self._moId = moref
        self.pages = pages or []
        self.fault = fault
        self.calls = []

    def QueryChangedDiskAreas(self, snapshot, deviceKey, startOffset, changeId):  # noqa: N802 (the API's name)
        self.calls.append((getattr(snapshot, "_moId", None), deviceKey, startOffset, changeId))
        if self.fault is not None:
            raise self.fault
        return self.pages[len(self.calls) - 1]


class FakeClient(object):
    where = "esxi.test"
    datacenter = None

    def __init__(self, vm, props):
        self.vm = vm
        self.props = props

    def retrieve(self, obj_type, paths, container=None):
        return [(self.vm, {"name": self.props["name"]})]

    def properties(self, obj, paths):
        return dict((k, v) for k, v in self.props.items() if k in paths)

    def find_vm(self, name=None, uuid=None):
        if name == self.props["name"]:
            return self.vm
        raise InvalidInputError("no VM %s" % name)


def _cbt_client(enabled=True, capacity=300, pages=None, fault=None):
    vim = pytest.importorskip("pyVmomi").vim
    disk = vim.vm.device.VirtualDisk(key=2000, capacityInBytes=capacity)
    snap = type("Snap", (), {"_moId": "snapshot-7"})()
    tree = type("Info", (), {"rootSnapshotList": [type("Node", (), {"snapshot": snap, "childSnapshotList": []})()]})()
    vm = FakeVm("vm-42", pages, fault)
    props = {"name": "Windows XP", "config.changeTrackingEnabled": enabled, "config.hardware.device": [disk],
             "snapshot": tree}
    return FakeClient(vm, props), vm, vim


def _page(vim, start, length, areas):
    return vim.DiskChangeInfo(startOffset=start, length=length,
                              changedArea=[vim.DiskChangeInfo.DiskChangeExtent(start=s, length=n) for s, n in areas])


def test_changed_areas_are_read_page_by_page():
    client, vm, vim = _cbt_client()
    vm.pages = [_page(vim, 0, 100, [(0, 10), (50, 5)]), _page(vim, 100, 150, []), _page(vim, 250, 50, [(290, 10)])]
    areas, note = f.changed_disk_areas(client, "Windows XP", 2000, 300, "snapshot-7")
    assert areas == [{"start": 0, "length": 10}, {"start": 50, "length": 5}, {"start": 290, "length": 10}]
    assert vm.calls == [("snapshot-7", 2000, 0, "*"), ("snapshot-7", 2000, 100, "*"), ("snapshot-7", 2000, 250, "*")]
    assert note == {"vm": "vm-42", "disk_key": 2000, "snapshot": "snapshot-7", "source": "changed block tracking",
                    "pages": 3}
    # by moref too
    vm.calls[:] = []
    assert f.changed_disk_areas(client, "vm-42", 2000, 300, "snapshot-7")[0] == areas


def test_changed_areas_fall_back_to_the_whole_file_saying_why():
    client, vm, vim = _cbt_client(enabled=False)
    areas, note = f.changed_disk_areas(client, "vm-42", 2000, 300)
    assert areas is None and note["source"] == "whole file" and "changed block tracking is off" in note["reason"]
    assert vm.calls == []
    client, vm, vim = _cbt_client(capacity=400)
    areas, note = f.changed_disk_areas(client, "vm-42", 2000, 300)
    assert areas is None and "not the disk's flat extent" in note["reason"]
    client, vm, vim = _cbt_client(fault=pytest.importorskip("pyVmomi").vmodl.fault.NotSupported(msg="no CBT here"))
    areas, note = f.changed_disk_areas(client, "vm-42", 2000, 300)
    assert areas is None and "QueryChangedDiskAreas failed" in note["reason"] and "NotSupported" in note["reason"]


def test_changed_areas_refusals():
    client, vm, vim = _cbt_client()
    with pytest.raises(InvalidInputError):
        f.changed_disk_areas(client, "vm-42", 2001, 300)
    with pytest.raises(InvalidInputError):
        f.changed_disk_areas(client, "vm-42", 2000, 300, "snapshot-99")
    vm.pages = [_page(vim, 0, 0, [])]
    with pytest.raises(Exception) as err:
        f.changed_disk_areas(client, "vm-42", 2000, 300)
    assert "without moving on" in str(err.value)


def test_module_argument_spec_matches_its_documentation():
    import yaml
    from ansible_collections.dfir.vmcollect.plugins.modules import datastore_fetch as m
    doc = yaml.safe_load(m.DOCUMENTATION)
    spec = m.argument_spec()
    own = set(spec) - set(["hostname", "username", "password", "port", "validate_certs", "ca_file", "thumbprint",
                           "timeout", "case_id", "journal_dir", "progress_file"])  # in doc fragments
    assert own == set(doc["options"])
    assert spec["areas"]["options"].keys() == doc["options"]["areas"]["suboptions"].keys()
    returned = yaml.safe_load(m.RETURN)
    for key in ("src", "dest", "size", "data_bytes", "hole_bytes", "digests", "dest_digests", "verified",
                "resumed_from", "src_url", "transport", "areas_used", "tls", "seconds", "rate_mib_s"):
        assert key in returned


def test_a_fetch_writes_its_progress_file_as_evidence_copy_does(session, disk, dest_dir, tmp_path, monkeypatch):
    src, dummy = disk
    dest = os.path.join(dest_dir, "disk [1]-flat.vmdk")
    progress = str(tmp_path / "progress.json")
    monkeypatch.setattr(f._copy, "PROGRESS_INTERVAL", 0.0)
    phases = []

    def watch(phase, done, total):
        with open(progress) as fp:
            phases.append(json.load(fp)["phase"])

    fetch(session, src, dest, progress=watch, progress_file=progress)
    with open(progress) as fp:
        last = json.load(fp)
    assert phases[0] == "copy" and "verify" in phases
    assert (last["phase"], last["bytes_done"], last["bytes_total"], last["src"], last["dest"]) == (
        "done", 24 * MIB, 24 * MIB, src, dest)
    check = str(tmp_path / "check.json")
    r = fetch(session, src, os.path.join(dest_dir, "other.vmdk"), check_mode=True, progress_file=check)
    assert r["changed"] and not os.path.exists(check)  # check mode writes nothing, not even its progress
