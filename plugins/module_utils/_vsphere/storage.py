# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collector's iSCSI LUN attached to an ESXi host as a new VMFS datastore, and released again exactly
(module esxi_iscsi_datastore).

Everything goes through the vSphere API of the host (a standalone ESXi host, or a vCenter naming the host):
its HostStorageSystem (software iSCSI adapter, send targets, CHAP, rescans, VMFS unmount, LUN detach) and its
HostDatastoreSystem (VMFS creation). Steps of ``present``, each written to the case's journal BEFORE it is made
and marked applied after:

1. software iSCSI enabled when it is off (``vsphere.iscsi_adapter``). ESXi removes the adapter again only at its
   next reboot, so the undo turns the flag off and says the adapter stays until then; ``adapter_enabled_by_us``
   tells the manifest. ``state=adapter`` does this step alone and returns the adapter's IQN, which the collector
   needs for its ACL before the LUN can be reached.
2. the collector's portal added as a send target (``vsphere.iscsi_send_target``), with the CHAP name and secret on
   the target itself (its ``authenticationProperties``), which leaves the adapter's own CHAP untouched. A host
   that does not take them with the target (the lab's simulator ignores the field) gets them set on the target with
   UpdateInternetScsiAuthenticationProperties(targetSet); a send target this case added takes its CHAP with it
   when it is removed, so only CHAP set on a send target that was there before is journaled on its own
   (``vsphere.iscsi_chap``, scope send_target, its settings before recorded). Only a host that refuses CHAP on a
   send target gets it on the adapter (``vsphere.iscsi_chap``, scope adapter), and only when the adapter's own
   CHAP is off and no other target inherits it: ESXi never returns a CHAP secret, so an adapter CHAP that was set
   could not be put back, and other targets would be cut off. Since a secret cannot be read back, a run that has
   not made the datastore yet sets it again (a rerun may bring a new one). The secret is never journaled, returned
   or logged.
3. a rescan of the adapter (its devices go again with the send target's undo, which rescans).
4. the LUN: the one disk reached through that portal whose capacity is ``size_bytes`` exactly and, when given,
   whose serial number (tgt's ``scsi_sn``) and canonical name match. Never another disk: none or several is a
   sentence listing what was seen; the changes made so far stay journaled (teardown undoes them). A LUN that
   holds a datastore or partitions already is never formatted, nor one whose partitions the host cannot list
   (RetrieveDiskPartitionInfo: a fault, or no partition table of that LUN in the answer): it is never formatted
   without knowing that it is blank.
5. a VMFS datastore on the whole LUN (QueryVmfsDatastoreCreateOptions + CreateVmfsDatastore,
   ``vsphere.vmfs_datastore``); a datastore of that name elsewhere is refused before any change, one on that
   LUN is reported as it is (idempotent).

Undo, newest first (teardown, or ``state=absent`` for this case's records of the host):

- the datastore: ``UnmountVmfsVolume`` of its VMFS UUID, then ``DetachScsiLun`` of its LUN where the host has it.
  **Never RemoveDatastore**: on ESXi it destroys the VMFS volume (it deletes the partition), and the evidence is
  on it. A datastore that holds registered VMs is refused, not unmounted.
- CHAP of the send target or the adapter: put back as recorded (inherited, off, or name and level: a secret that
  was set before cannot be read back from ESXi, which the undo result says).
- the send target: removed, static targets discovered through it removed if the host kept them, a rescan so that
  its LUN disappears, and ``DeleteScsiLunState`` for a LUN the datastore's undo detached (ESXi keeps a detached
  device in its configuration until then).
- software iSCSI: the flag turned off again; the adapter stays until the host's next reboot (ESXi's rule), said
  in the result. It is left on when targets that are not ours were added to it meanwhile.

Handlers log in with the connection options teardown's caller gives (``ctx.options``); credentials are never in
the journal. The journal lives where the module runs (the controller).

Engines: this file is the API engine and the one copy of the steps, the records and the rules. The SSH engine
(``_esxi_shell/storage.py``, for a free ESXi host whose API only reads) reuses them: its run subclasses ``Run`` and
replaces only the writes (``_enable_software_iscsi``, ``_add_send_target``, ``_set_target_chap``,
``_set_adapter_chap``, ``_rescan``, ``check_blank``, ``create_datastore``), and its records are these actions with
``"engine": "ssh"`` in the undo dict. The undo functions below take the writer of the engine that made the change
(``writer_for``; ``ApiWriter`` here); a record naming another engine is handed to it (``ENGINE_UNDO``).

Limits: the software adapter outlives the undo until a reboot (ESXi); a CHAP secret the adapter had before is
never overwritten (the fallback refuses), but one that a journal record says was set cannot be written back; a
host that cannot list a LUN's partitions (RetrieveDiskPartitionInfo) gets no datastore on it (refused, nothing
formatted); a host without DetachScsiLun or DeleteScsiLunState (the lab's simulator) leaves the LUN to the send target's
removal, said in the undo's sentence; a CreateVmfsDatastore still running on the host when teardown looks (a
module killed during the call) is waited for only as far as the host serializes its storage calls (ESXi and the
lab do), and a datastore found mounted on a LUN of the send target stops the send target's undo with a sentence.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    InvalidInputError,
    VmcollectError,
    VsphereError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UndoContext, undo_handler
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    client_from_params,
    error_for,
    fault_message,
    fault_name,
    moref,
    unescape_name,
    vim,
    vmodl,
    vsphere_errors,
)

MODULE = "esxi_iscsi_datastore"
ACTION_ADAPTER = "vsphere.iscsi_adapter"
ACTION_SEND_TARGET = "vsphere.iscsi_send_target"
ACTION_CHAP = "vsphere.iscsi_chap"
ACTION_DATASTORE = "vsphere.vmfs_datastore"
ACTIONS = (ACTION_ADAPTER, ACTION_SEND_TARGET, ACTION_CHAP, ACTION_DATASTORE)
DEFAULT_PORT = 3260
ADAPTER_WAIT = 60.0  # seconds for the software adapter to appear after it was enabled
POLL = 1.0
DATASTORE_NAME_MAX = 42  # characters of a VMFS volume label
CHAP_MAX = 255
PROHIBITED = "chapProhibited"
# faults a host answers a call it does not have (the lab's simulator: MethodNotFound)
UNSUPPORTED = ("MethodNotFound", "NotImplemented", "NotSupported")
# faults a host may answer CHAP at a level it does not take
CHAP_REFUSED = UNSUPPORTED + ("InvalidArgument", "HostConfigFault", "InvalidState")
_BAD_NAME = re.compile(r"[/\\\[\]\x00-\x1f\x7f]")
_BAD_ADDRESS = re.compile(r"[\s/,@%\[\]]")


def chap_level(required):
    """The CHAP level of the send target: required, or preferred (the target decides)."""
    return "chapRequired" if required else "chapPreferred"


def portal_text(address, port):
    """'address:port', '[v6]:port' for an IPv6 address."""
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def norm_portal(text, default_port=DEFAULT_PORT):
    """A portal as 'address:port' ('[v6]:port') in lower case, the port defaulted, for comparisons; '' for nothing.
    A bare IPv6 address (more than one ':' and no brackets) is taken as an address without a port."""
    text = (text or "").strip().lower()
    if not text:
        return ""
    match = re.match(r"^\[([^\]]+)\](?::(\d+))?$", text)
    if match:
        address, port = match.group(1), match.group(2)
    elif text.count(":") == 1:
        address, port = text.split(":")
    else:
        address, port = text, None
    return portal_text(address, int(port or default_port))


def size_text(size):
    if size is None:
        return "unknown size"
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return "%d bytes (%d %s)" % (size, size // factor, unit)
    return "%d bytes" % size


def check_inputs(address, port, size_bytes, datastore_name, chap_name, chap_secret, serial=None,
                 canonical_name=None):
    """Refuse malformed options before anything is read or changed, every problem in one sentence."""
    problems = []
    if not address or _BAD_ADDRESS.search(address.strip("[]")) or address != address.strip():
        problems.append("target_address %r is not a host name or an IP address" % (address,))
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append("target_port %r is not a TCP port (1-65535)" % (port,))
    if not isinstance(size_bytes, int) or size_bytes <= 0:
        problems.append("size_bytes must be the LUN's size in bytes (a positive number), not %r" % (size_bytes,))
    if not datastore_name or len(datastore_name) > DATASTORE_NAME_MAX or _BAD_NAME.search(datastore_name) \
            or datastore_name != datastore_name.strip():
        problems.append("datastore_name %r is not a VMFS label (1 to %d characters, no '/', '\\\\', '[', ']', control "
                        "characters or surrounding spaces)" % (datastore_name, DATASTORE_NAME_MAX))
    if not chap_name or len(chap_name) > CHAP_MAX or re.search(r"\s", chap_name):
        problems.append("chap_name must be 1 to %d characters without spaces (the collector's CHAP user)" % CHAP_MAX)
    if not chap_secret or len(chap_secret) > CHAP_MAX:
        problems.append("chap_secret must be 1 to %d characters (the collector's CHAP secret)" % CHAP_MAX)
    if serial is not None and not serial.strip():
        problems.append("serial is empty; leave it out or give the LUN's serial number")
    if canonical_name is not None and not re.match(r"^(naa|eui|t10|mpx)\.\S+$", canonical_name, re.I):
        problems.append("canonical_name %r is not a device name as ESXi gives it (naa., eui., t10. or mpx.)"
                        % (canonical_name,))
    if problems:
        raise InvalidInputError("The LUN cannot be attached as asked: %s. Nothing was changed." % "; ".join(problems))


def _capital(text):
    return text[:1].upper() + text[1:]


# -- reading the host's storage -------------------------------------------------------------------------------

def auth_view(props):
    """CHAP settings as recorded and returned: never a secret (ESXi never returns one; ``secret_set`` is inferred
    from CHAP being on with a name)."""
    if props is None:
        return {"chap_auth_enabled": False, "chap_name": None, "chap_type": None, "chap_inherited": None,
                "secret_set": False}
    enabled = bool(getattr(props, "chapAuthEnabled", False))
    name = getattr(props, "chapName", None) or None
    level = getattr(props, "chapAuthenticationType", None) or None
    return {"chap_auth_enabled": enabled, "chap_name": name, "chap_type": level,
            "chap_inherited": getattr(props, "chapInherited", None),
            "secret_set": bool(enabled and name and level != PROHIBITED)}


def adapter_view(hba):
    """The software iSCSI adapter as a dict: device, key, iqn, model, auth, send_targets, static_targets."""
    return {
        "device": hba.device, "key": hba.key, "iqn": hba.iScsiName, "model": hba.model, "driver": hba.driver,
        "auth": auth_view(hba.authenticationProperties),
        "send_targets": [{"address": st.address, "port": st.port or DEFAULT_PORT,
                          "portal": norm_portal(portal_text(st.address, st.port or DEFAULT_PORT)),
                          "auth": auth_view(st.authenticationProperties)}
                         for st in hba.configuredSendTarget or []],
        "static_targets": [{"address": st.address, "port": st.port or DEFAULT_PORT, "iqn": st.iScsiName,
                            "parent": norm_portal(getattr(st, "parent", None)),
                            "discovery": getattr(st, "discoveryMethod", None),
                            "auth": auth_view(st.authenticationProperties)}
                           for st in hba.configuredStaticTarget or []],
    }


def software_adapter(info):
    """The software iSCSI adapter of a HostStorageDeviceInfo (found by isSoftwareBased, not by name: its vmhba
    number changes between releases), as adapter_view(), or None."""
    for hba in (info.hostBusAdapter or []) if info is not None else []:
        if isinstance(hba, vim.host.InternetScsiHba) and hba.isSoftwareBased:
            return adapter_view(hba)
    return None


def adapter_targets(hba):
    """The adapter's send and static targets as sorted strings ('send target a:p', 'static target iqn at a:p')."""
    if hba is None:
        return []
    return sorted(["send target %s" % portal_text(s["address"], s["port"]) for s in hba["send_targets"]]
                  + ["static target %s at %s" % (s["iqn"], portal_text(s["address"], s["port"]))
                     for s in hba["static_targets"]])


def disk_views(info):
    """Every SCSI disk of a HostStorageDeviceInfo: canonical_name, size_bytes, serial, uuid, key, device_path,
    vendor, model, display_name, operational_state and its paths (adapter key, target IQN, addresses, state)."""
    if info is None:
        return []
    paths = {}
    for lu in (info.multipathInfo.lun or []) if info.multipathInfo is not None else []:
        for p in lu.path or []:
            t = p.transport
            paths.setdefault(lu.lun, []).append({
                "name": p.name, "adapter": p.adapter, "state": p.pathState or p.state,
                "target_iqn": getattr(t, "iScsiName", None),
                "addresses": [norm_portal(a) for a in (getattr(t, "address", None) or [])]})
    disks = []
    for lun in info.scsiLun or []:
        if not isinstance(lun, vim.host.ScsiDisk):
            continue
        cap = lun.capacity
        size = cap.block * cap.blockSize if cap is not None and cap.block and cap.blockSize else None
        serial = (lun.serialNumber or "").strip() or None
        disks.append({"canonical_name": lun.canonicalName, "size_bytes": size, "block_size": cap.blockSize if cap else None,
                      "serial": None if serial == "unavailable" else serial, "uuid": lun.uuid, "key": lun.key,
                      "device_path": lun.devicePath, "vendor": (lun.vendor or "").strip(),
                      "model": (lun.model or "").strip(), "display_name": lun.displayName,
                      "operational_state": list(lun.operationalState or []), "paths": paths.get(lun.key, [])})
    return disks


def vmfs_volumes(fs):
    """VMFS volumes of a HostFileSystemVolumeInfo: name, uuid, extents (disk names), mounted, path."""
    volumes = []
    for m in (fs.mountInfo or []) if fs is not None else []:
        v = m.volume
        if not isinstance(v, vim.host.VmfsVolume):
            continue
        info = m.mountInfo
        volumes.append({"name": v.name, "uuid": v.uuid, "extents": [e.diskName for e in v.extent or []],
                        "mounted": bool(getattr(info, "mounted", True) if info is not None else True),
                        "path": getattr(info, "path", None)})
    return volumes


def via_portal(disk, adapter, portal):
    """Whether a disk is reached through the software adapter from the send target ``portal`` (normalized): a path
    of the adapter to a target discovered through it, or to that address."""
    if adapter is None:
        return False
    iqns = set(s["iqn"] for s in adapter["static_targets"] if s["parent"] == portal)
    for p in disk["paths"]:
        if p["adapter"] == adapter["key"] and (p["target_iqn"] in iqns or portal in p["addresses"]):
            return True
    return False


def disk_text(d):
    return "%s (%s, serial %s%s)" % (d["canonical_name"], size_text(d["size_bytes"]),
                                     repr(d["serial"]) if d["serial"] else "none",
                                     ", %s" % "/".join(d["operational_state"]) if d["operational_state"] not in
                                     ([], ["ok"]) else "")


def match_lun(disks, size_bytes, serial=None, canonical_name=None):
    """The disks among ``disks`` with exactly ``size_bytes`` and, when given, that serial and canonical name."""
    return [d for d in disks if d["size_bytes"] == size_bytes
            and (serial is None or d["serial"] == serial.strip())
            and (canonical_name is None or d["canonical_name"].lower() == canonical_name.lower())]


def wanted_text(size_bytes, serial=None, canonical_name=None):
    """'of 67108864 bytes (64 MiB) with serial 'X' and canonical name naa.Y': what a disk must be."""
    extra = []
    if serial:
        extra.append("serial %r" % serial)
    if canonical_name:
        extra.append("canonical name %s" % canonical_name)
    return "of %s%s" % (size_text(size_bytes), (" with " + " and ".join(extra)) if extra else "")


class Host(object):
    """The ESXi host whose storage is changed: its HostSystem, storage and datastore systems."""

    def __init__(self, obj, name, storage_system, datastore_system):
        self.obj = obj
        self.name = unescape_name(name)
        self.moref = moref(obj)
        self.ss = storage_system
        self.dss = datastore_system

    @property
    def label(self):
        return "host %s (%s)" % (self.name, self.moref)

    def storage(self, client):
        """(HostStorageDeviceInfo, HostFileSystemVolumeInfo) as the host shows them now."""
        props = client.properties(self.ss, ["storageDeviceInfo", "fileSystemVolumeInfo"])
        return props.get("storageDeviceInfo"), props.get("fileSystemVolumeInfo")


HOST_PATHS = ["name", "configManager.storageSystem", "configManager.datastoreSystem"]


def _hosts(client):
    container = None
    if client.datacenter:
        dcs = client.retrieve(vim.Datacenter, ["name", "hostFolder"])
        for _dc, values in dcs:
            if client.datacenter in (values.get("name"), unescape_name(values.get("name"))):
                container = values["hostFolder"]
                break
        else:
            raise VsphereError("%s has no datacenter named %r; it has %s. Nothing was changed."
                               % (client.where, client.datacenter,
                                  ", ".join(sorted(repr(unescape_name(v.get("name"))) for _d, v in dcs)) or "none"))
    return client.retrieve(vim.HostSystem, HOST_PATHS, container=container)


def find_host(client, esxi_hostname=None):
    """The host to change: the one named ``esxi_hostname`` (required with a vCenter), else a standalone ESXi host's
    only host. Refused with the names there are otherwise."""
    about = client.about()
    hosts = _hosts(client)
    names = sorted(unescape_name(v.get("name")) for _h, v in hosts)
    if esxi_hostname:
        wanted = esxi_hostname.strip().lower().rstrip(".")
        found = [(h, v) for h, v in hosts if (unescape_name(v.get("name")) or "").lower().rstrip(".") == wanted]
        if not found:
            raise VsphereError("%s has no host named %r; it has %s. Nothing was changed."
                               % (client.where, esxi_hostname, ", ".join(repr(n) for n in names) or "none"))
    elif about.get("api_type") == "VirtualCenter" or len(hosts) != 1:
        raise VsphereError("%s is %s with %d host(s) (%s): give esxi_hostname to name the one to attach the LUN to. "
                           "Nothing was changed." % (client.where, "a vCenter" if about.get("api_type") ==
                                                     "VirtualCenter" else "an endpoint", len(hosts),
                                                     ", ".join(repr(n) for n in names) or "none"))
    else:
        found = hosts
    if len(found) > 1:
        raise VsphereError("%s has %d hosts named %r (%s); give the datacenter that selects one. Nothing was changed."
                           % (client.where, len(found), esxi_hostname, ", ".join(moref(h) for h, _v in found)))
    obj, values = found[0]
    return Host(obj, values.get("name"), values.get("configManager.storageSystem"),
                values.get("configManager.datastoreSystem"))


DATASTORE_PATHS = ["name", "summary", "info", "host", "vm"]


def datastore_view(ds, values):
    summary = values.get("summary")
    info = values.get("info")
    vmfs = getattr(info, "vmfs", None) if isinstance(info, vim.host.VmfsDatastoreInfo) else None
    return {"name": unescape_name(values.get("name")), "moref": moref(ds),
            "type": getattr(summary, "type", None), "url": getattr(summary, "url", None),
            "capacity": getattr(summary, "capacity", None), "free_space": getattr(summary, "freeSpace", None),
            "accessible": getattr(summary, "accessible", None),
            "vmfs_uuid": getattr(vmfs, "uuid", None), "vmfs_version": getattr(vmfs, "version", None),
            "extents": [e.diskName for e in getattr(vmfs, "extent", None) or []],
            "mounts": [{"host": moref(m.key), "mounted": bool(getattr(m.mountInfo, "mounted", True))}
                       for m in values.get("host") or []],
            "vms": [moref(v) for v in values.get("vm") or []]}


def datastores_named(client, name):
    """Every datastore named ``name`` the endpoint shows (datastore_view()s)."""
    found = []
    for ds, values in client.retrieve(vim.Datastore, ["name"]):
        if name in (values.get("name"), unescape_name(values.get("name"))):
            found.append(datastore_view(ds, client.properties(ds, DATASTORE_PATHS)))
    return found


def _is_fault(exc, names):
    return HAS_PYVMOMI and isinstance(exc, vmodl.MethodFault) and fault_name(exc) in names


def _fault_text(exc):
    message = fault_message(exc)
    return "%s%s" % (fault_name(exc), (": %s" % message) if message else "")


# -- present ---------------------------------------------------------------------------------------------------

class _Run(object):
    """One run of the module: the journal, the session, the changes made (for the result and for a failure's
    sentence) and, in check mode, the plan.

    The host changes go through the vSphere API here. Each write is a method of its own (``_enable_software_iscsi``,
    ``_add_send_target``, ``_set_target_chap``, ``_set_adapter_chap``, ``_rescan``, and ``check_blank``,
    ``create_datastore``), so that another engine (the ESXi shell's, ``_esxi_shell.storage``) makes the same steps
    with its own writes; the reads, the journal records and the rules stay here, one copy for both."""

    engine = "api"
    # how a failure's sentence says to undo the changes made so far
    teardown_with = "the vSphere connection"

    def __init__(self, journal, client, check_mode, secrets=()):
        self.journal = journal
        self.client = client
        self.check_mode = check_mode
        self.secrets = tuple(s for s in secrets if s)
        self.changes = []
        self.plan = []
        self.notes = []
        self.enabled_by_us = False
        self._api_type = None

    def api_type(self):
        if self._api_type is None:
            self._api_type = self.client.about().get("api_type")
        return self._api_type

    def base_undo(self, host):
        undo = {"endpoint": self.client.where, "api_type": self.api_type(), "host_moref": host.moref,
                "host_name": host.name, "storage_system": moref(host.ss), "datastore_system": moref(host.dss)}
        if self.engine != "api":  # an API record has no engine key (journals of earlier versions neither)
            undo["engine"] = self.engine
        return undo

    def mine(self, action, host, **match):
        return self.journal.find(action, endpoint=self.client.where, host_moref=host.moref, **match)

    def scrub(self, text):
        for value in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(value, "********")
        return text

    def failure(self, exc, step):
        """The exception to raise for ``exc``: a sentence (faults converted), secrets masked, and the changes made
        so far named with what to do about them."""
        if isinstance(exc, VmcollectError):
            err = exc
        else:
            err = error_for(exc, step, self.client.where, tuple(self.client.secrets()) + self.secrets)
            if err is None:
                return exc
        message = self.scrub(err.message)
        if self.changes:
            message = "%s The changes made so far (%s) stay in the case's journal %s: run teardown for the case (with " \
                      "%s) to undo them." % (message.rstrip(), "; ".join(self.changes), self.journal.path,
                                             self.teardown_with)
            err.details.setdefault("changes", list(self.changes))
            err.details["changed"] = True
        err.message = message
        err.args = (message,)
        return err

    # -- 1. the software adapter ------------------------------------------------------------------------------
    def ensure_adapter(self, host):
        """The software iSCSI adapter (adapter_view()), enabled (journaled) if software iSCSI is off. In check mode
        None when it would be enabled and does not exist yet."""
        info, _fs = host.storage(self.client)
        hba = software_adapter(info)
        enabled = bool(getattr(info, "softwareInternetScsiEnabled", False))
        records = self.mine(ACTION_ADAPTER, host)
        self.enabled_by_us = bool(records)
        if enabled and hba is not None:
            return hba
        if self.check_mode:
            self.plan.append("enable software iSCSI on %s (journaled; ESXi removes the adapter again only at its next "
                             "reboot)" % host.label)
            return hba
        change = None
        if not records:
            undo = dict(self.base_undo(host), enabled_before=enabled,
                        adapter_before={"device": hba["device"], "iqn": hba["iqn"]} if hba else None,
                        targets_before=adapter_targets(hba))
            change = self.journal.record_change(
                ACTION_ADAPTER, undo, "software iSCSI enabled on %s of %s (ESXi removes the adapter again only at "
                "its next reboot)" % (host.label, self.client.where), module=MODULE)
        self._enable_software_iscsi(host)
        hba = self.wait_for_adapter(host)
        if change:
            self.journal.mark_applied(change, device=hba["device"], iqn=hba["iqn"])
        self.enabled_by_us = True
        self.changes.append("enabled software iSCSI on %s: adapter %s, IQN %s" % (host.label, hba["device"], hba["iqn"]))
        return hba

    def _enable_software_iscsi(self, host):
        host.ss.UpdateSoftwareInternetScsiEnabled(enabled=True)

    def wait_for_adapter(self, host, timeout=ADAPTER_WAIT):
        deadline = time.monotonic() + timeout
        while True:
            info, _fs = host.storage(self.client)
            hba = software_adapter(info)
            if hba is not None and getattr(info, "softwareInternetScsiEnabled", False):
                return hba
            if time.monotonic() >= deadline:
                raise VsphereError("%s enabled software iSCSI on %s, but no software iSCSI adapter appeared within %d s."
                                   % (self.client.where, host.label, timeout))
            time.sleep(POLL)

    # -- 2. the send target and its CHAP ----------------------------------------------------------------------------
    def ensure_send_target(self, host, hba, address, port, chap_name, chap_secret, level):
        """The collector's portal as a send target of the adapter, with CHAP; returns the chap result dict."""
        portal = norm_portal(portal_text(address, port))
        chap = {"scope": "send_target", "name": chap_name, "level": level}
        existing = next((st for st in hba["send_targets"] if st["portal"] == portal), None) if hba else None
        if self.check_mode:
            if existing is None:
                self.plan.append("add the send target %s to the adapter %s with CHAP (name %s, %s) on the target "
                                 "(the adapter's own CHAP untouched)" % (portal_text(address, port),
                                                                         hba["device"] if hba else "(new)",
                                                                         chap_name, level))
            else:
                self.plan.append("set CHAP (name %s, %s) on the existing send target %s (the adapter's own CHAP "
                                 "untouched)" % (chap_name, level, portal_text(address, port)))
            return chap
        added = False
        if existing is None:
            records = self.mine(ACTION_SEND_TARGET, host, address=address, port=port)
            change = None
            if not records:
                undo = dict(self.base_undo(host), device=hba["device"], adapter_iqn=hba["iqn"], address=address,
                            port=port, chap_name=chap_name, chap_level=level)
                description = ("send target %s on adapter %s of %s, CHAP name %s (%s) on the target (its undo "
                               "removes it and rescans)" % (portal_text(address, port), hba["device"], host.label,
                                                            chap_name, level))
                change = self.journal.record_change(ACTION_SEND_TARGET, undo, description, module=MODULE)
            self._add_send_target(host, hba, address, port, chap_name, chap_secret, level)
            if change:
                self.journal.mark_applied(change)
            added = True
            self.changes.append("added the send target %s to the adapter %s" % (portal_text(address, port),
                                                                                hba["device"]))
            hba = software_adapter(host.storage(self.client)[0])
            existing = next((st for st in hba["send_targets"] if st["portal"] == portal), None) if hba else None
            if existing is None:
                raise VsphereError("%s accepted the send target %s on the adapter %s but does not list it."
                                   % (self.client.where, portal_text(address, port), hba["device"] if hba else "?"))
        if added and self.chap_is(existing["auth"], chap_name, level, inherited=False):
            self.changes[-1] += " with CHAP (name %s, %s) on the target" % (chap_name, level)
            return chap
        return self.set_target_chap(host, hba, existing, address, port, chap_name, chap_secret, level)

    def _add_send_target(self, host, hba, address, port, chap_name, chap_secret, level):
        """The send target added, with CHAP where the host takes it with the target (else CHAP is set on it next)."""
        auth = self.auth(chap_name, chap_secret, level)
        target = vim.host.InternetScsiHba.SendTarget(address=address, port=port, authenticationProperties=auth)
        try:
            host.ss.AddInternetScsiSendTargets(iScsiHbaDevice=hba["device"], targets=[target])
        except vmodl.MethodFault as exc:
            if not _is_fault(exc, CHAP_REFUSED):
                raise
            # a host that takes no CHAP with a new send target: add it plainly, CHAP is set on it next
            self.notes.append("%s did not take CHAP with the new send target (%s); it was set on the target "
                              "afterwards." % (self.client.where, _fault_text(exc)))
            host.ss.AddInternetScsiSendTargets(iScsiHbaDevice=hba["device"], targets=[
                vim.host.InternetScsiHba.SendTarget(address=address, port=port)])

    @staticmethod
    def auth(chap_name, chap_secret, level):
        return vim.host.InternetScsiHba.AuthenticationProperties(
            chapAuthEnabled=True, chapName=chap_name, chapSecret=chap_secret, chapAuthenticationType=level,
            chapInherited=False)

    @staticmethod
    def chap_is(auth, chap_name, level, inherited=None):
        return bool(auth["chap_auth_enabled"] and auth["chap_name"] == chap_name and auth["chap_type"] == level
                    and (inherited is None or bool(auth["chap_inherited"]) == inherited))

    def set_target_chap(self, host, hba, st, address, port, chap_name, chap_secret, level):
        # a send target this case added takes its CHAP with it when its undo removes it: no record of its own
        covered = self.mine(ACTION_CHAP, host, scope="send_target", address=address, port=port) or \
            self.mine(ACTION_SEND_TARGET, host, address=address, port=port)
        change = None
        if not covered:
            undo = dict(self.base_undo(host), device=hba["device"], scope="send_target", address=address, port=port,
                        before=st["auth"], chap_name=chap_name, chap_level=level)
            change = self.journal.record_change(
                ACTION_CHAP, undo, "CHAP (name %s, %s) on the send target %s of adapter %s of %s; before: %s "
                "(the secret is never journaled)" % (chap_name, level, portal_text(address, port), hba["device"],
                                                     host.label, chap_text(st["auth"])), module=MODULE)
        refused = self._set_target_chap(host, hba, address, port, chap_name, chap_secret, level)
        if refused is not None:
            if change:
                self.journal.mark_undone(change, "the host refused CHAP on the send target (%s): nothing was changed"
                                         % refused)
        if refused is None:
            if change:
                self.journal.mark_applied(change)
            hba = software_adapter(host.storage(self.client)[0])
            now = next((s for s in hba["send_targets"] if s["portal"] == st["portal"]), None)
            if now is not None and self.chap_is(now["auth"], chap_name, level, inherited=False):
                self.changes.append("set CHAP (name %s, %s) on the send target %s; the adapter's own CHAP is untouched"
                                    % (chap_name, level, portal_text(address, port)))
                return {"scope": "send_target", "name": chap_name, "level": level}
            refused = "it took the call but the send target shows %s" % chap_text(now["auth"] if now else None)
        return self.set_adapter_chap(host, hba, st, address, port, chap_name, chap_secret, level, refused)

    def _set_target_chap(self, host, hba, address, port, chap_name, chap_secret, level):
        """CHAP set on the send target; None, or what the host answered when it refuses CHAP on a send target."""
        target_set = vim.host.InternetScsiHba.TargetSet(
            sendTargets=[vim.host.InternetScsiHba.SendTarget(address=address, port=port)])
        try:
            host.ss.UpdateInternetScsiAuthenticationProperties(
                iScsiHbaDevice=hba["device"], authenticationProperties=self.auth(chap_name, chap_secret, level),
                targetSet=target_set)
        except vmodl.MethodFault as exc:
            if not _is_fault(exc, CHAP_REFUSED):
                raise
            return _fault_text(exc)
        return None

    def set_adapter_chap(self, host, hba, st, address, port, chap_name, chap_secret, level, refused):
        hba = software_adapter(host.storage(self.client)[0])
        own = hba["auth"]
        ours = self.mine(ACTION_CHAP, host, scope="adapter", device=hba["device"])
        problems = []
        if own["chap_auth_enabled"] and own["chap_type"] != PROHIBITED and not ours:
            problems.append("the adapter's own CHAP is on (name %s, %s) and ESXi never returns a CHAP secret, so it "
                            "could not be put back" % (own["chap_name"], own["chap_type"]))
        inheriting = ["send target %s" % portal_text(s["address"], s["port"]) for s in hba["send_targets"]
                      if s["portal"] != st["portal"] and s["auth"]["chap_inherited"] is not False]
        inheriting += ["static target %s at %s" % (s["iqn"], portal_text(s["address"], s["port"]))
                       for s in hba["static_targets"] if s["parent"] != st["portal"]
                       and s["auth"]["chap_inherited"] is not False]
        if inheriting:
            problems.append("%s of the adapter use its CHAP and would be cut off" % ", ".join(inheriting))
        if problems:
            raise VsphereError("%s refused CHAP on the send target %s (%s), and setting it on the adapter %s instead "
                               "is refused: %s. Set CHAP on the send target by hand, or attach the LUN from a host "
                               "that takes CHAP per target." % (self.client.where, portal_text(address, port), refused,
                                                                hba["device"], "; ".join(problems)))
        change = None
        if not ours:
            undo = dict(self.base_undo(host), device=hba["device"], scope="adapter", before=own, chap_name=chap_name,
                        chap_level=level)
            change = self.journal.record_change(
                ACTION_CHAP, undo, "CHAP (name %s, %s) on the adapter %s of %s itself (the host refused it on the "
                "send target); before: %s (the secret is never journaled)"
                % (chap_name, level, hba["device"], host.label, chap_text(own)), module=MODULE)
        self._set_adapter_chap(host, hba, chap_name, chap_secret, level)
        if change:
            self.journal.mark_applied(change)
        hba = software_adapter(host.storage(self.client)[0])
        if not self.chap_is(hba["auth"], chap_name, level):
            raise VsphereError("%s took CHAP for the adapter %s but shows %s." % (self.client.where, hba["device"],
                                                                                  chap_text(hba["auth"])))
        self.changes.append("set CHAP (name %s, %s) on the adapter %s itself: the host refused it on the send target "
                            "(%s); teardown puts the adapter's CHAP back as found (%s)"
                            % (chap_name, level, hba["device"], refused, chap_text(own)))
        return {"scope": "adapter", "name": chap_name, "level": level}

    def _set_adapter_chap(self, host, hba, chap_name, chap_secret, level):
        host.ss.UpdateInternetScsiAuthenticationProperties(iScsiHbaDevice=hba["device"],
                                                           authenticationProperties=self.auth(chap_name, chap_secret,
                                                                                              level))

    # -- 3. rescan ------------------------------------------------------------------------------------------------
    def rescan(self, host, hba):
        if self.check_mode:
            self.plan.append("rescan the adapter %s" % (hba["device"] if hba else "(new)"))
            return
        started = time.monotonic()
        self._rescan(host, hba["device"])
        self.changes.append("rescanned the adapter %s (%.1f s)" % (hba["device"], time.monotonic() - started))

    def _rescan(self, host, device):
        host.ss.RescanHba(hbaDevice=device)

    # -- 4. the LUN -------------------------------------------------------------------------------------------------
    def find_lun(self, host, address, port, size_bytes, serial, canonical_name):
        info, fs = host.storage(self.client)
        hba = software_adapter(info)
        portal = norm_portal(portal_text(address, port))
        disks = disk_views(info)
        reached = [d for d in disks if via_portal(d, hba, portal)]
        found = match_lun(reached, size_bytes, serial, canonical_name)
        want = wanted_text(size_bytes, serial, canonical_name)
        where = "through %s on the adapter %s of %s" % (portal_text(address, port), hba["device"], host.label)
        if len(found) == 1:
            lun = found[0]
            holding = [v for v in vmfs_volumes(fs) if lun["canonical_name"] in v["extents"]]
            return lun, holding
        if found:
            raise VsphereError("%d disks %s are reached %s: %s. Give serial (or canonical_name) to pick one; no disk "
                               "was touched." % (len(found), want, where, ", ".join(disk_text(d) for d in found)))
        targets = sorted(set(s["iqn"] for s in hba["static_targets"] if s["parent"] == portal))
        if reached:
            seen = "it reaches %s" % ", ".join(disk_text(d) for d in reached)
        elif targets:
            seen = ("the target%s %s %s discovered through it but gave no disk: the collector refused the login (a "
                    "wrong CHAP name or secret, or the adapter's IQN %s is not admitted) or exports no LUN"
                    % ("s" if len(targets) > 1 else "", ", ".join(targets), "were" if len(targets) > 1 else "was",
                       hba["iqn"]))
        else:
            seen = ("the portal offered no iSCSI target to the adapter: the address or port is wrong, the storage "
                    "link is down, or the collector's ACL does not admit the adapter's IQN %s" % hba["iqn"])
        others = [d for d in disks if d not in reached and d["size_bytes"] == size_bytes]
        also = (" (disks of that size reached otherwise are never used: %s)" % ", ".join(disk_text(d) for d in others)
                if others else "")
        raise VsphereError("No disk %s is reached %s after the rescan: %s%s. No datastore was made."
                           % (want, where, seen, also))

    def check_blank(self, host, lun):
        """Refuse a LUN that holds partitions (a VMFS of an earlier run is never formatted again), and a LUN whose
        partitions the host cannot list (a fault of RetrieveDiskPartitionInfo, whatever it is, or an answer without
        the LUN's partition table): it is never formatted without knowing that it is blank."""
        try:
            infos = host.ss.RetrieveDiskPartitionInfo(devicePath=[lun["device_path"]])
        except vmodl.MethodFault as exc:
            raise VsphereError(self.blind("%s cannot list the partitions of the LUN %s (RetrieveDiskPartitionInfo: %s)"
                                          % (self.client.where, lun["canonical_name"], _fault_text(exc)), lun))
        names = (lun["device_path"], lun["canonical_name"])
        mine = [i for i in infos or [] if getattr(i, "deviceName", None) in names
                or (getattr(i, "deviceName", None) or "").endswith("/" + lun["canonical_name"])]
        specs = [i.spec for i in mine if getattr(i, "spec", None) is not None]
        if not specs:
            answered = sorted(set(getattr(i, "deviceName", None) or "(no device name)" for i in infos or []))
            raise VsphereError(self.blind(
                "%s answered RetrieveDiskPartitionInfo for the LUN %s without its partition table (%s)"
                % (self.client.where, lun["canonical_name"], "it answered for %s" % ", ".join(answered) if answered
                   else "it answered nothing"), lun))
        parts = []
        for spec in specs:
            for p in getattr(spec, "partition", None) or []:
                parts.append("%s (%s, sectors %s-%s)" % (p.partition, p.type, p.startSector, p.endSector))
        if parts:
            raise VsphereError(holds_partitions(lun, parts))

    @staticmethod
    def blind(why, lun):
        """The refusal of a LUN whose partitions could not be listed: ``why`` and what it means."""
        return ("%s, so it is not known to be blank. It may hold the evidence of an earlier run (the VMFS volume of a "
                "released or killed case), and a LUN is never formatted without knowing that it is blank: no datastore "
                "was made and nothing was formatted. Look at it on the host (partedUtil getptbl "
                "/vmfs/devices/disks/%s), or give the collector a new LUN." % (why, lun["canonical_name"]))

    # -- 5. the datastore -----------------------------------------------------------------------------------------
    def create_datastore(self, host, lun, name, address, port):
        options = host.dss.QueryVmfsDatastoreCreateOptions(devicePath=lun["device_path"])
        option = next((o for o in options or [] if isinstance(o.info, vim.host.VmfsDatastoreOption.AllExtentInfo)),
                      None)
        if option is None:
            raise VsphereError("%s offers no way to use the whole LUN %s for a VMFS datastore (%s); no datastore was "
                               "made." % (self.client.where, lun["canonical_name"],
                                          ", ".join(type(o.info).__name__ for o in options or []) or "no option"))
        spec = option.spec
        parts = list(getattr(spec.partition, "partition", None) or [])
        if len(parts) != 1 or spec.vmfs.extent.diskName != lun["canonical_name"]:
            raise VsphereError("%s proposes %d partition(s) on %s for the datastore, not one VMFS partition on the whole "
                               "LUN %s; no datastore was made." % (self.client.where, len(parts),
                                                                   spec.vmfs.extent.diskName, lun["canonical_name"]))
        spec.vmfs.volumeName = name
        undo = dict(self.base_undo(host), datastore_name=name, portal=portal_text(address, port),
                    lun={"canonical_name": lun["canonical_name"], "uuid": lun["uuid"],
                         "device_path": lun["device_path"], "size_bytes": lun["size_bytes"], "serial": lun["serial"]})
        change = self.journal.record_change(
            ACTION_DATASTORE, undo, "VMFS datastore %r on the LUN %s of %s (its undo unmounts it and detaches the "
            "LUN; never RemoveDatastore, which would destroy the volume)" % (name, lun["canonical_name"], host.label),
            module=MODULE)
        started = time.monotonic()
        ds = host.dss.CreateVmfsDatastore(spec=spec)
        took = time.monotonic() - started
        view = datastore_view(ds, self.client.properties(ds, DATASTORE_PATHS))
        self.journal.mark_applied(change, moref=view["moref"], vmfs_uuid=view["vmfs_uuid"])
        self.changes.append("made the VMFS datastore %r (%s, VMFS %s, uuid %s) on the LUN %s (%.1f s)"
                            % (name, view["moref"], view["vmfs_version"], view["vmfs_uuid"], lun["canonical_name"],
                               took))
        return view


def holds_partitions(lun, parts):
    """The refusal of a LUN that holds partitions (``parts``: '1 (vmfs, sectors 2048-N)' each): never formatted."""
    return ("The LUN %s holds partition%s %s already (a VMFS of an earlier run?); it is never formatted again. No "
            "datastore was made and nothing was formatted: mount what it holds by hand after checking it, or give the "
            "collector a new LUN." % (lun["canonical_name"], "s" if len(parts) > 1 else "", ", ".join(parts)))


# the base of the engines' runs (_esxi_shell.storage.ShellRun is the SSH engine's)
Run = _Run


def chap_text(auth):
    if auth is None:
        return "no CHAP settings"
    if auth.get("chap_inherited"):
        return "CHAP inherited from the adapter"
    if not auth.get("chap_auth_enabled") or auth.get("chap_type") == PROHIBITED:
        return "CHAP off"
    return "CHAP on (name %s, %s, a secret set)" % (auth.get("chap_name"), auth.get("chap_type"))


def _result(run, host, hba, **extra):
    result = {"host": {"name": host.name, "moref": host.moref},
              "adapter": ({"device": hba["device"], "iqn": hba["iqn"], "model": hba["model"],
                           "enabled_by_us": run.enabled_by_us} if hba else None),
              "adapter_enabled_by_us": run.enabled_by_us, "changes": list(run.changes),
              "tls": run.client.tls_record()}
    result.update(extra)
    return result


def _adapter_note(run, hba):
    if not run.enabled_by_us:
        return "Software iSCSI was on before; it stays as found."
    return ("Software iSCSI was enabled for this case; teardown turns it off again, but ESXi removes the adapter %s "
            "(IQN %s) only at the host's next reboot." % (hba["device"], hba["iqn"]) if hba else
            "Software iSCSI would be enabled for this case; ESXi removes the adapter again only at a reboot.")


def _lun_result(lun):
    return {"canonical_name": lun["canonical_name"], "size_bytes": lun["size_bytes"], "serial": lun["serial"],
            "uuid": lun["uuid"], "device_path": lun["device_path"], "vendor": lun["vendor"], "model": lun["model"]}


def _ds_result(view):
    return dict((k, view[k]) for k in ("name", "moref", "url", "capacity", "free_space", "type", "vmfs_uuid",
                                       "vmfs_version", "extents"))


def adapter(journal, client, esxi_hostname=None, check_mode=False, runner=None):
    """state=adapter: software iSCSI on (journaled), its adapter and IQN returned. ``runner(journal, client,
    check_mode, secrets)``: the run of another engine (default: the API's)."""
    run = (runner or _Run)(journal, client, check_mode, ())
    try:
        host = find_host(client, esxi_hostname)
        hba = run.ensure_adapter(host)
    except Exception as exc:  # pylint: disable=broad-except
        raise run.failure(exc, "enable software iSCSI")
    result = _result(run, host, hba, changed=bool(run.changes) or bool(run.plan), plan=run.plan,
                     note=_adapter_note(run, hba))
    if check_mode:
        result["note"] = ("Check mode: nothing was changed. " + ("Planned: %s." % "; ".join(run.plan) if run.plan else
                                                                 "Software iSCSI is on already.")
                          + (" The adapter's IQN is known only once it exists." if hba is None else ""))
    return result


def present(journal, client, address, size_bytes, datastore_name, chap_name, chap_secret, port=DEFAULT_PORT,
            chap_required=True, serial=None, canonical_name=None, esxi_hostname=None, check_mode=False, runner=None):
    """state=present (see the module docstring). Returns dict(changed, host, adapter, adapter_enabled_by_us,
    send_target, chap, lun, datastore, changes, plan, tls, note). ``runner``: as for adapter()."""
    check_inputs(address, port, size_bytes, datastore_name, chap_name, chap_secret, serial, canonical_name)
    run = (runner or _Run)(journal, client, check_mode, (chap_secret,))
    try:
        return _present(run, address, port, size_bytes, datastore_name, chap_name, chap_secret,
                        chap_level(chap_required), serial, canonical_name, esxi_hostname)
    except Exception as exc:  # pylint: disable=broad-except
        raise run.failure(exc, "attach the collector's iSCSI LUN as datastore %r" % datastore_name)


def _present(run, address, port, size_bytes, datastore_name, chap_name, chap_secret, level, serial, canonical_name,
             esxi_hostname):
    client = run.client
    host = find_host(client, esxi_hostname)
    portal = norm_portal(portal_text(address, port))
    want = wanted_text(size_bytes, serial, canonical_name)
    info, fs = host.storage(client)
    hba = software_adapter(info)
    disks = dict((d["canonical_name"], d) for d in disk_views(info))
    send_target = {"address": address, "port": port, "portal": portal_text(address, port)}
    # refused before any change: a datastore of that name that is not on such a LUN
    for view in datastores_named(client, datastore_name):
        on = [disks.get(e) for e in view["extents"]]
        good = (view["type"] == "VMFS" and len(on) == 1 and on[0] is not None and via_portal(on[0], hba, portal)
                and match_lun([on[0]], size_bytes, serial, canonical_name))
        if not good:
            raise VsphereError(
                "A datastore named %r exists (%s, %s, on %s) and is not on a disk %s reached through %s; choose another "
                "datastore_name. Nothing was changed." % (datastore_name, view["moref"], view["type"],
                                                          ", ".join(view["extents"]) or "no disk of this host", want,
                                                          portal_text(address, port)))
        mounted = any(m["host"] == host.moref and m["mounted"] for m in view["mounts"])
        if not mounted:
            raise VsphereError("The datastore %r (%s) is on the LUN %s but not mounted on %s; run teardown for the "
                               "case first. Nothing was changed."
                               % (datastore_name, view["moref"], on[0]["canonical_name"], host.label))
        run.enabled_by_us = bool(run.mine(ACTION_ADAPTER, host))
        made = bool(run.mine(ACTION_DATASTORE, host, datastore_name=datastore_name))
        st = next((s for s in hba["send_targets"] if s["portal"] == portal), None)
        chap_scope = "send_target" if st is not None and run.chap_is(st["auth"], chap_name, level, False) else (
            "adapter" if run.chap_is(hba["auth"], chap_name, level) else "unknown")
        return _result(run, host, hba, changed=False, plan=[], send_target=send_target,
                       chap={"scope": chap_scope, "name": chap_name, "level": level},
                       lun=_lun_result(on[0]), datastore=_ds_result(view),
                       note="The datastore %r is on the LUN %s and mounted on %s already; nothing was changed.%s %s"
                            % (datastore_name, on[0]["canonical_name"], host.label,
                               "" if made else " This case's journal did not make it: its teardown leaves it.",
                               _adapter_note(run, hba)))
    hba = run.ensure_adapter(host)
    chap = run.ensure_send_target(host, hba, address, port, chap_name, chap_secret, level)
    run.rescan(host, hba)
    if run.check_mode:
        seen = ""
        if hba is not None:
            reached = [d for d in disk_views(info) if via_portal(d, hba, portal)]
            found = match_lun(reached, size_bytes, serial, canonical_name)
            if len(found) == 1:
                seen = " (now: %s)" % disk_text(found[0])
        run.plan.append("use the one disk %s reached through %s%s" % (want, portal_text(address, port), seen))
        run.plan.append("make the VMFS datastore %r on the whole LUN (journaled; teardown unmounts it, never "
                        "RemoveDatastore)" % datastore_name)
        return _result(run, host, hba, changed=True, plan=run.plan, send_target=send_target, chap=chap, lun=None,
                       datastore=None, note="Check mode: nothing was changed. Planned: %s." % "; ".join(run.plan))
    lun, holding = run.find_lun(host, address, port, size_bytes, serial, canonical_name)
    if holding:
        raise VsphereError("The LUN %s holds the VMFS datastore %s already (not %r); it is never formatted again. No "
                           "datastore was made." % (lun["canonical_name"], ", ".join(repr(v["name"]) for v in holding),
                                                    datastore_name))
    run.check_blank(host, lun)
    view = run.create_datastore(host, lun, datastore_name, address, port)
    notes = ["The LUN %s is the datastore %r (%s), mounted on %s." % (lun["canonical_name"], datastore_name,
                                                                      view["moref"], host.label)]
    notes.extend(run.notes)
    notes.append(_adapter_note(run, hba))
    return _result(run, host, hba, changed=True, plan=[], send_target=send_target, chap=chap, lun=_lun_result(lun),
                   datastore=_ds_result(view), note=" ".join(notes))


def absent(journal, client, options, esxi_hostname=None, check_mode=False, secrets=()):
    """state=absent: this module's pending changes of the case for the host undone now (the same handlers as
    teardown, marked undone in the journal). ``options`` are the connection options the handlers log in with."""
    run = _Run(journal, client, check_mode)
    try:
        host = find_host(client, esxi_hostname)
        records = [r for r in journal.pending() if r["action"] in ACTIONS and r.get("module") == MODULE
                   and r["undo"].get("host_moref") == host.moref and r["undo"].get("endpoint") == client.where]
        undone = journal.replay(records, UndoContext(check_mode, options, secrets))
    except Exception as exc:  # pylint: disable=broad-except
        raise run.failure(exc, "release the collector's iSCSI LUN")
    return {"changed": bool(undone), "host": {"name": host.name, "moref": host.moref}, "undone": undone,
            "tls": client.tls_record(),
            "note": ("Check mode: nothing was changed; these would be undone." if check_mode and undone else
                     "Undone, newest first; marked undone in the case's journal." if undone else
                     "This case's journal holds nothing of this module for %s; nothing was changed." % host.label)}


# -- undo ----------------------------------------------------------------------------------------------------------

def _host_for_undo(client, undo):
    """The journaled host: by moref when that object still has the recorded name, else by its name."""
    try:
        obj = vim.HostSystem(undo["host_moref"], client.si._stub)  # pylint: disable=protected-access
        values = client.properties(obj, HOST_PATHS)
        if unescape_name(values.get("name")) == undo["host_name"]:
            return Host(obj, values.get("name"), values.get("configManager.storageSystem"),
                        values.get("configManager.datastoreSystem"))
    except (VsphereError, vmodl.MethodFault):
        pass
    try:
        return find_host(client, undo["host_name"])
    except VsphereError:
        raise VsphereError("Host %s (%s) is not on %s; the journal says its storage was changed through %s. Give "
                           "teardown the connection of that host (or of the vCenter that manages it) and run it again."
                           % (undo["host_name"], undo["host_moref"], client.where, undo["endpoint"]))


def _adapter_by_device(info, device):
    hba = software_adapter(info)
    return hba if hba is not None and hba["device"] == device else None


class ApiWriter(object):
    """The writes of the undo through the vSphere API (HostStorageSystem). Another engine gives the undo functions a
    writer of its own with these methods and names (``writer_for``); the reads and the rules stay in the functions.
    ``detach`` and ``forget_detached`` return None, or what the host answered when it lacks the call."""

    unmount_how = "UnmountVmfsVolume"
    detach_how = "DetachScsiLun"
    forget_how = "DeleteScsiLunState"

    def __init__(self, host):
        self.host = host

    def unmount(self, vmfs_uuid, name):  # pylint: disable=unused-argument
        self.host.ss.UnmountVmfsVolume(vmfsUuid=vmfs_uuid)

    def detach(self, lun):
        try:
            self.host.ss.DetachScsiLun(lunUuid=lun["uuid"])
        except vmodl.MethodFault as exc:
            if not _is_fault(exc, UNSUPPORTED):
                raise
            return fault_name(exc)
        return None

    def forget_detached(self, canonical_name):
        try:
            self.host.ss.DeleteScsiLunState(lunCanonicalName=canonical_name)
        except vmodl.MethodFault as exc:
            if not _is_fault(exc, UNSUPPORTED + ("NotFound", "InvalidArgument")):
                raise
            return fault_name(exc)
        return None

    def remove_send_target(self, device, address, port):
        self.host.ss.RemoveInternetScsiSendTargets(iScsiHbaDevice=device, targets=[
            vim.host.InternetScsiHba.SendTarget(address=address, port=port)])

    def remove_static_targets(self, device, statics):
        self.host.ss.RemoveInternetScsiStaticTargets(iScsiHbaDevice=device, targets=[
            vim.host.InternetScsiHba.StaticTarget(address=s["address"], port=s["port"], iScsiName=s["iqn"])
            for s in statics])

    def rescan(self, device):
        self.host.ss.RescanHba(hbaDevice=device)

    def put_chap(self, device, scope, address, port, before):
        """CHAP of the send target (scope send_target) or the adapter back to ``before`` (auth_view()): inherited, off,
        or on with the recorded name and level (no secret: ESXi never returns one)."""
        if before.get("chap_inherited"):
            props = vim.host.InternetScsiHba.AuthenticationProperties(chapAuthEnabled=False, chapInherited=True,
                                                                      chapAuthenticationType=PROHIBITED)
        elif _chap_off(before):
            props = vim.host.InternetScsiHba.AuthenticationProperties(chapAuthEnabled=False, chapInherited=False,
                                                                      chapAuthenticationType=PROHIBITED)
        else:
            props = vim.host.InternetScsiHba.AuthenticationProperties(
                chapAuthEnabled=True, chapInherited=False, chapName=before["chap_name"],
                chapAuthenticationType=before["chap_type"])
        kwargs = {"iScsiHbaDevice": device, "authenticationProperties": props}
        if scope == "send_target":
            kwargs["targetSet"] = vim.host.InternetScsiHba.TargetSet(
                sendTargets=[vim.host.InternetScsiHba.SendTarget(address=address, port=port)])
        self.host.ss.UpdateInternetScsiAuthenticationProperties(**kwargs)

    def set_software_iscsi(self, enabled):
        self.host.ss.UpdateSoftwareInternetScsiEnabled(enabled=enabled)


@vsphere_errors("release the evidence datastore")
def release_datastore(client, undo, check_mode=False, writer_for=ApiWriter):
    """Undo ``vsphere.vmfs_datastore``: UnmountVmfsVolume, then DetachScsiLun where the host has it. Never
    RemoveDatastore. ``writer_for(host)``: the writer of the engine that made the change (ApiWriter here)."""
    host = _host_for_undo(client, undo)
    writer = writer_for(host)
    name, lun_name = undo["datastore_name"], undo["lun"]["canonical_name"]
    info, fs = host.storage(client)
    volumes = [v for v in vmfs_volumes(fs) if v["name"] == name and lun_name in v["extents"]]
    said = []
    label = "the VMFS datastore %r on the LUN %s of %s" % (name, lun_name, host.label)
    mounted = [v for v in volumes if v["mounted"]]
    if mounted:
        vol = mounted[0]
        views = [v for v in datastores_named(client, name) if v["vmfs_uuid"] == vol["uuid"]]
        vms = views[0]["vms"] if views else []
        if vms:
            raise VsphereError("%s holds %d registered VM(s) (%s); it is not unmounted with VMs on it. Unregister them "
                               "(the files stay), then run teardown again." % (_capital(label), len(vms),
                                                                               ", ".join(vms)))
        if check_mode:
            return ("would unmount %s (VMFS %s) with %s and detach the LUN; never RemoveDatastore: the evidence stays "
                    "on the LUN" % (label, vol["uuid"], writer.unmount_how))
        writer.unmount(vol["uuid"], name)
        said.append("unmounted %s (VMFS %s) with %s, never RemoveDatastore: the volume and the evidence on it stay on "
                    "the LUN" % (label, vol["uuid"], writer.unmount_how))
    elif volumes:
        said.append("%s was unmounted already" % label)
    else:
        said.append("%s was not mounted (released already, or never made)" % label)
    info, _fs = host.storage(client)
    lun = next((d for d in disk_views(info) if d["canonical_name"] == lun_name), None)
    if lun is None:
        said.append("the LUN is gone from the host already")
    elif "off" in lun["operational_state"]:
        said.append("the LUN is detached already")
    elif check_mode:
        said.append("would detach the LUN")
    else:
        lacking = writer.detach(lun)
        if lacking is None:
            said.append("detached the LUN (%s; its send target's undo forgets its state)" % writer.detach_how)
        else:
            said.append("the host cannot detach the LUN (%s: %s); it goes with its send target"
                        % (writer.detach_how, lacking))
    return "; ".join(said)


@vsphere_errors("put back the CHAP settings of the software iSCSI adapter")
def restore_chap(client, undo, check_mode=False, writer_for=ApiWriter):
    """Undo ``vsphere.iscsi_chap``: the send target's or the adapter's CHAP as recorded (a secret that was set
    before cannot be read back from ESXi, which the sentence says)."""
    host = _host_for_undo(client, undo)
    writer = writer_for(host)
    info, _fs = host.storage(client)
    hba = _adapter_by_device(info, undo["device"])
    before = undo["before"]
    if hba is None:
        return "the adapter %s of %s is gone: nothing to put back" % (undo["device"], host.label)
    if undo["scope"] == "send_target":
        portal = norm_portal(portal_text(undo["address"], undo["port"]))
        st = next((s for s in hba["send_targets"] if s["portal"] == portal), None)
        what = "the send target %s" % portal_text(undo["address"], undo["port"])
        if st is None:
            return "%s is gone, its CHAP with it" % what
        now = st["auth"]
    else:
        now = hba["auth"]
        what = "the adapter %s" % hba["device"]
    if _same_chap(now, before):
        return "CHAP of %s is as found (%s)" % (what, chap_text(before))
    if before.get("chap_inherited"):
        secret_note = ""
    elif _chap_off(before):
        secret_note = "; no secret was set before, so none is lost (ESXi never returns one)"
    else:
        secret_note = ("; ESXi never returns a CHAP secret, so the secret set before could not be read and written "
                       "back: set it again by hand")
    if check_mode:
        return "would put CHAP of %s back from %s to %s" % (what, chap_text(now), chap_text(before))
    writer.put_chap(hba["device"], undo["scope"], undo.get("address"), undo.get("port"), before)
    return "put CHAP of %s back from %s to %s%s" % (what, chap_text(now), chap_text(before), secret_note)


def _chap_off(auth):
    return not auth.get("chap_auth_enabled") or auth.get("chap_type") == PROHIBITED


def _same_chap(now, before):
    if before.get("chap_inherited"):
        return bool(now.get("chap_inherited"))
    if _chap_off(before):
        return _chap_off(now) and not now.get("chap_inherited")
    return False  # a secret was set before: it cannot be compared, so it is written back


@vsphere_errors("remove the collector's send target")
def remove_send_target(client, undo, check_mode=False, writer_for=ApiWriter):
    """Undo ``vsphere.iscsi_send_target``: the send target removed (and static targets it left), a rescan so its
    LUN disappears, DeleteScsiLunState for a LUN that was detached."""
    host = _host_for_undo(client, undo)
    writer = writer_for(host)
    info, fs = host.storage(client)
    hba = _adapter_by_device(info, undo["device"])
    portal_label = portal_text(undo["address"], undo["port"])
    if hba is None:
        return "the adapter %s of %s is gone, the send target %s with it" % (undo["device"], host.label, portal_label)
    portal = norm_portal(portal_label)
    present_ = any(s["portal"] == portal for s in hba["send_targets"])
    statics = [s for s in hba["static_targets"] if s["parent"] == portal]
    reached = [d for d in disk_views(info) if via_portal(d, hba, portal)]
    held = [v for v in vmfs_volumes(fs) if v["mounted"] and any(d["canonical_name"] in v["extents"] for d in reached)]
    if held and not check_mode:  # in check mode this case's datastore would have been released just before
        raise VsphereError("The LUN(s) reached through the send target %s of %s hold the mounted datastore(s) %s; "
                           "the send target is not removed under them. Release them first (this case's datastore is "
                           "released by its own undo), then run teardown again."
                           % (portal_label, host.label, ", ".join(repr(v["name"]) for v in held)))
    if check_mode:
        if not present_:
            return "the send target %s was removed already" % portal_label
        going = (" (its LUN(s) %s would go)" % ", ".join(d["canonical_name"] for d in reached)) if reached else ""
        return "would remove the send target %s from the adapter %s and rescan it%s" % (portal_label, hba["device"],
                                                                                        going)
    said = []
    detached = [d for d in reached if "off" in d["operational_state"]]
    if present_:
        writer.remove_send_target(hba["device"], undo["address"], undo["port"])
        said.append("removed the send target %s from the adapter %s of %s" % (portal_label, hba["device"], host.label))
    else:
        said.append("the send target %s was removed already" % portal_label)
    left = [s for s in software_adapter(host.storage(client)[0])["static_targets"] if s["parent"] == portal]
    if left:
        writer.remove_static_targets(hba["device"], left)
        said.append("removed the static target(s) it had discovered (%s)" % ", ".join(s["iqn"] for s in left))
    elif statics and present_:
        said.append("its static target(s) went with it")
    started = time.monotonic()
    writer.rescan(hba["device"])
    info, _fs = host.storage(client)
    still = [d for d in disk_views(info) if d["canonical_name"] in set(x["canonical_name"] for x in reached)]
    gone = [d["canonical_name"] for d in reached if d["canonical_name"] not in set(x["canonical_name"] for x in still)]
    said.append("rescanned %s (%.1f s)%s" % (hba["device"], time.monotonic() - started,
                                             ": the LUN(s) %s are gone" % ", ".join(gone) if gone else ""))
    for d in detached:
        lacking = writer.forget_detached(d["canonical_name"])
        if lacking is None:
            said.append("forgot the detached state of %s (%s)" % (d["canonical_name"], writer.forget_how))
        else:
            said.append("the host keeps %s in its list of detached devices (%s: %s)"
                        % (d["canonical_name"], writer.forget_how, lacking))
    if still:
        said.append("still listed: %s" % ", ".join(disk_text(d) for d in still))
    return "; ".join(said)


@vsphere_errors("turn software iSCSI off again")
def disable_adapter(client, undo, check_mode=False, writer_for=ApiWriter):
    """Undo ``vsphere.iscsi_adapter``: the flag off again (ESXi removes the adapter at its next reboot only). Left on
    when targets that are not ours were added to it meanwhile."""
    host = _host_for_undo(client, undo)
    writer = writer_for(host)
    info, _fs = host.storage(client)
    hba = software_adapter(info)
    enabled = bool(getattr(info, "softwareInternetScsiEnabled", False))
    stays = ("ESXi removes the adapter %s (IQN %s) only at the host's next reboot: until then it stays listed"
             % (hba["device"], hba["iqn"]) if hba else "no software adapter is listed")
    if not enabled:
        return "software iSCSI on %s is off already, as found; %s" % (host.label, stays)
    added = [t for t in adapter_targets(hba) if t not in (undo.get("targets_before") or [])]
    if check_mode:
        return ("would turn software iSCSI on %s off again, as found, once this case's targets are gone (unless others "
                "were added to the adapter meanwhile; now it lists: %s) (%s)"
                % (host.label, ", ".join(added) or "none but those it had before", stays))
    if added:
        return ("left software iSCSI on %s enabled: targets that are not this case's were added to the adapter %s "
                "meanwhile (%s), and turning it off would drop them at the next reboot"
                % (host.label, hba["device"], ", ".join(added)))
    writer.set_software_iscsi(False)
    return "turned software iSCSI on %s off again, as found; %s" % (host.label, stays)


# engine name -> function(fn, what, undo, ctx) that undoes a record another engine made (``"engine"`` in its undo
# dict), registered by that engine's module (``_esxi_shell.storage``: "ssh"); fn is one of the undo functions above,
# to be called with that engine's ``writer_for``. A record without "engine" is the API's.
ENGINE_UNDO = {}


def _handler(fn, what):
    def handle(undo, ctx):
        engine = undo.get("engine") or "api"
        if engine != "api":
            other = ENGINE_UNDO.get(engine)
            if other is None:
                raise VsphereError("%s was changed through the host's %s engine, whose undo this version does not "
                                   "have loaded; nothing was changed." % (_capital(what(undo)), engine))
            return other(fn, what, undo, ctx)
        if not HAS_PYVMOMI:
            raise VsphereError("Undoing %s on %s needs pyvmomi for the Python that runs teardown."
                               % (what(undo), undo["endpoint"]))
        options = ctx.options
        if not options.get("hostname"):
            raise VsphereError("%s is on %s: give teardown its connection (hostname, username, password, and "
                               "thumbprint or ca_file) to undo it." % (_capital(what(undo)), undo["endpoint"]))
        started = time.monotonic()
        with client_from_params(options) as client:
            sentence = fn(client, undo, ctx.check_mode)
        return sentence if ctx.check_mode else "%s (%.1f s)" % (sentence, time.monotonic() - started)

    handle.__name__ = "_undo_" + fn.__name__
    handle.__doc__ = fn.__doc__
    return handle


_undo_datastore = undo_handler(ACTION_DATASTORE)(_handler(
    release_datastore,
    lambda u: "the datastore %r on %s of host %s" % (u["datastore_name"], u["lun"]["canonical_name"], u["host_name"])))
_undo_chap = undo_handler(ACTION_CHAP)(_handler(
    restore_chap, lambda u: "the CHAP settings of %s of host %s" % (
        "the send target %s" % portal_text(u["address"], u["port"]) if u["scope"] == "send_target"
        else "the adapter %s" % u["device"], u["host_name"])))
_undo_send_target = undo_handler(ACTION_SEND_TARGET)(_handler(
    remove_send_target, lambda u: "the send target %s of host %s" % (portal_text(u["address"], u["port"]),
                                                                     u["host_name"])))
_undo_adapter = undo_handler(ACTION_ADAPTER)(_handler(
    disable_adapter, lambda u: "software iSCSI of host %s" % u["host_name"]))
