"""Smoke test of the lab's vSphere simulator with pyvmomi.

    python lab/vcsim/smoke_test.py ENVFILE

ENVFILE is the JSON file written by ``vcsim -env`` (``lab/vcsim/vcsim.sh start``).
Exit 0 when every step works, 1 otherwise. Steps:

1. TLS: the server certificate is pinned. The SSL context trusts only the
   certificate from ENVFILE (``cadata``, hostname checked), a connection with
   the system trust store must fail, and the peer's SHA-256 thumbprint must
   equal ``thumbprint_sha256``.
2. Login with SmartConnect and that context.
3. List the VMs through a ContainerView + PropertyCollector retrieve (what a fast
   client does; step 7 also reads ``vm.snapshot`` directly).
4. Create a memory snapshot on a powered-on VM, wait for the task through the
   PropertyCollector (WaitForUpdatesEx with a timeout, no task.info polling).
5. Remove it the same way.
6. Write real bytes into the datastore's local folder and fetch a slice of
   them over HTTPS GET ``/folder/<path>?dcPath=<dc>&dsName=<ds>`` with a Range
   header (session cookie sent, as a real ESXi wants it); without the cookie the
   simulator answers 401, as ESXi does.
7. pyvmomi >= 8 fixes of the simulator: reading ``vm.snapshot`` of a VM without
   snapshots directly gives None; ``task.info`` of a FileManager task is readable.

When the simulator runs with -lab-vms (env ``lab.content.enabled``), step 4 snapshots
the lab VM "Win Srv [prod] 01" (CBT on, real disk, guest heartbeat) and also checks the
ESXi behaviour of lab/vcsim/BEHAVIOUR-vms.md: the .vmem (guest RAM) and .vmsn on disk,
the delta in layoutEx, the frozen base unchanged while the heartbeat goes on in the SEsparse
delta, QueryChangedDiskAreas("*"), a thin CopyVirtualDisk of the frozen base (sparse and
byte-equal); step 5 checks the consolidation (the delta's writes in the base, files gone).
"""

import hashlib
import http.client
import re
import json
import os
import ssl
import struct
import sys
import time
import urllib.parse

try:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl
    import pyVmomi
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit("smoke_test: pyvmomi is not installed (pip install 'pyvmomi>=8'): %s" % exc)

TASK_TIMEOUT = 30  # seconds, whole wait for one task
WAIT_SLICE = 5  # seconds, maxWaitSeconds of one WaitForUpdatesEx call


class SmokeError(Exception):
    pass


def log(msg):
    print("smoke_test: " + msg, flush=True)


def check(cond, msg):
    if not cond:
        raise SmokeError(msg)


def ssl_context(env):
    """A context that trusts only the simulator's own certificate."""
    ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cadata=env["cert_pem"])
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def norm_thumbprint(value):
    return value.replace(":", "").lower()


def check_tls(env, ctx):
    host, port = env["host"], env["port"]
    # The pinned context verifies and the peer cert is the announced one.
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    conn.request("GET", "/sdk/vimServiceVersions.xml")
    resp = conn.getresponse()
    resp.read()
    der = conn.sock.getpeercert(binary_form=True)
    conn.close()
    check(resp.status == 200, "GET /sdk/vimServiceVersions.xml: HTTP %d" % resp.status)
    got = hashlib.sha256(der).hexdigest()
    check(got == norm_thumbprint(env["thumbprint_sha256"]),
          "peer SHA-256 thumbprint %s != env %s" % (got, env["thumbprint_sha256"]))
    # Verification is real: the system trust store must reject the server.
    try:
        bad = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(), timeout=10)
        bad.request("GET", "/sdk/vimServiceVersions.xml")
        bad.getresponse().read()
        bad.close()
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise SmokeError("a default SSL context accepted the self-signed certificate")
    log("TLS ok: certificate pinned (cadata + hostname check), SHA-256 %s…, system CAs rejected it"
        % env["thumbprint_sha256"][:23])


def retrieve(pc, obj_specs, prop_specs):
    """RetrievePropertiesEx + ContinueRetrievePropertiesEx -> {moref: {prop: value}}."""
    spec = vmodl.query.PropertyCollector.FilterSpec(objectSet=obj_specs, propSet=prop_specs)
    out = {}
    res = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    while res:
        for oc in res.objects:
            out[oc.obj] = {p.name: p.val for p in (oc.propSet or [])}
        if not res.token:
            break
        res = pc.ContinueRetrievePropertiesEx(res.token)
    return out


def list_vms(si):
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        obj = vmodl.query.PropertyCollector.ObjectSpec(
            obj=view, skip=True,
            selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                name="view", type=vim.view.ContainerView, path="view", skip=False)])
        props = vmodl.query.PropertyCollector.PropertySpec(
            type=vim.VirtualMachine,
            pathSet=["name", "runtime.powerState", "config.files.vmPathName", "config.uuid"])
        return retrieve(content.propertyCollector, [obj], [props])
    finally:
        view.DestroyView()


def vm_props(si, vm, paths):
    obj = vmodl.query.PropertyCollector.ObjectSpec(obj=vm, skip=False)
    props = vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=paths)
    return retrieve(si.content.propertyCollector, [obj], [props]).get(vm, {})


def wait_task(si, task, want_result=False, timeout=TASK_TIMEOUT):
    """Wait for a task with a private PropertyCollector and WaitForUpdatesEx.

    Returns info.result (when want_result) after success; raises on error or timeout.
    Only info.state / info.error (and info.result on request) are read: never task.info.
    """
    paths = ["info.state", "info.error"] + (["info.result"] if want_result else [])
    pc = si.content.propertyCollector.CreatePropertyCollector()
    try:
        pc.CreateFilter(vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.Task, pathSet=paths)]),
            partialUpdates=True)
        seen = {}
        version = ""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SmokeError("task %s: no result within %d s (last state %s)"
                                 % (task._moId, timeout, seen.get("info.state")))
            opts = vmodl.query.PropertyCollector.WaitOptions(
                maxWaitSeconds=max(1, min(WAIT_SLICE, int(left))))
            update = pc.WaitForUpdatesEx(version, opts)
            if update is None:  # maxWaitSeconds elapsed without change
                continue
            version = update.version
            for fs in update.filterSet or []:
                for ou in fs.objectSet or []:
                    for ch in ou.changeSet or []:
                        seen[ch.name] = ch.val
                        if ch.name == "info" and ch.val is not None:  # whole info object
                            seen["info.state"] = ch.val.state
                            seen["info.error"] = ch.val.error
                            seen["info.result"] = ch.val.result
            state = seen.get("info.state")
            if state == vim.TaskInfo.State.success:
                return seen.get("info.result")
            if state == vim.TaskInfo.State.error:
                err = seen.get("info.error")
                raise SmokeError("task %s failed: %s" % (
                    task._moId, getattr(err, "localizedMessage", None) or err))
    finally:
        pc.DestroyPropertyCollector()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_extent(path, offset, length):
    """length bytes at offset of one disk extent: a flat file as it is; a delta's SEsparse extent (BEHAVIOUR-vms.md)
    through its grain directory and grain tables, zeros where the delta holds no 4 KiB grain."""
    def u64(fh, pos):
        fh.seek(pos)
        raw = fh.read(8)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0

    with open(path, "rb") as fh:
        if u64(fh, 0) != 0xCAFEBABE:
            fh.seek(offset)
            return fh.read(length)
        fh.seek(0)
        h = struct.unpack("<26Q", fh.read(208))
        gd, gt, grains = h[16], h[18], h[24]
        out = b""
        while len(out) < length:
            vg, within = divmod(offset + len(out), 4096)
            n = min(length - len(out), 4096 - within)
            data = b""
            de = u64(fh, gd * 512 + vg // 4096 * 8)
            if de >> 32 == 0x10000000:
                te = u64(fh, (gt + (de & 0xFFFFFFFF) * 64) * 512 + vg % 4096 * 8)
                if te >> 60 == 3:
                    g = ((te >> 48) & 0xFFF) | ((te & 0xFFFFFFFFFFFF) << 12)
                    fh.seek((grains + g * 8) * 512 + within)
                    data = fh.read(n)
            out += data.ljust(n, b"\0")
        return out


def heartbeat(path, offset):
    """Counter of the lab guest's heartbeat block at offset of a disk extent (0 if none)."""
    m = re.search(rb"LAB-HEARTBEAT v1 .* counter=(\d+) ", read_extent(path, offset, 512))
    return int(m.group(1)) if m else 0


def data_extents(path, size):
    out, off = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            off = end
    finally:
        os.close(fd)
    return out


def poll_task(task, timeout=TASK_TIMEOUT):
    """Wait by reading task.info (what pyvmomi 8 failed on against plain 0.24.2)."""
    deadline = time.monotonic() + timeout
    while True:
        info = task.info
        if info.state in (vim.TaskInfo.State.success, vim.TaskInfo.State.error):
            return info
        check(time.monotonic() < deadline, "task %s: no result within %d s" % (task._moId, timeout))
        time.sleep(0.05)


def ds_local(env, dspath):
    ds, rel = dspath[1:].split("] ", 1)
    roots = {d["name"]: d["local_path"] for d in env["datastores"]}
    return os.path.join(roots[ds], *rel.split("/"))


def lab_snapshot_checks(si, env, vm, lab_vm, snap):
    """ESXi behaviour of a memory snapshot of the CBT lab VM (BEHAVIOUR-vms.md)."""
    disk = lab_vm["disks"][0]
    props = vm_props(si, vm, ["layoutEx.file", "config.hardware.device"])
    by_type = {f.type: f.name for f in props["layoutEx.file"]}
    check("snapshotMemory" in by_type and "snapshotData" in by_type, "no .vmem/.vmsn in layoutEx")
    vmem, vmsn = ds_local(env, by_type["snapshotMemory"]), ds_local(env, by_type["snapshotData"])
    check(os.path.getsize(vmem) == 256 << 20, ".vmem is not 256 MiB")
    with open(vmsn, "rb") as fh:
        check(fh.read(4) == b"\xd2\xbe\xd2\xbe", ".vmsn magic")
    with open(vmem, "rb") as fh:
        check(env["lab"]["content"]["ram_marker"].encode() in fh.read(), "RAM marker not in the .vmem")
    backing = next(d.backing for d in props["config.hardware.device"] if d.key == disk["key"])
    check(re.search(r"-\d{6}\.vmdk$", backing.fileName) and backing.parent.fileName == disk["descriptor"],
          "disk backing is not a delta over the base")
    flat, hb = disk["flat_local"], disk["heartbeat_offset"]
    delta = ds_local(env, backing.fileName[:-len(".vmdk")] + "-sesparse.vmdk")
    h1, d1 = sha256_file(flat), heartbeat(delta, hb)
    time.sleep(1.0)
    check(sha256_file(flat) == h1, "the frozen base changed after the snapshot")
    check(heartbeat(delta, hb) > d1 > heartbeat(flat, hb), "the guest heartbeat does not go on in the delta")
    areas = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=disk["key"], startOffset=0, changeId="*")
    got = [(a.start, a.start + a.length) for a in areas.changedArea]
    check(got == data_extents(flat, disk["virtual_bytes"]), "CBT '*' areas differ from the base's data extents")
    content = si.RetrieveContent()
    dc = next(e for e in content.rootFolder.childEntity if e.name == env["datacenters"][0])
    dest = "[LocalDS_0] smoke-%d/base.vmdk" % os.getpid()
    spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(diskType="thin", adapterType="lsiLogic",
                                                            capacityKb=disk["virtual_bytes"] // 1024)
    info = poll_task(content.virtualDiskManager.CopyVirtualDisk_Task(
        sourceName=disk["descriptor"], sourceDatacenter=dc, destName=dest, destSpec=spec))
    check(info.state == "success", "CopyVirtualDisk_Task: %s" % info.error)
    clone = ds_local(env, dest.replace(".vmdk", "-flat.vmdk"))
    st = os.stat(clone)
    check(st.st_blocks * 512 < st.st_size // 4 and sha256_file(clone) == h1, "thin clone not sparse or differs")
    poll_task(content.virtualDiskManager.DeleteVirtualDisk_Task(name=dest, datacenter=dc))
    log("lab VM %s: .vmem 256 MiB with the RAM marker, .vmsn, delta backing; base unchanged over 1 s while "
        "the heartbeat goes on in the delta; CBT '*' = %d data extents; thin clone %d KiB allocated, byte-equal"
        % (lab_vm["name"], len(got), st.st_blocks // 2))
    return disk, delta


def snapshot_cycle(si, env, vms):
    powered = [vm for vm, p in sorted(vms.items(), key=lambda kv: kv[1]["name"])
               if p.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn]
    check(powered, "no powered-on VM to snapshot")
    content = env.get("lab", {}).get("content", {})
    lab_vm = None
    if content.get("enabled"):
        lab_vm = next(v for v in content["vms"] if v["role"] == "cbt")
        powered = [vm for vm in powered if vm._moId == lab_vm["moref"]]
        check(powered, "lab VM %s is not powered on" % lab_vm["name"])
    vm = powered[0]
    name = vms[vm]["name"]
    snap_name = "smoke-%d" % os.getpid()

    t0 = time.monotonic()
    task = vm.CreateSnapshot_Task(name=snap_name, description="vcsim smoke test",
                                  memory=True, quiesce=False)
    snap = wait_task(si, task, want_result=True)
    check(isinstance(snap, vim.vm.Snapshot), "CreateSnapshot result is %r, not a snapshot" % (snap,))
    log("CreateSnapshot_Task(memory=True) on %s -> %s in %.2f s (waited via WaitForUpdatesEx)"
        % (name, snap._moId, time.monotonic() - t0))

    # The VM now has a snapshot: reading the property through the collector is safe.
    props = vm_props(si, vm, ["snapshot", "layoutEx.file"])
    info = props.get("snapshot")
    check(info is not None and info.currentSnapshot == snap,
          "vm.snapshot.currentSnapshot is not the new snapshot")
    roots = [s.name for s in info.rootSnapshotList]
    check(snap_name in roots, "snapshot %s not in rootSnapshotList %s" % (snap_name, roots))
    snap_files = [f.name for f in props.get("layoutEx.file") or []
                  if f.type in ("snapshotData", "snapshotMemory", "snapshotList")]
    ds_local = {d["name"]: d["local_path"] for d in env["datastores"]}
    on_disk = []
    for f in snap_files:
        ds_name, rel = f[1:].split("] ", 1)
        local = os.path.join(ds_local.get(ds_name, "?"), *rel.split("/"))
        if os.path.exists(local):
            on_disk.append("%s (%d bytes)" % (os.path.basename(local), os.path.getsize(local)))
    log("snapshot tree %s; snapshot files in layoutEx: %s; on disk: %s"
        % (roots, snap_files or "none", on_disk or "none"))
    disk, delta = lab_snapshot_checks(si, env, vm, lab_vm, snap) if lab_vm else (None, None)

    t0 = time.monotonic()
    task = snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
    wait_task(si, task)
    props = vm_props(si, vm, ["snapshot"])
    left = props.get("snapshot")
    check(left is None or not left.rootSnapshotList,
          "snapshot still present after RemoveSnapshot_Task")
    log("RemoveSnapshot_Task -> success in %.2f s; VM %s has no snapshot left"
        % (time.monotonic() - t0, name))
    if disk is not None:
        check(not os.path.exists(delta), "the delta is still there after the consolidation")
        check(heartbeat(disk["flat_local"], disk["heartbeat_offset"]) > 0, "no heartbeat in the base")
        props = vm_props(si, vm, ["runtime.consolidationNeeded", "layoutEx.file"])
        check(props.get("runtime.consolidationNeeded") is False, "consolidationNeeded")
        check(not [f for f in props["layoutEx.file"] if f.type in ("snapshotData", "snapshotMemory")],
              "snapshot files still in layoutEx")
        log("consolidated: delta, .vmsn and .vmem gone, the heartbeat written meanwhile is in the base")
    return vm, name


def range_get(si, env, ctx):
    ds = env["datastores"][0]
    vm0 = env["vms"][0] if env["vms"] else None
    rel_dir = ""
    if vm0 and vm0["vmx_path"].startswith("[%s] " % ds["name"]):
        rel_dir = os.path.dirname(vm0["vmx_path"].split("] ", 1)[1])
    rel = "/".join(p for p in (rel_dir, "smoke-%d.bin" % os.getpid()) if p)
    local = os.path.join(ds["local_path"], *rel.split("/"))
    check(os.path.isdir(ds["local_path"]), "datastore folder %s missing" % ds["local_path"])

    data = os.urandom(256 * 1024)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, "wb") as fh:
        fh.write(data)
    try:
        first, last = 1000, 70999  # inclusive byte range
        query = urllib.parse.urlencode({"dcPath": ds["datacenter"], "dsName": ds["name"]})
        path = "/folder/%s?%s" % (urllib.parse.quote(rel), query)
        headers = {"Range": "bytes=%d-%d" % (first, last)}
        cookie = getattr(si._stub, "cookie", None)
        if cookie:
            headers["Cookie"] = cookie
        conn = http.client.HTTPSConnection(env["host"], env["port"], context=ctx, timeout=30)
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        check(resp.status == 206, "GET %s: HTTP %d, want 206" % (path, resp.status))
        cr = resp.getheader("Content-Range")
        check(cr == "bytes %d-%d/%d" % (first, last, len(data)), "Content-Range %r" % cr)
        check(body == data[first:last + 1], "Range body differs from the file's bytes")
        log("HTTPS GET %s Range bytes=%d-%d -> 206, %d bytes, %s, content matches (sha256 %s…)"
            % (path, first, last, len(body), cr, hashlib.sha256(body).hexdigest()[:16]))
        conn = http.client.HTTPSConnection(env["host"], env["port"], context=ctx, timeout=30)
        conn.request("GET", path, headers={"Range": headers["Range"]})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        check(resp.status == 401, "GET %s without the session cookie: HTTP %d, want 401" % (path, resp.status))
        log("the same GET without the session cookie -> 401, as on ESXi")
    finally:
        os.remove(local)


def compat_checks(si, env, vms):
    """pyvmomi >= 8 against the simulator: unset property and task.info of a manager task."""
    vm = sorted(vms, key=lambda v: vms[v]["name"])[0]
    snaps = vm_props(si, vm, ["snapshot"]).get("snapshot")
    if snaps is None:
        check(vm.snapshot is None, "vm.snapshot of a VM without snapshots is not None")
    content = si.RetrieveContent()
    dc = next(e for e in content.rootFolder.childEntity if e.name == env["datacenters"][0])
    vmx = vms[vm]["config.files.vmPathName"]
    dest = "[%s] smoke-%d.vmx" % (vmx[1:].split("]")[0], os.getpid())
    info = poll_task(content.fileManager.CopyDatastoreFile_Task(
        sourceName=vmx, sourceDatacenter=dc, destinationName=dest, destinationDatacenter=dc))
    check(info.state == "success" and info.entity is None, "CopyDatastoreFile_Task info %s" % info)
    poll_task(content.fileManager.DeleteDatastoreFile_Task(name=dest, datacenter=dc))
    log("pyvmomi %s: vm.snapshot read directly -> %s; task.info of FileManager tasks readable (entity unset)"
        % (pyvmomi_version(), "None" if snaps is None else "set"))


def pyvmomi_version():
    try:
        from importlib.metadata import version
        return version("pyvmomi")
    except Exception:  # noqa: BLE001 - informational only
        return getattr(pyVmomi, "__version__", "?")


def main(argv):
    if len(argv) != 2:
        print("usage: %s ENVFILE" % argv[0], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        env = json.load(fh)
    check(env.get("host") in ("127.0.0.1", "::1", "localhost"),
          "refusing non-loopback host %r" % env.get("host"))
    log("pyvmomi %s, python %s, %s" % (pyvmomi_version(),
                                       sys.version.split()[0], env["url"]))

    ctx = ssl_context(env)
    check_tls(env, ctx)

    t0 = time.monotonic()
    si = SmartConnect(host=env["host"], port=env["port"], user=env["username"],
                      pwd=env["password"], sslContext=ctx, connectionPoolTimeout=30)
    try:
        about = si.content.about
        log("SmartConnect ok in %.2f s: %s (apiType %s, API %s)"
            % (time.monotonic() - t0, about.fullName, about.apiType, about.apiVersion))

        vms = list_vms(si)
        check(vms, "no VM found")
        for vm, p in sorted(vms.items(), key=lambda kv: kv[1]["name"]):
            log("  VM %-14s %-8s %-11s %s" % (p["name"], vm._moId, p.get("runtime.powerState"),
                                              p.get("config.files.vmPathName")))
        want = sorted(v["name"] for v in env["vms"])
        got = sorted(p["name"] for p in vms.values())
        check(got == want, "VMs %s differ from env file %s" % (got, want))
        log("listed %d VMs via ContainerView + RetrievePropertiesEx" % len(vms))

        snapshot_cycle(si, env, vms)
        range_get(si, env, ctx)
        compat_checks(si, env, vms)
    finally:
        Disconnect(si)
    log("PASS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except SmokeError as exc:
        log("FAIL: %s" % exc)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - report any failure as a test failure
        log("FAIL: %s: %s" % (type(exc).__name__, exc))
        sys.exit(1)
