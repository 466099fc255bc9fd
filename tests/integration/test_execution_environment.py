# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment, with ansible-builder itself, from the collection as `make build` leaves it.

- What ansible-builder takes from the installed collection (`introspect`, as it does inside an image build) is
  exactly meta/ee-requirements.txt and meta/ee-bindep.txt: never the project's requirements.txt, which also lists
  the test and lint tools, and a line for Debian and one for RHEL for each program.
- The Python bounds there are requirements.txt's.
- `ansible-builder create` makes the build context of extensions/ee/execution-environment.yml, with the collection's
  tarball in it. The image itself is built with podman, and an acquisition run in it, by test_awx_runner_ee.py (slow:
  make test-slow).
"""

import os
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, VENV_BIN

DIST = os.path.join(ROOT, ".build", "dist")


def _lines(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def built():
    if not os.path.isdir(os.path.join(DIST, "collections", "ansible_collections", "dfir", "vmcollect")):
        pytest.fail("the collection is not built: run scripts/build.sh (make build) first", pytrace=False)
    return DIST


def test_ansible_builder_takes_only_the_controllers_needs_from_the_collection(built):
    out = subprocess.run([os.path.join(VENV_BIN, "ansible-builder"), "introspect", "--sanitize",
                          os.path.join(built, "collections")], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    data = yaml.safe_load(out[out.index("---"):])
    strip = re.compile(r"\s+# from collection dfir\.vmcollect$")
    assert [strip.sub("", d) for d in data["python"]] == _lines(os.path.join(ROOT, "meta", "ee-requirements.txt"))
    assert [strip.sub("", d) for d in data["system"]] == _lines(os.path.join(ROOT, "meta", "ee-bindep.txt"))
    assert not [d for d in data["python"] if re.match(r"(pytest|ansible-lint|volatility3|dissect)", d)]


def test_the_python_bounds_are_the_projects_and_each_program_has_a_debian_and_a_rhel_line():
    project = dict((re.split(r"[<>=!~ ]", line)[0], line) for line in _lines(os.path.join(ROOT, "requirements.txt")))
    for line in _lines(os.path.join(ROOT, "meta", "ee-requirements.txt")):
        assert project[re.split(r"[<>=!~ ]", line)[0]] == line
    bindep = _lines(os.path.join(ROOT, "meta", "ee-bindep.txt"))
    assert len([b for b in bindep if b.endswith("[platform:dpkg]")]) == len([b for b in bindep if b.endswith("[platform:rpm]")])
    assert len(bindep) == 2 * len([b for b in bindep if b.endswith("[platform:dpkg]")])


def test_ansible_builder_makes_the_build_context(built, tmp_path):
    context = str(tmp_path / "ee")
    subprocess.run([os.path.join(VENV_BIN, "ansible-builder"), "create", "-f",
                    os.path.join(ROOT, "extensions", "ee", "execution-environment.yml"), "-c", context],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    names = os.listdir(context)
    [recipe] = [n for n in names if n in ("Containerfile", "Dockerfile")]
    with open(os.path.join(context, recipe)) as f:
        text = f.read()
    assert "localhost/vmcollect-ee-base:bookworm" in text and 'PKGMGR="/usr/bin/apt-get"' in text
    assert 'PYCMD="/opt/ee/bin/python3"' in text and "introspect.py introspect" in text
    with open(os.path.join(built, "dfir-vmcollect.tar.gz"), "rb") as a, \
            open(os.path.join(context, "_build", "collections", "dfir-vmcollect.tar.gz"), "rb") as b:
        assert a.read() == b.read()
