#!/usr/bin/env bash
# awx.awx, the collection extensions/awx/setup.yml runs with, into .build/awx-collections (outside the venv): taken
# from the `ansible` package on PyPI (the community bundle ships it) without installing that package. ansible-lint
# (scripts/lint.sh) resolves setup.yml's modules with it; tests/unit/test_awx_setup.py checks their arguments against
# awx.awx's own argument specs.
#   scripts/awx-collection.sh        prints the collections path to add to ANSIBLE_COLLECTIONS_PATH
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
ANSIBLE_BUNDLE=${ANSIBLE_BUNDLE:-ansible==12.3.0}  # awx.awx 24.6.1
DEST=$ROOT/.build/awx-collections
if [ ! -f "$DEST/ansible_collections/awx/awx/MANIFEST.json" ] || [ "$(cat "$DEST/.bundle" 2>/dev/null)" != "$ANSIBLE_BUNDLE" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmcollect-awx.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "$ANSIBLE_BUNDLE" -d "$WORK" >&2
  rm -rf "$DEST"
  mkdir -p "$DEST"
  "$VENV/bin/python" - "$WORK" "$DEST" <<'PY'
import glob
import sys
import zipfile

wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("ansible_collections/awx/awx/"):
            z.extract(name, sys.argv[2])
PY
  echo "$ANSIBLE_BUNDLE" > "$DEST/.bundle"
fi
echo "$DEST"
