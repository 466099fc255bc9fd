# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's ESXi shell (lab/esxi-shell: vim-cmd, vmkfstools, esxcli, partedUtil; a LAB EMULATOR) against a private
simulator of its own in free-ESXi mode (``-lab-vms -ram-image PATH -ds 2 -free-license``), its output read back with
the collection's readers (plugins/module_utils/_esxi_shell/parse.py) and checked against the simulator's API and
datastore folders. The API refuses every change to an ordinary session (RestrictedVersion, as a free ESXi host
does) while reads work; the shell's programs, logged in as the simulator's lab-internal user, change the host.

The programs run here directly (this interpreter, which has pyVmomi), found through a 0600 config file named by
VMCOLLECT_ESXI_SHELL_CONFIG, as the lab's sshd sessions find theirs. The RAM image is lab/vcsim/ram_image.sh's
(cached in $LAB_DIR/vcsim-ram).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse
from vcsim_helpers import NEEDS_SIMULATOR, ON_LINUX, ROOT, VCSIM, private_simulator, run

pytestmark = [NEEDS_SIMULATOR, ON_LINUX]
pytest.importorskip("pyVmomi")

SHELL = os.path.join(ROOT, "lab", "esxi-shell")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("esxi-shell")
    ram = run("bash", os.path.join(VCSIM, "ram_image.sh"), stderr=subprocess.PIPE, timeout=600)
    assert ram.returncode == 0, ram.stderr
    image = ram.stdout.strip().splitlines()[-1]
    with private_simulator(tmp, "esxi-shell", args="-lab-vms -ram-image %s -ds 2 -free-license" % image) as env:
        cfg = str(tmp / "esxi-shell.json")
        with open(cfg, "w") as f:
            json.dump({"env_file": str(tmp / ("esxi-shell-%d.json" % os.getpid()))}, f)
        os.chmod(cfg, 0o600)
        env["_config"] = cfg
        yield env


def shell(env, program, *args):
    """(rc, stdout, stderr) of a lab shell program run here."""
    p = subprocess.run([sys.executable, os.path.join(SHELL, program)] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                       env=dict(os.environ, VMCOLLECT_ESXI_SHELL_CONFIG=env["_config"]))
    return p.returncode, p.stdout, p.stderr


def api(env):
    from vcsim_helpers import connect
    return connect(env)


def host_of(client):
    from pyVmomi import vim
    return client.retrieve(vim.HostSystem, ["name"])[0][0]


def lab_vm(env, role):
    return next(v for v in env["lab"]["content"]["vms"] if v["role"] == role)


def vmid_of(env, name):
    rc, out, err = shell(env, "vim-cmd", "vmsvc/getallvms")
    assert rc == 0, err
    return next(v["vmid"] for v in parse.getallvms(out, [d["name"] for d in env["datastores"]]) if v["name"] == name)


def test_getallvms_lists_the_lab_vms(sim):
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/getallvms")
    assert rc == 0 and err == ""
    assert out.splitlines()[0].startswith("Vmid")
    vms = parse.getallvms(out, [d["name"] for d in sim["datastores"]])
    # without the datastore names too: the reader splits at the column gap
    assert [(v["name"], v["vmx"]) for v in parse.getallvms(out)] == [(v["name"], v["vmx"]) for v in vms]
    by_name = dict((v["name"], v) for v in vms)
    for v in sim["lab"]["content"]["vms"]:
        got = by_name[v["name"]]
        assert got["vmx"] == v["vmx_path"]
        assert got["vmid"] == int(v["moref"].split("-")[-1])
        assert got["version"].startswith("vmx-")
    assert "Win Srv [prod] 01" in by_name and "lab indep 03" in by_name
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/power.getstate", str(by_name["lab-off-02"]["vmid"]))
    assert rc == 0 and out.splitlines() == ["Retrieved runtime info", "Powered off"]


def test_unknown_vm_and_quiesce_print_fault_blocks(sim):
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", "9999")
    assert rc != 0
    assert parse.vim_fault(out) == ("vim.fault.NotFound", 'Unable to find a VM corresponding to "9999"')
    vmid = vmid_of(sim, lab_vm(sim, "powered-off")["name"])
    # the lab VMs have no VMware Tools: a quiesced snapshot of a running one is refused, nothing is made
    running = vmid_of(sim, lab_vm(sim, "cbt")["name"])
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.create", str(running), "q", "", "0", "1")
    assert rc != 0
    assert parse.vim_fault(out)[0] == "vim.fault.ToolsUnavailable"
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", str(running))
    assert rc == 0 and parse.snapshot_get(out) == []
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", str(vmid))
    assert rc == 0 and parse.snapshot_get(out) == []


def test_existing_snapshot_read(sim):
    v = lab_vm(sim, "with-snapshot")
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", str(vmid_of(sim, v["name"])))
    assert rc == 0
    snaps = parse.snapshot_get(out)
    assert [(s["name"], s["id"], s["depth"], s["state"]) for s in snaps] == [("lab-base", 1, 0, "powered on")]
    assert snaps[0]["created"].endswith("Z")


def test_memory_snapshot_clone_and_remove(sim):
    v = lab_vm(sim, "cbt")
    vmid = str(vmid_of(sim, v["name"]))
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/snapshot.create", vmid, "ev 1", "evidence [x]", "1", "0")
    assert rc == 0, out + err
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", vmid)
    snaps = parse.snapshot_get(out)
    assert [(s["name"], s["description"], s["state"]) for s in snaps] == [("ev 1", "evidence [x]", "powered on")]
    folder = v["dir_local"]
    assert os.path.getsize(os.path.join(folder, "%s-Snapshot%d.vmem" % (v["name"], snaps[0]["id"]))) == 256 << 20
    assert os.path.exists(os.path.join(folder, "%s-Snapshot%d.vmsn" % (v["name"], snaps[0]["id"])))
    with api(sim) as c:
        tree = [s for s in c.find_vm(v["name"]).snapshot.rootSnapshotList]
        assert [(t.name, t.id) for t in tree] == [("ev 1", snaps[0]["id"])]

    # the frozen base, cloned thin onto the second datastore
    disk = v["disks"][0]
    base = "/vmfs/volumes/LocalDS_0/%s/%s.vmdk" % (v["name"], v["name"])
    dst = "/vmfs/volumes/LocalDS_1/case 1/%s.vmdk" % v["name"]
    rc, out, err = shell(sim, "vmkfstools", "-i", base, "-d", "thin", dst)
    clone = parse.vmkfstools_clone(out, rc)
    assert clone["done"], out + err
    assert clone["format"] == "VMFS thin-provisioned" and clone["source"] == base
    ds1 = next(d["local_path"] for d in sim["datastores"] if d["name"] == "LocalDS_1")
    flat = os.path.join(ds1, "case 1", "%s-flat.vmdk" % v["name"])
    assert sha256(flat) == sha256(disk["flat_local"])
    assert os.stat(flat).st_blocks * 512 < disk["virtual_bytes"]  # thin
    # onto an existing destination: the documented failure, nothing overwritten
    before = os.stat(flat).st_mtime_ns
    rc, out, _ = shell(sim, "vmkfstools", "-i", base, "-d", "thin", dst)
    res = parse.vmkfstools_clone(out, rc)
    assert rc != 0 and not res["done"]
    assert res["error"] == "Failed to clone disk: The file already exists (39)."
    assert os.stat(flat).st_mtime_ns == before

    # snapshot.remove consolidates: the memory files go, the API sees no snapshot
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/snapshot.remove", vmid, str(snaps[0]["id"]))
    assert rc == 0, out + err
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", vmid)
    assert parse.snapshot_get(out) == []
    assert not [n for n in os.listdir(folder) if n.endswith((".vmem", ".vmsn")) or "-0000" in n]
    with api(sim) as c:
        vm = c.find_vm(v["name"])
        assert vm.snapshot is None and not vm.runtime.consolidationNeeded


def test_esxcli_software_iscsi_round_trip(sim):
    def enabled_api():
        with api(sim) as c:
            return host_of(c).configManager.storageSystem.storageDeviceInfo.softwareInternetScsiEnabled

    rc, out, _ = shell(sim, "esxcli", "iscsi", "software", "get")
    assert rc == 0 and parse.esxcli_bool(out.strip()) is False and enabled_api() is False
    rc, out, err = shell(sim, "esxcli", "iscsi", "software", "set", "--enabled=true")
    assert rc == 0 and out == "" and err == ""
    rc, out, _ = shell(sim, "esxcli", "--formatter=csv", "iscsi", "software", "get")
    assert parse.esxcli_bool(out.strip()) is True and enabled_api() is True
    rc, out, _ = shell(sim, "esxcli", "--formatter=csv", "iscsi", "adapter", "list")
    rows = parse.esxcli_csv(out)
    assert [(r["Adapter"], r["Driver"], r["State"]) for r in rows] == [("vmhba64", "iscsi_vmk", "online")]
    assert rows[0]["UID"].startswith("iqn.1998-01.com.vmware:")
    rc, out, _ = shell(sim, "esxcli", "iscsi", "adapter", "list")
    assert out.splitlines()[0].split() == ["Adapter", "Driver", "State", "UID", "Description"]
    assert set(out.splitlines()[1]) == set("- ")
    # a send target and CHAP, as the API then sees them (the secret never read back)
    for argv in (["iscsi", "adapter", "discovery", "sendtarget", "add", "-A", "vmhba64", "-a", "10.213.99.1:3260"],
                 ["iscsi", "adapter", "auth", "chap", "set", "--direction=uni", "--authname=case1",
                  "--secret=0123456789abcdef", "--level=required", "-A", "vmhba64"]):
        rc, out, err = shell(sim, "esxcli", *argv)
        assert (rc, out, err) == (0, "", "")
    rc, out, _ = shell(sim, "esxcli", "--formatter=csv", "iscsi", "adapter", "discovery", "sendtarget", "list")
    assert parse.esxcli_csv(out) == [{"Adapter": "vmhba64", "Sendtarget": "10.213.99.1:3260"}]
    with api(sim) as c:
        hba = [a for a in host_of(c).configManager.storageSystem.storageDeviceInfo.hostBusAdapter
               if a.device == "vmhba64"][0]
        assert [(t.address, t.port) for t in hba.configuredSendTarget] == [("10.213.99.1", 3260)]
        auth = hba.authenticationProperties
        assert (auth.chapAuthEnabled, auth.chapName, auth.chapAuthenticationType) == (True, "case1", "chapRequired")
        assert not auth.chapSecret
    for argv in (["iscsi", "adapter", "auth", "chap", "set", "--default", "-A", "vmhba64"],
                 ["iscsi", "adapter", "discovery", "sendtarget", "remove", "-A", "vmhba64", "-a", "10.213.99.1:3260"],
                 ["storage", "core", "adapter", "rescan", "--adapter=vmhba64"],
                 ["iscsi", "software", "set", "--enabled=false"]):
        rc, out, err = shell(sim, "esxcli", *argv)
        assert (rc, out, err) == (0, "", ""), argv
    rc, out, _ = shell(sim, "esxcli", "--formatter=csv", "iscsi", "software", "get")
    assert parse.esxcli_bool(out.strip()) is False and enabled_api() is False


def test_esxcli_storage_listings_and_errors(sim):
    rc, out, _ = shell(sim, "esxcli", "--formatter=csv", "storage", "filesystem", "list")
    rows = parse.esxcli_csv(out)
    assert sorted(r["VolumeName"] for r in rows) == ["LocalDS_0", "LocalDS_1"]
    assert all(r["Mounted"] == "true" and r["MountPoint"] == "/vmfs/volumes/" + r["VolumeName"] for r in rows)
    rc, out, _ = shell(sim, "esxcli", "storage", "vmfs", "extent", "list")
    assert rc == 0 and out.split("\n")[0].split("  ")[:2] == ["Volume Name", "VMFS UUID"]
    rc, out, err = shell(sim, "esxcli", "system", "settings", "advanced", "list", "-o", "/VMFS3/NoSuchOption")
    assert rc != 0 and "Unable to find option" in err
    rc, out, err = shell(sim, "esxcli", "iscsi", "nothing")
    assert rc != 0 and err.startswith("Error: Unknown command or namespace")
    rc, out, err = shell(sim, "partedUtil", "getptbl", "/vmfs/devices/disks/naa.6000000000000000000000000000dead")
    assert rc != 0 and "No such file or directory" in err
    rc, out, err = shell(sim, "vmkfstools", "-C", "vmfs6", "-S", "x", "/vmfs/devices/disks/naa.1:1")
    assert rc != 0 and "not in the lab" in err


def test_free_license_refuses_api_changes_but_not_reads(sim):
    from pyVmomi import vim
    lic = sim["lab"]["license"]
    assert lic["free"] is True and lic["refused_fault"] == "vim.fault.RestrictedVersion"
    v = lab_vm(sim, "powered-off")
    with api(sim) as c:
        vm = c.find_vm(v["name"])  # reads work: a container view, RetrievePropertiesEx
        assert vm.runtime.powerState == "poweredOff" and vm.snapshot is None
        host = host_of(c)
        assert host.configManager.storageSystem.storageDeviceInfo.softwareInternetScsiEnabled is False
        refused = [
            lambda: vm.CreateSnapshot_Task(name="api", description="", memory=False, quiesce=False),
            lambda: host.configManager.storageSystem.UpdateSoftwareInternetScsiEnabled(enabled=True),
            lambda: host.configManager.storageSystem.AddInternetScsiSendTargets(
                iScsiHbaDevice="vmhba64", targets=[vim.host.InternetScsiHba.SendTarget(address="10.213.99.1")]),
            lambda: c.content.virtualDiskManager.CopyVirtualDisk_Task(
                sourceName="[LocalDS_0] %s/%s.vmdk" % (v["name"], v["name"]), destName="[LocalDS_1] x/x.vmdk"),
        ]
        for call in refused:
            with pytest.raises(vim.fault.RestrictedVersion) as err:
                call()
            assert err.value.msg == "Current license or ESXi version prohibits execution of the requested operation."
        assert vm.snapshot is None
        ds1 = next(d["local_path"] for d in sim["datastores"] if d["name"] == "LocalDS_1")
        assert not os.path.exists(os.path.join(ds1, "x"))
    # the host's own shell may: a snapshot through vim-cmd, seen by the API, removed again
    vmid = str(vmid_of(sim, v["name"]))
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/snapshot.create", vmid, "shell", "", "0", "0")
    assert rc == 0, out + err
    with api(sim) as c:
        vm = c.find_vm(v["name"])
        assert [s.name for s in vm.snapshot.rootSnapshotList] == ["shell"]
        with pytest.raises(vim.fault.RestrictedVersion):
            vm.snapshot.rootSnapshotList[0].snapshot.RemoveSnapshot_Task(removeChildren=False)
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/snapshot.removeall", vmid)
    assert rc == 0, out + err
    rc, out, _ = shell(sim, "vim-cmd", "vmsvc/snapshot.get", vmid)
    assert parse.snapshot_get(out) == []
    # a wrong password for the internal user is an ordinary failed login
    from pyVim.connect import SmartConnect
    import ssl
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=sim["host"], port=sim["port"], user=lic["internal_username"], pwd="not-it",
                     sslContext=ssl.create_default_context(cadata=sim["cert_pem"]))
