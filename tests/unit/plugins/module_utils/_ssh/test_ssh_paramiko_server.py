# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH client against a paramiko SSH server in this process, for what a real sshd here cannot show: password
login and the keyboard-interactive prompt ESXi asks the password with (the test sshd has no PAM and no user with a
known password), refused logins, a server that says nothing, a refused exec, a command without an exit code, a
command whose process id never arrives, a connection lost while a command runs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import threading
import time

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    SshCommandError,
    SshConnectionError,
    SshError,
    SshTimeout,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh import client as sc

paramiko = pytest.importorskip("paramiko")

PASSWORD = "Esx!-pa55 'word'"


def _hello(channel):
    time.sleep(0.05)
    channel.sendall(b"hello\n")
    channel.sendall_stderr(b"warning\n")
    channel.send_exit_status(0)
    channel.close()


def _quietly(action, channel):
    try:
        action(channel)
    except (OSError, EOFError):  # the client closed the channel first (the tests of timeouts)
        pass


class _Server(paramiko.ServerInterface):
    def __init__(self, auths, on_exec):
        self.auths = auths
        self.on_exec = on_exec
        self.commands = []
        self.user = None
        self.block = 0

    def get_allowed_auths(self, username):
        return ",".join(self.auths)

    def check_auth_password(self, username, password):
        if "password" in self.auths and (username, password) == ("root", PASSWORD):
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_auth_interactive(self, username, submethods):
        if "keyboard-interactive" not in self.auths:
            return paramiko.AUTH_FAILED
        self.user = username
        return paramiko.InteractiveQuery("", "", ("Password: ", False))

    def check_auth_interactive_response(self, responses):
        if self.user == "root" and list(responses) == [PASSWORD]:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        self.commands.append(command)
        time.sleep(self.block)  # a host that does not answer the exec request (for that long)
        action = self.on_exec
        if action is None:
            return False
        threading.Thread(target=_quietly, args=(action, channel), daemon=True).start()
        return True


class _Fake(object):
    def __init__(self, port, key, server, transports):
        self.port = port
        self.key = key
        self.pin = sc.fingerprint_sha256(key)
        self.server = server
        self.transports = transports

    def client(self, **kwargs):
        kwargs.setdefault("password", PASSWORD)
        kwargs.setdefault("timeout", 5)
        if "known_hosts" not in kwargs:
            kwargs.setdefault("host_key_fingerprint", self.pin)
        return sc.SshClient("127.0.0.1", port=self.port, **kwargs)


@pytest.fixture(scope="module")
def host_key():
    return paramiko.ECDSAKey.generate()


@pytest.fixture
def fake(host_key):
    listeners = []
    transports = []

    def start(auths=("password",), on_exec=_hello):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listeners.append(listener)
        server = _Server(auths, on_exec)

        def accept():
            while True:
                try:
                    conn, _addr = listener.accept()
                except OSError:
                    return
                transport = paramiko.Transport(conn)
                transport.add_server_key(host_key)
                transports.append(transport)
                try:
                    transport.start_server(server=server)
                except Exception:  # pylint: disable=broad-except
                    pass

        threading.Thread(target=accept, daemon=True).start()
        return _Fake(listener.getsockname()[1], host_key, server, transports)

    yield start
    for listener in listeners:
        listener.close()
    for transport in transports:
        transport.close()


def test_password_login_and_a_command(fake):
    server = fake()
    with server.client() as client:
        assert client.run(["echo", "hello"]) == (0, b"hello\n", b"warning\n")
        record = client.host_key_record()
    assert record == {"verified": True, "how": "fingerprint", "key_type": "ecdsa-sha2-nistp256",
                      "fingerprint_sha256": server.pin, "known_hosts": None}
    # what the server was asked to run: the line that says the shell's process id, then the command, quoted
    (command,) = server.server.commands
    first, second = command.decode().split("\n")
    assert first.startswith("echo vmcollect-pid-") and first.endswith(":$$ >&2") and second == "echo hello"


def test_the_password_answers_a_keyboard_interactive_prompt_as_esxi_asks(fake):
    server = fake(auths=("publickey", "keyboard-interactive"))
    with server.client() as client:
        assert client.run_checked("echo hello")[0] == b"hello\n"


def test_a_known_hosts_file_with_the_servers_key(fake, tmp_path):
    server = fake()
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:%d %s %s\n" % (server.port, server.key.get_name(), server.key.get_base64()))
    with server.client(known_hosts=str(known)) as client:
        assert client.host_key_record()["fingerprint_sha256"] == server.pin


def test_a_wrong_password_is_refused_without_showing_it(fake):
    server = fake()
    wrong = "wrong 'pa55'"
    with pytest.raises(SshConnectionError) as caught:
        server.client(password=wrong).connect()
    message = caught.value.message
    assert message.startswith("127.0.0.1:%d refused the login of root with the password (" % server.port), message
    assert "Security.AccountLockFailures" in message and wrong not in message and "pa55" not in message
    # a server that takes no password says which ways it takes
    server = fake(auths=("publickey",))
    with pytest.raises(SshConnectionError, match=r"refused the login of root over SSH: it allows only publickey, and "
                                                 r"this client tried the password \(the host key was checked"):
        server.client().connect()


def test_a_server_that_sends_no_banner(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        client = sc.SshClient("127.0.0.1", port=listener.getsockname()[1], password=PASSWORD, timeout=1,
                              host_key_fingerprint="SHA256:" + "A" * 43)
        started = time.monotonic()
        with pytest.raises(SshConnectionError, match=r"did not answer as an SSH server within 1 s \(no SSH banner"):
            client.connect()
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_nothing_listens():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(SshConnectionError, match="127.0.0.1:%d refused the TCP connection: nothing listens on port %d "
                                                 r"\(on ESXi the SSH service is off" % (port, port)):
        sc.SshClient("127.0.0.1", port=port, password=PASSWORD, host_key_fingerprint="SHA256:" + "A" * 43).connect()


def test_a_refused_exec(fake):
    server = fake(on_exec=None)
    with server.client() as client:
        with pytest.raises(SshError, match="The command `ls` could not be started: 127.0.0.1:%d refused to run it"
                           % server.port):
            client.run(["ls"])
        assert client._transport().is_active()  # the connection is still good for the next command


def test_a_command_without_an_exit_code(fake):
    def killed(channel):
        time.sleep(0.05)
        channel.sendall(b"partial")
        channel.close()

    server = fake(on_exec=killed)
    with server.client() as client:
        assert client.run(["vmkfstools", "-i", "a", "b"]) == (-1, b"partial", b"")
        with pytest.raises(SshCommandError, match="failed on 127.0.0.1:%d without an exit code" % server.port):
            client.run_checked(["vmkfstools", "-i", "a", "b"])


def test_a_timeout_when_the_process_id_never_arrives(fake):
    def silent(channel):
        pass

    server = fake(on_exec=silent)
    with server.client() as client:
        started = time.monotonic()
        with pytest.raises(SshTimeout) as caught:
            client.run(["sleep", "30"], timeout=0.5)
        assert time.monotonic() - started < 10  # unbounded, it would wait for ever: a loaded machine's margin
    assert caught.value.message == (
        "The command `sleep 30` on 127.0.0.1:%d did not end within 0.5 s; its process id never arrived, so it could "
        "not be stopped; it may still be running there (look with `ps`)." % server.port)
    assert caught.value.details["stopped"] is False and caught.value.details["timeout"] == 0.5


def test_an_exec_request_without_an_answer_is_bounded_too(fake):
    server = fake()
    with server.client() as client:
        server.server.block = 6
        started = time.monotonic()
        with pytest.raises(SshTimeout) as caught:
            client.run(["vim-cmd", "vmsvc/getallvms"], timeout=0.5)
        assert time.monotonic() - started < 5  # well before the answer the server holds back for 6 s
    assert caught.value.message == (
        "The command `vim-cmd vmsvc/getallvms` on 127.0.0.1:%d did not end within 0.5 s: the host did not even "
        "confirm that it started it; if it did, it may still be running there (look with `ps`)." % server.port)
    assert caught.value.details["stopped"] is False


def test_a_connection_lost_while_a_command_runs(fake):
    def drop(channel):
        time.sleep(0.1)
        channel.get_transport().close()

    server = fake(on_exec=drop)
    with server.client() as client:
        with pytest.raises(SshConnectionError, match="The SSH connection to 127.0.0.1:%d was lost while the command "
                                                     "`sleep 5` ran; whether it ended there is unknown." % server.port):
            client.run(["sleep", "5"], timeout=5)
        with pytest.raises(SshConnectionError, match="was lost; connect again"):
            client.run(["true"])


def test_a_watcher_sees_the_output_as_it_comes_and_it_is_kept_whole(fake):
    """vmkfstools redraws its percent with a carriage return: the watcher sees each chunk while the command runs."""
    def clone(channel):
        for pct in (0, 40, 80):
            channel.sendall(b"Clone: %d%% done.\r" % pct)
            time.sleep(0.1)
        channel.sendall(b"Clone: 100% done.\n")
        channel.send_exit_status(0)
        channel.close()

    seen = []
    server = fake(on_exec=clone)
    with server.client() as client:
        rc, out, err = client.run(["vmkfstools", "-i", "a", "b"], watch=lambda chunk: seen.append((time.monotonic(), chunk)))
    assert rc == 0 and out == b"Clone: 0% done.\rClone: 40% done.\rClone: 80% done.\rClone: 100% done.\n"
    assert b"".join(c for _t, c in seen) == out and len(seen) >= 3
    assert seen[-1][0] - seen[0][0] >= 0.15  # seen while it ran, not all at the end


def test_a_watcher_that_raises_loses_no_output(fake):
    def boom(chunk):
        raise ValueError("watcher bug")

    server = fake()
    with server.client() as client:
        assert client.run(["echo", "hello"], watch=boom) == (0, b"hello\n", b"warning\n")
