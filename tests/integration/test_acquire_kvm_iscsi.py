# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/acquire_kvm.yml in iSCSI mode, end to end on the lab: kvm1 acquires onto a LUN of collector1.

The proof the issue asks for: the collector is provisioned, the LUN attached to the KVM host (userspace
initiator), the RAM image and the disks written onto it and hashed at the source, the LUN detached and
switched read-only, and the collector re-hashes every artifact from the backing file against the
manifest. Afterwards both hosts are as found (no target, no tgtd, no firewall table, no daemon, loop
device or mount, no journal; the domain definition byte-identical), and the backing file, read here
independently through a read-only loop device, holds evidence that `sha256sum -c` accepts. Also: check
mode changes nothing; a second run copies nothing again; a LUN too small for the plan is refused before
anything changes; the storage link cut during a copy gives a clear error, no artifact marked verified,
and both hosts clean.
"""

import json
import os
import random
import re
import string
import subprocess
import time

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.names import derive_iqn
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.target import firewall_table
from conftest import ROOT, ansible_env, case_journal_records, pending_at_work, sha256_file
from test_iscsi_target_secrets import Sampler

VIRSH = ["virsh", "-c", "qemu:///system"]
PLAYBOOK = os.path.join(ROOT, "playbooks", "acquire_kvm.yml")
TEARDOWN = os.path.join(ROOT, "playbooks", "teardown.yml")
CASE = "case-iscsi-1"


def _out(cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout


def _ssh(lab, host_index, command):
    host = lab["hosts"][host_index]
    return subprocess.run(["ssh", "-F", lab["ssh"]["config"], "root@" + host["mgmt_address"], command],
                          check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def _records(backing):
    with open(backing + ".verified.jsonl") as f:
        return [json.loads(line) for line in f]


def _define_shut_off_vm(name, disk, xml, block=False):
    """Define (not start) a 64 MiB VM whose one disk is the raw file ``disk`` (a block device with ``block``)."""
    kind, source = ("block", "dev") if block else ("file", "file")
    with open(xml, "w") as f:
        f.write("""<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='%s' device='disk'><driver name='qemu' type='raw'/><source %s='%s'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>""" % (name, kind, source, disk))
    subprocess.run(VIRSH + ["define", xml], check=True, stdout=subprocess.DEVNULL)


def _recap(stdout, host):
    m = re.search(r"^%s\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)" % host, stdout, re.M)
    assert m, stdout[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def _args(lab, work, case, vms, memory="background_snapshot", extra=()):
    return ["-e", "vmcollect_transport=iscsi", "-e", "kvm_acquire_case_id=" + case,
            "-e", json.dumps({"kvm_acquire_examiner": "CI examiner"}), "-e", json.dumps({"kvm_acquire_vms": vms}),
            "-e", "kvm_acquire_memory_method=" + memory, "-e", json.dumps({"kvm_acquire_algorithms": ["sha256", "md5"]}),
            "-e", "kvm_acquire_journal_dir=%s/journal" % work, "-e", "collector_journal_dir=%s/journal" % work,
            "-e", "collector_dir=%s/collector" % work, "-e", "collector_verify_dir=%s/verify" % work,
            "-e", "vmcollect_mount_dir=%s/volume" % work] + list(extra)


def _host_traces(lab, work, case):
    """Everything the collection could leave behind on the two hosts for a case (empty when clean)."""
    traces = []
    if os.path.exists(os.path.join(work, "journal", case)):
        traces.append("journal folder %s" % os.listdir(os.path.join(work, "journal", case)))
    ps = _out(["ps", "-eo", "pid,args"])
    for line in ps.splitlines():
        if ("qemu-storage-daemon" in line and case in line) or re.search(r"tgtd -C 60 ", line):
            traces.append("process: " + line.strip())
    ruleset = subprocess.run(["ip", "netns", "exec", lab["hosts"][1]["netns"], "nft", "list", "tables"], check=False,
                             stdout=subprocess.PIPE, universal_newlines=True).stdout
    # the case's own table (an ESXi case may run on collector1 at the same time: tests/integration/conftest.py)
    table = firewall_table(derive_iqn(case, "kvm1"), 60)
    traces += ["nft table on the collector: " + t for t in ruleset.splitlines() if t.split()[-1:] == [table]]
    for i in (0, 1):
        mounts = _ssh(lab, i, "cat /proc/self/mountinfo").stdout
        traces += ["mount on host %d: %s" % (i, m) for m in mounts.splitlines() if work in m]
    loops = _out(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"])
    traces += ["loop: " + lo for lo in loops.splitlines() if work in lo]
    return traces


def _read_volume(backing, script):
    """Run ``script`` (bash, $MNT = the volume's root) on a read-only loop mount of a backing file, in a
    mount namespace of its own, as an examiner would: not a byte of the backing file can change."""
    wrapped = """set -euo pipefail
LOOP=$(losetup --read-only --find --show "$1")
MNT=$(mktemp -d)
trap 'cd /; umount "$MNT"; losetup -d "$LOOP"; rmdir "$MNT"' EXIT
mount -o ro,noload "$LOOP" "$MNT"
%s
""" % script
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", wrapped, "read_volume", backing],
                          check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


@pytest.fixture(scope="module")
def iscsi(lab, ansible_playbook):
    guest = lab["guest"]
    work = os.path.join(lab["work_dir"], "e2e-iscsi")
    # what an earlier, interrupted session left (every host of the lab journals in this folder of the one filesystem;
    # a case's journal is gone once its teardown has undone everything)
    if os.path.isdir(os.path.join(work, "journal")):
        for case in (CASE, "case-iscsi-small", "case-iscsi-cut"):
            ansible_playbook(TEARDOWN, "-e", "vmcollect_case_id=" + case, "-e", "vmcollect_journal_dir=%s/journal" % work)
    subprocess.run(["rm", "-rf", work], check=True)
    os.makedirs(work)
    # the examiner's signing key: refused before any change if it cannot sign, probed in the plan play
    key = os.path.join(work, "examiner")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "CI examiner", "-f", key], check=True)
    args = _args(lab, work, CASE, [guest["name"]], extra=["-e", "vmcollect_signing_key=" + key])
    xml_before = _out(VIRSH + ["dumpxml", "--inactive", guest["name"]])
    live_xml_before = _out(VIRSH + ["dumpxml", guest["name"]])

    check = ansible_playbook(PLAYBOOK, "--check", *args)
    after_check = {"files": sorted(os.listdir(work)), "traces": _host_traces(lab, work, CASE),
                   "xml": _out(VIRSH + ["dumpxml", "--inactive", guest["name"]])}
    # the first run at -vvv, with a CHAP secret we know (given in a file, not in argv), while every process's
    # argv and environment are sampled: the secret must show up nowhere
    secret = "".join(random.SystemRandom().choice(string.ascii_letters + string.digits) for i in range(28))
    secret_vars = os.path.join(work, "..", "e2e-iscsi-secret.yml")
    with open(secret_vars, "w") as f:
        f.write("vmcollect_chap_password: %s\n" % secret)
    os.chmod(secret_vars, 0o600)
    sampler = Sampler([secret], nice=19)  # a busy loop: at nice 0 it took a core from the other worker's tests
    sampler.start()
    t0 = time.monotonic()
    try:
        first = ansible_playbook(PLAYBOOK, "-vvv", "-e", "@" + secret_vars, *args)
    finally:
        seconds = time.monotonic() - t0
        sampler.stop.set()
        sampler.join(10)
        os.unlink(secret_vars)
    traces = _host_traces(lab, work, CASE)
    backing = os.path.join(work, "collector", CASE, "kvm1.img")
    st = os.stat(backing) if os.path.exists(backing) else None
    records_path = backing + ".verified.jsonl"
    first_records = open(records_path).read() if os.path.exists(records_path) else ""
    first_digest = sha256_file(backing) if st else None
    second = ansible_playbook(PLAYBOOK, *args, env={"ANSIBLE_SHOW_CUSTOM_STATS": "True"})
    return {"work": work, "args": args, "check": check, "after_check": after_check, "first": first, "second": second,
            "secret": secret, "sampler": sampler,
            "seconds": seconds, "traces": traces, "backing": backing, "backing_stat": st,
            "first_records": first_records, "first_digest": first_digest,
            "xml_before": xml_before, "live_xml_before": live_xml_before}


def test_check_mode_changes_nothing(iscsi):
    out = iscsi["check"].stdout
    assert iscsi["check"].returncode == 0, out[-5000:]
    assert iscsi["after_check"]["files"] == ["examiner", "examiner.pub"] and iscsi["after_check"]["traces"] == []
    assert iscsi["after_check"]["xml"] == iscsi["xml_before"]


def test_acquisition_onto_the_collector_succeeds(iscsi):
    out = iscsi["first"].stdout
    assert iscsi["first"].returncode == 0, out[-8000:]
    assert _recap(out, "kvm1")["failed"] == 0 and _recap(out, "collector1")["failed"] == 0
    print("start to evidence verified on the collector: %.1f s" % iscsi["seconds"])


def test_no_chap_secret_in_any_process_or_in_the_vvv_output(iscsi):
    assert iscsi["sampler"].rounds > 20
    assert iscsi["sampler"].found == [], "the CHAP secret was visible in: %s" % iscsi["sampler"].found
    assert iscsi["secret"] not in iscsi["first"].stdout
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in iscsi["first"].stdout  # -vvv really showed module arguments


def test_both_hosts_restored(iscsi, lab):
    assert iscsi["traces"] == []
    guest = lab["guest"]
    assert _out(VIRSH + ["dumpxml", "--inactive", guest["name"]]) == iscsi["xml_before"]
    assert _out(VIRSH + ["dumpxml", guest["name"]]) == iscsi["live_xml_before"]


def test_collector_verified_every_artifact_from_the_backing_file(iscsi):
    record = json.loads(iscsi["first_records"].splitlines()[0])
    assert record["case_id"] == CASE and record["recorded_at"].endswith("Z") and record["result"] == "verified"
    st = iscsi["backing_stat"]
    assert st.st_blocks * 512 < st.st_size  # thin: the LUN's backing file holds only what was written
    assert iscsi["first_digest"] == record["volume_digests"]["sha256"]
    # the volume's filesystem is the case folder: the case id is not repeated below the mountpoint
    listing = _read_volume(iscsi["backing"], "cd \"$MNT\" && test ! -e '%s' && cat manifest.json" % CASE)
    assert listing.returncode == 0, listing.stdout
    manifest = json.loads(listing.stdout)
    assert sorted(record["files"]) == sorted(manifest["artifacts"])
    # the RAM image is hashed with the configured algorithms, as the disks are
    for artifact in manifest["artifacts"].values():
        assert sorted(artifact["digests"]) == ["md5", "sha256"], artifact


def test_the_records_on_the_collector_are_signed(iscsi):
    """With vmcollect_signing_key the collector's records of the case are signed; ssh-keygen -Y verify alone checks
    each of them there."""
    records = os.path.join(iscsi["work"], "collector", CASE, "records-kvm1")
    signed = sorted(n[:-4] for n in os.listdir(records) if n.endswith(".sig"))
    assert signed == ["SHA256SUMS", "custody.jsonl", "manifest.json", "report.html", "report.txt"]
    for name in signed:
        with open(os.path.join(records, name), "rb") as f:
            subprocess.run(["ssh-keygen", "-Y", "verify", "-f", os.path.join(records, "allowed_signers"),
                            "-I", "CI examiner", "-n", "dfir.vmcollect@evidence", "-s",
                            os.path.join(records, name + ".sig")], stdin=f, check=True, stdout=subprocess.DEVNULL)


def test_the_run_hands_the_collectors_verification_to_what_runs_next(iscsi):
    """set_stats (an AWX job's artifacts; here ANSIBLE_SHOW_CUSTOM_STATS): the case, and for kvm1 the backing file on
    the collector, what was verified there, and the artifacts with the digests of the manifest (docs/awx.md)."""
    out = iscsi["second"].stdout
    stats = json.loads(out[out.index("CUSTOM STATS"):].split("RUN:", 1)[1].strip().splitlines()[0])
    assert stats["vmcollect_case_id"] == CASE
    kvm1 = stats["vmcollect_evidence"]["kvm1"]
    records = os.path.join(iscsi["work"], "collector", CASE, "records-kvm1")
    assert kvm1["backing_file"] == iscsi["backing"] and kvm1["evidence_host"] == "collector1"
    assert kvm1["case_dir"] is None and kvm1["records"] == records and kvm1["signed"]
    assert kvm1["manifest"] == os.path.join(records, "manifest.json") and kvm1["verified_on_collector"]
    with open(kvm1["manifest"]) as f:
        manifest = json.load(f)["artifacts"]
    [vm] = kvm1["vms"]
    assert vm["vm"] == "vmc-victim" and not vm["acquired"]  # the second run: already in the case
    assert kvm1["verified_files"] == len(manifest) == len(vm["artifacts"])
    assert dict((a["path"], a["sha256"]) for a in vm["artifacts"]) == dict(
        (path, a["digests"]["sha256"]) for path, a in manifest.items())


def test_the_run_ends_with_a_summary_and_no_empty_plays(iscsi):
    out = iscsi["first"].stdout
    assert "skipping: no hosts matched" not in out
    summary = out[out.rindex("collector : Summary"):]
    assert "3 artifact(s) on the LUN of kvm1" in summary and "the guest was paused" in summary
    assert "Verified again on collector1 from the read-only backing file" in summary
    assert "Host kvm1:" in summary and "losetup --read-only" in summary and "sha256sum -c SHA256SUMS" in summary
    # the freeze is reported as a change, not as "skipping" (take_snapshot returns no reserved key)
    freeze = out[out.index("kvm_acquire : Freeze the disks]"):]
    freeze = freeze[:freeze.index("TASK [", 10)]
    assert "changed: [kvm1]" in freeze and "skipping: [kvm1]" not in freeze


def test_evidence_on_the_volume_verifies_and_equals_the_disks(iscsi, lab):
    """Read independently of the collection: sha256sum -c, qemu-img compare with the disks, the RAM marker; the
    collector's records hold the volume's manifest and SHA256SUMS byte for byte."""
    disks = " ".join("'%s'" % d["path"] for d in lab["guest"]["disks"])
    records = os.path.join(iscsi["work"], "collector", CASE, "records-kvm1")
    script = """cd "$MNT"
sha256sum -c --strict SHA256SUMS
for d in %s; do
  copy=$(ls */disks/*-00-"$(basename "$d")")
  qemu-img compare -U "$d" "$copy"
done
grep -c -a '%s' */memory-*.raw
cmp manifest.json '%s/manifest.json' && cmp SHA256SUMS '%s/SHA256SUMS' && echo RECORDS-EQUAL
""" % (disks, lab["guest"]["marker"], records, records)
    result = _read_volume(iscsi["backing"], script)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(": OK") >= 3 and "Images are identical." in result.stdout
    assert "RECORDS-EQUAL" in result.stdout


VERIFY_TAMPERED = """\
- name: The collector verifies a volume against source digests that differ from its manifest
  hosts: collector1
  gather_facts: false
  tasks:
    - name: Verify
      ansible.builtin.include_role:
        name: dfir.vmcollect.collector
        tasks_from: verify_volume
      vars:
        collector_case_id: %(case)s
        collector_volume: kvm1
        collector_dir: %(work)s/collector
        collector_verify_dir: %(work)s/verify-tampered
        collector_journal_dir: %(work)s/journal-tampered
        collector_source_artifacts: {kvm1: %(artifacts)s}
"""


def test_collector_refuses_a_volume_whose_manifest_differs_from_the_source(iscsi, lab, ansible_playbook, tmp_path):
    """The controller holds the digests the KVM host reported; a volume whose manifest says otherwise (here: the
    source digests altered instead of the volume, which stays read-only) is refused, and its mount is undone."""
    listing = _read_volume(iscsi["backing"], "cat \"$MNT/manifest.json\"")
    assert listing.returncode == 0, listing.stdout
    artifacts = json.loads(listing.stdout)["artifacts"]
    victim = sorted(artifacts)[0]
    artifacts[victim]["digests"]["sha256"] = "0" * 64
    playbook = tmp_path / "verify-tampered.yml"
    playbook.write_text(VERIFY_TAMPERED % {"case": CASE, "work": iscsi["work"], "artifacts": json.dumps(artifacts)})
    result = ansible_playbook(str(playbook))
    assert result.returncode != 0
    assert "does not list the artifacts and digests that host" in result.stdout and victim in result.stdout
    assert "Unmount the backing file" in result.stdout
    loops = _out(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"])
    assert iscsi["backing"] not in loops  # the read-only loop device is gone again
    teardown = ansible_playbook(TEARDOWN, "-e", "vmcollect_case_id=" + CASE,
                                "-e", "vmcollect_journal_dir=%s/journal-tampered" % iscsi["work"])
    assert teardown.returncode == 0
    assert not os.path.exists(os.path.join(iscsi["work"], "journal-tampered", CASE))


def test_second_run_copies_nothing_again_and_never_writes_the_verified_volume(iscsi):
    out = iscsi["second"].stdout
    assert iscsi["second"].returncode == 0, out[-6000:]
    assert "Copy every frozen image" not in out or "skipping" in out.split("Copy every frozen image")[1][:400]
    assert "read-only as the volume is sealed" in out
    st = os.stat(iscsi["backing"])
    assert st.st_size == iscsi["backing_stat"].st_size
    # a verified volume is exported and mounted read-only only: not a byte of it changed (ext4's mount count and
    # last write time included), and its first verification record is kept, the second appended
    assert sha256_file(iscsi["backing"]) == iscsi["first_digest"]
    records = _records(iscsi["backing"])
    assert len(records) == 2
    assert open(iscsi["backing"] + ".verified.jsonl").read().startswith(iscsi["first_records"])
    assert records[1]["volume_digests"] == records[0]["volume_digests"]
    assert "Already in the case: 3 artifact(s) re-hashed and unchanged" in out


def test_a_vm_not_on_a_sealed_volume_is_refused_and_the_volume_stays_as_it_was(iscsi, lab, ansible_playbook, tmp_path):
    """The case's volume was verified: a rerun that names one more VM attaches it read-only, re-verifies what it
    holds, refuses the new VM with a sentence, and writes nothing there."""
    name = "vmc-e2e-sealed-extra"
    disk = os.path.join(iscsi["work"], "sealed-extra.raw")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    _define_shut_off_vm(name, disk, str(tmp_path / "extra.xml"))
    try:
        args = _args(lab, iscsi["work"], CASE, [lab["guest"]["name"], name])
        result = ansible_playbook(PLAYBOOK, *args)
    finally:
        subprocess.run(VIRSH + ["undefine", name], check=False, stdout=subprocess.DEVNULL)
        os.unlink(disk)
    assert result.returncode != 0
    assert "evidence volume is sealed (read-only), but it holds no evidence of %s" % name in result.stdout
    assert "Read-only file system" not in result.stdout
    assert sha256_file(iscsi["backing"]) == iscsi["first_digest"]
    assert _host_traces(lab, iscsi["work"], CASE) == []


def test_lun_too_small_is_refused_before_anything_changes(iscsi, lab, ansible_playbook):
    work = iscsi["work"]
    case = "case-iscsi-small"
    args = _args(lab, work, case, [lab["guest"]["name"]], extra=["-e", "vmcollect_lun_size=64M"])
    result = ansible_playbook(PLAYBOOK, *args)
    assert result.returncode != 0
    assert "Nothing was changed on any host" in result.stdout, result.stdout[-4000:]
    assert not os.path.exists(os.path.join(work, "collector", case))
    assert _host_traces(lab, work, case) == []
    assert _out(VIRSH + ["dumpxml", "--inactive", lab["guest"]["name"]]) == iscsi["xml_before"]


def test_a_local_evidence_dir_is_refused_in_iscsi_mode(iscsi, lab, ansible_playbook):
    """-e kvm_acquire_evidence_dir outranks the LUN's mountpoint the playbook gives the role: the evidence would
    land on the KVM host's own disk (make demo did that once). It is refused before anything changes."""
    work = iscsi["work"]
    case = "case-iscsi-local-dir"
    args = _args(lab, work, case, [lab["guest"]["name"]], extra=["-e", "kvm_acquire_evidence_dir=%s/elsewhere" % work])
    result = ansible_playbook(PLAYBOOK, *args)
    assert result.returncode != 0
    assert "kvm_acquire_evidence_dir" in result.stdout and "Nothing was changed on any host" in result.stdout
    assert not os.path.exists(os.path.join(work, "elsewhere")) and not os.path.exists(os.path.join(work, "collector", case))
    assert _host_traces(lab, work, case) == []


@pytest.fixture
def slow_vm(lab, tmp_path):
    """A shut-off VM with a 48 MiB disk of random data, and kvm1's storage link throttled to 24 Mbit/s, so
    that copying the disk onto the LUN takes long enough to cut the link in the middle."""
    name = "vmc-e2e-linkcut"
    folder = os.path.join(lab["work_dir"], "e2e-linkcut")
    os.makedirs(folder, exist_ok=True)
    disk = os.path.join(folder, "big.raw")
    with open(disk, "wb") as f:
        f.write(os.urandom(48 << 20))
    _define_shut_off_vm(name, disk, str(tmp_path / "linkcut.xml"))
    ns = ["ip", "netns", "exec", lab["hosts"][0]["netns"]]
    subprocess.run(ns + ["tc", "qdisc", "replace", "dev", "stor0", "root", "tbf", "rate", "24mbit", "burst", "32kbit",
                         "latency", "400ms"], check=True)
    try:
        yield name
    finally:
        subprocess.run(ns + ["ip", "link", "set", "stor0", "up"], check=False)
        subprocess.run(ns + ["tc", "qdisc", "del", "dev", "stor0", "root"], check=False)
        subprocess.run(VIRSH + ["undefine", name], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", folder], check=False)


@pytest.mark.slow  # outside the CI budget: make test-slow
def test_storage_link_cut_during_a_copy(iscsi, lab, slow_vm):
    work = iscsi["work"]
    case = "case-iscsi-cut"
    ns = ["ip", "netns", "exec", lab["hosts"][0]["netns"]]
    proc = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), PLAYBOOK]
                            + _args(lab, work, case, [slow_vm], memory="none"),
                            env=ansible_env(lab), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    volume = os.path.join(work, "volume", case)
    cut = False
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            found = _ssh(lab, 0, "find '%s' -name '*.partial' -size +2M 2>/dev/null" % volume).stdout
            if ".partial" in found:
                subprocess.run(ns + ["ip", "link", "set", "stor0", "down"], check=True)
                cut = True
                break
            time.sleep(0.2)
        out, dummy = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(ns + ["ip", "link", "set", "stor0", "up"], check=False)
    assert cut, "the copy never started, or ended before the link could be cut:\n" + out[-4000:]
    assert proc.returncode != 0
    assert "Input/output error" in out and "iSCSI connection of qemu-storage-daemon" in out, out[-6000:]
    assert "was lost for" in out
    # the playbook cleaned up after itself once the link was back; if anything is left, teardown must clean it
    teardown = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"),
                               TEARDOWN, "-e", "vmcollect_case_id=" + case,
                               "-e", "vmcollect_journal_dir=%s/journal" % work],
                              env=ansible_env(lab), cwd=ROOT, check=False, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert teardown.returncode == 0, teardown.stdout[-4000:]
    assert _host_traces(lab, work, case) == []
    # nothing on the volume claims to be verified evidence of the cut copy
    backing = os.path.join(work, "collector", case, "kvm1.img")
    assert not os.path.exists(backing + ".verified.jsonl")
    listing = _read_volume(backing, "cd \"$MNT\" && find . -type f | sort")
    assert listing.returncode == 0, listing.stdout
    files = listing.stdout.split()
    assert not any(f.endswith("big.raw") for f in files), files  # only a .partial, never the final name
    assert not any(f.endswith("manifest.json") for f in files), files


def _kill_when(lab, args, ready, seconds=300):
    """Start the acquisition in a session of its own; kill -9 its whole process group once ``ready()`` is true."""
    proc = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), PLAYBOOK] + args,
                            env=ansible_env(lab), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, start_new_session=True)
    try:
        deadline = time.time() + seconds
        while time.time() < deadline and proc.poll() is None:
            if ready():
                os.killpg(proc.pid, 9)
                return
            time.sleep(0.01)
        pytest.fail("the run never reached the step to kill it at: %s" % proc.communicate()[0][-4000:])
    finally:
        proc.wait()


def _teardown_once(lab, work, case, args=None):
    """playbooks/teardown.yml once, with vmcollect_case_id and vmcollect_journal_dir, or with the acquisition's own
    extra variables (args) as an AWX workflow's teardown node gets them."""
    given = args or ["-e", "vmcollect_case_id=" + case, "-e", "vmcollect_journal_dir=%s/journal" % work]
    result = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), TEARDOWN] + given,
                            env=ansible_env(lab), cwd=ROOT, check=False, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:]
    return result


@pytest.fixture
def throttled_vm(lab, tmp_path):
    """A shut-off VM whose 24 MiB disk reads at 3 MB/s: a qemu-storage-daemon on kvm1 serves a file through a
    throttle group as a read-only FUSE export, and a read-only loop device on that is the VM's disk (a block device:
    the FUSE export's own modification time moves with every look). Copying it takes long enough that the copy is
    still at work when a teardown after a kill starts."""
    name = "vmc-e2e-throttled"
    folder = os.path.join(lab["work_dir"], "e2e-throttled")
    os.makedirs(folder, exist_ok=True)
    data, slow, pid_file = (os.path.join(folder, n) for n in ("data.raw", "slow.raw", "qsd.pid"))
    with open(data, "wb") as f:
        f.write(os.urandom(24 << 20))
    open(slow, "w").close()
    started = _ssh(lab, 0, "qemu-storage-daemon --daemonize --pidfile '%s' "
                           "--blockdev driver=file,filename='%s',node-name=data,read-only=on "
                           "--object throttle-group,id=tg0,x-bps-read=3145728 "
                           "--blockdev driver=throttle,throttle-group=tg0,file=data,node-name=slow,read-only=on "
                           "--export type=fuse,id=exp0,node-name=slow,mountpoint='%s',writable=off "
                           "&& losetup --read-only --find --show '%s'" % (pid_file, data, slow, slow))
    assert started.returncode == 0, started.stdout
    loop = started.stdout.strip().splitlines()[-1]
    _define_shut_off_vm(name, loop, str(tmp_path / "throttled.xml"), block=True)
    try:
        yield name
    finally:
        subprocess.run(VIRSH + ["undefine", name], check=False, stdout=subprocess.DEVNULL)
        _ssh(lab, 0, "losetup -d '%s'; kill $(cat '%s'); for i in $(seq 50); do grep -q '%s' /proc/self/mountinfo "
                     "|| break; sleep 0.1; done" % (loop, pid_file, slow))
        subprocess.run(["rm", "-rf", folder], check=False)


# outside the CI budget (make test-slow); in CI: a copy killed and resumed in tests/unit's test_copy.py, a run killed with
# both hosts changed in test_acquire_esxi_iscsi.py
@pytest.mark.slow
def test_kill_9_during_a_copy_onto_the_lun_one_teardown_then_the_same_case_completes(iscsi, lab, throttled_vm):
    """The copy runs on after ansible-playbook is killed; ONE teardown stops it first (no "target is busy"), then
    detaches and unexports; the rerun of the same case grows the LUN for room beside what the killed run left, sets
    that aside (kept, hashed) and completes, verified on the collector."""
    work = iscsi["work"]
    case = "case-iscsi-kill-copy"
    args = _args(lab, work, case, [throttled_vm], memory="none")
    journal = os.path.join(work, "journal", case)
    _kill_when(lab, args, lambda: pending_at_work(case_journal_records(journal), "evidence_copy"))
    teardown = _teardown_once(lab, work, case, args)  # the acquisition's own variables: kvm_acquire_case_id, ...
    assert re.search(r"(stopped|killed) evidence_copy \(pid \d+\)", teardown.stdout), teardown.stdout
    assert "busy" not in teardown.stdout
    assert _host_traces(lab, work, case) == []
    backing = os.path.join(work, "collector", case, "kvm1.img")
    size_before = os.stat(backing).st_size

    rerun = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), PLAYBOOK] + args,
                           env=ansible_env(lab), cwd=ROOT, check=False, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[rerun.stdout.find("Copy every frozen"):][:6000]
    assert _host_traces(lab, work, case) == []
    assert _records(backing)[-1]["result"] == "verified"
    check = _read_volume(backing, """cd "$MNT"
sha256sum -c --strict SHA256SUMS
cd set-aside/*/ && sha256sum -c --strict SHA256SUMS && find . -type f""")
    assert check.returncode == 0, check.stdout
    assert ".partial" in check.stdout  # the killed run's partial copy, kept beside the case
    print("LUN %d bytes before the rerun, %d after" % (size_before, os.stat(backing).st_size))


@pytest.mark.slow  # outside the CI budget: make test-slow
def test_kill_9_during_the_collectors_verification_one_teardown_then_the_same_case_completes(iscsi, lab):
    """Killed while the collector re-hashes the volume: ONE teardown stops or outlasts the verification, unmounts and
    unexports; the rerun of the same case adopts the evidence its manifest records, and the collector verifies and
    seals it. volume_verify hashes and records in one module run, which the playbook's kill does not stop: a teardown
    that comes while it hashes stops it, and nothing is recorded; one that comes after the hashing finds it recording
    what it found, which must then be true (the lab's volume hashes in about a second, so that is the usual case)."""
    work = iscsi["work"]
    case = "case-iscsi-kill-verify"
    args = _args(lab, work, case, [lab["guest"]["name"]])
    _kill_when(lab, args, lambda: pending_at_work(case_journal_records(os.path.join(work, "journal", case)), "volume_verify")
               and os.path.exists(os.path.join(work, "verify", case)))
    _teardown_once(lab, work, case)
    assert _host_traces(lab, work, case) == []
    backing = os.path.join(work, "collector", case, "kvm1.img")
    killed_run = _records(backing) if os.path.exists(backing + ".verified.jsonl") else []
    # either nothing claims a verification, or the one record says what the volume holds
    assert len(killed_run) <= 1
    for record in killed_run:
        assert record["result"] == "verified" and len(record["files"]) == 3
        assert record["volume_digests"]["sha256"] == sha256_file(backing)
    print("the killed run's verification %s" % ("recorded before the teardown came" if killed_run else "was stopped"))

    rerun = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), PLAYBOOK] + args,
                           env=ansible_env(lab), cwd=ROOT, check=False, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-6000:]
    assert "Already in the case: 3 artifact(s) re-hashed and unchanged" in rerun.stdout
    assert _host_traces(lab, work, case) == []
    assert _records(backing)[-1]["result"] == "verified" and len(_records(backing)) == len(killed_run) + 1
    check = _read_volume(backing, "cd \"$MNT\" && sha256sum -c --strict SHA256SUMS")
    assert check.returncode == 0 and check.stdout.count(": OK") == 3, check.stdout
    assert _out(VIRSH + ["dumpxml", "--inactive", lab["guest"]["name"]]) == iscsi["xml_before"]


@pytest.mark.parametrize("extra, says", [
    ({"kvm_acquire_vms": ["vmc-no-such-vm"]}, "The VM 'vmc-no-such-vm' does not exist"),
    ({"kvm_acquire_vms": " \n \n"}, "kvm_acquire_vms must name at least one VM (a list, or one name per line)"),
    ({"kvm_acquire_memory_method": "fast"}, "kvm_acquire_memory_method must be one of"),
    ({"kvm_acquire_examiner": ""}, "missing required arguments: kvm_acquire_examiner"),
])
def test_each_refusal_in_iscsi_mode_comes_before_any_change_on_any_host(iscsi, lab, ansible_playbook, extra, says):
    """The iSCSI transport checks the acquisition's inputs (the provider's argument spec) and describes every VM in its
    first play, before the case lock, the LUN or anything on the collector."""
    work = iscsi["work"]
    case = "case-iscsi-refused"
    args = _args(lab, work, case, [lab["guest"]["name"]])
    if "kvm_acquire_examiner" in extra:  # not given at all
        at = args.index(json.dumps({"kvm_acquire_examiner": "CI examiner"}))
        del args[at - 1:at + 1]
    else:
        args += ["-e", json.dumps(extra)]
    listing = sorted(os.listdir(work))
    result = ansible_playbook(PLAYBOOK, *args)
    assert result.returncode != 0 and says in result.stdout, result.stdout[-4000:]
    assert _recap(result.stdout, "kvm1")["changed"] == 0
    assert "collector1" not in result.stdout.split("PLAY RECAP")[-1]  # the collector was never touched
    assert sorted(os.listdir(work)) == listing and not os.path.exists(os.path.join(work, "collector", case))
    assert _host_traces(lab, work, case) == []


def test_a_limit_that_leaves_out_the_collector_is_refused_before_any_change(iscsi, lab, ansible_playbook):
    """An AWX job template's Limit (or --limit) that names the hypervisor host alone: the collector's plays would match
    no host and export no LUN, so the run is refused in its first play, saying so, before any change."""
    work = iscsi["work"]
    case = "case-iscsi-limit"
    listing = sorted(os.listdir(work))
    result = ansible_playbook(PLAYBOOK, "--limit", "kvm1", *_args(lab, work, case, [lab["guest"]["name"]]))
    assert result.returncode != 0, result.stdout[-4000:]
    assert ("The collector collector1 is outside this run's limit (kvm1): the iSCSI transport needs it in the run. "
            "Add it to the limit (in AWX, the job template's Limit). Nothing was changed on any host.") in result.stdout
    assert _recap(result.stdout, "kvm1")["changed"] == 0
    assert sorted(os.listdir(work)) == listing and _host_traces(lab, work, case) == []


def test_storage_link_down_at_the_attach_says_so_and_keeps_no_empty_volume(iscsi, lab, ansible_playbook):
    """kvm1's storage link is down when it logs in to the collector: the failure says the link is down and what to
    check; the LUN's backing file, which nothing was ever written to, is not kept as evidence; both hosts are clean."""
    work = iscsi["work"]
    case = "case-iscsi-link-down"
    ns = ["ip", "netns", "exec", lab["hosts"][0]["netns"]]
    subprocess.run(ns + ["ip", "link", "set", "stor0", "down"], check=True)
    try:
        result = ansible_playbook(PLAYBOOK, *_args(lab, work, case, [lab["guest"]["name"]], memory="none"))
    finally:
        subprocess.run(ns + ["ip", "link", "set", "stor0", "up"], check=True)
    assert result.returncode != 0
    assert "The storage link is down" in result.stdout and "Check this host's storage interface" in result.stdout, \
        result.stdout[-5000:]
    assert not os.path.exists(os.path.join(work, "collector", case))  # no empty volume kept "as evidence"
    assert _host_traces(lab, work, case) == []
    assert _out(VIRSH + ["dumpxml", "--inactive", lab["guest"]["name"]]) == iscsi["xml_before"]
