# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The progress file of a long module run and the action plugin that shows it (plugin_utils/progress.py)."""

    DOCUMENTATION = r"""
options:
  progress_file:
    description:
      - Absolute path of a JSON file that the module rewrites (atomic replace, mode 0644) at most once per
        second while it works. Its folder must exist. It is not written in check mode.
      - Keys are C(phase), C(bytes_done), C(bytes_total), C(rate_mib_s) and C(eta_s) (of the phase), C(src),
        C(dest) and C(updated) (Unix time).
      - Without it, the module's action plugin gives the module a file in the task's remote temporary folder
        (removed after the task) and reads it every C(vmcollect_progress_interval) seconds while the module runs.
      - >-
        Each reading is a line of the play's output, for example
        C(PROGRESS [kvm1] evidence_copy, 45s in: copy vda.qcow2, 3.1 GiB of 8.0 GiB (38%), 70 MiB/s, ETA 1m13s).
        AWX and ansible-runner record each line as a job event, so a job's idle timeout does not end a long
        run that is making progress.
      - C(vmcollect_progress_interval) is a variable (an extra var, a play or host var), in seconds, default 15;
        V(0) shows no progress. A module run shorter than the interval shows no line.
      - With this option, the action plugin reads the file given, and leaves it where it is.
      - Check mode and C(async) tasks show no progress lines.
    type: path
attributes:
  action:
    description: Has an action plugin, which shows the progress of the run (O(progress_file)).
    support: full
"""
