# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A court-ready case, end to end on the lab (issue 13), checked with readers no one here wrote.

A shut-off VM whose disk is a qcow2 overlay on a qcow2 base (a chain, the way a KVM host keeps snapshots) is acquired
with playbooks/acquire_kvm.yml onto kvm1's own storage, signed with an examiner's SSH key and with an E01 per disk.
Then the ORIGINAL host's files are moved away (the copied overlay's header still names the base's old path), and:
the custody log's hash chain holds (sha256sum of each line); ssh-keygen -Y verify accepts every record and refuses
each after one byte changes; the logical SHA-256 in the manifest equals qemu-img's flattened chain (made before the
move) and the opener command in the manifest flattens the copied chain alone to the same digest; Sleuthkit's fls
lists the guest's known files from it; ewfverify passes, ewfinfo shows the case fields, pyewf's media digest equals
the logical digest, dissect.target's target-query lists the guest's files from the E01; the report names every
artifact and says who signed.
"""

import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT

VIRSH = ["virsh", "-c", "qemu:///system"]
PLAYBOOK = os.path.join(ROOT, "playbooks", "acquire_kvm.yml")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
CASE = "case-records-1"
EXAMINER = "J. Doe"
KNOWN = ["README.txt", "evidence/notes.txt", "evidence/blob.bin"]


def _run(cmd, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    return subprocess.run(cmd, check=False, universal_newlines=True, timeout=600, **kw)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def case(lab, ansible_playbook, tmp_path_factory):
    for tool in ("ewfacquirestream", "ewfverify", "ewfinfo", "fls", "ssh-keygen"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: scripts/setup.sh installs it (ewf-tools, sleuthkit, openssh-client)" % tool)
    tmp = tmp_path_factory.mktemp("records")
    work = os.path.join(lab["work_dir"], "records-e2e")
    original = os.path.join(work, "orig")
    evidence = os.path.join(work, "evidence")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(original)
    base = os.path.join(original, "base.qcow2")
    top = os.path.join(original, "top.qcow2")
    subprocess.run(["cp", "--sparse=always", lab["guest"]["disks"][0]["pristine"], base], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top], check=True)
    # the overlay holds data of its own above the guest's filesystem: the logical image needs both layers
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 60M 1M", top], check=True, stdout=subprocess.DEVNULL)
    flat = str(tmp / "expected.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", top, flat], check=True)
    expected = _sha256(flat)
    os.unlink(flat)
    key = str(tmp / "examiner_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "examiner", "-f", key], check=True)
    name = "vmc-records chain"
    xml = str(tmp / "vm.xml")
    with open(xml, "w") as f:
        f.write("""<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>""" % (name, top))
    subprocess.run(VIRSH + ["define", xml], check=True, stdout=subprocess.DEVNULL)
    args = ["-e", "vmcollect_hosts=kvm_hosts", "-e", "kvm_acquire_case_id=" + CASE,
            "-e", json.dumps({"kvm_acquire_examiner": EXAMINER, "kvm_acquire_vms": [name],
                              "kvm_acquire_description": "records <b>test</b>",
                              "vmcollect_signing_key": key, "vmcollect_signer": "jdoe@example.org",
                              "vmcollect_e01": True,
                              "vmcollect_e01_fields": {"case_number": "CN-2026-13", "notes": "seized at 3 a.m."}}),
            "-e", "kvm_acquire_evidence_dir=" + evidence,
            "-e", "kvm_acquire_journal_dir=" + os.path.join(work, "journal")]
    try:
        result = ansible_playbook(PLAYBOOK, *args)
    finally:
        subprocess.run(VIRSH + ["undefine", name], check=False, stdout=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-6000:]
    # the original host's files are gone from where the copied overlay's header says its base is
    os.rename(original, original + ".moved-away")
    case_dir = os.path.join(evidence, CASE)
    with open(os.path.join(case_dir, "manifest.json")) as f:
        manifest = json.load(f)
    yield {"dir": case_dir, "manifest": manifest, "expected": expected, "base": base, "result": result, "tmp": tmp,
           "top": top}
    shutil.rmtree(work, ignore_errors=True)


def _top_disk(manifest):
    disks = [a for a in manifest["artifacts"].values() if a["kind"] == "disk" and a.get("logical")]
    assert len(disks) == 1, manifest["artifacts"].keys()
    return disks[0]


def test_the_custody_log_is_a_hash_chain_from_plan_to_teardown(case):
    with open(os.path.join(case["dir"], "custody.jsonl"), "rb") as f:
        lines = f.read().splitlines(True)
    records = [json.loads(line) for line in lines]
    prev = "0" * 64
    for line, rec in zip(lines, records):
        assert rec["prev"] == prev
        prev = hashlib.sha256(line).hexdigest()
    events = [r["event"] for r in records]
    for event in ("plan", "freeze", "copy", "manifest", "teardown"):
        assert event in events, events
    who = records[0]["controller"]
    assert who["user"] and who["host"] and who["ansible_core"] and who["collection_version"] and who["run_id"]
    assert who["extra_vars"]["kvm_acquire_case_id"] == CASE


def test_ssh_keygen_alone_verifies_the_case_and_catches_one_byte(case):
    signed = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(case["dir"], "*.sig")))
    assert signed == sorted(["SHA256SUMS", "custody.jsonl", "manifest.json", "report.html", "report.txt"])
    with open(os.path.join(case["dir"], "allowed_signers")) as f:
        assert f.read().startswith("jdoe@example.org ")
    for name in signed:
        ok = _run(["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "jdoe@example.org",
                   "-n", "dfir.vmcollect@evidence", "-s", name + ".sig"], cwd=case["dir"], stdin=open(os.path.join(case["dir"], name), "rb"))
        assert ok.returncode == 0, ok.stdout
    # one changed byte in a copy of each record: refused
    for name in signed:
        with open(os.path.join(case["dir"], name), "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        bad = str(case["tmp"] / ("tampered-" + name))
        with open(bad, "wb") as f:
            f.write(data)
        refused = _run(["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "jdoe@example.org",
                        "-n", "dfir.vmcollect@evidence", "-s", name + ".sig"], cwd=case["dir"], stdin=open(bad, "rb"))
        assert refused.returncode != 0, name


def test_the_logical_digest_opens_without_the_original_host(case):
    disk = _top_disk(case["manifest"])
    assert not os.path.exists(case["base"])
    assert disk["logical"]["digests"]["sha256"] == case["expected"]
    assert len(disk["logical"]["chain"]) == 2
    out = str(case["tmp"] / "opened.raw")
    command = disk["logical"]["open"]["command"]
    assert "qemu-img convert" in command
    # the command as the manifest gives it, run in the case folder, writing its raw image elsewhere (its last word)
    opened = _run(["bash", "-c", command.rsplit(" ", 1)[0] + " " + shlex.quote(out)], cwd=case["dir"])
    assert opened.returncode == 0, opened.stdout
    assert _sha256(out) == case["expected"]
    listing = _run(["fls", "-r", "-p", "-o", "2048", out])
    assert listing.returncode == 0, listing.stdout
    for known in KNOWN:
        assert known in listing.stdout, listing.stdout
    os.unlink(out)


def test_the_e01_holds_the_logical_image_and_the_case_fields(case):
    e01s = [a for a in case["manifest"]["artifacts"].values() if a["kind"] == "e01"]
    assert len(e01s) == 1
    e01 = e01s[0]
    path = os.path.join(case["dir"], e01["path"])
    assert e01["media_digests"]["sha256"] == case["expected"]
    verify = _run(["ewfverify", "-q", path])
    assert verify.returncode == 0, verify.stdout
    info = _run(["ewfinfo", path])
    assert "CN-2026-13" in info.stdout and EXAMINER in info.stdout and "seized at 3 a.m." in info.stdout, info.stdout
    pyewf = _run([os.path.join(VENV_BIN, "python"), "-c", """
import hashlib, sys, pyewf
h = pyewf.handle(); h.open(pyewf.glob(sys.argv[1])); d = hashlib.sha256()
while True:
    b = h.read(1 << 20)
    if not b:
        break
    d.update(b)
print(d.hexdigest())""", path])
    assert pyewf.stdout.strip() == case["expected"], pyewf.stdout
    query = _run([os.path.join(VENV_BIN, "target-query"), "-f", "walkfs", "-s", path], stderr=subprocess.DEVNULL)
    for known in KNOWN:
        assert "path='/%s'" % known in query.stdout, query.stdout[-3000:]


def test_the_report_names_every_artifact_and_its_signer(case):
    for name in ("report.html", "report.txt"):
        with open(os.path.join(case["dir"], name)) as f:
            text = f.read()
        for rel in case["manifest"]["artifacts"]:
            assert rel in text, (name, rel)
        assert "jdoe@example.org" in text
        assert "UNSIGNED" not in text
    with open(os.path.join(case["dir"], "report.html")) as f:
        html = f.read()
    assert "<b>test</b>" not in html and "&lt;b&gt;test&lt;/b&gt;" in html


def test_a_key_that_cannot_sign_is_refused_before_any_change(lab, ansible_playbook, tmp_path):
    """A passphrase-protected key and no ssh-agent: refused at the plan, with a sentence; no case folder, no journal."""
    key = str(tmp_path / "locked_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", key], check=True)
    evidence = str(tmp_path / "evidence")
    journal = str(tmp_path / "journal")
    env_agent = os.environ.pop("SSH_AUTH_SOCK", None)
    try:
        result = ansible_playbook(PLAYBOOK, "-e", "vmcollect_hosts=kvm_hosts", "-e", "kvm_acquire_case_id=case-records-2",
                                  "-e", json.dumps({"kvm_acquire_examiner": EXAMINER, "kvm_acquire_vms": [lab["guest"]["name"]],
                                                    "vmcollect_signing_key": key}),
                                  "-e", "kvm_acquire_evidence_dir=" + evidence, "-e", "kvm_acquire_journal_dir=" + journal)
    finally:
        if env_agent is not None:
            os.environ["SSH_AUTH_SOCK"] = env_agent
    assert result.returncode != 0
    assert "passphrase" in result.stdout, result.stdout[-3000:]
    assert not os.path.exists(os.path.join(evidence, "case-records-2"))
    assert not os.path.exists(os.path.join(journal, "case-records-2"))
