# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host keys: fingerprints as ssh-keygen prints them, pinned fingerprints, the known_hosts reader (plain, [host]:port,
hashed, wildcards, negation, @revoked, @cert-authority, junk), what it says of a presented key, the order of host
key algorithms, and the refusal sentences."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import hmac
import os
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh import client as sc


def _keygen(tmp_path, name, kind):
    path = str(tmp_path / name)
    bits = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind] + bits + ["-N", "", "-C", "unit", "-f", path], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    with open(path + ".pub") as f:
        key_type, data = f.read().split()[:2]
    printed = subprocess.run(["ssh-keygen", "-lf", path + ".pub"], check=True, stdout=subprocess.PIPE,
                             universal_newlines=True, timeout=10).stdout
    return key_type, data, base64.b64decode(data), printed


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return dict((kind, _keygen(folder, kind, kind)) for kind in ("ed25519", "ecdsa", "rsa"))


def _hashed(name, salt=b"0123456789abcdefghij"):
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return "|1|%s|%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


# -- fingerprints -------------------------------------------------------------------------------------

def test_fingerprints_are_what_ssh_keygen_prints(keys):
    for kind, (_key_type, _data, blob, printed) in keys.items():
        assert sc.fingerprint_sha256(blob) == printed.split()[1], kind
        # the whole `ssh-keygen -lf` line is accepted as a pin, and so is the fingerprint alone
        assert sc.parse_fingerprint(printed) == printed.split()[1]
        assert sc.parse_fingerprint(" %s " % printed.split()[1]) == printed.split()[1]
        assert sc.parse_fingerprint(printed.split()[1] + "=") == printed.split()[1]


def test_a_paramiko_key_has_the_same_fingerprint(keys):
    paramiko = pytest.importorskip("paramiko")
    key_type, data, blob, printed = keys["ed25519"]
    key = paramiko.PKey.from_type_string(key_type, blob)
    assert sc.fingerprint_sha256(key) == printed.split()[1] == key.fingerprint


@pytest.mark.parametrize("text, says", [
    ("", "host_key_fingerprint is empty"),
    ("   ", "host_key_fingerprint is empty"),
    ("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "is an MD5 fingerprint; MD5 is too weak"),
    ("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "is an MD5 fingerprint"),
    ("SHA256:tooshort", "is not a SHA256 fingerprint as OpenSSH prints it"),
    ("SHA1:" + "A" * 27, "is not a SHA256 fingerprint"),
    ("AB:CD:" * 31 + "EF", "is not a SHA256 fingerprint"),
    ("SHA256:" + "A" * 44, "is not a SHA256 fingerprint"),
])
def test_bad_pins_are_refused(text, says):
    with pytest.raises(InvalidInputError, match=says):
        sc.parse_fingerprint(text)


# -- known_hosts ----------------------------------------------------------------------------------------

def test_known_hosts_lines(keys):
    ed_type, ed_data, ed_blob, _p = keys["ed25519"]
    rsa_type, rsa_data, rsa_blob, _p = keys["rsa"]
    text = "\n".join([
        "# a comment",
        "",
        "esxi1.example.org,10.0.0.5 %s %s root@esxi1" % (ed_type, ed_data),
        "[esxi1.example.org]:2222 %s %s" % (rsa_type, rsa_data),
        "%s %s %s" % (_hashed("esxi2.example.org"), ed_type, ed_data),
        "*.lab.example.org,!bad.lab.example.org %s %s" % (rsa_type, rsa_data),
        "@revoked * %s %s" % (rsa_type, rsa_data),
        "@cert-authority *.example.org %s %s" % (ed_type, ed_data),
        "@unknown-marker esxi9 %s %s" % (ed_type, ed_data),
        "too few fields",
        "esxi3 ssh-ed25519 not*base64!",
        "\tesxi4\t%s\t%s\t" % (ed_type, ed_data),
    ])
    entries = sc.parse_known_hosts(text)
    assert [(e.lineno, e.marker, e.key_type) for e in entries] == [
        (3, None, ed_type), (4, None, rsa_type), (5, None, ed_type), (6, None, rsa_type), (7, "revoked", rsa_type),
        (8, "cert-authority", ed_type), (12, None, ed_type)]
    assert entries[0].blob == ed_blob and entries[0].fingerprint == sc.fingerprint_sha256(ed_blob)

    def status(host, port, blob):
        return sc.check_known_hosts(entries, sc.known_hosts_name(host, port), blob)

    assert status("esxi1.example.org", 22, ed_blob) == ("ok", [entries[0]])
    assert status("ESXi1.Example.ORG", 22, ed_blob)[0] == "ok"  # names have no case
    assert status("10.0.0.5", 22, ed_blob)[0] == "ok"
    # port 2222 is another name: its own entry only
    assert status("esxi1.example.org", 2222, ed_blob) == ("changed", [entries[1]])
    assert status("10.0.0.5", 2222, ed_blob) == ("unknown", [])
    assert status("esxi2.example.org", 22, ed_blob)[0] == "ok"  # hashed
    assert status("esxi2.example.org", 2222, ed_blob)[0] == "unknown"
    assert status("esxi4", 22, ed_blob)[0] == "ok"  # tabs
    # wildcards and negation; the @revoked line wins over a line that trusts the key
    assert status("vm7.lab.example.org", 22, ed_blob) == ("changed", [entries[3]])
    assert status("vm7.lab.example.org", 22, rsa_blob) == ("revoked", [entries[4]])
    assert status("bad.lab.example.org", 22, ed_blob) == ("unknown", [])
    # @cert-authority lines are not used
    assert status("esxi5.example.org", 22, ed_blob) == ("unknown", [])


def test_host_patterns():
    assert sc.host_matches("[10.0.0.5]:2222", "[10.0.0.5]:2222")  # brackets are literal, not a character class
    assert not sc.host_matches("[10.0.0.5]:2222", "1")
    assert sc.host_matches("esxi?", "esxi1") and not sc.host_matches("esxi?", "esxi12")
    assert sc.host_matches("*", "anything") and not sc.host_matches("!*", "anything")
    assert sc.host_matches(_hashed("[h]:2222"), "[h]:2222") and not sc.host_matches(_hashed("h"), "[h]:2222")
    assert not sc.host_matches("|1|bad|hash", "h") and not sc.host_matches("|2|a|b", "h")
    assert sc.known_hosts_name("ESXi1", 22) == "esxi1" and sc.known_hosts_name("10.0.0.5", 2222) == "[10.0.0.5]:2222"


def test_read_known_hosts(tmp_path, keys):
    path = tmp_path / "known_hosts"
    assert sc.read_known_hosts(str(path)) == ([], False)
    path.write_text("h %s %s\n" % keys["ed25519"][:2])
    entries, exists = sc.read_known_hosts(str(path))
    assert exists and len(entries) == 1
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        with pytest.raises(InvalidInputError, match="known_hosts .* cannot be read: Permission denied"):
            sc.read_known_hosts(str(path))


def test_the_known_key_types_are_offered_first():
    available = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512",
                 "rsa-sha2-256", "ssh-rsa"]
    assert sc.preferred_key_types([], available) == available
    assert sc.preferred_key_types(["ssh-rsa"], available) == [
        "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521"]
    # several known: in the client's order of preference, whatever the file's order
    assert sc.preferred_key_types(["ssh-rsa", "ecdsa-sha2-nistp256", "ssh-ed25519"], available)[:5] == [
        "ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    assert sc.preferred_key_types(["sk-ssh-ed25519@openssh.com"], available) == available


# -- the refusals -----------------------------------------------------------------------------------------

FP = "SHA256:" + "A" * 43


def test_unknown_key_sentence():
    text = sc.unknown_key_sentence("10.0.0.5:2222", "[10.0.0.5]:2222", "ssh-ed25519", FP, "/case/known hosts")
    assert text == (
        "The SSH host key of 10.0.0.5:2222 is unknown: /case/known hosts has no entry for [10.0.0.5]:2222, and the "
        "host presented the ssh-ed25519 key %s. The connection was closed before any credential was sent. Do not "
        "trust that key before you checked it out of band: compare it with the fingerprint the host itself shows on "
        "its console, not over this network (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`). Then add it to "
        "/case/known hosts (`ssh-keyscan -p 2222 -t ed25519 10.0.0.5 >> '/case/known hosts'`, after `ssh-keyscan "
        "-p 2222 10.0.0.5 | ssh-keygen -lf -` showed the same fingerprint) or pin it with host_key_fingerprint=%s."
        % (FP, FP))
    text = sc.unknown_key_sentence("esxi1:22", "esxi1", "ecdsa-sha2-nistp256", FP, "/k", exists=False)
    assert "/k does not exist, and the host presented the ecdsa-sha2-nistp256 key" in text
    assert "ssh_host_ecdsa_key.pub" in text and "ssh-keyscan -p 22 -t ecdsa esxi1 >> /k" in text


def test_changed_key_sentence(keys):
    entries = sc.parse_known_hosts("x\nesxi1 %s %s\nesxi1 %s %s\n" % (keys["rsa"][:2] + keys["ecdsa"][:2]))
    text = sc.changed_key_sentence("esxi1:22", "esxi1", "ssh-rsa", FP, "/k", entries)
    rsa, ecdsa = entries[0].fingerprint, entries[1].fingerprint
    assert text.startswith(
        "The SSH host key of esxi1:22 has CHANGED: the host presented the ssh-rsa key %s, but /k holds the ssh-rsa key "
        "%s (line 2), the ecdsa-sha2-nistp256 key %s (line 3) for esxi1. The connection was closed before any "
        "credential was sent. Either the host's SSH keys were made anew" % (FP, rsa, ecdsa)), text
    assert text.endswith("and only then replace the entry (`ssh-keygen -R esxi1 -f /k`, then add the checked key).")
    text = sc.changed_key_sentence("esxi1:22", "esxi1", "ssh-ed25519", FP, "/k", entries[:1])
    assert "(no ssh-ed25519 key is known for it: the host offered none of the known key types)" in text


def test_revoked_and_not_pinned_sentences():
    entries = sc.parse_known_hosts("@revoked * ssh-ed25519 %s\n" % base64.b64encode(b"k" * 51).decode())
    text = sc.revoked_key_sentence("esxi1:22", "ssh-ed25519", FP, "/k", entries)
    assert text.startswith("The SSH host key of esxi1:22 is REVOKED: the ssh-ed25519 key %s it presented is marked "
                           "@revoked in /k (line 1)." % FP)
    text = sc.not_pinned_sentence("esxi1:22", FP, [("ssh-ed25519", "SHA256:one"), ("ssh-rsa", "SHA256:two")])
    assert text.startswith("The SSH host key of esxi1:22 is not the pinned host_key_fingerprint %s: the host presented "
                           "the ssh-ed25519 key SHA256:one, the ssh-rsa key SHA256:two (each host key type it offers "
                           "was tried). The connection was closed before any credential was sent." % FP)
