# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real ESXi behaviour of the lab's vSphere simulator (lab/vcsim, -lab-vms; lab/vcsim/BEHAVIOUR-vms.md).

Starts its own simulator (esx mode, then vpx mode) with its own env file and datastore folder,
and proves with pyvmomi >= 8 and the files on disk: VMs with real disk content, the guest
heartbeat in the current leaf, memory snapshots (.vmem read by Volatility 3 with the .vmsn),
layoutEx, consolidation, CBT, /folder authentication, thin CopyVirtualDisk, the pyvmomi 8
fixes. Skipped like test_vcsim_lab.py when Go/govmomi are missing; needs the RAM image
(lab/vcsim/ram_image.sh, cached in $LAB_DIR/vcsim-ram: ~15 s to build once when the guest
kernel is cached, skipped when qemu is missing).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse

import pytest

from conftest import sha256_file
from sesparse_read import SESPARSE_MAGIC, header as sesparse_header, read_extent
from vcsim_helpers import BIN, LAB_DIR, NEEDS_SIMULATOR, ON_LINUX, VCSIM, run as _run

RAM = os.path.join(LAB_DIR, "vcsim-ram", "ram-256m.raw")
VOL = os.path.join(os.path.dirname(sys.executable), "vol")
CBT_VM, OFF_VM, INDEP_VM, SNAP_VM = "Win Srv [prod] 01", "lab-off-02", "lab indep 03", "lab-snap-04"
SEEK_DATA, SEEK_HOLE = 3, 4

pytestmark = [NEEDS_SIMULATOR, ON_LINUX]

pyVmomi = pytest.importorskip("pyVmomi")
from pyVim.connect import Disconnect, SmartConnect  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402


@pytest.fixture(scope="module")
def built():
    build = _run("bash", os.path.join(VCSIM, "build.sh"))
    assert build.returncode == 0, build.stdout
    if not os.path.exists(RAM) and not shutil.which("qemu-system-x86_64"):
        pytest.skip("no cached RAM image %s and no qemu-system-x86_64 to build it" % RAM)
    ram = _run("bash", os.path.join(VCSIM, "ram_image.sh"), timeout=600)
    assert ram.returncode == 0, ram.stdout
    assert ram.stdout.strip().splitlines()[-1] == RAM
    return RAM


class Sim:
    """One simulator process with its env file, datastore folder and a pyvmomi session."""

    def __init__(self, mode, tmp, ram):
        self.envfile = str(tmp / ("vcsim-%s.json" % mode))
        self.log = open(str(tmp / ("vcsim-%s.log" % mode)), "w")
        args = [BIN, "-mode", mode, "-l", "127.0.0.1:0", "-env", self.envfile,
                "-datastore-dir", str(tmp / ("ds-" + mode)), "-lab-vms", "-ram-image", ram]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, open(self.log.name).read()
            if os.path.exists(self.envfile):
                with open(self.envfile) as fh:
                    self.env = json.load(fh)
                if self.env["pid"] == self.proc.pid:
                    break
            assert time.monotonic() < deadline, "vcsim did not start: " + open(self.log.name).read()
            time.sleep(0.1)
        self.content = self.env["lab"]["content"]
        self.ctx = ssl.create_default_context(cadata=self.env["cert_pem"])
        self.si = SmartConnect(host=self.env["host"], port=self.env["port"], user=self.env["username"],
                               pwd=self.env["password"], sslContext=self.ctx)
        self.dc = self.env["datacenters"][0]
        self.ds_local = {d["name"]: d["local_path"] for d in self.env["datastores"]}

    def stop(self):
        try:
            Disconnect(self.si)
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()

    def vm(self, name):
        vm = self.si.content.searchIndex.FindByInventoryPath("%s/vm/%s" % (self.dc, name))
        assert vm is not None, name
        return vm

    def labvm(self, name):
        return next(v for v in self.content["vms"] if v["name"] == name)

    def local(self, dspath):
        ds, rel = dspath[1:].split("] ", 1)
        return os.path.join(self.ds_local[ds], *rel.split("/"))

    def datacenter(self):
        return next(e for e in self.si.content.rootFolder.childEntity if e.name == self.dc)

    def folder(self, dspath, method="GET", cookie=True, headers=None, body=None):
        ds, rel = dspath[1:].split("] ", 1)
        q = urllib.parse.urlencode({"dcPath": self.dc, "dsName": ds})
        path = "/folder/%s?%s" % (urllib.parse.quote(rel), q)
        h = dict(headers or {})
        if cookie:
            h["Cookie"] = self.si._stub.cookie
        conn = http.client.HTTPSConnection(self.env["host"], self.env["port"], context=self.ctx, timeout=30)
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp, body


@pytest.fixture(scope="module")
def esx(built, tmp_path_factory):
    sim = Sim("esx", tmp_path_factory.mktemp("esx"), built)
    yield sim
    sim.stop()


def wait(task, timeout=60):
    """Poll task.info (the pyvmomi 8 fix: FileManager/VirtualDiskManager/snapshot tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        info = task.info
        if info.state in (vim.TaskInfo.State.success, vim.TaskInfo.State.error):
            return info
        assert time.monotonic() < deadline, "task %s still %s" % (task._moId, info.state)
        time.sleep(0.05)


def ok(task):
    info = wait(task)
    assert info.state == "success", "%s: %s" % (info.descriptionId, info.error)
    return info


def extents(path, size):
    out, off = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while off < size:
            try:
                start = os.lseek(fd, off, SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, SEEK_HOLE), size)
            out.append((start, end))
            off = end
    finally:
        os.close(fd)
    return out


def heartbeat(path, offset):
    """The heartbeat counter in one extent (a flat file, or a delta's SEsparse extent read through its grain tables:
    0 while the delta holds no grain there)."""
    block = read_extent(path, offset, 512)
    m = re.search(rb"LAB-HEARTBEAT v1 vm=\"[^\"]*\" disk=\d+ counter=(\d+) time=(\S+)\n", block)
    return int(m.group(1)) if m else 0


def wait_heartbeat(path, offset, above, timeout=5):
    """The heartbeat counter at path once it is above `above` (the guest writes every 300 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        n = heartbeat(path, offset)
        if n > above:
            return n
        assert time.monotonic() < deadline, "no heartbeat above %d in %s" % (above, path)
        time.sleep(0.05)


def descriptor(path):
    text = open(path).read()
    return text, dict((k.strip(), v.strip().strip('"')) for k, v in
                      (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")))


def fs_files(flat, part_offset):
    """{path: sha256} of the regular files of the ext4 partition (Sleuthkit, else debugfs)."""
    out = {}
    if shutil.which("fls") and shutil.which("icat"):
        sector = str(part_offset // 512)
        listing = _run("fls", "-r", "-p", "-F", "-o", sector, flat)
        assert listing.returncode == 0, listing.stdout
        for line in listing.stdout.splitlines():
            m = re.match(r"r/r (\d+):\s+(.*)$", line)
            if m:
                data = subprocess.run(["icat", "-o", sector, flat, m.group(1)], stdout=subprocess.PIPE,
                                      check=True).stdout
                out[m.group(2)] = hashlib.sha256(data).hexdigest()
        return out
    dev = "%s?offset=%d" % (flat, part_offset)
    for d in ("/", "/evidence"):
        listing = _run("debugfs", "-R", "ls -p %s" % d, dev)
        for line in listing.stdout.splitlines():
            parts = line.strip("/").split("/")
            if len(parts) >= 6 and parts[1].startswith("100"):
                p = (d.rstrip("/") + "/" + parts[4]).lstrip("/")
                data = subprocess.run(["debugfs", "-R", "cat /%s" % p, dev], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, check=True).stdout
                out[p] = hashlib.sha256(data).hexdigest()
    return out


def disks_of(vm_or_snapshot):
    return {d.key: d for d in vm_or_snapshot.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}


def layout_files(vm):
    lx = vm.layoutEx
    return {f.key: f for f in lx.file}, lx


# ---- esx mode -----------------------------------------------------------------------------------

def test_esx_content(esx):
    c = esx.content
    assert c["enabled"] is True and c["memory_mb"] == 256
    assert os.path.getsize(c["ram_image"]) == 256 << 20
    roles = {v["role"]: v for v in c["vms"]}
    assert set(roles) == {"cbt", "powered-off", "independent-disk", "with-snapshot"}
    assert sorted(v["name"] for v in esx.env["vms"]) == sorted(v["name"] for v in c["vms"])
    for v in c["vms"]:
        vm = esx.vm(v["name"])
        assert vm._moId == v["moref"] and vm.config.uuid == v["uuid"]
        assert vm.runtime.powerState == v["power_state"]
        assert vm.config.files.vmPathName == "[LocalDS_0] %s/%s.vmx" % (v["name"], v["name"])
        assert vm.config.hardware.memoryMB == 256
        assert bool(vm.config.changeTrackingEnabled) == (v["role"] == "cbt")
        devs = disks_of(vm)
        assert sorted(devs) == [d["key"] for d in v["disks"]]
        files, lx = layout_files(vm)
        types = {f.type for f in files.values()}
        assert {"config", "nvram", "log", "snapshotList", "diskDescriptor", "diskExtent"} <= types
        for d in v["disks"]:
            text, kv = descriptor(d["descriptor_local"])
            flatname = os.path.basename(d["flat_local"])
            assert kv["createType"] == "vmfs" and kv["ddb.thinProvisioned"] == "1"
            assert 'RW %d VMFS "%s"' % (d["virtual_bytes"] // 512, flatname) in text
            assert kv["ddb.uuid"] == d["ddb_uuid"] and kv["ddb.adapterType"] == "lsilogic"
            st = os.stat(d["flat_local"])
            assert st.st_size == d["virtual_bytes"] == 64 << 20
            assert st.st_blocks * 512 < st.st_size // 4, "flat is not thin"
            dev = devs[d["key"]]
            assert dev.capacityInBytes == d["virtual_bytes"] and dev.backing.thinProvisioned
            assert dev.backing.diskMode == d["mode"]
            base = dev.backing
            while base.parent is not None:
                base = base.parent
            assert base.fileName == d["descriptor"]
            got = fs_files(d["flat_local"], d["partition_offset"])
            want = {f["path"]: f["sha256"] for f in d["known_files"]}
            assert {k: got.get(k) for k in want} == want
            marker = hashlib.sha256(("DISKMARK:%s\n" % v["disk_marker"]).encode()).hexdigest()
            assert want["evidence/marker.txt"] == marker
            chain = next(x for x in lx.disk if x.key == d["key"]).chain
            assert [files[k].name for k in chain[0].fileKey] == [d["descriptor"], d["flat"]]
            assert len(chain) == (2 if v["role"] == "with-snapshot" and d["mode"] == "persistent" else 1)
        if v["role"] == "with-snapshot":
            info = vm.snapshot
            assert [s.name for s in info.rootSnapshotList] == ["lab-base"]
            root = info.rootSnapshotList[0]
            assert info.currentSnapshot == root.snapshot and root.id == 1 and not root.quiesced
            assert root.createTime.utcoffset().total_seconds() == 0
            assert len(lx.snapshot) == 1 and lx.snapshot[0].memoryKey == -1
            assert files[lx.snapshot[0].dataKey].type == "snapshotData"
            leaf = devs[2000].backing
            assert leaf.fileName == "[LocalDS_0] %s/%s-000001.vmdk" % (v["name"], v["name"])
            assert leaf.parent.fileName == v["disks"][0]["descriptor"] and leaf.deltaDiskFormat == "seSparseFormat"
        else:
            assert vm.snapshot is None  # pyvmomi 8 + unset property (Fetch fix)
            assert vm.rootSnapshot == []


# outside the CI budget (make test-slow); in CI: the ESXi acquisitions take and remove memory snapshots
@pytest.mark.slow
def test_esx_memory_snapshot_cycle(esx):
    v = esx.labvm(CBT_VM)
    d = v["disks"][0]
    vm = esx.vm(CBT_VM)
    flat, hb = d["flat_local"], d["heartbeat_offset"]
    wait_heartbeat(flat, hb, heartbeat(flat, hb))  # the guest writes into the flat before any snapshot

    info = ok(vm.CreateSnapshot_Task(name="mem", description="pytest", memory=True, quiesce=False))
    snap = info.result
    assert isinstance(snap, vim.vm.Snapshot) and info.entity == vm and info.entityName == CBT_VM
    assert vm.snapshot.currentSnapshot == snap
    tree = vm.snapshot.rootSnapshotList[0]
    assert tree.name == "mem" and tree.createTime.utcoffset().total_seconds() == 0 and tree.state == "poweredOn"

    # layoutEx: delta, vmsn, vmem
    files, lx = layout_files(vm)
    by_type = {}
    for f in files.values():
        by_type.setdefault(f.type, []).append(f.name)
    pre = "[LocalDS_0] %s/%s" % (CBT_VM, CBT_VM)
    assert by_type["snapshotData"] == [pre + "-Snapshot1.vmsn"]
    assert by_type["snapshotMemory"] == [pre + "-Snapshot1.vmem"]
    assert pre + "-000001.vmdk" in by_type["diskDescriptor"]
    assert pre + "-000001-sesparse.vmdk" in by_type["diskExtent"]
    chain = lx.disk[0].chain
    assert [[files[k].name for k in u.fileKey] for u in chain] == [
        [d["descriptor"], d["flat"]], [pre + "-000001.vmdk", pre + "-000001-sesparse.vmdk"]]
    sl = lx.snapshot[0]
    assert sl.key == snap and files[sl.dataKey].type == "snapshotData" and files[sl.memoryKey].type == "snapshotMemory"
    assert [[files[k].name for k in u.fileKey] for u in sl.disk[0].chain] == [[d["descriptor"], d["flat"]]]
    backing = disks_of(vm)[2000].backing
    assert backing.fileName == pre + "-000001.vmdk" and backing.parent.fileName == d["descriptor"]
    dummy, kv = descriptor(esx.local(pre + "-000001.vmdk"))
    assert kv["createType"] == "seSparse" and kv["parentFileNameHint"] == CBT_VM + ".vmdk"
    dummy, base_kv = descriptor(d["descriptor_local"])
    assert kv["parentCID"] == base_kv["CID"]

    # the frozen base stops changing; the heartbeat goes on in the delta (a VMware SEsparse extent, 4 KiB grains)
    delta = esx.local(pre + "-000001-sesparse.vmdk")
    assert kv["ddb.grain"] == "8" and backing.deltaGrainSize == 4
    with open(delta, "rb") as fh:
        h = sesparse_header(fh)
    assert h is not None and h["magic"] == SESPARSE_MAGIC and h["capacity"] == d["virtual_bytes"] // 512
    assert (h["grain_size"], h["grain_table_size"]) == (8, 64)
    frozen = heartbeat(flat, hb)
    h1 = sha256_file(flat)
    d1 = wait_heartbeat(delta, hb, frozen)
    time.sleep(2)
    assert sha256_file(flat) == h1, "the base changed after the snapshot"
    d2 = heartbeat(delta, hb)
    assert d2 > d1 > frozen, (frozen, d1, d2)

    # CBT: changeId "*" = the allocated areas of the frozen base
    areas = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=0, changeId="*")
    assert areas.startOffset == 0 and areas.length == d["virtual_bytes"]
    assert [(a.start, a.start + a.length) for a in areas.changedArea] == extents(flat, d["virtual_bytes"])
    ext = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=d["partition_offset"], changeId="*")
    assert ext.changedArea[0].start >= d["partition_offset"]
    # incremental CBT: the changeId of the first snapshot's disk, a second snapshot
    cid = disks_of(snap)[2000].backing.changeId
    assert cid == d["change_id"] and disks_of(vm)[2000].backing.changeId == cid[:-2] + "/1"
    snap2 = ok(vm.CreateSnapshot_Task(name="mem2", memory=False, quiesce=False)).result
    inc = vm.QueryChangedDiskAreas(snapshot=snap2, deviceKey=2000, startOffset=0, changeId=cid)
    assert [(a.start, a.length) for a in inc.changedArea] == [(hb - hb % 65536, 65536)]
    assert not vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=0, changeId=cid).changedArea
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snapshot=snap2, deviceKey=2000, startOffset=0, changeId="52 00/0")
    ok(snap2.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
    assert not os.path.exists(esx.local(pre + "-000002.vmdk")) and vm.snapshot.currentSnapshot == snap

    # memory: the .vmem is the guest's RAM, Volatility 3 reads it with the .vmsn beside it
    vmem, vmsn = esx.local(pre + "-Snapshot1.vmem"), esx.local(pre + "-Snapshot1.vmsn")
    assert os.path.getsize(vmem) == 256 << 20
    with open(vmem, "rb") as fh:
        assert esx.content["ram_marker"].encode() in fh.read()
    if os.access(VOL, os.X_OK) or importlib.util.find_spec("volatility3") is not None:
        vol = [VOL] if os.access(VOL, os.X_OK) else [sys.executable, "-c", "from volatility3.cli import main; main()"]
        r = subprocess.run(vol + ["-vvvv", "-f", vmem, "banners"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=180, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Stacked VmwareLayer using VmwareStacker" in r.stderr
        assert esx.content["ram_banner"].split(" (")[0] in r.stdout

    # /folder: session cookie required; Range -> 206 (path with spaces and brackets)
    resp, dummy = esx.folder(pre + "-Snapshot1.vmsn", cookie=False, headers={"Range": "bytes=0-15"})
    assert resp.status == 401
    resp, dummy = esx.folder(pre + "-Snapshot1.vmsn", headers={"Cookie": "vmware_soap_session=\"bogus\""}, cookie=False)
    assert resp.status == 401
    resp, body = esx.folder(pre + "-Snapshot1.vmsn", headers={"Range": "bytes=0-15"})
    size = os.path.getsize(vmsn)
    assert resp.status == 206 and resp.getheader("Content-Range") == "bytes 0-15/%d" % size
    assert body == open(vmsn, "rb").read()[:16] and body[:4] == b"\xd2\xbe\xd2\xbe"
    resp, body = esx.folder(pre + "-Snapshot1.vmem", method="HEAD")
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == 256 << 20 and body == b""
    put = "[LocalDS_0] %s/put [1].txt" % CBT_VM
    resp, dummy = esx.folder(put, method="PUT", cookie=False, body=b"nope")
    assert resp.status == 401 and not os.path.exists(esx.local(put))
    resp, dummy = esx.folder(put, method="PUT", body=b"lab put\n")
    assert resp.status in (200, 201) and open(esx.local(put), "rb").read() == b"lab put\n"
    os.remove(esx.local(put))

    # thin copy of the frozen base: sparse, byte-equal; existing destination -> FileAlreadyExists
    vdm, dc = esx.si.content.virtualDiskManager, esx.datacenter()
    spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(diskType="thin", adapterType="lsiLogic",
                                                            capacityKb=d["virtual_bytes"] // 1024)
    info = ok(vdm.CopyVirtualDisk_Task(sourceName=d["descriptor"], sourceDatacenter=dc,
                                       destName="[LocalDS_0] copies/base.vmdk", destSpec=spec))
    assert info.entity is None
    clone = esx.local("[LocalDS_0] copies/base-flat.vmdk")
    st = os.stat(clone)
    assert st.st_size == d["virtual_bytes"] and st.st_blocks * 512 < st.st_size // 4
    assert sha256_file(clone) == h1
    text, ckv = descriptor(esx.local("[LocalDS_0] copies/base.vmdk"))
    assert ckv["createType"] == "vmfs" and ckv["ddb.thinProvisioned"] == "1" and '"base-flat.vmdk"' in text
    info = wait(vdm.CopyVirtualDisk_Task(sourceName=d["descriptor"], sourceDatacenter=dc,
                                         destName="[LocalDS_0] copies/base.vmdk", destSpec=spec))
    assert info.state == "error" and isinstance(info.error, vim.fault.FileAlreadyExists)
    # the delta leaf copies the consolidated disk: the base's content + the newer heartbeat
    ok(vdm.CopyVirtualDisk_Task(sourceName=pre + "-000001.vmdk", sourceDatacenter=dc,
                                destName="[LocalDS_0] copies/leaf.vmdk", destSpec=spec))
    leaf = esx.local("[LocalDS_0] copies/leaf-flat.vmdk")
    assert heartbeat(leaf, hb) >= d2
    with open(leaf, "rb") as a, open(flat, "rb") as b:
        assert a.read(hb) == b.read(hb)
    # FileManager copies of the snapshot files keep working
    fm = esx.si.content.fileManager
    for src, dst in ((pre + "-Snapshot1.vmsn", "[LocalDS_0] copies/s.vmsn"),
                     (pre + "-Snapshot1.vmem", "[LocalDS_0] copies/s.vmem")):
        info = ok(fm.CopyDatastoreFile_Task(sourceName=src, sourceDatacenter=dc, destinationName=dst,
                                            destinationDatacenter=dc))
        assert info.entity is None
        assert sha256_file(esx.local(dst)) == sha256_file(esx.local(src))

    # consolidation: the delta's writes land in the base, the snapshot files go
    last = heartbeat(delta, hb)
    info = ok(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
    assert info.entity == vm and info.entityName == CBT_VM
    assert heartbeat(flat, hb) >= last > frozen
    for f in ("-000001.vmdk", "-000001-sesparse.vmdk", "-Snapshot1.vmsn", "-Snapshot1.vmem"):
        assert not os.path.exists(esx.local(pre + f)), f
    assert vm.snapshot is None and vm.runtime.consolidationNeeded is False
    backing = disks_of(vm)[2000].backing
    assert backing.fileName == d["descriptor"] and backing.parent is None
    files, lx = layout_files(vm)
    assert not lx.snapshot and len(lx.disk[0].chain) == 1
    assert not {f.type for f in files.values()} & {"snapshotData", "snapshotMemory"}
    got = fs_files(flat, d["partition_offset"])
    assert {f["path"]: got.get(f["path"]) for f in d["known_files"]} == {f["path"]: f["sha256"] for f in d["known_files"]}
    wait_heartbeat(flat, hb, last)


def test_esx_quiesce_independent_remove_all(esx):
    v = esx.labvm(INDEP_VM)
    vm = esx.vm(INDEP_VM)
    d0, d1 = v["disks"]
    assert d1["mode"] == "independent_persistent"
    info = wait(vm.CreateSnapshot_Task(name="q", memory=False, quiesce=True))
    assert info.state == "error" and isinstance(info.error, vim.fault.ToolsUnavailable)
    assert "VMware Tools" in info.error.msg
    assert vm.snapshot is None

    snap = ok(vm.CreateSnapshot_Task(name="disk-only", memory=False, quiesce=False)).result
    pre = "[LocalDS_0] %s/%s" % (INDEP_VM, INDEP_VM)
    devs = disks_of(vm)
    assert devs[2000].backing.fileName == pre + "-000001.vmdk"
    assert devs[2001].backing.fileName == d1["descriptor"] and devs[2001].backing.parent is None
    files, lx = layout_files(vm)
    assert lx.snapshot[0].memoryKey == -1
    assert not os.path.exists(esx.local(pre + "-Snapshot1.vmem"))
    assert os.path.getsize(esx.local(pre + "-Snapshot1.vmsn")) < 4096
    assert not os.path.exists(esx.local(pre + "_1-000001.vmdk"))
    h0, i0 = sha256_file(d0["flat_local"]), heartbeat(d1["flat_local"], d1["heartbeat_offset"])
    wait_heartbeat(d1["flat_local"], d1["heartbeat_offset"], i0)  # the independent disk keeps changing
    time.sleep(0.5)
    assert sha256_file(d0["flat_local"]) == h0
    # a second snapshot, then RemoveAllSnapshots: everything merges into the base, which stays
    ok(vm.CreateSnapshot_Task(name="disk-only-2", memory=False, quiesce=False))
    assert disks_of(vm)[2000].backing.fileName == pre + "-000002.vmdk"
    last = heartbeat(esx.local(pre + "-000002-sesparse.vmdk"), d0["heartbeat_offset"])
    info = ok(vm.RemoveAllSnapshots_Task())
    assert info.entity == vm
    assert os.path.exists(d0["flat_local"]) and os.path.exists(d0["descriptor_local"])
    assert heartbeat(d0["flat_local"], d0["heartbeat_offset"]) >= last
    assert not [f for f in os.listdir(v["dir_local"]) if "-00000" in f or "Snapshot" in f]
    assert vm.snapshot is None and disks_of(vm)[2000].backing.fileName == d0["descriptor"]
    got = fs_files(d0["flat_local"], d0["partition_offset"])
    assert {f["path"]: got.get(f["path"]) for f in d0["known_files"]} == {f["path"]: f["sha256"] for f in d0["known_files"]}
    assert snap is not None


def test_esx_no_cbt_and_late_consolidation(esx):
    v = esx.labvm(SNAP_VM)
    vm = esx.vm(SNAP_VM)
    d = v["disks"][0]
    snap = vm.snapshot.currentSnapshot
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=0, changeId="*")
    pre = "[LocalDS_0] %s/%s" % (SNAP_VM, SNAP_VM)
    delta = esx.local(pre + "-000001-sesparse.vmdk")
    wait_heartbeat(delta, d["heartbeat_offset"], heartbeat(d["flat_local"], d["heartbeat_offset"]))
    ok(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=False))
    assert vm.snapshot is None and vm.runtime.consolidationNeeded is True
    assert os.path.exists(delta) and not os.path.exists(esx.local(pre + "-Snapshot1.vmsn"))
    last = heartbeat(delta, d["heartbeat_offset"])
    info = ok(vm.ConsolidateVMDisks_Task())
    assert info.entity == vm
    assert vm.runtime.consolidationNeeded is False and not os.path.exists(delta)
    assert heartbeat(d["flat_local"], d["heartbeat_offset"]) >= last
    assert disks_of(vm)[2000].backing.fileName == d["descriptor"]


def test_esx_powered_off(esx):
    v = esx.labvm(OFF_VM)
    vm = esx.vm(OFF_VM)
    d = v["disks"][0]
    assert vm.runtime.powerState == "poweredOff" and vm.snapshot is None
    h = sha256_file(d["flat_local"])
    with pytest.raises(vim.fault.FileFault):  # no CBT yet
        vm.QueryChangedDiskAreas(deviceKey=2000, startOffset=0, changeId="*")
    ok(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    assert disks_of(vm)[2000].backing.changeId.endswith("/0")
    areas = vm.QueryChangedDiskAreas(deviceKey=2000, startOffset=0, changeId="*")  # powered off: no snapshot needed
    assert [(a.start, a.start + a.length) for a in areas.changedArea] == extents(d["flat_local"], d["virtual_bytes"])
    files, lx = layout_files(vm)
    assert [files[k].name for k in lx.disk[0].chain[0].fileKey] == [d["descriptor"], d["flat"]]
    snap = ok(vm.CreateSnapshot_Task(name="off", memory=True, quiesce=True)).result
    pre = "[LocalDS_0] %s/%s" % (OFF_VM, OFF_VM)
    assert not os.path.exists(esx.local(pre + "-Snapshot1.vmem")), "no memory state for a powered-off VM"
    assert vm.snapshot.rootSnapshotList[0].state == "poweredOff"
    assert not vm.snapshot.rootSnapshotList[0].quiesced
    ok(snap.RemoveSnapshot_Task(removeChildren=True))
    assert sha256_file(d["flat_local"]) == h and vm.snapshot is None


# ---- vpx mode -------------------------------------------------------------------------------------

def test_vpx_mode(built, tmp_path):
    sim = Sim("vpx", tmp_path, built)
    try:
        assert sim.env["mode"] == "vpx" and sim.env["api_type"] == "VirtualCenter"
        assert sorted(v["name"] for v in sim.content["vms"]) == sorted([CBT_VM, OFF_VM, INDEP_VM, SNAP_VM])
        vm = sim.vm(CBT_VM)
        assert vm.snapshot is None
        d = sim.labvm(CBT_VM)["disks"][0]
        snap = ok(vm.CreateSnapshot_Task(name="vpx", memory=True, quiesce=False)).result
        pre = "[LocalDS_0] %s/%s" % (CBT_VM, CBT_VM)
        assert os.path.getsize(sim.local(pre + "-Snapshot1.vmem")) == 256 << 20
        files, lx = layout_files(vm)
        assert {"snapshotData", "snapshotMemory"} <= {f.type for f in files.values()}
        resp, dummy = sim.folder(pre + "-Snapshot1.vmsn", cookie=False)
        assert resp.status == 401
        resp, body = sim.folder(pre + "-Snapshot1.vmsn", headers={"Range": "bytes=4-7"})
        assert resp.status == 206 and len(body) == 4
        frozen = sha256_file(d["flat_local"])
        spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(diskType="thin", adapterType="lsiLogic",
                                                                capacityKb=d["virtual_bytes"] // 1024)
        ok(sim.si.content.virtualDiskManager.CopyVirtualDisk_Task(
            sourceName=d["descriptor"], sourceDatacenter=sim.datacenter(),
            destName="[LocalDS_0] copies/vpx.vmdk", destSpec=spec))
        clone = sim.local("[LocalDS_0] copies/vpx-flat.vmdk")
        assert os.stat(clone).st_blocks * 512 < d["virtual_bytes"] // 4 and sha256_file(clone) == frozen
        areas = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=0, changeId="*")
        assert [(a.start, a.start + a.length) for a in areas.changedArea] == extents(d["flat_local"], d["virtual_bytes"])
        ok(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        assert vm.snapshot is None and not os.path.exists(sim.local(pre + "-000001.vmdk"))
    finally:
        sim.stop()
    assert not os.path.exists(sim.envfile)
