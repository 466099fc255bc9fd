# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""esxi_iscsi_datastore's backend against a fake ESXi host whose stub records every vSphere method called and
answers as ESXi documents it: the steps and their journal records, every refusal (before any change where it can be,
with the changes made so far named where it cannot), CHAP on the send target with the fallback to the adapter and its
limits, never another disk, never a LUN formatted twice, check mode, and the undo: its order, UnmountVmfsVolume and
never RemoveDatastore, CHAP put back as recorded, the adapter's flag. Hosts that lack a call (the lab's simulator:
DetachScsiLun, DeleteScsiLunState) are covered too, and a host that cannot list a LUN's partitions
(RetrieveDiskPartitionInfo faults, or answers without them): never formatted blind."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import copy
import json

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, VsphereError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import (
    UNDO_HANDLERS,
    Journal,
    JournalError,
    UndoContext,
)

pytest.importorskip("pyVmomi")
from pyVmomi import vim, vmodl  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage as vst  # noqa: E402

ADDRESS, PORT = "10.0.0.5", 3260
PORTAL = "10.0.0.5:3260"
TARGET = "iqn.2026-01.io.dfir.vmcollect:case-1"
SECRET = "s3cr3t-chap-Secret"
USER = "dfir-case-1"
MIB = 1 << 20
IQN = "iqn.1998-01.com.vmware:esx1-0a1b2c3d"
HBA_KEY = "key-vim.host.InternetScsiHba-vmhba64"


def lun(n, size=64 * MIB, serial=None, target=TARGET, portal=PORTAL):
    return {"canonical": "naa.6000000000000000000000000000000%d" % n, "size": size,
            "serial": serial or "SER%d" % n, "uuid": "0200%02d0000600000000000000000000000000000%d" % (n, n),
            "target": target, "portal": portal}


class Host(object):
    """What the fake ESXi host holds; ``calls`` records every method called, in order."""

    def __init__(self, luns=None, target_secret=SECRET, **caps):
        self.sw_enabled = False
        self.hba = False
        self.adapter_auth = None  # None: CHAP off; else dict(name, secret, level)
        self.send_targets = []  # dict(address, port, auth): auth None = inherited
        self.statics = []
        self.disks = []  # visible after a rescan
        self.detached = set()
        self.volumes = {}  # uuid -> dict(name, canonical, mounted, vms)
        self.partitions = {}
        self.luns = luns if luns is not None else [lun(1)]
        self.target_secret = target_secret
        self.caps = dict(inline_auth=True, target_chap=True, detach=True, delete_state=True, partition_info=True,
                         statics_stay=False)
        self.caps.update(caps)
        self.calls = []
        self.args = []

    # -- the host's behaviour -------------------------------------------------------------------------------
    def effective_auth(self, st):
        return st["auth"] if st["auth"] is not None else self.adapter_auth

    def rescan(self):
        found, statics = [], []
        for st in self.send_targets:
            portal = vst.norm_portal(vst.portal_text(st["address"], st["port"]))
            luns = [x for x in self.luns if x["portal"] == portal]
            for target in sorted(set(x["target"] for x in luns)):
                statics.append({"address": st["address"], "port": st["port"], "iqn": target, "parent": portal})
            auth = self.effective_auth(st)
            if auth and auth["secret"] == self.target_secret:
                found.extend(luns)
        # a LUN holding a mounted volume stays
        for d in self.disks:
            if d not in found and any(v["canonical"] == d["canonical"] and v["mounted"] for v in self.volumes.values()):
                found.append(d)
        self.disks = found
        # a host may keep the static targets of a removed send target (ESXi's behaviour here is not documented)
        kept = [s for s in self.statics if self.caps["statics_stay"] and s not in statics]
        self.statics = statics + kept

    def invoke(self, name, a):
        self.calls.append(name)
        self.args.append((name, a))
        handler = getattr(self, "do_" + name, None)
        if handler is None:
            raise vmodl.fault.MethodNotFound(msg="no method %s" % name)
        return handler(a)

    def do_UpdateSoftwareInternetScsiEnabled(self, a):  # noqa: N802 pylint: disable=invalid-name
        self.sw_enabled = a["enabled"]
        self.hba = self.hba or a["enabled"]

    def do_AddInternetScsiSendTargets(self, a):  # noqa: N802 pylint: disable=invalid-name
        for t in a["targets"]:
            auth = None
            p = t.authenticationProperties
            if p is not None and self.caps["inline_auth"] and p.chapAuthEnabled:
                auth = {"name": p.chapName, "secret": p.chapSecret, "level": p.chapAuthenticationType}
            self.send_targets.append({"address": t.address, "port": t.port or 3260, "auth": auth})

    def do_RemoveInternetScsiSendTargets(self, a):  # noqa: N802 pylint: disable=invalid-name
        for t in a["targets"]:
            self.send_targets = [s for s in self.send_targets if (s["address"], s["port"]) != (t.address, t.port)]
            if not self.caps["statics_stay"]:
                portal = vst.norm_portal(vst.portal_text(t.address, t.port))
                self.statics = [s for s in self.statics if s["parent"] != portal]

    def do_RemoveInternetScsiStaticTargets(self, a):  # noqa: N802 pylint: disable=invalid-name
        names = set(t.iScsiName for t in a["targets"])
        self.statics = [s for s in self.statics if s["iqn"] not in names]

    def do_UpdateInternetScsiAuthenticationProperties(self, a):  # noqa: N802 pylint: disable=invalid-name
        p = a["authenticationProperties"]
        if p.chapAuthEnabled:
            new = {"name": p.chapName, "secret": p.chapSecret, "level": p.chapAuthenticationType}
        else:
            new = None
        if a.get("targetSet") is not None:
            if not self.caps["target_chap"]:
                raise vmodl.fault.NotSupported(msg="CHAP per target")
            for t in a["targetSet"].sendTargets:
                st = [s for s in self.send_targets if (s["address"], s["port"]) == (t.address, t.port)][0]
                if p.chapInherited:
                    st["auth"] = None
                else:
                    st["auth"] = new if new else {"name": None, "secret": None, "level": vst.PROHIBITED}
        else:
            if new and not new["secret"] and self.adapter_auth and self.adapter_auth["name"] == new["name"]:
                new["secret"] = self.adapter_auth["secret"]
            self.adapter_auth = new

    def do_RescanHba(self, a):  # noqa: N802 pylint: disable=invalid-name
        self.rescan()

    def do_RetrieveDiskPartitionInfo(self, a):  # noqa: N802 pylint: disable=invalid-name
        answer = self.caps["partition_info"]
        if answer is False:
            raise vmodl.fault.MethodNotFound(msg="RetrieveDiskPartitionInfo")
        if callable(answer):
            return answer(a["devicePath"])
        out = []
        for path in a["devicePath"]:
            parts = [vim.host.DiskPartitionInfo.Partition(partition=n, type="vmfs", startSector=2048, endSector=9)
                     for n in self.partitions.get(path.rsplit("/", 1)[-1], [])]
            # a blank disk: partitionFormat "unknown" and no partitions
            out.append(vim.host.DiskPartitionInfo(deviceName=path, spec=vim.host.DiskPartitionInfo.Specification(
                partitionFormat="gpt" if parts else "unknown", partition=parts)))
        return out

    def do_QueryVmfsDatastoreCreateOptions(self, a):  # noqa: N802 pylint: disable=invalid-name
        d = [x for x in self.disks if "/vmfs/devices/disks/" + x["canonical"] == a["devicePath"]][0]
        part = vim.host.DiskPartitionInfo.Partition(partition=1, type="vmfs", startSector=2048,
                                                    endSector=d["size"] // 512 - 34)
        spec = vim.host.VmfsDatastoreCreateSpec(
            diskUuid=d["uuid"],
            partition=vim.host.DiskPartitionInfo.Specification(partitionFormat="gpt", partition=[part]),
            vmfs=vim.host.VmfsVolume.Specification(
                extent=vim.host.ScsiDisk.Partition(diskName=d["canonical"], partition=1), majorVersion=6))
        return [vim.host.VmfsDatastoreOption(info=vim.host.VmfsDatastoreOption.AllExtentInfo(), spec=spec)]

    def do_CreateVmfsDatastore(self, a):  # noqa: N802 pylint: disable=invalid-name
        spec = a["spec"]
        uuid = "6a000000-00000000-0000-00000000000%d" % (len(self.volumes) + 1)
        self.volumes[uuid] = {"name": spec.vmfs.volumeName, "canonical": spec.vmfs.extent.diskName, "mounted": True,
                              "vms": []}
        self.partitions[spec.vmfs.extent.diskName] = [1]
        return vim.Datastore(uuid, self.stub)

    def do_UnmountVmfsVolume(self, a):  # noqa: N802 pylint: disable=invalid-name
        v = self.volumes[a["vmfsUuid"]]
        if v["vms"]:
            raise vim.fault.ResourceInUse(msg="VMs")
        del self.volumes[a["vmfsUuid"]]  # as the lab: unmounted and forgotten; the partition stays on the LUN

    def do_RemoveDatastore(self, a):  # noqa: N802 pylint: disable=invalid-name
        raise AssertionError("RemoveDatastore destroys the evidence volume; it must never be called")

    def do_DetachScsiLun(self, a):  # noqa: N802 pylint: disable=invalid-name
        if not self.caps["detach"]:
            raise vmodl.fault.MethodNotFound(msg="DetachScsiLun")
        d = [x for x in self.disks if x["uuid"] == a["lunUuid"]][0]
        if any(v["canonical"] == d["canonical"] and v["mounted"] for v in self.volumes.values()):
            raise vim.fault.ResourceInUse(msg="mounted")
        self.detached.add(d["canonical"])

    def do_DeleteScsiLunState(self, a):  # noqa: N802 pylint: disable=invalid-name
        if not self.caps["delete_state"]:
            raise vmodl.fault.MethodNotFound(msg="DeleteScsiLunState")
        self.detached.discard(a["lunCanonicalName"])

    # -- what the API shows ------------------------------------------------------------------------------------
    @staticmethod
    def auth_props(auth, inherited=None):
        if auth is None or not auth.get("name"):
            return vim.host.InternetScsiHba.AuthenticationProperties(
                chapAuthEnabled=False, chapAuthenticationType=vst.PROHIBITED, chapInherited=inherited)
        return vim.host.InternetScsiHba.AuthenticationProperties(
            chapAuthEnabled=True, chapName=auth["name"], chapAuthenticationType=auth["level"], chapInherited=inherited)

    def device_info(self):
        adapters, disks, lus = [], [], []
        if self.hba:
            adapters.append(vim.host.InternetScsiHba(
                device="vmhba64", key=HBA_KEY, model="iSCSI Software Adapter", driver="iscsi_vmk", isSoftwareBased=True,
                iScsiName=IQN, authenticationProperties=self.auth_props(self.adapter_auth),
                configuredSendTarget=[vim.host.InternetScsiHba.SendTarget(
                    address=s["address"], port=s["port"],
                    authenticationProperties=self.auth_props(s["auth"], s["auth"] is None)
                    if s["auth"] is None else self.auth_props(s["auth"] if s["auth"]["name"] else None, False))
                    for s in self.send_targets],
                configuredStaticTarget=[vim.host.InternetScsiHba.StaticTarget(
                    address=s["address"], port=s["port"], iScsiName=s["iqn"], parent=s["parent"],
                    discoveryMethod="sendTargetMethod", authenticationProperties=self.auth_props(None, True))
                    for s in self.statics]))
        adapters.append(vim.host.BlockHba(device="vmhba0", key="key-vim.host.BlockHba-vmhba0", model="PVSCSI"))
        local = {"canonical": "mpx.vmhba0:C0:T0:L0", "size": 16 << 30, "serial": "unavailable", "uuid": "local0",
                 "target": None, "portal": None}
        for d in self.disks + [local]:
            key = "key-vim.host.ScsiDisk-" + d["uuid"]
            disks.append(vim.host.ScsiDisk(
                canonicalName=d["canonical"], uuid=d["uuid"], key=key, devicePath="/vmfs/devices/disks/" + d["canonical"],
                serialNumber=d["serial"], vendor="IET     ", model="VIRTUAL-DISK", displayName=d["canonical"],
                operationalState=["off"] if d["canonical"] in self.detached else ["ok"],
                capacity=vim.host.DiskDimensions.Lba(block=d["size"] // 512, blockSize=512)))
            if d["target"]:
                lus.append(vim.host.MultipathInfo.LogicalUnit(key="lu-" + d["uuid"], id=d["uuid"], lun=key, path=[
                    vim.host.MultipathInfo.Path(key="p-" + d["uuid"], name="vmhba64:C0:T0:L1", pathState="active",
                                                adapter=HBA_KEY, transport=vim.host.InternetScsiTargetTransport(
                                                    iScsiName=d["target"], address=[d["portal"]]))]))
        return vim.host.StorageDeviceInfo(hostBusAdapter=adapters, scsiLun=disks,
                                          multipathInfo=vim.host.MultipathInfo(lun=lus),
                                          softwareInternetScsiEnabled=self.sw_enabled)

    def fs_info(self):
        mounts = []
        for uuid, v in sorted(self.volumes.items()):
            extent = [vim.host.ScsiDisk.Partition(diskName=v["canonical"], partition=1)]
            mounts.append(vim.host.FileSystemMountInfo(
                mountInfo=vim.host.MountInfo(path="/vmfs/volumes/" + uuid, mounted=v["mounted"]),
                volume=vim.host.VmfsVolume(name=v["name"], uuid=uuid, type="VMFS", version="6.82", extent=extent)))
        return vim.host.FileSystemVolumeInfo(mountInfo=mounts)

    def datastore_props(self, uuid):
        v = self.volumes[uuid]
        vol = vim.host.VmfsVolume(name=v["name"], uuid=uuid, version="6.82",
                                  extent=[vim.host.ScsiDisk.Partition(diskName=v["canonical"], partition=1)])
        return {"name": v["name"],
                "summary": vim.Datastore.Summary(name=v["name"], url="ds:///vmfs/volumes/%s/" % uuid, capacity=60 * MIB,
                                                 freeSpace=59 * MIB, type="VMFS", accessible=True),
                "info": vim.host.VmfsDatastoreInfo(name=v["name"], vmfs=vol),
                "host": [vim.Datastore.HostMount(key=vim.HostSystem("ha-host", self.stub),
                                                 mountInfo=vim.host.MountInfo(mounted=v["mounted"]))],
                "vm": [vim.VirtualMachine(x, self.stub) for x in v["vms"]]}

    def state(self):
        """Everything teardown must put back (the adapter itself stays, as on ESXi)."""
        return copy.deepcopy({"sw": self.sw_enabled, "adapter_auth": self.adapter_auth, "send": self.send_targets,
                              "statics": self.statics, "disks": [d["canonical"] for d in self.disks],
                              "detached": sorted(self.detached), "volumes": sorted(v["name"] for v in
                                                                                   self.volumes.values())})


class Stub(object):
    def __init__(self, host):
        self.host = host
        host.stub = self

    def InvokeMethod(self, mo, info, args):  # noqa: N802 pylint: disable=invalid-name
        return self.host.invoke(info.wsdlName, dict(zip([p.name for p in info.params], args)))


class FakeClient(object):
    """What storage.py uses of a VsphereClient."""

    where = "esxi1"
    datacenter = None
    timeout = 60

    def __init__(self, host, api_type="HostAgent", hosts=("esx1.example.org",)):
        self.fake = host
        self.si = type("Si", (), {})()
        self.si._stub = Stub(host)  # pylint: disable=protected-access
        self.api_type = api_type
        self.hosts = hosts
        self.content = None

    @property
    def stub(self):
        return self.si._stub  # pylint: disable=protected-access

    def about(self):
        return {"api_type": self.api_type}

    def secrets(self):
        return ("vsphere-password",)

    def tls_record(self):
        return {"verified": True, "how": "thumbprint", "thumbprint_sha256": "AA"}

    def _host_values(self, n):
        return {"name": self.hosts[n], "configManager.storageSystem": vim.host.StorageSystem("ss-%d" % n, self.stub),
                "configManager.datastoreSystem": vim.host.DatastoreSystem("dss-%d" % n, self.stub)}

    def retrieve(self, obj_type, paths, container=None):
        if obj_type is vim.HostSystem:
            return [(vim.HostSystem("ha-host" if n == 0 else "host-%d" % n, self.stub), self._host_values(n))
                    for n in range(len(self.hosts))]
        if obj_type is vim.Datastore:
            return [(vim.Datastore(uuid, self.stub), {"name": v["name"]}) for uuid, v in self.fake.volumes.items()] + \
                [(vim.Datastore("local-1", self.stub), {"name": "datastore1"})]
        raise AssertionError(obj_type)

    def properties(self, obj, paths):
        if isinstance(obj, vim.host.StorageSystem):
            return {"storageDeviceInfo": self.fake.device_info(), "fileSystemVolumeInfo": self.fake.fs_info()}
        if isinstance(obj, vim.HostSystem):
            return self._host_values(0 if obj._moId == "ha-host" else int(obj._moId.split("-")[1]))  # pylint: disable=protected-access
        if isinstance(obj, vim.Datastore):
            if obj._moId == "local-1":  # pylint: disable=protected-access
                return {"name": "datastore1", "summary": vim.Datastore.Summary(type="VMFS", name="datastore1"),
                        "info": vim.host.VmfsDatastoreInfo(vmfs=vim.host.VmfsVolume(
                            uuid="local", extent=[vim.host.ScsiDisk.Partition(diskName="mpx.vmhba0:C0:T0:L0")])),
                        "host": [], "vm": []}
            return self.fake.datastore_props(obj._moId)  # pylint: disable=protected-access
        raise AssertionError(obj)


@pytest.fixture
def journal(tmp_path):
    return Journal("case-1", str(tmp_path / "journal"), hostname="controller")


@pytest.fixture
def connect(monkeypatch):
    """The undo handlers log in with client_from_params(ctx.options): give them the fake's session."""
    clients = []

    def use(client):
        clients.append(client)

    @contextlib.contextmanager
    def fake_connect(options):
        assert options["hostname"] == "esxi1" and options["password"] == "vsphere-password"
        yield clients[-1]

    monkeypatch.setattr(vst, "client_from_params", fake_connect)
    return use


OPTIONS = {"hostname": "esxi1", "username": "root", "password": "vsphere-password"}


def present(journal, client, **kw):
    args = dict(address=ADDRESS, size_bytes=64 * MIB, datastore_name="dfir-case-1", chap_name=USER,
                chap_secret=SECRET, serial="SER1")
    args.update(kw)
    return vst.present(journal, client, **args)


def changes(journal):
    return [(r["action"], r["undo"].get("scope")) for r in sorted(journal.pending(), key=lambda r: r["seq"])]


def journal_text(journal):
    with open(journal.path) as f:
        return f.read()


# -- inputs and small rules ------------------------------------------------------------------------------------

def test_inputs_are_refused_all_at_once_before_anything():
    with pytest.raises(InvalidInputError) as err:
        vst.check_inputs("10.0.0.5/24", 0, -1, "a/b" * 20, "", "", serial=" ", canonical_name="sda")
    msg = err.value.message
    for part in ("target_address '10.0.0.5/24' is not", "target_port 0 is not a TCP port", "size_bytes must be",
                 "datastore_name 'a/b", "chap_name must be", "chap_secret must be", "serial is empty",
                 "canonical_name 'sda' is not"):
        assert part in msg
    assert msg.startswith("The LUN cannot be attached as asked: target_address") and msg.endswith("Nothing was changed.")
    vst.check_inputs(ADDRESS, PORT, 64 * MIB, "dfir-case-1", USER, SECRET, "SER1", "naa.600")
    vst.check_inputs("fe80::1", PORT, 1, "x" * 42, USER, SECRET)


def test_portals_sizes_and_the_wanted_disk_in_words():
    assert vst.norm_portal("10.0.0.5") == vst.norm_portal("10.0.0.5:3260") == PORTAL
    assert vst.norm_portal("[FE80::1]:3261") == "[fe80::1]:3261" and vst.norm_portal("fe80::1") == "[fe80::1]:3260"
    assert vst.portal_text("fe80::1", 3260) == "[fe80::1]:3260"
    assert vst.size_text(64 * MIB) == "67108864 bytes (64 MiB)" and vst.size_text(1000) == "1000 bytes"
    assert vst.wanted_text(MIB, "S", "naa.6") == "of 1048576 bytes (1 MiB) with serial 'S' and canonical name naa.6"
    assert vst.chap_level(True) == "chapRequired" and vst.chap_level(False) == "chapPreferred"


def test_the_host_is_the_named_one_and_a_vcenter_needs_the_name():
    host = Host()
    assert vst.find_host(FakeClient(host)).label == "host esx1.example.org (ha-host)"
    assert vst.find_host(FakeClient(host), "ESX1.example.org.").moref == "ha-host"
    with pytest.raises(VsphereError, match=r"has no host named 'esx2'; it has 'esx1.example.org'. Nothing was changed"):
        vst.find_host(FakeClient(host), "esx2")
    vc = FakeClient(host, api_type="VirtualCenter", hosts=("esx1", "esx2"))
    with pytest.raises(VsphereError, match=r"is a vCenter with 2 host\(s\) \('esx1', 'esx2'\): give esxi_hostname"):
        vst.find_host(vc)
    assert vst.find_host(vc, "esx2").moref == "host-1"


# -- present ---------------------------------------------------------------------------------------------------

def test_present_makes_each_step_journaled_before_it_and_returns_what_it_made(journal):
    host = Host()
    before = host.state()
    r = present(journal, FakeClient(host))
    assert host.calls == ["UpdateSoftwareInternetScsiEnabled", "AddInternetScsiSendTargets", "RescanHba",
                          "RetrieveDiskPartitionInfo", "QueryVmfsDatastoreCreateOptions", "CreateVmfsDatastore"]
    # the CHAP went with the new send target: the adapter's own CHAP is untouched
    added = host.args[1][1]["targets"][0]
    assert added.authenticationProperties.chapName == USER and added.authenticationProperties.chapInherited is False
    assert host.adapter_auth is None and host.send_targets[0]["auth"]["secret"] == SECRET
    assert changes(journal) == [("vsphere.iscsi_adapter", None), ("vsphere.iscsi_send_target", None),
                                ("vsphere.vmfs_datastore", None)]
    recs = dict((x["action"], x) for x in journal.pending())
    assert recs["vsphere.vmfs_datastore"]["applied"] and recs["vsphere.vmfs_datastore"]["undo"]["lun"] == {
        "canonical_name": "naa.60000000000000000000000000000001", "uuid": lun(1)["uuid"],
        "device_path": "/vmfs/devices/disks/naa.60000000000000000000000000000001", "size_bytes": 64 * MIB,
        "serial": "SER1"}
    assert recs["vsphere.iscsi_adapter"]["undo"]["enabled_before"] is False
    assert SECRET not in journal_text(journal) and SECRET not in json.dumps(r)
    assert r["changed"] and r["adapter_enabled_by_us"] and r["adapter"]["iqn"] == IQN
    assert r["datastore"]["name"] == "dfir-case-1" and r["datastore"]["vmfs_uuid"] == r["datastore"]["moref"]
    assert r["lun"]["canonical_name"] == "naa.60000000000000000000000000000001" and r["lun"]["serial"] == "SER1"
    assert r["chap"] == {"scope": "send_target", "name": USER, "level": "chapRequired"}
    assert [c.split(" ")[0] for c in r["changes"]] == ["enabled", "added", "rescanned", "made"]
    assert "with CHAP (name %s, chapRequired) on the target" % USER in r["changes"][1]
    assert "ESXi removes the adapter vmhba64 (IQN %s) only at the host's next reboot" % IQN in r["note"]

    # the rerun finds the datastore on the LUN: nothing is called that changes anything
    host.calls = []
    again = present(journal, FakeClient(host))
    assert again["changed"] is False and again["changes"] == [] and host.calls == []
    assert again["datastore"]["moref"] == r["datastore"]["moref"] and again["adapter_enabled_by_us"]
    assert len(journal.pending()) == 3
    assert before != host.state()


def test_teardown_releases_in_order_never_removes_the_datastore_and_restores_the_host(journal, connect):
    host = Host()
    before = host.state()
    present(journal, FakeClient(host))
    host.calls = []
    connect(FakeClient(host))
    result = journal.teardown(options=OPTIONS)
    assert host.calls == ["UnmountVmfsVolume", "DetachScsiLun", "RemoveInternetScsiSendTargets", "RescanHba",
                          "DeleteScsiLunState", "UpdateSoftwareInternetScsiEnabled"]
    assert "RemoveDatastore" not in host.calls and host.partitions  # the volume stays on the LUN
    said = [u["result"] for u in result["undone"]]
    assert said[0].startswith("unmounted the VMFS datastore 'dfir-case-1' on the LUN naa.60000000000000000000000000000001 "
                              "of host esx1.example.org (ha-host) (VMFS 6a000000-")
    assert "never RemoveDatastore" in said[0] and "detached the LUN (DetachScsiLun" in said[0]
    assert said[1].startswith("removed the send target 10.0.0.5:3260 from the adapter vmhba64")
    assert "the LUN(s) naa.60000000000000000000000000000001 are gone" in said[1]
    assert "forgot the detached state of naa.60000000000000000000000000000001 (DeleteScsiLunState)" in said[1]
    assert said[2].startswith("turned software iSCSI on host esx1.example.org (ha-host) off again, as found; ESXi "
                              "removes the adapter vmhba64 (IQN %s) only at the host's next reboot" % IQN)
    assert host.state() == before and host.hba  # the adapter stays until a reboot
    assert result["removed"]


def test_check_mode_reads_only_and_says_the_plan(journal, connect):
    host = Host()
    r = present(journal, FakeClient(host), check_mode=True)
    assert host.calls == [] and not journal.exists()
    assert r["changed"] and r["lun"] is None and r["datastore"] is None and r["adapter"] is None
    assert [p.split(" ")[0] for p in r["plan"]] == ["enable", "add", "rescan", "use", "make"]
    assert r["note"].startswith("Check mode: nothing was changed. Planned: enable software iSCSI on host")
    # and the teardown's check mode, once attached, calls nothing either
    present(journal, FakeClient(host))
    host.calls = []
    connect(FakeClient(host))
    plan = journal.teardown(check_mode=True, options=OPTIONS)
    assert host.calls == [] and len(journal.pending()) == 3
    assert [u["result"].split(" ")[0:2] for u in plan["undone"]] == [
        ["would", "unmount"], ["would", "remove"], ["would", "turn"]]
    assert "now it lists: send target 10.0.0.5:3260, static target %s at 10.0.0.5:3260" % TARGET in \
        plan["undone"][2]["result"]


def test_software_iscsi_on_already_is_left_as_found(journal, connect):
    host = Host()
    host.sw_enabled = host.hba = True
    r = present(journal, FakeClient(host))
    assert "UpdateSoftwareInternetScsiEnabled" not in host.calls and not r["adapter_enabled_by_us"]
    assert "Software iSCSI was on before; it stays as found." in r["note"]
    connect(FakeClient(host))
    journal.teardown(options=OPTIONS)
    assert host.sw_enabled


def test_state_adapter_only_enables_and_gives_the_iqn(journal):
    host = Host()
    r = vst.adapter(journal, FakeClient(host))
    assert host.calls == ["UpdateSoftwareInternetScsiEnabled"] and r["adapter"]["iqn"] == IQN and r["changed"]
    assert changes(journal) == [("vsphere.iscsi_adapter", None)]
    again = vst.adapter(journal, FakeClient(host))
    assert again["changed"] is False and again["adapter_enabled_by_us"] and len(journal.pending()) == 1
    # present afterwards adds no second adapter record
    present(journal, FakeClient(host))
    assert [a for a, _s in changes(journal)].count("vsphere.iscsi_adapter") == 1


def test_a_host_that_ignores_chap_on_a_new_target_gets_it_set_on_the_target(journal, connect):
    host = Host(inline_auth=False)  # as the lab: the field is ignored
    before = host.state()
    r = present(journal, FakeClient(host))
    assert host.calls[:3] == ["UpdateSoftwareInternetScsiEnabled", "AddInternetScsiSendTargets",
                              "UpdateInternetScsiAuthenticationProperties"]
    assert host.args[2][1]["targetSet"].sendTargets[0].address == ADDRESS and host.adapter_auth is None
    assert r["chap"]["scope"] == "send_target" and r["changes"][2].startswith("set CHAP (name %s, chapRequired) on "
                                                                              "the send target" % USER)
    # the target is this case's: its removal takes its CHAP with it, no record of its own
    assert [a for a, _s in changes(journal)] == ["vsphere.iscsi_adapter", "vsphere.iscsi_send_target",
                                                 "vsphere.vmfs_datastore"]
    connect(FakeClient(host))
    journal.teardown(options=OPTIONS)
    assert host.state() == before


def test_chap_falls_back_to_the_adapter_only_when_it_is_off_and_unused_and_is_put_back(journal, connect):
    host = Host(inline_auth=False, target_chap=False)
    before = host.state()
    r = present(journal, FakeClient(host))
    assert r["chap"] == {"scope": "adapter", "name": USER, "level": "chapRequired"}
    assert host.adapter_auth == {"name": USER, "secret": SECRET, "level": "chapRequired"}
    assert "the host refused it on the send target (NotSupported: CHAP per target)" in r["changes"][2]
    chap = [x for x in journal.pending() if x["action"] == "vsphere.iscsi_chap"][0]
    assert chap["undo"]["scope"] == "adapter" and chap["undo"]["before"]["chap_auth_enabled"] is False
    assert chap["undo"]["before"]["secret_set"] is False and SECRET not in journal_text(journal)
    connect(FakeClient(host))
    result = journal.teardown(options=OPTIONS)
    said = dict((u["action"], u["result"]) for u in result["undone"])
    assert said["vsphere.iscsi_chap"].startswith("put CHAP of the adapter vmhba64 back from CHAP on (name %s, "
                                                 "chapRequired, a secret set) to CHAP off" % USER)
    assert "no secret was set before, so none is lost" in said["vsphere.iscsi_chap"]
    assert host.state() == before


@pytest.mark.parametrize("setup, says", [
    (lambda h: setattr(h, "adapter_auth", {"name": "prod", "secret": "x", "level": "chapRequired"}),
     "the adapter's own CHAP is on (name prod, chapRequired) and ESXi never returns a CHAP secret"),
    (lambda h: h.send_targets.append({"address": "10.9.9.9", "port": 3260, "auth": None}),
     "send target 10.9.9.9:3260 of the adapter use its CHAP and would be cut off"),
])
def test_the_fallback_to_the_adapter_is_refused_when_it_could_not_be_undone(journal, setup, says):
    host = Host(inline_auth=False, target_chap=False)
    host.sw_enabled = host.hba = True
    setup(host)
    adapter_auth = copy.deepcopy(host.adapter_auth)
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host))
    msg = err.value.message
    assert "refused CHAP on the send target 10.0.0.5:3260 (NotSupported: CHAP per target), and setting it on the " \
           "adapter vmhba64 instead is refused: " in msg and says in msg
    assert "The changes made so far (added the send target 10.0.0.5:3260 to the adapter vmhba64) stay in the case's " \
           "journal" in msg and err.value.details["changed"] is True
    assert host.adapter_auth == adapter_auth and "RescanHba" not in host.calls


def test_a_wrong_secret_finds_no_lun_says_why_and_keeps_the_journal(journal, connect):
    host = Host(target_secret="the-collector's")
    before = host.state()
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host))
    msg = err.value.message
    assert msg.startswith("No disk of 67108864 bytes (64 MiB) with serial 'SER1' is reached through 10.0.0.5:3260 on "
                          "the adapter vmhba64 of host esx1.example.org (ha-host) after the rescan: the target %s was "
                          "discovered through it but gave no disk: the collector refused the login (a wrong CHAP name "
                          "or secret, or the adapter's IQN %s is not admitted) or exports no LUN. No datastore was "
                          "made. The changes made so far (enabled software iSCSI" % (TARGET, IQN)), msg
    assert "run teardown for the case" in msg and SECRET not in msg
    assert "CreateVmfsDatastore" not in host.calls
    connect(FakeClient(host))
    journal.teardown(options=OPTIONS)
    assert host.state() == before


def test_a_portal_that_offers_nothing_is_said_so(journal):
    host = Host(luns=[lun(1, portal="10.0.0.6:3260")])
    with pytest.raises(VsphereError, match="the portal offered no iSCSI target to the adapter: the address or port is "
                                           "wrong, the storage link is down, or the collector's ACL does not admit"):
        present(journal, FakeClient(host))


def test_never_another_disk_several_are_listed_and_other_paths_never_used(journal):
    host = Host(luns=[lun(1), lun(2), lun(3, portal="10.0.0.7:3260", target=TARGET + "-other")])
    other_chap = {"name": "x", "secret": SECRET, "level": "chapRequired"}
    host.send_targets.append({"address": "10.0.0.7", "port": 3260, "auth": other_chap})
    host.sw_enabled = host.hba = True
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host), serial=None)
    msg = err.value.message
    assert msg.startswith("2 disks of 67108864 bytes (64 MiB) are reached through 10.0.0.5:3260 on the adapter vmhba64 "
                          "of host esx1.example.org (ha-host): naa.60000000000000000000000000000001 (67108864 bytes "
                          "(64 MiB), serial 'SER1'), naa.60000000000000000000000000000002")
    assert "Give serial (or canonical_name) to pick one; no disk was touched." in msg
    # LUN 3 has the serial asked for, but it is reached through another portal: it is never used
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host), serial="SER3")
    assert "disks of that size reached otherwise are never used: naa.60000000000000000000000000000003" in \
        err.value.message
    assert "CreateVmfsDatastore" not in host.calls
    r = present(journal, FakeClient(host), serial=None, canonical_name="NAA.60000000000000000000000000000002")
    assert r["lun"]["serial"] == "SER2"


def test_a_lun_with_partitions_or_a_datastore_is_never_formatted(journal):
    host = Host()
    host.partitions["naa.60000000000000000000000000000001"] = [1]
    with pytest.raises(VsphereError, match=r"The LUN naa.60000000000000000000000000000001 holds partition 1 \(vmfs, "
                                           r"sectors 2048-9\) already \(a VMFS of an earlier run\?\); it is never "
                                           r"formatted again"):
        present(journal, FakeClient(host))
    assert "QueryVmfsDatastoreCreateOptions" not in host.calls and "CreateVmfsDatastore" not in host.calls
    host = Host()
    present(Journal("case-2", journal.journal_dir, hostname="controller"), FakeClient(host), datastore_name="other")
    with pytest.raises(VsphereError, match=r"holds the VMFS datastore 'other' already \(not 'dfir-case-1'\)"):
        present(journal, FakeClient(host))


BLIND = ("so it is not known to be blank. It may hold the evidence of an earlier run (the VMFS volume of a released "
         "or killed case), and a LUN is never formatted without knowing that it is blank: no datastore was made and "
         "nothing was formatted. Look at it on the host (partedUtil getptbl "
         "/vmfs/devices/disks/naa.60000000000000000000000000000001), or give the collector a new LUN.")


@pytest.mark.parametrize("fault, said", [
    (None, "MethodNotFound: RetrieveDiskPartitionInfo"),  # the lab's simulator before it had the call
    (vmodl.fault.NotSupported(msg="not here"), "NotSupported: not here"),
    (vim.fault.NotFound(msg="no such disk"), "NotFound: no such disk"),
    (vim.fault.HostConfigFault(msg="cannot read it"), "HostConfigFault: cannot read it"),
    (vmodl.fault.SystemError(reason="I/O error"), "SystemError"),
])
def test_a_lun_whose_partitions_cannot_be_listed_is_never_formatted(journal, fault, said):
    def answer(paths):
        raise fault

    host = Host(partition_info=answer if fault is not None else False)
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host))
    msg = err.value.message
    assert msg.startswith("esxi1 cannot list the partitions of the LUN naa.60000000000000000000000000000001 "
                          "(RetrieveDiskPartitionInfo: %s" % said), msg
    assert ("), " + BLIND) in msg
    # the changes made so far are said, for teardown
    assert "The changes made so far (enabled software iSCSI" in msg and "run teardown for the case" in msg
    assert err.value.details["changed"] is True
    assert "QueryVmfsDatastoreCreateOptions" not in host.calls and "CreateVmfsDatastore" not in host.calls
    assert host.volumes == {} and host.partitions == {}
    assert [a for a, _s in changes(journal)] == ["vsphere.iscsi_adapter", "vsphere.iscsi_send_target"]


def _other_disk(paths):
    return [vim.host.DiskPartitionInfo(deviceName="/vmfs/devices/disks/naa.6999",
                                       spec=vim.host.DiskPartitionInfo.Specification(partitionFormat="unknown"))]


@pytest.mark.parametrize("answer, said", [
    (lambda paths: [], "it answered nothing"),
    (lambda paths: None, "it answered nothing"),
    (_other_disk, "it answered for /vmfs/devices/disks/naa.6999"),
    (lambda paths: [vim.host.DiskPartitionInfo(deviceName=paths[0])], "it answered for /vmfs/devices/disks/naa.6000"),
])
def test_an_answer_without_the_luns_partition_table_is_never_formatted(journal, answer, said):
    host = Host(partition_info=answer)
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host))
    msg = err.value.message
    assert msg.startswith("esxi1 answered RetrieveDiskPartitionInfo for the LUN naa.60000000000000000000000000000001 "
                          "without its partition table (%s" % said), msg
    assert BLIND in msg
    assert "QueryVmfsDatastoreCreateOptions" not in host.calls and "CreateVmfsDatastore" not in host.calls


def test_a_blank_lun_named_by_canonical_name_or_path_is_formatted(journal):
    def blank(paths):  # a host that names the disk by its canonical name
        return [vim.host.DiskPartitionInfo(deviceName=p.rsplit("/", 1)[-1], spec=vim.host.DiskPartitionInfo.Specification(
            partitionFormat="unknown", totalSectors=131072)) for p in paths]

    host = Host(partition_info=blank)
    r = present(journal, FakeClient(host))
    assert r["changed"] and r["datastore"]["name"] == "dfir-case-1" and "CreateVmfsDatastore" in host.calls
    assert "partitions" not in r["note"]


def test_a_datastore_of_that_name_elsewhere_is_refused_before_any_change(journal):
    host = Host()
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host), datastore_name="datastore1")
    assert err.value.message == (
        "A datastore named 'datastore1' exists (local-1, VMFS, on mpx.vmhba0:C0:T0:L0) and is not on a disk of "
        "67108864 bytes (64 MiB) with serial 'SER1' reached through 10.0.0.5:3260; choose another datastore_name. "
        "Nothing was changed.")
    assert host.calls == [] and not journal.exists()


def test_secrets_are_masked_in_any_failure(journal):
    host = Host()

    def echo(a):
        raise vim.fault.NotFound(msg="cannot use secret %s" % a["targets"][0].authenticationProperties.chapSecret)

    host.do_AddInternetScsiSendTargets = echo
    with pytest.raises(VsphereError) as err:
        present(journal, FakeClient(host))
    assert SECRET not in err.value.message and "********" in err.value.message


# -- undo --------------------------------------------------------------------------------------------------------

def test_the_datastore_is_not_unmounted_with_vms_on_it(journal, connect):
    host = Host()
    present(journal, FakeClient(host))
    list(host.volumes.values())[0]["vms"].append("vm-7")
    connect(FakeClient(host))
    with pytest.raises(JournalError, match=r"holds 1 registered VM\(s\) \(vm-7\); it is not unmounted with VMs on it"):
        journal.teardown(options=OPTIONS)
    assert "UnmountVmfsVolume" not in host.calls[-3:] and len(journal.pending()) == 3


def test_a_host_without_detach_leaves_the_lun_to_its_send_target(journal, connect):
    host = Host(detach=False)
    before = host.state()
    present(journal, FakeClient(host))
    connect(FakeClient(host))
    result = journal.teardown(options=OPTIONS)
    said = [u["result"] for u in result["undone"]]
    assert "the host cannot detach the LUN (DetachScsiLun: MethodNotFound); it goes with its send target" in said[0]
    assert "DeleteScsiLunState" not in host.calls and host.state() == before


def test_static_targets_the_host_keeps_are_removed(journal, connect):
    host = Host(statics_stay=True)
    before = host.state()
    present(journal, FakeClient(host))
    connect(FakeClient(host))
    result = journal.teardown(options=OPTIONS)
    assert "removed the static target(s) it had discovered (%s)" % TARGET in result["undone"][1]["result"]
    assert host.state() == before


def test_a_change_recorded_but_never_made_is_said_and_skipped(journal, connect):
    host = Host()
    host.sw_enabled = host.hba = True
    client = FakeClient(host)
    h = vst.find_host(client)
    base = vst._Run(journal, client, False).base_undo(h)  # pylint: disable=protected-access
    journal.record_change(vst.ACTION_SEND_TARGET, dict(base, device="vmhba64", adapter_iqn=IQN, address=ADDRESS,
                                                       port=PORT, chap_name=USER, chap_level="chapRequired"),
                          "send target (killed before it was added)", module=vst.MODULE)
    journal.record_change(vst.ACTION_DATASTORE, dict(base, datastore_name="dfir-case-1", portal=PORTAL, lun={
        "canonical_name": "naa.60000000000000000000000000000001", "uuid": "u", "device_path": "/x", "size_bytes": 1,
        "serial": "SER1"}), "datastore (killed before it was made)", module=vst.MODULE)
    connect(client)
    said = [u["result"] for u in journal.teardown(options=OPTIONS)["undone"]]
    assert said[0].startswith("the VMFS datastore 'dfir-case-1' on the LUN naa.60000000000000000000000000000001 of host "
                              "esx1.example.org (ha-host) was not mounted (released already, or never made); the LUN is "
                              "gone from the host already")
    assert said[1].startswith("the send target 10.0.0.5:3260 was removed already; rescanned vmhba64")
    assert host.calls == ["RescanHba"]


def test_chap_put_back_when_a_secret_was_set_says_it_could_not_be_restored(connect):
    host = Host()
    host.sw_enabled = host.hba = True
    host.adapter_auth = {"name": USER, "secret": SECRET, "level": "chapRequired"}
    client = FakeClient(host)
    undo = dict(vst._Run(None, client, False).base_undo(vst.find_host(client)), device="vmhba64",  # pylint: disable=protected-access
                scope="adapter", before={"chap_auth_enabled": True, "chap_name": "prod", "chap_type": "chapPreferred",
                                         "chap_inherited": None, "secret_set": True})
    said = vst.restore_chap(client, undo)
    assert said.startswith("put CHAP of the adapter vmhba64 back from CHAP on (name %s, chapRequired, a secret set) to "
                           "CHAP on (name prod, chapPreferred, a secret set); ESXi never returns a CHAP secret, so the "
                           "secret set before could not be read and written back: set it again by hand" % USER)
    assert host.adapter_auth["name"] == "prod" and host.adapter_auth["level"] == "chapPreferred"


def test_the_adapter_stays_on_when_targets_not_ours_were_added_meanwhile(journal, connect):
    host = Host()
    present(journal, FakeClient(host))
    host.send_targets.append({"address": "10.9.9.9", "port": 3260, "auth": None})
    connect(FakeClient(host))
    said = [u["result"] for u in journal.teardown(options=OPTIONS)["undone"]]
    assert said[-1].startswith("left software iSCSI on host esx1.example.org (ha-host) enabled: targets that are not "
                               "this case's were added to the adapter vmhba64 meanwhile (send target 10.9.9.9:3260)")
    assert host.sw_enabled


def test_the_handlers_need_teardowns_connection():
    for action in vst.ACTIONS:
        with pytest.raises(VsphereError, match="give teardown its connection"):
            UNDO_HANDLERS[action]({"endpoint": "esxi1", "host_name": "esx1", "datastore_name": "d",
                                   "lun": {"canonical_name": "naa.6"}, "scope": "adapter", "device": "vmhba64",
                                   "address": ADDRESS, "port": PORT}, UndoContext())


def test_state_absent_undoes_this_modules_changes_for_the_host_and_marks_them(journal, connect):
    host = Host()
    before = host.state()
    present(journal, FakeClient(host))
    other = journal.record_change("file.created", {"path": "/nonexistent/x"}, "a file", module="pmemsave")
    connect(FakeClient(host))
    plan = vst.absent(journal, FakeClient(host), OPTIONS, check_mode=True)
    assert plan["changed"] and len(journal.pending()) == 4 and host.state() != before
    r = vst.absent(journal, FakeClient(host), OPTIONS, secrets=("vsphere-password",))
    assert [u["action"] for u in r["undone"]] == [
        "vsphere.vmfs_datastore", "vsphere.iscsi_send_target", "vsphere.iscsi_adapter"]
    assert host.state() == before
    assert [x["id"] for x in journal.pending()] == [other]  # another module's change stays for teardown
    again = vst.absent(journal, FakeClient(host), OPTIONS)
    assert again["changed"] is False and again["undone"] == [] and "holds nothing of this module" in again["note"]
