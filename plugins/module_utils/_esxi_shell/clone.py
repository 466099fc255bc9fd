# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The field method itself: ``vmkfstools -i <frozen>.vmdk -d thin /vmfs/volumes/evidence/<vm>/<vm>.vmdk`` run by
the ESXi host's own shell over SSH, hashing on the host (module vmkfstools_clone, engine ``ssh``).

A free ESXi host answers its vSphere API read-only (``vim.fault.RestrictedVersion`` for every change), so there the
API engine (``_vsphere.clone``) cannot copy. Its shell can. This engine shares the API engine's plan and rules and
differs only where the host is changed or read in bulk:

- reads stay on the vSphere API (a free host answers them), exactly as the API engine reads: the descriptor chain
  (HTTPS GET), the sources' sizes and times (HEAD), the destination folders (datastore browser), the markers - so
  both engines refuse the same things with the same sentences (a destination on a datastore holding a source, a
  foreign destination, a ``.vmdk`` among ``files``, a copy of another state of the source);
- the sources are hashed ON THE HOST, before the copy, with ``openssl dgst`` (one process per algorithm, at the same
  time: ``Shell.hash_files``); their sizes and modification times are checked again after the copy (HEAD);
- changes go through the shell: the destination folder with ``mkdir -p`` (journaled first), a disk with
  ``vmkfstools -i <src> -d thin <dest>`` (bounded by ``ssh.command_timeout``: past it the command is stopped on
  the host), a file with ``cp`` (never over an existing file);
- the copy is read back ON THE HOST: ``openssl dgst`` of the clone's ``-flat.vmdk`` (or of the copied file), so
  ``dest_digests`` are the clone's and ``verified`` is true only when they equal the source's digests; a mismatch
  is an error and the copy gets no marker (teardown removes it). A clone of a delta consolidates several levels:
  its data file equals no single source file, so ``digests`` is null as with the API engine, ``verified`` false,
  and ``dest_digests`` still the clone's;
- the marker beside the destination is the API engine's (``<dest>.dfir-vmcollect.json``, written last, with
  ``Shell.write_new``: never over a file) plus the engine, the SSH host key record and the clone's digests.

Journal: the API engine's action ``vsphere.evidence_file`` (so either engine sees the other's unfinished copy to a
destination and refuses it until teardown ran), with ``"engine": "ssh"``, the host's SSH address and key
fingerprint in the undo record. Undo (``undo_copy``, through the API engine's handler): a completed copy (the
journal's ``applied``, or its marker naming the copy) is evidence and is kept; for an unfinished one, a
``vmkfstools`` still cloning to that destination (found in ``ps``) is stopped, the files it left are watched until
they stop changing, then removed with ``rm``; a folder the copy made is removed with ``rmdir`` only when empty.
Nothing is removed on a datastore that holds a source, nor on a host whose SSH key is not the one journaled.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import json
import os
import re
import threading
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    HashMismatchError,
    InvalidInputError,
    SshError,
    SshTimeout,
    VmcollectError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse as _parse
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import (
    ENGINES,
    SHORT,
    EsxiShellError,
    Shell,
    ssh_client,
    vmfs_path,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import join, quote
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as _client
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import clone as _api
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as _fetch

ENGINE = "ssh"
ACTION = _api.ACTION
MODULE = _api.MODULE
COPIED_BY_DISK = "vmkfstools_clone (vmkfstools -i -d thin over SSH)"
COPIED_BY_FILE = "vmkfstools_clone (cp over SSH)"
VERIFY_NOTE = ("Read back on the host: the sources were hashed there with openssl dgst before the copy, the copy "
               "after it; verified means their digests are equal. The collector can hash the copy again from its "
               "LUN against the same digests.")
STYLE = {"engine": ENGINE, "copied_by_disk": COPIED_BY_DISK, "copied_by_file": COPIED_BY_FILE,
         "verify_note": VERIFY_NOTE,
         "summary": "The sources and the copies were hashed on the host with openssl dgst (over SSH)."}
EXISTS_RC = 17  # the exit code our `cp` line gives when the destination exists (nothing copied)
STOP_GRACE = 10.0  # seconds a stopped vmkfstools gets to end after SIGTERM, before SIGKILL
SETTLE_POLL = 1.0  # seconds between two looks at what an interrupted copy left (stat's times have 1 s steps)
SETTLE_LIMIT = 900.0  # seconds to wait, at most, for those files to stop changing
PS_LINES = "ps -eo pid,args 2>/dev/null || ps -c"  # procps/busybox; ESXi's own ps lists commands with -c


# -- pure helpers --------------------------------------------------------------------------------------------------

def check_inputs(params):
    """The API engine's refusals (the same sentences), and what only this engine refuses. Before any login."""
    src, dest, files, algorithms = _api.check_inputs(params, ENGINES)
    if params.get("changed_areas"):
        raise InvalidInputError(
            "changed_areas cannot be used with the SSH engine: it hashes the sources on the host with openssl dgst, "
            "which reads every byte of a file (changed areas are for the API engine's reads over HTTPS). Leave "
            "changed_areas out, or use engine api.")
    return src, dest, files, algorithms


def copier_pids(ps_text, dest_paths):
    """The process ids of ``vmkfstools`` commands in ``ps`` output whose command line names one of ``dest_paths``
    (the /vmfs/volumes paths of a copy's destination). The id is the line's first number: ``ps -eo pid,args``
    prints the pid first; ESXi's ``ps -c`` the world id, which ESXi's ``kill`` takes (UNCONFIRMED)."""
    pids = []
    for line in (ps_text or "").splitlines():
        if "vmkfstools" not in line or not any(p in line for p in dest_paths):
            continue
        m = re.match(r"^\s*(\d+)\s", line)
        if m and int(m.group(1)) not in pids:
            pids.append(int(m.group(1)))
    return pids


def vmkfstools_argv(src, dest):
    """The field method's command: ``vmkfstools -i <src> -d thin <dest>`` (paths under /vmfs/volumes)."""
    return ["vmkfstools", "-i", vmfs_path(src), "-d", "thin", vmfs_path(dest)]


def cp_line(src, dest):
    """``cp`` of one file that never writes over an existing destination (exit code EXISTS_RC then)."""
    d = quote(vmfs_path(dest))
    return "if test -e %s; then echo 'exists' >&2; exit %d; fi; cp %s %s" % (d, EXISTS_RC, quote(vmfs_path(src)), d)


def compare(source, dest):
    """(verified, the algorithms compared): every algorithm both have must agree; None when nothing to compare."""
    common = sorted(a for a in (source or {}) if a in (dest or {}))
    if not source or not common:
        return None, common
    return all(source[a] == dest[a] for a in common), common


def equal_source(item, hashed):
    """The hash result of the source file the destination must equal byte for byte, or None (a consolidated
    delta)."""
    want = item["equal_to"] if item["kind"] == "disk" else item["src"]
    return next((r for r in hashed if r["src"] == want), None) if want else None


def read_back_target(item):
    """The destination file that is compared with the source: the clone's data file, or the copied file."""
    return item["dest_extent"] if item["kind"] == "disk" else item["dest"]


# -- the run -------------------------------------------------------------------------------------------------------

def open_ssh(params):
    """A logged-in SshClient to the host (``ssh`` option); a failure names the engine and says nothing changed."""
    ssh = ssh_client(params)
    try:
        ssh.connect()
    except VmcollectError as exc:
        raise exc.__class__("The SSH engine could not log in to the ESXi host: %s Nothing was changed."
                            % (exc.message.rstrip(".") + "."), **exc.details)
    return ssh


def run(journal, client, params, check_mode=False, progress=None):
    """The SSH engine's run: its own refusals, the SSH login (host key checked first), ``clone``, the logout."""
    check_inputs(dict(params, engine=ENGINE))
    ssh = open_ssh(params)
    try:
        return clone(journal, client, ssh, params, check_mode, progress)
    finally:
        ssh.close()


@_client.vsphere_errors("clone onto the evidence datastore with the host's shell")
def clone(journal, client, ssh, params, check_mode=False, progress=None):
    """The module's work with the SSH engine: ``client`` (a logged-in VsphereClient) reads, ``ssh`` (a connected
    SshClient to the same host) changes and hashes. See the module docstring. Every refusal comes before the first
    change."""
    src, dest, files, algorithms = check_inputs(dict(params, engine=ENGINE))
    retries = params.get("retries")
    host = _api.Host(client, params.get("request_timeout") or _fetch.DEFAULT_REQUEST_TIMEOUT,
                     _fetch.DEFAULT_RETRIES if retries is None else retries, params.get("datacenter"))
    shell = Shell(ssh)
    items = ([_api.plan_disk(host, src, dest)] if src else []) + [_api.plan_file(f["src"], f["dest"]) for f in files]
    for item in items:
        if item["kind"] == "disk":  # vmkfstools -i keeps the source's adapter type (no -a is given)
            item["adapter"] = item["chain"][0]["adapter"] or item["chain"][-1]["adapter"]
            item["adapter_note"] = None
    _api.check_places(host, items)
    _api.head_sources(host, items)
    for item in items:
        item["state"], item["existing"] = _api.existing_state(host, journal, item)
    started = time.monotonic()
    if check_mode:
        result = _api._result(host, items, {}, {}, started, check_mode=True, style=STYLE)
        result["ssh_host_key"] = ssh.host_key_record()
        return result
    hashed = {}
    for item in items:
        hashed[item["dest"]] = hash_sources(shell, item, algorithms)
        if item["state"] == "complete":
            _api.same_digests(item, hashed[item["dest"]])
    done = {}
    for item in items:
        if item["state"] == "absent":
            done[item["dest"]] = copy_item(host, shell, journal, item, hashed[item["dest"]], algorithms, progress)
            continue
        size, size_from = _api.dest_size(host, item, host.listing(item["folder"]))
        marker = item["existing"]
        fact = {"created": False, "created_folders": [], "copy_id": marker.get("copy_id"),
                "copied_at": marker.get("copied_at"), "finished_at": marker.get("finished_at"),
                "copy_seconds": None, "dest_size": size, "dest_size_from": size_from, "thin": marker.get("thin")}
        fact.update(read_back(shell, item, hashed[item["dest"]], algorithms, existing=True))
        done[item["dest"]] = fact
    result = _api._result(host, items, hashed, done, started, style=STYLE)
    result["ssh_host_key"] = ssh.host_key_record()
    return result


def hash_sources(shell, item, algorithms):
    """Every source file of ``item`` hashed on the host (``openssl dgst``, the algorithms of a file at once), in
    the shape of the API engine's hash results; the identity is the HEAD the plan made (checked again after the
    copy)."""
    results = []
    for f in item["source_files"]:
        clock = time.monotonic()
        path = vmfs_path(f["path"])
        digests = shell.hash_files([path], algorithms)[path]
        seconds = time.monotonic() - clock
        modified = _fetch.http_date_utc(f["modified"]) or f["modified"]
        results.append({
            "src": f["path"], "src_shell_path": path, "datastore": _fetch.split_source(f["path"])[0],
            "size": f["size"], "data_bytes": f["size"], "hole_bytes": 0, "digests": digests,
            "hashed_by": "openssl dgst on %s" % shell.where, "seconds": round(seconds, 3),
            "mib_per_s": round(f["size"] / 1048576.0 / seconds, 1) if seconds > 0 else None,
            "source_identity": {"size": f["size"], "modified": modified,
                                "from": "HEAD" if f["modified"] else "size only (no modification time)"},
            "areas_used": {"source": "whole file", "areas": 0, "area_bytes": f["size"], "size": f["size"],
                           "fraction": 1.0, "why": "hashed on the host with openssl dgst, which reads every byte"},
            "role": f["role"], "depth": f["depth"]})
    return results


def read_back(shell, item, hashed, algorithms, existing=False):
    """Hash the destination on the host and compare it with its source: {dest_digests, verified}. A mismatch is an
    error (the copy is not what its source was)."""
    target = read_back_target(item)
    path = vmfs_path(target)
    dest_digests = shell.hash_files([path], algorithms)[path]
    source = equal_source(item, hashed)
    if source is None:
        return {"dest_digests": dest_digests, "verified": False}
    verified, common = compare(source["digests"], dest_digests)
    if not verified:
        differ = ", ".join("%s %s (source %s)" % (a, dest_digests.get(a), source["digests"].get(a)) for a in common)
        if existing:
            raise HashMismatchError(
                "%s is a completed copy of %s by its marker, but its data file %s now has the digest(s) %s on the "
                "host: the evidence copy changed. It is never replaced; check it. Nothing was changed."
                % (item["dest"], item["src"], target, differ or "(none comparable)"), failed_path=target)
        raise HashMismatchError(
            "The copy %s does not equal its source %s: read back on the host it has %s. It got no marker; the "
            "journal keeps the change: teardown removes it. Copy again." % (target, source["src"], differ),
            failed_path=target)
    return {"dest_digests": dest_digests, "verified": True}


def _undo_base(host, shell, journal, item):
    record = shell.ssh.host_key_record()
    return dict(_api._undo_base(host, journal, item), engine=ENGINE, ssh_endpoint=shell.where,
                ssh_host_key=record.get("fingerprint_sha256"))


def make_folders(host, shell, journal, item):
    """Create the destination folder (and its missing parents) with ``mkdir -p``, journaled first. Returns the
    folders created (datastore paths, outermost first)."""
    folders = _api.missing_folders(host, item["folder"])
    if not folders:
        return []
    undo = dict(_undo_base(host, shell, journal, item), kind="folders", dest=item["folder"], folders=folders,
                shell_folders=[vmfs_path(f) for f in folders])
    change = journal.record_change(ACTION, undo, "folder(s) %s on the evidence datastore %s of %s"
                                   % (", ".join(folders), item["datastore"], host.client.where), module=MODULE)
    try:
        shell.run(["mkdir", "-p", vmfs_path(item["folder"])], timeout=SHORT)
    except VmcollectError as exc:
        raise DestinationError("%s The journal keeps the change: teardown removes the folder if it was made and is "
                               "empty." % (exc.message.rstrip(".") + "."), failed_path=item["folder"])
    for folder in folders:
        host.forget(folder)
    host.forget(_api.parent_folder(folders[0]))
    journal.mark_applied(change, folders=folders)
    return folders


def percent_watcher(progress):
    """An ``SshClient.run`` watcher that calls ``progress(percent)`` for each new ``Clone: N% done.`` vmkfstools
    writes (redrawn with a carriage return), also when a chunk ends inside one; None without ``progress``."""
    if progress is None:
        return None
    seen = {"tail": b"", "percent": None}
    lock = threading.Lock()  # stdout's and stderr's readers both call it

    def watch(chunk):
        with lock:
            text = seen["tail"] + chunk
            found = re.findall(br"Clone: (\d{1,3})% done\.", text)
            seen["tail"] = text[-32:]
            if found and int(found[-1]) != seen["percent"]:
                seen["percent"] = int(found[-1])
                progress(seen["percent"])
    return watch


def _run_copy(shell, journal, change, item, what, progress=None):
    """Run the copy's command (vmkfstools, or cp) bounded by ssh.command_timeout; raises a sentence when it failed.
    ``progress(percent)`` is told vmkfstools' percentages as they come."""
    ssh = shell.ssh
    keeps = "The journal keeps the change: teardown stops what still runs there and removes what it left at %s." \
        % item["dest"]
    argv = vmkfstools_argv(item["src"], item["dest"]) if item["kind"] == "disk" else cp_line(item["src"], item["dest"])
    shown = argv if isinstance(argv, str) else join(argv)
    try:
        rc, out, err = ssh.run(argv, timeout=ssh.command_timeout,
                               watch=percent_watcher(progress) if item["kind"] == "disk" else None)
    except SshTimeout as exc:
        details = dict((k, v) for k, v in exc.details.items() if k != "failed_path")
        raise SshTimeout("The %s did not end within ssh.command_timeout (%g s): %s %s"
                         % (what, ssh.command_timeout, exc.message.rstrip(".") + ".", keeps), failed_path=item["dest"],
                         **details)
    except SshError as exc:
        details = dict((k, v) for k, v in exc.details.items() if k != "failed_path")
        raise exc.__class__("The %s failed: %s %s" % (what, exc.message.rstrip(".") + ".", keeps),
                            failed_path=item["dest"], **details)
    text = out.decode("utf-8", "replace") + "\n" + err.decode("utf-8", "replace")
    if item["kind"] == "disk":
        parsed = _parse.vmkfstools_clone(text, rc)
        if parsed["done"]:
            return parsed
        exists = "already exists" in (parsed["error"] or "")
        why = parsed["error"] or ("it ended with exit code %d without saying %s" % (rc, "Clone: 100% done."))
    else:
        if rc == 0:
            return None
        exists = rc == EXISTS_RC
        why = (err.decode("utf-8", "replace").strip()[-300:] or "exit code %d" % rc)
    if exists:
        journal.mark_undone(change, "nothing to undo: %s existed already, and the copy refused to replace it"
                            % item["dest"])
        raise DestinationError("%s exists (made meanwhile by someone else?); it is never replaced. Nothing was "
                               "written." % item["dest"], failed_path=item["dest"])
    raise EsxiShellError("`%s` on %s failed: %s. %s" % (shown, shell.where, why.rstrip("."), keeps),
                         rc=rc, failed_path=item["dest"])


def copy_item(host, shell, journal, item, hashed, algorithms, progress=None):
    """Copy one planned item whose destination is absent, with the host's shell; returns its result facts."""
    created_folders = make_folders(host, shell, journal, item)
    copy_id = binascii.hexlify(os.urandom(8)).decode("ascii")
    undo = dict(_undo_base(host, shell, journal, item), kind=item["kind"], dest=item["dest"], src=item["src"],
                dest_files=item["dest_files"], shell_dest_files=[vmfs_path(p) for p in item["dest_files"]],
                marker=item["marker"], copy_id=copy_id)
    what = ("thin clone of %s to %s" % (item["src"], item["dest"]) if item["kind"] == "disk"
            else "copy of %s to %s" % (item["src"], item["dest"]))
    change = journal.record_change(ACTION, undo, "%s on the evidence datastore %s of %s"
                                   % (what, item["datastore"], host.client.where), module=MODULE)
    started = utc_now()
    clock = time.monotonic()
    parsed = _run_copy(shell, journal, change, item, what, _api.clone_progress(progress, item))
    seconds = time.monotonic() - clock
    listing = host.listing(item["folder"], fresh=True)
    problems = ["the destination folder %s is not there" % item["folder"]] if listing is None else \
        ["%s missing" % n for n in item["dest_files"][:-1] if _api._basename(n) not in listing]
    if not problems:
        problems = _api._dest_problems(host, item, listing)
    if problems:
        raise DestinationError("The host said the %s was done, but %s. The journal keeps the change: teardown "
                               "removes it." % (what, "; ".join(problems)), failed_path=item["dest"])
    moved = _api.sources_unchanged(host, hashed)
    if moved:
        raise EvidenceSourceError("A source changed while it was copied (%s): the digests taken before the copy may "
                                  "not describe it. Copy frozen files only; the journal keeps the change: teardown "
                                  "removes the copy." % "; ".join(moved), failed_path=item["src"])
    check = read_back(shell, item, hashed, algorithms)
    size, size_from = _api.dest_size(host, item, listing)
    finished = utc_now()
    thin = None
    if item["kind"] == "disk":
        thin = (item.get("dest_descriptor") or {}).get("ddb", {}).get("ddb.thinProvisioned") == "1"
    marker = _api.marker_record(host, journal, item, hashed, copy_id, started, finished, size, thin)
    marker.update(
        engine=ENGINE, copied_by=COPIED_BY_DISK if item["kind"] == "disk" else COPIED_BY_FILE,
        command=join(vmkfstools_argv(item["src"], item["dest"])) if item["kind"] == "disk" else cp_line(
            item["src"], item["dest"]),
        vmkfstools_format=(parsed or {}).get("format"), ssh_endpoint=shell.where,
        ssh_host_key=shell.ssh.host_key_record(), dest_digests={read_back_target(item): check["dest_digests"]},
        verified=check["verified"],
        note="Written by dfir.vmcollect once the copy was checked; the digests of the sources and of the copy were "
             "taken on the host with openssl dgst, the sources' before the copy. " + VERIFY_NOTE)
    shell.write_new(vmfs_path(item["marker"]), (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    journal.mark_applied(change, copy_id=copy_id, dest_size=size, finished_at=finished,
                         dest_digests=check["dest_digests"], verified=check["verified"])
    fact = {"created": True, "created_folders": created_folders, "copy_id": copy_id, "copied_at": started,
            "finished_at": finished, "copy_seconds": round(seconds, 3), "dest_size": size, "dest_size_from": size_from,
            "thin": thin}
    fact.update(check)
    return fact


# -- undo ----------------------------------------------------------------------------------------------------------

def _look(shell, paths):
    """What ``stat`` says of ``paths`` right now (size, blocks, mtime of those that exist), as one text."""
    line = "stat -c '%%n|%%s|%%b|%%Y' %s 2>/dev/null; exit 0" % " ".join(quote(p) for p in paths)
    return shell.run(line, timeout=SHORT)


def settle(shell, paths, limit=SETTLE_LIMIT, poll=SETTLE_POLL):
    """Wait until the files ``paths`` stop changing (two looks ``poll`` s apart agree), at most ``limit`` s: a copy
    stopped on the host may still be finishing a write. Returns the seconds waited."""
    started = time.monotonic()
    before = _look(shell, paths)
    while True:
        time.sleep(poll)
        now = _look(shell, paths)
        if now == before:
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise DestinationError("What the unfinished copy left (%s) on %s was still changing after %d s; something "
                                   "still writes there. Check it, then run teardown again." %
                                   (", ".join(paths), shell.where, limit))
        before = now


def stop_copiers(shell, dest_paths, check_mode=False):
    """Stop the vmkfstools commands still cloning to ``dest_paths`` (SIGTERM, SIGKILL after STOP_GRACE s); returns
    their ids."""
    pids = copier_pids(shell.run(PS_LINES, timeout=SHORT), dest_paths)
    if not pids or check_mode:
        return pids
    shell.run(["kill", "-15"] + [str(p) for p in pids], timeout=SHORT, ok=(0, 1))
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        if not copier_pids(shell.run(PS_LINES, timeout=SHORT), dest_paths):
            return pids
        time.sleep(0.25)
    shell.run(["kill", "-9"] + [str(p) for p in pids], timeout=SHORT, ok=(0, 1))
    time.sleep(0.5)
    left = copier_pids(shell.run(PS_LINES, timeout=SHORT), dest_paths)
    if left:
        raise DestinationError("The vmkfstools command(s) %s still clone to %s on %s after SIGTERM and SIGKILL; stop "
                               "them on the host, then run teardown again."
                               % (", ".join(str(p) for p in left), dest_paths[0], shell.where))
    return pids


def _check_host(shell, undo):
    """The host logged in to is the one the change was made on (its SSH key), and the datastore holds no source."""
    if undo["datastore"] in (undo.get("source_datastores") or []):
        raise DestinationError("The journal names %s on %s, a datastore that holds a source; nothing is removed "
                               "there. Check it by hand." % (undo["dest"], undo["datastore"]))
    seen = shell.ssh.host_key_record().get("fingerprint_sha256")
    if undo.get("ssh_host_key") and seen != undo["ssh_host_key"]:
        raise DestinationError("The SSH host %s presents the key %s, but the copy to %s was made on the host whose key "
                               "is %s (%s); nothing is removed on another host. Give teardown that host's connection."
                               % (shell.where, seen, undo["dest"], undo["ssh_host_key"], undo.get("ssh_endpoint")))


def _remove_folders(shell, undo, check_mode):
    said = []
    for folder, path in reversed(list(zip(undo["folders"], undo["shell_folders"]))):
        if shell.rc(["test", "-d", path]) != 0:
            said.append("the folder %s was already gone" % folder)
            continue
        left = [n for n in shell.run(["ls", "-A", path], timeout=SHORT).splitlines() if n]
        if left:
            said.append("kept the folder %s: it holds %s (evidence, or not ours)" % (folder, ", ".join(sorted(left))))
            break
        if check_mode:
            said.append("would remove the empty folder %s" % folder)
            continue
        shell.run(["rmdir", path], timeout=SHORT)  # rmdir removes an empty folder only
        said.append("removed the empty folder %s" % folder)
    return "; ".join(said)


def remove_partial(shell, undo, check_mode=False):
    """Undo one unfinished ``vsphere.evidence_file`` change of the SSH engine; returns a sentence."""
    _check_host(shell, undo)
    if undo["kind"] == "folders":
        return _remove_folders(shell, undo, check_mode)
    paths = undo["shell_dest_files"]
    marker_path = vmfs_path(undo["marker"])
    stopped = stop_copiers(shell, paths[:-1], check_mode)
    waited = 0.0 if check_mode else settle(shell, paths)
    if shell.exists(marker_path):
        try:
            marker = json.loads(shell.read(marker_path, _api.MAX_MARKER).decode("utf-8"))
        except ValueError:
            marker = {}
        if isinstance(marker, dict) and marker.get("copy_id") == undo["copy_id"]:
            return ("kept: evidence: %s is a completed copy (its marker %s names this copy); a completed copy is never "
                    "removed" % (undo["dest"], undo["marker"]))
    names = dict(zip(paths, undo["dest_files"]))
    present = [p for p in paths if shell.exists(p)]
    after = ""
    if stopped:
        pids = ", ".join(str(p) for p in stopped)
        after = ("; it would first stop the vmkfstools command(s) %s still cloning there" % pids if check_mode
                 else " after stopping the vmkfstools command(s) %s that still cloned there" % pids)
    if waited >= 1.5 * SETTLE_POLL:
        after += " (its files settled after %.0f s)" % waited
    if not present:
        return "nothing of the unfinished copy to %s was left on %s%s" % (undo["dest"], shell.where, after)
    shown = ", ".join(names[p] for p in present)
    if check_mode:
        return "would remove what the unfinished copy left: %s%s" % (shown, after)
    shell.run(["rm", "-f", "--"] + present, timeout=SHORT)
    left = [names[p] for p in present if shell.exists(p)]
    if left:
        raise DestinationError("%s still holds %s after the removal of the unfinished copy; remove it by hand, then "
                               "run teardown again." % (shell.where, ", ".join(left)))
    return "removed what the unfinished copy left: %s%s" % (shown, after)


def undo_copy(undo, ctx):
    """The undo of a ``vsphere.evidence_file`` record whose ``engine`` is ssh (called by the API engine's handler,
    which keeps a copy the journal says is complete): logs in with teardown's ``connection`` (``hostname`` and its
    ``ssh`` options)."""
    options = ctx.options
    if not options.get("hostname"):
        raise DestinationError("What an unfinished copy left at %s is on the ESXi host %s (made over SSH): give "
                               "teardown its connection (hostname, and ssh with the key check and login) to remove it."
                               % (undo["dest"], undo.get("ssh_endpoint") or undo.get("endpoint")))
    started = time.monotonic()
    with ssh_client(options) as ssh:
        sentence = remove_partial(Shell(ssh), undo, ctx.check_mode)
    return sentence if ctx.check_mode else "%s (%.1f s)" % (sentence, time.monotonic() - started)


_api.ENGINE_UNDO[ENGINE] = undo_copy
