# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vSphere client's logic: its argument spec, thumbprints and the TLS pin (against a real local TLS server),
datastore paths, faults and errors as sentences, and that the vSphere module_utils import without pyVmomi."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    InvalidInputError,
    VmcollectError,
    VsphereConnectionError,
    VsphereError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as vc

pyVmomi = pytest.importorskip("pyVmomi")
from pyVmomi import vim, vmodl  # noqa: E402 pylint: disable=wrong-import-position

PASSWORD = "s3cret-Pa55"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))))


# -- argument spec ------------------------------------------------------------------------------------

def test_argument_spec_has_community_vmware_names_defaults_and_environment(monkeypatch):
    spec = vc.vsphere_argument_spec()
    assert set(spec) == {"hostname", "username", "password", "port", "validate_certs", "ca_file", "thumbprint",
                         "datacenter", "timeout"}
    assert spec["password"]["no_log"] is True
    assert spec["port"]["default"] == 443 and spec["validate_certs"]["default"] is True
    assert spec["timeout"]["default"] == vc.DEFAULT_TIMEOUT
    assert set(spec["username"]["aliases"]) == {"user", "admin"} and set(spec["password"]["aliases"]) == {"pass", "pwd"}
    for name, var in (("hostname", "VMWARE_HOST"), ("username", "VMWARE_USER"), ("password", "VMWARE_PASSWORD"),
                      ("port", "VMWARE_PORT"), ("validate_certs", "VMWARE_VALIDATE_CERTS")):
        assert spec[name]["fallback"][1] == [var]
    monkeypatch.setenv("VMWARE_HOST", "esxi1.example.org")
    monkeypatch.setenv("VMWARE_USER", "dfir")
    monkeypatch.setenv("VMWARE_PASSWORD", PASSWORD)
    monkeypatch.setenv("VMWARE_PORT", "8443")
    monkeypatch.setenv("VMWARE_VALIDATE_CERTS", "false")
    result = ArgumentSpecValidator(spec).validate({})
    assert not result.error_messages, result.error_messages
    p = result.validated_parameters
    assert (p["hostname"], p["username"], p["port"], p["validate_certs"]) == ("esxi1.example.org", "dfir", 8443, False)
    assert PASSWORD in result._no_log_values  # pylint: disable=protected-access


def test_client_from_params_names_what_is_missing():
    with pytest.raises(InvalidInputError) as err:
        vc.client_from_params({"hostname": "esxi1", "username": None, "password": None, "port": None})
    assert "username and password" in err.value.message and "VMWARE_USER / VMWARE_PASSWORD" in err.value.message
    client = vc.client_from_params({"hostname": "esxi1", "username": "u", "password": PASSWORD, "port": None,
                                    "timeout": None, "validate_certs": False})
    assert (client.port, client.timeout, client.tls_how) == (443, vc.DEFAULT_TIMEOUT, "off")
    assert PASSWORD not in repr(client)


# -- thumbprints ------------------------------------------------------------------------------------------

HEX = "be70b61fafab36d87bf8a46cabc02f77db4b9e3f4697ad98409634ff6396f420"
COLON = ":".join(HEX[i:i + 2] for i in range(0, 64, 2)).upper()


@pytest.mark.parametrize("text", [HEX, HEX.upper(), COLON, COLON.lower(), " %s \n" % COLON, "sha256:" + HEX,
                                  "SHA256:" + COLON])
def test_thumbprint_spellings(text):
    assert vc.parse_thumbprint(text) == HEX
    assert vc.same_thumbprint(text, COLON)


def test_thumbprint_format():
    assert vc.format_thumbprint(HEX) == COLON
    assert vc.format_thumbprint(None) is None


def test_sha1_thumbprint_is_refused_as_too_weak():
    sha1 = "57:B1:03:67:4B:AD:03:2B:15:92:D8:BA:15:93:B0:D0:B4:C8:84:3F"
    with pytest.raises(InvalidInputError) as err:
        vc.parse_thumbprint(sha1)
    assert "SHA-1" in err.value.message and "SHA-256" in err.value.message and "-sha256" in err.value.message


@pytest.mark.parametrize("text, says", [("", "empty"), ("zz:11", "not a fingerprint"), (HEX[:-2], "62 hex digits"),
                                        (HEX + "00", "66 hex digits")])
def test_bad_thumbprints(text, says):
    with pytest.raises(InvalidInputError) as err:
        vc.parse_thumbprint(text)
    assert says in err.value.message
    assert not vc.same_thumbprint(text, HEX)


def test_tls_context_modes(tmp_path):
    assert vc.make_tls_context(True)[1] == "system"
    ctx, how = vc.make_tls_context(False)
    assert how == "off" and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    ctx, how = vc.make_tls_context(True, thumbprint=COLON)
    assert how == "thumbprint" and ctx.vmc_pin == HEX
    ctx, how = vc.make_tls_context(False, thumbprint=COLON)  # the stricter check wins
    assert how == "thumbprint"
    with pytest.raises(InvalidInputError, match="give one"):
        vc.make_tls_context(True, ca_file="/x.pem", thumbprint=COLON)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InvalidInputError, match="cannot be read as PEM"):
        vc.make_tls_context(True, ca_file=str(bad))


# -- the pin, on a real TLS server -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A TLS server on 127.0.0.1 with a fresh self-signed certificate; it records every byte it received per
    connection and answers an HTTP request with 200."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = str(folder / "key.pem"), str(folder / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    received = []

    def serve():
        while True:
            try:
                raw, _addr = listener.accept()
            except OSError:
                return
            data = b""
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
                conn.settimeout(2)
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                conn.close()
            except (OSError, ssl.SSLError):
                pass
            received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with open(cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    yield {"port": listener.getsockname()[1], "cert": cert, "sha256": hashlib.sha256(der).hexdigest(),
           "received": received}
    listener.close()


def _get(client):
    conn = client.http_connection(timeout=5)
    try:
        conn.request("GET", "/folder/x", headers={"Cookie": "vmware_soap_session=secret"})
        return conn.getresponse().read()
    finally:
        conn.close()


def test_a_pinned_thumbprint_lets_the_request_through_and_is_recorded(tls_server):
    client = vc.VsphereClient("127.0.0.1", "u", PASSWORD, port=tls_server["port"], thumbprint=tls_server["sha256"])
    assert _get(client) == b"ok"
    assert client.tls_record() == {"verified": True, "how": "thumbprint",
                                   "thumbprint_sha256": vc.format_thumbprint(tls_server["sha256"])}


def test_a_wrong_thumbprint_is_refused_before_anything_is_sent(tls_server):
    wrong = HEX if HEX != tls_server["sha256"] else "0" * 64
    client = vc.VsphereClient("127.0.0.1", "u", PASSWORD, port=tls_server["port"], thumbprint=wrong)
    before = len(tls_server["received"])
    with pytest.raises(VsphereConnectionError) as err:
        client.connect()  # the first thing connect() does is the version request
    message = err.value.message
    assert vc.format_thumbprint(tls_server["sha256"]) in message and vc.format_thumbprint(wrong) in message
    assert "no credential was sent" in message and PASSWORD not in message
    assert err.value.details["tls"]["verified"] is False
    # the server saw a handshake and then nothing: not one byte of HTTP
    for dummy in range(50):
        if len(tls_server["received"]) > before:
            break
        threading.Event().wait(0.05)
    assert tls_server["received"][before:] == [b""]
    # the same check on a connection for datastore files
    with pytest.raises(vc.ThumbprintMismatch):
        _get(client)


def test_ca_file_system_store_and_off(tls_server):
    trusted = vc.VsphereClient("localhost", "u", PASSWORD, port=tls_server["port"], ca_file=tls_server["cert"])
    assert _get(trusted) == b"ok" and trusted.tls_record()["how"] == "ca_file"
    system = vc.VsphereClient("127.0.0.1", "u", PASSWORD, port=tls_server["port"])
    with pytest.raises(ssl.SSLCertVerificationError) as raw:
        _get(system)
    converted = vc.error_for(raw.value, "connect", system.where, system.secrets(), VsphereError, system.ssl_context)
    assert isinstance(converted, VsphereConnectionError)
    assert "could not be verified" in converted.message and "no credential was sent" in converted.message
    off = vc.VsphereClient("127.0.0.1", "u", PASSWORD, port=tls_server["port"], validate_certs=False)
    assert _get(off) == b"ok"
    assert off.tls_record() == {"verified": False, "how": "off",
                                "thumbprint_sha256": vc.format_thumbprint(tls_server["sha256"])}


# -- datastore paths and names --------------------------------------------------------------------------

@pytest.mark.parametrize("path, known, expected", [
    ("[datastore1] Windows XP/Windows XP.vmx", (), ("datastore1", "Windows XP/Windows XP.vmx")),
    ("[LocalDS_0] web [prod]/web [prod]-000001.vmdk", (), ("LocalDS_0", "web [prod]/web [prod]-000001.vmdk")),
    ("[SAN [gold] 01] vm/vm.vmdk", (), ("SAN [gold] 01", "vm/vm.vmdk")),
    ("[SAN] x] vm/vm.vmdk", ("SAN] x", "SAN"), ("SAN] x", "vm/vm.vmdk")),
    ("[SAN] x] vm/vm.vmdk", (), ("SAN", "x] vm/vm.vmdk")),
    ("[ds 1]", (), ("ds 1", "")),
    ("[] /vmfs/volumes/abc/vm.vmdk", (), ("", "/vmfs/volumes/abc/vm.vmdk")),
])
def test_datastore_paths(path, known, expected):
    assert vc.parse_datastore_path(path, known) == expected
    assert vc.parse_datastore_path(vc.datastore_path(*expected), known) == expected


@pytest.mark.parametrize("path", ["datastore1/x.vmdk", "[unclosed x.vmdk", None, ""])
def test_not_datastore_paths(path):
    with pytest.raises(InvalidInputError, match="not a datastore path"):
        vc.parse_datastore_path(path)


def test_vsphere_name_escapes_are_undone():
    assert vc.unescape_name("a%2fb%5cc%25d%2Fe") == "a/b\\c%d/e"
    assert vc.unescape_name("Windows XP [prod]") == "Windows XP [prod]"


# -- faults and errors as sentences ----------------------------------------------------------------------

def test_invalid_login_says_so_without_the_password():
    fault = vim.fault.InvalidLogin(msg="Cannot complete login due to an incorrect user name or password.")
    err = vc.error_for(fault, "connect and log in", "esxi1", (PASSWORD,))
    assert isinstance(err, VsphereConnectionError)
    assert err.message.startswith("esxi1 refused the login (InvalidLogin): the user name or password is wrong")
    assert PASSWORD not in err.message


def test_no_permission_names_the_privilege():
    fault = vim.fault.NoPermission(privilegeId="VirtualMachine.State.CreateSnapshot", msg="Permission denied")
    text = vc.fault_sentence(fault, "create the snapshot", "vc1")
    assert "VirtualMachine.State.CreateSnapshot" in text and "NoPermission" in text


def test_a_task_fault_says_its_localized_messages_and_cause():
    cause = vim.fault.FileLocked(msg="Unable to access file [ds] vm/vm.vmdk since it is locked")
    fault = vim.fault.GenericVmConfigFault(msg="An error occurred while taking a snapshot", faultCause=cause,
                                           faultMessage=[vmodl.LocalizableMessage(key="k",
                                                                                  message="Failed to quiesce")])
    text = vc.fault_sentence(fault, "create the snapshot 'x' of VM vm", "esxi1")
    assert text.startswith("esxi1 could not create the snapshot 'x' of VM vm: GenericVmConfigFault: An error")
    assert "Failed to quiesce" in text and "caused by FileLocked: Unable to access file" in text
    assert text.endswith(".") and ".." not in text


@pytest.mark.parametrize("exc, says", [
    (socket.timeout("timed out"), "did not answer within"),
    (ConnectionRefusedError(111, "Connection refused"), "refused the TCP connection"),
    (socket.gaierror(-2, "Name or service not known"), "does not resolve"),
    (http.client.BadStatusLine("garbage"), "HTTP answer that is not the vSphere API's"),
    (ssl.SSLError(1, "wrong version number"), "TLS connection"),
])
def test_network_errors_become_sentences(exc, says):
    err = vc.error_for(exc, "connect and log in", "esxi1", (PASSWORD,))
    assert isinstance(err, VsphereConnectionError) and says in err.message


def test_the_decorator_converts_and_masks_with_the_client_of_the_call():
    client = vc.VsphereClient("esxi1", "u", PASSWORD, validate_certs=False)

    @vc.vsphere_errors("do the thing")
    def call(c):
        raise vim.fault.InvalidState(msg="state says %s" % PASSWORD)

    with pytest.raises(VsphereError) as err:
        call(client)
    assert err.value.message == "esxi1 could not do the thing: InvalidState: state says ********."

    @vc.vsphere_errors("do the thing")
    def ours(c):
        raise VmcollectError("ours")

    with pytest.raises(VmcollectError, match="^ours$"):
        ours(client)

    @vc.vsphere_errors("do the thing")
    def bug(c):
        raise KeyError("x")

    with pytest.raises(KeyError):
        bug(client)


def test_find_vm_needs_one_selector():
    client = vc.VsphereClient("esxi1", "u", PASSWORD, validate_certs=False)
    with pytest.raises(InvalidInputError):
        client.find_vm()
    with pytest.raises(InvalidInputError):
        client.find_vm(name="a", uuid="b")


def test_timeout_must_be_positive():
    with pytest.raises(InvalidInputError, match="positive"):
        vc.VsphereClient("esxi1", "u", PASSWORD, timeout=0)


# -- without pyVmomi ---------------------------------------------------------------------------------------

def test_the_vsphere_module_utils_import_without_pyvmomi_and_register_the_undo_handler():
    """teardown imports _vsphere.snapshot on hosts without pyVmomi: the import works, the handler is registered,
    and undoing says what is missing."""
    code = r"""
import sys
sys.modules["pyVmomi"] = None  # import pyVmomi fails
sys.path.insert(0, %r)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client, snapshot, vm
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UNDO_HANDLERS, UndoContext
assert not client.HAS_PYVMOMI and "vsphere.snapshot" in UNDO_HANDLERS
try:
    UNDO_HANDLERS["vsphere.snapshot"]({"snapshot_name": "s", "vm_name": "v", "endpoint": "e"}, UndoContext())
except Exception as exc:
    print(type(exc).__name__, exc)
""" % os.path.join(ROOT, ".build", "collections")
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    assert out.startswith("SnapshotError") and "needs pyvmomi" in out
