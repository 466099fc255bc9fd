# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs dfir.vmcollect.volume_verify and shows its progress while it runs (plugin_utils/progress.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.dfir.vmcollect.plugins.plugin_utils.progress import ProgressAction


class ActionModule(ProgressAction):
    """volume_verify, with a progress line every vmcollect_progress_interval seconds."""
