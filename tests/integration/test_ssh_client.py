# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH client against a real OpenSSH sshd of its own (not the lab's): started by this module as root on
127.0.0.1 and a free port, with a private sshd_config, temporary host keys (ed25519 and rsa) and a temporary
authorized_keys; key login only (password login needs PAM or a user with a known password: it is tested against
a paramiko server in the unit tests).

Host keys known, unknown, changed, pinned; an argv with spaces, brackets, quotes, $ and backticks arriving exactly;
exit codes and stderr; a command past its timeout stopped on the host; a secret piped on stdin never in the host's
process list; 10 MB on stdout while 7 MB go to stderr; the output bound."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import free_port
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    SshCommandError,
    SshError,
    SshHostKeyError,
    SshTimeout,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh import client as sc

pytest.importorskip("paramiko")

SSHD = "/usr/sbin/sshd"


def _keygen(path, kind, bits=None):
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "vmcollect-test", "-f", str(path)]
    if bits:
        cmd[4:4] = ["-b", str(bits)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return str(path)


def _fingerprint(pub):
    """The fingerprint `ssh-keygen -lf` prints for a public key file."""
    out = subprocess.run(["ssh-keygen", "-lf", pub], check=True, stdout=subprocess.PIPE, universal_newlines=True,
                         timeout=10).stdout
    return out.split()[1]


class Sshd(object):
    def __init__(self, folder, port, proc, host_keys, client_key):
        self.folder = folder
        self.port = port
        self.proc = proc
        self.host_keys = host_keys  # kind -> private key path
        self.client_key = client_key

    def known_hosts(self, name, kinds=("ed25519", "rsa"), hashed=False):
        """A known_hosts file made as the refusal sentence says: with ssh-keyscan."""
        cmd = ["ssh-keyscan", "-p", str(self.port), "-t", ",".join(kinds)] + (["-H"] if hashed else []) + ["127.0.0.1"]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             universal_newlines=True, timeout=20).stdout
        assert out.count("\n") >= len(kinds), out
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write("# made by ssh-keyscan\n" + out)
        return path

    def client(self, **kwargs):
        kwargs.setdefault("private_key_file", self.client_key)
        kwargs.setdefault("timeout", 5)
        return sc.SshClient("127.0.0.1", port=self.port, **kwargs)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None or shutil.which("ssh-keyscan") is None:
        pytest.skip("OpenSSH's sshd, ssh-keygen and ssh-keyscan are needed (Debian: openssh-server, openssh-client)")
    if os.geteuid() != 0:
        pytest.skip("a test sshd must run as root (it switches to the user that logs in)")
    folder = str(tmp_path_factory.mktemp("sshd"))
    host_keys = {"ed25519": _keygen(os.path.join(folder, "host_ed25519"), "ed25519"),
                 "rsa": _keygen(os.path.join(folder, "host_rsa"), "rsa", 2048)}
    client_key = _keygen(os.path.join(folder, "client_ed25519"), "ed25519")
    shutil.copy(client_key + ".pub", os.path.join(folder, "authorized_keys"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder (Debian makes it)
    port = free_port()
    config = os.path.join(folder, "sshd_config")
    with open(config, "w") as f:
        f.write("\n".join([
            "ListenAddress 127.0.0.1", "Port %d" % port,
            "HostKey %s" % host_keys["ed25519"], "HostKey %s" % host_keys["rsa"],
            "PidFile %s" % os.path.join(folder, "sshd.pid"),
            "AuthorizedKeysFile %s" % os.path.join(folder, "authorized_keys"),
            "PermitRootLogin yes", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "MaxStartups 50",
            "LogLevel ERROR", ""]))
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the test sshd did not start: %s" % proc.communicate()[0].decode("utf-8", "replace"))
        time.sleep(0.05)
    try:
        yield Sshd(folder, port, proc, host_keys, client_key)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def ssh(sshd):
    """One logged-in client for the command tests."""
    with sshd.client(known_hosts=sshd.known_hosts("known_hosts")) as client:
        yield client


def _processes_with(text):
    out = subprocess.run(["ps", "-eo", "pid=,args="], check=True, stdout=subprocess.PIPE, universal_newlines=True,
                         timeout=10).stdout
    return [line for line in out.splitlines() if text in line]


# -- host keys ---------------------------------------------------------------------------------------

def test_a_key_login_with_the_key_in_known_hosts_is_recorded_for_the_manifest(sshd):
    known = sshd.known_hosts("kh_plain")
    with sshd.client(known_hosts=known) as client:
        assert client.where == "127.0.0.1:%d" % sshd.port
        record = client.host_key_record()
        assert client.run(["true"]) == (0, b"", b"")
    assert record["verified"] is True and record["how"] == "known_hosts" and record["known_hosts"] == known
    # the ed25519 key is paramiko's first choice; the record is what `ssh-keygen -lf` says of it
    assert (record["key_type"], record["fingerprint_sha256"]) == (
        "ssh-ed25519", _fingerprint(sshd.host_keys["ed25519"] + ".pub"))
    assert client._client is None  # closed by the with


def test_hashed_known_hosts_and_a_host_known_by_its_rsa_key_only(sshd):
    with sshd.client(known_hosts=sshd.known_hosts("kh_hashed", hashed=True)) as client:
        assert client.host_key_record()["key_type"] == "ssh-ed25519"
    # known by its RSA key only: the RSA host key algorithms are offered first, so the host is not refused for
    # presenting its (unknown) ed25519 key
    with sshd.client(known_hosts=sshd.known_hosts("kh_rsa", kinds=("rsa",))) as client:
        record = client.host_key_record()
    assert record["key_type"] == "ssh-rsa"
    assert record["fingerprint_sha256"] == _fingerprint(sshd.host_keys["rsa"] + ".pub")


def test_a_pinned_fingerprint_of_either_host_key(sshd):
    for kind, key_type in (("ed25519", "ssh-ed25519"), ("rsa", "ssh-rsa")):
        pin = _fingerprint(sshd.host_keys[kind] + ".pub")
        with sshd.client(host_key_fingerprint=pin) as client:
            assert client.run_checked(["echo", "pinned"]) == (b"pinned\n", b"")
            record = client.host_key_record()
        assert record == {"verified": True, "how": "fingerprint", "key_type": key_type, "fingerprint_sha256": pin,
                          "known_hosts": None}


def test_an_unknown_host_key_is_refused_with_its_fingerprint(sshd):
    empty = os.path.join(sshd.folder, "kh_empty")
    open(empty, "w").close()
    fingerprint = _fingerprint(sshd.host_keys["ed25519"] + ".pub")
    with pytest.raises(SshHostKeyError) as caught:
        sshd.client(known_hosts=empty).connect()
    message = caught.value.message
    assert message.startswith("The SSH host key of 127.0.0.1:%d is unknown: %s has no entry for [127.0.0.1]:%d"
                              % (sshd.port, empty, sshd.port)), message
    assert "the ssh-ed25519 key %s" % fingerprint in message and "before any credential was sent" in message
    assert "ssh-keyscan -p %d -t ed25519 127.0.0.1 >> %s" % (sshd.port, empty) in message
    assert caught.value.details["reason"] == "unknown"
    assert caught.value.details["host_key"] == {"key_type": "ssh-ed25519", "fingerprint_sha256": fingerprint}
    # a known_hosts file that does not exist says so
    with pytest.raises(SshHostKeyError, match="kh_missing does not exist, and the host presented"):
        sshd.client(known_hosts=os.path.join(sshd.folder, "kh_missing")).connect()


def test_a_changed_host_key_is_refused_naming_both_keys(sshd):
    other = _keygen(os.path.join(sshd.folder, "other_ed25519"), "ed25519")
    with open(other + ".pub") as f:
        kind, blob = f.read().split()[:2]
    known = os.path.join(sshd.folder, "kh_changed")
    with open(known, "w") as f:
        f.write("127.0.0.1 %s %s\n[127.0.0.1]:%d %s %s\n" % (kind, blob, sshd.port, kind, blob))
    with pytest.raises(SshHostKeyError) as caught:
        sshd.client(known_hosts=known).connect()
    message = caught.value.message
    assert message.startswith("The SSH host key of 127.0.0.1:%d has CHANGED: the host presented the ssh-ed25519 key %s"
                              % (sshd.port, _fingerprint(sshd.host_keys["ed25519"] + ".pub"))), message
    # the entry for port 22 is not this host's: only the [127.0.0.1]:port line is named
    assert "holds the ssh-ed25519 key %s (line 2) for [127.0.0.1]:%d" % (_fingerprint(other + ".pub"), sshd.port) \
        in message
    assert "ssh-keygen -R '[127.0.0.1]:%d' -f %s" % (sshd.port, known) in message
    assert caught.value.details["reason"] == "changed"


def test_a_revoked_host_key_is_refused_even_where_a_line_trusts_it(sshd):
    known = sshd.known_hosts("kh_revoked", kinds=("ed25519",))
    with open(sshd.host_keys["ed25519"] + ".pub") as f:
        kind, blob = f.read().split()[:2]
    with open(known, "a") as f:
        f.write("@revoked * %s %s\n" % (kind, blob))
    with pytest.raises(SshHostKeyError) as caught:
        sshd.client(known_hosts=known).connect()
    assert caught.value.message.startswith(
        "The SSH host key of 127.0.0.1:%d is REVOKED: the ssh-ed25519 key %s it presented is marked @revoked in %s "
        "(line 3)." % (sshd.port, _fingerprint(sshd.host_keys["ed25519"] + ".pub"), known)), caught.value.message


def test_a_wrong_pin_is_refused_after_every_host_key_type_was_tried(sshd):
    wrong = "SHA256:" + base64.b64encode(hashlib.sha256(b"not the key").digest()).decode().rstrip("=")
    with pytest.raises(SshHostKeyError) as caught:
        sshd.client(host_key_fingerprint=wrong).connect()
    message = caught.value.message
    assert message.startswith("The SSH host key of 127.0.0.1:%d is not the pinned host_key_fingerprint %s"
                              % (sshd.port, wrong)), message
    for kind, key_type in (("ed25519", "ssh-ed25519"), ("rsa", "ssh-rsa")):
        assert "the %s key %s" % (key_type, _fingerprint(sshd.host_keys[kind] + ".pub")) in message


# -- commands ----------------------------------------------------------------------------------------

def test_a_datastore_like_path_round_trips_exactly(ssh, tmp_path):
    folder = str(tmp_path / "Win Srv [prod] 01")
    path = os.path.join(folder, "Win Srv [prod] 01.vmdk")
    odd = os.path.join(folder, "it's $HOME `id` \\ * ü\nline2 [1]")
    ssh.run_checked(["mkdir", "-p", folder])
    ssh.run_checked(["touch", path, odd])
    out, _err = ssh.run_checked(["stat", "-c", "%n|%s", path])
    assert out == (path + "|0\n").encode("utf-8")
    assert sorted(os.listdir(folder)) == sorted([os.path.basename(path), os.path.basename(odd)])
    out, _err = ssh.run_checked(["ls", "-1", "--quoting-style=literal", folder])
    assert out.decode("utf-8").count("\n") == 3  # two names, one of them holds a newline


def test_exit_codes_and_stderr_are_reported(ssh):
    rc, out, err = ssh.run(["sh", "-c", "echo out; echo oops >&2; exit 3"])
    assert (rc, out, err) == (3, b"out\n", b"oops\n")  # the line that said the shell's process id is gone
    rc, out, err = ssh.run("echo $((6 * 7)) | tr 4 X")  # a command line as it is, for the host's shell
    assert (rc, out, err) == (0, b"X2\n", b"")
    with pytest.raises(SshCommandError) as caught:
        ssh.run_checked(["ls", "/nonexistent dir [x]"])
    assert caught.value.details["rc"] == 2
    assert caught.value.message.startswith("The command `ls '/nonexistent dir [x]'` failed on %s with exit code 2: "
                                           % ssh.where)
    assert "No such file or directory" in caught.value.message


def test_a_command_past_its_timeout_is_stopped_on_the_host(ssh):
    nonce = "30.%d" % (os.getpid() * 1000 + int(time.time()) % 1000)
    started = time.monotonic()
    with pytest.raises(SshTimeout) as caught:
        ssh.run(["sh", "-c", "sleep %s; echo never" % nonce], timeout=1)
    took = time.monotonic() - started
    assert took < 2.5, took
    message = caught.value.message
    assert message.startswith("The command `sh -c 'sleep %s; echo never'` on %s did not end within 1 s; it was "
                              "stopped there (SIGTERM to its process group " % (nonce, ssh.where)), message
    assert caught.value.details["stopped"] is True
    deadline = time.monotonic() + 2
    while _processes_with("sleep " + nonce) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_with("sleep " + nonce)
    # the connection is still good
    assert ssh.run(["echo", "after"])[1] == b"after\n"


def test_a_command_that_ignores_sigterm_is_killed(ssh):
    nonce = "31.%d" % os.getpid()
    started = time.monotonic()
    with pytest.raises(SshTimeout, match=r"it was killed there \(SIGKILL to its process group \d+, 2 s after"):
        ssh.run(["sh", "-c", "trap '' TERM; sleep %s" % nonce], timeout=0.5)
    assert time.monotonic() - started < 0.5 + sc.KILL_GRACE + 1.5
    time.sleep(0.2)
    assert not _processes_with("sleep " + nonce)


def test_a_secret_on_stdin_is_never_in_the_process_list(ssh):
    secret = "chap-%s-s3cret" % os.urandom(6).hex()
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.extend(_processes_with(secret))
            seen.append(None)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out, _err = ssh.run_checked(["sh", "-c", 'read s; sleep 1; printf %s "$s" | sha256sum'],
                                    stdin=secret + "\n", secrets=[secret])
    finally:
        stop.set()
        watcher.join()
    assert out.split()[0].decode() == hashlib.sha256(secret.encode()).hexdigest()
    assert seen.count(None) > 10 and not [s for s in seen if s is not None]


def test_secrets_are_masked_in_the_command_and_its_stderr(ssh):
    secret = "it's-a-s3cret"
    with pytest.raises(SshCommandError) as caught:
        ssh.run_checked(["sh", "-c", 'echo "wrong secret $1" >&2; exit 4', "sh", secret], secrets=[secret])
    text = caught.value.message + repr(caught.value.details)
    assert secret not in text and "'\\''" not in text and "s3cret" not in text
    assert "wrong secret ********" in caught.value.message and " sh ********` failed" in caught.value.message


def test_large_output_on_both_streams_without_deadlock(ssh):
    started = time.monotonic()
    rc, out, err = ssh.run(["sh", "-c", "seq 1 1000000 >&2; seq 1 1500000"], timeout=30)
    took = time.monotonic() - started
    assert rc == 0
    assert out == "".join("%d\n" % i for i in range(1, 1500001)).encode()
    assert err == "".join("%d\n" % i for i in range(1, 1000001)).encode()
    assert len(out) > 10 * 1000 * 1000 and took < 10, (len(out), took)


def test_output_beyond_the_bound_stops_the_command(ssh):
    nonce = "vmcollect-yes-%d" % os.getpid()
    with pytest.raises(SshError) as caught:
        ssh.run(["yes", nonce], max_output=1 << 20, timeout=20)
    assert "wrote more than 1 MiB to stdout" in caught.value.message
    assert "it was stopped there" in caught.value.message
    time.sleep(0.2)
    assert not _processes_with("yes " + nonce)


def test_the_client_refuses_to_run_when_closed(sshd):
    client = sshd.client(known_hosts=sshd.known_hosts("kh_closed"))
    with client:
        transport = client._client.get_transport()
    assert not transport.is_active()
    with pytest.raises(SshError, match="Not connected to 127.0.0.1:%d over SSH; connect first." % sshd.port):
        client.run(["true"])
