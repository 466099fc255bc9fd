# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's errors reach the responder as sentences (VM, step, libvirt's message, what to do), never
as a MODULE FAILURE traceback. Real libvirt errors come from libvirt's own test driver (test:///<file>,
in-process, a private state per connection): a VM undefined between two steps of a module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import types

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    JournalError,
    LibvirtError,
    MemoryAcquisitionError,
    SnapshotError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import libvirt as lv
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import snapshot as ks

UUID = "6c616276-6d63-4000-8000-000000000042"
NODE = """<node>
  <domain type='test'>
    <name>vmc-unit</name>
    <uuid>%s</uuid>
    <memory unit='KiB'>65536</memory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda'/></disk>
    </devices>
  </domain>
</node>
"""

needs_libvirt = pytest.mark.skipif(not lv.HAS_LIBVIRT, reason="libvirt-python is not installed")


@pytest.fixture
def uri(tmp_path):
    node = tmp_path / "node.xml"
    node.write_text(NODE % (UUID, tmp_path / "disk.qcow2"))
    return "test://%s" % node


@pytest.fixture
def vanishing(monkeypatch):
    """find_domain finds the VM, then it is destroyed and undefined before the module's next step."""
    def install(module):
        real = module.find_domain

        def find_then_undefine(conn, name=None, uuid=None):
            dom = real(conn, name=name, uuid=uuid)
            dom.destroy()
            dom.undefine()
            return dom

        monkeypatch.setattr(module, "find_domain", find_then_undefine)
        monkeypatch.setattr(lv, "find_domain", find_then_undefine)  # undo handlers look the VM up through lv
    return install


def _no_domain_error(uri):
    with lv.connect(uri) as conn:
        try:
            conn.lookupByName("no-such-vm")
        except lv.libvirt.libvirtError as exc:
            return exc
    raise AssertionError("libvirt found a VM that does not exist")


@needs_libvirt
def test_a_real_libvirt_error_becomes_a_sentence(uri):
    exc = _no_domain_error(uri)
    err = lv.convert_error(exc, "freeze the disks", "web01", UUID, SnapshotError)
    assert isinstance(err, SnapshotError)
    assert err.message.startswith("Could not freeze the disks (VM 'web01' (%s)): libvirt says: Domain not found" % UUID)
    assert "undefined or renamed while this ran" in err.message and "virsh list --all" in err.message
    assert err.message.endswith("dfir.vmcollect.teardown for the case puts it back.")
    assert err.details["libvirt_error_code"] == lv.libvirt.VIR_ERR_NO_DOMAIN
    assert err.details["vm_name"] == "web01" and err.details["step"] == "freeze the disks"


def test_a_stand_in_libvirt_error_without_the_bindings(monkeypatch):
    class FakeLibvirtError(Exception):
        def get_error_code(self):
            return 68

        def get_error_message(self):
            return "Timed out during operation: cannot acquire state change lock"

    monkeypatch.setattr(lv, "libvirt", types.SimpleNamespace(libvirtError=FakeLibvirtError, VIR_ERR_OPERATION_TIMEOUT=68))
    err = lv.convert_error(FakeLibvirtError(), "take the memory", None, UUID, MemoryAcquisitionError, teardown_hint=False)
    assert err.message == ("Could not take the memory (VM %s): libvirt says: Timed out during operation: cannot acquire "
                           "state change lock. Another job holds the VM (a migration, a dump, a backup); wait until "
                           "`virsh domjobinfo` shows none, then run it again." % UUID)


def test_os_errors_say_what_to_do():
    err = lv.convert_error(OSError(errno.ENOSPC, "No space left on device", "/evidence/web01.mem.partial"),
                           "take the memory", "web01", None, MemoryAcquisitionError)
    assert err.message.startswith("Could not take the memory (VM 'web01'): No space left on device "
                                  "(/evidence/web01.mem.partial). Free space on that filesystem")
    assert err.details["failed_path"] == "/evidence/web01.mem.partial" and err.details["errno"] == errno.ENOSPC
    assert "path" not in err.details  # AnsibleModule would add stat fields to the failure


def test_the_decorator_leaves_other_errors_alone():
    @lv.libvirt_errors("do it")
    def raises(exc, name=None):
        raise exc

    with pytest.raises(SnapshotError, match="^ours$"):
        raises(SnapshotError("ours"), name="x")
    with pytest.raises(KeyError):
        raises(KeyError("a bug stays a bug"))
    with pytest.raises(LibvirtError, match=r"^Could not do it \(VM 'x'\): Permission denied \(/a\)\. Check that"):
        raises(OSError(errno.EACCES, "Permission denied", "/a"), name="x")


@needs_libvirt
def test_take_snapshot_on_a_vm_undefined_meanwhile_is_a_sentence(uri, tmp_path, vanishing):
    vanishing(ks)
    journal = Journal("case-lv", str(tmp_path / "journal"), hostname="h")
    with pytest.raises(SnapshotError) as info:
        ks.freeze(journal, uri, name="vmc-unit")
    msg = info.value.message
    assert msg.startswith("Could not freeze the disks (VM 'vmc-unit'): libvirt says: Domain not found: no domain "
                          "with matching uuid '%s'" % UUID)
    assert "undefined or renamed while this ran" in msg
    assert not journal.exists()


@needs_libvirt
def test_pmemsave_on_a_vm_undefined_meanwhile_is_a_sentence(uri, tmp_path, vanishing, monkeypatch):
    vanishing(km)
    monkeypatch.setattr(km, "start_event_loop", lambda: None)  # no event thread in a unit test
    journal = Journal("case-lv", str(tmp_path / "journal"), hostname="h")
    with pytest.raises(MemoryAcquisitionError) as info:
        km.acquire(journal, uri, str(tmp_path / "ram.raw"), "core_dump", uuid=UUID)
    assert info.value.message.startswith("Could not take the memory (VM %s): libvirt says: Domain not found" % UUID)
    assert info.value.details["libvirt_error_code"] == lv.libvirt.VIR_ERR_NO_DOMAIN


@needs_libvirt
def test_vm_info_on_a_vm_undefined_meanwhile_is_a_sentence(uri, vanishing, monkeypatch):
    real_connect = lv.connect
    monkeypatch.setattr(lv, "connect", lambda uri, readonly=False: real_connect(uri))  # so the test may undefine
    vanishing(lv)
    with pytest.raises(LibvirtError) as info:
        lv.vm_info(uri, name="vmc-unit")
    assert info.value.message.startswith("libvirt could not read the state of the VM 'vmc-unit': Domain not found")
    assert info.value.message.endswith("The VM was undefined or renamed while this ran; check it with "
                                       "`virsh list --all --uuid`, then run it again.")


@needs_libvirt
def test_vm_info_entry_point_converts_what_escapes(uri, monkeypatch):
    def broken(conn, dom, **kw):
        return dom.blockInfo("vdz", 0)  # a raw libvirt call nobody wrapped

    monkeypatch.setattr(lv, "domain_info", broken)
    with pytest.raises(LibvirtError) as info:
        lv.vm_info(uri, name="vmc-unit")
    assert info.value.message.startswith("Could not read the VM's facts (VM 'vmc-unit'): libvirt says: ")


@needs_libvirt
def test_teardown_of_a_freeze_whose_vm_vanished_mid_undo_is_a_sentence(uri, tmp_path, vanishing):
    vanishing(ks)
    journal = Journal("case-lv", str(tmp_path / "journal"), hostname="h")
    undo = {"uri": uri, "uuid": UUID, "name": "vmc-unit", "inactive_xml": None,
            "disks": [{"target": "vda", "base": str(tmp_path / "disk.qcow2"), "base_format": "qcow2",
                       "base_type": "file", "overlay": str(tmp_path / "disk.qcow2.vmcollect-case-lv.qcow2")}]}
    journal.record_change(ks.ACTION, undo, "freeze the disks of VM vmc-unit")
    with pytest.raises(JournalError) as info:
        journal.teardown()
    assert info.value.message.startswith(
        "Undoing 'freeze the disks of VM vmc-unit' failed: Could not merge the overlays back (VM 'vmc-unit' (%s)): "
        "libvirt says: Domain not found" % UUID)
    assert info.value.message.endswith("1 earlier change(s) are still in place; fix the cause and run teardown again.")
    assert "puts it back" not in info.value.message  # no "run teardown" advice inside teardown's own sentence
    assert len(journal.pending()) == 1
