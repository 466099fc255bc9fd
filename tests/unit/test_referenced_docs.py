# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every document a message, a skip reason or a doc string sends a reader to is in the project (a skip reason once
named LAB.md, which only the steering folder has)."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = re.compile(r"(?<![\w./$-])((?:[\w.-]+/)*[\w.-]+\.md)\b")  # not a shell variable's path ($SITE/x.md)


def _files():
    out = subprocess.run(["git", "ls-files", "plugins", "roles", "playbooks", "tests/integration", "scripts", "lab"],
                         cwd=ROOT, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    return [f for f in out.split() if f.endswith((".py", ".yml", ".sh", ".j2"))]


def test_every_document_named_in_code_exists():
    missing = []
    for rel in _files():
        with open(os.path.join(ROOT, rel), errors="replace") as f:
            text = f.read()
        for name in set(DOC.findall(text)):
            if name.startswith(("../shared/", "shared/")):
                continue  # the steering folder's, named as such on purpose
            if not (os.path.exists(os.path.join(ROOT, name)) or os.path.exists(os.path.join(ROOT, os.path.dirname(rel), name))):
                missing.append("%s names %s" % (rel, name))
    assert not missing, missing


def test_the_rule_sees_a_missing_document():
    assert DOC.findall("see LAB.md and lab/README.md") == ["LAB.md", "lab/README.md"]
    assert DOC.findall('cp "$installed/README.md" "${SITE}/overview.md"') == []
    assert not os.path.exists(os.path.join(ROOT, "LAB.md"))
