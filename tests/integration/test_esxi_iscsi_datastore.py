# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""esxi_iscsi_datastore and its teardown, played with ansible-playbook against the lab's simulated ESXi host, whose
storage extension really logs in to a tgt target and makes a VMFS-typed GPT partition (ext4 stand-in) on the LUN
(lab/vcsim/BEHAVIOUR-storage.md).

A test bed of its own, built with tests/integration/storage_bed.py as tests/integration/lab/test_vcsim_storage.py
builds one: two network namespaces named after this process ("ESXi host", "collector") joined by a veth storage link,
a tgtd of its own on a private control port in the collector namespace, set up through the collection's TgtClient
(the CHAP secret never in an argv), vcsim built and run in $LAB_DIR (default /var/tmp/vmcollect-lab; give another,
e.g. LAB_DIR=/var/tmp/e-lab, to keep away from a shared lab) inside the ESXi namespace, and a TCP forwarder on
127.0.0.1 that the modules connect through (pinned thumbprint). Everything started is stopped at the end and checked
gone. Module arguments go to ansible-playbook in a 0600 playbook file, never on a command line.

The target offers five LUNs with distinct serials (tgt's scsi_sn/scsi_id): two of 64 MiB (so a size alone is
ambiguous), one of 48 MiB, one of 40 MiB (the earlier case's VMFS that is never formatted again) and one of 32 MiB (the
vCenter test's). What teardown must restore is compared property by
property (software iSCSI flag, adapter CHAP, send and static targets, iSCSI disks, VMFS mounts, the host's and the
datacenter's datastores); the adapter itself stays once made, as on ESXi until a reboot, which the undo says. A second
simulator in vCenter mode (same namespace, port 444) shows that only the host named by esxi_hostname is changed.
Takes ~50-100 s once vcsim is built.

What the lab's simulator does not do is tolerated only where a comment starting with "SIMULATOR:" says so.
"""

import json
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time

import pytest

import storage_bed
from conftest import VENV_BIN, journal_records, localhost_ansible, sha256_file
from storage_bed import VMFS_GUID, attached, debugfs_cat, gpt
from vcsim_helpers import NEEDS_BUILD, build

pyVmomi = pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import VsphereClient  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage as vst  # noqa: E402

TAG = "eisd%d" % (os.getpid() % 100000)
NS_ESX, NS_COLL = TAG + "-esx", TAG + "-coll"
COLL_STOR, ESX_STOR, ESX_MGMT = "10.213.210.5", "10.213.210.6", "10.213.210.10"
TARGET_IQN = "iqn.2026-01.io.dfir.vmcollect.test:%s" % TAG
CHAP_USER = "esxi-%s" % TAG
MIB = 1 << 20
# lun number -> (size, serial, scsi_id)
LUNS = {n: (size, "EISD%d%05d" % (n, os.getpid() % 100000), "EISDID%d%05d" % (n, os.getpid() % 100000))
        for n, size in ((1, 64 * MIB), (2, 64 * MIB), (3, 48 * MIB), (4, 32 * MIB), (5, 40 * MIB))}
MODULE = "esxi_iscsi_datastore"

pytestmark = [storage_bed.NEEDS_ROOT, NEEDS_BUILD, storage_bed.NEEDS_TOOLS]


class Endpoint(storage_bed.Simulator):
    """One simulator (its env file) in the ESXi namespace and the forwarder the modules reach it through."""

    def __init__(self, envfile, port, args=""):
        super(Endpoint, self).__init__(envfile, NS_ESX, (ESX_MGMT, port), args)

    def conn(self):
        return {"hostname": "127.0.0.1", "port": self.fwd.port, "username": self.env["username"],
                "password": self.env["password"], "thumbprint": self.env["thumbprint_sha256"]}

    def client(self):
        return VsphereClient("127.0.0.1", self.env["username"], self.env["password"], port=self.fwd.port,
                             thumbprint=self.env["thumbprint_sha256"])

    def state(self, host_name=None):
        """The host's storage, property by property, as teardown must leave it; and the adapter (which stays)."""
        with self.client() as client:
            host = vst.find_host(client, host_name)
            info, fs = host.storage(client)
            hba = vst.software_adapter(info)
            ds_host = sorted(client.properties(ds, ["name"])["name"]
                             for ds in client.properties(host.obj, ["datastore"]).get("datastore") or [])
            ds_all = sorted(v["name"] for _d, v in client.retrieve(vim.Datastore, ["name"]))
        disks = vst.disk_views(info)
        state = {
            "software_iscsi_enabled": bool(info.softwareInternetScsiEnabled),
            # no adapter has no CHAP: what an adapter with CHAP off shows
            "adapter_chap": vst.chap_text(hba["auth"] if hba else vst.auth_view(None)),
            "send_targets": [(s["portal"], s["auth"]) for s in hba["send_targets"]] if hba else [],
            "static_targets": [(s["iqn"], s["parent"]) for s in hba["static_targets"]] if hba else [],
            "iscsi_disks": sorted((d["canonical_name"], d["serial"], tuple(d["operational_state"])) for d in disks
                                  if hba and any(p["adapter"] == hba["key"] for p in d["paths"])),
            "all_disks": sorted(d["canonical_name"] for d in disks),
            "vmfs_mounts": sorted((v["name"], v["uuid"], v["mounted"]) for v in vst.vmfs_volumes(fs)),
            "host_datastores": ds_host, "all_datastores": ds_all,
        }
        adapter = (hba["device"], hba["iqn"]) if hba else None
        return state, adapter


class Bed(storage_bed.StorageBed):
    """The storage bed with tgtd's four LUNs and the simulated ESXi host (an Endpoint); the state readers the tests
    compare."""

    ns_esx, ns_coll, coll_stor, esx_stor, esx_mgmt = NS_ESX, NS_COLL, COLL_STOR, ESX_STOR, ESX_MGMT
    target_iqn, chap_user, port_base = TARGET_IQN, CHAP_USER, 23000

    def __init__(self, tmp):
        super(Bed, self).__init__(tmp)
        self.esx = Endpoint(os.path.join(tmp, "vcsim-%s.json" % TAG), 443)
        self.backing = dict((n, os.path.join(tmp, "lun%d.img" % n)) for n in LUNS)
        self.luns = dict((n, (self.backing[n],) + LUNS[n]) for n in LUNS)

    # -- the simulated ESXi host -----------------------------------------------------------------------------
    def conn(self):
        return self.esx.conn()

    def client(self):
        return self.esx.client()

    def state(self):
        return self.esx.state()

    def disk(self, lun):
        """The host's disk of a LUN of ours, by serial, or None."""
        with self.client() as client:
            info, _fs = vst.find_host(client).storage(client)
        return next((d for d in vst.disk_views(info) if d["serial"] == LUNS[lun][1]), None)

    def put_file(self, datastore, path, data):
        """A file written onto the datastore through the API: FileManager for its folder, /folder PUT for it."""
        with self.client() as client:
            dc = self.env["datacenters"][0]
            dcobj = [d for d, v in client.retrieve(vim.Datacenter, ["name"]) if v["name"] == dc][0]
            folder = os.path.dirname(path)
            if folder:
                client.content.fileManager.MakeDirectory("[%s] %s" % (datastore, folder), dcobj, True)
            conn = client.http_connection()
            try:
                conn.request("PUT", "/folder/%s?dcPath=%s&dsName=%s" % (path, dc, datastore), body=data,
                             headers={"Cookie": client.cookie_header(), "Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                resp.read()
                assert resp.status in (200, 201), resp.status
            finally:
                conn.close()


def play(bed, module, args, check=False, popen=False, tmp=None):
    """Run one module on localhost with ansible-playbook (the venv's Python, the built collection), its arguments in
    a 0600 playbook file: (ok, result, output), or the Popen with popen."""
    fd, path = tempfile.mkstemp(prefix="eisd-play-", suffix=".yml", dir=tmp or bed.tmp)
    with os.fdopen(fd, "w") as f:
        json.dump([{"hosts": "localhost", "gather_facts": False,
                    "tasks": [{"name": "run", "dfir.vmcollect." + module: args}]}], f)
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", path,
           "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        cmd.append("--check")
    if popen:
        return localhost_ansible(cmd, popen=True, ANSIBLE_STDOUT_CALLBACK="minimal")
    try:
        out = localhost_ansible(cmd, ANSIBLE_STDOUT_CALLBACK="minimal")
    finally:
        os.remove(path)
    start = out.find("=> {")
    assert start >= 0, out
    end = out.rfind("}")
    return ("FAILED" not in out[:start].rsplit("\n", 1)[-1]), json.loads(out[start + 3:end + 1]), out


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    build()
    b = Bed(str(tmp_path_factory.mktemp("esxi-iscsi")))
    with b.running():
        yield b
    assert b.stopped.returncode == 0, b.stopped.stdout
    b.check_gone()


@pytest.fixture
def journal_dir(tmp_path):
    return str(tmp_path / "journal")


def present_args(bed, journal_dir, case, lun, name, **kw):
    args = dict(bed.conn(), case_id=case, journal_dir=journal_dir, target_address=COLL_STOR, chap_name=CHAP_USER,
                chap_secret=bed.secret, size_bytes=LUNS[lun][0], serial=LUNS[lun][1], datastore_name=name)
    args.update(kw)
    return dict((k, v) for k, v in args.items() if v is not None)


def teardown(bed, journal_dir, case, check=False):
    return play(bed, "teardown", {"case_id": case, "journal_dir": journal_dir, "connection": bed.conn()}, check=check)


def journal_path(journal_dir, case):
    return os.path.join(journal_dir, case, socket.gethostname() + ".jsonl")


# -- the tests, in order: they share one simulator --------------------------------------------------------------

def test_check_mode_changes_nothing_and_state_adapter_gives_the_iqn(bed, journal_dir):
    t0 = time.monotonic()
    before, adapter = bed.state()
    assert adapter is None and not before["software_iscsi_enabled"]
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-a", 1, "dfir-case-a"), check=True)
    assert ok and r["changed"] and r["lun"] is None and r["datastore"] is None, out
    assert [p.split(" ")[0] for p in r["plan"]] == ["enable", "add", "rescan", "use", "make"], r["plan"]
    assert r["adapter"] is None and r["note"].startswith("Check mode: nothing was changed.")
    ok, r, out = play(bed, MODULE, dict(bed.conn(), state="adapter", case_id="case-a", journal_dir=journal_dir),
                      check=True)
    assert ok and r["changed"] and r["plan"][0].startswith("enable software iSCSI on host"), out
    assert bed.state() == (before, None) and not os.path.exists(journal_dir)

    ok, r, out = play(bed, MODULE, dict(bed.conn(), state="adapter", case_id="case-a", journal_dir=journal_dir))
    assert ok and r["changed"] and r["adapter_enabled_by_us"], out
    iqn = r["adapter"]["iqn"]
    assert iqn == bed.env["lab"]["storage"]["hosts"][0]["iscsi_name"] and r["adapter"]["device"] == "vmhba64"
    assert re.match(r"^iqn\.1998-01\.com\.vmware:[a-z0-9-]+-[0-9a-f]{8}$", iqn)
    assert "only at the host's next reboot" in r["note"]
    records = journal_records(journal_path(journal_dir, "case-a"))
    assert [x["action"] for x in records if x.get("kind") == "change" and x["action"] != "module.running"] == \
        ["vsphere.iscsi_adapter"]
    # the collector admits the adapter's IQN (what the role will do with this result)
    bed.tgt.bind_initiator_name(1, iqn)
    again = play(bed, MODULE, dict(bed.conn(), state="adapter", case_id="case-a", journal_dir=journal_dir))[1]
    assert again["changed"] is False and again["adapter_enabled_by_us"] and again["adapter"]["iqn"] == iqn

    ok, td, out = teardown(bed, journal_dir, "case-a")
    assert ok and td["removed"], out
    (undone,) = [u for u in td["undone"] if u["action"] == "vsphere.iscsi_adapter"]
    assert undone["result"].startswith("turned software iSCSI on host ")
    assert "ESXi removes the adapter vmhba64 (IQN %s) only at the host's next reboot" % iqn in undone["result"]
    after, adapter = bed.state()
    assert after == before and adapter == ("vmhba64", iqn)  # the flag is off again; the adapter stays until a reboot
    assert time.monotonic() - t0 < 120


def test_a_wrong_chap_secret_finds_no_lun_and_teardown_restores_the_host(bed, journal_dir):
    before, adapter = bed.state()
    wrong = "wrong-" + secrets.token_hex(6)
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-b", 1, "dfir-case-b", chap_secret=wrong))
    assert not ok and r["changed"] is True, out
    msg = r["msg"]
    assert msg.startswith("No disk of 67108864 bytes (64 MiB) with serial %r is reached through %s:3260 on the "
                          "adapter vmhba64 of host " % (LUNS[1][1], COLL_STOR)), msg
    assert ("the target %s was discovered through it but gave no disk: the collector refused the login (a wrong CHAP "
            "name or secret, or the adapter's IQN %s is not admitted)" % (TARGET_IQN, adapter[1])) in msg
    assert "No datastore was made. The changes made so far (" in msg and "run teardown for the case" in msg
    assert wrong not in out and bed.secret not in out
    assert re.search(r"login failed: .*Authentication failure", bed.log_text())
    state, _a = bed.state()
    assert state["software_iscsi_enabled"] and state["send_targets"] and state["iscsi_disks"] == []
    ok, td, out = teardown(bed, journal_dir, "case-b")
    assert ok and td["removed"], out
    assert [u["action"] for u in td["undone"] if u["action"] != "module.running"] == \
        ["vsphere.iscsi_send_target", "vsphere.iscsi_adapter"]
    assert bed.state() == (before, adapter)


def test_a_size_that_two_luns_share_is_refused_listing_both(bed, journal_dir):
    before, adapter = bed.state()
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-c", 1, "dfir-case-c", serial=None))
    assert not ok, out
    assert r["msg"].startswith("2 disks of 67108864 bytes (64 MiB) are reached through"), r["msg"]
    for lun in (1, 2):
        assert "serial %r" % LUNS[lun][1] in r["msg"]
    assert "Give serial (or canonical_name) to pick one; no disk was touched." in r["msg"]
    assert bed.state()[0]["all_datastores"] == before["all_datastores"]
    ok, td, out = teardown(bed, journal_dir, "case-c")
    assert ok and td["removed"] and bed.state() == (before, adapter), out


# outside the CI budget (make test-slow); in CI: test_acquire_esxi_iscsi.py attaches, writes, reruns and restores
@pytest.mark.slow
def test_present_attaches_writes_land_on_the_lun_rerun_is_idempotent_teardown_restores(bed, journal_dir):
    t0 = time.monotonic()
    before, adapter = bed.state()
    name = "dfir-case-d"
    args = present_args(bed, journal_dir, "case-d", 1, name)
    ok, r, out = play(bed, MODULE, args)
    took = time.monotonic() - t0
    assert ok and r["changed"], out
    ds, lun = r["datastore"], r["lun"]
    assert ds["name"] == name and ds["type"] == "VMFS" and ds["moref"] == ds["vmfs_uuid"]  # ESXi: the VMFS UUID
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{12}$", ds["vmfs_uuid"]) and ds["vmfs_version"]
    assert 0 < ds["free_space"] <= ds["capacity"] < LUNS[1][0] and ds["url"]
    assert lun["serial"] == LUNS[1][1] and lun["size_bytes"] == LUNS[1][0] and ds["extents"] == [lun["canonical_name"]]
    assert re.match(r"^naa\.6[0-9a-f]{31}$", lun["canonical_name"])
    assert r["adapter"] == {"device": "vmhba64", "iqn": adapter[1], "model": "iSCSI Software Adapter",
                            "enabled_by_us": True} and r["adapter_enabled_by_us"] is True
    assert r["chap"] == {"scope": "send_target", "name": CHAP_USER, "level": "chapRequired"}
    assert r["send_target"] == {"address": COLL_STOR, "port": 3260, "portal": "%s:3260" % COLL_STOR}
    assert [c.split(" ")[0] for c in r["changes"]] == ["enabled", "added", "set", "rescanned", "made"], r["changes"]
    # the host listed the LUN's partitions before it formatted it: none (the lab reads the table read-only)
    assert "partitions" not in r["note"]
    assert re.search(r"RetrieveDiskPartitionInfo %s: unknown, no partitions \(read through a read-only export"
                     % re.escape(lun["canonical_name"]), bed.log_text())
    journal = journal_path(journal_dir, "case-d")
    changes = [x for x in journal_records(journal) if x.get("kind") == "change" and x["action"] != "module.running"]
    assert [x["action"] for x in changes] == ["vsphere.iscsi_adapter", "vsphere.iscsi_send_target",
                                              "vsphere.vmfs_datastore"]
    assert changes[2]["undo"]["lun"]["canonical_name"] == lun["canonical_name"]
    with open(journal) as f:
        text = f.read()
    assert bed.secret not in text and bed.env["password"] not in text
    assert bed.secret not in out and bed.secret not in bed.log_text()

    state, _a = bed.state()
    assert name in state["host_datastores"] and name in state["all_datastores"]
    ok, again, out = play(bed, MODULE, args)
    assert ok and again["changed"] is False and again["changes"] == [], out
    assert again["datastore"]["moref"] == ds["moref"] and "already" in again["note"]
    ok, again, out = play(bed, MODULE, args, check=True)
    assert ok and again["changed"] is False, out
    # the name taken by another LUN's datastore is refused before any change
    ok, other, out = play(bed, MODULE, present_args(bed, journal_dir, "case-x", 3, name))
    assert not ok and other["msg"].startswith("A datastore named %r exists" % name), out
    assert other["msg"].endswith("choose another datastore_name. Nothing was changed.")
    assert not os.path.exists(os.path.join(journal_dir, "case-x"))

    payload = ("evidence written through the vSphere API %s\n" % TAG).encode() * 200
    bed.put_file(name, "case-d/vm1.vmdk", payload)
    bed.put_file(name, "manifest.json", b'{"case": "case-d"}\n')

    ok, plan, out = teardown(bed, journal_dir, "case-d", check=True)
    assert ok and plan["undone"][0]["result"].startswith("would unmount the VMFS datastore %r" % name), out
    assert name in bed.state()[0]["host_datastores"]
    t1 = time.monotonic()
    ok, td, out = teardown(bed, journal_dir, "case-d")
    assert ok and td["removed"], out
    results = dict((u["action"], u["result"]) for u in td["undone"])
    assert results["vsphere.vmfs_datastore"].startswith(
        "unmounted the VMFS datastore %r on the LUN %s of host " % (name, lun["canonical_name"]))
    assert "never RemoveDatastore" in results["vsphere.vmfs_datastore"]
    # SIMULATOR: no DetachScsiLun in govmomi 0.24.2: the LUN goes with its send target
    assert "cannot detach the LUN (DetachScsiLun: MethodNotFound)" in results["vsphere.vmfs_datastore"]
    gone = re.search(r"the LUN\(s\) (.*) are gone", results["vsphere.iscsi_send_target"]).group(1).split(", ")
    assert lun["canonical_name"] in gone and len(gone) == len(LUNS)  # all the target's LUNs
    assert bed.state() == (before, adapter)
    # the evidence stays on the LUN: the VMFS-typed partition and the files, read from tgt's backing file
    assert gpt(bed.backing[1]) == [(2048, LUNS[1][0] // 512 - 34 - 2048 + 1, VMFS_GUID)]
    assert debugfs_cat(bed.backing[1], 2048 * 512, "/case-d/vm1.vmdk") == payload
    print("present %.1f s, teardown %.1f s" % (took, time.monotonic() - t1))


def test_a_module_killed_while_the_datastore_is_made_is_undone_by_teardown(bed, journal_dir):
    before, adapter = bed.state()
    name = "dfir-case-e"
    journal = journal_path(journal_dir, "case-e")
    proc = play(bed, MODULE, present_args(bed, journal_dir, "case-e", 2, name), popen=True)
    deadline = time.monotonic() + 120
    while True:
        records = journal_records(journal)
        if [x for x in records if x.get("action") == "vsphere.vmfs_datastore"]:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.002)
    # the module (its pid is in its at-work record) is stopped right after it journaled the datastore, and let run in
    # short steps until the host has made the datastore it asked for; then kill -9, the module and ansible-playbook
    module_pid = [x["undo"]["pid"] for x in records if x.get("action") == "module.running"][0]
    os.kill(module_pid, signal.SIGSTOP)
    while name not in bed.state()[0]["host_datastores"]:
        assert time.monotonic() < deadline, "the killed module's datastore never appeared"
        os.kill(module_pid, signal.SIGCONT)
        time.sleep(0.005)
        os.kill(module_pid, signal.SIGSTOP)
        time.sleep(0.3)
    os.kill(module_pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    records = journal_records(journal)
    change = [x for x in records if x.get("action") == "vsphere.vmfs_datastore"][0]
    assert not [x for x in records if x.get("kind") == "applied" and x["ref"] == change["id"]]
    bed.put_file(name, "after-the-kill.txt", b"still evidence\n")
    ok, td, out = teardown(bed, journal_dir, "case-e")
    assert ok and td["removed"], out
    assert td["undone"][0]["action"] == "module.running"
    results = dict((u["action"], u["result"]) for u in td["undone"])
    assert results["vsphere.vmfs_datastore"].startswith("unmounted the VMFS datastore %r" % name)
    assert bed.state() == (before, adapter)
    assert gpt(bed.backing[2])[0][2] == VMFS_GUID
    assert debugfs_cat(bed.backing[2], 2048 * 512, "/after-the-kill.txt") == b"still evidence\n"


# outside the CI budget (make test-slow); in CI: the role releases the datastore with state=absent in test_acquire_esxi_iscsi.py
@pytest.mark.slow
def test_state_absent_undoes_the_case_now_and_teardown_finds_nothing_left(bed, journal_dir):
    before, adapter = bed.state()
    name = "dfir-case-f"
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-f", 3, name, chap_required=False))
    assert ok and r["lun"]["size_bytes"] == 48 * MIB and r["chap"]["level"] == "chapPreferred", out
    ok, plan, out = play(bed, MODULE, dict(bed.conn(), state="absent", case_id="case-f", journal_dir=journal_dir),
                         check=True)
    assert ok and plan["changed"] and plan["undone"][0]["result"].startswith("would unmount"), out
    assert name in bed.state()[0]["host_datastores"]
    ok, r, out = play(bed, MODULE, dict(bed.conn(), state="absent", case_id="case-f", journal_dir=journal_dir))
    assert ok and r["changed"], out
    assert [u["action"] for u in r["undone"]] == [
        "vsphere.vmfs_datastore", "vsphere.iscsi_send_target", "vsphere.iscsi_adapter"]
    assert bed.state() == (before, adapter)
    records = journal_records(journal_path(journal_dir, "case-f"))
    undone = set(x["ref"] for x in records if x.get("kind") == "undone")
    assert all(x["id"] in undone for x in records if x.get("kind") == "change")
    again = play(bed, MODULE, dict(bed.conn(), state="absent", case_id="case-f", journal_dir=journal_dir))[1]
    assert again["changed"] is False and again["undone"] == []
    ok, td, out = teardown(bed, journal_dir, "case-f")
    assert ok and td["removed"] and td["undone"] == [], out
    assert bed.state() == (before, adapter)
    assert gpt(bed.backing[3])[0][2] == VMFS_GUID


def test_a_lun_holding_an_earlier_cases_vmfs_is_never_formatted_again(bed, journal_dir):
    """Case G makes its datastore on LUN 5 and state=absent releases it (unmounted, the volume kept on the LUN); case H,
    given the same LUN (same size and serial), is refused: the host lists the LUN's VMFS partition, and nothing of the
    LUN changes (tgt's backing file hashed before and after; the GPT and the stand-in's files read from it)."""
    t0 = time.monotonic()
    before, adapter = bed.state()
    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-g", 5, "dfir-case-g"))
    assert ok and r["changed"] and r["lun"]["serial"] == LUNS[5][1], out
    lun = r["lun"]["canonical_name"]
    payload = ("evidence of case G %s\n" % TAG).encode() * 100
    bed.put_file("dfir-case-g", "case-g/vm1.vmdk", payload)
    ok, r, out = play(bed, MODULE, dict(bed.conn(), state="absent", case_id="case-g", journal_dir=journal_dir))
    assert ok and r["changed"] and r["undone"][0]["result"].startswith("unmounted the VMFS datastore 'dfir-case-g'"), out
    assert bed.state() == (before, adapter)
    end = LUNS[5][0] // 512 - 34
    assert gpt(bed.backing[5]) == [(2048, end - 2048 + 1, VMFS_GUID)]
    digest = sha256_file(bed.backing[5])

    ok, r, out = play(bed, MODULE, present_args(bed, journal_dir, "case-h", 5, "dfir-case-h"))
    assert not ok and r["changed"] is True, out
    msg = r["msg"]
    assert msg.startswith(
        "The LUN %s holds partition 1 (vmfs, sectors 2048-%d) already (a VMFS of an earlier run?); it is never formatted "
        "again. No datastore was made and nothing was formatted: mount what it holds by hand after checking it, or give "
        "the collector a new LUN. The changes made so far (" % (lun, end)), msg
    assert "run teardown for the case (with the vSphere connection) to undo them." in msg
    # the host read the LUN's table through a read-only export, and stopped it again
    assert re.search(r"RetrieveDiskPartitionInfo %s: gpt, partitions \[1 vmfs 2048-%d\] \(read through a read-only "
                     r"export" % (re.escape(lun), end), bed.log_text())
    state, _a = bed.state()
    assert "dfir-case-h" not in state["all_datastores"] and attached(bed.esx.state_dir) == []
    ok, td, out = teardown(bed, journal_dir, "case-h")
    assert ok and td["removed"], out
    assert [u["action"] for u in td["undone"] if u["action"] != "module.running"] == \
        ["vsphere.iscsi_send_target", "vsphere.iscsi_adapter"]
    assert bed.state() == (before, adapter)
    assert sha256_file(bed.backing[5]) == digest
    assert gpt(bed.backing[5]) == [(2048, end - 2048 + 1, VMFS_GUID)]
    assert debugfs_cat(bed.backing[5], 2048 * 512, "/case-g/vm1.vmdk") == payload
    print("earlier case's VMFS refused: %.1f s" % (time.monotonic() - t0))


# -- through a vCenter --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vcenter(bed):
    """The simulator in vCenter mode (-mode vpx: a datacenter, a standalone host and a cluster of three), in the same
    namespace, so each of its hosts reaches the collector over the same storage link."""
    ep = Endpoint(os.path.join(bed.tmp, "vcsim-%s-vpx.json" % TAG), 444, args="-mode vpx")
    try:
        ep.start()
        yield ep
    finally:
        stop = ep.stop()
    assert stop.returncode == 0, stop.stdout
    ep.check_gone()


def test_through_a_vcenter_only_the_named_host_is_changed_and_restored(bed, vcenter, journal_dir):
    t0 = time.monotonic()
    names = sorted(h["name"] for h in vcenter.env["lab"]["storage"]["hosts"])
    assert len(names) > 1 and vcenter.env["api_type"] == "VirtualCenter"
    target = names[-1]
    conn = vcenter.conn()
    ok, r, out = play(bed, MODULE, dict(conn, state="adapter", case_id="case-v", journal_dir=journal_dir))
    assert not ok and r["msg"].startswith("127.0.0.1:%d is a vCenter with %d host(s) (" % (conn["port"], len(names))), out
    assert r["msg"].endswith("give esxi_hostname to name the one to attach the LUN to. Nothing was changed.")
    before = dict((n, vcenter.state(n)) for n in names)

    ok, r, out = play(bed, MODULE, dict(conn, state="adapter", esxi_hostname=target, case_id="case-v",
                                        journal_dir=journal_dir))
    assert ok and r["host"]["name"] == target and r["host"]["moref"].startswith("host-"), out
    bed.tgt.bind_initiator_name(1, r["adapter"]["iqn"])
    args = present_args(bed, journal_dir, "case-v", 4, "dfir-case-v", esxi_hostname=target)
    args.update(conn)
    ok, r, out = play(bed, MODULE, args)
    assert ok and r["changed"] and r["lun"]["serial"] == LUNS[4][1], out
    assert r["datastore"]["moref"].startswith("datastore-") and r["datastore"]["moref"] != r["datastore"]["vmfs_uuid"]
    for n in names:
        if n != target:  # the datacenter lists the new datastore; nothing of the other hosts changed
            state, adapter = vcenter.state(n)
            assert dict(state, all_datastores=None) == dict(before[n][0], all_datastores=None) and \
                adapter == before[n][1], n
    assert "dfir-case-v" in vcenter.state(target)[0]["host_datastores"]

    ok, td, out = play(bed, "teardown", {"case_id": "case-v", "journal_dir": journal_dir, "connection": conn})
    assert ok and td["removed"], out
    for n in names:
        assert vcenter.state(n) == before[n] if n != target else vcenter.state(n)[0] == before[n][0], n
    assert gpt(bed.backing[4])[0][2] == VMFS_GUID
    print("vCenter: %.1f s" % (time.monotonic() - t0))
