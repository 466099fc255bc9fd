# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH client's options (argument spec, doc fragment, the checks before connecting), masking, the command error,
private keys that cannot be used, and that the module_utils import without paramiko."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess
import sys

import pytest
import yaml

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.dfir.vmcollect.plugins.doc_fragments.ssh import ModuleDocFragment
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    InvalidInputError,
    SshCommandError,
    SshError,
    VmcollectError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh import client as sc

PASSWORD = "s3cret-Pa55"
PIN = "SHA256:" + "A" * 43
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))))


# -- argument spec and its documentation -------------------------------------------------------------

def test_argument_spec_names_defaults_and_secrets():
    spec = sc.ssh_argument_spec()
    assert tuple(spec) == sc.CLIENT_OPTIONS
    assert spec["password"]["no_log"] is True and spec["private_key_passphrase"]["no_log"] is True
    assert spec["host_key_fingerprint"]["no_log"] is False and spec["private_key_file"]["no_log"] is False
    assert (spec["port"]["default"], spec["username"]["default"]) == (22, "root")
    assert (spec["timeout"]["default"], spec["command_timeout"]["default"]) == (30, 3600)
    assert spec["allow_agent"]["default"] is False and spec["look_for_keys"]["default"] is False
    result = ArgumentSpecValidator(spec, mutually_exclusive=sc.SSH_EXCLUSIVE).validate(
        {"hostname": "esxi1", "password": PASSWORD, "known_hosts": "/k", "host_key_fingerprint": PIN})
    assert any("mutually exclusive: known_hosts|host_key_fingerprint" in m for m in result.error_messages)
    result = ArgumentSpecValidator(spec, mutually_exclusive=sc.SSH_EXCLUSIVE).validate(
        {"hostname": "esxi1", "password": PASSWORD})
    assert not result.error_messages
    assert PASSWORD in result._no_log_values


def test_the_doc_fragment_documents_the_argument_spec():
    options = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = sc.ssh_argument_spec()
    assert set(options) == set(spec)
    for name, arg in spec.items():
        assert options[name]["type"] == arg["type"], name
        assert options[name].get("default") == arg.get("default"), name
        assert bool(options[name].get("required")) == bool(arg.get("required")), name


def test_client_from_params():
    params = dict((k, None) for k in sc.CLIENT_OPTIONS)
    with pytest.raises(InvalidInputError, match="The SSH connection lacks hostname"):
        sc.client_from_params(params)
    params.update(hostname="esxi1", password=PASSWORD, port=2222, host_key_fingerprint=PIN, timeout=5)
    client = sc.client_from_params(params)
    assert (client.where, client.username, client.host_key_pin, client.timeout) == ("esxi1:2222", "root", PIN, 5)
    assert client.command_timeout == sc.DEFAULT_COMMAND_TIMEOUT and client.known_hosts is None


# -- checks before connecting ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, says", [
    (dict(known_hosts="/k", host_key_fingerprint=PIN), "known_hosts and host_key_fingerprint were both given"),
    (dict(password=None), "The SSH connection to esxi1:22 has no way to log in: give password or private_key_file"),
    (dict(password=None, private_key_passphrase="pp"), "private_key_passphrase was given without private_key_file"),
    (dict(port=0), "port must be a TCP port"),
    (dict(port=70000), "port must be a TCP port"),
    (dict(port="ssh"), "port must be a TCP port"),
    (dict(username=""), "username is empty"),
    (dict(timeout=0), "timeout must be a positive number of seconds, not 0"),
    (dict(command_timeout=-1), "command_timeout must be a positive number of seconds"),
    (dict(host_key_fingerprint="MD5:" + ":".join(["ab"] * 16)), "MD5 is too weak"),
])
def test_options_are_checked_before_anything_is_done(kwargs, says):
    args = dict(password=PASSWORD)
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=says) as caught:
        sc.SshClient("esxi1", **args)
    assert PASSWORD not in caught.value.message


def test_hostname_is_required():
    with pytest.raises(InvalidInputError, match="hostname is empty"):
        sc.SshClient("", password=PASSWORD)


def test_defaults_and_what_the_client_shows(monkeypatch):
    monkeypatch.setenv("HOME", "/home/examiner")
    client = sc.SshClient("esxi1", password=PASSWORD)
    assert client.known_hosts == "/home/examiner/.ssh/known_hosts" and client.host_key_how == "known_hosts"
    assert client.where == "esxi1:22"
    assert sc.SshClient("fd00::5", password=PASSWORD, port=2222).where == "[fd00::5]:2222"
    assert PASSWORD not in repr(client) and "esxi1:22" in repr(client)
    assert client.secrets() == (PASSWORD,)
    assert client.host_key_record() == {"verified": False, "how": "known_hosts", "key_type": None,
                                        "fingerprint_sha256": None, "known_hosts": "/home/examiner/.ssh/known_hosts"}
    # agent or default keys only when asked, and then they count as a way to log in
    client = sc.SshClient("esxi1", allow_agent=True, host_key_fingerprint=PIN)
    assert client.allow_agent and not client.look_for_keys and client.host_key_how == "fingerprint"
    assert sc.SshClient("esxi1", look_for_keys=True, private_key_passphrase="pp").secrets() == ("pp",)


def test_nothing_runs_before_connecting():
    with pytest.raises(SshError, match="Not connected to esxi1:22 over SSH; connect first."):
        sc.SshClient("esxi1", password=PASSWORD).run(["true"])
    with pytest.raises(InvalidInputError, match="timeout must be a positive number"):
        sc.SshClient("esxi1", password=PASSWORD).run(["true"], timeout=0)


# -- masking and the command error -----------------------------------------------------------------------

def test_mask_hides_secrets_as_given_and_as_quoted():
    secret = "it's a s3cret"
    line = sc.join(["esxcli", "iscsi", "adapter", "auth", "chap", "set", "--secret=" + secret, "-A", "vmhba64"])
    assert secret not in line  # it is quoted...
    masked = sc.mask(line, [secret])
    assert "s3cret" not in masked and masked.startswith("esxcli iscsi adapter auth chap set ")  # ...and masked anyway
    assert sc.mask("x " + sc.quote(secret) + " y", [secret]) == "x ******** y"
    assert sc.mask(b"bytes " + secret.encode(), [secret.encode()]) == "bytes ********"
    assert sc.mask("ab abc", ["ab", "abc"]) == "******** ********"  # the longest first
    assert sc.mask("nothing", []) == "nothing" and sc.mask(None, ["x"]) is None
    assert sc.mask("keep", ["", None]) == "keep"


def test_command_error_says_the_command_the_code_and_the_last_lines_masked():
    secret = "chap-s3cret"
    stderr = "\n".join("line %d" % i for i in range(10)).encode() + b"\nError: bad secret chap-s3cret\n\n"
    error = sc.command_error("esxi1:22", ["esxcli", "iscsi", "adapter", "auth", "chap", "set", "--secret=" + secret],
                             1, b"", stderr, [secret])
    assert isinstance(error, SshCommandError) and isinstance(error, VmcollectError)
    assert error.message == ("The command `esxcli iscsi adapter auth chap set '--secret=********'` failed on esxi1:22 "
                             "with exit code 1: line 6 | line 7 | line 8 | line 9 | Error: bad secret ********.")
    assert error.details == {"host": "esxi1:22", "command": "esxcli iscsi adapter auth chap set '--secret=********'",
                             "rc": 1,
                             "stderr_tail": "line 6 | line 7 | line 8 | line 9 | Error: bad secret ********",
                             "stdout_tail": ""}
    # vim-cmd says its faults on stdout
    error = sc.command_error("esxi1:22", "vim-cmd vmsvc/snapshot.get 9", 1,
                             b'(vim.fault.NotFound) {\n   msg = "Unable to find a VM corresponding to 9",\n}\n', b"")
    assert error.message.endswith('failed on esxi1:22 with exit code 1: nothing on stderr; stdout ends with: '
                                  '(vim.fault.NotFound) { | msg = "Unable to find a VM corresponding to 9", | }.')
    error = sc.command_error("esxi1:22", ["true"], -1, b"", b"")
    assert error.message == "The command `true` failed on esxi1:22 without an exit code (killed by a signal?): it " \
                            "wrote nothing."


def test_the_pid_line_is_found_and_removed():
    marker = "vmcollect-pid-0a1b2c:"
    assert sc._find_pid(b"motd noise\nvmcollect-pid-0a1b2c:4242\nrest", marker) == 4242
    assert sc._find_pid(b"vmcollect-pid-ffffff:4242\n", marker) is None
    assert sc._strip_pid(b"vmcollect-pid-0a1b2c:4242\nreal error\n", marker) == b"real error\n"
    assert sc._strip_pid(b"no marker\n", marker) == b"no marker\n"


# -- private keys that cannot be used --------------------------------------------------------------------

@pytest.fixture(scope="module")
def encrypted_key(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keys") / "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "right passphrase", "-f", path], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return path


def test_private_keys_that_cannot_be_used_are_refused_with_a_sentence(encrypted_key):
    pytest.importorskip("paramiko")
    with pytest.raises(InvalidInputError, match="The private key .*id_ed25519 is encrypted; give its passphrase"):
        sc.SshClient("esxi1", private_key_file=encrypted_key).connect()
    with pytest.raises(InvalidInputError, match="cannot be opened with the private_key_passphrase given") as caught:
        sc.SshClient("esxi1", private_key_file=encrypted_key, private_key_passphrase="wrong passphrase").connect()
    assert "wrong passphrase" not in caught.value.message
    with pytest.raises(InvalidInputError, match="is not a private key that paramiko can read .*not its .pub file"):
        sc.SshClient("esxi1", private_key_file=encrypted_key + ".pub").connect()
    with pytest.raises(InvalidInputError, match="private_key_file /nonexistent/key does not exist"):
        sc.SshClient("esxi1", private_key_file="/nonexistent/key").connect()
    key = sc.SshClient("esxi1", private_key_file=encrypted_key, private_key_passphrase="right passphrase")
    assert key._load_private_key().get_name() == "ssh-ed25519"


# -- without paramiko ------------------------------------------------------------------------------------

def test_the_ssh_module_utils_import_without_paramiko():
    code = r"""
import sys
sys.modules["paramiko"] = None  # import paramiko fails
sys.path.insert(0, %r)
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh import client
assert not client.HAS_PARAMIKO and "paramiko" in client.PARAMIKO_IMPORT_ERROR
assert client.quote("a b") == "'a b'" and client.paramiko_version() is None
ssh = client.SshClient("esxi1", password="pw", host_key_fingerprint="SHA256:" + "A" * 43)
try:
    ssh.connect()
except Exception as exc:
    print(type(exc).__name__, exc)
""" % os.path.join(ROOT, ".build", "collections")
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    assert out.startswith("SshError paramiko (the Python SSH library, 'paramiko' on PyPI, 3.4 or later) is not "
                          "installed"), out
