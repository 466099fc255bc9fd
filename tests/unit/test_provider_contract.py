# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider contract, as docs/architecture.md writes it down, is what the providers give and all the neutral
pipeline reads. A new provider (ESXi) passes these tests by registering the same shapes."""

import glob
import os
import re

import pytest
import yaml

from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import libvirt as lv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "dict": "dict", "list": "list"}


def _contract():
    text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    section = text.split("### The provider contract", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)


CONTRACT = _contract()
PROVIDERS = sorted(p.split(os.sep)[-3] for p in glob.glob(os.path.join(ROOT, "roles", "*_acquire", "tasks", "provider")))


def _return_doc(module):
    source = open(os.path.join(ROOT, "plugins", "modules", module + ".py")).read()
    return yaml.safe_load(re.search(r'RETURN = r"""(.*?)"""', source, re.S).group(1))


def _lookup(doc, key):
    """The RETURN entry of a contract key such as vm.disks[].backing_chain."""
    node = {"contains": doc}
    for part in key.replace("[]", "").split("."):
        node = (node.get("contains") or {}).get(part)
        if node is None:
            return None
    return node


def test_the_contract_is_written_down():
    assert set(CONTRACT) == {"describe", "freeze", "memory", "copy", "prove"}
    for name, step in CONTRACT.items():
        if name == "prove":
            assert step["register"] is None
            continue
        assert step["register"].startswith("acquire_") and step["keys"]


def test_there_is_a_provider():
    assert "kvm_acquire" in PROVIDERS


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("step", sorted(CONTRACT))
def test_each_provider_step_registers_the_contract_from_a_documented_module(provider, step):
    spec = CONTRACT[step]
    path = os.path.join(ROOT, "roles", provider, "tasks", "provider", step + ".yml")
    tasks = yaml.safe_load(open(path))
    if spec["register"] is None:
        assert tasks and not any(t.get("register", "").startswith("acquire_") for t in tasks), path
        return
    registering = [t for t in tasks if t.get("register") == spec["register"]]
    assert len(registering) == 1, "%s must register %s exactly once" % (path, spec["register"])
    task = registering[0]
    modules = [k for k in task if k.startswith("dfir.vmcollect.")]
    assert len(modules) == 1, "%s: the registering task calls one module of the collection" % path
    module = modules[0].split(".")[-1]
    doc = _return_doc(module)
    # a looped step: every result of the loop has the keys
    assert bool(spec.get("loop")) == ("loop" in task), "%s: the contract says loop=%s" % (path, spec.get("loop"))
    for key, kind in spec["keys"].items():
        entry = _lookup(doc, key)
        assert entry is not None, "%s's RETURN does not document %s (contract step %s)" % (module, key, step)
        assert entry.get("type") == TYPES[kind], "%s: %s is %s, the contract says %s" % (module, key, entry.get("type"), kind)


def _pipeline_text():
    files = glob.glob(os.path.join(ROOT, "roles", "acquire", "tasks", "*.yml"))
    files += glob.glob(os.path.join(ROOT, "roles", "collector", "tasks", "*.yml"))
    files += glob.glob(os.path.join(ROOT, "playbooks", "_acquire_*.yml"))
    return {f: open(f).read() for f in files}


def test_the_neutral_pipeline_reads_nothing_else_of_the_providers():
    # acquire_vm is acquire_described.vm
    prefixes = {"acquire_described": "", "acquire_vm": "vm.", "acquire_frozen": "", "acquire_memory": "",
                "acquire_copies": ""}
    # the optional keys the contract's comments name
    allowed = {"vm.remote_images", "companions"}
    for step in CONTRACT.values():
        allowed.update(k.replace("[]", "") for k in step.get("keys") or {})
    seen = 0
    for path, text in _pipeline_text().items():
        for var, prefix in prefixes.items():
            for m in re.finditer(r"\b%s((?:\.[a-z_]+)+)" % var, text):
                key = prefix + m.group(1)[1:]
                # a key, or a registered result's own fields that every module result has
                if key in ("skipped", "results"):
                    continue
                assert key in allowed, "%s reads %s%s, which the provider contract does not define" % (
                    os.path.relpath(path, ROOT), var, m.group(1))
                seen += 1
    assert seen > 10


LIVE_XML = """<domain type='kvm' id='3'>
  <name>web 01</name><uuid>0b8e4a32-8a33-4f7e-9d58-7c6b1d1a9e01</uuid>
  <memory unit='KiB'>262144</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <backingStore type='file'><format type='raw'/><source file='/var/lib/libvirt/images/base.raw'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
  </devices>
</domain>"""


def test_kvm_gives_the_shapes_of_the_contract():
    info = lv.parse_domain_xml(LIVE_XML)
    disks = [d for d in info["disks"] if not d.get("skipped")]
    assert disks and all(isinstance(d[k], str) for d in disks for k in ("target", "path", "format"))
    assert disks[0]["backing_chain"][0]["path"] == "/var/lib/libvirt/images/base.raw"
    assert disks[0]["backing_chain"][0]["format"] == "raw"
    assert isinstance(info["memory_bytes"], int) and info["memory_bytes"] == 262144 * 1024

    class Conn(object):
        def getURI(self):
            return "qemu:///system"

        def getHostname(self):
            return "kvm1"

        def getLibVersion(self):
            return 9000000

        def getType(self):
            return "QEMU"

        def getVersion(self):
            return 7002022

    tools = lv.host_info(Conn())["tools"]
    assert tools == {"libvirt": "9.0.0", "qemu": "7.2.22"}
