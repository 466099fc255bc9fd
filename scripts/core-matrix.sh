#!/usr/bin/env bash
# ansible-test sanity and the unit tests on every ansible-core minor that meta/runtime.yml and requirements.txt
# admit (2.16 and later), each at its latest patch release, each with a Python that release supports as a
# controller. `make test` (CI) tests only the core of .venv; this is slower and runs by hand (`make test-cores`).
#   scripts/core-matrix.sh [MINOR...]          default: 2.16 2.17 2.18 2.19 2.20 2.21, one after another
#   CORE_PYTHON_2_18=/path/to/python3.12 scripts/core-matrix.sh 2.18     another interpreter for one minor
# Per minor, under .venv-cores/<minor>/ (git-ignored, reused by later runs; CORE_MATRIX_DIR=... elsewhere):
#   unit/     venv: ansible-core==<latest patch> + what tests/unit needs (versions as requirements.txt admits)
#   sanity/   venv of scripts/sanity.sh (SANITY_VENV): the same ansible-core alone
#   setup.log sanity.log unit.log unit.xml (JUnit)
# Sanity and unit tests run on the working tree as it is, as scripts/sanity.sh and `make unit` do. The
# closing table gives, per minor, the core, the Python, sanity ok/failed and the unit-test counts; the exit
# status is non-zero if any minor failed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MATRIX=${CORE_MATRIX_DIR:-$ROOT/.venv-cores}
ALL_MINORS=(2.16 2.17 2.18 2.19 2.20 2.21)
if [ $# -gt 0 ]; then MINORS=("$@"); else MINORS=("${ALL_MINORS[@]}"); fi

# Controller Pythons of each minor, newest first: the classifiers of each release's wheel, and its
# ansible_test/_util/target/common/constants.py CONTROLLER_PYTHON_VERSIONS (checked again below, once installed).
controller_pythons() {
  case $1 in
    2.16|2.17) echo "3.12 3.11 3.10" ;;
    2.18|2.19) echo "3.13 3.12 3.11" ;;
    2.20|2.21) echo "3.14 3.13 3.12" ;;
    *) return 1 ;;
  esac
}

# The interpreter of Python X.Y: pythonX.Y on PATH, /usr/bin's, then pyenv's (newest patch first). Each is asked
# for its version, so a pyenv shim of a version that is not installed does not count. Prints sys.executable.
find_python() {
  local ver=$1 pyenv_root c
  pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
  local candidates=("python$ver" "/usr/bin/python$ver")
  if [ -d "$pyenv_root/versions" ]; then
    while IFS= read -r c; do candidates+=("$c"); done < <(
      find "$pyenv_root/versions" -mindepth 3 -maxdepth 3 -path "*/versions/$ver.*/bin/python$ver" | sort -rV)
  fi
  for c in "${candidates[@]}"; do
    if "$c" -c "import sys, venv, ensurepip; assert '%d.%d' % sys.version_info[:2] == '$ver'; print(sys.executable)" \
        2>/dev/null; then
      return 0
    fi
  done
  return 1
}

# What tests/unit imports beyond ansible-core, at the versions requirements.txt admits: pyVmomi, paramiko, pytest;
# and what some tests skip without (importorskip, HAS_LIBVIRT): libvirt-python, libewf-python (pyewf), dissect.target
# (dissect.hypervisor); jmespath, a runtime requirement. As in .venv, so that the counts compare.
mapfile -t UNIT_DEPS < <(grep -E '^(pyvmomi|libvirt-python|paramiko|jmespath|pytest|libewf-python|dissect\.target)[<>=!~ ]' \
  requirements.txt)
[ ${#UNIT_DEPS[@]} -eq 7 ] || { echo "core-matrix: expected 7 unit-test requirements in requirements.txt, found: ${UNIT_DEPS[*]}" >&2; exit 2; }

now() { date +%s; }
declare -A R_CORE R_PY R_SETUP R_SANITY R_UNIT R_TIMES
FAILED=0

# Called in a condition, where errexit does not apply: each step that can fail is checked.
run_minor() {
  local minor=$1 dir=$MATRIX/$1 uv=$MATRIX/$1/unit pyvar py="" vers="" ver core t0 t1 t2 t3 rc
  R_CORE[$minor]="?" R_PY[$minor]="?" R_SETUP[$minor]="failed" R_SANITY[$minor]="not run" R_UNIT[$minor]="not run"
  R_TIMES[$minor]="-"
  t0=$(now)
  mkdir -p "$dir" || return 1
  printf '\n=== ansible-core %s: setup (log: %s)\n' "$minor" "$dir/setup.log"
  pyvar=CORE_PYTHON_${minor//./_}
  if [ -n "${!pyvar:-}" ]; then
    py=${!pyvar}
  else
    vers=$(controller_pythons "$minor") || { echo "core-matrix: no controller Pythons known for ansible-core $minor" >&2; return 1; }
    for ver in $vers; do
      if py=$(find_python "$ver"); then break; fi
      py=""
    done
  fi
  [ -n "$py" ] || { echo "core-matrix: none of Python $vers found for ansible-core $minor" >&2; return 1; }
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
  # a venv of another Python (a different CORE_PYTHON_*) is made anew, and the sanity venv with it
  if [ "$("$uv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$ver" ]; then
    rm -rf "$dir/sanity" || return 1
    "$py" -m venv --clear "$uv" || return 1
  fi
  R_PY[$minor]=$("$uv/bin/python" -c 'import platform; print(platform.python_version())') || return 1
  # the latest patch release of the minor that the index offers for this Python
  core=$("$uv/bin/pip" index versions ansible-core 2>/dev/null | sed -n 's/^Available versions: //p' | tr -d ' ' |
         tr ',' '\n' | grep -E "^${minor//./\\.}\.[0-9]+$" | sort -V | tail -n 1) || true
  [ -n "$core" ] || { echo "core-matrix: the index offers no ansible-core $minor.x for Python $ver" >&2; return 1; }
  R_CORE[$minor]=$core
  echo "ansible-core $core, Python ${R_PY[$minor]} ($py)"
  if ! "$uv/bin/pip" install -q --disable-pip-version-check "ansible-core==$core" "${UNIT_DEPS[@]}" \
      > "$dir/setup.log" 2>&1; then
    tail -n 30 "$dir/setup.log"
    return 1
  fi
  if ! "$uv/bin/python" - "$ver" <<'PY'
import sys
from ansible_test._util.target.common.constants import CONTROLLER_PYTHON_VERSIONS
if sys.argv[1] not in CONTROLLER_PYTHON_VERSIONS:
    sys.exit("core-matrix: Python %s is not a controller Python of this ansible-core (%s)"
             % (sys.argv[1], ", ".join(CONTROLLER_PYTHON_VERSIONS)))
PY
  then return 1; fi
  R_SETUP[$minor]=ok
  t1=$(now)

  printf '\n=== ansible-core %s: ansible-test sanity (log: %s)\n' "$core" "$dir/sanity.log"
  rc=0
  VENV=$uv SANITY_VENV=$dir/sanity "$ROOT/scripts/sanity.sh" 2>&1 | tee "$dir/sanity.log" || rc=$?
  if [ "$rc" -eq 0 ]; then R_SANITY[$minor]=ok; else R_SANITY[$minor]="failed($rc)"; FAILED=1; fi
  t2=$(now)

  printf '\n=== ansible-core %s: unit tests (log: %s)\n' "$core" "$dir/unit.log"
  rc=0
  rm -f "$dir/unit.xml"
  "$uv/bin/python" -m pytest -p no:cacheprovider -ra --junitxml="$dir/unit.xml" tests/unit 2>&1 |
    tee "$dir/unit.log" || rc=$?
  # passed/failed/errors/skipped from the JUnit report (a run that did not get as far as writing one: its exit code)
  R_UNIT[$minor]=$("$uv/bin/python" - "$dir/unit.xml" "$rc" <<'PY' 2>/dev/null || echo "no report (pytest exit $rc)"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print("%d passed, %d failed, %d errors, %d skipped (exit %s)" % (
    n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"], n["errors"], n["skipped"], sys.argv[2]))
PY
)
  [ "$rc" -eq 0 ] || FAILED=1
  t3=$(now)
  R_TIMES[$minor]="$((t1 - t0))+$((t2 - t1))+$((t3 - t2))=$((t3 - t0))"
}

T_START=$(now)
for minor in "${MINORS[@]}"; do
  t=$(now)
  if ! run_minor "$minor"; then
    FAILED=1
    R_TIMES[$minor]="setup failed after $(( $(now) - t ))"
  fi
done

printf '\n=== ansible-core matrix (%ss in all; seconds: setup+sanity+unit=total)\n' "$(( $(now) - T_START ))"
fmt='%-6s %-8s %-7s %-12s %-56s %s\n'
# shellcheck disable=SC2059  # the format is the table's, held in one variable for the header and the rows
printf "$fmt" minor core python sanity "unit tests" seconds
for minor in "${MINORS[@]}"; do
  sanity=${R_SANITY[$minor]:-not run}
  [ "${R_SETUP[$minor]:-failed}" = ok ] || sanity="setup failed"
  # shellcheck disable=SC2059
  printf "$fmt" "$minor" "${R_CORE[$minor]:-?}" "${R_PY[$minor]:-?}" "$sanity" "${R_UNIT[$minor]:-not run}" \
    "${R_TIMES[$minor]:-}"
done
exit "$FAILED"
