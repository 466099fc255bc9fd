# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The field write-up's ``vmkfstools -i <frozen>.vmdk -d thin /vmfs/volumes/evidence/<vm>/<vm>.vmdk``, done by the
ESXi host itself through the vSphere API (module vmkfstools_clone, engine ``api``).

The host copies; nothing crosses the network but the hash reads:

- a disk: ``VirtualDiskManager.CopyVirtualDisk_Task(sourceName=<frozen descriptor>, destName=<dest>,
  destSpec=VirtualDiskSpec(diskType thin, adapterType from the source descriptor), force=False)``. ESXi follows the
  descriptor's chain: the frozen base of a snapshot gives a standalone thin copy of that base (its ``-flat.vmdk``
  holds the same logical bytes, unallocated blocks stay holes on VMFS), a delta gives the disk consolidated at that
  delta, as ``vmkfstools -i`` does;
- other files (a memory snapshot's ``.vmem``/``.vmsn``): ``FileManager.CopyDatastoreFile_Task(force=False)``, byte
  for byte. A ``.vmdk`` is refused there: to vSphere it is a disk, whose extents such a copy takes along.

Both create the destination folder first when it is missing (``FileManager.MakeDirectory``,
``createParentDirectories``). They write only onto the destination datastore, which must not hold any of the
sources: the evidence datastore made on the collector's LUN.

The sources are hashed where they lie, over HTTPS in the same module run, before the copy (``fetch.hash_file``: one
read, every algorithm, a disk's base extent by its allocated areas when changed block tracking answers), and their
size and modification time are checked again after the copy: the digests describe what the host copied. The
destination is not read back here: it lies on the collector's LUN, and the collector re-hashes it from there.

Every destination gets a marker beside it, ``<dest>.dfir-vmcollect.json``: what was copied from where, when, by whom
(the case), the source files' identities and digests, and the source descriptors' text as read. It is written
last, once the copy is checked; its presence with the run's ``copy_id`` is what "complete" means on the datastore.

Journal (action ``vsphere.evidence_file``), per destination, before anything is created: the folders a copy had to
make (``kind: folders``) and each copy (``kind: disk`` or ``file``: its files and marker, a random ``copy_id``);
``applied`` once the marker is written. Undo: a completed copy is evidence and is never removed ("kept: evidence");
what a failed or interrupted copy left (the journal holds no ``applied`` for it and its marker is absent) is removed
with DeleteVirtualDisk_Task / DeleteDatastoreFile_Task, after waiting (bounded) for copy tasks still running on the
host; a folder the copy made is removed only when it is empty. Nothing is removed on a datastore that holds a
source. A record with ``"engine": "ssh"`` (made by the SSH engine, ``_esxi_shell.clone``, under the same action so
that each engine sees the other's unfinished copies) is handed to that engine's undo (``ENGINE_UNDO``) unless the
journal says it is complete. Idempotent: a destination that is a complete copy of the same source (its marker, sizes
and the source's digests agree) is reported with ``changed=false``; anything else at the destination is refused,
never replaced.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import hashlib
import http.client
import json
import os
import posixpath
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
    StoppedError,
    VmcollectError,
    VsphereConnectionError,
    VsphereError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import DEFAULT_BLOCK_SIZE, normalize_algorithms
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.vmdk_descriptor import parse_descriptor
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal, undo_handler, utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as _client
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as _fetch

ACTION = "vsphere.evidence_file"
MODULE = "vmkfstools_clone"
ENGINES = ("api",)  # this file's engine; the SSH engine (vmkfstools itself) is _esxi_shell.clone
TRANSPORT = "iscsi-datastore"
COPIED_BY_DISK = "vmkfstools_clone (CopyVirtualDisk_Task, thin)"
COPIED_BY_FILE = "vmkfstools_clone (CopyDatastoreFile_Task)"
MARKER_SUFFIX = ".dfir-vmcollect.json"
MARKER_FORMAT = "dfir.vmcollect evidence copy 1"
USER_AGENT = "dfir.vmcollect vmkfstools_clone"
MAX_DESCRIPTOR = 1024 * 1024  # bytes: a text descriptor is a few hundred; more is not one
MAX_MARKER = 4 * 1024 * 1024
MAX_CHAIN = 64
VERIFY_NOTE = ("Not read back here: the destination lies on the evidence datastore (the collector's LUN), and the "
               "collector re-hashes it from the LUN against the source digests.")
# what a result says of the engine that made it (the SSH engine, _esxi_shell.clone, has its own)
API_STYLE = {"engine": "api", "copied_by_disk": COPIED_BY_DISK, "copied_by_file": COPIED_BY_FILE,
             "verify_note": VERIFY_NOTE,
             "summary": "The sources were hashed where they lie, over HTTPS; the destinations are verified on the "
                        "collector."}
# undo of a ``vsphere.evidence_file`` record made by another engine (its ``engine``): engine -> fn(undo, ctx)
ENGINE_UNDO = {}
# extent types of a text descriptor: data in a plain file, in a delta, or not in a file of the datastore
DATA_EXTENTS = ("VMFS", "FLAT")
DELTA_EXTENTS = ("VMFSSPARSE", "SESPARSE", "SPARSE")
RESERVED_SUFFIXES = ("-flat.vmdk", "-delta.vmdk", "-sesparse.vmdk", "-ctk.vmdk", "-rdm.vmdk", "-rdmp.vmdk")
_COPY_TASKS = ("copyvirtualdisk", "copydatastorefile")


# -- descriptors ---------------------------------------------------------------------------------------------------

def adapter_type(value):
    """(VirtualDiskAdapterType, note) for a descriptor's ddb.adapterType. The API names three; a descriptor's adapter
    only sets the geometry hint of the copy, so the others (lsisas1068, pvscsi, legacyESX) become lsiLogic, said."""
    known = {"ide": "ide", "buslogic": "busLogic", "lsilogic": "lsiLogic"}
    key = (value or "").strip().lower()
    if key in known:
        return known[key], None
    return "lsiLogic", ("the source descriptor's adapter type %r is none the API names (ide, busLogic, lsiLogic); the "
                        "copy's descriptor says lsiLogic (it sets only the geometry hint, not the data)"
                        % (value or "(none)"))


def resolve_hint(hint, descriptor, datastores=(), urls=None):
    """The datastore path of a parentFileNameHint: a relative hint lies beside ``descriptor``; an absolute one
    (``/vmfs/volumes/<uuid or name>/...``) on the datastore whose URL or name it starts with."""
    datastore, relative = _client.parse_datastore_path(descriptor, datastores)
    if not hint.startswith("/"):
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(relative), hint))
        if joined == ".." or joined.startswith("../"):
            raise EvidenceSourceError("The parent %r named by %s lies outside its datastore." % (hint, descriptor),
                                      failed_path=descriptor)
        return _client.datastore_path(datastore, joined)
    for name, url in sorted((urls or {}).items()):
        for base in (_url_path(url), "/vmfs/volumes/%s" % name):
            if base and hint.startswith(base + "/"):
                return _client.datastore_path(name, hint[len(base) + 1:])
    raise EvidenceSourceError("The parent %r named by %s is on no datastore of the host (it knows %s)."
                              % (hint, descriptor, ", ".join(sorted(urls or {})) or "none"), failed_path=descriptor)


def _url_path(url):
    url = (url or "").strip()
    if url.startswith("ds://"):
        url = url[len("ds://"):]
    return url.rstrip("/")


def _basename(path):
    """The file name of a datastore path."""
    return posixpath.basename(_client.parse_datastore_path(path)[1].rstrip("/"))


def marker_path(dest):
    return dest + MARKER_SUFFIX


def extent_path(dest):
    """The data file ESXi gives a VMFS clone named ``dest``: '<dest without .vmdk>-flat.vmdk'."""
    return dest[:-len(".vmdk")] + "-flat.vmdk"


# -- inputs --------------------------------------------------------------------------------------------------------

def check_inputs(params, engines=ENGINES):
    """Refuse malformed options before the host is asked anything; returns the normalized (src, dest, files,
    algorithms). ``engines``: the engines the caller runs (the module passes all of them)."""
    engine = params.get("engine") or "api"
    if engine not in engines:
        raise InvalidInputError("engine %r is not available here; this copy is made by %s."
                                % (engine, ", ".join(engines)))
    src, dest = params.get("src"), params.get("dest")
    files = params.get("files") or []
    if not src and not files:
        raise InvalidInputError("Give src (the frozen disk's descriptor) and dest, or files, or both; there is nothing "
                                "to copy.")
    if src and not dest:
        raise InvalidInputError("src %s needs dest: the datastore path of the copy's descriptor on the evidence "
                                "datastore ('[evidence] <vm>/<vm>.vmdk')." % src)
    if dest and not src:
        raise InvalidInputError("dest %s is the copy of a disk: give its src (the frozen descriptor)." % dest)
    if src:
        for what, value in (("src", src), ("dest", dest)):
            _fetch.split_source(value)
            if not value.endswith(".vmdk"):
                raise InvalidInputError("%s %s is not a disk descriptor (<name>.vmdk)." % (what, value))
        low = dest.lower()
        if any(low.endswith(s) for s in RESERVED_SUFFIXES):
            raise InvalidInputError("dest %s ends like a disk's data file (%s); name the copy's descriptor, "
                                    "'<name>.vmdk'." % (dest, ", ".join(RESERVED_SUFFIXES)))
    entries = []
    for i, item in enumerate(files):
        item = item if isinstance(item, dict) else {"src": item}
        f_src, f_dest = item.get("src"), item.get("dest")
        if not f_src:
            raise InvalidInputError("files[%d] has no src." % i)
        _fetch.split_source(f_src)
        if not f_dest:
            if not dest:
                raise InvalidInputError("files[%d] (%s) has no dest, and there is no dest beside which to put it; "
                                        "give files[%d].dest." % (i, f_src, i))
            d_store, d_rel = _client.parse_datastore_path(dest)
            f_dest = _client.datastore_path(d_store, posixpath.join(posixpath.dirname(d_rel),
                                                                    posixpath.basename(_fetch.split_source(f_src)[1])))
        _fetch.split_source(f_dest)
        for what, value in (("src", f_src), ("dest", f_dest)):
            if value.lower().endswith(".vmdk"):
                raise InvalidInputError(
                    "files[%d].%s %s is a .vmdk: to vSphere that is a virtual disk, whose extents a file copy takes "
                    "along. Clone a disk with src/dest (thin); every source descriptor's text is kept in the marker "
                    "beside the clone and hashed." % (i, what, value))
            if value.endswith(MARKER_SUFFIX):
                raise InvalidInputError("files[%d].%s %s is named like this module's markers (*%s)."
                                        % (i, what, value, MARKER_SUFFIX))
        entries.append({"src": f_src, "dest": f_dest})
    algorithms = normalize_algorithms(params.get("algorithms") or ["sha256"])
    for opt in ("block_size", "request_timeout"):
        if params.get(opt) is not None and params[opt] <= 0:
            raise InvalidInputError("%s must be positive, not %s." % (opt, params[opt]))
    if params.get("retries") is not None and params["retries"] < 0:
        raise InvalidInputError("retries must be 0 or more, not %s." % params["retries"])
    return src, dest, entries, algorithms


# -- the host: HTTP, the datastore browser, tasks -----------------------------------------------------------------

class Host(object):
    """What a run knows of the host: its client and HTTP session, the datacenter (name and object) and the datastores
    (names, URLs, browsers)."""

    def __init__(self, client, request_timeout=_fetch.DEFAULT_REQUEST_TIMEOUT, retries=_fetch.DEFAULT_RETRIES,
                 datacenter=None):
        self.client = client
        self.session = _fetch.ClientSession(client, request_timeout)
        self.retries = retries
        if datacenter:  # the one given, or the journaled one (an undo): no need to pick one of several
            self.datacenter = datacenter
            self.datastores = [_client.unescape_name(v.get("name"))
                               for dummy, v in client.retrieve(_client.vim.Datastore, ["name"])]
        else:
            self.datacenter, self.datastores = _fetch.host_names(client)
        self.dc_obj = _datacenter_obj(client, self.datacenter)
        self._ds = None
        self._listings = {}

    def _datastore_values(self):
        if self._ds is None:
            self._ds = dict((_client.unescape_name(v.get("name")), (obj, v))
                            for obj, v in self.client.retrieve(_client.vim.Datastore, ["name", "browser", "summary.url"]))
        return self._ds

    def urls(self):
        return dict((name, v.get("summary.url")) for name, (dummy, v) in self._datastore_values().items())

    def browser(self, datastore):
        found = self._datastore_values().get(datastore)
        if found is None:
            raise InvalidInputError("%s has no datastore %r; it has %s." % (
                self.client.where, datastore, ", ".join(repr(d) for d in sorted(self._datastore_values())) or "none"))
        return found[1]["browser"]

    def url_path(self, path):
        datastore, relative = _fetch.split_source(path, self.datastores)
        return _fetch.folder_url_path(datastore, relative, self.datacenter)

    # -- HTTP (small files: descriptors, markers) ----------------------------------------------------------------
    def http(self, method, path, body=None, limit=MAX_MARKER):
        """(status, body) of one request for the datastore file ``path``; HTTP 401 logs in again once."""
        url_path = self.url_path(path)
        for attempt in (1, 2):
            conn = self.session.connection()
            try:
                headers = {"Cookie": self.session.cookie(), "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
                if body is not None:
                    headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(len(body))})
                conn.request(method, url_path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read(limit + 1) if method != "HEAD" else b""
                status = resp.status
                modified = resp.getheader("Last-Modified")
                length = resp.getheader("Content-Length")
            except VmcollectError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                raise self.session.convert(exc, "%s %s" % (method, path)) or VsphereConnectionError(
                    "%s %s on %s failed: %s." % (method, path, self.session.where, exc))
            finally:
                conn.close()
            if status == 401 and attempt == 1:
                self.session.relogin()
                continue
            if len(data) > limit:
                raise EvidenceSourceError("%s holds more than %d bytes; it is not what this module writes or reads "
                                          "there." % (path, limit), failed_path=path)
            return status, data, modified, length
        raise VsphereConnectionError("%s refused the session cookie (HTTP 401) for %s again right after a new login; "
                                     "the user may lack the privilege Datastore.Browse." % (self.session.where, path))

    def get(self, path, limit=MAX_MARKER):
        """The bytes of a small datastore file, or None when it does not exist (404)."""
        status, data, dummy, dummy2 = self.http("GET", path, limit=limit)
        if status == 404:
            return None
        if status != 200:
            raise VsphereError("%s answered GET of %s with HTTP %d." % (self.session.where, path, status))
        return data

    def head(self, path):
        """(size, Last-Modified or None) of a datastore file, or None when it does not exist."""
        status, dummy, modified, length = self.http("HEAD", path)
        if status == 404:
            return None
        if status != 200 or length is None or not length.strip().isdigit():
            raise VsphereError("%s answered HEAD of %s with HTTP %d%s." % (
                self.session.where, path, status, "" if length else " and no Content-Length"))
        return int(length), modified

    def put(self, path, body):
        status, data, dummy, dummy2 = self.http("PUT", path, body=body, limit=4096)
        if status not in (200, 201, 204):
            raise VsphereError("%s refused to write %s (HTTP %d%s)." % (
                self.session.where, path, status, (": %s" % data[:200].decode("utf-8", "replace").strip()) if data else ""))

    # -- the datastore browser ---------------------------------------------------------------------------------
    def listing(self, folder_path, fresh=False):
        """{name: {size, folder, capacity_kb, modified}} of the datastore folder ``folder_path`` ('[ds] a/b'), or None
        when the folder does not exist."""
        if fresh or folder_path not in self._listings:
            self._listings[folder_path] = list_folder(self.client, self.browser(_split_folder(folder_path)[0]),
                                                      folder_path)
        return self._listings[folder_path]

    def forget(self, folder_path=None):
        if folder_path is None:
            self._listings.clear()
        else:
            self._listings.pop(folder_path, None)


def _split_folder(folder_path):
    datastore, relative = _client.parse_datastore_path(folder_path)
    return datastore, relative.strip("/")


def parent_folder(path):
    """'[ds] a/b' of '[ds] a/b/c': the datastore folder that holds ``path``."""
    datastore, relative = _client.parse_datastore_path(path)
    return _client.datastore_path(datastore, posixpath.dirname(relative.rstrip("/")))


@_client.vsphere_errors("find the datacenter")
def _datacenter_obj(client, name):
    for obj, values in client.retrieve(_client.vim.Datacenter, ["name"]):
        if name in (values.get("name"), _client.unescape_name(values.get("name"))):
            return obj
    raise InvalidInputError("%s has no datacenter named %r." % (client.where, name))


@_client.vsphere_errors("list a folder in the datastore browser")
def list_folder(client, browser, folder_path):
    """See ``Host.listing``. Reads only (SearchDatastore_Task lists one folder)."""
    vim = _client.vim
    spec = vim.host.DatastoreBrowser.SearchSpec(
        matchPattern=["*"],  # brackets are glob syntax: match all, pick by name
        details=vim.host.DatastoreBrowser.FileInfo.Details(fileSize=True, modification=True, fileType=True,
                                                           fileOwner=False))
    task = browser.SearchDatastore_Task(datastorePath=folder_path, searchSpec=spec)
    try:
        result = client.wait_for_task(task, "list %s in the datastore browser" % folder_path)
    except VsphereError as exc:
        if exc.details.get("fault") in ("FileNotFound", "NotFound"):
            return None
        raise
    entries = {}
    for info in getattr(result, "file", None) or []:
        modified = getattr(info, "modification", None)
        entries[info.path] = {
            "size": getattr(info, "fileSize", None),
            "folder": isinstance(info, vim.host.DatastoreBrowser.FolderInfo),
            "capacity_kb": getattr(info, "capacityKb", None),
            "modified": modified.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if modified is not None else None}
    return entries


def _run_task(client, task, what, timeout=None, progress=None):
    """Wait for ``task`` (bounded); a module stopped by teardown (SIGTERM) cancels it first when the host allows.
    ``progress(percent)`` as in ``wait_for_task``."""
    try:
        return client.wait_for_task(task, what, timeout, progress)
    except StoppedError:
        try:
            info = client.properties(task, ["info.cancelable", "info.state"])
            if info.get("info.cancelable") and info.get("info.state") in ("queued", "running"):
                task.CancelTask()
        except Exception:  # pylint: disable=broad-except
            pass  # the journal keeps the change; teardown waits for the task and removes what it left
        raise


def running_copy_tasks(client):
    """The copy tasks (CopyVirtualDisk, CopyDatastoreFile) still queued or running on the host."""
    manager = client.content.taskManager
    found = []
    for task in client.properties(manager, ["recentTask"]).get("recentTask") or []:
        info = client.properties(task, ["info.descriptionId", "info.name", "info.state"])
        kind = ("%s %s" % (info.get("info.descriptionId") or "", info.get("info.name") or "")).lower()
        if info.get("info.state") in ("queued", "running") and any(k in kind for k in _COPY_TASKS):
            found.append(task)
    return found


def wait_for_copies(client, timeout):
    """Wait (bounded) for the copy tasks still at work on the host: a killed module's copy goes on there, and its
    destination cannot be removed under it. Returns their morefs."""
    waited = []
    deadline = time.monotonic() + float(timeout)
    for task in running_copy_tasks(client):
        try:  # one bound for them all
            client.wait_for_task(task, "copy (a task still at work on the host)",
                                 max(1, int(deadline - time.monotonic())))
        except VsphereError as exc:
            if exc.details.get("timed_out"):
                raise
            # it failed: what it left is removed like any partial copy
        waited.append(_client.moref(task))
    return waited


# -- the plan (reads only) -----------------------------------------------------------------------------------------

def read_chain(host, src):
    """The frozen descriptor ``src`` and its parents (top first), read over HTTPS: each level's path, datastore,
    create type, extents (datastore paths), virtual size, descriptor text and digest."""
    levels = []
    path = src
    urls = None
    while True:
        if len(levels) >= MAX_CHAIN or any(lv["path"] == path for lv in levels):
            raise EvidenceSourceError("The chain of %s does not end (a loop or more than %d levels at %s)."
                                      % (src, MAX_CHAIN, path), failed_path=src)
        data = host.get(path, MAX_DESCRIPTOR)
        if data is None:
            raise EvidenceSourceError("%s has no file %s%s. Nothing was changed." % (
                host.client.where, path, "" if path == src else " (the parent named by %s)" % levels[-1]["path"]),
                failed_path=path)
        desc = parse_descriptor(data, path)
        datastore, relative = _fetch.split_source(path, host.datastores)
        folder = posixpath.dirname(relative)
        extents = []
        for e in desc["extents"]:
            if e["type"] in ("VMFSRDM", "VMFSRAW") or desc["create_type"].lower().endswith("rawdevicemap"):
                raise EvidenceSourceError("%s is a raw device mapping: its data is a LUN, not a file of the datastore; "
                                          "it cannot be cloned as a file. Nothing was changed." % path, failed_path=path)
            if not e["file"] or e["type"] not in DATA_EXTENTS + DELTA_EXTENTS:
                raise EvidenceSourceError("%s has an extent of type %s%s, which this module does not clone. Nothing was "
                                          "changed." % (path, e["type"], " without a file" if not e["file"] else ""),
                                          failed_path=path)
            extents.append(_client.datastore_path(datastore, posixpath.join(folder, e["file"])))
        delta = any(e["type"] in DELTA_EXTENTS for e in desc["extents"])
        levels.append({"path": path, "datastore": datastore, "create_type": desc["create_type"], "delta": delta,
                       "extents": extents, "virtual_bytes": desc["virtual_bytes"], "cid": desc["cid"],
                       "parent_cid": desc["parent_cid"], "ddb_uuid": desc["ddb"].get("ddb.uuid"),
                       "adapter": desc["ddb"].get("ddb.adapterType"),
                       "thin": desc["ddb"].get("ddb.thinProvisioned") == "1",
                       "descriptor_bytes": len(data), "descriptor_sha256": hashlib.sha256(data).hexdigest(),
                       "descriptor_text": data.decode("utf-8")})
        if not desc["parent_hint"]:
            if delta:
                raise EvidenceSourceError("%s is a delta without a parent (no parentFileNameHint). Nothing was changed."
                                          % path, failed_path=path)
            break
        if urls is None:
            urls = host.urls()
        path = resolve_hint(desc["parent_hint"], path, host.datastores, urls)
    if any(lv["virtual_bytes"] != levels[0]["virtual_bytes"] for lv in levels):
        raise EvidenceSourceError("The levels of %s have different sizes (%s); it is not one disk. Nothing was changed."
                                  % (src, ", ".join("%s: %d" % (lv["path"], lv["virtual_bytes"]) for lv in levels)),
                                  failed_path=src)
    return levels


def _source_files(chain):
    files = []
    for depth, level in enumerate(chain):
        where = "delta " if level["delta"] else ""
        files.append({"path": level["path"], "role": where + "descriptor", "depth": depth})
        files.extend({"path": e, "role": where + "extent", "depth": depth} for e in level["extents"])
    return files


def plan_disk(host, src, dest):
    chain = read_chain(host, src)
    base = chain[-1]
    adapter, adapter_note = adapter_type(chain[0]["adapter"] or base["adapter"])
    files = _source_files(chain)
    # the clone's flat extent equals the source's one data file when nothing lies above it
    equal_to = base["extents"][0] if len(chain) == 1 and len(base["extents"]) == 1 else None
    return {"kind": "disk", "src": src, "dest": dest, "dest_extent": extent_path(dest), "marker": marker_path(dest),
            "dest_files": [dest, extent_path(dest), marker_path(dest)], "chain": chain, "source_files": files,
            "adapter": adapter, "adapter_note": adapter_note, "virtual_bytes": chain[0]["virtual_bytes"],
            "equal_to": equal_to}


def plan_file(src, dest):
    return {"kind": "file", "src": src, "dest": dest, "marker": marker_path(dest), "dest_files": [dest, marker_path(dest)],
            "source_files": [{"path": src, "role": "file", "depth": 0}]}


def check_places(host, items):
    """Refuse destinations that are not on the evidence datastore (one that holds a source), unknown datastores,
    and two copies to the same name, before any change."""
    sources = set()
    for item in items:
        for f in item["source_files"]:
            sources.add(_fetch.split_source(f["path"], host.datastores)[0])
    seen = {}
    for item in items:
        datastore = _fetch.split_source(item["dest"], host.datastores)[0]
        item["datastore"] = datastore
        item["folder"] = parent_folder(item["dest"])
        if datastore in sources:
            held = [f["path"] for i in items for f in i["source_files"]
                    if _fetch.split_source(f["path"], host.datastores)[0] == datastore]
            raise DestinationError(
                "dest %s is on the datastore %s, which holds the source %s; this module writes only onto the evidence "
                "datastore (the one made on the collector's LUN), never where the evidence lies. Nothing was changed."
                % (item["dest"], datastore, held[0]), failed_path=item["dest"])
        for name in item["dest_files"]:
            if name in seen:
                raise InvalidInputError("%s would be written twice (by the copies of %s and %s). Nothing was changed."
                                        % (name, seen[name], item["src"]))
            seen[name] = item["src"]
        item["source_datastores"] = sorted(sources)


def head_sources(host, items):
    """Size and Last-Modified of every source file (HEAD): they must exist; the identity a rerun compares."""
    for item in items:
        for f in item["source_files"]:
            found = host.head(f["path"])
            if found is None:
                raise EvidenceSourceError("%s has no file %s (a source of %s). Nothing was changed."
                                          % (host.client.where, f["path"], item["src"]), failed_path=f["path"])
            f["size"], f["modified"] = found


def _dest_listing(host, item):
    listing = host.listing(item["folder"])
    if listing is None:
        return None, []
    return listing, [n for n in (_basename(p) for p in item["dest_files"]) if n in listing]


def existing_state(host, journal, item):
    """'absent' (nothing there: copy), or 'complete' (a complete copy of the same source, by its marker and sizes:
    changed=false once its source digests agree). Anything else at the destination is refused."""
    pending = journal.find(ACTION, endpoint=host.client.where, dest=item["dest"])
    if any(not r.get("applied") for r in pending):
        raise DestinationError(
            "A copy to %s for this case was journaled but not completed (a killed or failed run). Run teardown for the "
            "case first: it removes what that copy left (a completed copy is kept). Nothing was changed." % item["dest"],
            failed_path=item["dest"])
    listing, present = _dest_listing(host, item)
    if not present:
        if pending:
            raise DestinationError("This case's journal says %s was copied completely, but it is not there any more "
                                   "(removed by hand?). Nothing was changed." % item["dest"], failed_path=item["dest"])
        return "absent", None
    raw = host.get(item["marker"])
    what = "%s already holds %s" % (item["folder"], ", ".join(present))
    if raw is None:
        raise DestinationError(
            "%s, which is not a copy this collection completed (there is no marker %s). It is never replaced: "
            "give another dest, or check and remove it yourself. Nothing was changed." % (what, item["marker"]),
            failed_path=item["dest"])
    try:
        marker = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise DestinationError("%s, whose marker %s is not JSON; it is never replaced. Nothing was changed."
                               % (what, item["marker"]), failed_path=item["dest"])
    problems = []
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        problems.append("its marker is not one this version writes")
        marker = {}
    if marker and (marker.get("kind") != item["kind"] or marker.get("src") != item["src"]
                   or marker.get("dest") != item["dest"]):
        problems.append("it is a %s of %s, not a %s of %s" % (marker.get("kind"), marker.get("src"), item["kind"],
                                                              item["src"]))
    recorded = dict((f.get("path"), f) for f in (marker.get("source") or {}).get("files") or [])
    for f in item["source_files"]:
        r = recorded.get(f["path"])
        if marker and not problems and (r is None or r.get("size") != f["size"]
                                        or (r.get("modified") and f["modified"] and r["modified"] != f["modified"])):
            problems.append("the source %s is not the one copied then (size %s, modified %s; now %s, %s)"
                            % (f["path"], (r or {}).get("size"), (r or {}).get("modified"), f["size"], f["modified"]))
    missing = [n for n in item["dest_files"] if _basename(n) not in listing]
    if missing:
        problems.append("%s missing" % ", ".join(missing))
    if not problems:
        problems.extend(_dest_problems(host, item, listing))
    if problems:
        raise DestinationError("%s, which is not a complete copy of %s: %s. It is never replaced: give another dest, "
                               "or check and remove it yourself. Nothing was changed."
                               % (what, item["src"], "; ".join(problems)), failed_path=item["dest"])
    return "complete", marker


def _dest_problems(host, item, listing):
    """Why the destination is not what the copy must have made (sizes, the clone's descriptor), or []."""
    if item["kind"] == "file":
        size = listing[_basename(item["dest"])]["size"]
        want = item["source_files"][0]["size"]
        return [] if size == want else ["it holds %s bytes, the source %d" % (size, want)]
    problems = []
    data = host.get(item["dest"], MAX_DESCRIPTOR)
    if data is None:
        return ["its descriptor %s cannot be read" % item["dest"]]
    try:
        desc = parse_descriptor(data, item["dest"])
    except EvidenceSourceError as exc:
        return [exc.message.rstrip(".")]
    extents = [e["file"] for e in desc["extents"]]
    if extents != [_basename(item["dest_extent"])]:
        problems.append("its descriptor names the extent(s) %s, not %s" % (extents, _basename(item["dest_extent"])))
    if desc["virtual_bytes"] != item["virtual_bytes"]:
        problems.append("its descriptor's extent holds %d bytes, the source disk %d"
                        % (desc["virtual_bytes"], item["virtual_bytes"]))
    size, dummy = dest_size(host, item, listing)
    if size != item["virtual_bytes"]:
        problems.append("its data file holds %s bytes, the source disk %d" % (size, item["virtual_bytes"]))
    item["dest_descriptor"] = desc
    return problems


def dest_size(host, item, listing):
    """(logical size of the destination's data, where it was read): the browser's size of the file (the flat
    extent of a disk); a browser that lists a disk as one entry gives its capacity; else HEAD."""
    if item["kind"] == "file":
        entry = listing.get(_basename(item["dest"]))
        return (entry or {}).get("size"), "datastore browser"
    flat = listing.get(_basename(item["dest_extent"]))
    if flat and flat.get("size") is not None:
        return flat["size"], "datastore browser"
    desc = listing.get(_basename(item["dest"]))
    if desc and desc.get("capacity_kb"):
        return desc["capacity_kb"] * 1024, "datastore browser (the disk's capacity)"
    found = host.head(item["dest_extent"])
    return (found[0] if found else None), "HEAD of the data file"


def missing_folders(host, folder_path):
    """The folders to create for ``folder_path`` to exist, outermost first ([] when it exists)."""
    datastore, relative = _split_folder(folder_path)
    missing = []
    while relative:
        current = _client.datastore_path(datastore, relative)
        if host.listing(current) is not None:
            break
        missing.append(current)
        relative = posixpath.dirname(relative)
    return list(reversed(missing))


# -- hashing the sources -------------------------------------------------------------------------------------------

def hash_sources(host, item, algorithms, block_size, areas_for_base=None, progress=None):
    """Hash every source file of ``item`` over HTTPS (``fetch.hash_file``), each in one read; the base extent of a
    disk by its data areas when ``areas_for_base`` = (areas, note) is given. ``progress`` (a ProgressFile or None)
    is told the bytes read of each file."""
    results = []
    base_extent = None
    if item["kind"] == "disk":
        base_extent = item["chain"][-1]["extents"][0] if len(item["chain"][-1]["extents"]) == 1 else None
    for f in item["source_files"]:
        areas, note = (areas_for_base if (areas_for_base and f["path"] == base_extent) else (None, None))
        r = _fetch.hash_file(host.session, f["path"], host.datacenter, algorithms, areas, note, block_size,
                             host.retries, host.datastores,
                             modified_lookup=lambda ds, rel: _fetch.browser_modified(host.client, ds, rel),
                             progress=_hash_progress(progress, f["path"]))
        r.update(role=f["role"], depth=f["depth"])
        if r["size"] != f["size"]:
            raise EvidenceSourceError("%s changed between two looks (%d, then %d bytes); hash frozen files only."
                                      % (f["path"], f["size"], r["size"]), failed_path=f["path"])
        results.append(r)
    return results


def _hash_progress(progress, path):
    """``progress(done, total)`` of the hashing of the source file ``path``, for a ProgressFile (None: none)."""
    if progress is None:
        return None
    return lambda done, total: progress.report("hash source", done, total, src=path)


def clone_progress(progress, item):
    """``progress(percent)`` of the copy of ``item`` as its host reports it, for a ProgressFile (None: none): the
    percent of the source's size (the disk's virtual size, or the file's size)."""
    if progress is None:
        return None
    total = item.get("virtual_bytes") or sum(f["size"] or 0 for f in item["source_files"])
    phase = "clone" if item["kind"] == "disk" else "copy"

    def report(percent):
        progress.report(phase, int(total * min(max(int(percent), 0), 100) / 100), total, src=item["src"],
                        dest=item["dest"])
    return report


def sources_unchanged(host, hashed):
    """After the copy: every source has the size and modification time it had when it was hashed."""
    moved = []
    for r in hashed:
        found = host.head(r["src"])
        identity = r["source_identity"]
        if found is None:
            moved.append("%s is gone" % r["src"])
            continue
        size, modified = found
        if size != r["size"] or (modified and identity.get("from") == "HEAD"
                                 and (_fetch.http_date_utc(modified) or modified) != identity.get("modified")):
            moved.append("%s is now %d bytes, modified %s (hashed: %d bytes, modified %s)"
                         % (r["src"], size, modified, r["size"], identity.get("modified")))
    return moved


# -- the copy (changes) --------------------------------------------------------------------------------------------

def _undo_base(host, journal, item):
    about = host.client.about()
    return {"endpoint": host.client.where, "api_type": about["api_type"],
            "endpoint_instance_uuid": about["instance_uuid"], "datacenter": host.datacenter,
            "datastore": item["datastore"], "source_datastores": item["source_datastores"],
            "case_id": journal.case_id, "journal_dir": journal.journal_dir, "journal_host": journal.hostname}


def make_folders(host, journal, item):
    """Create the destination folder (and its missing parents), journaled first. Returns the folders created."""
    folders = missing_folders(host, item["folder"])
    if not folders:
        return []
    undo = dict(_undo_base(host, journal, item), kind="folders", dest=item["folder"], folders=folders)
    change = journal.record_change(ACTION, undo, "folder(s) %s on the evidence datastore %s of %s"
                                   % (", ".join(folders), item["datastore"], host.client.where), module=MODULE)
    try:
        host.client.content.fileManager.MakeDirectory(name=item["folder"], datacenter=host.dc_obj,
                                                      createParentDirectories=True)
    except _client.vmodl.MethodFault as fault:
        if _client.fault_name(fault) != "FileAlreadyExists":
            raise VsphereError("%s The journal keeps the change: teardown removes the folder if it was made and is "
                               "empty." % _client.fault_sentence(fault, "create the folder %s" % item["folder"],
                                                                 host.client.where))
    for folder in folders:
        host.forget(folder)
    host.forget(parent_folder(folders[0]))
    journal.mark_applied(change, folders=folders)
    return folders


def copy_item(host, journal, item, hashed, timeout, progress=None):
    """Copy one planned item whose destination is absent (see the module docstring); returns its result facts."""
    created_folders = make_folders(host, journal, item)
    copy_id = binascii.hexlify(os.urandom(8)).decode("ascii")
    undo = dict(_undo_base(host, journal, item), kind=item["kind"], dest=item["dest"], src=item["src"],
                dest_files=item["dest_files"], marker=item["marker"], copy_id=copy_id)
    what = ("thin clone of %s to %s" % (item["src"], item["dest"]) if item["kind"] == "disk"
            else "copy of %s to %s" % (item["src"], item["dest"]))
    change = journal.record_change(ACTION, undo, "%s on the evidence datastore %s of %s"
                                   % (what, item["datastore"], host.client.where), module=MODULE)
    started = utc_now()
    clock = time.monotonic()
    vim = _client.vim
    try:
        try:
            if item["kind"] == "disk":
                spec = vim.VirtualDiskManager.VirtualDiskSpec(diskType="thin", adapterType=item["adapter"])
                task = host.client.content.virtualDiskManager.CopyVirtualDisk_Task(
                    sourceName=item["src"], sourceDatacenter=host.dc_obj, destName=item["dest"],
                    destDatacenter=host.dc_obj, destSpec=spec, force=False)
            else:
                task = host.client.content.fileManager.CopyDatastoreFile_Task(
                    sourceName=item["src"], sourceDatacenter=host.dc_obj, destinationName=item["dest"],
                    destinationDatacenter=host.dc_obj, force=False)
        except _client.vmodl.MethodFault as fault:  # refused before a task was made
            raise VsphereError(_client.fault_sentence(fault, "make the %s" % what, host.client.where),
                               fault=_client.fault_name(fault))
        _run_task(host.client, task, "make the %s" % what, timeout, clone_progress(progress, item))
    except VsphereError as exc:
        fault = exc.details.get("fault")
        if fault == "FileAlreadyExists":
            journal.mark_undone(change, "nothing to undo: %s existed already, and the copy refused to replace it"
                                % item["dest"])
            raise DestinationError("%s exists (made meanwhile by someone else?); it is never replaced. Nothing was "
                                   "written." % item["dest"], failed_path=item["dest"])
        hint = ""
        if fault == "NotImplemented" and item["kind"] == "disk":
            hint = (" A vCenter does not implement CopyVirtualDisk_Task's destSpec (the thin format); connect to the "
                    "ESXi host itself: the copy is never downgraded to a thick one.")
        raise VsphereError("%s%s The journal keeps the change: teardown removes what the copy left at %s."
                           % (exc.message.rstrip(".") + ".", hint, item["dest"]), failed_path=item["dest"],
                           **dict((k, v) for k, v in exc.details.items() if k != "failed_path"))
    seconds = time.monotonic() - clock
    listing = host.listing(item["folder"], fresh=True)
    problems = ["the destination folder %s is not there" % item["folder"]] if listing is None else \
        ["%s missing" % n for n in item["dest_files"][:-1] if _basename(n) not in listing]
    if not problems:
        problems = _dest_problems(host, item, listing)
    if problems:
        raise DestinationError("The host reported the %s as done, but %s. The journal keeps the change: teardown "
                               "removes it." % (what, "; ".join(problems)), failed_path=item["dest"])
    moved = sources_unchanged(host, hashed)
    if moved:
        raise EvidenceSourceError("A source changed while it was copied (%s): the digests taken before the copy may "
                                  "not describe it. Copy frozen files only; the journal keeps the change: teardown "
                                  "removes the copy." % "; ".join(moved), failed_path=item["src"])
    size, size_from = dest_size(host, item, listing)
    finished = utc_now()
    thin = None
    if item["kind"] == "disk":
        thin = (item.get("dest_descriptor") or {}).get("ddb", {}).get("ddb.thinProvisioned") == "1"
    marker = marker_record(host, journal, item, hashed, copy_id, started, finished, size, thin)
    host.put(item["marker"], (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    journal.mark_applied(change, copy_id=copy_id, dest_size=size, finished_at=finished)
    return {"created": True, "created_folders": created_folders, "copy_id": copy_id, "copied_at": started,
            "finished_at": finished, "copy_seconds": round(seconds, 3), "dest_size": size, "dest_size_from": size_from,
            "thin": thin}


def marker_record(host, journal, item, hashed, copy_id, started, finished, size, thin):
    source = {"files": [{"path": r["src"], "role": r["role"], "depth": r["depth"], "size": r["size"],
                         "modified": _raw_modified(item, r["src"]), "digests": r["digests"]} for r in hashed]}
    if item["kind"] == "disk":
        source.update(virtual_bytes=item["virtual_bytes"],
                      descriptors=[{"path": lv["path"], "sha256": lv["descriptor_sha256"], "text": lv["descriptor_text"]}
                                   for lv in item["chain"]])
    return {"format": MARKER_FORMAT, "kind": item["kind"], "src": item["src"], "dest": item["dest"],
            "dest_files": item["dest_files"][:-1], "dest_size": size, "thin": thin, "copy_id": copy_id,
            "copied_by": COPIED_BY_DISK if item["kind"] == "disk" else COPIED_BY_FILE,
            "case_id": journal.case_id, "endpoint": host.client.where, "datacenter": host.datacenter,
            "copied_at": started, "finished_at": finished, "source": source,
            "note": "Written by dfir.vmcollect once the copy was checked; the digests are the source's, taken over "
                    "HTTPS before the copy. " + VERIFY_NOTE}


def _raw_modified(item, path):
    for f in item["source_files"]:
        if f["path"] == path:
            return f.get("modified")
    return None


# -- the run -------------------------------------------------------------------------------------------------------

@_client.vsphere_errors("clone onto the evidence datastore")
def clone(journal, client, params, check_mode=False, progress=None):
    """The module's work on a logged-in ``client``; see the module docstring. Every refusal comes before the first
    change: the plan, the existing destinations and the source digests (not in check mode) first, then the copies."""
    src, dest, files, algorithms = check_inputs(params)
    retries = params.get("retries")
    host = Host(client, params.get("request_timeout") or _fetch.DEFAULT_REQUEST_TIMEOUT,
                _fetch.DEFAULT_RETRIES if retries is None else retries, params.get("datacenter"))
    timeout = params.get("timeout") or client.timeout
    block_size = params.get("block_size") or DEFAULT_BLOCK_SIZE
    items = ([plan_disk(host, src, dest)] if src else []) + [plan_file(f["src"], f["dest"]) for f in files]
    check_places(host, items)
    head_sources(host, items)
    for item in items:
        item["state"], item["existing"] = existing_state(host, journal, item)
    started = time.monotonic()
    if check_mode:
        return _result(host, items, {}, {}, started, check_mode=True)
    areas = None
    changed_areas = params.get("changed_areas")
    if src and changed_areas:
        base = items[0]["chain"][-1]
        if len(base["extents"]) == 1:
            size = next(f["size"] for f in items[0]["source_files"] if f["path"] == base["extents"][0])
            areas = _fetch.changed_disk_areas(client, changed_areas["vm"], changed_areas["disk_key"], size,
                                              changed_areas.get("snapshot"))
    hashed = {}
    for item in items:
        hashed[item["dest"]] = hash_sources(host, item, algorithms, block_size, areas if item["kind"] == "disk" else None,
                                            progress)
        if item["state"] == "complete":
            same_digests(item, hashed[item["dest"]])
    done = {}
    for item in items:
        if item["state"] == "absent":
            done[item["dest"]] = copy_item(host, journal, item, hashed[item["dest"]], timeout, progress)
            continue
        size, size_from = dest_size(host, item, host.listing(item["folder"]))
        marker = item["existing"]
        done[item["dest"]] = {"created": False, "created_folders": [], "copy_id": marker.get("copy_id"),
                              "copied_at": marker.get("copied_at"), "finished_at": marker.get("finished_at"),
                              "copy_seconds": None, "dest_size": size, "dest_size_from": size_from,
                              "thin": marker.get("thin")}
    return _result(host, items, hashed, done, started)


def same_digests(item, hashed):
    """A destination already there is the copy of this source only if the source still has the digests its marker
    recorded (in an algorithm asked for now)."""
    recorded = dict((f.get("path"), f.get("digests") or {}) for f in item["existing"]["source"]["files"])
    for r in hashed:
        before = recorded.get(r["src"], {})
        common = sorted(a for a in r["digests"] if a in before)
        if not common:
            raise DestinationError(
                "%s is a copy of %s whose marker records the digests %s of %s, none of the algorithms asked for now "
                "(%s); ask for one of them to compare. Nothing was changed."
                % (item["dest"], item["src"], ", ".join(sorted(before)) or "(none)", r["src"],
                   ", ".join(sorted(r["digests"]))), failed_path=item["dest"])
        for algorithm in common:
            if before[algorithm] != r["digests"][algorithm]:
                raise DestinationError(
                    "%s is a copy of another state of %s: when it was made, %s had the %s %s, it has %s now. It is "
                    "never replaced: give another dest. Nothing was changed."
                    % (item["dest"], item["src"], r["src"], algorithm, before[algorithm], r["digests"][algorithm]),
                    failed_path=item["dest"])


def _entry(r, dest, dest_equal, copied_by, verify_note=VERIFY_NOTE):
    """One source file's result, in datastore_fetch's shape; the destination is not read back here (its digests are
    filled in by an engine that reads it back)."""
    entry = dict((k, v) for k, v in r.items() if k != "tls")
    entry.update(dest=dest, dest_size=None, dest_size_from=None, dest_digests=None, verified=False,
                 verify_note=verify_note, dest_equal=dest_equal, copied_by=copied_by, transport=TRANSPORT)
    return entry


def _read_back(entry, fact):
    """The destination's digests and whether they equal the source's, when the engine read it back (``fact``)."""
    if entry["dest_equal"] and fact.get("dest_digests") is not None:
        entry.update(dest_digests=fact["dest_digests"], verified=bool(fact.get("verified")))


def _planned(host, item, style=None):
    """An item's entry in check mode: what would be done, nothing hashed."""
    style = style or API_STYLE
    would = item["state"] == "absent"
    sources = [dict(src=f["path"], role=f["role"], depth=f["depth"], size=f["size"],
                    modified=_fetch.http_date_utc(f["modified"]) or f["modified"]) for f in item["source_files"]]
    plan = {"src": item["src"], "dest": item["dest"], "state": item["state"], "would_copy": would,
            "source_files": sources, "digests": {}, "dest_digests": None, "verified": False, "transport": TRANSPORT,
            "created": False, "folders_to_create": missing_folders(host, item["folder"]) if would else [],
            "marker": item["marker"]}
    if item["kind"] == "disk":
        plan.update(size=item["virtual_bytes"], dest_extent=item["dest_extent"], adapter_type=item["adapter"],
                    disk_type="thin", copied_by=style["copied_by_disk"], chain=_chain_summary(item["chain"]))
    else:
        plan.update(size=item["source_files"][0]["size"], copied_by=style["copied_by_file"])
    return plan


def _copy_facts(item, fact):
    return dict(marker=item["marker"], copy_id=fact["copy_id"], created=fact["created"],
                created_folders=fact["created_folders"], copied_at=fact["copied_at"], finished_at=fact["finished_at"],
                copy_seconds=fact["copy_seconds"])


def _disk_result(item, results, fact, style=None):
    style = style or API_STYLE
    chain = item["chain"]
    sources = []
    for r in results:
        equal = r["src"] == item["equal_to"]
        if equal:
            dest = item["dest_extent"]
        elif r["depth"] == 0 and r["role"].endswith("descriptor"):
            dest = item["dest"]  # the clone's descriptor is written new: its CID and uuid differ
        else:
            dest = None  # consolidated into the clone's data file
        e = _entry(r, dest, equal, style["copied_by_disk"], style["verify_note"])
        if equal:
            e.update(dest_size=fact["dest_size"], dest_size_from=fact["dest_size_from"])
            _read_back(e, fact)
        sources.append(e)
    equal = next((s for s in sources if s["dest_equal"]), None)
    notes = [style["verify_note"]]
    if equal is None:
        notes.append("The clone consolidates %d levels (%s): its data file equals no single source file, so digests "
                     "is null; each source file's digests are in source_files."
                     % (len(chain), ", ".join(lv["path"] for lv in chain)))
    if item["adapter_note"]:
        notes.append(item["adapter_note"][0].upper() + item["adapter_note"][1:] + ".")
    if fact.get("thin") is False:
        notes.append("The clone's descriptor does not say thin (ddb.thinProvisioned): the host made a thick copy.")
    extents = [s for s in sources if s["role"].endswith("extent")]
    disk = {"src": item["src"], "dest": item["dest"], "dest_extent": item["dest_extent"],
            "size": item["virtual_bytes"], "data_bytes": sum(s["data_bytes"] for s in extents),
            "hole_bytes": sum(s["hole_bytes"] for s in extents),
            "digests": equal["digests"] if equal else None, "digests_of": equal["src"] if equal else None,
            "dest_size": fact["dest_size"], "dest_size_from": fact["dest_size_from"],
            "dest_digests": fact.get("dest_digests"), "verified": bool(equal and equal["verified"]),
            "verify_note": " ".join(notes), "copied_by": style["copied_by_disk"], "transport": TRANSPORT,
            "disk_type": "thick" if fact.get("thin") is False else "thin", "adapter_type": item["adapter"],
            "chain": _chain_summary(chain), "source_files": sources,
            "areas_used": equal["areas_used"] if equal else None}
    disk.update(_copy_facts(item, fact))
    return disk


def _result(host, items, hashed, done, started, check_mode=False, style=None):
    style = style or API_STYLE
    disk, files = None, []
    for item in items:
        if check_mode:
            entry = _planned(host, item, style)
        elif item["kind"] == "disk":
            entry = _disk_result(item, hashed[item["dest"]], done[item["dest"]], style)
        else:
            fact = done[item["dest"]]
            entry = _entry(hashed[item["dest"]][0], item["dest"], True, style["copied_by_file"], style["verify_note"])
            entry.update(dest_size=fact["dest_size"], dest_size_from=fact["dest_size_from"], **_copy_facts(item, fact))
            _read_back(entry, fact)
        if item["kind"] == "disk":
            disk = entry
        else:
            files.append(entry)
    primary = disk if disk is not None else (files[0] if files else {})
    result = {"changed": any(i["state"] == "absent" for i in items), "engine": style["engine"], "transport": TRANSPORT,
              "datacenter": host.datacenter, "tls": host.client.tls_record(), "disk": disk, "files": files,
              "seconds": round(time.monotonic() - started, 3), "msg": _message(items, check_mode, style)}
    for key in ("src", "dest", "size", "data_bytes", "hole_bytes", "digests", "dest_size", "dest_digests", "verified",
                "copied_by", "verify_note"):
        result[key] = primary.get(key)
    return result


def _chain_summary(chain):
    return [{"path": lv["path"], "create_type": lv["create_type"], "delta": lv["delta"], "extents": lv["extents"],
             "virtual_bytes": lv["virtual_bytes"], "cid": lv["cid"], "ddb_uuid": lv["ddb_uuid"],
             "descriptor_sha256": lv["descriptor_sha256"]} for lv in chain]


def _message(items, check_mode, style=None):
    style = style or API_STYLE
    parts = []
    for item in items:
        verb = "thin clone" if item["kind"] == "disk" else "copy"
        if item["state"] == "complete":
            parts.append("%s is already a complete %s of %s (its marker and sizes agree%s)"
                         % (item["dest"], verb, item["src"], "" if check_mode else ", and the source's digests"))
        elif check_mode:
            parts.append("would make a %s of %s at %s" % (verb, item["src"], item["dest"]))
        else:
            parts.append("made a %s of %s at %s" % (verb, item["src"], item["dest"]))
    text = "; ".join(parts)
    text = text[0].upper() + text[1:] + "."
    if check_mode:
        return text + " Check mode: nothing was hashed, created or journaled."
    return text + " " + style["summary"]


# -- undo ----------------------------------------------------------------------------------------------------------

def _completed_in_journal(undo):
    """Whether the journal this record is in holds its ``applied``: then the copy is complete, and evidence."""
    try:
        journal = Journal(undo["case_id"], undo["journal_dir"], undo.get("journal_host"))
        return any(r.get("applied") and r["undo"].get("copy_id") == undo.get("copy_id")
                   for r in journal.pending() if r["action"] == ACTION)
    except (KeyError, VmcollectError, OSError, ValueError):
        return False


@_client.vsphere_errors("remove what a copy left on the evidence datastore", error=DestinationError)
def remove_partial(client, undo, check_mode=False, timeout=None):
    """Undo one unfinished ``vsphere.evidence_file`` change (a copy or the folders it made); returns a sentence."""
    timeout = timeout or client.timeout
    datastore = undo["datastore"]
    if datastore in (undo.get("source_datastores") or []):
        raise DestinationError("The journal names %s on %s, a datastore that holds a source; nothing is removed "
                               "there. Check it by hand." % (undo["dest"], datastore))
    host = Host(client, datacenter=undo.get("datacenter"))
    dc = host.dc_obj
    fm = client.content.fileManager
    if undo["kind"] == "folders":
        return _remove_folders(host, undo, check_mode, timeout)
    waited = [] if check_mode else wait_for_copies(client, timeout)
    raw = host.get(undo["marker"])
    if raw is not None:
        try:
            marker = json.loads(raw.decode("utf-8"))
        except ValueError:
            marker = {}
        if isinstance(marker, dict) and marker.get("copy_id") == undo["copy_id"]:
            return ("kept: evidence: %s is a completed copy (its marker %s names this copy); a completed copy is never "
                    "removed" % (undo["dest"], undo["marker"]))
    folder = parent_folder(undo["dest"])
    listing = host.listing(folder, fresh=True) or {}
    present = [p for p in undo["dest_files"] if _basename(p) in listing]
    after = " after waiting for the copy task(s) %s" % ", ".join(waited) if waited else ""
    if not present:
        return "nothing of the unfinished copy to %s was left on %s%s" % (undo["dest"], client.where, after)
    if check_mode:
        return "would remove what the unfinished copy left: %s" % ", ".join(present)
    if undo["kind"] == "disk" and undo["dest"] in present:
        try:
            _run_task(client, client.content.virtualDiskManager.DeleteVirtualDisk_Task(name=undo["dest"], datacenter=dc),
                      "delete the partial disk %s" % undo["dest"], timeout)
        except VsphereError as exc:
            if exc.details.get("timed_out"):
                raise
            # a disk half made (a descriptor without its extent): its files are removed one by one below
        listing = host.listing(folder, fresh=True) or {}
    for path in [p for p in present if _basename(p) in listing]:
        _run_task(client, fm.DeleteDatastoreFile_Task(name=path, datacenter=dc), "delete %s" % path, timeout)
    listing = host.listing(folder, fresh=True) or {}
    left = [p for p in undo["dest_files"] if _basename(p) in listing]
    if left:
        raise DestinationError("%s still holds %s after the removal of the unfinished copy; remove it by hand, then "
                               "run teardown again." % (client.where, ", ".join(left)))
    return "removed what the unfinished copy left: %s%s" % (", ".join(present), after)


def _remove_folders(host, undo, check_mode, timeout):
    said = []
    removed = set()
    for folder in reversed(undo["folders"]):
        listing = host.listing(folder, fresh=True)
        if listing is None:
            said.append("the folder %s was already gone" % folder)
            continue
        left = [n for n in listing if _client.datastore_path(_split_folder(folder)[0], posixpath.join(
            _split_folder(folder)[1], n)) not in removed]
        if left:
            said.append("kept the folder %s: it holds %s (evidence, or not ours)" % (folder, ", ".join(sorted(left))))
            break
        if check_mode:
            said.append("would remove the empty folder %s" % folder)
        else:
            _run_task(host.client, host.client.content.fileManager.DeleteDatastoreFile_Task(
                name=folder, datacenter=host.dc_obj), "delete the empty folder %s" % folder, timeout)
            said.append("removed the empty folder %s" % folder)
        removed.add(folder)
    return "; ".join(said)


@undo_handler(ACTION)
def _undo_evidence_file(undo, ctx):
    """A file, disk or folder this collection made on the evidence datastore: a completed copy is kept (evidence);
    what a failed or killed copy left is removed, logging in with teardown's ``connection`` options."""
    if undo.get("kind") in ("disk", "file") and _completed_in_journal(undo):
        return ("kept: evidence: %s is a completed copy of %s; a completed copy is never removed"
                % (undo["dest"], undo.get("src")))
    engine = undo.get("engine") or "api"
    if engine != "api":
        if engine not in ENGINE_UNDO:
            raise DestinationError("What the unfinished copy to %s left was made by the %s engine, whose undo this "
                                   "teardown does not have." % (undo["dest"], engine))
        return ENGINE_UNDO[engine](undo, ctx)
    if not _client.HAS_PYVMOMI:
        raise DestinationError("Undoing the unfinished copy to %s on %s needs pyvmomi for the Python that runs teardown."
                               % (undo["dest"], undo["endpoint"]))
    options = ctx.options
    if not options.get("hostname"):
        raise DestinationError("What an unfinished copy left at %s is on %s: give teardown its connection (hostname, "
                               "username, password, and thumbprint or ca_file) to remove it."
                               % (undo["dest"], undo["endpoint"]))
    started = time.monotonic()
    with _client.client_from_params(options) as client:
        sentence = remove_partial(client, undo, ctx.check_mode, options.get("timeout") or _client.DEFAULT_TIMEOUT)
    return sentence if ctx.check_mode else "%s (%.1f s)" % (sentence, time.monotonic() - started)
