# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/verify_evidence.yml on a signed case folder made here, on localhost (needs nothing of the lab): the
checksums and every record's signature pass; one changed byte of a signed record fails the play; an unsigned case
passes and says it is unsigned."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, VENV_BIN

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import signing

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"),
                                reason="ssh-keygen is missing (apt package openssh-client)")

PRINCIPAL = "jane.doe@example.org"
PLAYBOOK = os.path.join(ROOT, "playbooks", "verify_evidence.yml")


def make_case(folder, key=None):
    """A case folder: an evidence file listed in SHA256SUMS, manifest.json, custody.jsonl, report.txt; signed with
    ``key`` unless it is None."""
    os.makedirs(os.path.join(folder, "vm", "disks"))
    disk = os.urandom(256 * 1024)
    with open(os.path.join(folder, "vm", "disks", "vda.raw"), "wb") as f:
        f.write(disk)
    records = {
        "SHA256SUMS": "%s  vm/disks/vda.raw\n" % hashlib.sha256(disk).hexdigest(),
        "manifest.json": '{"artifacts":{},"case_id":"case-42","format":"dfir.vmcollect/manifest/1"}\n',
        "custody.jsonl": '{"event":"plan","prev":"%s","seq":1}\n' % ("0" * 64),
        "report.txt": "Case case-42: 1 disk.\n",
    }
    for name, text in records.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    if key:
        signing.sign([os.path.join(folder, n) for n in sorted(records)], key, PRINCIPAL)
    return os.path.join(folder, "SHA256SUMS")


def play(tmp_path, checksum_file, *extra):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(u"[evidence_hosts]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n"
                         % sys.executable)
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", str(inventory), PLAYBOOK,
           "-e", "vmcollect_checksum_file=%s" % checksum_file, "-e", "vmcollect_hosts=evidence_hosts",
           "-e", '{"vmcollect_algorithms": ["sha256", "md5"]}'] + list(extra)
    proc = subprocess.run(cmd, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                                        ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCALHOST_WARNING="False",
                                        PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", "")),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          check=False, timeout=300)
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("key") / "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True, stdin=subprocess.DEVNULL)
    return path


def test_signed_case_passes_then_one_changed_byte_fails(tmp_path, key, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    checksum_file = make_case(str(tmp_path / "case-42"), key)
    rc, out = play(tmp_path, checksum_file)
    assert rc == 0, out
    assert "4 signature(s) verified for %s" % PRINCIPAL in out
    assert signing.fingerprint(key)["fingerprint"] in out
    assert "custody.jsonl, manifest.json, report.txt, SHA256SUMS." in out and "Not signed" not in out
    rc, out = play(tmp_path, checksum_file, "--check")
    assert rc == 0 and "4 signature(s) verified" in out, out

    # a record without a signature (a report made after the signing) is reported, not a failure
    (tmp_path / "case-42" / "report.html").write_text(u"<html></html>\n")
    rc, out = play(tmp_path, checksum_file)
    assert rc == 0 and "4 signature(s) verified" in out and "Not signed: report.html." in out, out

    custody = tmp_path / "case-42" / "custody.jsonl"
    data = bytearray(custody.read_bytes())
    data[len(data) // 2] ^= 0x01
    custody.write_bytes(bytes(data))
    rc, out = play(tmp_path, checksum_file)
    assert rc != 0, out
    assert "1 of 4 signature(s) did not verify" in out and "custody.jsonl: Signature verification failed" in out, out


def test_unsigned_case_passes_and_says_so(tmp_path):
    checksum_file = make_case(str(tmp_path / "case-7"))
    rc, out = play(tmp_path, checksum_file)
    assert rc == 0, out
    assert "The case is unsigned: there is no allowed_signers beside %s" % checksum_file in out
    assert "signature(s) verified" not in out
