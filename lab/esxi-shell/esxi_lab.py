# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""esxi_lab.py - what the lab's ESXi shell programs share (vim-cmd, vmkfstools, esxcli, partedUtil, esxi-session).

LAB EMULATOR, not ESXi: these programs print what a real ESXi host's programs print (the captures in the development
set-up's shared/ESXI-SHELL.md; BEHAVIOUR.md in this folder lists each command, the capture it follows and how the lab
differs) and act on the lab's vSphere simulator (lab/vcsim) through its own vSphere API, so that the SSH engine and
the API engine of the collection see one host.

Where the programs find the simulator: a root-only JSON config file (mode 0600) named by the environment variable
VMCOLLECT_ESXI_SHELL_CONFIG (lab/esxi-shell/sshd.sh writes it and the PATH wrappers set the variable):

    {"env_file": "/var/tmp/vmcollect-lab/run/vcsim-esx.json"}

The env file is the one vcsim writes (URL, certificate, credentials). The programs log in as the simulator's
lab-internal user (env lab.license.internal_username/password, lab/vcsim/BEHAVIOUR-vms.md "Free-ESXi mode") when it has one,
so that a simulator in free-ESXi mode (-free-license) lets the host's own shell change the host while it refuses
the same calls from an API client; else as the env file's user. The certificate is pinned (the env's cert_pem is
the only trust anchor).

Python 3 with pyVmomi (the lab's venv); run with that interpreter, as vcsim runs labstore.py with the one it is
given.
"""

import json
import os
import posixpath
import re
import ssl
import stat
import sys
import time

CONFIG_ENV = "VMCOLLECT_ESXI_SHELL_CONFIG"
VOLUMES = "/vmfs/volumes"
DISKS = "/vmfs/devices/disks"
SW_ISCSI = "vmhba64"


class ShellError(Exception):
    """A failure to report on stderr with exit code rc (the program's own words, not an API fault)."""

    def __init__(self, message, rc=1):
        Exception.__init__(self, message)
        self.message = message
        self.rc = rc


# -- configuration and connection ---------------------------------------------------------------------------------

def load_config():
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ShellError("lab ESXi shell: %s is not set (the lab's sshd.sh sets it for its sessions)" % CONFIG_ENV)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ShellError("lab ESXi shell: config %s: %s" % (path, exc.strerror))
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ShellError("lab ESXi shell: config %s is readable by others (mode %o); it must be 0600"
                         % (path, stat.S_IMODE(st.st_mode)))
    with open(path) as f:
        cfg = json.load(f)
    if not cfg.get("env_file"):
        raise ShellError("lab ESXi shell: config %s names no env_file" % path)
    return cfg


def load_env(cfg=None):
    cfg = cfg or load_config()
    try:
        with open(cfg["env_file"]) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ShellError("lab ESXi shell: the simulator's env file %s cannot be read (%s): is it running?"
                         % (cfg["env_file"], exc))


def credentials(env):
    """(user, password): the lab-internal user of the simulator when it has one, else the env file's user."""
    lic = (env.get("lab") or {}).get("license") or {}
    if lic.get("internal_username") and lic.get("internal_password"):
        return lic["internal_username"], lic["internal_password"]
    return env["username"], env["password"]


class Host(object):
    """A logged-in session on the lab host (its ServiceInstance content, the host, its datacenter)."""

    def __init__(self, env=None):
        from pyVim.connect import SmartConnect  # pylint: disable=import-outside-toplevel
        self.env = env or load_env()
        ctx = ssl.create_default_context(cadata=self.env["cert_pem"])
        user, pwd = credentials(self.env)
        try:
            self.si = SmartConnect(host=self.env["host"], port=int(self.env["port"]), user=user, pwd=pwd,
                                   sslContext=ctx, connectionPoolTimeout=-1)
        except Exception as exc:  # pylint: disable=broad-except
            raise ShellError("lab ESXi shell: cannot reach hostd (the lab simulator at %s): %s"
                             % (self.env.get("url"), exc))
        self.content = self.si.RetrieveContent()
        self._host = self._dc = None

    def close(self):
        try:
            self.content.sessionManager.Logout()
        except Exception:  # pylint: disable=broad-except
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def view(self, kind):
        from pyVmomi import vim  # pylint: disable=import-outside-toplevel
        v = self.content.viewManager.CreateContainerView(self.content.rootFolder, [getattr(vim, kind)], True)
        try:
            return list(v.view)
        finally:
            v.Destroy()

    @property
    def host(self):
        if self._host is None:
            hosts = self.view("HostSystem")
            if not hosts:
                raise ShellError("lab ESXi shell: the simulator has no host")
            self._host = hosts[0]
        return self._host

    @property
    def datacenter(self):
        if self._dc is None:
            dcs = self.view("Datacenter")
            self._dc = dcs[0] if dcs else None
        return self._dc

    # -- VMs --------------------------------------------------------------------------------------------------------
    def vms(self):
        """[(vmid, vm)] sorted by vmid. The vmid is the number in the VM's moref (vm-10 -> 10): stable for the
        simulator's life, as ESXi's vmid is stable for a registered VM."""
        out = []
        for vm in self.view("VirtualMachine"):
            m = re.search(r"(\d+)$", vm._moId)  # pylint: disable=protected-access
            if m:
                out.append((int(m.group(1)), vm))
        return sorted(out, key=lambda p: p[0])

    def vm(self, vmid):
        want = str(vmid).strip()
        for n, vm in self.vms():
            if str(n) == want:
                return vm
        from pyVmomi import vim  # pylint: disable=import-outside-toplevel
        raise vim.fault.NotFound(msg="Unable to find a VM corresponding to \"%s\"" % want)

    # -- datastores -------------------------------------------------------------------------------------------------
    def datastores(self):
        """[{name, url (the local folder), uuid (VMFS UUID or None), type, capacity, free, extents, ds}]"""
        out = []
        for ds in self.view("Datastore"):
            info = ds.info
            vmfs = getattr(info, "vmfs", None)
            out.append({
                "name": ds.name, "url": ds.summary.url or getattr(info, "url", ""),
                "uuid": getattr(vmfs, "uuid", None) if vmfs is not None else None,
                "vmfs_version": getattr(vmfs, "version", None) if vmfs is not None else None,
                "type": ds.summary.type, "capacity": ds.summary.capacity or 0, "free": ds.summary.freeSpace or 0,
                "accessible": bool(ds.summary.accessible),
                "extents": [(e.diskName, e.partition) for e in (getattr(vmfs, "extent", None) or [])],
                "ds": ds,
            })
        return sorted(out, key=lambda d: d["name"])

    def wait(self, task, progress=None, timeout=3600):
        """Wait for a task; returns its result or raises its fault. progress(n) is called with each new percent."""
        from pyVmomi import vim  # pylint: disable=import-outside-toplevel
        end = time.time() + timeout
        seen = None
        while True:
            info = task.info
            if progress is not None and info.progress is not None and info.progress != seen:
                seen = info.progress
                progress(seen)
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                raise info.error
            if time.time() > end:
                raise ShellError("lab ESXi shell: task %s did not end within %d s" % (task._moId, timeout))
            time.sleep(0.05)


# -- /vmfs/volumes paths --------------------------------------------------------------------------------------------

def volume_links(datastores):
    """{entry in /vmfs/volumes: symlink target}: each VMFS datastore as its UUID (its mount folder) with its name
    linking to the UUID, as on ESXi; a datastore without a VMFS UUID (the simulator's LocalDS_n) by its name."""
    links = {}
    for d in datastores:
        if not d["url"]:
            continue
        if d["uuid"]:
            links[d["uuid"]] = d["url"]
            links[d["name"]] = d["uuid"]
        else:
            links[d["name"]] = d["url"]
    return links


def logical_path(path):
    """An absolute, normalised path: a relative one is taken from the shell's $PWD (which keeps /vmfs/volumes/<name>
    where getcwd() would give the folder behind the link), as vmkfstools takes it from its working folder."""
    if not path.startswith("/"):
        cwd = os.environ.get("PWD") or os.getcwd()
        path = posixpath.join(cwd, path)
    return posixpath.normpath(path)


def datastore_path(path, datastores):
    """'[name] rel/path' of a path under /vmfs/volumes/<name or uuid>/ (or under a datastore's local folder)."""
    p = logical_path(path)
    if p.startswith(VOLUMES + "/"):
        rest = p[len(VOLUMES) + 1:]
        vol, _sep, rel = rest.partition("/")
        for d in datastores:
            if vol in (d["name"], d["uuid"]):
                return "[%s] %s" % (d["name"], rel), d
        return None, None
    real = os.path.realpath(p)
    for d in datastores:
        root = os.path.realpath(d["url"]) if d["url"] else None
        if root and (real == root or real.startswith(root + "/")):
            return "[%s] %s" % (d["name"], real[len(root) + 1:]), d
    return None, None


# -- output --------------------------------------------------------------------------------------------------------

def fault_name(fault):
    """'vim.fault.NotFound' of a pyVmomi fault object."""
    return type(fault).__name__


def fault_block(fault, out=None):
    """The block vim-cmd prints for a fault (stdout):

        (vim.fault.NotFound) {
           faultCause = (vmodl.MethodFault) null,
           faultMessage = <unset>,
           msg = "..."
        }
    """
    out = out or sys.stdout
    msg = (getattr(fault, "msg", None) or str(fault)).replace("\\", "\\\\").replace('"', '\\"')
    out.write("(%s) {\n   faultCause = (vmodl.MethodFault) null, \n   faultMessage = <unset>, \n   msg = \"%s\"\n}\n"
              % (fault_name(fault), msg))


def is_fault(exc):
    try:
        from pyVmomi import vmodl  # pylint: disable=import-outside-toplevel
    except ImportError:
        return False
    return isinstance(exc, vmodl.MethodFault)


def main_wrapper(fn):
    """Run fn(argv) -> rc; ShellError to stderr with its rc; anything else (a bug) to stderr, rc 1."""
    try:
        rc = fn(sys.argv[1:])
    except ShellError as exc:
        sys.stdout.flush()
        sys.stderr.write(exc.message.rstrip("\n") + "\n")
        rc = exc.rc
    except KeyboardInterrupt:
        rc = 130
    except BrokenPipeError:
        rc = 141
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        rc = 141
    if rc == 141:  # the reader went away (`| head`): no traceback, no flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return rc or 0
