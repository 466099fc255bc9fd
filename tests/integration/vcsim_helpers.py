# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's vSphere simulator (lab/vcsim) for the integration tests that run one of their own (not a test file).

Where it lives and is built (``LAB_DIR``; ``VMCOLLECT_VCSIM_DIR`` may name another copy of lab/vcsim for the module
tests), whether it can be had (the skip markers, each with the reason its tests have always given), commands run with
``LAB_DIR`` in their environment, a private simulator started with vcsim.sh on an env file of its own and stopped
again, and the connection arguments for it. tests/integration is on sys.path (its conftest.py is), so the tests here
and in lab/ import this with a plain ``import``.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import LAB_DIR, ROOT

VCSIM = os.path.join(ROOT, "lab", "vcsim")
VCSIM_DIR = os.environ.get("VMCOLLECT_VCSIM_DIR", VCSIM)
BIN = os.path.join(LAB_DIR, "bin", "vcsim")
GOVMOMI = "/usr/share/gocode/src/github.com/vmware/govmomi/simulator"
TO_BUILD = "needs golang-go + golang-github-vmware-govmomi-dev to build the simulator"


def can_build():
    """A built simulator in LAB_DIR, or what lab/vcsim/build.sh needs to build one."""
    return os.access(BIN, os.X_OK) or bool(shutil.which("go") and os.path.isdir(GOVMOMI))


ON_LINUX = pytest.mark.skipif(sys.platform != "linux", reason="the lab runs on Linux")
# the lab's own tests name the binary they would use; the module tests say what building it needs
NEEDS_SIMULATOR = pytest.mark.skipif(
    not can_build(), reason="needs golang-go + golang-github-vmware-govmomi-dev (or a built %s)" % BIN)
NEEDS_BUILD = pytest.mark.skipif(not can_build(), reason=TO_BUILD)


def run(*argv, **kw):
    """argv with LAB_DIR (and kw's env) in its environment: the CompletedProcess, its output as text with stderr in
    stdout unless kw gives stderr; check=False and a timeout of 300 s unless kw says otherwise."""
    env = dict(os.environ, LAB_DIR=LAB_DIR)
    env.update(kw.pop("env", None) or {})
    kw.setdefault("stderr", subprocess.STDOUT)
    return subprocess.run(list(argv), env=env, stdout=subprocess.PIPE, universal_newlines=True,
                          check=kw.pop("check", False), timeout=kw.pop("timeout", 300), **kw)


def build(timeout=600):
    """lab/vcsim/build.sh (cached in LAB_DIR/bin: nothing to do once built); it must succeed."""
    done = run("bash", os.path.join(VCSIM, "build.sh"), timeout=timeout)
    assert done.returncode == 0, done.stdout


def sim_name(envfile):
    """The name vcsim.sh gives a simulator (its pid, log and datastore folder): the env file's name without .json,
    with "vcsim-" before it unless it starts with "vcsim"."""
    name = os.path.basename(envfile)
    name = name[:-len(".json")] if name.endswith(".json") else name
    return name if name.startswith("vcsim") else "vcsim-" + name


def sim_log(envfile):
    return os.path.join(LAB_DIR, "run", sim_name(envfile) + ".log")


@contextlib.contextmanager
def private_simulator(folder, name, args=None, timeout=120, stop_timeout=60):
    """A simulator of the caller's own, started with VCSIM_DIR/vcsim.sh on the env file FOLDER/NAME-PID.json
    (VCSIM_ARGS=args when given); its env (url, port, credentials, certificate, datastores with local_path, VMs) is
    yielded. At the end it is stopped, which must succeed, and its log in LAB_DIR/run is removed."""
    envfile = os.path.join(str(folder), "%s-%d.json" % (name, os.getpid()))
    ctl = os.path.join(VCSIM_DIR, "vcsim.sh")
    start = run("bash", ctl, "start", envfile, env={"VCSIM_ARGS": args} if args is not None else None,
                timeout=timeout)
    assert start.returncode == 0, start.stdout
    try:
        with open(envfile) as f:
            yield json.load(f)
    finally:
        stop = run("bash", ctl, "stop", envfile, timeout=stop_timeout)
        if stop.returncode == 0 and os.path.exists(sim_log(envfile)):
            os.remove(sim_log(envfile))
    assert stop.returncode == 0, stop.stdout


def conn(env, **extra):
    """A module's connection arguments for the simulator of env (certificate pinned), extra added, None left out."""
    args = {"hostname": env["host"], "port": env["port"], "username": env["username"], "password": env["password"],
            "thumbprint": env["thumbprint_sha256"]}
    args.update(extra)
    return dict((k, v) for k, v in args.items() if v is not None)


def connect(env, **kw):
    """The collection's VsphereClient on the simulator of env (its thumbprint pinned unless kw gives another)."""
    from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import VsphereClient
    return VsphereClient(env["host"], env["username"], env["password"], port=env["port"],
                         thumbprint=kw.pop("thumbprint", env["thumbprint_sha256"]), **kw)


SHELL_DIR = os.path.join(ROOT, "lab", "esxi-shell")


def sshd_ctl(state, cmd, **env):
    """lab/esxi-shell/sshd.sh CMD STATE with env added."""
    return subprocess.run(["bash", os.path.join(SHELL_DIR, "sshd.sh"), cmd, state], stdout=subprocess.PIPE,
                          check=False, stderr=subprocess.STDOUT, universal_newlines=True, timeout=60,
                          env=dict(os.environ, **env))


@contextlib.contextmanager
def esxi_shell(folder, envfile, port=None, host="127.0.0.1", netns=None):
    """The lab ESXi host's shell (lab/esxi-shell/sshd.sh) for the simulator of ``envfile``, on host:port (a free
    port of 127.0.0.1 by default), root logging in with a key made here. Yields dict(state, host, port, key (the
    private key file), fingerprint (SHA256:... of its host key, as ssh-keygen -lf prints it), known_hosts (a file
    with its key for that address)); stopped at the end, which must succeed."""
    from conftest import free_port
    folder = str(folder)
    key = os.path.join(folder, "id_ed25519")
    if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "esxi-shell-test", "-f", key],
                       check=True)
    state = os.path.join(folder, "sshd")
    port = port or free_port()
    extra = {"ESXI_SHELL_NETNS": netns} if netns else {}
    started = sshd_ctl(state, "start", ESXI_SHELL_ENV_FILE=envfile, ESXI_SHELL_AUTHORIZED_KEYS=key + ".pub",
                       ESXI_SHELL_LISTEN="%s:%d" % (host, port), ESXI_SHELL_PYTHON=sys.executable, **extra)
    assert started.returncode == 0, started.stdout
    try:
        fingerprint = subprocess.run(["ssh-keygen", "-lf", os.path.join(state, "ssh_host_ed25519_key.pub")],
                                     stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.split()[1]
        yield {"state": state, "host": host, "port": port, "key": key, "fingerprint": fingerprint,
               "known_hosts": os.path.join(state, "known_hosts")}
    finally:
        stopped = sshd_ctl(state, "stop", **extra)
    assert stopped.returncode == 0, stopped.stdout
