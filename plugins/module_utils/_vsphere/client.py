# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A vSphere API client that only connects, reads, waits and raises (after vmware.vmware's pyvmomi client).

``VsphereClient`` logs in to an ESXi host or a vCenter through pyVmomi and logs out again, whatever happens
(a context manager). Everything it reads goes through the PropertyCollector (``properties``, ``retrieve``):
pyVmomi 8 and later fail a whole request when a property that is not set (``vm.snapshot`` of a VM without
snapshots) is read as an attribute, and some task kinds cannot be read through ``task.info``. Every task is
waited for through a PropertyCollector filter and ``WaitForUpdatesEx`` with ``maxWaitSeconds``, bounded by
``timeout``; the filter goes with its collector, whatever happens.

TLS, the same on every connection this client opens (the SOAP session and ``http_connection()`` for datastore
files): ``thumbprint`` pins the server certificate's SHA-256 fingerprint (checked right after the TLS handshake,
before a byte of HTTP is sent: a mismatch closes the connection, so no credential and no session cookie ever
reaches the wrong peer); else ``validate_certs`` checks the chain against ``ca_file`` (those anchors only) or the
system's trust store, and the host name; ``validate_certs=false`` turns checking off, which ``tls_record()``
says, with the fingerprint of the certificate that was seen, for the case manifest. SHA-1 thumbprints are refused:
SHA-1 has chosen-prefix collisions, so it cannot pin a certificate.

Errors leave as the collection's exceptions (``vsphere_errors``, after amazon.aws's error decorators), as
sentences naming the host and the step. The password is never in a message, a result or a log: it is masked in
every message this module builds, and it goes nowhere but into the login call.

pyVmomi is imported lazily (guarded): the teardown module imports the vSphere undo handlers on hosts without it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import hashlib
import http.client
import re
import socket
import ssl
import time
import traceback
import xml.etree.ElementTree as ET

from ansible.module_utils.basic import env_fallback

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    InvalidInputError,
    VmcollectError,
    VmNotFoundError,
    VsphereConnectionError,
    VsphereError,
)

try:
    from pyVmomi import VmomiSupport, vim, vmodl
    from pyVmomi.SoapAdapter import SoapStubAdapter

    HAS_PYVMOMI = True
    PYVMOMI_IMPORT_ERROR = None
except ImportError:
    VmomiSupport = vim = vmodl = SoapStubAdapter = None
    HAS_PYVMOMI = False
    PYVMOMI_IMPORT_ERROR = traceback.format_exc()

DEFAULT_PORT = 443
DEFAULT_TIMEOUT = 3600  # seconds: the bound of every task wait (a snapshot of a VM with much RAM takes minutes)
REQUEST_TIMEOUT = 120.0  # seconds: the bound of one HTTP request (a connection, a SOAP call, a WaitForUpdatesEx slice)
WAIT_SLICE = 60  # seconds: maxWaitSeconds of one WaitForUpdatesEx call, well under REQUEST_TIMEOUT
MAX_OBJECTS = 1000  # objects per RetrievePropertiesEx page
COOKIE_NAME = "vmware_soap_session"
_MASK = "********"

# AnsibleModule's mutually_exclusive of vsphere_argument_spec(): one way to trust the certificate
VSPHERE_EXCLUSIVE = [("ca_file", "thumbprint")]
# AnsibleModule keyword arguments that go with a VM selector (name / uuid)
VSPHERE_VM_RULES = {"required_one_of": [("name", "uuid")], "mutually_exclusive": [("name", "uuid")]}


def vsphere_argument_spec():
    """The connection options of every vSphere module (doc fragment dfir.vmcollect.vsphere), named and defaulted as
    community.vmware and vmware.vmware name them (same environment variables), so their inventories work as they
    are."""
    return dict(
        hostname=dict(type="str", required=True, fallback=(env_fallback, ["VMWARE_HOST"])),
        username=dict(type="str", required=True, aliases=["user", "admin"], fallback=(env_fallback, ["VMWARE_USER"])),
        password=dict(type="str", required=True, aliases=["pass", "pwd"], no_log=True,
                      fallback=(env_fallback, ["VMWARE_PASSWORD"])),
        port=dict(type="int", default=DEFAULT_PORT, fallback=(env_fallback, ["VMWARE_PORT"])),
        validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["VMWARE_VALIDATE_CERTS"])),
        ca_file=dict(type="path"),
        thumbprint=dict(type="str"),
        datacenter=dict(type="str"),
        timeout=dict(type="int", default=DEFAULT_TIMEOUT),
    )


# the options of vsphere_argument_spec() that VsphereClient takes (client_from_params, and the undo handlers)
CLIENT_OPTIONS = ("hostname", "username", "password", "port", "validate_certs", "ca_file", "thumbprint",
                  "datacenter", "timeout")


def client_from_params(params):
    """A VsphereClient from a module's params (or teardown's ``connection`` dict); unset options take defaults."""
    kwargs = dict((k, params[k]) for k in CLIENT_OPTIONS if params.get(k) is not None)
    missing = [k for k in ("hostname", "username", "password") if not kwargs.get(k)]
    if missing:
        env = {"hostname": "VMWARE_HOST", "username": "VMWARE_USER", "password": "VMWARE_PASSWORD"}
        raise InvalidInputError("The vSphere connection lacks %s (give the option, or the environment variable %s)."
                                % (" and ".join(missing), " / ".join(env[k] for k in missing)))
    return VsphereClient(**kwargs)


def require_pyvmomi():
    if not HAS_PYVMOMI:
        raise VsphereError("pyVmomi (the vSphere API's Python SDK, 'pyvmomi' on PyPI, 8.0.1 or later) is not installed "
                           "for the Python that runs this module on the controller.")


def pyvmomi_version():
    """pyVmomi's version as installed (for the manifest), or None."""
    try:
        from importlib import metadata  # Python 3.8+
        return metadata.version("pyvmomi")
    except Exception:  # pylint: disable=broad-except
        return None


# -- thumbprints --------------------------------------------------------------------------------

def parse_thumbprint(text):
    """A SHA-256 fingerprint as 64 lowercase hex digits, from 'AA:BB:...' (what vSphere shows) or plain hex.

    SHA-1 (20 bytes, what older vSphere clients show) is refused with a sentence: a SHA-1 fingerprint cannot pin a
    certificate any more (chosen-prefix collisions)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("thumbprint is empty; give the SHA-256 fingerprint of the server certificate.")
    value = text.strip()
    if value.lower().startswith("sha256:"):
        value = value[7:]
    digits = re.sub(r"[\s:]", "", value).lower()
    if not re.match(r"^[0-9a-f]+$", digits):
        raise InvalidInputError("thumbprint %r is not a fingerprint: give hex digits, with or without colons "
                                "(AA:BB:...)." % text)
    if len(digits) == 40:
        raise InvalidInputError(
            "thumbprint %s is a SHA-1 fingerprint; SHA-1 is too weak to pin a certificate (chosen-prefix "
            "collisions). Give the SHA-256 fingerprint of the server certificate, for example from `openssl s_client "
            "-connect HOST:443 </dev/null | openssl x509 -noout -fingerprint -sha256`." % text)
    if len(digits) != 64:
        raise InvalidInputError("thumbprint %r has %d hex digits; a SHA-256 fingerprint has 64." % (text, len(digits)))
    return digits


def format_thumbprint(digits):
    """64 hex digits as vSphere shows a fingerprint: 'AA:BB:...'."""
    if not digits:
        return None
    digits = digits.upper()
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))


def same_thumbprint(a, b):
    """Whether two fingerprints (any accepted spelling) are the same."""
    try:
        return parse_thumbprint(a) == parse_thumbprint(b)
    except InvalidInputError:
        return False


class ThumbprintMismatch(ssl.SSLError):
    """The peer's certificate is not the pinned one (raised right after the handshake, before any HTTP)."""

    def __init__(self, expected, seen):
        ssl.SSLError.__init__(self, "certificate fingerprint %s is not the pinned %s"
                              % (format_thumbprint(seen), format_thumbprint(expected)))
        self.expected = expected
        self.seen = seen


class _TlsContext(ssl.SSLContext):
    """An SSLContext that remembers the fingerprint of every peer it met and enforces a pinned one.

    The check runs in ``wrap_socket``, which http.client calls for every new connection, right after the handshake
    (``do_handshake_on_connect``): a wrong peer is closed before a request (and so a credential) is written."""

    def wrap_socket(self, sock, *args, **kwargs):  # pylint: disable=signature-differs
        tls = super(_TlsContext, self).wrap_socket(sock, *args, **kwargs)
        try:
            der = tls.getpeercert(True)
        except ValueError:  # not connected / no handshake yet
            der = None
        seen = hashlib.sha256(der).hexdigest() if der else None
        if seen:
            self.vmc_seen = seen
        pin = getattr(self, "vmc_pin", None)
        if pin and seen != pin:
            self.vmc_mismatch = seen or "none"
            try:
                tls.close()
            finally:
                raise ThumbprintMismatch(pin, seen)
        return tls


def make_tls_context(validate_certs=True, ca_file=None, thumbprint=None):
    """(SSLContext, how): ``how`` is 'thumbprint', 'ca_file', 'system' or 'off' (see the module docstring)."""
    ctx = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.vmc_pin = None
    ctx.vmc_seen = None
    ctx.vmc_mismatch = None
    if thumbprint:
        if ca_file:
            raise InvalidInputError("thumbprint and ca_file were both given; give one: the pinned fingerprint or the "
                                    "certificate authority that signed the server's certificate.")
        ctx.vmc_pin = parse_thumbprint(thumbprint)
        # the pin is the trust: the chain of a pinned (typically self-signed) certificate is not checked
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, "thumbprint"
    if not validate_certs:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, "off"
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (IOError, OSError, ssl.SSLError) as exc:
            raise InvalidInputError("ca_file %s cannot be read as PEM certificates: %s." % (ca_file, exc))
        return ctx, "ca_file"
    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx, "system"


# -- errors as sentences --------------------------------------------------------------------------

def fault_name(fault):
    """The vSphere name of a fault (InvalidLogin, FileLocked...)."""
    name = getattr(fault, "_wsdlName", None) or type(fault).__name__
    return name


def fault_message(fault):
    """The fault's localized message(s), as the server said them, in one line; '' when it says nothing."""
    parts = []
    for attr in ("localizedMessage", "msg"):
        value = getattr(fault, attr, None)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
    for item in getattr(fault, "faultMessage", None) or []:
        value = getattr(item, "message", None)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
    # a fault that wraps another (a task's error around its cause) says both
    cause = getattr(fault, "faultCause", None)
    if cause is not None and cause is not fault:
        inner = fault_message(cause)
        if inner and inner not in parts:
            parts.append("caused by %s: %s" % (fault_name(cause), inner))
    return "; ".join(p.rstrip(".") for p in parts)


def fault_sentence(fault, step, host):
    """One sentence for a vSphere fault met while doing ``step`` on ``host``."""
    name = fault_name(fault)
    message = fault_message(fault)
    if name == "InvalidLogin":
        return ("%s refused the login (InvalidLogin): the user name or password is wrong%s."
                % (host, (" (%s)" % message.rstrip(".")) if message else ""))
    if name == "NoPermission":
        privilege = getattr(fault, "privilegeId", None)
        obj = getattr(fault, "object", None)
        return ("%s refused to %s: the user lacks the privilege %s%s (NoPermission)%s."
                % (host, step, privilege or "needed",
                   (" on %s" % getattr(obj, "_moId", obj)) if obj is not None else "",
                   (": %s" % message) if message else ""))
    if name in ("NotAuthenticated", "NotAuthenticatedFault"):
        return "%s ended the session while trying to %s (NotAuthenticated): log in again and rerun." % (host, step)
    if name == "ManagedObjectNotFound":
        obj = getattr(fault, "obj", None)
        return ("%s could not %s: the object %s no longer exists (ManagedObjectNotFound)."
                % (host, step, getattr(obj, "_moId", obj)))
    return "%s could not %s: %s%s." % (host, step, name, (": %s" % message) if message else "")


def _scrub(text, secrets):
    for value in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(value, _MASK)
    return text


def error_for(exc, step, host, secrets=(), error=VsphereError, tls_context=None):
    """The collection's exception for ``exc`` (met while doing ``step`` on ``host``), or None to let it pass."""
    # pyVmomi may wrap what the TLS layer raised; the context remembers a refused peer
    mismatch = getattr(tls_context, "vmc_mismatch", None) if tls_context is not None else None
    if isinstance(exc, ThumbprintMismatch) or (mismatch and not isinstance(exc, VmcollectError)):
        seen = exc.seen if isinstance(exc, ThumbprintMismatch) else mismatch
        expected = exc.expected if isinstance(exc, ThumbprintMismatch) else tls_context.vmc_pin
        return VsphereConnectionError(
            "The TLS certificate of %s has the SHA-256 thumbprint %s, not the pinned %s: the connection was closed "
            "right after the TLS handshake, before anything was sent, so no credential was sent. If the host's "
            "certificate was renewed, check the new thumbprint out of band and pin it; otherwise something stands "
            "between you and the host." % (host, format_thumbprint(seen) or "(none)", format_thumbprint(expected)),
            tls={"verified": False, "how": "thumbprint", "thumbprint_sha256": format_thumbprint(seen),
                 "expected_thumbprint_sha256": format_thumbprint(expected)})
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VsphereConnectionError(
            "The TLS certificate of %s could not be verified (%s), so no credential was sent. Give the certificate "
            "authority that signed it in ca_file, or pin its SHA-256 thumbprint with thumbprint (`openssl s_client "
            "-connect HOST:PORT </dev/null | openssl x509 -noout -fingerprint -sha256`), or, knowingly, "
            "validate_certs=false (recorded as unverified)." % (host, getattr(exc, "verify_message", None) or exc))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return VsphereConnectionError("%s did not answer within %d s while trying to %s; check the host and the "
                                      "network, then rerun." % (host, REQUEST_TIMEOUT, step))
    if isinstance(exc, ssl.SSLError):
        return VsphereConnectionError("The TLS connection to %s failed while trying to %s: %s."
                                      % (host, step, _scrub(str(exc), secrets)))
    if isinstance(exc, socket.gaierror):
        return VsphereConnectionError("The host name of %s does not resolve (%s); check hostname."
                                      % (host, exc.strerror or exc))
    if isinstance(exc, ConnectionRefusedError):
        return VsphereConnectionError("%s refused the TCP connection: nothing listens there (check hostname and port)."
                                      % host)
    if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, VmcollectError):
        return VsphereConnectionError("The connection to %s failed while trying to %s: %s."
                                      % (host, step, _scrub(str(exc), secrets)))
    if isinstance(exc, http.client.HTTPException):
        said = _scrub(str(exc) or type(exc).__name__, secrets)
        return VsphereConnectionError("%s gave an HTTP answer that is not the vSphere API's while trying to %s (%s); "
                                      "check hostname and port." % (host, step, said))
    if HAS_PYVMOMI and isinstance(exc, vmodl.MethodFault):
        cls = VsphereConnectionError if fault_name(exc) in ("InvalidLogin", "HostConnectFault") else error
        return cls(_scrub(fault_sentence(exc, step, host), secrets), fault=fault_name(exc))
    return None


def vsphere_errors(step, error=VsphereError):
    """Decorator for the public entry points of the vSphere module_utils (after amazon.aws's error decorators): a
    vSphere fault, a TLS, socket or HTTP error that escapes the function becomes ``error`` (connection troubles
    VsphereConnectionError) with a sentence naming the host and ``step``. The host and the secrets to mask come
    from the VsphereClient among the call's arguments (``self`` of a client method). The collection's own errors
    pass as they are."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except VmcollectError:
                raise
            except Exception as exc:  # pylint: disable=broad-except
                client = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, VsphereClient)), None)
                host = client.where if client is not None else "the vSphere host"
                secrets = client.secrets() if client is not None else ()
                ctx = client.ssl_context if client is not None else None
                converted = error_for(exc, step, host, secrets, error, ctx)
                if converted is None:
                    raise
                raise converted

        return wrapper

    return decorate


# -- names and paths -------------------------------------------------------------------------------

def unescape_name(name):
    """An inventory name as the user wrote it: vSphere escapes '%', '/' and '\\' in names as %25, %2f, %5c."""
    if not isinstance(name, str):
        return name
    return re.sub(r"%(25|2[fF]|5[cC])", lambda m: {"25": "%", "2f": "/", "5c": "\\"}[m.group(1).lower()], name)


def _uuid_key(value):
    return re.sub(r"[^0-9a-f]", "", (value or "").lower())


def moref(obj):
    """A managed object's reference as a string ('vm-42'), or None."""
    return getattr(obj, "_moId", None) if obj is not None else None


def parse_datastore_path(path, datastores=()):
    """('datastore name', 'relative/path') of a datastore path '[name] relative/path'.

    Names hold any character, spaces and brackets included ('[SAN [gold]] vm [1]/vm [1].vmx'). With the names of the
    datastores there are (``datastores``), the longest one that the path starts with wins; without them, the name
    ends at the ']' that closes the first '[' (brackets inside balanced) followed by a space or the end, else at the
    first ']' followed by a space. Refused with a sentence when it is not a datastore path."""
    if not isinstance(path, str) or not path.startswith("["):
        raise InvalidInputError("%r is not a datastore path ('[datastore] folder/file')." % (path,))
    for name in sorted((d for d in datastores if d is not None), key=len, reverse=True):
        prefix = "[%s]" % name
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == " "):
            return name, path[len(prefix):].lstrip(" ")
    # the ']' that closes the first '[' (brackets in the name balanced), followed by a space or the end
    depth = 0
    for i, char in enumerate(path):
        depth += 1 if char == "[" else -1 if char == "]" else 0
        if depth == 0 and char == "]" and (i + 1 == len(path) or path[i + 1] == " "):
            return path[1:i], path[i + 1:].lstrip(" ")
    match = re.match(r"^\[(.*?)\](?: (.*))?$", path, re.S)
    if match is None:
        raise InvalidInputError("%r is not a datastore path ('[datastore] folder/file')." % (path,))
    return match.group(1), (match.group(2) or "").lstrip(" ")


def datastore_path(datastore, relative):
    """'[datastore] relative' (the inverse of parse_datastore_path)."""
    return "[%s] %s" % (datastore, relative) if relative else "[%s]" % datastore


# -- the client ----------------------------------------------------------------------------------

class VsphereClient(object):
    """One session with an ESXi host or a vCenter. Use it as a context manager::

        with VsphereClient("esxi1.example.org", "root", password, thumbprint="AA:BB:...") as client:
            vm = client.find_vm(name="Windows XP")
            values = client.properties(vm, ["runtime.powerState", "snapshot"])
    """

    def __init__(self, hostname, username, password, port=DEFAULT_PORT, validate_certs=True, ca_file=None,
                 thumbprint=None, datacenter=None, timeout=DEFAULT_TIMEOUT):
        if not hostname:
            raise InvalidInputError("hostname is empty; give the ESXi host or vCenter to connect to.")
        if timeout is not None and int(timeout) <= 0:
            raise InvalidInputError("timeout must be a positive number of seconds, not %s." % timeout)
        self.hostname = hostname
        self.username = username
        self._password = password
        self.port = int(port or DEFAULT_PORT)
        self.datacenter = datacenter
        self.timeout = int(timeout or DEFAULT_TIMEOUT)
        self.ssl_context, self.tls_how = make_tls_context(validate_certs, ca_file, thumbprint)
        self.si = None
        self.content = None
        self._stub = None
        self.api_version_id = None

    def __repr__(self):  # never the password
        return "VsphereClient(%s, user=%s, tls=%s)" % (self.where, self.username, self.tls_how)

    @property
    def where(self):
        return "%s:%d" % (self.hostname, self.port) if self.port != DEFAULT_PORT else self.hostname

    def secrets(self):
        """Values to mask in any text that leaves the client (the password, the session cookie)."""
        values = [self._password]
        cookie = self._session_id()
        if cookie:
            values.append(cookie)
        return tuple(v for v in values if v)

    # -- session ----------------------------------------------------------------------------
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.disconnect()
        return False

    @vsphere_errors("connect and log in", error=VsphereConnectionError)
    def connect(self):
        """Check the peer (TLS), find the API version it speaks, log in. Nothing secret is sent before the TLS
        check passed: the first connection asks only for /sdk/vimServiceVersions.xml."""
        require_pyvmomi()
        self.ssl_context.vmc_mismatch = None
        version = self._negotiate_version()
        stub = SoapStubAdapter(host=self.hostname, port=self.port, version=version, path="/sdk",
                               sslContext=self.ssl_context, httpConnectionTimeout=REQUEST_TIMEOUT)
        self._stub = stub
        si = vim.ServiceInstance("ServiceInstance", stub)
        content = si.RetrieveContent()
        content.sessionManager.Login(self.username, self._password, None)
        self.si, self.content = si, content
        return self

    def _negotiate_version(self):
        """The newest vim25 version both pyVmomi and the server speak (from the server's vimServiceVersions.xml)."""
        conn = self.http_connection()
        try:
            conn.request("GET", "/sdk/vimServiceVersions.xml")
            resp = conn.getresponse()
            body = resp.read(1024 * 1024)
            status = resp.status
        finally:
            conn.close()
        supported = set()
        if status == 200:
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                root = None
            if root is not None and root.tag == "namespaces":
                for ns in root.findall("namespace"):
                    if (ns.findtext("name") or "").strip() != "urn:vim25":
                        continue
                    supported.add((ns.findtext("version") or "").strip())
                    supported.update((v.text or "").strip() for v in ns.findall("priorVersions/version"))
        if not supported:
            raise VsphereConnectionError("%s does not answer as an ESXi host or vCenter (no vim25 API versions at "
                                         "/sdk/vimServiceVersions.xml, HTTP %s); check hostname and port."
                                         % (self.where, status))
        for name in VmomiSupport.GetServiceVersions("vim25"):
            version_id = VmomiSupport.versionIdMap.get(name)
            if version_id and version_id.replace("vim25/", "") in supported:
                self.api_version_id = version_id
                return name
        raise VsphereConnectionError("%s speaks the vSphere API versions %s, none of which this pyVmomi (%s) knows; "
                                     "install a pyVmomi that supports them."
                                     % (self.where, ", ".join(sorted(supported)), pyvmomi_version()))

    def disconnect(self):
        """Log out and close every connection; never fails (the session ends on the server's idle timeout if the
        logout cannot be sent)."""
        try:
            if self.content is not None:
                self.content.sessionManager.Logout()
        except Exception:  # pylint: disable=broad-except
            pass
        finally:
            try:
                if self._stub is not None and hasattr(self._stub, "DropConnections"):
                    self._stub.DropConnections()
            except Exception:  # pylint: disable=broad-except
                pass
            self.si = self.content = self._stub = None

    # -- TLS and HTTP -------------------------------------------------------------------------
    def tls_record(self):
        """How the server's identity was checked, for the manifest: verified (bool), how ('thumbprint', 'ca_file',
        'system' or 'off'), thumbprint_sha256 of the certificate seen."""
        return {"verified": self.tls_how != "off", "how": self.tls_how,
                "thumbprint_sha256": format_thumbprint(getattr(self.ssl_context, "vmc_seen", None))}

    def http_connection(self, timeout=REQUEST_TIMEOUT):
        """A new HTTPSConnection to the same host and port, with the same TLS checks (a pinned thumbprint is checked
        on it too, before anything is sent). The caller closes it."""
        return http.client.HTTPSConnection(self.hostname, self.port, timeout=timeout, context=self.ssl_context)

    def _session_id(self):
        cookie = getattr(self._stub, "cookie", None) if self._stub is not None else None
        if not cookie:
            return None
        first = cookie.split(";", 1)[0].strip()
        if "=" not in first:
            return None
        return first.split("=", 1)[1].strip().strip('"') or None

    def cookie_header(self):
        """The value of a Cookie header that carries this session ('vmware_soap_session="..."'), for HTTP requests
        to /folder and friends. It is a credential: never log it."""
        if self.si is None:
            raise VsphereError("Not logged in to %s; connect first." % self.where)
        cookie = getattr(self._stub, "cookie", "") or ""
        first = cookie.split(";", 1)[0].strip()
        if first.startswith(COOKIE_NAME + "="):
            return first
        session = self._session_id()
        if not session:
            raise VsphereError("%s set no %s cookie at login; HTTP access to its files is not possible with this "
                               "session." % (self.where, COOKIE_NAME))
        return '%s="%s"' % (COOKIE_NAME, session)

    # -- who answers --------------------------------------------------------------------------
    def about(self):
        """dict(product, version, build, api_type (HostAgent|VirtualCenter), api_version, instance_uuid)."""
        about = self.content.about
        return {"product": about.fullName or about.name, "name": about.name, "version": about.version,
                "build": about.build, "api_type": about.apiType, "api_version": about.apiVersion,
                "instance_uuid": getattr(about, "instanceUuid", None)}

    # -- reading ------------------------------------------------------------------------------
    def _collect(self, filter_spec):
        """Every ObjectContent of ``filter_spec``, page by page (RetrievePropertiesEx + ContinueRetrievePropertiesEx)."""
        pc = self.content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=MAX_OBJECTS)
        result = pc.RetrievePropertiesEx(specSet=[filter_spec], options=options)
        objects = []
        while result is not None:
            objects.extend(result.objects or [])
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(token=result.token)
        return objects

    def _as_dict(self, content):
        values = dict((p.name, p.val) for p in content.propSet or [])
        for missing in content.missingSet or []:
            raise VsphereError(fault_sentence(missing.fault, "read %s of %s" % (missing.path, moref(content.obj)),
                                              self.where), path_missing=missing.path, object=moref(content.obj))
        return values

    @vsphere_errors("read properties")
    def properties(self, obj, paths):
        """dict path -> value of ``obj``'s properties ``paths``; a property that is not set is absent."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths), all=False)])
        objects = self._collect(spec)
        return self._as_dict(objects[0]) if objects else {}

    @vsphere_errors("list the inventory")
    def retrieve(self, obj_type, paths, container=None):
        """[(obj, dict path -> value)] of every ``obj_type`` object below ``container`` (default: the root folder),
        through a container view that is destroyed again."""
        view = self.content.viewManager.CreateContainerView(container or self.content.rootFolder, [obj_type], True)
        try:
            pcq = vmodl.query.PropertyCollector
            traversal = pcq.TraversalSpec(name="traverseView", path="view", skip=False, type=vim.view.ContainerView)
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
                propSet=[pcq.PropertySpec(type=obj_type, pathSet=list(paths), all=False)])
            return [(c.obj, self._as_dict(c)) for c in self._collect(spec)]
        finally:
            try:
                view.Destroy()
            except Exception:  # pylint: disable=broad-except
                pass

    def _datacenter_folder(self):
        """The vmFolder of ``datacenter`` (refused with the names there are when it does not exist), or None."""
        if not self.datacenter:
            return None
        dcs = self.retrieve(vim.Datacenter, ["name", "vmFolder"])
        for _dc, values in dcs:
            if self.datacenter in (values.get("name"), unescape_name(values.get("name"))):
                return values["vmFolder"]
        raise VmNotFoundError("%s has no datacenter named %r; it has %s."
                              % (self.where, self.datacenter,
                                 ", ".join(sorted(repr(unescape_name(v.get("name"))) for _d, v in dcs)) or "none"))

    @vsphere_errors("find the VM", error=VmNotFoundError)
    def find_vm(self, name=None, uuid=None):
        """The VirtualMachine whose name is exactly ``name`` (spaces, brackets, any character) or whose BIOS or
        instance UUID is ``uuid``, within ``datacenter`` if given. No match, or several, is refused with a
        sentence (several: their morefs)."""
        if bool(name) == bool(uuid):
            raise InvalidInputError("Give exactly one of name and uuid to find a VM.")
        where = self.where + (" (datacenter %s)" % self.datacenter if self.datacenter else "")
        vms = self.retrieve(vim.VirtualMachine, ["name", "config.uuid", "config.instanceUuid"],
                            container=self._datacenter_folder())
        if name:
            found = [(vm, v) for vm, v in vms if name in (v.get("name"), unescape_name(v.get("name")))]
            what = "named %r" % name
        else:
            key = _uuid_key(uuid)
            found = [(vm, v) for vm, v in vms
                     if key and key in (_uuid_key(v.get("config.uuid")), _uuid_key(v.get("config.instanceUuid")))]
            what = "with the UUID %s" % uuid
        if not found:
            raise VmNotFoundError("No VM %s is on %s. Nothing was changed." % (what, where), vm=name or uuid)
        if len(found) > 1:
            listed = ", ".join("%s, uuid %s" % (moref(vm), v.get("config.uuid")) for vm, v in found)
            raise VmNotFoundError(
                "%d VMs %s are on %s (%s); give the uuid (or the datacenter) that selects one. Nothing was changed."
                % (len(found), what, where, listed), vm=name or uuid, morefs=[moref(vm) for vm, _v in found])
        return found[0][0]

    # -- tasks --------------------------------------------------------------------------------
    def wait_for_task(self, task, what, timeout=None, progress=None):
        """Wait until ``task`` ends, at most ``timeout`` seconds (default: the client's), and return its result.
        ``progress(percent)`` is called whenever the task's info.progress changes.

        Through a PropertyCollector of its own with one filter on the task's info.state / info.error /
        info.result and WaitForUpdatesEx slices of at most WAIT_SLICE s; the collector (and so the filter) is
        destroyed whatever happens. A failed task raises VsphereError with the fault's localized message; a task
        still running at the deadline raises a sentence naming it (it may go on running on the server)."""
        return self._wait_for_task(task, what, timeout, progress)

    @vsphere_errors("wait for a task")
    def _wait_for_task(self, task, what, timeout, progress=None):
        bound = float(timeout if timeout is not None else self.timeout)
        deadline = time.monotonic() + bound
        pcq = vmodl.query.PropertyCollector
        collector = self.content.propertyCollector.CreatePropertyCollector()
        try:
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=task, skip=False)],
                propSet=[pcq.PropertySpec(type=vim.Task, all=False, pathSet=["info.state", "info.error", "info.result"]
                                          + (["info.progress"] if progress is not None else []))])
            collector.CreateFilter(spec, partialUpdates=False)
            version = ""
            state = {}
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise VsphereError(
                        "The task to %s (%s) did not finish within %d s on %s; it may still be running there (see "
                        "its Recent Tasks). Nothing more was done after it." % (what, moref(task), bound, self.where),
                        task=moref(task), timed_out=True)
                options = pcq.WaitOptions(maxWaitSeconds=max(1, int(min(remaining, WAIT_SLICE))))
                update = collector.WaitForUpdatesEx(version, options)
                if update is None:
                    continue
                version = update.version
                for filter_update in update.filterSet or []:
                    for obj_update in filter_update.objectSet or []:
                        for change in obj_update.changeSet or []:
                            state[change.name] = change.val
                if progress is not None and state.get("info.progress") is not None:
                    progress(state["info.progress"])
                status = state.get("info.state")
                if status == "success":
                    return state.get("info.result")
                if status == "error":
                    error = state.get("info.error")
                    sentence = (fault_sentence(error, what, self.where) if error is not None
                                else "%s could not %s (the task failed without a reason)." % (self.where, what))
                    raise VsphereError("%s (task %s)." % (sentence.rstrip("."), moref(task)),
                                       task=moref(task), fault=fault_name(error) if error is not None else None)
        finally:
            try:
                collector.DestroyPropertyCollector()
            except Exception:  # pylint: disable=broad-except
                pass
