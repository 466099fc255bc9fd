# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH engine of esxi_iscsi_datastore: the collector's iSCSI LUN attached to an ESXi host as a new VMFS datastore
by the host's own shell, for a host whose vSphere API refuses changes (a free ESXi host: ``RestrictedVersion``).

The steps, their order, their journal records and every rule are those of the API engine
(``_vsphere/storage.py``, one copy: ``ShellRun`` is its run with the writes replaced): software iSCSI enabled if it
is off, the collector's portal added as a send target with CHAP on that target, a rescan, the one LUN reached through
that portal with exactly the size (and serial, canonical name) asked for, never formatted unless it is known to be
blank, a VMFS datastore on the whole LUN. Reads stay on the vSphere API (a free host answers them), so both engines
see the host alike. The writes, each journaled BEFORE it is made with ``"engine": "ssh"`` in its undo record (the
same actions as the API engine's, ``vsphere.iscsi_adapter``, ``vsphere.iscsi_send_target``, ``vsphere.iscsi_chap``,
``vsphere.vmfs_datastore``):

- ``esxcli iscsi software set --enabled=true`` (undo: ``--enabled=false``; ESXi removes the adapter only at its
  next reboot, as with the API).
- ``esxcli iscsi adapter discovery sendtarget add -A vmhbaNN -a address:port`` (undo: ``... remove``, static targets
  it left removed with ``esxcli iscsi adapter discovery statictarget remove``, then a rescan).
- CHAP on the send target: ``esxcli iscsi adapter discovery sendtarget auth chap set --adapter= --address=
  --direction=uni --authname= --secret= --level=``. **The secret is in that command's argv**: esxcli has no other way
  to take it, so it is on the host's process list for the instant the command runs. It reaches the host on the
  command's stdin, not in the command line sent over SSH: the host's shell reads it into a variable and execs esxcli
  (``Shell.run_secret``), so no shell's argv and no shell log holds it, only esxcli's own argv. It is never logged,
  journaled or returned, and masked in every message (the SSH client's ``secrets=``). A host whose esxcli lacks the
  command (``Unknown command or namespace``, as older hosts may) gets CHAP on the adapter instead (``esxcli iscsi adapter auth chap set ... -A``) under the API
  engine's rules: only when the adapter's own CHAP is off and no other target inherits it, journaled on its own
  (undo: ``--default``).
- ``esxcli storage core adapter rescan -A vmhbaNN``.
- the blank check: ``partedUtil getptbl /vmfs/devices/disks/<naa>``. A LUN with any partition is never formatted; nor
  one whose table cannot be read or whose sector count is not the LUN's size (not known to be the same disk, not
  known to be blank).
- the datastore: ``partedUtil getUsableSectors``, ``partedUtil setptbl <dev> gpt "1 2048 <last> <VMFS GUID> 0"``,
  ``vmkfstools -C vmfs6 -S <label> <dev>:1`` (``vmfs5`` for a host older than 6.5), then the datastore as the API
  lists it. Undo: ``esxcli storage filesystem unmount -u <VMFS UUID>`` (never a removal: the volume and the evidence
  stay on the LUN), then ``esxcli storage core device set --state=off -d <naa>`` where the host's esxcli has it (the
  send target's undo then forgets it: ``esxcli storage core device detached remove``).

Undo (teardown, ``state=absent``): the API engine's undo functions with this engine's writer (``ShellWriter``), chosen
by the record's ``engine``; they read through the API with teardown's ``connection`` and write over SSH with its
``connection.ssh`` (connected only when something is to be changed: a check-mode teardown reads only).

Limits: the SSH engine changes a standalone ESXi host, reached at the vSphere ``hostname`` (a free host cannot be
managed by a vCenter); a CHAP secret is briefly in the host's process list (above); a ``vmkfstools -C`` that fails
after ``partedUtil setptbl`` leaves the LUN with an empty VMFS partition, which a rerun refuses to format (the undo
never deletes partitions).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse as _parse
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import EsxiShellError, Shell, ssh_client
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage as _vst
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import HAS_PYVMOMI, client_from_params

ENGINE = "ssh"
DISKS = "/vmfs/devices/disks/"
VMFS_START = 2048  # first sector of the VMFS partition (what ESXi's own tools use)
RESCAN_TIMEOUT = 600  # seconds for a rescan of the adapter (a login to every target it discovers)
CREATE_TIMEOUT = 600  # seconds for vmkfstools -C
DATASTORE_WAIT = 60.0  # seconds for the API to list a volume vmkfstools made
POLL = 0.5
_LEVELS = {"chapRequired": "required", "chapPreferred": "preferred", "chapDiscouraged": "discouraged",
           _vst.PROHIBITED: "prohibited"}
_UNKNOWN = re.compile(r"Unknown command or namespace", re.IGNORECASE)


# -- the commands (argv lists; the client quotes each word) --------------------------------------------------------

def esxcli_level(level):
    """esxcli's CHAP level of the API's (chapRequired -> required)."""
    try:
        return _LEVELS[level]
    except KeyError:
        raise EsxiShellError("%r is not a CHAP level this version knows (%s)." % (level, ", ".join(sorted(_LEVELS))))


def device_path(canonical_name):
    """/vmfs/devices/disks/<naa...>: the path ESXi's shell names a disk by."""
    if not canonical_name or "/" in canonical_name:
        raise EsxiShellError("%r is not a disk's canonical name." % (canonical_name,))
    return DISKS + canonical_name


def software_iscsi_argv(enabled):
    return ["esxcli", "iscsi", "software", "set", "--enabled=%s" % ("true" if enabled else "false")]


def send_target_argv(verb, device, address, port):
    """``esxcli iscsi adapter discovery sendtarget add|remove -A <device> -a <address:port>``."""
    return ["esxcli", "iscsi", "adapter", "discovery", "sendtarget", verb, "-A", device,
            "-a", _vst.portal_text(address, port)]


def static_target_remove_argv(device, address, port, iqn):
    return ["esxcli", "iscsi", "adapter", "discovery", "statictarget", "remove", "-A", device,
            "-a", _vst.portal_text(address, port), "-n", iqn]


def target_chap_argv(device, address, port, name=None, secret=None, level=None, inherit=False):
    """CHAP of one send target: on (name, secret, level), off (level prohibited) or inherited from the adapter. The
    secret is an argv word here: esxcli takes it no other way (see the module docstring)."""
    argv = ["esxcli", "iscsi", "adapter", "discovery", "sendtarget", "auth", "chap", "set", "--adapter=%s" % device,
            "--address=%s" % _vst.portal_text(address, port), "--direction=uni"]
    if inherit:
        return argv + ["--inherit"]
    if name:
        argv.append("--authname=%s" % name)
    if secret:
        argv.append("--secret=%s" % secret)
    return argv + ["--level=%s" % esxcli_level(level)]


def adapter_chap_argv(device, name=None, secret=None, level=None):
    """CHAP of the adapter itself: on (name, secret, level), or back to the default (off) without a level."""
    argv = ["esxcli", "iscsi", "adapter", "auth", "chap", "set", "--direction=uni"]
    if level is None:
        return argv + ["--default", "-A", device]
    if name:
        argv.append("--authname=%s" % name)
    if secret:
        argv.append("--secret=%s" % secret)
    return argv + ["--level=%s" % esxcli_level(level), "-A", device]


def rescan_argv(device):
    return ["esxcli", "storage", "core", "adapter", "rescan", "-A", device]


def setptbl_argv(canonical_name, last_sector):
    """One VMFS partition from sector 2048 to ``last_sector`` in a new GPT."""
    return ["partedUtil", "setptbl", device_path(canonical_name), "gpt",
            _parse.vmfs_partition_spec(last_sector, VMFS_START)]


def vmkfstools_create_argv(fs_type, label, canonical_name):
    return ["vmkfstools", "-C", fs_type, "-S", label, device_path(canonical_name) + ":1"]


def vmfs_type(version):
    """vmfs6 for ESXi 6.5 and later (and an unknown version), vmfs5 before."""
    numbers = [int(x) for x in re.findall(r"\d+", version or "")[:2]]
    if len(numbers) == 2 and tuple(numbers) < (6, 5):
        return "vmfs5"
    return "vmfs6"


def usable_sectors(text):
    """(first, last) of `partedUtil getUsableSectors <dev>` ('34 131038')."""
    words = (text or "").split()
    if len(words) != 2 or not all(w.isdigit() for w in words) or int(words[0]) > int(words[1]):
        raise _parse.EsxiOutputError("The output of `partedUtil getUsableSectors` could not be read: not two sector "
                                     "numbers, first and last (%r). Nothing was changed on the strength of it."
                                     % (text or "")[:200])
    return int(words[0]), int(words[1])


def lacks_command(exc):
    """Whether a failed esxcli said it has no such command (an older host, or the lab's)."""
    return isinstance(exc, EsxiShellError) and bool(_UNKNOWN.search(exc.message or ""))


def partition_texts(table):
    """'1 (vmfs, sectors 2048-N)' per partition of a partedutil_getptbl() table, as the API engine says them."""
    return ["%d (%s, sectors %d-%d)" % (p["number"], p["type"], p["start"], p["end"]) for p in table["partitions"]]


# -- present -------------------------------------------------------------------------------------------------------

class ShellRun(_vst.Run):
    """The API engine's run (``_vsphere.storage``) whose writes go through the host's shell."""

    engine = ENGINE
    teardown_with = "the vSphere connection and its ssh options"

    def __init__(self, journal, client, check_mode, secrets=(), shell=None):
        super(ShellRun, self).__init__(journal, client, check_mode, secrets)
        self.shell = shell

    def base_undo(self, host):
        undo = super(ShellRun, self).base_undo(host)
        undo["ssh_host"] = self.shell.where
        return undo

    def _enable_software_iscsi(self, host):
        self.shell.run(software_iscsi_argv(True))

    def _add_send_target(self, host, hba, address, port, chap_name, chap_secret, level):
        # esxcli adds a send target without CHAP; it is set on the target next (set_target_chap)
        self.shell.run(send_target_argv("add", hba["device"], address, port))

    def _set_target_chap(self, host, hba, address, port, chap_name, chap_secret, level):
        try:
            self.shell.run_secret(target_chap_argv(hba["device"], address, port, chap_name, level=level),
                                  "--secret", chap_secret)
        except EsxiShellError as exc:
            if not lacks_command(exc):
                raise
            return "its esxcli has no `iscsi adapter discovery sendtarget auth chap set`"
        return None

    def _set_adapter_chap(self, host, hba, chap_name, chap_secret, level):
        self.shell.run_secret(adapter_chap_argv(hba["device"], chap_name, level=level), "--secret", chap_secret)

    def _rescan(self, host, device):
        self.shell.run(rescan_argv(device), timeout=RESCAN_TIMEOUT)

    def check_blank(self, host, lun):
        """Refuse a LUN that holds partitions, and one whose table `partedUtil getptbl` does not give, or gives for
        a disk of another size: never formatted without knowing that it is blank."""
        name = lun["canonical_name"]
        try:
            table = _parse.partedutil_getptbl(self.shell.run(["partedUtil", "getptbl", device_path(name)]))
        except VmcollectError as exc:
            raise EsxiShellError(self.blind("`partedUtil getptbl` on %s did not list the partitions of the LUN %s (%s)"
                                            % (self.shell.where, name, exc.message.rstrip(".")), lun))
        sector = lun.get("block_size") or 512
        if table["total_sectors"] * sector != lun["size_bytes"]:
            raise EsxiShellError(self.blind(
                "`partedUtil getptbl` on %s gives the device %s %d sectors of %d bytes, %s, while the API gives the "
                "LUN %s" % (self.shell.where, name, table["total_sectors"], sector,
                            _vst.size_text(table["total_sectors"] * sector), _vst.size_text(lun["size_bytes"])), lun))
        parts = partition_texts(table)
        if parts:
            raise EsxiShellError(_vst.holds_partitions(lun, parts))
        return table

    def create_datastore(self, host, lun, name, address, port):
        """The VMFS partition (partedUtil setptbl) and volume (vmkfstools -C) on the whole LUN, journaled before the
        partition table is written; the datastore as the API then lists it."""
        dev = lun["canonical_name"]
        _first, last = usable_sectors(self.shell.run(["partedUtil", "getUsableSectors", device_path(dev)]))
        if last - VMFS_START < 2047:
            raise EsxiShellError("The LUN %s has too few usable sectors (up to %d) for a VMFS partition from sector %d; "
                                 "no datastore was made." % (dev, last, VMFS_START))
        fs_type = vmfs_type(self.client.about().get("version"))
        undo = dict(self.base_undo(host), datastore_name=name, portal=_vst.portal_text(address, port),
                    fs_type=fs_type, partition=_parse.vmfs_partition_spec(last, VMFS_START),
                    lun={"canonical_name": dev, "uuid": lun["uuid"], "device_path": lun["device_path"],
                         "size_bytes": lun["size_bytes"], "serial": lun["serial"]})
        change = self.journal.record_change(
            _vst.ACTION_DATASTORE, undo, "VMFS datastore %r on the LUN %s of %s, made by its shell over SSH "
            "(partedUtil setptbl, vmkfstools -C %s; its undo unmounts it with esxcli, never deleting the volume)"
            % (name, dev, host.label, fs_type), module=_vst.MODULE)
        started = time.monotonic()
        self.shell.run(setptbl_argv(dev, last))
        try:
            out = self.shell.run(vmkfstools_create_argv(fs_type, name, dev), timeout=CREATE_TIMEOUT)
        except EsxiShellError as exc:
            raise EsxiShellError("%s The LUN %s keeps the empty VMFS partition written just before (partedUtil "
                                 "setptbl), so it is not blank any more: a rerun refuses it; give the collector a new "
                                 "LUN." % (exc.message.rstrip(), dev))
        uuid = _parse.vmkfstools_create(out)
        if uuid is None:
            raise EsxiShellError("`vmkfstools -C` on %s ended without naming the new volume (no 'Successfully created "
                                 "new volume: <uuid>' in %r); the datastore is not known to be made."
                                 % (self.shell.where, out.strip()[-300:]))
        view = self.wait_for_datastore(name, uuid)
        self.journal.mark_applied(change, moref=view["moref"] if view else None, vmfs_uuid=uuid)
        if view is None:
            raise EsxiShellError("`vmkfstools -C` on %s made the VMFS volume %s (%r) on the LUN %s, but the vSphere API "
                                 "of %s does not list it as a datastore within %d s."
                                 % (self.shell.where, uuid, name, dev, self.client.where, DATASTORE_WAIT))
        took = time.monotonic() - started
        self.changes.append("made the VMFS datastore %r (%s, VMFS %s, uuid %s) on the LUN %s with partedUtil setptbl "
                            "and vmkfstools -C %s (%.1f s)"
                            % (name, view["moref"], view["vmfs_version"], uuid, dev, fs_type, took))
        return view

    def wait_for_datastore(self, name, uuid, timeout=None):
        """The datastore_view() of the volume ``uuid`` named ``name`` once the API lists it (within ``timeout``,
        default DATASTORE_WAIT seconds), or None."""
        deadline = time.monotonic() + (DATASTORE_WAIT if timeout is None else timeout)
        while True:
            views = [v for v in _vst.datastores_named(self.client, name) if v["vmfs_uuid"] == uuid]
            if views:
                return views[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)


def _standalone(client):
    """The SSH engine logs in to the vSphere ``hostname``: it must be the ESXi host itself."""
    if client.about().get("api_type") == "VirtualCenter":
        raise EsxiShellError("%s is a vCenter; the SSH engine changes a standalone ESXi host through its own shell (a "
                             "free ESXi host, whose API is read-only, cannot be managed by a vCenter). Give the ESXi "
                             "host itself as hostname, or use engine api. Nothing was changed." % client.where)


def _runner(shell):
    def make(journal, client, check_mode, secrets=()):
        return ShellRun(journal, client, check_mode, secrets, shell=shell)
    return make


def adapter(journal, client, shell, esxi_hostname=None, check_mode=False):
    """state=adapter with the SSH engine (see _vsphere.storage.adapter)."""
    _standalone(client)
    return _vst.adapter(journal, client, esxi_hostname=esxi_hostname, check_mode=check_mode, runner=_runner(shell))


def present(journal, client, shell, address, size_bytes, datastore_name, chap_name, chap_secret,
            port=_vst.DEFAULT_PORT, chap_required=True, serial=None, canonical_name=None, esxi_hostname=None,
            check_mode=False):
    """state=present with the SSH engine (see _vsphere.storage.present)."""
    _standalone(client)
    return _vst.present(journal, client, address, size_bytes, datastore_name, chap_name, chap_secret, port=port,
                        chap_required=chap_required, serial=serial, canonical_name=canonical_name,
                        esxi_hostname=esxi_hostname, check_mode=check_mode, runner=_runner(shell))


# -- undo ----------------------------------------------------------------------------------------------------------

class ShellWriter(object):
    """The undo's writes through the host's shell (the methods and names of _vsphere.storage.ApiWriter). The SSH
    connection is made at the first write (``connect()`` returns a Shell), so a check-mode undo only reads."""

    unmount_how = "`esxcli storage filesystem unmount`"
    detach_how = "`esxcli storage core device set --state=off`"
    forget_how = "`esxcli storage core device detached remove`"

    def __init__(self, connect):
        self._connect = connect
        self._shell = None

    @property
    def shell(self):
        if self._shell is None:
            self._shell = self._connect()
        return self._shell

    def unmount(self, vmfs_uuid, name):  # pylint: disable=unused-argument
        self.shell.run(["esxcli", "storage", "filesystem", "unmount", "-u", vmfs_uuid])

    def _optional(self, argv):
        try:
            self.shell.run(argv)
        except EsxiShellError as exc:
            if not lacks_command(exc):
                raise
            return "no such command in the host's esxcli"
        return None

    def detach(self, lun):
        return self._optional(["esxcli", "storage", "core", "device", "set", "--state=off", "-d",
                               lun["canonical_name"]])

    def forget_detached(self, canonical_name):
        return self._optional(["esxcli", "storage", "core", "device", "detached", "remove", "-d", canonical_name])

    def remove_send_target(self, device, address, port):
        self.shell.run(send_target_argv("remove", device, address, port))

    def remove_static_targets(self, device, statics):
        for s in statics:
            self.shell.run(static_target_remove_argv(device, s["address"], s["port"], s["iqn"]))

    def rescan(self, device):
        self.shell.run(rescan_argv(device), timeout=RESCAN_TIMEOUT)

    def put_chap(self, device, scope, address, port, before):
        """CHAP back to ``before`` (auth_view()); a secret set before cannot be written back (ESXi never returns
        one): the name and level are."""
        off = not before.get("chap_auth_enabled") or before.get("chap_type") == _vst.PROHIBITED
        if scope == "send_target":
            if before.get("chap_inherited"):
                argv = target_chap_argv(device, address, port, inherit=True)
            elif off:
                argv = target_chap_argv(device, address, port, level=_vst.PROHIBITED)
            else:
                argv = target_chap_argv(device, address, port, before.get("chap_name"), level=before["chap_type"])
        elif off:
            argv = adapter_chap_argv(device)
        else:
            argv = adapter_chap_argv(device, before.get("chap_name"), level=before["chap_type"])
        self.shell.run(argv)

    def set_software_iscsi(self, enabled):
        self.shell.run(software_iscsi_argv(enabled))


def _undo_over_ssh(fn, what, undo, ctx):
    """ENGINE_UNDO["ssh"] of _vsphere.storage: ``fn`` (one of its undo functions) reading through the API with
    teardown's connection, writing through the host's shell with its ``ssh`` options."""
    if not HAS_PYVMOMI:
        raise EsxiShellError("Undoing %s on %s needs pyvmomi for the Python that runs teardown (it reads the host "
                             "through its API)." % (what(undo), undo["endpoint"]))
    options = ctx.options
    if not options.get("hostname"):
        raise EsxiShellError("%s is on %s and was changed through its shell over SSH (%s): give teardown its "
                             "connection (hostname, username, password, thumbprint or ca_file, and ssh) to undo it."
                             % (what(undo)[:1].upper() + what(undo)[1:], undo["endpoint"],
                                undo.get("ssh_host") or "?"))
    started = time.monotonic()
    opened = []

    def connect():
        ssh = ssh_client(options)
        opened.append(ssh)
        ssh.connect()
        return Shell(ssh)

    writer = ShellWriter(connect)
    try:
        with client_from_params(options) as client:
            sentence = fn(client, undo, ctx.check_mode, writer_for=lambda host: writer)
    finally:
        for ssh in opened:
            ssh.close()
    return sentence if ctx.check_mode else "%s (%.1f s)" % (sentence, time.monotonic() - started)


_vst.ENGINE_UNDO[ENGINE] = _undo_over_ssh
