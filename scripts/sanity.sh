#!/usr/bin/env bash
# Run `ansible-test sanity` on the collection as git sees it (tracked + untracked, not ignored).
# ansible-test needs the collection at .../ansible_collections/dfir/vmcollect: the files are
# copied to a fresh folder outside the repository (inside it, ansible-test would ask the repo's
# git, which ignores the copy, and skip every file).
#   scripts/sanity.sh [extra ansible-test args]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
# ansible-test's --venv mode downloads a pip bootstrap script from a host outside the package
# registries; --local in a virtualenv of its own needs only PyPI and keeps the pinned sanity
# tools (pylint, yamllint, voluptuous...) apart from ansible-lint's.
SVENV=${SANITY_VENV:-$ROOT/.venv-sanity}
CORE=$("$VENV/bin/python" -c 'from ansible.release import __version__; print(__version__)')
if [ "$("$SVENV/bin/python" -c 'from ansible.release import __version__; print(__version__)' 2>/dev/null)" != "$CORE" ]; then
  "$VENV/bin/python" -m venv --clear "$SVENV"
  "$SVENV/bin/pip" install -q --disable-pip-version-check "ansible-core==$CORE"
fi
PYVER=$("$SVENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmcollect-sanity.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEST=$WORK/ansible_collections/dfir/vmcollect
mkdir -p "$DEST"
cd "$ROOT"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue            # deleted but not yet committed
  mkdir -p "$DEST/$(dirname "$f")"
  cp -a "$f" "$DEST/$f"
done
cd "$DEST"
# --requirements installs the versions ansible-test pins for each sanity test into a virtualenv
# per test (made once, reused, under ~/.ansible/test). Each is bootstrapped by a pip script
# that ansible-test downloads from its CI file host, which is out of reach here: its cache
# gets our offline stand-in (scripts/ansible-test-get-pip.py). HOME stays as it is: pip's
# index and certificate settings on these machines live in the user's pip config.
PIPVER=$("$SVENV/bin/python" - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
import sys
print(get_venv_packages(NativePythonConfig(version="%d.%d" % sys.version_info[:2], path=sys.executable))["pip"])
PY
)
mkdir -p "$HOME/.ansible/test/cache"
cp "$ROOT/scripts/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_${PIPVER//./_}.py"
PATH=$SVENV/bin:$PATH "$SVENV/bin/ansible-test" sanity --local --requirements --python "$PYVER" --color no "$@"
