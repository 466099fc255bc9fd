# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""No module documents a top-level result key that Ansible itself reads.

take_snapshot once returned ``skipped`` (the CD-ROMs it did not freeze): a non-empty list is true,
so Ansible printed ``skipping: [kvm1]`` for a task that froze every disk. The keys below are the ones
ansible-core (2.19, read in .venv) interprets in a task result; each is cited where it is read.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import glob
import os

import pytest
import yaml

MODULES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "modules")

# Read by Ansible in every task result (ansible-core 2.19):
RESERVED = {
    # ansible/executor/task_result.py: _IGNORE = ('failed', 'skipped'); TaskResult.is_skipped() is
    # bool(result.get('skipped')), TaskResult.is_failed() reads 'failed' (and 'failed_when_result'),
    # is_changed() 'changed', is_unreachable() 'unreachable'
    "skipped": "TaskResult.is_skipped(): a true value marks the task skipped",
    "failed": "TaskResult.is_failed()",
    "failed_when_result": "TaskResult.is_failed()",
    "changed": "TaskResult.is_changed(); AnsibleModule sets it, a module never documents its own",
    "unreachable": "TaskResult.is_unreachable()",
    # task_result.py TaskResult._loop_results: a list 'results' is taken for loop items, whose
    # 'skipped'/'failed'/'changed' then decide the task's status
    "results": "TaskResult._loop_results",
    # task_result.py _PRESERVE = {'attempts', 'changed', 'retries', '_ansible_no_log', 'exception',
    # 'warnings', 'deprecations'}: kept and interpreted even in a no_log result
    "attempts": "task_result._PRESERVE (until/retries)",
    "retries": "task_result._PRESERVE (until/retries)",
    "exception": "task_result._PRESERVE (the traceback shown with -vvv)",
    "warnings": "task_result._PRESERVE (shown as [WARNING])",
    "deprecations": "task_result._PRESERVE (shown as [DEPRECATION WARNING])",
    # task_result.py: clean_copy() drops 'invocation' (AnsibleModule adds the module arguments there)
    "invocation": "AnsibleModule adds it; TaskResult.clean_copy() drops it",
    # ansible/executor/task_executor.py: "if 'failed' not in result: if 'rc' in result and
    # result['rc'] not in [0, '0']: result['failed'] = True"
    "rc": "TaskExecutor._execute(): a non-zero rc without 'failed' fails the task",
    # task_executor.py: result['ansible_facts'] becomes host facts; vars/clean.py clean_facts() and
    # constants RESTRICTED_RESULT_KEYS = ('ansible_rsync_path', 'ansible_playbook_python', 'ansible_facts')
    "ansible_facts": "TaskExecutor._execute(): set as host facts",
    # vars/clean.py remove_internal_keys(): constants INTERNAL_RESULT_KEYS = ('add_host', 'add_group')
    "add_host": "vars/clean.py remove_internal_keys()",
    "add_group": "vars/clean.py remove_internal_keys()",
    # plugins/strategy/__init__.py and plugins/callback/default.py show result['diff'] as a diff
    "diff": "StrategyBase / default callback: shown as a diff with --diff",
}
# vars/clean.py strip_internal_keys(): every key starting with '_ansible_' is removed
RESERVED_PREFIX = "_ansible_"
# Read only when the task runs with async: modules/async_status.py "if 'started' not in data:
# data['finished'] = True ... elif 'finished' not in data: ...", and plugins/action/async_status.py
# turns both into booleans (results[convert] = bool(results[convert])): a module's own 'started' or
# 'finished' is lost under async.
RESERVED_ASYNC = {"started", "finished", "ansible_job_id", "results_file", "erased"}
# 'msg' is allowed: Ansible shows it as the task's message, which is what our modules put there.


def module_returns():
    for path in sorted(glob.glob(os.path.join(MODULES, "*.py"))):
        if os.path.basename(path) == "__init__.py":
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RETURN" for t in node.targets):
                yield os.path.basename(path)[:-3], yaml.safe_load(ast.literal_eval(node.value)) or {}
                break
        else:
            yield os.path.basename(path)[:-3], None


RETURNS = list(module_returns())


def test_every_module_is_checked():
    assert len(RETURNS) >= 10
    assert all(doc is not None for name, doc in RETURNS), [name for name, doc in RETURNS if doc is None]


@pytest.mark.parametrize("name,doc", RETURNS, ids=[n for n, d in RETURNS])
def test_no_top_level_result_key_is_one_ansible_reads(name, doc):
    clashes = ["%s (%s)" % (key, RESERVED[key]) for key in doc if key in RESERVED]
    clashes += ["%s (stripped as internal)" % key for key in doc if key.startswith(RESERVED_PREFIX)]
    assert not clashes, "module %s documents result keys Ansible interprets: %s" % (name, ", ".join(clashes))


# pmemsave returns 'started' and 'finished' (UTC times): run with async, async_status turns them into
# True/True. Renaming them is a change of pmemsave's result that the roles using them must follow.
KNOWN_ASYNC_CLASHES = set()


@pytest.mark.parametrize("name,doc", [
    pytest.param(n, d, marks=pytest.mark.xfail(strict=True, reason="started/finished clash with async_status"))
    if n in KNOWN_ASYNC_CLASHES else (n, d) for n, d in RETURNS], ids=[n for n, d in RETURNS])
def test_no_top_level_result_key_is_one_async_status_rewrites(name, doc):
    clashes = sorted(key for key in doc if key in RESERVED_ASYNC)
    assert not clashes, "module %s documents result keys async_status rewrites: %s" % (name, ", ".join(clashes))
