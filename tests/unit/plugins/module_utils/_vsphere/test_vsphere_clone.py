# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vmkfstools_clone's logic: descriptors and their chains, the inputs it refuses, the run against a fake host whose
datastores are dicts (every vSphere call recorded: what is created, checked, journaled and marked), the undo's
decisions (a completed copy is kept, what an unfinished one left is removed, and nothing else), and the hash-only
read of fetch.hash_file against a local HTTP server that serves a datastore file like ESXi's /folder."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import email.utils
import hashlib
import json
import os
import posixpath
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
    VsphereError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import (
    UNDO_HANDLERS,
    Journal,
    UndoContext,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import clone as vc
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as vf

pytest.importorskip("pyVmomi")

DC = "ha-datacenter"
SRC_DS, EV_DS = "datastore1", "evidence [LUN]"
SECTOR = 512
MODIFIED = "Sun, 06 Dec 2026 06:30:22 GMT"

THIN = b"""# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW %d VMFS "%s"

# The Disk Data Base
#DDB

ddb.adapterType = "%s"
ddb.thinProvisioned = "1"
ddb.uuid = "60 00 C2 92 bc 97 e9 ff-59 ca 81 d2 b7 3c d9 dc"
ddb.virtualHWVersion = "14"
"""

DELTA = b"""# Disk DescriptorFile
version=3
CID=f61555ea
parentCID=fffffffe
createType="seSparse"
parentFileNameHint="%s"
# Extent description
RW %d SESPARSE "%s"
"""


def thin(sectors, extent, adapter="lsilogic"):
    return THIN % (sectors, extent.encode(), adapter.encode())


# -- descriptors ------------------------------------------------------------------------------------------------------

def test_a_real_thin_descriptor_is_parsed():
    d = vc.parse_descriptor(thin(144703488, "normal-flat.vmdk"), "[ds] vm/normal.vmdk")
    assert d["create_type"] == "vmfs" and d["cid"] == "fffffffe" and d["parent_hint"] is None
    assert d["extents"] == [{"access": "RW", "sectors": 144703488, "type": "VMFS", "file": "normal-flat.vmdk",
                             "offset": None}]
    assert d["virtual_bytes"] == 144703488 * SECTOR and d["ddb"]["ddb.thinProvisioned"] == "1"


def test_deltas_name_their_parent():
    d = vc.parse_descriptor(DELTA % (b"test_1.vmdk", 104857600, b"test_1-000001-sesparse.vmdk"), "x")
    assert d["parent_hint"] == "test_1.vmdk" and d["extents"][0]["type"] == "SESPARSE"
    assert d["parent_cid"] == "fffffffe"


@pytest.mark.parametrize("data, says", [
    (b"KDMV\x01\x00\x00\x00" + b"\x00" * 100, "binary sparse disk"),
    (b"\x00\xff\xfe" * 100, "not a text VMDK descriptor"),
    (b"\x00" * 4096, "not a VMDK descriptor"),
    (b"# Disk DescriptorFile\nversion=1\n", "not a VMDK descriptor"),
])
def test_what_is_not_a_descriptor_is_refused(data, says):
    with pytest.raises(EvidenceSourceError) as err:
        vc.parse_descriptor(data, "[ds] vm/vm-flat.vmdk")
    assert says in err.value.message and "[ds] vm/vm-flat.vmdk" in err.value.message


def test_adapter_types_map_onto_the_three_the_api_names():
    assert vc.adapter_type("lsilogic") == ("lsiLogic", None)
    assert vc.adapter_type("buslogic") == ("busLogic", None)
    assert vc.adapter_type("ide") == ("ide", None)
    for other in ("pvscsi", "lsisas1068", "legacyESX", None):
        adapter, note = vc.adapter_type(other)
        assert adapter == "lsiLogic" and "geometry hint" in note


def test_parent_hints_relative_and_absolute():
    urls = {SRC_DS: "ds:///vmfs/volumes/5bc7459f-967eeb48-b3f7-20677cd9a16c/", "other": "/vmfs/volumes/aaaa-bbbb"}
    assert vc.resolve_hint("vm.vmdk", "[%s] vm 1/vm-000001.vmdk" % SRC_DS, [SRC_DS], urls) == \
        "[%s] vm 1/vm.vmdk" % SRC_DS
    assert vc.resolve_hint("/vmfs/volumes/5bc7459f-967eeb48-b3f7-20677cd9a16c/base/vm.vmdk", "[other] a/b.vmdk",
                           [SRC_DS, "other"], urls) == "[%s] base/vm.vmdk" % SRC_DS
    assert vc.resolve_hint("/vmfs/volumes/other/x/y.vmdk", "[%s] a/b.vmdk" % SRC_DS, [SRC_DS, "other"], urls) == \
        "[other] x/y.vmdk"
    with pytest.raises(EvidenceSourceError, match="on no datastore of the host"):
        vc.resolve_hint("/vmfs/volumes/unknown/x.vmdk", "[%s] a/b.vmdk" % SRC_DS, [SRC_DS], urls)
    with pytest.raises(EvidenceSourceError, match="outside its datastore"):
        vc.resolve_hint("../../x.vmdk", "[%s] a/b.vmdk" % SRC_DS, [SRC_DS], urls)


# -- inputs -----------------------------------------------------------------------------------------------------------

def params(**kw):
    p = {"engine": "api", "src": "[%s] vm/vm.vmdk" % SRC_DS, "dest": "[%s] case/vm/vm.vmdk" % EV_DS, "files": [],
         "algorithms": ["sha256"], "block_size": 1048576, "retries": 0, "request_timeout": 30, "changed_areas": None,
         "timeout": 60, "datacenter": None}
    p.update(kw)
    return p


def test_files_go_beside_dest_by_default():
    vmem = {"src": "[%s] vm/vm-Snapshot1.vmem" % SRC_DS, "dest": None}
    src, dest, files, algorithms = vc.check_inputs(params(files=[vmem], algorithms=["md5", "sha256"]))
    assert files == [{"src": "[%s] vm/vm-Snapshot1.vmem" % SRC_DS, "dest": "[%s] case/vm/vm-Snapshot1.vmem" % EV_DS}]
    assert algorithms == ["md5", "sha256"]


@pytest.mark.parametrize("kw, says", [
    ({"engine": "ssh"}, "engine 'ssh' is not available"),
    ({"src": None, "dest": None}, "there is nothing to copy"),
    ({"dest": None}, "needs dest"),
    ({"src": None, "files": [{"src": "[%s] vm/a.vmem" % SRC_DS}]}, "is the copy of a disk: give its src"),
    ({"dest": "[%s] case/vm/vm-flat.vmdk" % EV_DS}, "ends like a disk's data file"),
    ({"dest": "[%s] case/vm/vm.img" % EV_DS}, "is not a disk descriptor"),
    ({"src": "vm/vm.vmdk"}, "is not a datastore path"),
    ({"files": [{"src": "[%s] vm/vm_1.vmdk" % SRC_DS}]}, "is a .vmdk: to vSphere that is a virtual disk"),
    ({"files": [{"src": "[%s] vm/a.vmem" % SRC_DS, "dest": "[%s] x/a.vmem.dfir-vmcollect.json" % EV_DS}]},
     "named like this module's markers"),
    ({"src": None, "dest": None, "files": [{"src": "[%s] vm/a.vmem" % SRC_DS}]}, "has no dest"),
    ({"files": [{"src": "[%s] vm/../a.vmem" % SRC_DS}]}, "'.' or '..' part"),
    ({"retries": -1}, "retries must be 0 or more"),
])
def test_malformed_inputs_are_refused_before_the_host_is_asked(kw, says):
    with pytest.raises(InvalidInputError) as err:
        vc.check_inputs(params(**kw))
    assert says in err.value.message


# -- a fake host: datastores as dicts, every call recorded --------------------------------------------------------------

def folder_of(path):
    ds, rel = vc._client.parse_datastore_path(path)  # pylint: disable=protected-access
    return vc._client.datastore_path(ds, posixpath.dirname(rel))  # pylint: disable=protected-access


class Task(object):
    def __init__(self, fault=None, state="success", kind="VirtualDiskManager.copyVirtualDisk"):
        self.fault, self.state, self.kind = fault, state, kind
        self._moId = "task-%d" % id(self)


class World(object):
    """The host's datastores: files (datastore path -> bytes), folders, and what went wrong on purpose."""

    def __init__(self):
        self.files = {}
        self.folders = set()
        self.modified = {}
        self.calls = []
        self.copy_fault = None  # (fault name, bytes of the destination's data file left behind)
        self.running = []  # tasks still at work on the host
        self.after_copy = None  # a function run once the copy is done (a source that moves)
        self.raise_on_copy = None  # a fault the copy call raises itself (before any task)

    def add(self, path, data, modified=MODIFIED):
        self.files[path] = data
        self.modified[path] = modified
        folder = folder_of(path)
        while "/" in folder or not folder.endswith("]"):
            self.folders.add(folder)
            parent = folder_of(folder)
            if parent == folder:
                break
            folder = parent

    def listing(self, folder):
        if folder not in self.folders and not folder.endswith("]"):
            return None
        out = {}
        for path, data in self.files.items():
            if folder_of(path) == folder:
                out[posixpath.basename(path)] = {"size": len(data), "folder": False, "capacity_kb": None,
                                                 "modified": None}
        for sub in self.folders:
            if folder_of(sub) == folder and sub != folder:
                out[posixpath.basename(sub)] = {"size": 4096, "folder": True, "capacity_kb": None, "modified": None}
        return out

    def delete(self, path):
        if path in self.files:
            del self.files[path]
            return None
        if path in self.folders:
            for f in [f for f in self.files if f.startswith(path + "/")]:
                del self.files[f]
            self.folders -= set(f for f in self.folders if f == path or f.startswith(path + "/"))
            return None
        return "FileNotFound"


class FileManager(object):
    def __init__(self, world):
        self.world = world

    def MakeDirectory(self, name, datacenter, createParentDirectories):  # noqa: N802 pylint: disable=invalid-name
        self.world.calls.append(("MakeDirectory", name))
        assert createParentDirectories is True
        self.world.add(name + "/.probe", b"")
        del self.world.files[name + "/.probe"]

    def CopyDatastoreFile_Task(self, sourceName, sourceDatacenter, destinationName, destinationDatacenter,  # noqa: N802,N803 pylint: disable=invalid-name
                               force):
        self.world.calls.append(("CopyDatastoreFile_Task", sourceName, destinationName, force))
        if destinationName in self.world.files:
            return Task("FileAlreadyExists")
        self.world.add(destinationName, self.world.files[sourceName])
        if self.world.after_copy:
            self.world.after_copy()
        return Task()

    def DeleteDatastoreFile_Task(self, name, datacenter):  # noqa: N802 pylint: disable=invalid-name
        self.world.calls.append(("DeleteDatastoreFile_Task", name))
        return Task(self.world.delete(name))


class DiskManager(object):
    def __init__(self, world):
        self.world = world

    def CopyVirtualDisk_Task(self, sourceName, sourceDatacenter, destName, destDatacenter, destSpec, force):  # noqa: N802,N803 pylint: disable=invalid-name
        self.world.calls.append(("CopyVirtualDisk_Task", sourceName, destName, destSpec.diskType,
                                 destSpec.adapterType, force))
        if self.world.raise_on_copy is not None:
            raise self.world.raise_on_copy
        flat = vc.extent_path(destName)
        if destName in self.world.files or flat in self.world.files:
            return Task("FileAlreadyExists")
        source = vc.parse_descriptor(self.world.files[sourceName], sourceName)
        top = sourceName
        while source["parent_hint"]:  # a delta: the disk consolidated at it (its grains hold nothing here)
            top = posixpath.join(posixpath.dirname(top), source["parent_hint"])
            source = vc.parse_descriptor(self.world.files[top], top)
        base = posixpath.join(posixpath.dirname(top), source["extents"][0]["file"])
        if self.world.copy_fault:
            fault, left = self.world.copy_fault
            self.world.add(flat, self.world.files[base][:left])
            return Task(fault)
        self.world.add(flat, self.world.files[base])
        self.world.add(destName, thin(source["virtual_bytes"] // SECTOR, posixpath.basename(flat),
                                      destSpec.adapterType.lower()))
        if self.world.after_copy:
            self.world.after_copy()
        return Task()

    def DeleteVirtualDisk_Task(self, name, datacenter):  # noqa: N802 pylint: disable=invalid-name
        self.world.calls.append(("DeleteVirtualDisk_Task", name))
        if name not in self.world.files:
            return Task("FileNotFound")
        self.world.delete(vc.extent_path(name))
        return Task(self.world.delete(name))


class Content(object):
    def __init__(self, world):
        self.fileManager = FileManager(world)  # pylint: disable=invalid-name
        self.virtualDiskManager = DiskManager(world)  # pylint: disable=invalid-name
        self.taskManager = "task-manager"  # pylint: disable=invalid-name


class Client(object):
    where = "esxi1"
    timeout = 60

    def __init__(self, world):
        self.world = world
        self.content = Content(world)
        self.waited = []

    def about(self):
        return {"api_type": "HostAgent", "instance_uuid": None}

    def tls_record(self):
        return {"verified": True, "how": "thumbprint", "thumbprint_sha256": "AA"}

    def wait_for_task(self, task, what, timeout=None, progress=None):
        self.waited.append((task.kind, what, timeout))
        if progress is not None:
            progress(100)
        if task in self.world.running:
            self.world.running.remove(task)
            task.state = "success"
        if task.fault:
            raise VsphereError("esxi1 could not %s: %s." % (what, task.fault), task=task._moId, fault=task.fault)  # pylint: disable=protected-access

    def properties(self, obj, paths):
        if paths == ["recentTask"]:
            return {"recentTask": list(self.world.running) + [Task(kind="HostDatastoreBrowser.searchDatastore")]}
        if "info.descriptionId" in paths:
            return {"info.descriptionId": obj.kind, "info.name": obj.kind.split(".")[-1], "info.state": obj.state}
        return {}


class Host(object):
    """What clone.Host gives, on the world."""

    def __init__(self, client, request_timeout=None, retries=None, datacenter=None):
        self.client = client
        self.world = client.world
        self.datacenter = datacenter or DC
        self.datastores = [SRC_DS, EV_DS]
        self.dc_obj = "datacenter-1"
        self.session = None
        self.retries = 0

    def urls(self):
        return {SRC_DS: "/vmfs/volumes/src-uuid", EV_DS: "/vmfs/volumes/ev-uuid"}

    def listing(self, folder_path, fresh=False):
        return self.world.listing(folder_path)

    def forget(self, folder_path=None):
        pass

    def get(self, path, limit=vc.MAX_MARKER):
        return self.world.files.get(path)

    def head(self, path):
        if path not in self.world.files:
            return None
        return len(self.world.files[path]), self.world.modified[path]

    def put(self, path, body):
        self.world.calls.append(("PUT", path))
        self.world.add(path, body)


class _Login(object):
    def __init__(self, client):
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        return False


def fake_hash(session, src, datacenter, algorithms=("sha256",), areas=None, areas_note=None, block_size=None,
              retries=None, datastores=(), modified_lookup=None, progress=None):
    world = WORLDS[-1]
    data = world.files[src]
    if progress is not None:
        progress(len(data), len(data))
    return {"src": src, "size": len(data), "data_bytes": len(data), "hole_bytes": 0,
            "digests": dict((a, hashlib.new(a, data).hexdigest()) for a in algorithms),
            "source_identity": {"size": len(data), "modified": vf.http_date_utc(world.modified[src]), "from": "HEAD"},
            "areas_used": {"source": "whole file"}, "tls": {}}


WORLDS = []


@pytest.fixture
def world(monkeypatch):
    w = World()
    WORLDS.append(w)
    monkeypatch.setattr(vc, "Host", Host)
    monkeypatch.setattr(vc._fetch, "hash_file", fake_hash)  # pylint: disable=protected-access
    w.add("[%s] vm/vm.vmdk" % SRC_DS, thin(16, "vm-flat.vmdk"))
    w.add("[%s] vm/vm-flat.vmdk" % SRC_DS, b"\x00" * 4096 + b"disk data" + b"\x00" * (8192 - 4096 - 9))
    w.add("[%s] vm/vm-Snapshot1.vmem" % SRC_DS, b"RAM" * 1000)
    w.add("[%s] vm/vm-Snapshot1.vmsn" % SRC_DS, b"\xd2\xbe\xd2\xbe state")
    w.folders.add("[%s] case" % EV_DS)  # the case folder exists; the VM's folder below it not yet
    yield w
    WORLDS.remove(w)


def journal(tmp_path, case="c1"):
    return Journal(case, str(tmp_path / "journal"), hostname="controller")


def run(tmp_path, check_mode=False, case="c1", **kw):
    p = params(files=[{"src": "[%s] vm/vm-Snapshot1.vmem" % SRC_DS}, {"src": "[%s] vm/vm-Snapshot1.vmsn" % SRC_DS}])
    p.update(kw)
    return vc.clone(journal(tmp_path, case), Client(WORLDS[-1]), p, check_mode)


def evidence_files(world):
    return dict((p, d) for p, d in world.files.items() if p.startswith("[%s]" % EV_DS))


def changes(tmp_path, case="c1"):
    return [r for r in journal(tmp_path, case).pending() if r["action"] == vc.ACTION]


# -- the run ---------------------------------------------------------------------------------------------------------

def test_check_mode_reads_only_and_says_what_it_would_do(world, tmp_path):
    r = run(tmp_path, check_mode=True)
    assert r["changed"] and r["disk"]["would_copy"] and r["disk"]["folders_to_create"] == ["[%s] case/vm" % EV_DS]
    assert r["digests"] == {} and [f["state"] for f in r["files"]] == ["absent", "absent"]
    assert world.calls == [] and evidence_files(world) == {} and not journal(tmp_path).exists()


def test_a_clone_is_thin_journaled_marked_and_returns_the_source_digests(world, tmp_path, monkeypatch):
    r = run(tmp_path, algorithms=["sha256", "md5"])
    flat = world.files["[%s] vm/vm-flat.vmdk" % SRC_DS]
    assert r["changed"] and r["digests"] == {"sha256": hashlib.sha256(flat).hexdigest(),
                                             "md5": hashlib.md5(flat).hexdigest()}
    assert r["size"] == r["dest_size"] == 8192 and r["verified"] is False and r["dest_digests"] is None
    assert r["copied_by"] == "vmkfstools_clone (CopyVirtualDisk_Task, thin)" and r["transport"] == "iscsi-datastore"
    assert world.calls[:2] == [
        ("MakeDirectory", "[%s] case/vm" % EV_DS),
        ("CopyVirtualDisk_Task", "[%s] vm/vm.vmdk" % SRC_DS, "[%s] case/vm/vm.vmdk" % EV_DS, "thin", "lsiLogic", False)]
    assert ("CopyDatastoreFile_Task", "[%s] vm/vm-Snapshot1.vmem" % SRC_DS,
            "[%s] case/vm/vm-Snapshot1.vmem" % EV_DS, False) in world.calls
    # every write went onto the evidence datastore; the markers after the copies, one per destination
    assert all(c[-1 if c[0] in ("MakeDirectory", "PUT") else 2].startswith("[%s]" % EV_DS) for c in world.calls)
    assert [c[1] for c in world.calls if c[0] == "PUT"] == [
        "[%s] case/vm/%s.dfir-vmcollect.json" % (EV_DS, n) for n in ("vm.vmdk", "vm-Snapshot1.vmem", "vm-Snapshot1.vmsn")]
    marker = json.loads(world.files["[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS].decode())
    assert marker["copy_id"] == r["disk"]["copy_id"] and marker["kind"] == "disk" and marker["case_id"] == "c1"
    assert marker["source"]["descriptors"][0]["text"] == world.files["[%s] vm/vm.vmdk" % SRC_DS].decode()
    assert marker["source"]["files"][1]["digests"]["sha256"] == r["digests"]["sha256"]
    assert world.files["[%s] case/vm/vm-Snapshot1.vmem" % EV_DS] == world.files["[%s] vm/vm-Snapshot1.vmem" % SRC_DS]
    assert [f["dest_equal"] for f in r["files"]] == [True, True] and r["files"][1]["dest_size"] == 10
    # journaled: the folder, then each copy, each applied; teardown keeps them all
    recs = changes(tmp_path)
    assert sorted(x["undo"]["kind"] for x in recs) == ["disk", "file", "file", "folders"]
    assert all(x["applied"] for x in recs) and recs[-1]["undo"]["folders"] == ["[%s] case/vm" % EV_DS]
    before = dict(world.files)
    monkeypatch.setattr(vc._client, "client_from_params", lambda options: _Login(Client(world)))  # pylint: disable=W0212
    undone = journal(tmp_path).teardown(options={"hostname": "esxi1"})
    assert [u["result"].split(":")[0] for u in undone["undone"]] == ["kept"] * 3 + [
        "kept the folder [%s] case/vm" % EV_DS], undone
    assert world.files == before and undone["removed"]


def test_a_rerun_of_a_complete_copy_changes_nothing(world, tmp_path):
    first = run(tmp_path)
    calls = len(world.calls)
    again = run(tmp_path)
    assert again["changed"] is False and again["disk"]["created"] is False and again["digests"] == first["digests"]
    assert again["disk"]["copy_id"] == first["disk"]["copy_id"] and len(world.calls) == calls
    assert run(tmp_path, check_mode=True)["disk"]["state"] == "complete"


def test_a_destination_that_is_not_this_copy_is_never_replaced(world, tmp_path):
    run(tmp_path)
    calls = list(world.calls)
    world.add("[%s] vm2/vm2.vmdk" % SRC_DS, thin(16, "vm2-flat.vmdk"))
    world.add("[%s] vm2/vm2-flat.vmdk" % SRC_DS, b"x" * 8192)
    with pytest.raises(DestinationError, match="it is a disk of .* not a disk of .*vm2.vmdk"):
        run(tmp_path, src="[%s] vm2/vm2.vmdk" % SRC_DS, files=[])
    # the same source, changed since (its size and time are the marker's, its digests not)
    world.files["[%s] vm/vm-flat.vmdk" % SRC_DS] = b"y" * 8192
    with pytest.raises(DestinationError, match="a copy of another state of .*: when it was made"):
        run(tmp_path, files=[])
    world.modified["[%s] vm/vm-flat.vmdk" % SRC_DS] = "Mon, 07 Dec 2026 06:30:22 GMT"
    with pytest.raises(DestinationError, match="is not the one copied then"):
        run(tmp_path, files=[])
    # without a marker: not ours
    del world.files["[%s] case/vm/vm-Snapshot1.vmsn.dfir-vmcollect.json" % EV_DS]
    with pytest.raises(DestinationError, match="which is not a copy this collection completed"):
        run(tmp_path, src=None, dest=None, files=[{"src": "[%s] vm/vm-Snapshot1.vmsn" % SRC_DS,
                                                   "dest": "[%s] case/vm/vm-Snapshot1.vmsn" % EV_DS}])
    assert world.calls == calls  # every refusal before any change


def test_nothing_is_written_onto_a_datastore_that_holds_a_source(world, tmp_path):
    with pytest.raises(DestinationError, match="never where the evidence lies"):
        run(tmp_path, dest="[%s] evidence/vm.vmdk" % SRC_DS, files=[])
    with pytest.raises(DestinationError, match="never where the evidence lies"):
        run(tmp_path, files=[{"src": "[%s] vm/vm-Snapshot1.vmem" % SRC_DS, "dest": "[%s] e/x.vmem" % SRC_DS}])
    with pytest.raises(InvalidInputError, match="would be written twice"):
        run(tmp_path, files=[{"src": "[%s] vm/vm-Snapshot1.vmem" % SRC_DS, "dest": "[%s] case/vm/x.vmem" % EV_DS},
                             {"src": "[%s] vm/vm-Snapshot1.vmsn" % SRC_DS, "dest": "[%s] case/vm/x.vmem" % EV_DS}])
    assert world.calls == [] and evidence_files(world) == {}


def test_a_chain_is_read_to_its_base_and_each_level_hashed(world, tmp_path):
    world.add("[%s] vm/vm-000001.vmdk" % SRC_DS, DELTA % (b"vm.vmdk", 16, b"vm-000001-sesparse.vmdk"))
    world.add("[%s] vm/vm-000001-sesparse.vmdk" % SRC_DS, b"delta" * 10)
    r = run(tmp_path, src="[%s] vm/vm-000001.vmdk" % SRC_DS, files=[])
    roles = [(s["role"], s["depth"], s["dest"]) for s in r["disk"]["source_files"]]
    assert roles == [("delta descriptor", 0, "[%s] case/vm/vm.vmdk" % EV_DS), ("delta extent", 0, None),
                     ("descriptor", 1, None), ("extent", 1, None)]
    assert r["digests"] is None and "consolidates 2 levels" in r["verify_note"]
    assert [lv["path"] for lv in r["disk"]["chain"]] == ["[%s] vm/vm-000001.vmdk" % SRC_DS, "[%s] vm/vm.vmdk" % SRC_DS]


def test_a_chain_that_loops_or_a_raw_device_mapping_is_refused(world, tmp_path):
    world.add("[%s] l/a.vmdk" % SRC_DS, DELTA % (b"b.vmdk", 16, b"a-sesparse.vmdk"))
    world.add("[%s] l/b.vmdk" % SRC_DS, DELTA % (b"a.vmdk", 16, b"b-sesparse.vmdk"))
    with pytest.raises(EvidenceSourceError, match="does not end"):
        run(tmp_path, src="[%s] l/a.vmdk" % SRC_DS, files=[])
    world.add("[%s] r/r.vmdk" % SRC_DS, b'# Disk DescriptorFile\ncreateType="vmfsPassthroughRawDeviceMap"\n'
                                        b'RW 16 VMFSRDM "r-rdmp.vmdk"\n')
    with pytest.raises(EvidenceSourceError, match="raw device mapping"):
        run(tmp_path, src="[%s] r/r.vmdk" % SRC_DS, files=[])
    with pytest.raises(EvidenceSourceError, match="has no file"):
        run(tmp_path, src="[%s] none/none.vmdk" % SRC_DS, files=[])
    assert world.calls == []


def test_a_copy_that_exists_meanwhile_is_not_ours_to_remove(world, tmp_path, monkeypatch):
    world.add("[%s] case/vm/vm-Snapshot1.vmem" % EV_DS, b"someone else's")
    # planned while absent, made by someone else before our copy: the copy refuses, and its record is closed
    monkeypatch.setattr(vc, "existing_state", lambda host, j, item: ("absent", None))
    with pytest.raises(DestinationError, match="made meanwhile by someone else"):
        run(tmp_path, src=None, dest=None,
            files=[{"src": "[%s] vm/vm-Snapshot1.vmem" % SRC_DS, "dest": "[%s] case/vm/vm-Snapshot1.vmem" % EV_DS}])
    assert changes(tmp_path) == []  # the folder existed: nothing for teardown to do
    closed = [r for r in journal(tmp_path).records() if r.get("kind") == "undone"]
    assert closed[-1]["result"].startswith("nothing to undo: [%s] case/vm/vm-Snapshot1.vmem existed already" % EV_DS)
    assert world.files["[%s] case/vm/vm-Snapshot1.vmem" % EV_DS] == b"someone else's"


def test_a_failed_copy_is_left_to_teardown_which_removes_it_and_the_folder_it_made(world, tmp_path, monkeypatch):
    monkeypatch.setattr(vc._client, "client_from_params", lambda options: _Login(Client(world)))  # pylint: disable=W0212
    world.copy_fault = ("NoDiskSpace", 4000)
    with pytest.raises(VsphereError) as err:
        run(tmp_path, files=[])
    assert "teardown removes what the copy left at [%s] case/vm/vm.vmdk" % EV_DS in err.value.message
    assert list(evidence_files(world)) == ["[%s] case/vm/vm-flat.vmdk" % EV_DS]
    disk = [x for x in changes(tmp_path) if x["undo"]["kind"] == "disk"][0]
    assert not disk["applied"]
    rerun = pytest.raises(DestinationError, run, tmp_path, files=[])
    assert "Run teardown for the case first" in rerun.value.message
    world.calls[:] = []
    undone = journal(tmp_path).teardown(options={"hostname": "esxi1"}, check_mode=True)
    assert undone["undone"][0]["result"] == "would remove what the unfinished copy left: [%s] case/vm/vm-flat.vmdk" % EV_DS
    assert world.calls == [] and list(evidence_files(world)) == ["[%s] case/vm/vm-flat.vmdk" % EV_DS]
    result = remove_with(world, disk["undo"])
    assert result.startswith("removed what the unfinished copy left: [%s] case/vm/vm-flat.vmdk" % EV_DS)
    # the descriptor is absent: no DeleteVirtualDisk_Task, the data file alone
    assert world.calls == [("DeleteDatastoreFile_Task", "[%s] case/vm/vm-flat.vmdk" % EV_DS)]
    folders = [x for x in changes(tmp_path) if x["undo"]["kind"] == "folders"][0]
    assert remove_with(world, folders["undo"]) == "removed the empty folder [%s] case/vm" % EV_DS
    assert "[%s] case/vm" % EV_DS not in world.folders and "[%s] case" % EV_DS in world.folders
    assert world.files["[%s] vm/vm-flat.vmdk" % SRC_DS]  # the source, untouched


def test_a_source_that_moves_during_the_copy_fails_it(world, tmp_path):
    def touch():
        world.modified["[%s] vm/vm-flat.vmdk" % SRC_DS] = "Mon, 07 Dec 2026 06:30:22 GMT"
    world.after_copy = touch
    with pytest.raises(EvidenceSourceError, match="A source changed while it was copied"):
        run(tmp_path, files=[])
    assert not [x for x in changes(tmp_path) if x["undo"]["kind"] == "disk"][0]["applied"]
    assert "[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS not in world.files


# -- undo --------------------------------------------------------------------------------------------------------------

def remove_with(world, undo, check_mode=False):
    client = Client(world)
    original = vc.Host
    vc.Host = Host
    try:
        return vc.remove_partial(client, undo, check_mode, 30)
    finally:
        vc.Host = original


def undo_for(tmp_path, kind="disk", **kw):
    u = {"endpoint": "esxi1", "api_type": "HostAgent", "endpoint_instance_uuid": None, "datacenter": DC,
         "datastore": EV_DS, "source_datastores": [SRC_DS], "case_id": "c9", "journal_dir": str(tmp_path / "journal"),
         "journal_host": "controller", "kind": kind, "dest": "[%s] case/vm/vm.vmdk" % EV_DS,
         "src": "[%s] vm/vm.vmdk" % SRC_DS,
         "dest_files": ["[%s] case/vm/vm.vmdk" % EV_DS, "[%s] case/vm/vm-flat.vmdk" % EV_DS,
                        "[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS],
         "marker": "[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS, "copy_id": "c0ffee"}
    u.update(kw)
    return u


def test_an_unfinished_disk_is_removed_after_the_copy_task_still_at_work(world, tmp_path):
    world.add("[%s] case/vm/vm.vmdk" % EV_DS, thin(16, "vm-flat.vmdk"))
    world.add("[%s] case/vm/vm-flat.vmdk" % EV_DS, b"partial")
    world.add("[%s] case/vm/other.vmem" % EV_DS, b"another copy, complete")
    task = Task(state="running")
    world.running.append(task)
    result = remove_with(world, undo_for(tmp_path))
    assert result.startswith("removed what the unfinished copy left: [%s] case/vm/vm.vmdk, [%s] case/vm/vm-flat.vmdk "
                             "after waiting for the copy task(s) %s" % (EV_DS, EV_DS, task._moId))  # pylint: disable=W0212
    assert world.calls == [("DeleteVirtualDisk_Task", "[%s] case/vm/vm.vmdk" % EV_DS)]
    assert list(evidence_files(world)) == ["[%s] case/vm/other.vmem" % EV_DS]


def test_a_copy_whose_marker_names_it_is_complete_and_kept(world, tmp_path):
    world.add("[%s] case/vm/vm.vmdk" % EV_DS, thin(16, "vm-flat.vmdk"))
    world.add("[%s] case/vm/vm-flat.vmdk" % EV_DS, b"complete")
    world.add("[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS, json.dumps({"copy_id": "c0ffee"}).encode())
    kept = remove_with(world, undo_for(tmp_path))
    assert kept.startswith("kept: evidence: [%s] case/vm/vm.vmdk is a completed copy" % EV_DS)
    assert world.calls == [] and len(evidence_files(world)) == 3
    # another run's marker: the partial disk is removed, the marker (not ours) stays
    world.files["[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS] = json.dumps({"copy_id": "other"}).encode()
    undo = undo_for(tmp_path, dest_files=["[%s] case/vm/vm.vmdk" % EV_DS, "[%s] case/vm/vm-flat.vmdk" % EV_DS])
    assert remove_with(world, undo).startswith("removed what the unfinished copy left")
    assert list(evidence_files(world)) == ["[%s] case/vm/vm.vmdk.dfir-vmcollect.json" % EV_DS]


def test_nothing_is_removed_on_a_source_datastore_nor_without_a_connection(world, tmp_path):
    with pytest.raises(DestinationError, match="a datastore that holds a source; nothing is removed there"):
        remove_with(world, undo_for(tmp_path, datastore=SRC_DS))
    handler = UNDO_HANDLERS[vc.ACTION]
    with pytest.raises(DestinationError, match="give teardown its connection"):
        handler(undo_for(tmp_path), UndoContext())
    assert world.calls == []


def test_a_completed_copy_is_kept_by_its_journal_alone(world, tmp_path):
    j = Journal("c9", str(tmp_path / "journal"), hostname="controller")
    undo = undo_for(tmp_path)
    change = j.record_change(vc.ACTION, undo, "thin clone", module=vc.MODULE)
    j.mark_applied(change, copy_id="c0ffee")
    # no connection needed, no call made, whatever is on the datastore
    result = j.teardown(options={})
    assert result["undone"][0]["result"].startswith("kept: evidence: [%s] case/vm/vm.vmdk is a completed copy" % EV_DS)
    assert world.calls == []


def test_folders_are_removed_deepest_first_and_only_when_empty(world, tmp_path):
    world.folders.update(["[%s] case/a" % EV_DS, "[%s] case/a/b" % EV_DS])
    undo = undo_for(tmp_path, kind="folders", dest="[%s] case/a/b" % EV_DS,
                    folders=["[%s] case/a" % EV_DS, "[%s] case/a/b" % EV_DS])
    assert remove_with(world, undo, check_mode=True) == ("would remove the empty folder [%s] case/a/b; would remove "
                                                         "the empty folder [%s] case/a" % (EV_DS, EV_DS))
    world.add("[%s] case/a/kept.vmem" % EV_DS, b"evidence")
    assert remove_with(world, undo) == ("removed the empty folder [%s] case/a/b; kept the folder [%s] case/a: it holds "
                                        "kept.vmem (evidence, or not ours)" % (EV_DS, EV_DS))
    assert world.calls == [("DeleteDatastoreFile_Task", "[%s] case/a/b" % EV_DS)]
    assert remove_with(world, undo_for(tmp_path, kind="folders", folders=["[%s] gone" % EV_DS])) == \
        "the folder [%s] gone was already gone" % EV_DS


# -- fetch.hash_file: the source hashed where it lies, nothing kept -------------------------------------------------

class _Files(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = None
    log = []

    def log_message(self, *args):
        pass

    def _path(self):
        return os.path.join(self.root, self.path.split("?")[0][len("/folder/"):].replace("%20", " "))

    def do_HEAD(self):  # noqa: N802 pylint: disable=invalid-name
        self.log.append(("HEAD", None))
        size = os.path.getsize(self._path())
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Last-Modified", email.utils.formatdate(0, usegmt=True))
        self.end_headers()

    def do_GET(self):  # noqa: N802 pylint: disable=invalid-name
        rng = self.headers.get("Range")
        self.log.append(("GET", rng))
        with open(self._path(), "rb") as f:
            data = f.read()
        start, end = [int(x) for x in rng.split("=")[1].split("-")]
        body = data[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, len(data)))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", email.utils.formatdate(0, usegmt=True))
        self.end_headers()
        self.wfile.write(body)


class _Session(object):
    """A ClientSession over plain HTTP to the local server."""

    def __init__(self, port):
        self.where = "127.0.0.1:%d" % port
        self.port = port

    def connection(self):
        import http.client
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def cookie(self):
        return 'vmware_soap_session="x"'

    def relogin(self):
        raise AssertionError("no relogin expected")

    def tls_record(self):
        return {"verified": False, "how": "off", "thumbprint_sha256": None}


@pytest.fixture
def server(tmp_path):
    _Files.root = str(tmp_path)
    _Files.log = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_hash_file_reads_each_byte_once_keeps_nothing_and_skips_what_areas_leave_out(server, tmp_path):
    data = bytearray(8 * 1024 * 1024)
    data[1024 * 1024:1024 * 1024 + 5] = b"hello"
    data[6 * 1024 * 1024:6 * 1024 * 1024 + 3] = b"end"
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "vm-flat.vmdk").write_bytes(bytes(data))
    before = sorted(os.listdir(str(tmp_path)))
    session = _Session(server)
    whole = vf.hash_file(session, "[ds] vm/vm-flat.vmdk", DC, ["sha256", "md5"], retries=0)
    assert whole["digests"] == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    assert whole["size"] == whole["data_bytes"] == len(data) and whole["hole_bytes"] == 0
    assert whole["source_identity"] == {"size": len(data), "modified": "1970-01-01T00:00:00Z", "from": "HEAD"}
    _Files.log[:] = []
    areas = [{"start": 1024 * 1024, "length": 65536}, {"start": 6 * 1024 * 1024, "length": 65536}]
    sparse = vf.hash_file(session, "[ds] vm/vm-flat.vmdk", DC, ["sha256"], areas=areas, retries=0)
    assert sparse["digests"]["sha256"] == whole["digests"]["sha256"]
    assert sparse["data_bytes"] == sparse["fetched_bytes"] == 131072 and sparse["areas_used"]["areas"] == 2
    assert sorted(r for m, r in _Files.log if m == "GET") == ["bytes=1048576-1114111", "bytes=6291456-6356991"]
    assert set(m for m, r in _Files.log) == {"HEAD", "GET"} and sorted(os.listdir(str(tmp_path))) == before


def test_the_destination_size_comes_from_the_browser_else_the_disk_capacity_else_head(world):
    item = {"kind": "disk", "dest": "[%s] c/vm.vmdk" % EV_DS, "dest_extent": "[%s] c/vm-flat.vmdk" % EV_DS}
    host = Host(Client(world))
    listing = {"vm.vmdk": {"size": 500, "capacity_kb": None}, "vm-flat.vmdk": {"size": 8192}}
    assert vc.dest_size(host, item, listing) == (8192, "datastore browser")
    # a browser that shows a disk as one entry (it hides -flat.vmdk) gives its capacity
    listing = {"vm.vmdk": {"size": 500, "capacity_kb": 8}}
    assert vc.dest_size(host, item, listing) == (8192, "datastore browser (the disk's capacity)")
    world.add("[%s] c/vm-flat.vmdk" % EV_DS, b"\x00" * 4096)
    assert vc.dest_size(host, item, {"vm.vmdk": {"size": 500, "capacity_kb": None}}) == (4096, "HEAD of the data file")


def test_a_fault_raised_by_the_copy_call_itself_is_a_sentence_and_closes_or_keeps_the_record(world, tmp_path):
    from pyVmomi import vim
    world.raise_on_copy = vim.fault.FileAlreadyExists(file="[%s] case/vm/vm.vmdk" % EV_DS)
    with pytest.raises(DestinationError, match="made meanwhile by someone else"):
        run(tmp_path, files=[])
    assert [x["undo"]["kind"] for x in changes(tmp_path)] == ["folders"]
    world.raise_on_copy = vim.fault.InvalidDatastorePath(datastorePath="[%s] case/vm/vm.vmdk" % EV_DS)
    with pytest.raises(VsphereError) as err:
        run(tmp_path, files=[])
    assert "esxi1 could not make the thin clone of" in err.value.message and "InvalidDatastorePath" in err.value.message
    assert "teardown removes what the copy left" in err.value.message
    assert [x["undo"]["kind"] for x in changes(tmp_path)] == ["disk", "folders"]
