# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""setup_iscsi_target never shows a CHAP secret: not in any process's argv or environment while it
runs (every lab "host" shares this machine's process list, so this test sees the collector's
processes), and not in ``ansible-playbook -vvv`` output or the journal records teardown returns.
"""

import os
import secrets
import string
import threading
import time

PLAYBOOK = """\
- name: setup_iscsi_target with secrets, at -vvv
  hosts: collector1
  gather_facts: false
  vars:
    sec_dir: "{{ lab_work_dir }}/setup_iscsi_target-secrets"
    sec_case: it-tgt-secrets
    sec_opts:
      case_id: "{{ sec_case }}"
      journal_dir: "{{ sec_dir }}/journal"
      backing_file: "{{ sec_dir }}/secrets.lun"
      size: 16M
      initiator_iqn: iqn.2026-11.io.dfir.vmcollect:it-secrets-initiator
      initiator_addresses: ["{{ hostvars['kvm1'].storage_address }}"]
      portal_address: "{{ storage_address }}"
      portal_port: 3262
      control_port: 62
      chap_user: it-secrets-user
      chap_password: "{{ sec_chap }}"
      mutual_chap_user: it-secrets-target
      mutual_chap_password: "{{ sec_mutual }}"
  tasks:
    - name: Run and always clean up
      block:
        - name: Folder
          ansible.builtin.file:
            path: "{{ sec_dir }}"
            state: directory
            mode: "0700"
        - name: Present in check mode
          dfir.vmcollect.setup_iscsi_target: "{{ sec_opts }}"
          check_mode: true
          diff: true
        - name: Present
          dfir.vmcollect.setup_iscsi_target: "{{ sec_opts }}"
          diff: true
        - name: Present again
          dfir.vmcollect.setup_iscsi_target: "{{ sec_opts }}"
          diff: true
        - name: A secret that is too short fails without showing it
          dfir.vmcollect.setup_iscsi_target: "{{ sec_opts | combine({'target_name': 'short', 'chap_password': sec_chap[:8]}) }}"
          ignore_errors: true
        - name: Absent
          dfir.vmcollect.setup_iscsi_target: "{{ sec_opts | combine({'state': 'absent'}) }}"
      always:
        - name: Teardown
          dfir.vmcollect.teardown:
            case_id: "{{ sec_case }}"
            journal_dir: "{{ sec_dir }}/journal"
        - name: Remove the folder
          ansible.builtin.file:
            path: "{{ sec_dir }}"
            state: absent
"""


class Sampler(threading.Thread):
    """Reads every process's argv and environment over and over, looking for the secrets."""

    def __init__(self, needles, nice=0):
        threading.Thread.__init__(self, daemon=True)
        self.needles = [n.encode() for n in needles]
        self.nice = nice  # > 0: it samples with the CPU the other tests leave (a whole acquisition's long watch)
        self.stop = threading.Event()
        self.rounds = 0
        self.found = []
        self.saw_tgtd = False

    def run(self):
        if self.nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)  # this thread only
        me = str(os.getpid())
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                for name in ("cmdline", "environ"):
                    try:
                        with open("/proc/%s/%s" % (pid, name), "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    if name == "cmdline" and b"tgtd\0-C\x0062\0" in data:
                        self.saw_tgtd = True
                    for needle in self.needles:
                        if needle in data:
                            self.found.append((pid, name, data.split(b"\0")[0].decode("utf-8", "replace")))
            self.rounds += 1


def test_no_secret_in_argv_or_output(ansible_playbook, tmp_path):
    alphabet = string.ascii_letters + string.digits
    chap = "".join(secrets.choice(alphabet) for i in range(24))
    mutual = "".join(secrets.choice(alphabet) for i in range(24))
    playbook = tmp_path / "secrets.yml"
    playbook.write_text(PLAYBOOK)
    # the secrets reach ansible-playbook in a file, not in its own argv
    extra = tmp_path / "secrets-vars.yml"
    extra.write_text("sec_chap: %s\nsec_mutual: %s\n" % (chap, mutual))
    os.chmod(str(extra), 0o600)

    sampler = Sampler([chap, mutual, chap[:8]])
    sampler.start()
    started = time.time()
    try:
        result = ansible_playbook(str(playbook), "-vvv", "-e", "@%s" % extra)
    finally:
        sampler.stop.set()
        sampler.join(10)
    elapsed = time.time() - started
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:]
    assert "ok=" in result.stdout and "failed=0" in result.stdout
    assert sampler.saw_tgtd, "the sampler never saw the case's tgtd: it did not run while the module did"
    assert sampler.rounds > 20, "only %d sampling rounds in %.1f s" % (sampler.rounds, elapsed)
    assert not sampler.found, "a CHAP secret was visible in: %s" % sampler.found
    for secret in (chap, mutual, chap[:8]):
        assert secret not in result.stdout, "a CHAP secret is in the -vvv output"
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in result.stdout or "********" in result.stdout
