# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: controller
short_description: Who runs this playbook, from where, with what (for the custody log)
version_added: 0.3.0
description:
  - Returns one dictionary describing the controller that runs the playbook, for a case's custody log
    (M(dfir.vmcollect.evidence_custody)) - the user and host, ansible-core's version, the playbook files, the command's
    extra vars, and the job, user and template AWX or Tower names when they run it.
  - Extra vars whose names name a secret (C(password), C(secret), C(token), C(chap), C(private), C(vault)...), and
    every vaulted value, are returned as C(<redacted>); so are the values of the names in O(_terms).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  _terms:
    description: More names of variables whose values are secrets (redacted wherever they appear as keys).
    type: list
    elements: str
    required: false
"""

EXAMPLES = r"""
- name: Name who runs the acquisition
  ansible.builtin.set_fact:
    acquire_controller: "{{ lookup('dfir.vmcollect.controller') }}"
"""

RETURN = r"""
_raw:
  description: One dictionary.
  type: list
  elements: dict
  contains:
    user:
      description: The controller's user running ansible-playbook.
      type: str
    host:
      description: The controller's host name.
      type: str
    fqdn:
      description: The controller's fully qualified host name, as its resolver gives it.
      type: str
    ansible_core:
      description: ansible-core's version.
      type: str
    pid:
      description:
        - The process id of ansible-playbook (the parent of the worker process that runs the lookup).
        - Read without a command (an execution environment may have no C(ps)).
      type: int
    playbooks:
      description: The playbooks named on the command line.
      type: list
      elements: str
    extra_vars:
      description: The command's extra vars, secrets redacted.
      type: dict
    check_mode:
      description: Whether the run is in check mode.
      type: bool
    awx_job_id:
      description: The AWX or Tower job id, when AWX runs the job.
      type: str
    awx_user_name:
      description: The AWX user who launched the job, when AWX runs it.
      type: str
    awx_job_template_name:
      description: The AWX job template's name, when AWX runs the job.
      type: str
"""

import getpass
import os
import re
import socket

from ansible import context
from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.lookup import LookupBase
from ansible.release import __version__ as ANSIBLE_CORE
from ansible.utils.vars import load_extra_vars

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.custody import REDACTED, redact

AWX = ("awx_job_id", "awx_user_name", "awx_job_template_name")
TOWER = {"tower_job_id": "awx_job_id", "tower_user_name": "awx_user_name",
         "tower_job_template_name": "awx_job_template_name"}


def _plain(value, secret_names):
    """JSON-able copy of ``value``: vaulted values and the keys in ``secret_names`` redacted."""
    if getattr(value, "__ENCRYPTED__", False) or value.__class__.__name__ == "AnsibleVaultEncryptedUnicode":
        return REDACTED
    if isinstance(value, dict):
        return dict((to_native(k), REDACTED if to_native(k) in secret_names else _plain(v, secret_names))
                    for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v, secret_names) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return to_native(value)


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        secret_names = set(to_native(t) for t in terms or [])
        for name in secret_names:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise AnsibleError("dfir.vmcollect.controller: %r is not a variable name." % name)
        try:
            extra = load_extra_vars(self._loader)
        except Exception as exc:  # pylint: disable=broad-except
            raise AnsibleError("dfir.vmcollect.controller: the command's extra vars cannot be read: %s" % exc)
        variables = variables or {}
        try:
            user = getpass.getuser()
        except Exception:  # pylint: disable=broad-except
            user = ""
        out = {
            "user": user,
            "host": socket.gethostname(),
            "fqdn": socket.getfqdn(),
            "ansible_core": ANSIBLE_CORE,
            # a lookup runs in the worker process that templates the task; its parent is ansible-playbook
            "pid": os.getppid(),
            "playbooks": [to_native(p) for p in context.CLIARGS.get("args", ())],
            "extra_vars": redact(_plain(extra, secret_names)),
            "check_mode": bool(context.CLIARGS.get("check", False)),
        }
        for name in AWX:
            if variables.get(name) not in (None, ""):
                out[name] = to_native(variables[name])
        for old, name in TOWER.items():
            if name not in out and variables.get(old) not in (None, ""):
                out[name] = to_native(variables[old])
        return [out]
