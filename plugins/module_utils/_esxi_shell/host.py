# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ESXi provider's SSH engine: which engine changes a host, and an ESXi shell to change it with.

A free ESXi host (the "vSphere Hypervisor" licence) answers its vSphere API read-only: a snapshot, a disk copy, an
iSCSI datastore are refused there with ``vim.fault.RestrictedVersion``. Its own shell is not bound by that rule, so
the SSH engine makes those changes with ``vim-cmd``, ``vmkfstools``, ``esxcli`` and ``partedUtil`` over SSH, the way
the field method did. Reads stay with the API (a free host answers them), so both engines see the host alike.

``engine`` of a module: ``api`` (the vSphere API changes the host), ``ssh`` (its shell does) or ``auto``: the API
where it may write, SSH where the host's licence is the free one (a licence whose edition key is ``esxBasic`` - what
free hosts report, ``LicenseManager.licenses`` - or names a free/hypervisor-only edition). The choice and why are
returned for the case manifest (``choose_engine``).

The SSH connection (option ``ssh`` of those modules, and of teardown's ``connection``): the host is the vSphere
``hostname``; user and password default to the vSphere ones when no private key is given (ESXi's root logs in to
both). The host key is checked (``known_hosts`` or ``host_key_fingerprint``) before any credential is sent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, VmcollectError
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse as _parse
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    SshClient,
    command_error,
    join,
    quote,
)

ENGINES = ("api", "ssh", "auto")
FREE_EDITIONS = ("esxbasic",)  # edition keys of free ESXi licences (compared lower-case, as prefixes)
HASH_TIMEOUT = 24 * 3600  # seconds: hashing a large frozen disk on the host
SHORT = 120  # seconds: a command that only reads or changes a setting


class EsxiShellError(VmcollectError):
    """A command of the ESXi shell failed or said something this version does not read."""


def ssh_client(params):
    """An SshClient to ``params['hostname']`` with ``params['ssh']`` (see the module docstring for the defaults)."""
    ssh = dict((k, v) for k, v in (params.get("ssh") or {}).items() if v is not None)
    hostname = params.get("hostname")
    if not hostname:
        raise InvalidInputError("The SSH engine needs the host's hostname.")
    username = ssh.get("username") or params.get("username") or "root"
    if "\\" in username or "@" in username:
        raise InvalidInputError("The SSH engine logs in to the ESXi host itself, as a local user (root); %r is a "
                                "vCenter or domain user. Give ssh.username." % username)
    password = ssh.get("password")
    if not password and not ssh.get("private_key_file"):
        password = params.get("password")
    if ssh.get("known_hosts") and ssh.get("host_key_fingerprint"):
        raise InvalidInputError("ssh.known_hosts and ssh.host_key_fingerprint were both given; give one.")
    return SshClient(hostname, username=username, password=password, private_key_file=ssh.get("private_key_file"),
                     private_key_passphrase=ssh.get("private_key_passphrase"), port=ssh.get("port") or DEFAULT_PORT,
                     known_hosts=ssh.get("known_hosts"), host_key_fingerprint=ssh.get("host_key_fingerprint"),
                     timeout=ssh.get("timeout") or DEFAULT_TIMEOUT,
                     command_timeout=ssh.get("command_timeout") or DEFAULT_COMMAND_TIMEOUT)


def licence_editions(client):
    """[{edition_key, name}] of the host's licences (LicenseManager.licenses; a read every licence allows)."""
    lm = client.si.content.licenseManager
    if lm is None:
        return []
    out = []
    for lic in client.properties(lm, ["licenses"]).get("licenses") or []:
        out.append({"edition_key": getattr(lic, "editionKey", None) or "", "name": getattr(lic, "name", None) or ""})
    return out


def is_free(editions):
    for e in editions:
        key = (e.get("edition_key") or "").lower()
        if any(key.startswith(f) for f in FREE_EDITIONS) or ".free" in key or key.endswith("free"):
            return True
    return False


def choose_engine(requested, client):
    """{engine, requested, why, licences} - the engine that changes this host (see the module docstring)."""
    if requested not in ENGINES:
        raise InvalidInputError("engine must be one of %s, not %r." % (", ".join(ENGINES), requested))
    if requested != "auto":
        return {"engine": requested, "requested": requested, "why": "asked for", "licences": None}
    if client.about().get("api_type") == "VirtualCenter":
        return {"engine": "api", "requested": "auto", "licences": None,
                "why": "a vCenter manages the host (a free ESXi host cannot be managed by one): its API changes it"}
    editions = licence_editions(client)
    names = ", ".join("%s (%s)" % (e["name"] or "?", e["edition_key"] or "?") for e in editions) or "none listed"
    if is_free(editions):
        return {"engine": "ssh", "requested": "auto", "licences": editions,
                "why": "the host's licence is the free one (%s): its API is read-only, its shell changes it" % names}
    return {"engine": "api", "requested": "auto", "licences": editions,
            "why": "the host's licence lets its API change it (%s)" % names}


def vmfs_path(datastore_path):
    """'/vmfs/volumes/<datastore>/<path>' of '[datastore] path' (how ESXi's shell names a datastore file)."""
    m = re.match(r"^\[(?P<ds>[^\]]+)\] ?(?P<path>.*)$", datastore_path or "")
    if not m:
        raise InvalidInputError("%r is not a datastore path ('[datastore] folder/file')." % (datastore_path,))
    rel = m.group("path").lstrip("/")
    return "/vmfs/volumes/%s/%s" % (m.group("ds"), rel) if rel else "/vmfs/volumes/%s" % m.group("ds")


_DGST = {"md5": "-md5", "sha1": "-sha1", "sha256": "-sha256", "sha512": "-sha512"}


class Shell(object):
    """An ESXi host's shell over an open SshClient: commands as argv lists, their output as text, failures as
    EsxiShellError sentences that name the command (secrets masked by the client)."""

    def __init__(self, ssh):
        self.ssh = ssh

    @property
    def where(self):
        return self.ssh.where

    def run(self, argv, timeout=SHORT, stdin=None, secrets=(), ok=(0,)):
        """stdout (text) of ``argv``; EsxiShellError when its exit code is not in ``ok`` (with vim-cmd's fault)."""
        rc, out, err = self.ssh.run(argv, timeout=timeout, stdin=stdin, secrets=secrets)
        out_t = out.decode("utf-8", "replace")
        if rc not in ok:
            fault = _parse.vim_fault(out_t) or _parse.vim_fault(err.decode("utf-8", "replace"))
            msg = command_error(self.where, argv, rc, out, err, self.ssh.secrets() + tuple(secrets or ())).message
            if fault:
                msg = "%s The host said %s: %s" % (msg.rstrip(), fault[0], fault[1])
            raise EsxiShellError(msg, rc=rc, fault=fault[0] if fault else None,
                                 command=argv if isinstance(argv, str) else join(argv))
        return out_t

    def run_secret(self, argv, option, secret, timeout=SHORT):
        """run() of ``argv`` plus ``<option>=<secret>``, the secret handed over on stdin: the host's shell reads it
        into a variable and execs the program, so neither the command line sent over SSH nor the shell's argv holds
        it - only the program's own argv, for as long as it runs (esxcli takes a CHAP secret no other way)."""
        if not secret or "\n" in secret or "\0" in secret:
            raise InvalidInputError("A secret for %s must be one line of text." % option)
        line = "IFS= read -r v && exec %s %s\"$v\"" % (join(argv), quote(option + "="))
        return self.run(line, timeout=timeout, stdin=secret + "\n", secrets=(secret,))

    def rc(self, argv, timeout=SHORT):
        """The exit code of ``argv`` alone (a test)."""
        return self.ssh.run(argv, timeout=timeout)[0]

    # -- files -------------------------------------------------------------------------------------------------
    def exists(self, path):
        return self.rc(["test", "-e", path]) == 0

    def stat(self, path):
        """{size, mtime} of a file (busybox/coreutils ``stat -c``), or None when it does not exist."""
        rc, out, _err = self.ssh.run(["stat", "-c", "%s %Y", path], timeout=SHORT)
        if rc != 0:
            if not self.exists(path):
                return None
            raise EsxiShellError("`stat` of %s on %s failed (exit code %d)." % (path, self.where, rc))
        parts = out.decode("utf-8", "replace").split()
        return {"size": int(parts[0]), "mtime": int(parts[1])}

    def read(self, path, limit=16 * 1024 * 1024):
        """The bytes of a small file (a descriptor, a marker)."""
        rc, out, err = self.ssh.run(["cat", path], timeout=SHORT, max_output=limit)
        if rc != 0:
            raise EsxiShellError("Reading %s on %s failed: %s" % (path, self.where, err.decode("utf-8", "replace").strip()[-300:]
                                                                  or "exit code %d" % rc))
        return out

    def write_new(self, path, data):
        """Write ``data`` (bytes) to ``path`` through stdin, never replacing a file: a temporary name beside it,
        then ``mv`` only if ``path`` does not exist (checked in the same shell)."""
        tmp = path + ".part"
        line = ("set -e; test ! -e %(p)s; cat > %(t)s; test ! -e %(p)s; mv %(t)s %(p)s"
                % {"p": quote(path), "t": quote(tmp)})
        rc, _out, err = self.ssh.run(line, timeout=SHORT, stdin=data)
        if rc != 0:
            self.ssh.run(["rm", "-f", tmp], timeout=SHORT)
            raise EsxiShellError("Writing %s on %s failed (it exists already, or the datastore refused): %s"
                                 % (path, self.where, err.decode("utf-8", "replace").strip()[-300:] or "exit code %d" % rc))

    def hash_files(self, paths, algorithms, timeout=HASH_TIMEOUT):
        """{path: {algorithm: hex}}, each file read by ``openssl dgst`` on the host, the algorithms of one file at
        the same time (one openssl per algorithm: the page cache serves the second read)."""
        result = {}
        for path in paths:
            jobs = []
            for alg in algorithms:
                if alg not in _DGST:
                    raise InvalidInputError("No `openssl dgst` option is known for %r." % alg)
                jobs.append("{ h=$(openssl dgst %s -r %s) && echo %s \"$h\"; } &" % (_DGST[alg], quote(path), alg))
            line = " ".join(jobs) + " wait"
            out = self.run(line, timeout=timeout)
            digests = {}
            for row in out.splitlines():
                parts = row.split()
                if len(parts) >= 2 and parts[0] in algorithms and re.match(r"^[0-9a-f]{32,128}$", parts[1]):
                    digests[parts[0]] = parts[1]
            missing = [a for a in algorithms if a not in digests]
            if missing:
                raise EsxiShellError("`openssl dgst` on %s gave no %s digest of %s: %r"
                                     % (self.where, "/".join(missing), path, out[-300:]))
            result[path] = digests
        return result

    # -- vim-cmd -----------------------------------------------------------------------------------------------
    def vmid(self, vmx, datastores=()):
        """The vmid (vim-cmd's number) of the VM whose configuration file is ``vmx`` ('[ds] folder/vm.vmx')."""
        out = self.run(["vim-cmd", "vmsvc/getallvms"], timeout=SHORT)
        hits = [v for v in _parse.getallvms(out, datastores) if v["vmx"] == vmx]
        if len(hits) != 1:
            raise EsxiShellError("`vim-cmd vmsvc/getallvms` on %s lists %s VM(s) with the file %s; exactly one was "
                                 "expected." % (self.where, len(hits) or "no", vmx))
        return hits[0]["vmid"]
