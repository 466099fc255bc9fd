#!/usr/bin/env bash
# ansible-lint on the collection's roles and playbooks (and the integration targets), shellcheck on
# every shell script.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
cd "$ROOT"
# awx.awx, so that ansible-lint resolves extensions/awx/setup.yml's modules (it does not check their arguments:
# tests/unit/test_awx_setup.py does, against awx.awx's argument specs)
AWX_COLLECTIONS=$(scripts/awx-collection.sh)
export ANSIBLE_COLLECTIONS_PATH=$ROOT/.build/collections:$AWX_COLLECTIONS
export PATH=$VENV/bin:$PATH
"$VENV/bin/ansible-lint" --offline
git ls-files -co --exclude-standard -- '*.sh' | xargs -r shellcheck -x
echo "lint: ok"
