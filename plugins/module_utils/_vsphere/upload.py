# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write small files of the case (its manifest, its SHA256SUMS) onto an evidence datastore, and read them back.

Where: ``PUT /folder/<path>?dcPath=&dsName=`` with the session cookie, the datastore HTTP access a vSphere host
serves; the file is read back with a GET and its SHA-256 compared with the local file's. Only onto a datastore that
holds no virtual machine (an evidence datastore made on the collector's LUN), and only into a folder that exists
there (the copies made it). A different file already at a destination is refused unless ``replace`` is set (the
case's records are rewritten as the case grows, as on the controller); the same file is left as it is.

Nothing here is journaled: what it writes is a record of the case on the case's own volume, kept as evidence, and
there is nothing on the host to restore.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as _client
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.clone import Host, parent_folder

MAX_FILE = 64 * 1024 * 1024  # a manifest of thousands of artifacts is a few MiB


def check_inputs(files):
    """Every problem of ``files`` ([{src, dest}]) in one sentence each; refused before the host is asked anything."""
    problems = []
    for i, f in enumerate(files):
        src, dest = f.get("src") or "", f.get("dest") or ""
        if not os.path.isabs(src) or not os.path.isfile(src):
            problems.append("files[%d].src %r is not an existing file (give its absolute path)." % (i, src))
        elif os.path.getsize(src) > MAX_FILE:
            problems.append("files[%d].src %s holds more than %d bytes; this module writes the case's records, not "
                            "evidence copies." % (i, src, MAX_FILE))
        try:
            _client.parse_datastore_path(dest)
        except InvalidInputError as exc:
            problems.append("files[%d].dest: %s" % (i, exc.message))
    if not files:
        problems.append("files is empty; name at least one file to write.")
    if problems:
        raise InvalidInputError(" ".join(problems))


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _refuse_vm_datastore(client, datastore):
    """A datastore that holds a VM is never written to: the records go onto the evidence datastore only."""
    for dummy, values in client.retrieve(_client.vim.Datastore, ["name", "vm"]):
        if _client.unescape_name(values.get("name")) == datastore and values.get("vm"):
            raise DestinationError(
                "The datastore %r of %s holds %d virtual machine(s); this module writes only onto an evidence "
                "datastore (one made on the collector's LUN, holding no VM). Nothing was written."
                % (datastore, client.where, len(values["vm"])), failed_path=datastore)


def _one(host, item, replace, check_mode):
    with open(item["src"], "rb") as f:
        data = f.read(MAX_FILE + 1)
    digest = _sha256(data)
    result = {"src": item["src"], "dest": item["dest"], "size": len(data), "sha256": digest}
    folder = parent_folder(item["dest"])
    if host.listing(folder) is None:
        raise DestinationError("The folder %s does not exist on %s; this module writes into a folder the case's copies "
                               "made. Nothing was written." % (folder, host.client.where), failed_path=item["dest"])
    there = host.get(item["dest"], limit=MAX_FILE)
    if there is not None and _sha256(there) == digest:
        return dict(result, changed=False, state="unchanged")
    if there is not None and not replace:
        raise DestinationError("%s already holds a different file (%d bytes, sha256 %s); it is replaced only with "
                               "replace=true. Nothing was written." % (item["dest"], len(there), _sha256(there)),
                               failed_path=item["dest"])
    if check_mode:
        return dict(result, changed=True, state="would replace" if there is not None else "would write")
    host.put(item["dest"], data)
    back = host.get(item["dest"], limit=MAX_FILE)
    if back is None or _sha256(back) != digest:
        raise DestinationError("%s was written to %s, but reading it back gave %s, not sha256 %s: the datastore did not "
                               "keep it as sent." % (item["src"], item["dest"],
                                                     "nothing" if back is None else "sha256 " + _sha256(back), digest),
                               failed_path=item["dest"])
    return dict(result, changed=True, state="replaced" if there is not None else "written", read_back=True)


@_client.vsphere_errors("write the case's records onto the datastore")
def upload(client, params, check_mode=False):
    """Write params['files'] ([{src, dest}]); returns dict(changed, files, msg)."""
    host = Host(client, request_timeout=params["request_timeout"], datacenter=params.get("datacenter"))
    for datastore in sorted(set(_client.parse_datastore_path(f["dest"], host.datastores)[0] for f in params["files"])):
        _refuse_vm_datastore(client, datastore)
    done = [_one(host, f, params["replace"], check_mode) for f in params["files"]]
    written = [f for f in done if f["changed"]]
    return {"changed": bool(written), "files": done, "tls": client.tls_record(),
            "msg": ("%s %d file(s) onto %s, each read back with the same sha256; %d unchanged."
                    % ("Would write" if check_mode else "Wrote", len(written), client.where, len(done) - len(written)))}
