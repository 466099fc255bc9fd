# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's ESXi host over SSH (lab/esxi-shell, a LAB EMULATOR): a private simulator of its own in free-ESXi mode
(``-lab-vms -ram-image PATH -ds 2 -free-license``) and lab/esxi-shell/sshd.sh on 127.0.0.1 and a free port, driven with
the collection's SSH client (plugins/module_utils/_ssh/client.py, the host key pinned by the fingerprint of the
sshd's key file) and read back with the collection's readers (plugins/module_utils/_esxi_shell/parse.py), checked
against the simulator's API and its datastore folders. The API refuses every change to an ordinary session
(RestrictedVersion, as a free ESXi host does) while reads work; the shell's programs, logged in as the simulator's
lab-internal user, change the host.

The iSCSI path (test_iscsi_datastore_over_ssh) runs on a storage bed of its own (tests/integration/storage_bed.py:
namespaces esh<pid>-esx / -coll, 10.213.220.4/30, a tgtd with one LUN behind CHAP): the simulator and the lab sshd in
the ESXi namespace, as lab/up.sh would run them in vmc-esx; esxcli enables the software adapter, adds the send
target and CHAP, rescans (a real login), partedUtil reads the LUN and writes its GPT, vmkfstools -C makes the VMFS
stand-in (which the free host's API refuses), the next session sees it under /vmfs/volumes, vmkfstools clones a disk
onto it and sha256sum hashes it there; then it is released.

Needs root (sshd, the sessions' mount namespaces), Debian's openssh-server, paramiko and pyVmomi (this interpreter
runs the lab programs: ESXI_SHELL_PYTHON); the iSCSI test also tgt, libiscsi-bin, qemu-utils (skipped without).
The RAM image is lab/vcsim/ram_image.sh's (cached in $LAB_DIR/vcsim-ram).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import shutil
import ssl
import subprocess
import sys

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import quote
from conftest import sha256_file
from vcsim_helpers import NEEDS_SIMULATOR, ON_LINUX, VCSIM, esxi_shell, private_simulator, run, sshd_ctl

SSHD = "/usr/sbin/sshd"
pytestmark = [NEEDS_SIMULATOR, ON_LINUX,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sshd, the sessions' mount namespaces)"),
              pytest.mark.skipif(not os.access(SSHD, os.X_OK), reason="needs openssh-server (%s)" % SSHD)]
pytest.importorskip("pyVmomi")
pytest.importorskip("paramiko")


def processes_with(text):
    """Live processes whose NUL-joined argv holds ``text`` (the collection's own /proc scan)."""
    return procfs.find_pids(lambda argv: text in "\0".join(argv))


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import SshClient
    tmp = tmp_path_factory.mktemp("esxi-shell")
    ram = run("bash", os.path.join(VCSIM, "ram_image.sh"), stderr=subprocess.PIPE, timeout=600)
    assert ram.returncode == 0, ram.stderr
    image = ram.stdout.strip().splitlines()[-1]
    with private_simulator(tmp, "esxi-shell", args="-lab-vms -ram-image %s -ds 2 -free-license" % image) as env:
        # the pin as an examiner takes it from the host's console: ssh-keygen -lf of the host key
        with esxi_shell(tmp, str(tmp / ("esxi-shell-%d.json" % os.getpid()))) as sh_:
            env.update(_state=sh_["state"], _port=sh_["port"], _key=sh_["key"], _fingerprint=sh_["fingerprint"])
            with SshClient("127.0.0.1", port=sh_["port"], private_key_file=sh_["key"],
                           host_key_fingerprint=sh_["fingerprint"]) as ssh:
                env["_ssh"] = ssh
                yield env
        assert processes_with(os.path.join(sh_["state"], "sshd_config")) == []
        assert processes_with(os.path.join(sh_["state"], "bin")) == []


def shell(env, program, *args, **kw):
    """(rc, stdout, stderr) of a command on the lab ESXi host over SSH (an argv, quoted by the client)."""
    rc, out, err = env["_ssh"].run([program] + list(args), timeout=kw.get("timeout", 120))
    return rc, out.decode("utf-8"), err.decode("utf-8")


def sh(env, line, timeout=120):
    """(rc, stdout, stderr) of a shell command line on the lab ESXi host."""
    rc, out, err = env["_ssh"].run(line, timeout=timeout)
    return rc, out.decode("utf-8"), err.decode("utf-8")


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
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/power.getstate", str(by_name["lab-off-02"]["vmid"]))
    assert rc == 0 and out.splitlines() == ["Retrieved runtime info", "Powered off"]


def test_unknown_vm_and_quiesce_print_fault_blocks(sim):
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", "9999")
    assert rc != 0
    assert parse.vim_fault(out) == ("vim.fault.NotFound", 'Unable to find a VM corresponding to "9999"')
    vmid = vmid_of(sim, lab_vm(sim, "powered-off")["name"])
    # the lab VMs have no VMware Tools: a quiesced snapshot of a running one is refused, nothing is made
    running = vmid_of(sim, lab_vm(sim, "cbt")["name"])
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.create", str(running), "q", "", "0", "1")
    assert rc != 0
    assert parse.vim_fault(out)[0] == "vim.fault.ToolsUnavailable"
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", str(running))
    assert rc == 0 and parse.snapshot_get(out) == []
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", str(vmid))
    assert rc == 0 and parse.snapshot_get(out) == []


def test_existing_snapshot_read(sim):
    v = lab_vm(sim, "with-snapshot")
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", str(vmid_of(sim, v["name"])))
    assert rc == 0
    snaps = parse.snapshot_get(out)
    assert [(s["name"], s["id"], s["depth"], s["state"]) for s in snaps] == [("lab-base", 1, 0, "powered on")]
    assert snaps[0]["created"].endswith("Z")


def test_memory_snapshot_clone_and_remove(sim):
    v = lab_vm(sim, "cbt")
    vmid = str(vmid_of(sim, v["name"]))
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/snapshot.create", vmid, "ev 1", "evidence [x]", "1", "0")
    assert rc == 0, out + err
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", vmid)
    snaps = parse.snapshot_get(out)
    assert [(s["name"], s["description"], s["state"]) for s in snaps] == [("ev 1", "evidence [x]", "powered on")]
    folder = v["dir_local"]
    vmem, vmsn = ("%s-Snapshot%d.%s" % (v["name"], snaps[0]["id"], ext) for ext in ("vmem", "vmsn"))
    rc, out, _err = shell(sim, "ls", "/vmfs/volumes/LocalDS_0/%s/" % v["name"])
    assert vmem in out.splitlines() and vmsn in out.splitlines()
    assert os.path.getsize(os.path.join(folder, vmem)) == 256 << 20 and os.path.exists(os.path.join(folder, vmsn))
    with api(sim) as c:  # the API (a read) sees the snapshot the shell made
        tree = list(c.find_vm(v["name"]).snapshot.rootSnapshotList)
        assert [(t.name, t.id, t.description) for t in tree] == [("ev 1", snaps[0]["id"], "evidence [x]")]
    disk = v["disks"][0]
    frozen = sha256_file(disk["flat_local"])  # the guest now writes to the delta: the base is frozen

    # the frozen base, cloned thin onto the second datastore by vmkfstools, hashed there by openssl over SSH
    base = "/vmfs/volumes/LocalDS_0/%s/%s.vmdk" % (v["name"], v["name"])
    dst = "/vmfs/volumes/LocalDS_1/case 1/%s.vmdk" % v["name"]
    rc, out, err = shell(sim, "vmkfstools", "-i", base, "-d", "thin", dst)
    clone = parse.vmkfstools_clone(out, rc)
    assert clone["done"], out + err
    assert clone["format"] == "VMFS thin-provisioned" and clone["source"] == base
    dst_flat = dst[:-len(".vmdk")] + "-flat.vmdk"
    rc, out, _err = shell(sim, "openssl", "dgst", "-sha256", dst_flat)
    assert rc == 0 and out.strip().rsplit("= ", 1) == ["SHA2-256(%s)" % dst_flat, frozen]
    rc, out, _err = shell(sim, "cat", dst)
    assert 'createType="vmfs"' in out and 'ddb.thinProvisioned = "1"' in out
    ds1 = next(d["local_path"] for d in sim["datastores"] if d["name"] == "LocalDS_1")
    flat = os.path.join(ds1, "case 1", "%s-flat.vmdk" % v["name"])
    assert os.stat(flat).st_blocks * 512 < disk["virtual_bytes"]  # thin
    # onto an existing destination (given relative to the working folder): the documented failure, nothing written
    before = os.stat(flat).st_mtime_ns
    rc, out, _err = sh(sim, "cd %s && vmkfstools -i %s -d thin %s" % (
        quote("/vmfs/volumes/LocalDS_0/" + v["name"]), quote(v["name"] + ".vmdk"), quote(dst)))
    res = parse.vmkfstools_clone(out, rc)
    assert rc != 0 and not res["done"] and res["source"] == v["name"] + ".vmdk"
    assert res["error"] == "Failed to clone disk: The file already exists (39)."
    assert os.stat(flat).st_mtime_ns == before

    # snapshot.remove consolidates: the memory files go, the API sees no snapshot
    rc, out, err = shell(sim, "vim-cmd", "vmsvc/snapshot.remove", vmid, str(snaps[0]["id"]))
    assert rc == 0, out + err
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", vmid)
    assert parse.snapshot_get(out) == []
    assert not [n for n in os.listdir(folder) if n.endswith((".vmem", ".vmsn")) or "-0000" in n]
    with api(sim) as c:
        vm = c.find_vm(v["name"])
        assert vm.snapshot is None and not vm.runtime.consolidationNeeded


# outside the CI budget (make test-slow); in CI: test_acquire_esxi_ssh.py turns software iSCSI on and off with these commands
@pytest.mark.slow
def test_esxcli_software_iscsi_round_trip(sim):
    def enabled_api():
        with api(sim) as c:
            return host_of(c).configManager.storageSystem.storageDeviceInfo.softwareInternetScsiEnabled

    rc, out, _err = shell(sim, "esxcli", "iscsi", "software", "get")
    assert rc == 0 and parse.esxcli_bool(out.strip()) is False and enabled_api() is False
    rc, out, err = shell(sim, "esxcli", "iscsi", "software", "set", "--enabled=true")
    assert rc == 0 and out == "" and err == ""
    rc, out, _err = shell(sim, "esxcli", "--formatter=csv", "iscsi", "software", "get")
    assert parse.esxcli_bool(out.strip()) is True and enabled_api() is True
    rc, out, _err = shell(sim, "esxcli", "--formatter=csv", "iscsi", "adapter", "list")
    rows = parse.esxcli_csv(out)
    assert [(r["Adapter"], r["Driver"], r["State"]) for r in rows] == [("vmhba64", "iscsi_vmk", "online")]
    assert rows[0]["UID"].startswith("iqn.1998-01.com.vmware:")
    rc, out, _err = shell(sim, "esxcli", "iscsi", "adapter", "list")
    assert out.splitlines()[0].split() == ["Adapter", "Driver", "State", "UID", "Description"]
    assert set(out.splitlines()[1]) == set("- ")
    # a send target and CHAP, as the API then sees them (the secret never read back)
    for argv in (["iscsi", "adapter", "discovery", "sendtarget", "add", "-A", "vmhba64", "-a", "10.213.99.1:3260"],
                 ["iscsi", "adapter", "auth", "chap", "set", "--direction=uni", "--authname=case1",
                  "--secret=0123456789abcdef", "--level=required", "-A", "vmhba64"]):
        rc, out, err = shell(sim, "esxcli", *argv)
        assert (rc, out, err) == (0, "", "")
    rc, out, _err = shell(sim, "esxcli", "--formatter=csv", "iscsi", "adapter", "discovery", "sendtarget", "list")
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
    rc, out, _err = shell(sim, "esxcli", "--formatter=csv", "iscsi", "software", "get")
    assert parse.esxcli_bool(out.strip()) is False and enabled_api() is False


def test_esxcli_storage_listings_and_errors(sim):
    rc, out, _err = shell(sim, "esxcli", "--formatter=csv", "storage", "filesystem", "list")
    rows = parse.esxcli_csv(out)
    assert sorted(r["VolumeName"] for r in rows) == ["LocalDS_0", "LocalDS_1"]
    assert all(r["Mounted"] == "true" and r["MountPoint"] == "/vmfs/volumes/" + r["VolumeName"] for r in rows)
    rc, out, _err = shell(sim, "esxcli", "storage", "vmfs", "extent", "list")
    assert rc == 0 and out.split("\n")[0].split("  ")[:2] == ["Volume Name", "VMFS UUID"]
    rc, out, err = shell(sim, "esxcli", "system", "settings", "advanced", "list", "-o", "/VMFS3/NoSuchOption")
    assert rc != 0 and "Unable to find option" in err
    rc, out, err = shell(sim, "esxcli", "iscsi", "nothing")
    assert rc != 0 and err.startswith("Error: Unknown command or namespace")
    rc, out, err = shell(sim, "partedUtil", "getptbl", "/vmfs/devices/disks/naa.6000000000000000000000000000dead")
    assert rc != 0 and "No such file or directory" in err
    rc, out, err = shell(sim, "vmkfstools", "-C", "vmfs6", "-S", "x", "/vmfs/devices/disks/naa.1:1")
    assert rc != 0 and parse.vmkfstools_create(out) is None and "No such file or directory" in out
    rc, out, err = shell(sim, "vmkfstools", "-D", "/vmfs/volumes/LocalDS_0/x")
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
    rc, out, _err = shell(sim, "vim-cmd", "vmsvc/snapshot.get", vmid)
    assert parse.snapshot_get(out) == []
    # a wrong password for the internal user is an ordinary failed login
    from pyVim.connect import SmartConnect
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=sim["host"], port=sim["port"], user=lic["internal_username"], pwd="not-it",
                     sslContext=ssl.create_default_context(cadata=sim["cert_pem"]))


def test_session_sees_esxi_paths_lab_programs_and_a_plain_shell(sim):
    rc, out, _err = sh(sim, "ls /vmfs/volumes")
    assert rc == 0 and out.split() == ["LocalDS_0", "LocalDS_1"]
    for d in sim["datastores"]:
        rc, out, _err = shell(sim, "readlink", "/vmfs/volumes/" + d["name"])
        assert out.strip() == d["local_path"]
    # a real program reads a datastore file by its ESXi path (spaces and brackets quoted by the client)
    v = lab_vm(sim, "powered-off")
    flat = v["disks"][0]
    remote = "/vmfs/volumes/LocalDS_0/%s/%s-flat.vmdk" % (v["name"], v["name"])
    rc, out, _err = shell(sim, "openssl", "dgst", "-md5", remote)
    with open(flat["flat_local"], "rb") as f:
        assert rc == 0 and out.strip() == "MD5(%s)= %s" % (remote, hashlib.md5(f.read()).hexdigest())
    rc, out, _err = sh(sim, "echo $PATH; for p in vim-cmd vmkfstools esxcli partedUtil; do command -v $p; done; "
                            "readlink /proc/$$/exe; readlink /proc/self/ns/mnt; test -w /vmfs || echo ro")
    lines = out.splitlines()
    assert lines[0].startswith(os.path.join(sim["_state"], "bin") + ":")
    assert lines[1:5] == [os.path.join(sim["_state"], "bin", p)
                          for p in ("vim-cmd", "vmkfstools", "esxcli", "partedUtil")]
    assert lines[5] == "/usr/bin/dash"
    assert lines[6] != os.readlink("/proc/self/ns/mnt")  # the session's own mount namespace
    assert lines[7] == "ro"


def test_host_key_pin_and_key_only_login(sim):
    from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import SshError, SshHostKeyError
    from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import SshClient
    other = "SHA256:" + "A" * 43
    with pytest.raises(SshHostKeyError) as err:
        with SshClient("127.0.0.1", port=sim["_port"], private_key_file=sim["_key"], host_key_fingerprint=other):
            pass
    assert sim["_fingerprint"] in str(err.value)
    with pytest.raises(SshError):
        with SshClient("127.0.0.1", port=sim["_port"], password="not-a-key", host_key_fingerprint=sim["_fingerprint"]):
            pass


def test_command_past_its_timeout_is_stopped_on_the_host(sim):
    from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import SshTimeout
    with pytest.raises(SshTimeout) as err:
        sh(sim, "sleep 47.5; echo late", timeout=2)
    assert err.value.details["stopped"] is True, err.value.message
    assert processes_with("sleep\x0047.5") == []


# -- the iSCSI path over SSH, against a real tgt (tests/integration/storage_bed.py) ---------------------------------

TAG = "esh%d" % (os.getpid() % 100000)
BED_COLL, BED_ESX, BED_MGMT = "10.213.220.5", "10.213.220.6", "10.213.220.10"
BED_LUN_BYTES = 64 << 20


def _bed_class():
    import storage_bed

    class ShellBed(storage_bed.StorageBed):
        """Namespaces TAG-esx / TAG-coll, tgtd with one 64 MiB LUN behind CHAP, the simulator (lab VMs, free-ESXi
        mode) in TAG-esx, and the lab ESXi sshd in TAG-esx on BED_MGMT:22, reached through a forwarder on 127.0.0.1."""

        ns_esx, ns_coll = TAG + "-esx", TAG + "-coll"
        coll_stor, esx_stor, esx_mgmt = BED_COLL, BED_ESX, BED_MGMT
        target_iqn, chap_user, port_base = "iqn.2026-01.io.dfir.vmcollect.lab:" + TAG, "esxi-shell", 23000

        def __init__(self, tmp, image, key):
            super(ShellBed, self).__init__(tmp)
            self.backing = os.path.join(tmp, "lun.img")
            self.luns = {1: (self.backing, BED_LUN_BYTES, "ESH%05d" % (os.getpid() % 100000),
                             "ESHID%05d" % (os.getpid() % 100000))}
            self.esx = storage_bed.Simulator(os.path.join(tmp, TAG + ".json"), self.ns_esx, (BED_MGMT, 443),
                                             args="-lab-vms -ram-image %s -free-license" % image)
            self.key, self.state, self.sshd_fwd = key, os.path.join(tmp, "sshd"), None

        def start_vcsim(self):
            self.esx.start()
            self.iqn = self.env["lab"]["storage"]["hosts"][0]["iscsi_name"]
            self.tgt.bind_initiator_name(1, self.iqn)
            started = sshd_ctl(self.state, "start", ESXI_SHELL_ENV_FILE=self.esx.envfile,
                               ESXI_SHELL_AUTHORIZED_KEYS=self.key + ".pub", ESXI_SHELL_NETNS=self.ns_esx,
                               ESXI_SHELL_LISTEN="%s:22" % BED_MGMT, ESXI_SHELL_PYTHON=sys.executable)
            assert started.returncode == 0, started.stdout
            self.sshd_fwd = storage_bed.Forwarder(self.ns_esx, (BED_MGMT, 22))

        def connect(self):
            """An ordinary API session through the simulator's forwarder (self.host, .ss, .dss)."""
            from pyVim.connect import SmartConnect
            from pyVmomi import vim
            self.si = SmartConnect(host="127.0.0.1", port=self.esx.fwd.port, user=self.env["username"],
                                   pwd=self.env["password"], sslContext=ssl.create_default_context(
                                       cadata=self.env["cert_pem"]))
            content = self.si.RetrieveContent()
            self.host = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True).view[0]
            self.ss = self.host.configManager.storageSystem
            self.dss = self.host.configManager.datastoreSystem

        def disconnect(self):
            from pyVim.connect import Disconnect
            Disconnect(self.si)

        def stop_vcsim(self):
            if self.sshd_fwd is not None:
                self.sshd_fwd.close()
            self.sshd_stopped = sshd_ctl(self.state, "stop", ESXI_SHELL_NETNS=self.ns_esx)
            return self.esx.stop()

    return ShellBed


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    import storage_bed
    from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import SshClient
    if any(shutil.which(t) is None for t in storage_bed.TOOLS):
        pytest.skip("needs %s (tgt, libiscsi-bin, qemu-utils, e2fsprogs, util-linux, iproute2)"
                    % ", ".join(storage_bed.TOOLS))
    tmp = str(tmp_path_factory.mktemp("esxi-shell-iscsi"))
    ram = run("bash", os.path.join(VCSIM, "ram_image.sh"), stderr=subprocess.PIPE, timeout=600)
    assert ram.returncode == 0, ram.stderr
    key = os.path.join(tmp, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    b = _bed_class()(tmp, ram.stdout.strip().splitlines()[-1], key)
    with b.running():
        with open(os.path.join(b.state, "host_key.fingerprint")) as f:
            fingerprint = f.read().strip()
        with SshClient("127.0.0.1", port=b.sshd_fwd.port, private_key_file=key,
                       host_key_fingerprint=fingerprint) as ssh:
            b.ssh = ssh
            yield b
    assert b.sshd_stopped.returncode == 0, b.sshd_stopped.stdout
    assert b.stopped.returncode == 0, b.stopped.stdout
    assert processes_with(os.path.join(b.state, "sshd_config")) == []
    for ns in (b.ns_esx, b.ns_coll):
        assert not os.path.exists("/run/netns/" + ns)
    b.esx.check_gone()
    # the CHAP secret is in the argv of `esxcli ... chap set --secret=` (and its shell), as on ESXi, and nowhere else
    assert b.argv_hits and all("esxcli" in hit for hit in b.argv_hits), b.argv_hits[:3]


def esx(b, line, secrets=()):
    rc, out, err = b.ssh.run(line, timeout=120, secrets=secrets)
    return rc, out.decode("utf-8"), err.decode("utf-8")


def csv_rows(b, line):
    rc, out, err = esx(b, line)
    assert rc == 0, out + err
    return parse.esxcli_csv(out)


# outside the CI budget (make test-slow); in CI: test_acquire_esxi_ssh.py makes and releases the datastore on this shell
@pytest.mark.slow
def test_iscsi_datastore_over_ssh(bed):
    from pyVmomi import vim
    b = bed
    for line in ("esxcli iscsi software set --enabled=true",
                 "esxcli iscsi adapter discovery sendtarget add -A vmhba64 -a %s:3260" % BED_COLL):
        assert esx(b, line) == (0, "", ""), line
    assert [r["UID"] for r in csv_rows(b, "esxcli --formatter=csv iscsi adapter list")] == [b.iqn]
    rc, out, err = esx(b, "esxcli iscsi adapter auth chap set --direction=uni --authname=%s --secret=%s "
                          "--level=required -A vmhba64" % (b.chap_user, b.secret), secrets=[b.secret])
    assert (rc, out, err) == (0, "", "")
    # CHAP of the send target: inherited from the adapter, then its own (the collection's SSH engine sets it so)
    target = "-A vmhba64 -a %s:3260" % BED_COLL
    get = "esxcli --formatter=csv iscsi adapter discovery sendtarget auth chap get " + target
    assert [(r["Name"], r["Level"], r["Inheritance"]) for r in csv_rows(b, get)] == [(b.chap_user, "required", "true")]
    rc, out, err = esx(b, "esxcli iscsi adapter discovery sendtarget auth chap set %s --direction=uni --authname=%s "
                          "--secret=%s --level=required" % (target, b.chap_user, b.secret), secrets=[b.secret])
    assert (rc, out, err) == (0, "", "")
    assert [(r["Name"], r["Level"], r["Inheritance"]) for r in csv_rows(b, get)] == [(b.chap_user, "required", "false")]
    assert esx(b, "esxcli storage core adapter rescan --adapter=vmhba64") == (0, "", "")
    portals = csv_rows(b, "esxcli --formatter=csv iscsi adapter target portal list")
    assert [(p["Target"], p["IP"], p["Port"]) for p in portals] == [(b.target_iqn, BED_COLL, "3260")]
    devices = [d for d in csv_rows(b, "esxcli --formatter=csv storage core device list")
               if d["DevfsPath"].startswith("/vmfs/devices/disks/naa.")]
    assert len(devices) == 1 and devices[0]["Size"] == "64" and devices[0]["IsLocal"] == "false"
    dev = devices[0]["DevfsPath"]
    rc, out, _err = esx(b, "partedUtil getptbl %s" % dev)
    table = parse.partedutil_getptbl(out)
    assert (table["label"], table["total_sectors"], table["partitions"]) == ("unknown", BED_LUN_BYTES // 512, [])
    rc, out, _err = esx(b, "partedUtil getUsableSectors %s" % dev)
    assert out.split() == ["34", str(BED_LUN_BYTES // 512 - 34)]

    # the VMFS the free host's API refuses to make, made as on ESXi's shell: partedUtil setptbl, vmkfstools -C
    last = BED_LUN_BYTES // 512 - 34
    b.connect()
    try:
        spec = b.dss.QueryVmfsDatastoreCreateOptions(dev)[0].spec  # a read
        spec.vmfs.volumeName = "api-ds"
        with pytest.raises(vim.fault.RestrictedVersion):
            b.dss.CreateVmfsDatastore(spec)
    finally:
        b.disconnect()
    rc, out, err = esx(b, 'partedUtil setptbl %s gpt "%s"' % (dev, parse.vmfs_partition_spec(last)))
    assert (rc, out.split("\n")[0], err) == (0, "gpt", ""), out + err
    rc, out, _err = esx(b, "partedUtil getptbl %s" % dev)
    assert [(p["number"], p["start"], p["end"], p["guid"], p["type"])
            for p in parse.partedutil_getptbl(out)["partitions"]] == [(1, 2048, last, parse.VMFS_GUID, "vmfs")]
    rc, out, err = esx(b, "vmkfstools -C vmfs6 -S case-ds %s:1" % dev)
    uuid = parse.vmkfstools_create(out)
    assert rc == 0 and uuid, out + err
    assert 'volume label "case-ds"' in out and out.startswith("create fs deviceName:'%s:1'" % dev.rsplit("/", 1)[1])
    fs = dict((r["VolumeName"], r) for r in csv_rows(b, "esxcli --formatter=csv storage filesystem list"))
    assert (fs["case-ds"]["UUID"], fs["case-ds"]["Type"], fs["case-ds"]["MountPoint"]) == (
        uuid, "VMFS-6", "/vmfs/volumes/" + uuid)
    extents = csv_rows(b, "esxcli --formatter=csv storage vmfs extent list")
    assert [(e["VolumeName"], e["VMFSUUID"], e["DeviceName"], e["Partition"]) for e in extents] == [
        ("case-ds", uuid, dev.rsplit("/", 1)[1], "1")]
    rc, out, _err = esx(b, "partedUtil getptbl %s" % dev)
    part = parse.partedutil_getptbl(out)
    assert part["label"] == "gpt" and [(p["number"], p["start"], p["guid"], p["type"]) for p in part["partitions"]] == [
        (1, 2048, parse.VMFS_GUID, "vmfs")]
    rc, out, _err = esx(b, "readlink /vmfs/volumes/case-ds")
    assert out.strip() == uuid

    # a powered-off VM's disk cloned onto it by vmkfstools and hashed there with sha256sum, as an examiner would
    v = next(x for x in b.env["lab"]["content"]["vms"] if x["role"] == "powered-off")
    src = "/vmfs/volumes/LocalDS_0/%s/%s.vmdk" % (v["name"], v["name"])
    rc, out, err = esx(b, "mkdir -p /vmfs/volumes/case-ds/case && vmkfstools -i %s -d thin %s"
                       % (quote(src), quote("/vmfs/volumes/case-ds/case/disk 1.vmdk")))
    assert parse.vmkfstools_clone(out, rc)["done"], out + err
    rc, out, _err = esx(b, "sha256sum %s" % quote("/vmfs/volumes/case-ds/case/disk 1-flat.vmdk"))
    assert rc == 0 and out.split()[0] == sha256_file(v["disks"][0]["flat_local"])

    # released again: unmounted (the volume stays on the LUN), the LUN detached and forgotten (the lab's emulation:
    # lab/esxi-shell/BEHAVIOUR.md), the send target and CHAP gone, the LUN with them
    naa = dev.rsplit("/", 1)[1]
    rc, out, err = esx(b, "esxcli storage core device set --state=off -d %s" % naa)
    assert rc == 1 and "holds the mounted VMFS volume(s) case-ds" in err, out + err
    assert esx(b, "esxcli storage filesystem unmount -l case-ds") == (0, "", "")
    assert "case-ds" not in [r["VolumeName"] for r in csv_rows(b, "esxcli --formatter=csv storage filesystem list")]
    assert esx(b, "esxcli storage core device set --state=off -d %s" % naa) == (0, "", "")
    assert [d["Status"] for d in csv_rows(b, "esxcli --formatter=csv storage core device list -d %s" % naa)] == ["off"]
    detached = "esxcli --formatter=csv storage core device detached list"
    assert [(r["DeviceUID"], r["State"]) for r in csv_rows(b, detached)] == [(naa, "off")]
    assert esx(b, "esxcli storage core device detached remove -d %s" % naa) == (0, "", "")
    assert csv_rows(b, detached) == []
    assert esx(b, "esxcli iscsi adapter discovery sendtarget auth chap set --inherit " + target) == (0, "", "")
    assert [r["Inheritance"] for r in csv_rows(b, get)] == ["true"]
    for line in ("esxcli iscsi adapter discovery sendtarget remove -A vmhba64 -a %s:3260" % BED_COLL,
                 "esxcli iscsi adapter auth chap set --default -A vmhba64",
                 "esxcli storage core adapter rescan --all"):
        assert esx(b, line) == (0, "", ""), line
    assert not [d for d in csv_rows(b, "esxcli --formatter=csv storage core device list")
                if d["DevfsPath"] == dev]
    b.connect()
    try:
        assert not [d for d in b.host.datastore if d.name == "case-ds"]
        hba = [a for a in b.ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba)][0]
        assert not hba.configuredSendTarget and not hba.authenticationProperties.chapAuthEnabled
    finally:
        b.disconnect()
