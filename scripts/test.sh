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
# ansible-test sanity keeps one core busy for minutes: it runs beside the lint, the build and the lab's set-up, on
# the other core, and its output is printed once it has ended (before the tests, which need both cores). The
# documentation site (scripts/docs.sh: its venv, antsibull-docs, sphinx-build -W) is built at the same time: its venv's
# downloads wait on the network, not on a core, and run after sanity they held the tests back.
SANITY_LOG=$(mktemp "${TMPDIR:-/tmp}/vmcollect-sanity-log.XXXXXX")
DOCS_LOG=$(mktemp "${TMPDIR:-/tmp}/vmcollect-docs-log.XXXXXX")
stage "ansible-test sanity and the documentation site, in the background (their output follows when they end)"
# a process group of its own, to stop it whole; exit 1: sanity failed, 2: the docs build, 3: both
# shellcheck disable=SC2016  # the inner shell expands its own variables
setsid bash -c 'scripts/sanity.sh > "$1" 2>&1 & sanity=$!; scripts/docs.sh > "$2" 2>&1 & docs=$!
  rc=0; wait "$sanity" || rc=1; wait "$docs" || rc=$((rc + 2)); exit "$rc"' _ "$SANITY_LOG" "$DOCS_LOG" &
SANITY_PID=$!
sanity_result() {
  local rc=0
  wait "$SANITY_PID" || rc=$?
  SANITY_PID=""  # ended: its process group id is not ours to signal any more
  echo "--- ansible-test sanity"
  cat "$SANITY_LOG"
  echo "--- the documentation site (scripts/docs.sh)"
  cat "$DOCS_LOG"
  rm -f "$SANITY_LOG" "$DOCS_LOG"
  case "$rc" in
    0) ;;
    1) echo "ansible-test sanity failed" ;;
    2) echo "the documentation site's build failed" ;;
    *) echo "ansible-test sanity and the documentation site's build failed (exit $rc)" ;;
  esac
  return "$rc"
}
mkdir -p "$LAB_DIR"
lab_down() {
  echo "=== lab down (log: $LAB_DIR/logs/down-after-test.log)"
  mkdir -p "$LAB_DIR/logs"
  bash lab/down.sh > "$LAB_DIR/logs/down-after-test.log" 2>&1 || { tail -20 "$LAB_DIR/logs/down-after-test.log"; return 1; }
}
# whatever fails first, the sanity run is not left behind, and a lab that began to come up comes down
LAB_STARTED=0
trap 'if [ -n "$SANITY_PID" ]; then kill -- "-$SANITY_PID" 2>/dev/null || true; fi; if [ "$LAB_STARTED" = 1 ]; then lab_down; fi' EXIT

stage "ansible-lint, shellcheck"
scripts/lint.sh
stage "collection build and ansible-doc"
scripts/build.sh

stage "lab up"
LAB_STARTED=1
bash lab/up.sh

stage "the lab's own life cycle (down and up again: alone)"
VMCOLLECT_REQUIRE_LAB=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -ra tests/integration/lab/test_lab_lifecycle.py

stage "ansible-test sanity and the documentation site: their output"
sanity_result

stage "unit and integration tests"
# One pytest run, so its closing line is the count of every test (but the one above). A missing lab is a failure. Two
# workers (pytest-xdist): the tests of kvm1 and those of the lab ESXi run at once, each group in its order on one
# worker (LAB_GROUPS, tests/integration/conftest.py); the unit tests fill in. Every test phase (set-up, call,
# teardown) of 10 s or more is listed at the end, to guard the CI budget.
VMCOLLECT_REQUIRE_LAB=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -ra --durations=0 --durations-min=10 \
  -n "${VMCOLLECT_TEST_WORKERS:-2}" --dist loadgroup \
  --ignore=tests/integration/lab/test_lab_lifecycle.py tests/unit tests/integration
