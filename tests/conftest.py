# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make ``ansible_collections.dfir.vmcollect`` importable when the tests run from a plain checkout.

The repository root is the collection. Python imports it by its collection name, so a
checkout that does not live under ``ansible_collections/dfir/vmcollect`` gets a symlink
in ``.build/collections`` (git-ignored) and that folder goes on sys.path.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collection_root():
    parts = ROOT.split(os.sep)
    if parts[-3:-1] == ["ansible_collections", "dfir"] and parts[-1] == "vmcollect":
        return os.sep.join(parts[:-3])
    base = os.path.join(ROOT, ".build", "collections")
    link = os.path.join(base, "ansible_collections", "dfir", "vmcollect")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)
    return base


sys.path.insert(0, _collection_root())


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test, run only with VMCOLLECT_SLOW=1 (make test-slow), outside "
                                       "the CI budget")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VMCOLLECT_SLOW") == "1":
        return
    import pytest
    skip = pytest.mark.skip(reason="slow: run with VMCOLLECT_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
