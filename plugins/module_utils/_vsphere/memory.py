# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The RAM of an ESXi memory snapshot, copied as evidence (module esxi_memory).

ESXi writes a memory snapshot's RAM to ``<vm>-Snapshot<N>.vmem`` and the VM's device state to the ``.vmsn`` beside
it; a reader (Volatility 3's VMware layer) takes the ``.vmem`` and looks for the ``.vmsn`` of the same base name,
which maps guest-physical pages onto the ``.vmem``. Both are fetched over HTTPS with the datastore_fetch engine
(hashed in the same read, read back) to ``<stem>.vmem`` and ``<stem>.vmsn``.

The guest's pause: ESXi stuns the VM while it saves the device state and logs how long in the VM's ``vmware.log``
(``Checkpoint_Unstun: vm stopped for <N> us``). The last such line at or after the snapshot's creation time is read
from the end of that log (a ranged GET: the host is only read) and reported as ``pause_ms``; where the log has none,
``pause_ms`` is null and ``pause_note`` says why. Nothing is estimated.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import posixpath
import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import DEFAULT_BLOCK_SIZE
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as _client
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.fetch import (
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRIES,
    ClientSession,
    browser_modified,
    fetch_file,
    folder_url_path,
    host_names,
    split_source,
)

METHOD = "vSphere memory snapshot"
LOG_TAIL = 1024 * 1024  # bytes of vmware.log read from its end
# 2026-12-06T06:12:01.123Z| vcpu-0| I005: Checkpoint_Unstun: vm stopped for 123456 us
_UNSTUN = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:?\d\d)?\|.*?"
                     r"Checkpoint_Unstun: vm stopped for (\d+) us", re.M)


def _when(text, zone):
    stamp = datetime.datetime.strptime(text.split(".")[0], "%Y-%m-%dT%H:%M:%S")
    offset = datetime.timedelta(0)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return stamp - offset


def stun_from_log(text, since):
    """Microseconds of the last ``Checkpoint_Unstun`` at or after ``since`` (a naive UTC datetime, or None: any)."""
    found = None
    for m in _UNSTUN.finditer(text):
        if since is None or _when(m.group(1), m.group(2)) >= since.replace(microsecond=0):
            found = int(m.group(3))
    return found


def parse_created(value):
    """A snapshot's createTime as given by esxi_snapshot (ISO 8601, UTC) -> naive UTC datetime, or None."""
    if not value:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", str(value))
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S") if m else None


def _log_tail(session, url_path):
    """The last LOG_TAIL bytes of a datastore file, or None when it cannot be read (the pause is then unknown)."""
    conn = session.connection()
    try:
        conn.request("GET", url_path, headers={"Cookie": session.cookie(), "Range": "bytes=-%d" % LOG_TAIL})
        resp = conn.getresponse()
        body = resp.read(LOG_TAIL + 1)
        if resp.status not in (200, 206):
            return None
        return body.decode("utf-8", "replace")
    except Exception:  # pylint: disable=broad-except
        # the pause is reported as unknown, with the reason; the evidence does not depend on it
        return None
    finally:
        conn.close()


def guest_pause(session, datacenter, datastore, vm_folder, created):
    """(pause_ms or None, note) from the VM's vmware.log."""
    url = folder_url_path(datastore, posixpath.join(vm_folder, "vmware.log"), datacenter)
    text = _log_tail(session, url)
    if text is None:
        return None, "the VM's vmware.log could not be read, so the guest's pause is not known"
    micro = stun_from_log(text, parse_created(created))
    if micro is None:
        return None, ("the VM's vmware.log has no 'Checkpoint_Unstun' line since the snapshot was created, so the "
                      "guest's pause is not known")
    return round(micro / 1000.0, 3), "from the VM's vmware.log (Checkpoint_Unstun: vm stopped for %d us)" % micro


def pause_of_snapshot(client, session, vmem, created, datacenter=None, datastores=None):
    """(pause_ms or None, note) of the memory snapshot whose .vmem is ``vmem``: from the log beside it."""
    if datacenter is None:
        datacenter, datastores = host_names(client)
    datastore, relative = split_source(vmem, datastores)
    return guest_pause(session, datacenter, datastore, posixpath.dirname(relative), created)


def companion_path(dest, extension):
    stem, dummy = posixpath.splitext(dest)
    return stem + extension


@_client.vsphere_errors("copy the memory snapshot")
def copy_memory(params, check_mode=False):
    """Fetch the .vmem and .vmsn of a memory snapshot; returns the memory contract's shape (see the module)."""
    dest = params["dest"]
    if not dest.endswith(".vmem"):
        raise InvalidInputError("dest must end in .vmem (the .vmsn goes beside it, with the same base name, where "
                                "Volatility looks for it); it is %s." % dest)
    snapshot = params.get("snapshot") or {}
    algorithms = params.get("algorithms") or ["sha256"]
    timeout = params.get("request_timeout") or DEFAULT_REQUEST_TIMEOUT
    with _client.client_from_params(params) as client:
        session = ClientSession(client, timeout)
        datacenter, datastores = host_names(client)

        def fetch(src, to):
            return fetch_file(session, src, to, datacenter, algorithms, force=False,
                              block_size=params.get("block_size") or DEFAULT_BLOCK_SIZE,
                              retries=params.get("retries", DEFAULT_RETRIES), check_mode=check_mode,
                              datastores=datastores, modified_lookup=lambda ds, rel: browser_modified(client, ds, rel))

        started = utc_now()
        vmem = fetch(params["vmem"], dest)
        vmsn = fetch(params["vmsn"], companion_path(dest, ".vmsn"))
        pause_ms, pause_note = pause_of_snapshot(client, session, params["vmem"], snapshot.get("created"),
                                                 datacenter, datastores)
    method = snapshot.get("method") or METHOD  # the freeze's, naming its engine (vim-cmd over SSH)
    vmsn.update(companion_of=dest, kind="memory_state", format="vmsn", method=method)
    result = dict(vmem)
    result.update(
        changed=vmem.get("changed", False) or vmsn.get("changed", False),
        format="vmem", method=method, smeared=False, pause_ms=pause_ms, pause_note=pause_note,
        # the RAM shows the point in time of the snapshot; the copy ran from copied_at on
        started_at=snapshot.get("created") or started, finished_at=snapshot.get("created") or started,
        copied_at=started,
        snapshot=snapshot, companions=[vmsn],
        msg="%s; %s" % (vmem.get("msg", ""), vmsn.get("msg", "")))
    return result
