# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""esxi_iscsi_datastore's SSH engine (engine=ssh) and its teardown, played with ansible-playbook against the lab's
simulated ESXi host in free-ESXi mode (``-free-license``: its API only reads, every change is refused with
RestrictedVersion) and the lab's ESXi shell (lab/esxi-shell: esxcli, partedUtil, vmkfstools -C acting on the same
host), whose storage extension really logs in to a tgt target (lab/vcsim/BEHAVIOUR-storage.md).

A storage bed of its own (tests/integration/storage_bed.py, as tests/integration/test_esxi_iscsi_datastore.py and
tests/integration/lab/test_esxi_shell.py build theirs): namespaces eiss<pid>-esx / -coll joined by a veth storage link
(10.213.221.4/30), a tgtd of its own with one target and two LUNs behind CHAP, the simulator and the lab sshd (root by
key, the host key pinned by its fingerprint) in the ESXi namespace, each reached through a forwarder on 127.0.0.1.
Everything started is stopped at the end and checked gone; the CHAP secret is in no process's argv but the one
esxcli that sets it (the host's shell gets it on stdin and execs esxcli), as on ESXi. Module arguments go to ansible-playbook in a 0600
playbook file, never on a command line.

What the lab's ESXi shell does not have is tolerated only where a comment starting with "LAB:" says so.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import storage_bed
from conftest import VENV_BIN, journal_records, localhost_ansible, sha256_file
from storage_bed import VMFS_GUID, debugfs_cat, gpt
from vcsim_helpers import NEEDS_BUILD, build, sshd_ctl

pytest.importorskip("pyVmomi")
pytest.importorskip("paramiko")
from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import SshClient  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage as vst  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import VsphereClient  # noqa: E402

SSHD = "/usr/sbin/sshd"
TAG = "eiss%d" % (os.getpid() % 100000)
NS_ESX, NS_COLL = TAG + "-esx", TAG + "-coll"
COLL_STOR, ESX_STOR, ESX_MGMT = "10.213.221.5", "10.213.221.6", "10.213.221.10"
TARGET_IQN = "iqn.2026-01.io.dfir.vmcollect.test:%s" % TAG
CHAP_USER = "esxi-%s" % TAG
MIB = 1 << 20
# lun number -> (size, serial, scsi_id): two sizes, so the module must pick by size and serial
LUNS = {n: (size, "EISS%d%05d" % (n, os.getpid() % 100000), "EISSID%d%05d" % (n, os.getpid() % 100000))
        for n, size in ((1, 64 * MIB), (2, 48 * MIB))}
MODULE = "esxi_iscsi_datastore"

pytestmark = [storage_bed.NEEDS_ROOT, NEEDS_BUILD, storage_bed.NEEDS_TOOLS,
              pytest.mark.skipif(not os.access(SSHD, os.X_OK), reason="needs openssh-server (%s)" % SSHD)]


class Bed(storage_bed.StorageBed):
    """The storage bed with the free-licence simulator and the lab ESXi sshd in the ESXi namespace."""

    ns_esx, ns_coll, coll_stor, esx_stor, esx_mgmt = NS_ESX, NS_COLL, COLL_STOR, ESX_STOR, ESX_MGMT
    target_iqn, chap_user, port_base = TARGET_IQN, CHAP_USER, 24000

    def __init__(self, tmp, key):
        super(Bed, self).__init__(tmp)
        self.backing = dict((n, os.path.join(tmp, "lun%d.img" % n)) for n in LUNS)
        self.luns = dict((n, (self.backing[n],) + LUNS[n]) for n in LUNS)
        self.esx = storage_bed.Simulator(os.path.join(tmp, "vcsim-%s.json" % TAG), NS_ESX, (ESX_MGMT, 443),
                                         args="-free-license")
        self.key, self.sshd_state = key, os.path.join(tmp, "sshd")
        self.sshd_fwd = self.sshd_stopped = self.fingerprint = self.iqn = None

    def start_vcsim(self):
        self.esx.start()
        # the collector admits the host's IQN from the start (the role does it with state=adapter's result)
        self.iqn = self.env["lab"]["storage"]["hosts"][0]["iscsi_name"]
        self.tgt.bind_initiator_name(1, self.iqn)
        started = sshd_ctl(self.sshd_state, "start", ESXI_SHELL_ENV_FILE=self.esx.envfile,
                           ESXI_SHELL_AUTHORIZED_KEYS=self.key + ".pub", ESXI_SHELL_NETNS=NS_ESX,
                           ESXI_SHELL_LISTEN="%s:22" % ESX_MGMT, ESXI_SHELL_PYTHON=sys.executable)
        assert started.returncode == 0, started.stdout
        self.sshd_fwd = storage_bed.Forwarder(NS_ESX, (ESX_MGMT, 22))
        with open(os.path.join(self.sshd_state, "host_key.fingerprint")) as f:
            self.fingerprint = f.read().strip()

    def stop_vcsim(self):
        if self.sshd_fwd is not None:
            self.sshd_fwd.close()
        self.sshd_stopped = sshd_ctl(self.sshd_state, "stop", ESXI_SHELL_NETNS=NS_ESX)
        return self.esx.stop()

    # -- what the modules get ----------------------------------------------------------------------------------
    def conn(self):
        return {"hostname": "127.0.0.1", "port": self.esx.fwd.port, "username": self.env["username"],
                "password": self.env["password"], "thumbprint": self.env["thumbprint_sha256"]}

    def ssh(self):
        return {"port": self.sshd_fwd.port, "username": "root", "private_key_file": self.key,
                "host_key_fingerprint": self.fingerprint}

    def shell(self, line):
        """(rc, stdout) of a command line on the lab ESXi host (a new session: it sees new datastores)."""
        with SshClient("127.0.0.1", port=self.sshd_fwd.port, private_key_file=self.key,
                       host_key_fingerprint=self.fingerprint) as ssh:
            rc, out, _err = ssh.run(line, timeout=120)
        return rc, out.decode("utf-8", "replace")

    # -- the host's state, property by property, as teardown must leave it (read through the API) ---------------
    def state(self):
        with VsphereClient("127.0.0.1", self.env["username"], self.env["password"], port=self.esx.fwd.port,
                           thumbprint=self.env["thumbprint_sha256"]) as client:
            host = vst.find_host(client)
            info, fs = host.storage(client)
            ds_all = sorted(v["name"] for _d, v in client.retrieve(vim.Datastore, ["name"]))
        hba = vst.software_adapter(info)
        disks = vst.disk_views(info)
        state = {
            "software_iscsi_enabled": bool(info.softwareInternetScsiEnabled),
            "adapter_chap": vst.chap_text(hba["auth"] if hba else vst.auth_view(None)),
            "send_targets": [(s["portal"], s["auth"]) for s in hba["send_targets"]] if hba else [],
            "static_targets": [(s["iqn"], s["parent"]) for s in hba["static_targets"]] if hba else [],
            "iscsi_disks": sorted((d["canonical_name"], d["serial"]) for d in disks
                                  if hba and any(p["adapter"] == hba["key"] for p in d["paths"])),
            "vmfs_mounts": sorted((v["name"], v["uuid"], v["mounted"]) for v in vst.vmfs_volumes(fs)),
            "all_datastores": ds_all,
        }
        return state, ((hba["device"], hba["iqn"]) if hba else None)


def play(bed, module, args, check=False):
    """Run one module on localhost with ansible-playbook, its arguments in a 0600 playbook file: (ok, result,
    output)."""
    fd, path = tempfile.mkstemp(prefix="eiss-play-", suffix=".yml", dir=bed.tmp)
    with os.fdopen(fd, "w") as f:
        json.dump([{"hosts": "localhost", "gather_facts": False,
                    "tasks": [{"name": "run", "dfir.vmcollect." + module: args}]}], f)
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", path,
           "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        cmd.append("--check")
    try:
        out = localhost_ansible(cmd, ANSIBLE_STDOUT_CALLBACK="minimal")
    finally:
        os.remove(path)
    start = out.find("=> {")
    assert start >= 0, out
    return ("FAILED" not in out[:start].rsplit("\n", 1)[-1]), json.loads(out[start + 3:out.rfind("}") + 1]), out


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    build()
    tmp = str(tmp_path_factory.mktemp("esxi-iscsi-ssh"))
    key = os.path.join(tmp, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    b = Bed(tmp, key)
    with b.running():
        yield b
    assert b.sshd_stopped.returncode == 0, b.sshd_stopped.stdout
    assert b.stopped.returncode == 0, b.stopped.stdout
    # the CHAP secret was in the argv of the one `esxcli ... chap set --secret=` per attach, as on ESXi, and of no
    # other process: not the host shell's (it read the secret on stdin), not ansible-playbook's, not the module's
    hits, b.argv_hits = b.argv_hits, []
    assert hits and all("esxcli" in h and "chap set" in h for h in hits), hits[:3]
    b.check_gone()


@pytest.fixture
def journal_dir(tmp_path):
    return str(tmp_path / "journal")


def ssh_args(bed, journal_dir, case, **kw):
    args = dict(bed.conn(), engine="ssh", ssh=bed.ssh(), case_id=case, journal_dir=journal_dir)
    args.update(kw)
    return dict((k, v) for k, v in args.items() if v is not None)


def present_args(bed, journal_dir, case, lun, name, **kw):
    return ssh_args(bed, journal_dir, case, target_address=COLL_STOR, chap_name=CHAP_USER, chap_secret=bed.secret,
                    size_bytes=LUNS[lun][0], serial=LUNS[lun][1], datastore_name=name, **kw)


def teardown(bed, journal_dir, case, check=False):
    return play(bed, "teardown", {"case_id": case, "journal_dir": journal_dir,
                                  "connection": dict(bed.conn(), ssh=bed.ssh())}, check=check)


def journal_path(journal_dir, case):
    return os.path.join(journal_dir, case, socket.gethostname() + ".jsonl")


def changes_of(journal):
    return [x for x in journal_records(journal) if x.get("kind") == "change" and x["action"] != "module.running"]


def no_secret(bed, *texts):
    for text in texts:
        assert bed.secret not in text and bed.env["password"] not in text


# -- the tests, in order: they share one simulator --------------------------------------------------------------

def test_the_api_engine_is_refused_by_the_free_host_and_changes_nothing(bed, journal_dir):
    before, adapter = bed.state()
    assert adapter is None and not before["software_iscsi_enabled"]
    ok, r, out = play(bed, MODULE, dict(bed.conn(), state="adapter", case_id="case-a", journal_dir=journal_dir))
    assert not ok and "RestrictedVersion" in r["msg"], out
    assert "use engine=ssh (or auto)" in r["msg"] and r["engine"] == "api"
    assert bed.state() == (before, None)
    # the record journaled before the refused call is undone as a no-op
    ok, td, out = teardown(bed, journal_dir, "case-a")
    assert ok and td["removed"], out
    said = dict((u["action"], u["result"]) for u in td["undone"])["vsphere.iscsi_adapter"]
    assert said.startswith("software iSCSI on host ") and "is off already" in said
    assert bed.state() == (before, None)


def test_check_mode_changes_nothing_and_state_adapter_gives_the_iqn(bed, journal_dir):
    before, _adapter = bed.state()
    # engine auto on the free host picks the shell; check mode logs in but runs nothing there
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-b", 1, "dfir-case-b", engine="auto"),
                      check=True)
    assert ok and r["changed"] and r["lun"] is None and r["datastore"] is None, out
    assert r["engine"] == "ssh" and r["engine_choice"]["requested"] == "auto"
    assert "free" in r["engine_choice"]["why"] and r["engine_choice"]["licences"][0]["edition_key"] == "esxBasic"
    assert [p.split(" ")[0] for p in r["plan"]] == ["enable", "add", "rescan", "use", "make"], r["plan"]
    assert r["ssh_host_key"]["verified"] and r["ssh_host_key"]["fingerprint_sha256"] == bed.fingerprint
    assert bed.state() == (before, None) and not os.path.exists(journal_dir)
    no_secret(bed, out)

    ok, r, out = play(bed, MODULE, ssh_args(bed, journal_dir, "case-b", state="adapter"))
    assert ok and r["changed"] and r["adapter_enabled_by_us"] and r["engine"] == "ssh", out
    assert r["adapter"]["iqn"] == bed.iqn and r["adapter"]["device"] == "vmhba64"
    assert r["changes"][0].startswith("enabled software iSCSI on host ")
    (rec,) = changes_of(journal_path(journal_dir, "case-b"))
    assert rec["action"] == "vsphere.iscsi_adapter" and rec["undo"]["engine"] == "ssh"
    assert rec["undo"]["ssh_host"] == "127.0.0.1:%d" % bed.sshd_fwd.port
    again = play(bed, MODULE, ssh_args(bed, journal_dir, "case-b", state="adapter"))[1]
    assert again["changed"] is False and again["adapter_enabled_by_us"]
    ok, td, out = teardown(bed, journal_dir, "case-b")
    assert ok and td["removed"], out
    said = dict((u["action"], u["result"]) for u in td["undone"])["vsphere.iscsi_adapter"]
    assert said.startswith("turned software iSCSI on host ")
    assert bed.state() == (before, ("vmhba64", bed.iqn))  # off again; the adapter stays until a reboot (ESXi)


def test_present_makes_the_datastore_on_exactly_the_lun_and_teardown_restores_the_host(bed, journal_dir):
    t0 = time.monotonic()
    before, adapter = bed.state()
    name = "dfir-case-d"
    args = present_args(bed, journal_dir, "case-d", 1, name)
    ok, r, out = play(bed, MODULE, args)
    assert ok and r["changed"] and r["engine"] == "ssh", out
    ds, lun = r["datastore"], r["lun"]
    assert lun["serial"] == LUNS[1][1] and lun["size_bytes"] == LUNS[1][0] and ds["extents"] == [lun["canonical_name"]]
    assert ds["name"] == name and ds["type"] == "VMFS" and re.match(r"^[0-9a-f]{8}-[0-9a-f]{8}-", ds["vmfs_uuid"])
    # CHAP on the send target (`esxcli iscsi adapter discovery sendtarget auth chap set`), the adapter's untouched;
    # a send target the case added takes its CHAP with it at its undo, so CHAP has no journal record of its own
    assert r["chap"] == {"scope": "send_target", "name": CHAP_USER, "level": "chapRequired"}
    assert [c.split(" ")[0] for c in r["changes"]] == ["enabled", "added", "set", "rescanned", "made"], r["changes"]
    assert r["changes"][2] == ("set CHAP (name %s, chapRequired) on the send target %s:3260; the adapter's own CHAP is "
                               "untouched" % (CHAP_USER, COLL_STOR))
    assert "with partedUtil setptbl and vmkfstools -C vmfs6" in r["changes"][-1]
    journal = journal_path(journal_dir, "case-d")
    changes = changes_of(journal)
    assert [(x["action"], x["undo"].get("scope")) for x in changes] == [
        ("vsphere.iscsi_adapter", None), ("vsphere.iscsi_send_target", None), ("vsphere.vmfs_datastore", None)]
    assert all(x["undo"]["engine"] == "ssh" for x in changes)
    with open(journal) as f:
        no_secret(bed, f.read(), out, json.dumps(r))
    # the one partition, VMFS-typed, on the LUN's backing file; the other LUN untouched
    assert gpt(bed.backing[1]) == [(2048, LUNS[1][0] // 512 - 34 - 2048 + 1, VMFS_GUID)] and gpt(bed.backing[2]) == []
    state, _a = bed.state()
    assert name in state["all_datastores"]
    assert state["adapter_chap"] == before["adapter_chap"]
    (st_auth,) = [a for p, a in state["send_targets"] if p == "%s:3260" % COLL_STOR]
    assert (st_auth["chap_auth_enabled"], st_auth["chap_name"], st_auth["chap_type"], st_auth["chap_inherited"]) == (
        True, CHAP_USER, "chapRequired", False)

    ok, again, out = play(bed, MODULE, args)
    assert ok and again["changed"] is False and again["changes"] == [], out
    assert again["datastore"]["vmfs_uuid"] == ds["vmfs_uuid"] and "already" in again["note"]

    # evidence written on the datastore by the host's shell
    rc, out = bed.shell("mkdir -p /vmfs/volumes/%s/case-d && echo 'evidence %s' > /vmfs/volumes/%s/case-d/e.txt"
                        % (name, TAG, name))
    assert rc == 0, out
    ok, plan, out = teardown(bed, journal_dir, "case-d", check=True)
    assert ok and plan["undone"][0]["result"].startswith("would unmount the VMFS datastore %r" % name), out
    assert "`esxcli storage filesystem unmount`" in plan["undone"][0]["result"]
    assert name in bed.state()[0]["all_datastores"]
    ok, td, out = teardown(bed, journal_dir, "case-d")
    assert ok and td["removed"], out
    results = dict((u["action"], u["result"]) for u in td["undone"])
    assert results["vsphere.vmfs_datastore"].startswith(
        "unmounted the VMFS datastore %r on the LUN %s of host " % (name, lun["canonical_name"]))
    assert "with `esxcli storage filesystem unmount`, never RemoveDatastore" in results["vsphere.vmfs_datastore"]
    assert re.search(r"; detached the LUN \(`esxcli storage core device set --state=off`; its send target's undo "
                     r"forgets its state\) \(\d+\.\d s\)$", results["vsphere.vmfs_datastore"]), results
    assert "vsphere.iscsi_chap" not in results
    assert "are gone" in results["vsphere.iscsi_send_target"]
    # LAB: the simulator's API shows no detached state (no DetachScsiLun: the lab's esxcli keeps its own list), so the
    # send target's undo, which forgets the devices the API shows off, runs no `detached remove`; the lab's list drops
    # the LUN once the rescan took it away (ESXi keeps it until `detached remove`)
    assert "forgot the detached state" not in results["vsphere.iscsi_send_target"]
    assert bed.shell("esxcli --formatter=csv storage core device detached list") == (0, "DeviceUID,State,\n")
    no_secret(bed, out)
    # as found; the adapter stays once made (until a reboot, as on ESXi)
    assert bed.state() == (before, ("vmhba64", bed.iqn)) and adapter in (None, ("vmhba64", bed.iqn))
    # the evidence stays on the LUN
    assert gpt(bed.backing[1]) == [(2048, LUNS[1][0] // 512 - 34 - 2048 + 1, VMFS_GUID)]
    assert debugfs_cat(bed.backing[1], 2048 * 512, "/case-d/e.txt") == ("evidence %s\n" % TAG).encode()
    print("\n".join(r["changes"] + [u["result"] for u in td["undone"]]))
    print("present + rerun + teardown over SSH: %.1f s" % (time.monotonic() - t0))


def test_a_lun_holding_partitions_is_never_formatted_and_state_absent_undoes_over_ssh(bed, journal_dir):
    """LUN 1 holds the VMFS of the case before (released, kept): a new case given the same LUN is refused, nothing of
    the LUN changes; state=absent with the SSH engine undoes what it did."""
    before, adapter = bed.state()
    digest = sha256_file(bed.backing[1])
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-h", 1, "dfir-case-h"))
    assert not ok and r["changed"] is True, out
    end = LUNS[1][0] // 512 - 34
    assert r["msg"].startswith("The LUN naa.") and (
        " holds partition 1 (vmfs, sectors 2048-%d) already (a VMFS of an earlier run?); it is never formatted again. "
        "No datastore was made and nothing was formatted" % end) in r["msg"], r["msg"]
    assert "run teardown for the case (with the vSphere connection and its ssh options)" in r["msg"]
    no_secret(bed, out)
    assert "dfir-case-h" not in bed.state()[0]["all_datastores"]
    ok, gone, out = play(bed, MODULE, ssh_args(bed, journal_dir, "case-h", state="absent"))
    assert ok and gone["changed"], out
    assert [u["action"] for u in gone["undone"]] == ["vsphere.iscsi_send_target", "vsphere.iscsi_adapter"]
    assert bed.state() == (before, adapter)
    assert sha256_file(bed.backing[1]) == digest
    ok, td, out = teardown(bed, journal_dir, "case-h")
    assert ok and td["undone"] == [], out
