# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_sign's logic (_evidence/signing.py) with the real ssh-keygen: signatures that plain ``ssh-keygen -Y verify``
accepts, one changed byte refused, a passphrase without an agent refused at once, keys held by a real ssh-agent."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import signing as s
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError

SSH_KEYGEN = shutil.which("ssh-keygen")
pytestmark = pytest.mark.skipif(not SSH_KEYGEN or not shutil.which("ssh-agent"),
                                reason="ssh-keygen and ssh-agent are missing (apt package openssh-client)")

PRINCIPAL = "jane.doe@example.org"
PASSPHRASE = "correct horse battery staple"
RECORDS = {
    "manifest.json": b'{"artifacts":{},"case_id":"case-42","format":"dfir.vmcollect/manifest/1"}\n',
    "SHA256SUMS": b"2a5d218d2c7a34000fd2a95fbdd2604cd5c4ac1427be46630e261aeb18b32d61  vm/disks/vda.qcow2\n",
    "custody.jsonl": b'{"event":"plan","prev":"' + b"0" * 64 + b'","seq":1}\n',
    "report.html": u"<html><body><p>Examin\u00e9 par Jane</p></body></html>\n".encode("utf-8"),
    "report.txt": b"not UTF-8 at all: \xff\xfe\x00\x01 and a newline\n",
}


def keygen(path, kind, passphrase=""):
    args = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", passphrase, "-C", "test " + kind, "-f", path] + args,
                   check=True, stdin=subprocess.DEVNULL)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("keys"))
    return {
        "ed25519": keygen(os.path.join(folder, "id_ed25519"), "ed25519"),
        "rsa": keygen(os.path.join(folder, "id_rsa"), "rsa"),
        "locked": keygen(os.path.join(folder, "id_locked"), "ed25519", PASSPHRASE),
    }


@pytest.fixture
def case(tmp_path):
    folder = tmp_path / "case-42"
    folder.mkdir()
    for name, data in RECORDS.items():
        (folder / name).write_bytes(data)
    return str(folder)


@pytest.fixture
def no_agent(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)


def paths(case, names=None):
    return [os.path.join(case, name) for name in (names or RECORDS)]


def plain_verify(case, name, principal=PRINCIPAL, namespace=s.NAMESPACE):
    """ssh-keygen -Y verify of one record, run here as a user would (not through signing.py)."""
    with open(os.path.join(case, name), "rb") as data:
        return subprocess.run([SSH_KEYGEN, "-Y", "verify", "-f", os.path.join(case, "allowed_signers"), "-I",
                               principal, "-n", namespace, "-s", os.path.join(case, name + ".sig")], stdin=data,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)


def flip_one_byte(path):
    with open(path, "r+b") as f:
        data = f.read()
        i = len(data) // 2
        f.seek(i)
        f.write(bytes([data[i] ^ 0x01]))
    return data


def run_documented_command(case, command):
    return subprocess.run(["sh", "-c", command], cwd=case, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False, timeout=60).stdout


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_sign_then_plain_ssh_keygen_verifies_and_refuses_one_changed_byte(case, keys, kind, no_agent):
    res = s.sign(paths(case), keys[kind], PRINCIPAL)
    assert res["changed"] and [e["action"] for e in res["files"]] == ["signed"] * len(RECORDS)
    assert sorted(res["written"]) == [os.path.join(case, "allowed_signers"), os.path.join(case, "examiner.pub")]
    with open(keys[kind] + ".pub") as f:
        key_type, key_b64 = f.read().split()[:2]
    with open(os.path.join(case, "allowed_signers")) as f:
        assert f.read() == '%s namespaces="dfir.vmcollect@evidence" %s %s\n' % (PRINCIPAL, key_type, key_b64)
    with open(os.path.join(case, "examiner.pub")) as f:
        assert f.read().split()[:2] == [key_type, key_b64]
    lf = subprocess.run([SSH_KEYGEN, "-lf", keys[kind] + ".pub"], stdout=subprocess.PIPE, universal_newlines=True,
                        check=True).stdout.split()
    assert res["fingerprint"] == lf[1] and res["key_type"] == kind.upper()
    assert s.fingerprint(keys[kind])["fingerprint"] == lf[1]
    for name in RECORDS:
        assert stat.S_IMODE(os.stat(os.path.join(case, name + ".sig")).st_mode) == 0o644 & ~_umask()
        done = plain_verify(case, name)
        assert done.returncode == 0 and 'Good "dfir.vmcollect@evidence" signature for %s' % PRINCIPAL in done.stdout
        assert plain_verify(case, name, namespace="file").returncode != 0, "a signature verified in another namespace"
    out = run_documented_command(case, res["command"])
    assert out.count("Good \"dfir.vmcollect@evidence\" signature") == len(RECORDS) and "FAILED" not in out, out
    assert s.verify(paths(case), os.path.join(case, "allowed_signers"))["verified"]
    for name in RECORDS:
        path = os.path.join(case, name)
        original = flip_one_byte(path)
        done = plain_verify(case, name)
        assert done.returncode != 0 and "Good" not in done.stdout, (name, done.stdout)
        assert "FAILED: %s" % name in run_documented_command(case, res["command"])
        result = s.verify(paths(case), os.path.join(case, "allowed_signers"))
        assert not result["verified"]
        assert [e["path"] for e in result["files"] if not e["verified"]] == [path]
        assert "verification failed" in [e for e in result["files"] if e["path"] == path][0]["message"]
        with pytest.raises(s.SignatureError, match=r"1 of 5 signature\(s\) did not verify.*%s" % name):
            s.require_verified(result)
        with open(path, "wb") as f:
            f.write(original)
        assert plain_verify(case, name).returncode == 0


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_changed_signature_byte_is_refused(case, keys, no_agent):
    s.sign(paths(case), keys["ed25519"], PRINCIPAL)
    sig = os.path.join(case, "custody.jsonl.sig")
    with open(sig) as f:
        lines = f.read().splitlines(True)
    body = lines[1]
    lines[1] = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    with open(sig, "w") as f:
        f.write("".join(lines))
    assert plain_verify(case, "custody.jsonl").returncode != 0
    assert not s.verify(paths(case, ["custody.jsonl"]), os.path.join(case, "allowed_signers"))["verified"]


def test_resign_after_the_custody_log_grows_and_idempotence(case, keys, no_agent):
    first = s.sign(paths(case), keys["ed25519"], PRINCIPAL)
    assert first["changed"]
    sigs = dict((n, os.stat(os.path.join(case, n + ".sig"))) for n in RECORDS)
    again = s.sign(paths(case), keys["ed25519"], PRINCIPAL)
    assert not again["changed"] and again["written"] == []
    assert [e["action"] for e in again["files"]] == ["kept"] * len(RECORDS)
    assert all(e["reason"].startswith("Good") for e in again["files"])
    with open(os.path.join(case, "custody.jsonl"), "ab") as f:
        f.write(b'{"event":"sign","seq":2}\n')
    assert plain_verify(case, "custody.jsonl").returncode != 0
    check = s.sign(paths(case), keys["ed25519"], PRINCIPAL, check_mode=True)
    custody = os.path.join(case, "custody.jsonl")
    assert check["changed"] and [e["path"] for e in check["files"] if e["changed"]] == [custody]
    assert os.stat(os.path.join(case, "custody.jsonl.sig")).st_ino == sigs["custody.jsonl"].st_ino
    grown = s.sign(paths(case), keys["ed25519"], PRINCIPAL)
    assert grown["changed"] and grown["written"] == []
    actions = dict((os.path.basename(e["path"]), e["action"]) for e in grown["files"])
    assert actions.pop("custody.jsonl") == "replaced" and set(actions.values()) == {"kept"}
    assert "verification failed" in [e for e in grown["files"] if e["action"] == "replaced"][0]["reason"]
    for name in RECORDS:
        assert plain_verify(case, name).returncode == 0
        unchanged = os.stat(os.path.join(case, name + ".sig"))
        if name != "custody.jsonl":
            assert (unchanged.st_ino, unchanged.st_mtime_ns) == (sigs[name].st_ino, sigs[name].st_mtime_ns)
    assert not s.sign(paths(case), keys["ed25519"], PRINCIPAL)["changed"]


def test_check_mode_writes_nothing(case, keys, no_agent):
    before = sorted(os.listdir(case))
    res = s.sign(paths(case), keys["rsa"], PRINCIPAL, check_mode=True)
    assert res["changed"] and all(e["action"] == "signed" for e in res["files"])
    assert sorted(res["written"]) == [os.path.join(case, "allowed_signers"), os.path.join(case, "examiner.pub")]
    assert sorted(os.listdir(case)) == before


def test_a_passphrase_without_an_agent_is_refused_at_once(case, keys, no_agent):
    started = time.monotonic()
    with pytest.raises(s.SigningError) as err:
        s.sign(paths(case), keys["locked"], PRINCIPAL)
    took = time.monotonic() - started
    assert took < 10, "took %.1f s: it waited for something" % took
    assert "protected by a passphrase" in err.value.message and "no ssh-agent holds it" in err.value.message
    assert "Nothing was written" in err.value.message
    assert sorted(os.listdir(case)) == sorted(RECORDS), "a key that cannot sign wrote something"
    # its public half is still known without the passphrase (no .pub beside it needed)
    moved = keys["locked"] + ".pub"
    os.rename(moved, moved + ".away")
    try:
        assert s.public_key(keys["locked"]) == tuple(open(moved + ".away").read().split()[:2])
    finally:
        os.rename(moved + ".away", moved)


@pytest.fixture
def agent(monkeypatch):
    """A real ssh-agent in the foreground (-D), its socket in SSH_AUTH_SOCK; killed at the end."""
    folder = tempfile.mkdtemp(prefix="vmc-agent-")
    sock = os.path.join(folder, "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        monkeypatch.delenv("DISPLAY", raising=False)
        yield sock
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def ssh_add(sock, key, passphrase=None):
    env = dict(os.environ, SSH_AUTH_SOCK=sock)
    folder = tempfile.mkdtemp(prefix="vmc-askpass-")
    try:
        if passphrase is not None:
            askpass = os.path.join(folder, "askpass")
            with open(askpass, "w") as f:
                f.write("#!/bin/sh\necho '%s'\n" % passphrase)
            os.chmod(askpass, 0o700)
            env.update(SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force")
        subprocess.run(["ssh-add", key], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, start_new_session=True, timeout=30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_keys_held_by_a_real_ssh_agent(case, keys, agent, tmp_path):
    # a public key whose private half the agent does not hold yet: a clear sentence, nothing written
    pub_only = str(tmp_path / "locked.pub")
    shutil.copy(keys["locked"] + ".pub", pub_only)
    with pytest.raises(s.SigningError, match="is a public key and the ssh-agent at SSH_AUTH_SOCK=.* does not hold it"):
        s.sign(paths(case), pub_only, PRINCIPAL)
    assert sorted(os.listdir(case)) == sorted(RECORDS)
    ssh_add(agent, keys["locked"], PASSPHRASE)
    res = s.sign(paths(case), pub_only, PRINCIPAL)
    assert res["changed"] and all(e["action"] == "signed" for e in res["files"])
    for name in RECORDS:
        assert plain_verify(case, name).returncode == 0
    # the passphrase-protected private key file, named as it is: ssh-keygen signs through the agent
    with open(os.path.join(case, "custody.jsonl"), "ab") as f:
        f.write(b'{"event":"report","seq":2}\n')
    res = s.sign(paths(case), keys["locked"], PRINCIPAL)
    assert [os.path.basename(e["path"]) for e in res["files"] if e["changed"]] == ["custody.jsonl"]
    assert plain_verify(case, "custody.jsonl").returncode == 0


def test_another_examiners_case_is_not_signed_over(case, keys, no_agent):
    s.sign(paths(case), keys["ed25519"], PRINCIPAL)
    before = dict((n, open(os.path.join(case, n), "rb").read()) for n in os.listdir(case))
    with pytest.raises(DestinationError, match="holds another signer.*Nothing was signed"):
        s.sign(paths(case), keys["rsa"], PRINCIPAL)
    with pytest.raises(DestinationError, match="holds another signer"):
        s.sign(paths(case), keys["ed25519"], "someone.else@example.org")
    assert dict((n, open(os.path.join(case, n), "rb").read()) for n in os.listdir(case)) == before


def test_principal_with_spaces_is_quoted_and_verifies(case, keys, no_agent):
    who = "Jane Doe <jane.doe@example.org>"
    res = s.sign(paths(case, ["custody.jsonl"]), keys["ed25519"], "  %s " % who)
    assert res["principal"] == who
    with open(os.path.join(case, "allowed_signers")) as f:
        assert f.read().startswith('"%s" namespaces="dfir.vmcollect@evidence" ssh-ed25519 ' % who)
    assert plain_verify(case, "custody.jsonl", principal=who).returncode == 0
    assert plain_verify(case, "custody.jsonl", principal="Jane Doe").returncode != 0
    # the principal is read from allowed_signers when not given
    assert s.verify(paths(case, ["custody.jsonl"]), os.path.join(case, "allowed_signers"))["principal"] == who
    assert "Good" in run_documented_command(case, res["command"])


@pytest.mark.parametrize("principal, says", [
    ("", "is empty"),
    ("jane\ndoe", "line break"),
    ("jane\rdoe", "line break"),
    ("jane\tdoe\x07", "control character"),
    ("a@b,c@d", "comma separates principals"),
    ("*@example.org", "wildcards"),
    ('"jane"', "double quote"),
    ("!jane", "negation"),
    ("#jane", "comment"),
    ("x" * 300, "at most 256"),
])
def test_bad_principals_are_refused_with_a_sentence(case, keys, principal, says):
    with pytest.raises(InvalidInputError, match=says):
        s.sign(paths(case), keys["ed25519"], principal)
    assert sorted(os.listdir(case)) == sorted(RECORDS)


def test_bad_namespace_and_inputs(case, keys):
    with pytest.raises(InvalidInputError, match="namespace"):
        s.sign(paths(case), keys["ed25519"], PRINCIPAL, namespace='a" b')
    with pytest.raises(InvalidInputError, match="not an absolute path"):
        s.sign(["manifest.json"], keys["ed25519"], PRINCIPAL)
    with pytest.raises(InvalidInputError, match="is a signature"):
        s.sign([os.path.join(case, "manifest.json.sig")], keys["ed25519"], PRINCIPAL)
    with pytest.raises(InvalidInputError, match="missing"):
        s.sign(paths(case), os.path.join(case, "no-such-key"), PRINCIPAL)
    with pytest.raises(Exception, match="missing; nothing was signed"):
        s.sign([os.path.join(case, "gone.json")], keys["ed25519"], PRINCIPAL)
    assert sorted(os.listdir(case)) == sorted(RECORDS)


def test_verify_names_a_missing_signature_or_record(case, keys, no_agent):
    s.sign(paths(case, ["manifest.json", "custody.jsonl"]), keys["ed25519"], PRINCIPAL)
    os.unlink(os.path.join(case, "manifest.json"))
    res = s.verify(paths(case, ["manifest.json", "custody.jsonl", "report.txt"]), os.path.join(case, "allowed_signers"))
    by_name = dict((os.path.basename(e["path"]), e) for e in res["files"])
    assert not res["verified"] and by_name["custody.jsonl"]["verified"]
    assert "manifest.json is missing" in by_name["manifest.json"]["message"]
    assert "report.txt.sig is missing" in by_name["report.txt"]["message"]
    with pytest.raises(Exception, match="allowed_signers file .* is missing; the case is not signed"):
        s.verify(paths(case), os.path.join(case, "nothing", "allowed_signers"))


def test_the_documented_command_is_the_one_returned():
    import yaml
    from ansible_collections.dfir.vmcollect.plugins.modules import evidence_sign
    notes = yaml.safe_load(evidence_sign.DOCUMENTATION)["notes"]
    documented = [n for n in notes if "for s in *.sig" in n][0]
    documented = documented[documented.index("C(for s in") + 2:-1]
    assert documented == s.verify_command("examiner@example.org")


# ---- probe: the key signs before anything is acquired -----------------------------------------------------------

def test_the_probe_signs_nothing_it_leaves_and_check_mode_only_reads_the_key(keys, no_agent, tmp_path, monkeypatch):
    monkeypatch.setattr(s.tempfile, "tempdir", str(tmp_path))  # every temporary folder of the module lands here
    res = s.probe(keys["ed25519"], PRINCIPAL)
    assert res["probed"] and not res["changed"] and res["files"] == [] and res["written"] == []
    assert res["fingerprint"].startswith("SHA256:") and res["key_type"] == "ED25519"
    assert res["command"] == s.verify_command(PRINCIPAL)
    plan = s.probe(keys["ed25519"], PRINCIPAL, check_mode=True)
    assert not plan["probed"] and plan["fingerprint"] == res["fingerprint"]
    assert os.listdir(str(tmp_path)) == []  # the probe's folder is gone


def test_the_probe_refuses_a_key_that_cannot_sign_without_a_prompt(keys, no_agent):
    with pytest.raises(s.SigningError) as err:
        s.probe(keys["locked"], PRINCIPAL)
    assert "protected by a passphrase" in err.value.message and "Nothing was written" in err.value.message
    # reading the key alone (check mode) needs no passphrase
    assert s.probe(keys["locked"], PRINCIPAL, check_mode=True)["fingerprint"].startswith("SHA256:")


# ---- place: signatures made on the controller, put beside the records where they lie ----------------------------

def signed_elsewhere(case, key, tmp_path):
    """Copies of the records signed in another folder (as on the controller); sign()'s result."""
    there = tmp_path / "controller"
    there.mkdir()
    for name in RECORDS:
        shutil.copyfile(os.path.join(case, name), str(there / name))
    return s.sign(paths(str(there)), key, PRINCIPAL)


def test_place_writes_the_signatures_then_plain_ssh_keygen_verifies_and_a_rerun_keeps_them(
        case, keys, no_agent, tmp_path):
    signed = signed_elsewhere(case, keys["ed25519"], tmp_path)
    assert sorted(signed["content"]) == sorted([n + ".sig" for n in RECORDS] + ["examiner.pub", "allowed_signers"])
    plan = s.place(paths(case), signed["content"], check_mode=True)
    assert plan["changed"] and plan["verified"] is None and sorted(os.listdir(case)) == sorted(RECORDS)
    res = s.place(paths(case), signed["content"], PRINCIPAL)
    assert res["changed"] and res["verified"] and res["principal"] == PRINCIPAL
    assert [e["action"] for e in res["files"]] == ["signed"] * len(RECORDS)
    assert sorted(res["written"]) == [os.path.join(case, "allowed_signers"), os.path.join(case, "examiner.pub")]
    for name in RECORDS:
        assert plain_verify(case, name).returncode == 0
        assert stat.S_IMODE(os.stat(os.path.join(case, name + ".sig")).st_mode) == 0o640
    again = s.place(paths(case), signed["content"])
    assert not again["changed"] and [e["action"] for e in again["files"]] == ["kept"] * len(RECORDS)


def test_place_refuses_a_signature_of_other_bytes_and_writes_nothing(case, keys, no_agent, tmp_path):
    signed = signed_elsewhere(case, keys["ed25519"], tmp_path)
    with open(os.path.join(case, "custody.jsonl"), "ab") as f:
        f.write(b'{"event":"later","seq":2}\n')  # the log grew after it was read to be signed
    with pytest.raises(s.SignatureError) as err:
        s.place(paths(case), signed["content"])
    assert "custody.jsonl" in err.value.message and "Nothing was written" in err.value.message
    assert sorted(os.listdir(case)) == sorted(RECORDS)


def test_place_refuses_foreign_names_another_signer_and_a_mismatched_key(case, keys, no_agent, tmp_path):
    signed = signed_elsewhere(case, keys["ed25519"], tmp_path)
    with pytest.raises(InvalidInputError, match="more than one folder"):
        s.place(paths(case) + [os.path.join(str(tmp_path), "controller", "report.txt")], signed["content"])
    with pytest.raises(InvalidInputError, match=r"name \.\./x\.sig, which is no signature"):
        s.place(paths(case), dict(signed["content"], **{"../x.sig": "x"}))
    other = s.sign(paths(str(tmp_path / "controller"), ["manifest.json"]), keys["rsa"], PRINCIPAL,
                   folder=str(tmp_path))
    with pytest.raises(InvalidInputError, match="do not name one signer with the key of examiner.pub"):
        s.place(paths(case), dict(signed["content"], **{"examiner.pub": other["content"]["examiner.pub"]}))
    with pytest.raises(InvalidInputError, match="names jane.doe@example.org, not someone else"):
        s.place(paths(case), signed["content"], "someone else")
    s.sign(paths(case, ["manifest.json"]), keys["rsa"], PRINCIPAL)  # the case is another key's already
    before = sorted(os.listdir(case))
    with pytest.raises(DestinationError, match="signed by another examiner or key; nothing was written"):
        s.place(paths(case), signed["content"])
    assert sorted(os.listdir(case)) == before
