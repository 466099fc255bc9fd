# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An SSH client that only connects, runs commands and raises (the SSH engine's, for ESXi hosts; any POSIX host).

``SshClient`` opens one SSH connection with paramiko and closes it again, whatever happens (a context manager)::

    with SshClient("esxi1.example.org", private_key_file="~/.ssh/dfir_ed25519",
                   known_hosts="/case/known_hosts") as ssh:
        rc, out, err = ssh.run(["vmkfstools", "-i", src, "-d", "thin", dst], timeout=7200)

The host's identity is checked before any credential is sent, against ``known_hosts`` (an OpenSSH known_hosts file,
default ``~/.ssh/known_hosts``: plain, hashed, ``[host]:port`` and wildcard entries, ``@revoked`` honoured) or a
pinned ``host_key_fingerprint`` (``SHA256:...`` as ``ssh-keygen -lf`` prints it). The host-key policy is a
paramiko ``RejectPolicy`` that decides itself: an unknown key, a changed key, a revoked key and a key that is not
the pinned one are each refused with a sentence naming the host, the key's type and SHA256 fingerprint and what to
do. This reader, not paramiko's ``HostKeys``, reads the file: paramiko compares only the first known key of a type,
and one ``@cert-authority`` line makes its loader fail. The host key algorithms of the known keys are offered first,
so a host known by its RSA key is not asked for its Ed25519 key; with a pin, the key types the host offers are tried
one connection each until one has the pinned fingerprint.

Login: a password (also answered to a keyboard-interactive prompt, which is what ESXi asks) and/or a private key
file (with its passphrase); an SSH agent and the default keys in ``~/.ssh`` only when asked (``allow_agent``,
``look_for_keys``).

``run(command, timeout, stdin, secrets)`` runs one command and returns ``(rc, stdout, stderr)`` as bytes. A command
given as an argv list is quoted for a POSIX shell (``quote()``: the ESXi shell is busybox ash), so datastore paths
with spaces, brackets and quotes arrive exactly. Every command is bounded: stdout and stderr are read concurrently
(no deadlock on large output) up to ``max_output`` bytes each, and a command that does not end within its timeout,
or writes more than that, is stopped on the host: SIGTERM to its process group and its shell, SIGKILL after a grace
of a few seconds (OpenSSH's sshd makes the command's shell a session and process group leader - on ESXi's sshd
UNCONFIRMED; without that only the shell itself is signalled; the shell's process id is the first line it writes on
stderr, which ``run`` removes again). Then SshTimeout (or SshError) names the command and the seconds, and says
whether the command was stopped. Closing the channel alone would not stop it: sshd lets a command without a
terminal run on. ``run_checked`` raises SshCommandError (exit code, the last lines of stderr) for an exit code other
than 0.

Secrets: the password and the passphrase go nowhere but into paramiko's login. A secret a command needs is piped
on its stdin where the command can read it there (``run(..., stdin=...)``), never put into its argv: the argv of
every process is readable by anyone on the host (``ps``). Where a command has no stdin form, the secret is in the
host's process list for the instant the command runs: ``esxcli iscsi adapter auth chap set --secret=...`` is such
a command (ESXi may also record the commands its shell runs in /var/log/shell.log - UNCONFIRMED for commands run
over SSH). Give such values in ``secrets=[...]``: every message and every exception this client builds shows them
as ``********`` (the client's own password and passphrase always are). This client logs nothing.

paramiko is imported guarded: these module_utils import on hosts without it, and ``require_paramiko()`` says what is
missing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import hashlib
import hmac
import os
import re
import socket
import threading
import time
import traceback

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import (
    SSH_DEFAULT_COMMAND_TIMEOUT,
    SSH_DEFAULT_PORT,
    SSH_DEFAULT_TIMEOUT,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    InvalidInputError,
    SshCommandError,
    SshConnectionError,
    SshError,
    SshHostKeyError,
    SshTimeout,
    VmcollectError,
)

try:
    import paramiko

    HAS_PARAMIKO = True
    PARAMIKO_IMPORT_ERROR = None
except ImportError:
    paramiko = None
    HAS_PARAMIKO = False
    PARAMIKO_IMPORT_ERROR = traceback.format_exc()

# the port and the two timeouts are the ssh option's defaults, which _argspec holds (see there)
DEFAULT_PORT = SSH_DEFAULT_PORT
DEFAULT_USERNAME = "root"
DEFAULT_TIMEOUT = SSH_DEFAULT_TIMEOUT
DEFAULT_COMMAND_TIMEOUT = SSH_DEFAULT_COMMAND_TIMEOUT
DEFAULT_KEEPALIVE = 30  # seconds between keepalive messages on an idle connection (0: none)
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
MAX_OUTPUT = 64 * 1024 * 1024  # bytes kept of a command's stdout, and of its stderr
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a command that is given up on
SIGNAL_TIMEOUT = 10.0  # seconds for the `kill` that stops such a command
POLL = 0.25  # seconds: the slice of every wait on a channel (checks of the deadline and of the output bound)
CHUNK = 32768  # bytes per read from, and write to, a channel
_MASK = "********"

# AnsibleModule's mutually_exclusive of ssh_argument_spec(): one way to trust the host key
SSH_EXCLUSIVE = [("known_hosts", "host_key_fingerprint")]

_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
# the host key algorithms tried one at a time (one connection each) when the first key seen is not the pinned one
_KEY_FAMILIES = (("ssh-ed25519",), ("ecdsa-sha2-nistp256",), ("ecdsa-sha2-nistp384",), ("ecdsa-sha2-nistp521",),
                 _RSA_ALGORITHMS)


def ssh_argument_spec():
    """The connection options of every module that works over SSH (doc fragment dfir.vmcollect.ssh)."""
    return dict(
        hostname=dict(type="str", required=True),
        port=dict(type="int", default=DEFAULT_PORT),
        username=dict(type="str", default=DEFAULT_USERNAME),
        password=dict(type="str", no_log=True),
        private_key_file=dict(type="path", no_log=False),
        private_key_passphrase=dict(type="str", no_log=True),
        known_hosts=dict(type="path"),
        host_key_fingerprint=dict(type="str", no_log=False),
        allow_agent=dict(type="bool", default=False),
        look_for_keys=dict(type="bool", default=False),
        timeout=dict(type="int", default=DEFAULT_TIMEOUT),
        command_timeout=dict(type="int", default=DEFAULT_COMMAND_TIMEOUT),
    )


# the options of ssh_argument_spec() that SshClient takes (client_from_params)
CLIENT_OPTIONS = ("hostname", "port", "username", "password", "private_key_file", "private_key_passphrase",
                  "known_hosts", "host_key_fingerprint", "allow_agent", "look_for_keys", "timeout", "command_timeout")


def client_from_params(params):
    """An SshClient from a module's params; unset options take the defaults."""
    kwargs = dict((k, params[k]) for k in CLIENT_OPTIONS if params.get(k) is not None)
    if not kwargs.get("hostname"):
        raise InvalidInputError("The SSH connection lacks hostname; give the host to connect to.")
    return SshClient(**kwargs)


def require_paramiko():
    if not HAS_PARAMIKO:
        raise SshError("paramiko (the Python SSH library, 'paramiko' on PyPI, 3.4 or later) is not installed for the "
                       "Python that runs this module.")


def paramiko_version():
    """paramiko's version as installed (for the manifest), or None."""
    return getattr(paramiko, "__version__", None) if HAS_PARAMIKO else None


# -- quoting for a POSIX shell ----------------------------------------------------------------------

_SAFE = re.compile(r"^[A-Za-z0-9_@%+:,./-]+$")


def _text(value, what):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise InvalidInputError("%s must be a string, not %s." % (what, type(value).__name__))
    if "\0" in value:
        raise InvalidInputError("%s holds a NUL character, which no command line can carry." % what)
    return value


def quote(arg):
    """``arg`` as one word of a POSIX shell command line (busybox ash on ESXi, dash, bash).

    Words of only ``A-Z a-z 0-9 _ @ % + : , . / -`` stay as they are; every other word is put in single quotes,
    a ``'`` in it written as ``'\\''``: inside single quotes nothing is special (spaces, brackets, ``$``,
    backticks, ``\\``, ``*``, newlines, any non-ASCII character), so the shell passes the word on byte for byte.
    Bytes are taken as UTF-8 (undecodable bytes kept as they are); a NUL is refused."""
    text = _text(arg, "A command argument")
    if not text:
        return "''"
    if _SAFE.match(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def join(argv):
    """A command line that runs ``argv`` exactly (each word through quote())."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)):
        raise InvalidInputError("A command's argv must be a list of strings, not %s." % type(argv).__name__)
    if not argv:
        raise InvalidInputError("A command's argv is empty; give at least the program to run.")
    return " ".join(quote(a) for a in argv)


def command_line(command):
    """The command line of ``command``: an argv list joined with quote(), or a string taken as a command line."""
    if isinstance(command, (list, tuple)):
        return join(command)
    line = _text(command, "A command")
    if not line.strip():
        raise InvalidInputError("The command is empty; give a command line or an argv list.")
    return line


# -- masking --------------------------------------------------------------------------------------

def _secret_forms(secret):
    if isinstance(secret, bytes):
        secret = secret.decode("utf-8", "surrogateescape")
    if not isinstance(secret, str) or not secret:
        return set()
    forms = set([secret, secret.replace("'", "'\\''")])
    if "\0" not in secret:
        forms.add(quote(secret))
    return forms


def mask(text, secrets):
    """``text`` with every secret replaced by ********: as given, and as quote() writes it into a command line."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    forms = set()
    for secret in secrets or ():
        forms.update(_secret_forms(secret))
    for value in sorted(forms, key=len, reverse=True):
        text = text.replace(value, _MASK)
    return text


def _shorten(text, limit=1000):
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _tail(data, secrets, lines=5, limit=800):
    """The last non-empty lines of a command's output, masked, on one line ('' when there are none)."""
    text = mask(data or b"", secrets)
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= limit else "..." + joined[-(limit - 3):]


def _seconds(value):
    return "%g" % value


def _size(value):
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return "%d %s" % (value // factor, unit)
    return "%d bytes" % value


# -- host key fingerprints --------------------------------------------------------------------------

def fingerprint_sha256(key):
    """The SHA256 fingerprint of a public key (a paramiko key or its wire-format blob), as ``ssh-keygen -lf`` and
    ``ssh`` print it: 'SHA256:' and the unpadded base64 of the SHA-256 of the blob."""
    blob = key.asbytes() if hasattr(key, "asbytes") else bytes(key)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


_FINGERPRINT = re.compile(r"SHA256:([A-Za-z0-9+/]{43})=?(?![A-Za-z0-9+/=])")
_MD5 = re.compile(r"^(?:MD5:)?(?:[0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2}$")


def parse_fingerprint(text):
    """A SHA256 host key fingerprint in OpenSSH's spelling ('SHA256:' + 43 base64 characters), from that spelling
    or a whole line of ``ssh-keygen -lf`` ('256 SHA256:... root@host (ED25519)'). MD5 fingerprints (what old
    clients show) are refused: MD5 cannot pin a key."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("host_key_fingerprint is empty; give the SHA256 fingerprint of the host key as "
                                "`ssh-keygen -lf` prints it (SHA256:...).")
    value = text.strip()
    match = _FINGERPRINT.search(value)
    if match is not None and len(base64.b64decode(match.group(1) + "=")) == 32:
        return "SHA256:" + match.group(1)
    if _MD5.match(value):
        raise InvalidInputError(
            "host_key_fingerprint %s is an MD5 fingerprint; MD5 is too weak to pin a host key (collisions). Give the "
            "SHA256 fingerprint, as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the host's "
            "console (SHA256:...)." % value)
    raise InvalidInputError(
        "host_key_fingerprint %r is not a SHA256 fingerprint as OpenSSH prints it ('SHA256:' and 43 base64 "
        "characters, for example from `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host's console)."
        % text)


def _keyscan_type(key_type):
    """The -t value of ssh-keyscan for a key type (ssh-ed25519 -> ed25519)."""
    if key_type.startswith("ecdsa-"):
        return "ecdsa"
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key_type, key_type)


def _key_file_type(key_type):
    """The <type> of /etc/ssh/ssh_host_<type>_key.pub for a key type."""
    return _keyscan_type(key_type)


# -- known_hosts ------------------------------------------------------------------------------------

class KnownHostsEntry(object):
    """One line of a known_hosts file: marker (None, 'revoked', 'cert-authority'), host patterns, key type, key
    blob, line number."""

    __slots__ = ("marker", "patterns", "key_type", "blob", "lineno")

    def __init__(self, marker, patterns, key_type, blob, lineno):
        self.marker = marker
        self.patterns = patterns
        self.key_type = key_type
        self.blob = blob
        self.lineno = lineno

    @property
    def fingerprint(self):
        return fingerprint_sha256(self.blob)

    def __repr__(self):
        marker = "@%s " % self.marker if self.marker else ""
        return "KnownHostsEntry(line %d, %s%s %s)" % (self.lineno, marker, self.key_type, self.fingerprint)


def parse_known_hosts(text):
    """The entries of an OpenSSH known_hosts file's text. Comments, blank lines and lines that are not
    ``[@marker] patterns key-type base64 [comment]`` are skipped (as OpenSSH does)."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = None
        if fields[0].startswith("@"):
            marker = fields[0][1:].lower()
            fields = fields[1:]
            if marker not in ("revoked", "cert-authority"):
                continue
        if len(fields) < 3:
            continue
        patterns, key_type, data = fields[:3]
        try:
            blob = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeError):
            continue
        if blob:
            entries.append(KnownHostsEntry(marker, patterns, key_type, blob, lineno))
    return entries


def read_known_hosts(path):
    """(entries, exists) of the known_hosts file ``path``; a missing file has no entries. An unreadable file is
    refused with a sentence."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 * 1024)
    except (IOError, OSError) as exc:
        if not os.path.exists(path):
            return [], False
        raise InvalidInputError("known_hosts %s cannot be read: %s." % (path, exc.strerror or exc))
    return parse_known_hosts(data.decode("utf-8", "replace")), True


def known_hosts_name(hostname, port):
    """The name a host has in known_hosts: 'host' on port 22, '[host]:port' on any other (as OpenSSH writes it)."""
    host = hostname.lower()
    return host if int(port) == DEFAULT_PORT else "[%s]:%d" % (host, int(port))


def _wildcard(pattern):
    """OpenSSH's host pattern: '*' and '?' are wildcards, everything else (brackets too) is literal; no case."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("^%s$" % regex, re.IGNORECASE | re.DOTALL)


def _hashed_match(pattern, name):
    """Whether a hashed name ('|1|base64 salt|base64 HMAC-SHA1(salt, name)', HashKnownHosts) is ``name``."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[0] or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2].encode("ascii"), validate=True)
        digest = base64.b64decode(parts[3].encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest(), digest)


def host_matches(patterns, name):
    """Whether the host patterns of a known_hosts line (comma-separated; '!' negates; or one hashed name) name
    ``name`` (see known_hosts_name)."""
    matched = False
    for pattern in patterns.split(","):
        if pattern.startswith("|"):
            if _hashed_match(pattern, name):
                matched = True
            continue
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if pattern and _wildcard(pattern).match(name):
            if negated:
                return False
            matched = True
    return matched


def check_known_hosts(entries, name, blob):
    """What known_hosts says of the key ``blob`` presented by the host ``name``: ('ok', [the entries with that
    key]), ('revoked', [the @revoked entries]), ('changed', [the host's entries, none with that key]) or
    ('unknown', [])."""
    revoked = [e for e in entries if e.marker == "revoked" and e.blob == blob and host_matches(e.patterns, name)]
    if revoked:
        return "revoked", revoked
    known = [e for e in entries if e.marker is None and host_matches(e.patterns, name)]
    same = [e for e in known if e.blob == blob]
    if same:
        return "ok", same
    if known:
        return "changed", known
    return "unknown", []


def preferred_key_types(known_types, available):
    """The host key algorithms to offer, most wanted first: those of the keys known for the host (an RSA key as
    rsa-sha2-512, rsa-sha2-256, ssh-rsa), then the others; each group in the order of ``available``."""
    wanted = set()
    for key_type in known_types:
        wanted.update(_RSA_ALGORITHMS if key_type == "ssh-rsa" else (key_type,))
    return [a for a in available if a in wanted] + [a for a in available if a not in wanted]


def _family(key_type):
    return _RSA_ALGORITHMS if key_type in _RSA_ALGORITHMS else (key_type,)


def _only(family):
    """An ``order`` for SshClient._open that offers the host key algorithms of ``family`` only."""

    def order(available):
        return [a for a in available if a in family]

    return order


# -- the refusals, as sentences ---------------------------------------------------------------------

def _check_it(key_type):
    return ("compare it with the fingerprint the host itself shows on its console, not over this network "
            "(`ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`)" % _key_file_type(key_type))


def unknown_key_sentence(where, name, key_type, fingerprint, known_hosts, exists=True):
    """The refusal of a host key that known_hosts does not know."""
    host, port = _split_name(name)
    return (
        "The SSH host key of %s is unknown: %s %s, and the host presented the %s key %s. The connection was closed "
        "before any credential was sent. Do not trust that key before you checked it out of band: %s. Then add it "
        "to %s (`ssh-keyscan -p %d -t %s %s >> %s`, after `ssh-keyscan -p %d %s | ssh-keygen -lf -` showed the "
        "same fingerprint) or pin it with host_key_fingerprint=%s."
        % (where, known_hosts, "has no entry for %s" % name if exists else "does not exist", key_type, fingerprint,
           _check_it(key_type), known_hosts, port, _keyscan_type(key_type), quote(host), quote(known_hosts), port,
           quote(host), fingerprint))


def changed_key_sentence(where, name, key_type, fingerprint, known_hosts, known):
    """The refusal of a host key that is not among the keys known_hosts holds for the host."""
    listed = ", ".join("the %s key %s (line %d)" % (e.key_type, e.fingerprint, e.lineno) for e in known)
    other_type = ""
    if not any(_family(e.key_type) == _family(key_type) for e in known):
        other_type = " (no %s key is known for it: the host offered none of the known key types)" % key_type
    return (
        "The SSH host key of %s has CHANGED: the host presented the %s key %s, but %s holds %s for %s%s. The "
        "connection was closed before any credential was sent. Either the host's SSH keys were made anew (a "
        "reinstall, a reset configuration) or something between here and the host impersonates it: find out which "
        "out of band - %s - and only then replace the entry (`ssh-keygen -R %s -f %s`, then add the checked key)."
        % (where, key_type, fingerprint, known_hosts, listed, name, other_type, _check_it(key_type), quote(name),
           quote(known_hosts)))


def revoked_key_sentence(where, key_type, fingerprint, known_hosts, revoked):
    """The refusal of a host key that known_hosts marks @revoked."""
    return (
        "The SSH host key of %s is REVOKED: the %s key %s it presented is marked @revoked in %s (line %s). The "
        "connection was closed before any credential was sent. Do not connect to this host until its SSH keys were "
        "made anew and the new key checked out of band (on its console)."
        % (where, key_type, fingerprint, known_hosts, ", ".join(str(e.lineno) for e in revoked)))


def not_pinned_sentence(where, pin, seen):
    """The refusal of a host none of whose keys (``seen``: [(key type, fingerprint)]) has the pinned fingerprint."""
    listed = ", ".join("the %s key %s" % (t, fp) for t, fp in seen) or "no key"
    return (
        "The SSH host key of %s is not the pinned host_key_fingerprint %s: the host presented %s (each host key "
        "type it offers was tried). The connection was closed before any credential was sent. Either the host's "
        "SSH keys were made anew or something between here and the host impersonates it: check the fingerprint out "
        "of band - on the host's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`, and the same for its "
        "ecdsa and rsa keys), not over this network - and pin the one it shows." % (where, pin, listed))


def _split_name(name):
    match = re.match(r"^\[(.*)\]:(\d+)$", name)
    return (match.group(1), int(match.group(2))) if match else (name, DEFAULT_PORT)


def command_error(where, command, rc, stdout, stderr, secrets=()):
    """SshCommandError for a command that ended with ``rc`` != 0: its command line and the last lines of its
    stderr (of its stdout when stderr is empty: ESXi's vim-cmd prints its faults there), masked."""
    shown = _shorten(mask(command_line(command), secrets))
    err_tail = _tail(stderr, secrets)
    out_tail = _tail(stdout, secrets)
    if err_tail:
        said = err_tail
    elif out_tail:
        said = "nothing on stderr; stdout ends with: %s" % out_tail
    else:
        said = "it wrote nothing"
    how = "with exit code %d" % rc if rc >= 0 else "without an exit code (killed by a signal?)"
    return SshCommandError("The command `%s` failed on %s %s: %s." % (shown, where, how, said.rstrip(".")),
                           host=where, command=shown, rc=rc, stderr_tail=err_tail, stdout_tail=out_tail)


# -- channels ---------------------------------------------------------------------------------------

class _Reader(threading.Thread):
    """Reads one stream of a channel (stdout or stderr) until its end, keeping at most ``limit`` bytes; more sets
    ``overflow``, and what follows is read and dropped (so the host can still send the end of the channel)."""

    def __init__(self, recv, limit, name, watch=None):
        threading.Thread.__init__(self, name=name)
        self.daemon = True
        self._recv = recv
        self._limit = limit
        self._watch = watch
        self.chunks = []
        self.size = 0
        self.overflow = False
        self.error = None

    def run(self):
        while True:
            try:
                data = self._recv(CHUNK)
            except socket.timeout:
                continue
            except Exception as exc:  # pylint: disable=broad-except
                self.error = exc
                return
            if not data:
                return
            if self._watch is not None:
                try:
                    self._watch(data)
                # a watcher's failure never loses the output
                except Exception:  # pylint: disable=broad-except
                    self._watch = None
            if self.overflow or self.size + len(data) > self._limit:
                self.overflow = True
                continue
            self.chunks.append(data)
            self.size += len(data)

    def data(self):
        return b"".join(self.chunks)

    def head(self, size=65536):
        out = []
        got = 0
        for chunk in list(self.chunks):
            out.append(chunk)
            got += len(chunk)
            if got >= size:
                break
        return b"".join(out)


def _pid_line(marker):
    return re.compile(re.escape(marker.encode("ascii")) + br"(\d+)\r?\n")


def _find_pid(head, marker):
    match = _pid_line(marker).search(head)
    return int(match.group(1)) if match else None


def _strip_pid(stderr, marker):
    """stderr without the line that gave the command's process id (the first line of the command's shell)."""
    match = _pid_line(marker).search(stderr[:65536])
    return stderr[:match.start()] + stderr[match.end():] if match else stderr


def _close_quietly(thing):
    if thing is None:
        return
    try:
        thing.close()
    except Exception:  # pylint: disable=broad-except
        pass


def _positive(value, what):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise InvalidInputError("%s must be a positive number of seconds, not %r." % (what, value))
    return number


if HAS_PARAMIKO:
    _RejectPolicy = paramiko.RejectPolicy
else:  # pragma: no cover - the classes below are only used after require_paramiko()
    _RejectPolicy = object


class _HostKeyPolicy(_RejectPolicy):
    """paramiko's RejectPolicy with the decision made by the client: paramiko calls it for every host key (the
    client loads no keys into paramiko), before any authentication; ``check(key)`` raises to refuse."""

    def __init__(self, check):
        self._check = check

    def missing_host_key(self, client, hostname, key):
        self._check(key)


class _NotPinned(Exception):
    """The key seen on one connection is not the pinned one (the next key type is tried)."""


# -- the client ------------------------------------------------------------------------------------

class SshClient(object):
    """One SSH connection to a host. Use it as a context manager::

        with SshClient("esxi1", password=pw, host_key_fingerprint="SHA256:...") as ssh:
            out, _err = ssh.run_checked(["vim-cmd", "vmsvc/getallvms"], timeout=60)
    """

    def __init__(self, hostname, username=DEFAULT_USERNAME, password=None, private_key_file=None,
                 private_key_passphrase=None, port=DEFAULT_PORT, known_hosts=None, host_key_fingerprint=None,
                 timeout=DEFAULT_TIMEOUT, command_timeout=DEFAULT_COMMAND_TIMEOUT, allow_agent=False,
                 look_for_keys=False, keepalive=DEFAULT_KEEPALIVE, max_output=MAX_OUTPUT):
        if not hostname or not isinstance(hostname, str):
            raise InvalidInputError("hostname is empty; give the host to connect to over SSH.")
        try:
            port = int(port if port is not None else DEFAULT_PORT)
        except (TypeError, ValueError):
            port = 0
        if not 0 < port < 65536:
            raise InvalidInputError("port must be a TCP port (1 to 65535), not %r." % (port,))
        if not username:
            raise InvalidInputError("username is empty; give the user to log in as (on ESXi usually root).")
        self.hostname = hostname
        self.port = port
        self.username = username
        self._password = password or None
        self._passphrase = private_key_passphrase or None
        self.private_key_file = os.path.expanduser(private_key_file) if private_key_file else None
        self.allow_agent = bool(allow_agent)
        self.look_for_keys = bool(look_for_keys)
        if self._passphrase and not (self.private_key_file or self.look_for_keys):
            raise InvalidInputError("private_key_passphrase was given without private_key_file; give the private key "
                                    "it unlocks.")
        if not (self._password or self.private_key_file or self.allow_agent or self.look_for_keys):
            raise InvalidInputError(
                "The SSH connection to %s has no way to log in: give password or private_key_file (or, knowingly, "
                "allow_agent or look_for_keys)." % self.where)
        if host_key_fingerprint and known_hosts:
            raise InvalidInputError("known_hosts and host_key_fingerprint were both given; give one: the known_hosts "
                                    "file that holds the host's key, or the pinned fingerprint of that key.")
        if host_key_fingerprint:
            self.host_key_pin = parse_fingerprint(host_key_fingerprint)
            self.known_hosts = None
            self.host_key_how = "fingerprint"
        else:
            self.host_key_pin = None
            self.known_hosts = os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)
            self.host_key_how = "known_hosts"
        self.timeout = _positive(timeout if timeout is not None else DEFAULT_TIMEOUT, "timeout")
        self.command_timeout = _positive(command_timeout if command_timeout is not None else DEFAULT_COMMAND_TIMEOUT,
                                         "command_timeout")
        self.keepalive = int(keepalive or 0)
        self.max_output = int(max_output or MAX_OUTPUT)
        self._client = None
        self._host_key = None  # (key type, SHA256 fingerprint) of the key accepted

    def __repr__(self):  # never a secret
        return "SshClient(%s, user=%s, host key by %s)" % (self.where, self.username, self.host_key_how)

    @property
    def where(self):
        """'host:port' ('[v6 address]:port')."""
        host = "[%s]" % self.hostname if ":" in self.hostname else self.hostname
        return "%s:%d" % (host, self.port)

    def secrets(self):
        """Values to mask in any text that leaves the client (the password, the key's passphrase)."""
        return tuple(v for v in (self._password, self._passphrase) if v)

    def host_key_record(self):
        """How the host's identity was checked, for the manifest: verified (bool), how ('known_hosts' or
        'fingerprint'), key_type and fingerprint_sha256 of the key accepted, known_hosts (the file, or None)."""
        key_type, fingerprint = self._host_key or (None, None)
        return {"verified": self._host_key is not None, "how": self.host_key_how, "key_type": key_type,
                "fingerprint_sha256": fingerprint, "known_hosts": self.known_hosts}

    # -- connection ---------------------------------------------------------------------------
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def connect(self):
        """Connect, check the host key (before any credential is sent) and log in. Raises SshHostKeyError for a
        refused host key, SshConnectionError for anything else, InvalidInputError for an unusable private key."""
        require_paramiko()
        if self._client is not None:
            return self
        self._host_key = None
        pkey = self._load_private_key()
        if self.host_key_pin:
            self._connect_pinned(pkey)
        else:
            self._connect_known_hosts(pkey)
        if self._host_key is None:  # never: paramiko asks the policy for every key (no keys are loaded into it)
            self.close()
            raise SshHostKeyError("The SSH host key of %s was not checked; the connection was closed." % self.where)
        if self.keepalive:
            self._client.get_transport().set_keepalive(self.keepalive)
        return self

    def close(self):
        """Close the connection (and every channel on it); never fails."""
        client, self._client = self._client, None
        _close_quietly(client)

    def _load_private_key(self):
        if not self.private_key_file:
            return None
        path = self.private_key_file
        if not os.path.isfile(path):
            raise InvalidInputError("private_key_file %s does not exist or is not a file." % path)
        passphrase = self._passphrase.encode("utf-8") if isinstance(self._passphrase, str) else self._passphrase
        try:
            return paramiko.PKey.from_path(path, passphrase=passphrase)
        except paramiko.PasswordRequiredException:
            raise InvalidInputError("The private key %s is encrypted; give its passphrase in private_key_passphrase."
                                    % path)
        except paramiko.UnknownKeyType:
            raise InvalidInputError("The private key %s is of a type paramiko %s cannot use; use an ed25519, ecdsa "
                                    "or rsa key." % (path, paramiko_version()))
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            if isinstance(exc, TypeError) and not passphrase:  # cryptography: encrypted, and no password given
                raise InvalidInputError("The private key %s is encrypted; give its passphrase in "
                                        "private_key_passphrase." % path)
            if passphrase:
                raise InvalidInputError("The private key %s cannot be opened with the private_key_passphrase given: "
                                        "the passphrase is wrong, or the file is not a private key." % path)
            raise InvalidInputError("private_key_file %s is not a private key that paramiko can read (give the "
                                    "private key in OpenSSH or PEM format, not its .pub file)." % path)
        except (IOError, OSError) as exc:
            raise InvalidInputError("The private key %s cannot be read: %s." % (path, exc.strerror or exc))

    def _open(self, pkey, check, order):
        """One SSH connection: ``check(key)`` decides on the host key (raising refuses it), ``order(available)``
        gives the host key algorithms to offer, most wanted first."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_HostKeyPolicy(check))

        def transport_factory(sock, **kwargs):
            transport = paramiko.Transport(sock, **kwargs)
            options = transport.get_security_options()
            options.key_types = order(list(options.key_types))
            return transport

        try:
            client.connect(self.hostname, port=self.port, username=self.username, password=self._password,
                           pkey=pkey, passphrase=self._passphrase, allow_agent=self.allow_agent,
                           look_for_keys=self.look_for_keys, timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout, channel_timeout=self.timeout,
                           transport_factory=transport_factory)
        except BaseException:
            _close_quietly(client)
            raise
        return client

    def _connect_known_hosts(self, pkey):
        entries, exists = read_known_hosts(self.known_hosts)
        name = known_hosts_name(self.hostname, self.port)
        known_types = [e.key_type for e in entries if e.marker is None and host_matches(e.patterns, name)]

        def check(key):
            blob = key.asbytes()
            key_type, fingerprint = key.get_name(), fingerprint_sha256(blob)
            status, which = check_known_hosts(entries, name, blob)
            if status == "ok":
                self._host_key = (key_type, fingerprint)
                return
            record = {"key_type": key_type, "fingerprint_sha256": fingerprint}
            known = [{"key_type": e.key_type, "fingerprint_sha256": e.fingerprint, "line": e.lineno} for e in which]
            if status == "revoked":
                message = revoked_key_sentence(self.where, key_type, fingerprint, self.known_hosts, which)
            elif status == "changed":
                message = changed_key_sentence(self.where, name, key_type, fingerprint, self.known_hosts, which)
            else:
                message = unknown_key_sentence(self.where, name, key_type, fingerprint, self.known_hosts, exists)
            raise SshHostKeyError(message, host=self.where, reason=status, host_key=record,
                                  known_hosts=self.known_hosts, known_keys=known)

        try:
            self._client = self._open(pkey, check, lambda available: preferred_key_types(known_types, available))
        except Exception as exc:  # pylint: disable=broad-except
            raise self._connect_error(exc)

    def _connect_pinned(self, pkey):
        seen = []

        def check(key):
            key_type, fingerprint = key.get_name(), fingerprint_sha256(key.asbytes())
            if (key_type, fingerprint) not in seen:
                seen.append((key_type, fingerprint))
            if fingerprint != self.host_key_pin:
                raise _NotPinned()
            self._host_key = (key_type, fingerprint)

        for family in (None,) + _KEY_FAMILIES:
            if family is not None and any(_family(t) == family for t, _fp in seen):
                continue
            try:
                self._client = self._open(pkey, check, list if family is None else _only(family))
                return
            except _NotPinned:
                continue
            except Exception as exc:  # pylint: disable=broad-except
                if family is None or self._host_key is not None:
                    raise self._connect_error(exc)
                # a key type this host does not offer (or cannot be reached with): try the next one
        raise SshHostKeyError(not_pinned_sentence(self.where, self.host_key_pin, seen), host=self.where,
                              reason="not_pinned", pinned=self.host_key_pin,
                              host_keys=[{"key_type": t, "fingerprint_sha256": fp} for t, fp in seen])

    def _tried(self):
        ways = []
        if self.private_key_file:
            ways.append("the private key %s" % self.private_key_file)
        if self.allow_agent:
            ways.append("the keys of the SSH agent")
        if self.look_for_keys:
            ways.append("the default keys in ~/.ssh")
        if self._password:
            ways.append("the password")
        return " and ".join(ways)

    def _connect_error(self, exc):
        """The collection's exception for what connecting raised (secrets masked)."""
        if isinstance(exc, VmcollectError):
            return exc
        where = self.where
        said = mask(str(exc) or type(exc).__name__, self.secrets()).rstrip(".")
        if isinstance(exc, paramiko.BadAuthenticationType):
            allowed = ", ".join(exc.allowed_types) or "nothing"
            return SshConnectionError(
                "%s refused the login of %s over SSH: it allows only %s, and this client tried %s (the host key was "
                "checked and accepted first)." % (where, self.username, allowed, self._tried()),
                host=where, allowed=list(exc.allowed_types))
        if isinstance(exc, paramiko.AuthenticationException):
            return SshConnectionError(
                "%s refused the login of %s with %s (%s): check the user, the password or that the public key is "
                "authorized there (ESXi: /etc/ssh/keys-root/authorized_keys for root). ESXi locks an account after a "
                "few failed logins in a row (Security.AccountLockFailures), so do not retry blindly."
                % (where, self.username, self._tried(), said), host=where)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return SshConnectionError("%s did not answer within %s s (TCP connection or SSH handshake); check the "
                                      "host, the port and the network, then rerun." % (where, _seconds(self.timeout)),
                                      host=where)
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            errors = list(exc.errors.values())
            if errors and all(isinstance(e, ConnectionRefusedError) for e in errors):
                exc = errors[0]
        if isinstance(exc, ConnectionRefusedError):
            return SshConnectionError(
                "%s refused the TCP connection: nothing listens on port %d (on ESXi the SSH service is off until it is "
                "started: Host > Configure > Services > SSH, or the DCUI's Troubleshooting Options)."
                % (where, self.port), host=where)
        if isinstance(exc, socket.gaierror):
            return SshConnectionError("The host name of %s does not resolve (%s); check hostname."
                                      % (where, exc.strerror or exc), host=where)
        if isinstance(exc, paramiko.SSHException) and ("banner" in said.lower() or said == "No existing session"):
            # paramiko: no banner within banner_timeout, or no finished key exchange within timeout
            return SshConnectionError(
                "%s did not answer as an SSH server within %s s (no SSH banner or key exchange: %s); check hostname "
                "and port." % (where, _seconds(self.timeout), said), host=where)
        if isinstance(exc, paramiko.SSHException):
            return SshConnectionError("The SSH connection to %s failed: %s." % (where, said), host=where)
        return SshConnectionError("The SSH connection to %s failed: %s: %s." % (where, type(exc).__name__, said),
                                  host=where)

    # -- commands -----------------------------------------------------------------------------
    def _transport(self):
        if self._client is None:
            raise SshError("Not connected to %s over SSH; connect first." % self.where)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SshConnectionError("The SSH connection to %s was lost; connect again." % self.where,
                                     host=self.where)
        return transport

    def _exec(self, transport, line, deadline):
        """A channel on which ``line`` (bytes) runs; the request is bounded by ``deadline`` (a watchdog closes the
        channel: paramiko waits for the server's answer without a bound). Returns (channel, None), or (None, why):
        'no session' (no channel within the time: nothing ran), 'no answer' (the exec request got no answer in time:
        the command may have started) or words saying what the host refused."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, "no session"
        try:
            chan = transport.open_session(timeout=min(self.timeout, remaining))
        except Exception as exc:  # pylint: disable=broad-except
            if not transport.is_active():
                raise SshConnectionError("The SSH connection to %s was lost; connect again." % self.where,
                                         host=self.where)
            if time.monotonic() >= deadline or "timeout" in str(exc).lower():
                return None, "no session"
            return None, "%s refused to open a session for it (%s)" % (self.where, mask(str(exc), self.secrets()))
        state = {"done": False, "fired": False}
        lock = threading.Lock()

        def fire():
            with lock:
                if state["done"]:
                    return
                state["fired"] = True
            _close_quietly(chan)

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), fire)
        watchdog.daemon = True
        watchdog.start()
        error = None
        try:
            chan.exec_command(line)
        except Exception as exc:  # pylint: disable=broad-except
            error = exc
        finally:
            watchdog.cancel()
            with lock:
                state["done"] = True
                fired = state["fired"]
        if fired:
            _close_quietly(chan)
            return None, "no answer"
        if error is not None:
            _close_quietly(chan)
            if not transport.is_active():
                raise SshConnectionError("The SSH connection to %s was lost; connect again." % self.where,
                                         host=self.where)
            return None, "%s refused to run it (%s)" % (self.where, mask(str(error) or type(error).__name__,
                                                                         self.secrets()).rstrip("."))
        chan.settimeout(POLL)
        return chan, None

    def run(self, command, timeout=None, stdin=None, secrets=(), max_output=None, watch=None):
        """Run ``command`` on the host and return ``(rc, stdout, stderr)`` (bytes).

        ``command`` is an argv list (quoted with quote(): what the program gets is exactly these words) or a
        command line for the host's shell (busybox ash on ESXi) taken as it is. ``timeout`` (seconds, default
        ``command_timeout``) bounds the whole command: past it the command is stopped on the host (SIGTERM to its
        process group, SIGKILL after KILL_GRACE s) and SshTimeout names it. ``stdin`` (bytes or str) is written to
        the command's stdin, which is then closed (without ``stdin`` it is closed at once): the way to hand a
        secret to a command without putting it in its argv. ``secrets`` are values to show as ******** in every
        message (the command line included); the client's own password and passphrase always are. stdout and
        stderr are read at the same time, each up to ``max_output`` bytes (default 64 MiB): a command that writes
        more is stopped like one past its timeout, and SshError says so. ``rc`` is -1 when the command ended
        without an exit code (killed by a signal). ``watch(chunk)`` sees each chunk of stdout and of stderr as it
        comes (a progress reader; the chunk is kept all the same, and a watcher that raises is not called again)."""
        line = command_line(command)
        hidden = self.secrets() + tuple(s for s in (secrets or ()) if s)
        shown = _shorten(mask(line, hidden))
        bound = _positive(timeout if timeout is not None else self.command_timeout, "timeout")
        limit = int(max_output or self.max_output)
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8")
        if stdin is not None and not isinstance(stdin, (bytes, bytearray)):
            raise InvalidInputError("stdin must be bytes, a string or None, not %s." % type(stdin).__name__)
        transport = self._transport()
        deadline = time.monotonic() + bound
        marker = "vmcollect-pid-%s:" % binascii.hexlify(os.urandom(6)).decode("ascii")
        # the command's shell says its process id (= its process group: sshd made it a session leader) first
        wrapped = ("echo %s$$ >&2\n%s" % (marker, line)).encode("utf-8", "surrogateescape")
        chan, why = self._exec(transport, wrapped, deadline)
        if chan is None:
            if why == "no session":
                raise SshTimeout("The command `%s` did not start within %s s: %s opened no session for it, so nothing "
                                 "of it ran." % (shown, _seconds(bound), self.where), host=self.where, command=shown,
                                 timeout=bound, stopped=True)
            if why == "no answer":
                raise SshTimeout("The command `%s` on %s did not end within %s s: the host did not even confirm that "
                                 "it started it; if it did, it may still be running there (look with `ps`)."
                                 % (shown, self.where, _seconds(bound)), host=self.where, command=shown,
                                 timeout=bound, stopped=False)
            raise SshError("The command `%s` could not be started: %s." % (shown, why), host=self.where,
                           command=shown)
        out = _Reader(chan.recv, limit, "ssh-stdout", watch)
        err = _Reader(chan.recv_stderr, limit + 64, "ssh-stderr", watch)
        try:
            out.start()
            err.start()
            problem = self._feed(chan, stdin, deadline, out, err)
            if problem is None:
                problem = self._wait(chan, deadline, out, err)
            if problem is not None:
                stopped, how = self._stop(chan, out, err, marker)
                if problem == "timeout":
                    raise SshTimeout("The command `%s` on %s did not end within %s s; %s."
                                     % (shown, self.where, _seconds(bound), how), host=self.where, command=shown,
                                     timeout=bound, stopped=stopped)
                raise SshError("The command `%s` on %s wrote more than %s to %s, more than this client keeps; %s. "
                               "Have it write large data into a file on the host instead."
                               % (shown, self.where, _size(limit), problem, how), host=self.where, command=shown,
                               max_output=limit, stopped=stopped)
            rc = chan.recv_exit_status()
            if rc == -1 and not transport.is_active():
                raise SshConnectionError("The SSH connection to %s was lost while the command `%s` ran; whether it "
                                         "ended there is unknown." % (self.where, shown), host=self.where,
                                         command=shown)
            for reader in (out, err):
                if reader.error is not None:
                    raise SshError("Reading the output of the command `%s` on %s failed: %s."
                                   % (shown, self.where, mask(str(reader.error), hidden)), host=self.where,
                                   command=shown)
            return rc, out.data(), _strip_pid(err.data(), marker)
        finally:
            _close_quietly(chan)
            for reader in (out, err):
                if reader.is_alive():
                    reader.join(POLL)

    def run_checked(self, command, timeout=None, stdin=None, secrets=(), max_output=None):
        """run(), and SshCommandError (exit code, the last lines of stderr, the command masked) unless the exit
        code is 0. Returns ``(stdout, stderr)``."""
        rc, out, err = self.run(command, timeout=timeout, stdin=stdin, secrets=secrets, max_output=max_output)
        if rc != 0:
            raise command_error(self.where, command, rc, out, err, self.secrets() + tuple(secrets or ()))
        return out, err

    @staticmethod
    def _overflow(out, err):
        if out.overflow:
            return "stdout"
        if err.overflow:
            return "stderr"
        return None

    def _feed(self, chan, data, deadline, out, err):
        """Write ``data`` to the command's stdin, then close it. Returns None, 'timeout', or the stream that
        overflowed."""
        offset = 0
        while data and offset < len(data):
            problem = self._overflow(out, err)
            if problem:
                return problem
            if time.monotonic() >= deadline:
                return "timeout"
            try:
                sent = chan.send(bytes(data[offset:offset + CHUNK]))
            except socket.timeout:
                continue
            except Exception:  # pylint: disable=broad-except
                break  # the channel is gone: what became of the command is read below
            if not sent:
                break  # closed: the command ended without reading all of it
            offset += sent
        try:
            chan.shutdown_write()
        except Exception:  # pylint: disable=broad-except
            pass
        return None

    def _wait(self, chan, deadline, out, err):
        """Wait until the command ended and both streams are read to their end. Returns None, 'timeout' or the
        stream that overflowed."""
        while True:
            problem = self._overflow(out, err)
            if problem:
                return problem
            if chan.exit_status_ready() and not out.is_alive() and not err.is_alive():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            step = min(remaining, POLL)
            if not chan.exit_status_ready():
                chan.status_event.wait(step)
            elif out.is_alive():
                out.join(step)
            else:
                err.join(step)

    def _gone(self, chan, readers, grace):
        end = time.monotonic() + grace
        chan.status_event.wait(grace)
        for reader in readers:
            reader.join(max(0.0, end - time.monotonic()))
        return chan.exit_status_ready() and not any(r.is_alive() for r in readers)

    def _stop(self, chan, out, err, marker):
        """Stop a command given up on: SIGTERM to its process group, SIGKILL after KILL_GRACE s. Returns
        (stopped, how it went as words for the message)."""
        pid = _find_pid(err.head(), marker)
        if pid is None:
            return False, ("its process id never arrived, so it could not be stopped; it may still be running there "
                           "(look with `ps`)")
        exited = chan.exit_status_ready()  # its shell ended; what still runs holds its output open
        readers = (out, err)
        try:
            self._signal(pid, 15, group_only=exited)
            if self._gone(chan, readers, KILL_GRACE):
                return True, "it was stopped there (SIGTERM to its process group %d)" % pid
            self._signal(pid, 9, group_only=exited)
            if self._gone(chan, readers, KILL_GRACE):
                return True, ("it was killed there (SIGKILL to its process group %d, %s s after SIGTERM)"
                              % (pid, _seconds(KILL_GRACE)))
            return False, ("SIGTERM and SIGKILL were sent to its process group %d, and it still did not end; it may "
                           "still be running there" % pid)
        except VmcollectError as exc:
            return False, ("stopping it failed (%s); it may still be running there as process group %d"
                           % (exc.message.rstrip("."), pid))

    def _signal(self, pid, signum, group_only):
        """Send ``signum`` to the process group ``pid`` (and to the process ``pid`` unless ``group_only``: after the
        process ended its id may be someone else's) with `kill` on a channel of its own, bounded."""
        line = "kill -%d -%d 2>/dev/null" % (signum, pid)
        if not group_only:
            line += "; kill -%d %d 2>/dev/null" % (signum, pid)
        transport = self._transport()
        deadline = time.monotonic() + SIGNAL_TIMEOUT
        chan, why = self._exec(transport, (line + "; exit 0").encode("ascii"), deadline)
        if chan is None:
            if why in ("no session", "no answer"):
                why = "no answer within %s s" % _seconds(SIGNAL_TIMEOUT)
            raise SshError("`%s` could not be started: %s" % (line, why))
        try:
            chan.shutdown_write()
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise SshError("`%s` did not end within %s s" % (line, _seconds(SIGNAL_TIMEOUT)))
        finally:
            _close_quietly(chan)
