# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab simulator's storage extension (lab/vcsim/storage*.go, labstore.py): software iSCSI with
real logins and VMFS datastores on a real iSCSI LUN. See lab/vcsim/BEHAVIOUR-storage.md.

Self-contained, not the shared lab: two network namespaces of its own ("ESXi host" and
"collector", named after this process), a veth storage link 10.213.200.4/30 between them, a tgtd
of its own on a private control port in the collector namespace (set up through the collection's
TgtClient, so the CHAP secret is never in an argv), and vcsim started by vcsim.sh inside the ESXi
namespace on 10.213.200.10:443 (VCSIM_NETNS / VCSIM_LISTEN). The root namespace gets no 10.213
address (a lab/up.sh running meanwhile refuses those): pyVmomi reaches vcsim through a TCP
forwarder on 127.0.0.1 whose upstream sockets are opened inside the ESXi namespace (setns in a
short-lived thread). Skipped without root, Go + govmomi (or a built binary), tgt, libiscsi-bin,
qemu-storage-daemon or pyVmomi. Takes ~15-25 s once vcsim is built. The bed's generic parts (namespaces, link,
tgtd, forwarder, teardown and the readers of the LUN) are tests/integration/storage_bed.py, shared with
tests/integration/test_esxi_iscsi_datastore.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import http.client
import os
import re
import secrets
import signal
import ssl
import time

import pytest

import storage_bed
from storage_bed import VMFS_GUID, attached, debugfs_cat, gpt
from vcsim_helpers import NEEDS_SIMULATOR, build

TAG = "vcst%d" % (os.getpid() % 100000)
NS_ESX, NS_COLL = TAG + "-esx", TAG + "-coll"
COLL_STOR, ESX_STOR, ESX_MGMT, NOWHERE = "10.213.200.5", "10.213.200.6", "10.213.200.10", "10.213.200.99"
TARGET_IQN = "iqn.2026-01.io.dfir.vmcollect.lab:%s" % TAG
CHAP_USER = "vcsim-lab"
LUN_BYTES = 64 << 20
SERIAL = "VCST%05d" % (os.getpid() % 100000)
SCSI_ID = "VCSTID%05d" % (os.getpid() % 100000)

pytestmark = [storage_bed.NEEDS_ROOT, NEEDS_SIMULATOR, storage_bed.NEEDS_TOOLS]


class Bed(storage_bed.StorageBed):
    """The storage bed with one LUN, vcsim and a pyVmomi session."""

    ns_esx, ns_coll, coll_stor, esx_stor, esx_mgmt = NS_ESX, NS_COLL, COLL_STOR, ESX_STOR, ESX_MGMT
    target_iqn, chap_user, port_base = TARGET_IQN, CHAP_USER, 21000

    def __init__(self, tmp):
        super(Bed, self).__init__(tmp)
        self.backing = os.path.join(tmp, "lun.img")
        self.luns = {1: (self.backing, LUN_BYTES, SERIAL, SCSI_ID)}
        self.esx = storage_bed.Simulator(os.path.join(tmp, TAG + ".json"), NS_ESX, (ESX_MGMT, 443))
        self.log, self.dsdir, self.state_dir = self.esx.log, self.esx.dsdir, self.esx.state_dir
        self.si = None
        self.bound = []

    @property
    def fwd(self):
        return self.esx.fwd

    def start_vcsim(self):
        self.esx.start()
        self.iqn = self.env["lab"]["storage"]["hosts"][0]["iscsi_name"]  # random per start, as ESXi's
        if self.iqn not in self.bound:
            self.tgt.bind_initiator_name(1, self.iqn)
            self.bound.append(self.iqn)
        self.connect()

    def connect(self):
        from pyVim.connect import SmartConnect
        from pyVmomi import vim
        self.ctx = ssl.create_default_context(cadata=self.env["cert_pem"])  # pinned; covers 127.0.0.1 too
        self.si = SmartConnect(host="127.0.0.1", port=self.fwd.port, user=self.env["username"],
                               pwd=self.env["password"], sslContext=self.ctx)
        content = self.si.RetrieveContent()
        self.content = content
        self.host = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True).view[0]
        self.dc = content.rootFolder.childEntity[0]
        self.ss = self.host.configManager.storageSystem
        self.dss = self.host.configManager.datastoreSystem

    def stop_vcsim(self):
        self.disconnect()
        return self.esx.stop()

    def disconnect(self):
        if self.si is not None:
            from pyVim.connect import Disconnect
            try:
                Disconnect(self.si)
            except Exception:  # pylint: disable=broad-except
                pass
            self.si = None

    # -- helpers for the tests --------------------------------------------------------------------
    def adapter(self):
        from pyVmomi import vim
        return [a for a in self.ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba)]

    def iscsi_disks(self):
        from pyVmomi import vim
        return [lun for lun in self.ss.storageDeviceInfo.scsiLun
                if isinstance(lun, vim.host.ScsiDisk) and lun.canonicalName.startswith(("naa.", "eui.", "t10."))]

    def chap(self, secret=None):
        from pyVmomi import vim
        auth = vim.host.InternetScsiHba.AuthenticationProperties(
            chapAuthEnabled=True, chapName=CHAP_USER, chapSecret=secret or self.secret,
            chapAuthenticationType="chapRequired")
        self.ss.UpdateInternetScsiAuthenticationProperties("vmhba64", auth)

    def send_target(self, address, add=True):
        from pyVmomi import vim
        st = [vim.host.InternetScsiHba.SendTarget(address=address, port=3260)]
        if add:
            self.ss.AddInternetScsiSendTargets("vmhba64", st)
        else:
            self.ss.RemoveInternetScsiSendTargets("vmhba64", st)

    def configure(self):
        """The good configuration: enabled, the host's own IQN, CHAP, the collector's portal; rescanned."""
        self.ss.UpdateSoftwareInternetScsiEnabled(True)
        self.ss.UpdateInternetScsiName("vmhba64", self.iqn)
        if not any(t.address == COLL_STOR for t in self.adapter()[0].configuredSendTarget or []):
            self.send_target(COLL_STOR)
        self.chap()
        self.ss.RescanHba("vmhba64")

    def create_datastore(self, name):
        disk = [d for d in self.dss.QueryAvailableDisksForVmfs() if d.serialNumber == SERIAL][0]
        spec = self.dss.QueryVmfsDatastoreCreateOptions(disk.devicePath)[0].spec
        spec.vmfs.volumeName = name
        return self.dss.CreateVmfsDatastore(spec)

    def wait_task(self, task, timeout=30):
        """Task state through the PropertyCollector (pyVmomi 8 cannot read task.info of FileManager tasks)."""
        from pyVmomi import vmodl
        pc = self.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(task), pathSet=["info.state"])])
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = pc.RetrieveContents([spec])[0].propSet[0].val
            if state in ("success", "error"):
                return state
            time.sleep(0.1)
        raise AssertionError("task %s did not finish" % task)

    def folder_request(self, method, path, body=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.fwd.port, context=self.ctx, timeout=30)
        conn.request(method, "/folder/%s?dcPath=%s&dsName=%s" % (path, self.dc.name, self.dsname), body=body,
                     headers={"Cookie": self.si._stub.cookie})  # pylint: disable=protected-access
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    pytest.importorskip("pyVmomi")
    build()
    b = Bed(str(tmp_path_factory.mktemp("vcsim-storage")))
    with b.running():
        yield b
    b.check_gone()


def test_software_iscsi_rescan_finds_the_lun_with_chap(bed):
    t0 = time.time()
    assert bed.adapter() == [] and not bed.ss.storageDeviceInfo.softwareInternetScsiEnabled
    bed.ss.UpdateSoftwareInternetScsiEnabled(True)
    hba = bed.adapter()[0]
    assert hba.device == "vmhba64" and hba.isSoftwareBased and hba.iScsiName == bed.iqn
    assert re.match(r"^iqn\.1998-01\.com\.vmware:[a-z0-9-]+-[0-9a-f]{8}$", hba.iScsiName)
    assert bed.ss.storageDeviceInfo.softwareInternetScsiEnabled
    assert bed.host.config.storageDevice.softwareInternetScsiEnabled  # the same data on the host

    bed.configure()
    hba = bed.adapter()[0]
    assert [(t.address, t.port) for t in hba.configuredSendTarget] == [(COLL_STOR, 3260)]
    assert hba.authenticationProperties.chapAuthEnabled and hba.authenticationProperties.chapName == CHAP_USER
    assert not hba.authenticationProperties.chapSecret  # never returned, as on ESXi
    assert [(s.iScsiName, s.address, s.discoveryMethod, s.parent) for s in hba.configuredStaticTarget] == \
        [(TARGET_IQN, COLL_STOR, "sendTargetMethod", "%s:3260" % COLL_STOR)]
    disks = bed.iscsi_disks()
    assert len(disks) == 1, [d.canonicalName for d in disks]
    d = disks[0]
    assert d.capacity.block * d.capacity.blockSize == LUN_BYTES  # READ CAPACITY of the real LUN
    assert d.serialNumber == SERIAL and d.vendor.strip() == "IET" and d.model.strip() == "VIRTUAL-DISK"
    assert re.match(r"^naa\.6[0-9a-f]{31}$", d.canonicalName), d.canonicalName  # tgt's NAA from VPD page 0x83
    assert d.devicePath == "/vmfs/devices/disks/" + d.canonicalName and not d.localDisk
    info = bed.ss.storageDeviceInfo
    lu = [m for m in info.multipathInfo.lun if m.lun == d.key][0]
    assert [p.name for p in lu.path] == ["vmhba64:C0:T0:L1"] and lu.path[0].pathState == "active"
    assert lu.path[0].transport.iScsiName == TARGET_IQN
    topo = [a for a in info.scsiTopology.adapter if a.adapter == hba.key][0]
    assert topo.target[0].lun[0].scsiLun == d.key
    # a second rescan finds the same device under the same name
    bed.ss.RescanAllHba()
    assert [x.canonicalName for x in bed.iscsi_disks()] == [d.canonicalName]
    # disabling takes effect at the next reboot on ESXi: the flag flips, the adapter stays
    bed.ss.UpdateSoftwareInternetScsiEnabled(False)
    assert not bed.ss.storageDeviceInfo.softwareInternetScsiEnabled and bed.adapter()
    bed.ss.UpdateSoftwareInternetScsiEnabled(True)
    assert time.time() - t0 < 20


def test_wrong_secret_iqn_or_address_gives_no_lun(bed):
    bed.configure()
    assert len(bed.iscsi_disks()) == 1
    # a wrong CHAP secret: the target is discovered, the login fails, no LUN; the rescan succeeds
    bed.chap("wrong-" + secrets.token_hex(5))
    bed.ss.RescanHba("vmhba64")
    assert bed.iscsi_disks() == []
    assert [s.iScsiName for s in bed.adapter()[0].configuredStaticTarget] == [TARGET_IQN]
    assert re.search(r"target %s at .* login failed: .*Authentication failure" % re.escape(TARGET_IQN), bed.log_text())
    bed.chap()
    bed.ss.RescanHba("vmhba64")
    assert len(bed.iscsi_disks()) == 1
    # a wrong initiator IQN: tgt's ACL hides the target from discovery
    bed.ss.UpdateInternetScsiName("vmhba64", "iqn.1998-01.com.vmware:not-this-host-0badc0de")
    bed.ss.RescanHba("vmhba64")
    assert bed.iscsi_disks() == [] and not bed.adapter()[0].configuredStaticTarget
    assert "offers no target to this initiator" in bed.log_text()
    bed.ss.UpdateInternetScsiName("vmhba64", bed.iqn)
    # a wrong address: discovery fails
    bed.send_target(COLL_STOR, add=False)
    bed.send_target(NOWHERE)
    bed.ss.RescanHba("vmhba64")
    assert bed.iscsi_disks() == []
    assert re.search(r"rescan %s:3260 as .*: SendTargets discovery failed" % re.escape(NOWHERE), bed.log_text())
    bed.send_target(NOWHERE, add=False)
    bed.configure()
    assert len(bed.iscsi_disks()) == 1


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_retrieve_disk_partition_info_reads_the_lun_read_only(bed):
    """RetrieveDiskPartitionInfo, straight through pyVmomi: the LUN's real partition table, read through a read-only
    export (or the export of the lab's datastore on it), as ESXi names it; tgt's backing file never changes."""
    from pyVmomi import vim
    t0 = time.time()
    bed.configure()
    disk = bed.iscsi_disks()[0]
    sectors = LUN_BYTES // 512
    blank = digest(bed.backing)

    def peeks():
        """What is left of the read-only exports: their files, their qemu-storage-daemon."""
        left = [n for n in os.listdir(bed.state_dir) if n.startswith("peek-")]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    argv = f.read()
            except OSError:
                continue
            if b"qemu-storage-daemon" in argv.split(b"\0")[0] and b"/peek-" in argv:
                left.append(pid)
        return left

    def info():
        started = time.time()
        (got,) = bed.ss.RetrieveDiskPartitionInfo([disk.devicePath])
        assert peeks() == []  # the read-only export is stopped again
        assert got.deviceName == disk.devicePath and got.spec.totalSectors == sectors
        assert (got.spec.chs.cylinder, got.spec.chs.head, got.spec.chs.sector) == (sectors // (255 * 63), 255, 63)
        assert (got.layout.total.block, got.layout.total.blockSize) == (sectors, 512)
        print("RetrieveDiskPartitionInfo: %.1f s" % (time.time() - started))
        return got

    # a blank LUN (all zeros): no partition table, no partitions
    got = info()
    assert got.spec.partitionFormat == "unknown" and not got.spec.partition and not got.layout.partition
    assert attached(bed.state_dir) == [] and digest(bed.backing) == blank
    assert "RetrieveDiskPartitionInfo %s: unknown, no partitions (read through a read-only export" % \
        disk.canonicalName in bed.log_text()
    # a path that is no disk of the host
    with pytest.raises(vim.fault.NotFound):
        bed.ss.RetrieveDiskPartitionInfo([disk.devicePath, "/vmfs/devices/disks/naa.60000000000000000000000000000bad"])

    # an MBR written behind the host's back (tgt reads its backing file anew): ESXi's names and logical partitions
    storage_bed.run("sfdisk", "-q", bed.backing, input="label: dos\nstart=2048, size=8192, type=83\n"
                    "start=10240, size=20480, type=5\nstart=12288, size=4096, type=82\n")
    mbr = digest(bed.backing)
    got = info()
    assert got.spec.partitionFormat == "mbr"
    assert [(p.partition, p.type, p.startSector, p.endSector, p.logical, p.guid) for p in got.spec.partition] == [
        (1, "linuxNative", 2048, 10239, False, None), (2, "extended", 10240, 30719, False, None),
        (5, "linuxSwap", 12288, 16383, True, None)]
    assert digest(bed.backing) == mbr

    # the lab's VMFS stand-in, mounted (read from its datastore's export), then unmounted (a read-only export)
    ds = bed.create_datastore("lab-parts-" + TAG)
    end = sectors - 34
    for state in ("mounted", "unmounted"):
        got = info()
        assert got.spec.partitionFormat == "gpt", state
        assert [(p.partition, p.type, p.guid, p.startSector, p.endSector, p.logical) for p in got.spec.partition] == \
            [(1, "vmfs", VMFS_GUID.replace("-", ""), 2048, end, False)], state
        assert [(r.partition, r.type, r.start.block, r.end.block) for r in got.layout.partition] == \
            [(1, "vmfs", 2048, end)], state
        if state == "mounted":
            assert "(read from the export of its datastore lab-parts-%s" % TAG in bed.log_text()
            bed.ss.UnmountVmfsVolume(ds.info.vmfs.uuid)
            vmfs = digest(bed.backing)
    assert attached(bed.state_dir) == [] and digest(bed.backing) == vmfs
    assert gpt(bed.backing) == [(2048, end - 2048 + 1, VMFS_GUID)]
    print("test: %.1f s" % (time.time() - t0))


def test_vmfs_datastore_on_the_lun(bed):
    from pyVmomi import vim
    bed.configure()
    disk = bed.iscsi_disks()[0]
    avail = bed.dss.QueryAvailableDisksForVmfs()
    assert [d.canonicalName for d in avail] == [disk.canonicalName]
    opt = bed.dss.QueryVmfsDatastoreCreateOptions(disk.devicePath)
    assert len(opt) == 1 and isinstance(opt[0].spec, vim.host.VmfsDatastoreCreateSpec)
    spec = opt[0].spec
    part = spec.partition.partition
    assert spec.partition.partitionFormat == "gpt" and len(part) == 1
    assert part[0].type == "vmfs" and part[0].guid == VMFS_GUID.replace("-", "")
    assert (part[0].startSector, part[0].endSector) == (2048, LUN_BYTES // 512 - 34)
    assert spec.vmfs.extent.diskName == disk.canonicalName and spec.vmfs.majorVersion == 6

    bed.dsname = "lab-vmfs-" + TAG
    ds = bed.create_datastore(bed.dsname)
    assert ds.name == bed.dsname and ds.summary.type == "VMFS" and ds.summary.accessible
    vmfs = ds.info.vmfs
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{12}$", vmfs.uuid)
    assert ds._moId == vmfs.uuid  # pylint: disable=protected-access  # ESXi: the VMFS UUID
    assert [(e.diskName, e.partition) for e in vmfs.extent] == [(disk.canonicalName, 1)]
    local = ds.info.url
    assert local.endswith("/vmfs/volumes/" + vmfs.uuid) and local.startswith(bed.dsdir)
    assert 0 < ds.summary.freeSpace <= ds.summary.capacity < LUN_BYTES
    assert bed.dsname in [x.name for x in bed.host.datastore] and bed.dsname in [x.name for x in bed.dc.datastore]
    assert [m.mountInfo.path for m in bed.ss.fileSystemVolumeInfo.mountInfo if m.volume.name == bed.dsname] == \
        ["/vmfs/volumes/" + vmfs.uuid]
    assert bed.dss.QueryAvailableDisksForVmfs() == []  # the LUN is in use now
    left = attached(bed.state_dir)
    assert any(x.startswith("qemu-storage-daemon") for x in left) and any(x.startswith("loop") for x in left)
    assert "mount " + local in left

    # files through the API land on the LUN
    fm = bed.content.fileManager
    fm.MakeDirectory("[%s] evidence" % bed.dsname, bed.dc, True)
    payload = ("written over /folder PUT %s\n" % TAG).encode() * 100
    assert bed.folder_request("PUT", "evidence/put.bin", payload)[0] == 200
    task = fm.CopyDatastoreFile_Task("[%s] evidence/put.bin" % bed.dsname, bed.dc,
                                     "[%s] evidence/copy.bin" % bed.dsname, bed.dc, True)
    assert bed.wait_task(task) == "success"
    assert bed.folder_request("GET", "evidence/copy.bin") == (200, payload)
    search = ds.browser.SearchDatastore_Task("[%s] evidence" % bed.dsname,
                                             vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*"]))
    assert bed.wait_task(search) == "success"
    with open(os.path.join(local, "evidence", "copy.bin"), "rb") as f:
        assert f.read() == payload  # the local mount is the same filesystem

    # UnmountVmfsVolume: unmounted, detached, unregistered; the volume stays on the LUN
    bed.ss.UnmountVmfsVolume(vmfs.uuid)
    assert bed.dsname not in [x.name for x in bed.host.datastore]
    assert bed.dsname not in [x.name for x in bed.dc.datastore]
    assert attached(bed.state_dir) == []
    assert [d.canonicalName for d in bed.dss.QueryAvailableDisksForVmfs()] == [disk.canonicalName]
    # read the files back from tgt's backing file: GPT with the VMFS type, ext4 in partition 1
    assert gpt(bed.backing) == [(2048, LUN_BYTES // 512 - 34 - 2048 + 1, VMFS_GUID)]
    for name in ("put.bin", "copy.bin"):
        assert debugfs_cat(bed.backing, 2048 * 512, "/evidence/" + name) == payload, name

    # RemoveDatastore removes the VMFS volume's partition, as on ESXi (the data blocks stay)
    ds = bed.create_datastore(bed.dsname)
    assert bed.folder_request("PUT", "again.bin", payload[:1000])[0] == 200
    bed.dss.RemoveDatastore(ds)
    assert bed.dsname not in [x.name for x in bed.host.datastore] and attached(bed.state_dir) == []
    assert gpt(bed.backing) == []
    assert debugfs_cat(bed.backing, 2048 * 512, "/again.bin") == payload[:1000]
    assert [d.canonicalName for d in bed.dss.QueryAvailableDisksForVmfs()] == [disk.canonicalName]


def test_removed_send_target_rescan_drops_the_lun_unless_a_datastore_uses_it(bed):
    bed.configure()
    ds = bed.create_datastore("lab-keep-" + TAG)
    bed.send_target(COLL_STOR, add=False)
    assert bed.adapter()[0].configuredStaticTarget == []
    bed.ss.RescanHba("vmhba64")
    assert len(bed.iscsi_disks()) == 1  # it holds a datastore: kept, its path dead
    lu = [m for m in bed.ss.storageDeviceInfo.multipathInfo.lun if m.lun == bed.iscsi_disks()[0].key][0]
    assert lu.path[0].pathState == "dead"
    bed.dss.RemoveDatastore(ds)
    bed.ss.RescanHba("vmhba64")
    assert bed.iscsi_disks() == []
    assert "is gone" in bed.log_text()


def test_vcsim_stop_and_kill_leave_nothing(bed):
    bed.configure()
    bed.create_datastore("lab-stop-" + TAG)
    pid = bed.env["pid"]
    r = bed.stop_vcsim()
    assert r.returncode == 0, r.stdout
    assert "detaching datastore lab-stop-" in bed.log_text()
    assert attached(bed.state_dir) == [] and not os.path.exists(bed.state_dir)
    assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"

    # kill -9: the datastore stays attached; vcsim.sh stop (and lab/down.sh) sweep it away
    bed.start_vcsim()
    bed.configure()
    bed.create_datastore("lab-kill-" + TAG)
    os.kill(bed.env["pid"], signal.SIGKILL)
    time.sleep(0.3)
    assert attached(bed.state_dir) != []
    r = bed.stop_vcsim()
    assert r.returncode == 0 and "sweeping" in r.stdout, r.stdout
    assert attached(bed.state_dir) == [] and not os.path.exists(bed.state_dir)
