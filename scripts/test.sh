#!/usr/bin/env bash
# The README's test command (`make test`) and what CI runs (.ci/run): install, static checks,
# then the lab and every test against it. The lab comes down at the end, pass or fail.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export LAB_DIR=${LAB_DIR:-/var/tmp/vmcollect-lab}
VENV=${VENV:-$ROOT/.venv}
T0=$(date +%s)
stage() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - T0 ))"; }

stage "setup: apt packages and .venv"
scripts/setup.sh
stage "ansible-test sanity"
scripts/sanity.sh
stage "ansible-lint, shellcheck"
scripts/lint.sh
stage "collection build and ansible-doc"
scripts/build.sh

stage "lab up"
mkdir -p "$LAB_DIR"
lab_down() {
  echo "=== lab down (log: $LAB_DIR/logs/down-after-test.log)"
  mkdir -p "$LAB_DIR/logs"
  bash lab/down.sh > "$LAB_DIR/logs/down-after-test.log" 2>&1 || { tail -20 "$LAB_DIR/logs/down-after-test.log"; return 1; }
}
trap 'lab_down' EXIT
bash lab/up.sh

stage "the lab's own life cycle (down and up again: alone)"
VMCOLLECT_REQUIRE_LAB=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -ra tests/integration/lab/test_lab_lifecycle.py

stage "unit and integration tests"
# One pytest run, so its closing line is the count of every test (but the one above). A missing lab is a failure. Two
# workers (pytest-xdist): the tests of kvm1 and those of the lab ESXi run at once, each group in its order on one
# worker (LAB_GROUPS, tests/integration/conftest.py); the unit tests fill in. Every test phase (set-up, call,
# teardown) of 10 s or more is listed at the end, to guard the CI budget.
VMCOLLECT_REQUIRE_LAB=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -ra --durations=0 --durations-min=10 \
  -n "${VMCOLLECT_TEST_WORKERS:-2}" --dist loadgroup \
  --ignore=tests/integration/lab/test_lab_lifecycle.py tests/unit tests/integration
