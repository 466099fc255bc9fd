# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The KVM host's libvirt client, shared by every module that works on a KVM host.

* ``connect()`` opens a libvirt connection as a context manager (read-only for modules
  that only look) and closes it.
* ``find_domain()`` finds a VM by name or UUID; a missing VM is a sentence naming the known ones.
* ``parse_domain_xml()``, ``parse_snapshot_xml()``, ``parse_checkpoint_xml()`` and
  ``parse_qemu_img_chain()`` are pure Python (ElementTree, json): no libvirt needed.
* ``domain_info()`` gathers everything ``vm_info`` returns about one VM.

Timeouts: libvirt has no per-call timeout. The calls made here are answered by libvirtd
from its own state in well under a millisecond (lookup, state, XML, snapshot and checkpoint
lists), except ``blockInfo`` on a running VM, which asks QEMU's monitor and first waits for
the VM's job lock: if another job holds it (a memory dump, a migration), libvirt gives up
after about 30 s with "cannot acquire state change lock". A hung libvirtd hangs every call;
bound the task with Ansible's ``timeout`` keyword. So calls are kept few: one XML read gives
disks, memory and OS; then one ``blockInfo`` per disk, one XML read per snapshot and checkpoint.
QEMU's monitor is never used directly here.

A VM that is not running gets its disk sizes and backing chain from ``qemu-img info``, run
with ``-U`` (never take or wait for QEMU's image locks: another VM may use the image) and the
format libvirt declares (``--image-opts``: the guest-written content of a raw disk is never
probed for a format, and no character of a path is read as a protocol or an option).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import errno
import functools
import inspect
import json
import os
import stat
import traceback
import uuid as uuidlib
from xml.etree import ElementTree

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DomainNotFoundError,
    EvidenceSourceError,
    InvalidInputError,
    LibvirtError,
    VmcollectError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import DEFAULT_URI
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import runner as _runner

try:
    import libvirt
    # re-exported: QMP passthrough for _kvm_memory (the same package as libvirt)
    import libvirt_qemu  # noqa: F401 pylint: disable=unused-import

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    libvirt = None
    libvirt_qemu = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

QEMU_IMG_TIMEOUT = 60  # seconds for one `qemu-img info` (a hung NFS mount must not hang the task)
SKIPPED_DEVICES = {"cdrom": "cdrom"}  # disk device -> reason it is not evidence to acquire
_KNOWN_SHOWN = 30  # VM names listed in a "does not exist" message
_MAX_CHAIN = 256  # backing chain depth guard (libvirt itself stops at 200)

# virsh's words for libvirt's domain states and their reasons (virsh domstate --reason)
_STATES = {
    0: ("no state", ["unknown"]),
    1: ("running", ["unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
                    "migration canceled", "save canceled", "event wakeup", "crashed", "post-copy",
                    "post-copy failed"]),
    2: ("idle", ["unknown"]),
    3: ("paused", ["unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
                   "from snapshot", "shutting down", "creating snapshot", "crashed", "starting up",
                   "post-copy", "post-copy failed", "api error"]),
    4: ("in shutdown", ["unknown", "user"]),
    5: ("shut off", ["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                     "from snapshot", "daemon"]),
    6: ("crashed", ["unknown", "panicked"]),
    7: ("pmsuspended", ["unknown"]),
}

# libvirt's memory units (case-insensitive): decimal with a B, binary without or with iB
_UNITS = {"b": 1, "bytes": 1}
for _i, _p in enumerate("kmgtpe", 1):
    _UNITS[_p] = _UNITS[_p + "ib"] = 1024 ** _i
    _UNITS[_p + "b"] = 1000 ** _i

# libvirt driver formats that QEMU opens with another driver name
_QEMU_FORMAT = {None: "raw", "": "raw", "iso": "raw", "aio": "raw"}


# ---------------------------------------------------------------- pure XML readers


def _parse_xml(xml_text, root_tag):
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError as exc:
        raise InvalidInputError("The text given as libvirt %s XML is not well-formed XML: %s." % (root_tag, exc))
    if root.tag != root_tag:
        raise InvalidInputError("The XML given is a <%s>, not a libvirt <%s>." % (root.tag, root_tag))
    return root


def _text(elem, path):
    """Stripped text of the first element at ``path``, or None."""
    found = elem.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def to_bytes(value, unit=None):
    """A libvirt scaled integer (``<memory unit='KiB'>262144</memory>``) in bytes; KiB by default."""
    number = _int(str(value).strip()) if value is not None else None
    if number is None:
        return None
    scale = _UNITS.get((unit or "KiB").strip().lower())
    if scale is None:
        raise InvalidInputError("The memory unit %r is not one libvirt knows." % unit)
    return number * scale


def _memory(root, tag):
    elem = root.find(tag)
    if elem is None:
        return None
    return to_bytes(elem.text, elem.get("unit"))


def _source(elem, kind):
    """Where a <disk> or <backingStore> reads from, as flat keys."""
    out = {"path": None, "source_protocol": None, "source_name": None, "source_hosts": [],
           "source_pool": None, "source_volume": None}
    src = elem.find("source")
    if src is None:
        return out
    attr = {"file": "file", "block": "dev", "dir": "dir"}.get(kind)
    out["path"] = src.get(attr) if attr else None
    if kind == "network":
        out["source_protocol"] = src.get("protocol")
        out["source_name"] = src.get("name")
        for host in src.findall("host"):
            out["source_hosts"].append({"name": host.get("name"), "port": _int(host.get("port")),
                                        "transport": host.get("transport"), "socket": host.get("socket")})
    elif kind == "volume":
        out["source_pool"] = src.get("pool")
        out["source_volume"] = src.get("volume")
    return out


def chain_entry(kind, path, fmt, protocol=None, name=None, capacity=None, allocation=None):
    """One image under a disk's top image (backing file), the same keys from XML and qemu-img."""
    return {"type": kind, "path": path, "format": fmt, "source_protocol": protocol, "source_name": name,
            "capacity": capacity, "allocation": allocation}


def _backing_chain(disk):
    """The images below a disk's top image from the live XML's <backingStore> elements.

    Returns ``(chain, known)``: ``known`` is False when the XML has no <backingStore> at all
    (the XML of a VM that is not running says nothing about the chain); an empty
    ``<backingStore/>`` ends a known chain.
    """
    store = disk.find("backingStore")
    if store is None:
        return [], False
    chain = []
    while store is not None and store.get("type") and len(chain) < _MAX_CHAIN:
        kind = store.get("type")
        src = _source(store, kind)
        fmt = store.find("format")
        chain.append(chain_entry(kind, src["path"], fmt.get("type") if fmt is not None else None,
                                 src["source_protocol"], src["source_name"]))
        store = store.find("backingStore")
    return chain, True


def parse_disk(disk):
    """One <disk> element as a dict (sizes are filled in later by domain_info)."""
    kind = disk.get("type") or "file"
    device = disk.get("device") or "disk"
    target = disk.find("target")
    driver = disk.find("driver")
    boot = disk.find("boot")
    alias = disk.find("alias")
    transient = disk.find("transient")
    chain, known = _backing_chain(disk)
    info = {
        "target": target.get("dev") if target is not None else None,
        "bus": target.get("bus") if target is not None else None,
        "device": device,
        "type": kind,
        "format": driver.get("type") if driver is not None else None,
        "driver_name": driver.get("name") if driver is not None else None,
        "cache": driver.get("cache") if driver is not None else None,
        "readonly": disk.find("readonly") is not None,
        "shareable": disk.find("shareable") is not None,
        "transient": transient is not None,
        "transient_share_backing": transient is not None and transient.get("shareBacking") == "yes",
        "serial": _text(disk, "serial"),
        "boot_order": _int(boot.get("order")) if boot is not None else None,
        "alias": alias.get("name") if alias is not None else None,
        "backing_chain": chain,
        "backing_chain_from": "libvirt" if known else None,
        "capacity": None,
        "allocation": None,
        "physical": None,
        "sizes_from": None,
        "sizes_error": None,
        "skipped": device in SKIPPED_DEVICES,
        "reason": SKIPPED_DEVICES.get(device),
    }
    info.update(_source(disk, kind))
    return info


def _os(root):
    os_elem = root.find("os")
    out = dict.fromkeys(("type", "arch", "machine", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline"))
    if os_elem is None:
        return out
    os_type = os_elem.find("type")
    if os_type is not None:
        out.update(type=(os_type.text or "").strip() or None, arch=os_type.get("arch"), machine=os_type.get("machine"))
    out["firmware"] = os_elem.get("firmware")
    for key in ("loader", "nvram", "kernel", "initrd", "cmdline"):
        out[key] = _text(os_elem, key)
    return out


def parse_domain_xml(xml_text):
    """A libvirt domain XML (live or inactive) as a plain dict; see vm_info's RETURN for the keys.

    Disks whose device is in SKIPPED_DEVICES (CD-ROMs) go to ``skipped_disks``, the others to
    ``disks``, both in XML order. Sizes, state and snapshots are not in the XML: domain_info adds them.
    """
    root = _parse_xml(xml_text, "domain")
    vcpu = root.find("vcpu")
    vcpus = _int(vcpu.text.strip()) if vcpu is not None and vcpu.text else None
    vmcoreinfo = root.find("features/vmcoreinfo")
    memory = _memory(root, "memory")
    current = _memory(root, "currentMemory")
    disks = [parse_disk(d) for d in root.findall("devices/disk")]
    return {
        "name": _text(root, "name"),
        "uuid": _text(root, "uuid"),
        "id": _int(root.get("id")),
        "virt_type": root.get("type"),
        "title": _text(root, "title"),
        "description": _text(root, "description"),
        "memory_bytes": memory,
        "current_memory_bytes": current if current is not None else memory,
        "max_memory_bytes": _memory(root, "maxMemory"),
        "vcpus": vcpus,
        "vcpus_current": _int(vcpu.get("current")) if vcpu is not None and vcpu.get("current") else vcpus,
        "os": _os(root),
        "vmcoreinfo": vmcoreinfo is not None and vmcoreinfo.get("state", "on") != "off",
        "disks": [d for d in disks if not d["skipped"]],
        "skipped_disks": [d for d in disks if d["skipped"]],
    }


def _created(root):
    created = _int(_text(root, "creationTime"))
    if created is None:
        return None, None
    utc = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    return created, utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_snapshot_xml(xml_text, current=False):
    """A <domainsnapshot> as a dict: name, times, state, memory, disks, parent, current."""
    root = _parse_xml(xml_text, "domainsnapshot")
    created, created_utc = _created(root)
    state = _text(root, "state")
    mem = root.find("memory")
    memory = mem.get("snapshot") if mem is not None else None
    if memory is None:  # libvirt before 1.0.1 wrote no <memory>: a running snapshot held RAM
        memory = "no" if state in (None, "shutoff", "disk-snapshot") else "internal"
    disks = []
    for disk in root.findall("disks/disk"):
        src = disk.find("source")
        disks.append({"target": disk.get("name"), "snapshot": disk.get("snapshot"),
                      "path": (src.get("file") or src.get("dev")) if src is not None else None})
    return {
        "name": _text(root, "name"),
        "description": _text(root, "description"),
        "created": created,
        "created_utc": created_utc,
        "state": state,
        "parent": _text(root, "parent/name"),
        "current": bool(current),
        "memory": memory,
        "memory_file": mem.get("file") if mem is not None else None,
        "disk_only": memory not in ("internal", "external"),
        "disks": disks,
    }


def parse_checkpoint_xml(xml_text):
    """A <domaincheckpoint> as a dict: name, times, parent, disks with their bitmaps."""
    root = _parse_xml(xml_text, "domaincheckpoint")
    created, created_utc = _created(root)
    disks = [{"target": d.get("name"), "checkpoint": d.get("checkpoint"), "bitmap": d.get("bitmap")}
             for d in root.findall("disks/disk")]
    return {
        "name": _text(root, "name"),
        "description": _text(root, "description"),
        "created": created,
        "created_utc": created_utc,
        "parent": _text(root, "parent/name"),
        "disks": disks,
    }


def power_state(state, reason):
    """libvirt's (state, reason) integers in virsh's words: ('shut off', 'destroyed')."""
    name, reasons = _STATES.get(state, ("unknown state %s" % state, []))
    if reason is not None and 0 <= reason < len(reasons):
        return name, reasons[reason]
    return name, "reason %s" % reason


# ---------------------------------------------------------------- qemu-img (VM not running)


def _path_type(path):
    try:
        return "block" if stat.S_ISBLK(os.stat(path).st_mode) else "file"
    except (OSError, ValueError):
        return "file" if os.path.isabs(path) else "network"


def parse_qemu_img_chain(json_text):
    """``qemu-img info --output=json --backing-chain`` as a list of chain entries, top image first."""
    try:
        images = json.loads(json_text)
    except ValueError as exc:
        raise EvidenceSourceError("qemu-img gave output that is not JSON (%s)." % exc)
    if isinstance(images, dict):
        images = [images]
    return [chain_entry(_path_type(i.get("filename", "")), i.get("filename"), i.get("format"),
                        capacity=i.get("virtual-size"), allocation=i.get("actual-size"))
            for i in images]


def _qemu_img_message(stderr, opts):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else "no message"
    if message.startswith("qemu-img: "):
        message = message[len("qemu-img: "):]
    prefix = "Could not open '%s': " % opts
    if message.startswith(prefix):
        message = message[len(prefix):]
    return message.rstrip(".")


def container_size(path, st):
    """Bytes the image takes as a container: a file's length, a block device's size."""
    if not stat.S_ISBLK(st.st_mode):
        return st.st_size
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def qemu_img_sizes(qemu_img, path, fmt, timeout=QEMU_IMG_TIMEOUT):
    """Sizes and backing chain of an image from ``qemu-img info -U`` (never locks, never probes).

    Returns dict: capacity, allocation, physical, backing_chain (images below the top one).
    Raises EvidenceSourceError with a sentence if qemu-img is missing, fails or hangs.
    """
    if not qemu_img:
        raise EvidenceSourceError(
            "qemu-img is not installed on this host (Debian/Ubuntu package qemu-utils); it is needed to read "
            "the sizes and backing chain of %s while its VM is not running." % path, failed_path=path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise EvidenceSourceError("The disk image %s cannot be read: %s." % (path, exc.strerror), failed_path=path)
    protocol = "host_device" if stat.S_ISBLK(st.st_mode) else "file"
    opts = "driver=%s,file.driver=%s,file.filename=%s" % (_QEMU_FORMAT.get(fmt, fmt), protocol, path.replace(",", ",,"))
    cmd = [qemu_img, "info", "-U", "--output=json", "--backing-chain", "--image-opts", opts]
    rc, out, err = _runner.run(cmd, timeout=timeout, env={"LC_ALL": "C"})
    if rc == _runner.TIMED_OUT_RC:
        raise EvidenceSourceError("qemu-img info did not answer within %s s about %s; the storage under it may "
                                  "be hanging (a dead NFS or iSCSI mount?)." % (timeout, path), failed_path=path)
    if rc == _runner.NOT_STARTED_RC:
        raise EvidenceSourceError("%s; it is needed to read %s." % (err, path), failed_path=path)
    if rc != 0:
        raise EvidenceSourceError("qemu-img cannot read the %s image %s: %s."
                                  % (fmt or "raw", path, _qemu_img_message(err, opts)), failed_path=path)
    images = parse_qemu_img_chain(out)
    top = images[0]
    return {"capacity": top["capacity"], "allocation": top["allocation"],
            "physical": container_size(path, st), "backing_chain": images[1:]}


# ---------------------------------------------------------------- libvirt


def _quiet(ctx, error):
    """libvirt prints every error on stderr unless a handler is registered; ours are raised instead."""


def _message(exc):
    text = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    return str(text or exc).strip().rstrip(".")


def _call(what, func, *args):
    """Run a libvirt call; a libvirt error becomes LibvirtError("libvirt could not <what>: ...")."""
    try:
        return func(*args)
    except libvirt.libvirtError as exc:
        raise LibvirtError("libvirt could not %s: %s. %s." % (what, _message(exc), _libvirt_hint(exc.get_error_code())),
                           libvirt_error_code=exc.get_error_code())


# libvirt error codes (virErrorNumber names) -> what the responder can do about it
_LIBVIRT_HINTS = (
    ("VIR_ERR_NO_DOMAIN", "The VM was undefined or renamed while this ran; check it with `virsh list --all --uuid`, "
                          "then run it again"),
    ("VIR_ERR_OPERATION_INVALID", "The VM changed state while this ran (stopped, started or paused); check it with "
                                  "`virsh domstate --reason`, then run it again"),
    ("VIR_ERR_OPERATION_TIMEOUT", "Another job holds the VM (a migration, a dump, a backup); wait until "
                                  "`virsh domjobinfo` shows none, then run it again"),
    ("VIR_ERR_AGENT_UNRESPONSIVE", "The guest agent does not answer; run it again without quiesce, or once the agent "
                                   "runs in the guest"),
    ("VIR_ERR_NO_CONNECT", "libvirtd went away while this ran; check `systemctl status libvirtd`, then run it again"),
    ("VIR_ERR_RPC", "The connection to libvirtd broke while this ran; check `systemctl status libvirtd`, then run it "
                    "again"),
    ("VIR_ERR_ACCESS_DENIED", "libvirt refused this user; run the task with become, or as a user libvirt lets manage "
                              "VMs"),
    ("VIR_ERR_OPERATION_DENIED", "libvirt refused this user; run the task with become, or as a user libvirt lets "
                                 "manage VMs"),
)
_OS_HINTS = {
    errno.ENOSPC: "Free space on that filesystem, then run it again",
    errno.EDQUOT: "Free space in that user's quota, then run it again",
    errno.EACCES: "Check that the module's user (and QEMU's user, where QEMU writes) may use that path, then run it "
                  "again",
    errno.EPERM: "Check that the module's user (and QEMU's user, where QEMU writes) may use that path, then run it "
                 "again",
    errno.ENOENT: "The file or folder was not there (or vanished while this ran); check it, then run it again",
    errno.EIO: "The storage under that path fails (a lost iSCSI link or a dying disk?); check it, then run it again",
}
_TEARDOWN_HINT = "If the task changed the host before it failed, dfir.vmcollect.teardown for the case puts it back."


def _vm_label(name, uuid):
    if name and uuid:
        return "VM '%s' (%s)" % (name, uuid)
    if name or uuid:
        return "VM %s" % ("'%s'" % name if name else uuid)
    return "the VM"


def _libvirt_hint(code):
    for attr, hint in _LIBVIRT_HINTS:
        if code is not None and code == getattr(libvirt, attr, None):
            return hint
    return ("Check the VM with `virsh dominfo` and libvirtd's log (`journalctl -u libvirtd`), then run it again")


def convert_error(exc, step, name=None, uuid=None, error=LibvirtError, teardown_hint=True):
    """``exc`` (libvirt.libvirtError or OSError) as the collection's ``error``: a sentence naming the
    VM, the step, libvirt's (or the system's) own message and what to do; None for anything else."""
    label = _vm_label(name, uuid)
    details = {"vm_name": name, "vm_uuid": uuid, "step": step}
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        code = exc.get_error_code()
        says, hint = "libvirt says: %s" % _message(exc), _libvirt_hint(code)
        details["libvirt_error_code"] = code
    elif isinstance(exc, EnvironmentError):
        where = exc.filename if getattr(exc, "filename", None) else None
        says = "%s%s" % (exc.strerror or exc, " (%s)" % where if where else "")
        hint = _OS_HINTS.get(exc.errno, "Check the path named, then run it again")
        details.update(errno=exc.errno, failed_path=where)
    else:
        return None
    message = "Could not %s (%s): %s. %s." % (step, label, str(says).rstrip("."), hint)
    if teardown_hint:
        message += " " + _TEARDOWN_HINT
    return error(message, **details)


def _vm_of_call(signature, args, kwargs):
    """(name, uuid) of the VM a call is about: its ``name``/``uuid`` arguments, or its ``undo`` record's."""
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return None, None
    undo = bound.get("undo")
    if isinstance(undo, dict):
        return undo.get("name"), undo.get("uuid")
    return bound.get("name"), bound.get("uuid")


def libvirt_errors(step, error=LibvirtError, teardown_hint=True):
    """Decorator for the public entry points of the KVM module_utils (after amazon.aws's error handler
    decorators): a ``libvirt.libvirtError`` or ``OSError`` that escapes the function becomes ``error``
    with ``convert_error``'s sentence, so a module reports it instead of a MODULE FAILURE traceback. The
    VM is named from the call's ``name``/``uuid`` arguments or its ``undo`` record (undo handlers, which
    pass ``teardown_hint=False``: teardown is what runs them). The collection's own errors pass as they are.
    """

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except VmcollectError:
                raise
            except Exception as exc:  # pylint: disable=broad-except
                name, uuid = _vm_of_call(signature, args, kwargs)
                converted = convert_error(exc, step, name, uuid, error, teardown_hint)
                if converted is None:
                    raise
                raise converted

        return wrapper

    return decorate


def _optional(func, *args):
    """A libvirt call whose answer is a nice-to-have: None when libvirt cannot tell."""
    try:
        return func(*args)
    except libvirt.libvirtError:
        return None


def require_libvirt():
    if not HAS_LIBVIRT:
        raise LibvirtError("The Python bindings of libvirt are not installed on this host "
                           "(python3-libvirt on Debian/Ubuntu, libvirt-python from PyPI).")


@contextlib.contextmanager
def connect(uri=DEFAULT_URI, readonly=False):
    """A libvirt connection to ``uri``, closed on exit; ``readonly`` for modules that only look."""
    require_libvirt()
    libvirt.registerErrorHandler(_quiet, None)
    conn = None
    reason = "libvirt returned no connection"
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        reason = _message(exc)
    if conn is None:
        raise LibvirtError("Cannot connect to libvirt at %s: %s; is libvirtd running on this host, and may this "
                           "user use it?" % (uri, reason), uri=uri)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def normalize_uuid(value):
    try:
        return str(uuidlib.UUID(str(value).strip()))
    except ValueError:
        raise InvalidInputError("'%s' is not a UUID (the form is 6c616276-6d63-4000-8000-76696374696d)." % value)


def known_domains(conn, with_uuid=False):
    """Names of the VMs libvirt knows (running or not), sorted; with their UUIDs if asked."""
    domains = _optional(conn.listAllDomains, 0) or []
    if with_uuid:
        return sorted("%s (%s)" % (d.name(), d.UUIDString()) for d in domains)
    return sorted(d.name() for d in domains)


def _known_text(known):
    if not known:
        return "none"
    shown = ", ".join(known[:_KNOWN_SHOWN])
    if len(known) > _KNOWN_SHOWN:
        shown += " and %d more" % (len(known) - _KNOWN_SHOWN)
    return shown


@contextlib.contextmanager
def domain_for_undo(uri, uuid):
    """For undo handlers: ``(conn, domain)`` of the VM with ``uuid`` in an open connection, the domain None when
    the VM is gone (each handler says in its own words what that means for its change)."""
    with connect(uri) as conn:
        try:
            dom = find_domain(conn, uuid=uuid)
        except DomainNotFoundError:
            dom = None
        yield conn, dom


def find_domain(conn, name=None, uuid=None):
    """The VM named ``name`` or with UUID ``uuid`` (exactly one of them); DomainNotFoundError if none."""
    if (name is None) == (uuid is None):
        raise InvalidInputError("Give either the name or the UUID of the VM, not both and not neither.")
    if uuid is not None:
        uuid = normalize_uuid(uuid)
        label, lookup, key = "with UUID %s" % uuid, conn.lookupByUUIDString, uuid
    else:
        label, lookup, key = "'%s'" % name, conn.lookupByName, name
    try:
        return lookup(key)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise LibvirtError("libvirt could not look up the VM %s: %s." % (label, _message(exc)),
                               vm_name=name, vm_uuid=uuid)
    known = known_domains(conn, with_uuid=uuid is not None)
    raise DomainNotFoundError("The VM %s does not exist on this host (known: %s)." % (label, _known_text(known)),
                              vm_name=name, vm_uuid=uuid, known_vms=known)


def _version(number):
    """libvirt's version integers (major * 1,000,000 + minor * 1,000 + micro) as text."""
    if not number:
        return None
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


def host_info(conn):
    """Who answered: URI, host name, libvirt and hypervisor versions (for the custody record).

    ``tools`` is the provider contract's view of the same: tool name -> version, for the case manifest."""
    info = {
        "uri": _optional(conn.getURI),
        "hostname": _optional(conn.getHostname),
        "libvirt_version": _version(_optional(conn.getLibVersion)),
        "hypervisor": _optional(conn.getType),
        "hypervisor_version": _version(_optional(conn.getVersion)),
    }
    info["tools"] = {"libvirt": info["libvirt_version"] or "unknown", "qemu": info["hypervisor_version"] or "unknown"}
    return info


def _no_sizes(disk, why):
    return {"sizes_error": "The sizes of disk %s (%s) are unknown: %s." % (disk["target"], disk["path"] or disk["type"], why)}


def disk_sizes(dom, disk, active, qemu_img, timeout=QEMU_IMG_TIMEOUT):
    """Fields to update a parsed disk with: sizes (and, VM not running, the chain) or sizes_error.

    A running VM: ``dom.blockInfo`` (libvirt asks QEMU). Otherwise: ``qemu-img info -U`` on
    local files and block devices; network and pool-volume disks of a VM that is not running
    are not measured. Never raises for one disk: a disk that cannot be measured is a sentence.
    """
    if active:
        try:
            capacity, allocation, physical = dom.blockInfo(disk["target"], 0)
        except libvirt.libvirtError as exc:
            return _no_sizes(disk, "libvirt could not tell (%s)" % _message(exc))
        return {"capacity": capacity, "allocation": allocation, "physical": physical, "sizes_from": "libvirt"}
    if disk["type"] not in ("file", "block"):
        return _no_sizes(disk, "a %s disk of a VM that is not running is not measured" % disk["type"])
    if not disk["path"]:
        return _no_sizes(disk, "the disk has no source")
    try:
        sizes = qemu_img_sizes(qemu_img, disk["path"], disk["format"], timeout)
    except EvidenceSourceError as exc:
        return {"sizes_error": exc.message}
    sizes.update(sizes_from="qemu-img", backing_chain_from="qemu-img")
    return sizes


def list_snapshots(dom, vm_label):
    """The VM's libvirt snapshots, oldest first (one XML read per snapshot)."""
    result = []
    for snap in _call("list the snapshots of the VM %s" % vm_label, dom.listAllSnapshots, 0):
        what = "read the snapshot '%s' of the VM %s" % (snap.getName(), vm_label)
        result.append(parse_snapshot_xml(_call(what, snap.getXMLDesc, 0), _call(what, snap.isCurrent, 0)))
    return sorted(result, key=lambda s: (s["created"] or 0, s["name"] or ""))


def list_checkpoints(dom, vm_label):
    """The VM's libvirt checkpoints, oldest first; None if this libvirt has no checkpoint API."""
    if not hasattr(dom, "listAllCheckpoints"):
        return None
    no_domain = getattr(libvirt, "VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN", 0)
    result = []
    for cp in _call("list the checkpoints of the VM %s" % vm_label, dom.listAllCheckpoints, 0):
        what = "read the checkpoint '%s' of the VM %s" % (cp.getName(), vm_label)
        result.append(parse_checkpoint_xml(_call(what, cp.getXMLDesc, no_domain)))
    return sorted(result, key=lambda c: (c["created"] or 0, c["name"] or ""))


def domain_info(conn, dom, include_xml=False, qemu_img=None, qemu_img_timeout=QEMU_IMG_TIMEOUT):
    """Everything vm_info returns about one VM (see its RETURN); reads only.

    The state is read before the XML: a VM that starts in between is measured with
    ``qemu-img -U`` (safe on an image in use), one that stops with blockInfo (libvirt then
    reads the image itself).
    """
    label = "'%s'" % _call("read the name of a VM", dom.name)
    state, reason = _call("read the state of the VM %s" % label, dom.state, 0)
    active = bool(_call("tell whether the VM %s is running" % label, dom.isActive))
    live_xml = _call("read the XML of the VM %s" % label, dom.XMLDesc, 0)
    info = parse_domain_xml(live_xml)
    info["state"], info["state_reason"] = power_state(state, reason)
    info["active"] = active
    info["persistent"] = bool(_call("tell whether the VM %s is persistent" % label, dom.isPersistent))
    autostart = _optional(dom.autostart)
    managed_save = _optional(dom.hasManagedSaveImage, 0)
    info["autostart"] = None if autostart is None else bool(autostart)
    info["managed_save"] = None if managed_save is None else bool(managed_save)
    for disk in info["disks"]:
        disk.update(disk_sizes(dom, disk, active, qemu_img, qemu_img_timeout))
    info["snapshots"] = list_snapshots(dom, label)
    info["checkpoints"] = list_checkpoints(dom, label)
    info["host"] = host_info(conn)
    if include_xml:
        inactive = None
        if info["persistent"]:
            inactive = _call("read the inactive XML of the VM %s" % label, dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
        info["xml"] = {"live": live_xml, "inactive": inactive}
    return info


@libvirt_errors("read the VM's facts", teardown_hint=False)
def vm_info(uri, name=None, uuid=None, include_xml=False, qemu_img=None):
    """vm_info's entry point: a read-only connection, the VM by name or UUID, domain_info()."""
    with connect(uri, readonly=True) as conn:
        return domain_info(conn, find_domain(conn, name=name, uuid=uuid), include_xml=include_xml, qemu_img=qemu_img)
