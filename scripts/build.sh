#!/usr/bin/env bash
# Build the collection tarball the way a user gets it, and check it: only the collection's
# own files (no lab, tests output, venvs, caches), every module documented for ansible-doc.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
OUT=$ROOT/.build/dist
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$ROOT"
"$VENV/bin/ansible-galaxy" collection build --force --output-path "$OUT" . >/dev/null
tarball=$(ls "$OUT"/dfir-vmcollect-*.tar.gz)
echo "built $tarball ($(du -h "$tarball" | cut -f1))"
# the name extensions/ee/execution-environment.yml takes it by (whatever the version)
cp "$tarball" "$OUT/dfir-vmcollect.tar.gz"
tar -tzf "$tarball" > "$OUT/contents.txt"
bad=$(grep -E '^(lab|bench|scripts|\.ci|\.venv|\.build|tests/output)/|__pycache__|\.pyc$|\.tar\.gz$' "$OUT/contents.txt" || true)
[ -z "$bad" ] || { echo "junk in the tarball:"; echo "$bad"; exit 1; }
for required in MANIFEST.json FILES.json README.md LICENSE meta/runtime.yml plugins/modules/hash_verify.py; do
  grep -qx "$required" "$OUT/contents.txt" || { echo "missing in the tarball: $required"; exit 1; }
done
# Install it into a scratch path and render every module's documentation from there.
"$VENV/bin/ansible-galaxy" collection install --force -p "$OUT/collections" "$tarball" >/dev/null
sed -n 's|^plugins/modules/\([a-z_]*\)\.py$|\1|p' "$OUT/contents.txt" | while read -r m; do
  ANSIBLE_COLLECTIONS_PATH=$OUT/collections "$VENV/bin/ansible-doc" -t module "dfir.vmcollect.$m" > "$OUT/$m.txt"
  echo "ansible-doc dfir.vmcollect.$m: $(wc -l < "$OUT/$m.txt") lines"
done
