#!/usr/bin/env bash
# Build the documentation site of dfir.vmcollect, offline (no network but the package index, for the venv):
# antsibull-docs renders every module, plugin and role (argument specs) of the collection as built by
# ansible-galaxy, with the collection's own pages (docs/docsite/extra-docs.yml and docs/docsite/rst/, linted by
# antsibull-docs) and the pages kept in Markdown (README.md, docs/architecture.md, docs/awx.md, through myst-parser),
# and sphinx-build -W turns every warning into a failure. The external intersphinx inventories antsibull-docs puts in
# conf.py are removed (they would be downloaded); the few labels of the Ansible docsite that the generated pages name
# get a local page instead.
#   scripts/docs.sh                     .venv-docs from docs/requirements-docs.txt, the site in .build/docs-site/
#   PYTHON=python3.12 scripts/docs.sh   build the venv with another interpreter
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOCS_VENV=${DOCS_VENV:-$ROOT/.venv-docs}
PYTHON=${PYTHON:-python3}
REQUIREMENTS=$ROOT/docs/requirements-docs.txt
WORK=$ROOT/.build/docs
SITE=$WORK/site
OUT=$ROOT/.build/docs-site
COLLECTION=dfir.vmcollect

# The venv, rebuilt only when the requirements file or the interpreter changes (as scripts/setup.sh does for .venv).
stamp=$DOCS_VENV/.vmcollect-docs-requirements
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$DOCS_VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "docs: building $DOCS_VENV with $("$PYTHON" --version) from ${REQUIREMENTS#"$ROOT"/}"
  "$PYTHON" -m venv --clear "$DOCS_VENV"
  "$DOCS_VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" > "$stamp"
fi
export PATH=$DOCS_VENV/bin:$PATH
# antsibull-docs reads the collection through ansible-doc: only the copy built here, no other collection path
export ANSIBLE_COLLECTIONS_PATH=$WORK/collections ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false

# The collection as a user gets it (galaxy.yml's build_ignore applies), built from the work tree each time.
rm -rf "$WORK" "$OUT"
mkdir -p "$WORK/dist"
ansible-galaxy collection build --force --output-path "$WORK/dist" "$ROOT" >/dev/null
ansible-galaxy collection install --force -p "$WORK/collections" "$WORK"/dist/dfir-vmcollect-*.tar.gz >/dev/null
installed=$WORK/collections/ansible_collections/dfir/vmcollect
echo "docs: built and installed $(basename "$WORK"/dist/dfir-vmcollect-*.tar.gz)"

# The Sphinx project (conf.py, rst/index.rst) for this antsibull-docs version; antsibull-docs wants its folders
# writable by their owner only.
mkdir -m 700 "$SITE"
antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error --dest-dir "$SITE" \
  --project "$COLLECTION" --title "$COLLECTION" --copyright "dfir.vmcollect maintainers" "$COLLECTION" >/dev/null
chmod 700 "$SITE/rst"
(cd "$SITE" && antsibull-docs --config-file antsibull-docs.cfg collection --use-current --squash-hierarchy \
   --fail-on-error --dest-dir rst "$COLLECTION")

# The collection's own pages in docs/docsite/ (extra-docs.yml, rst/) as antsibull-docs' linter checks them.
antsibull-docs lint-collection-docs "$installed"

# The pages kept in Markdown, read by myst-parser: README.md, docs/architecture.md and docs/awx.md as the collection
# ships them, beside the docsite pages, listed on the collection's index page before its plugin index.
cp "$installed/README.md" "$SITE/rst/docsite/overview.md"
cp "$installed/docs/architecture.md" "$installed/docs/awx.md" "$SITE/rst/docsite/"
# conf.py: no external intersphinx inventory (nothing is fetched), myst-parser for the Markdown pages.
python - "$SITE/conf.py" "$SITE/rst/index.rst" "$COLLECTION" <<'EOF'
import re
import sys

conf_path, index_path, collection = sys.argv[1:]
with open(conf_path, encoding="utf-8") as f:
    conf = f.read()
conf, found = re.subn(r"^intersphinx_mapping = \{\n.*?^\}\n", "", conf, flags=re.M | re.S)
if found != 1:
    sys.exit(f"docs: no intersphinx_mapping block in {conf_path}: antsibull-docs changed its template, look at it")
conf, found = re.subn(r"'sphinx\.ext\.intersphinx', ", "", conf)
if found != 1:
    sys.exit(f"docs: sphinx.ext.intersphinx not found in the extensions of {conf_path}")
conf += "\n# scripts/docs.sh: offline, no intersphinx inventory; myst-parser for the pages kept in Markdown\n"
conf += "extensions.append('myst_parser')\n"
ns = {}
exec(compile(conf, conf_path, "exec"), ns)
assert "intersphinx_mapping" not in ns and "sphinx.ext.intersphinx" not in ns["extensions"], "intersphinx left"
with open(conf_path, "w", encoding="utf-8") as f:
    f.write(conf)

anchor = f".. _plugin_index_for_{collection}:\n"
with open(index_path, encoding="utf-8") as f:
    index = f.read()
if index.count(anchor) != 1:
    sys.exit(f"docs: {anchor.strip()} not found once in {index_path}: antsibull-docs changed its index page")
pages = """Overview, AWX and design
------------------------

.. toctree::
    :maxdepth: 1

    Overview and quick start (README) <docsite/overview>
    Running it from AWX, Tower or AAP <docsite/awx>
    Architecture <docsite/architecture>

"""
with open(index_path, "w", encoding="utf-8") as f:
    f.write(index.replace(anchor, pages + anchor))
EOF

# Labels of the Ansible docsite that antsibull-docs' templates name (common return values, action plugins,
# configuration settings): with no inventory to resolve them, a local page says where to read on. A label not here
# fails the build below as an undefined label: add it here.
cat > "$SITE/rst/ansible_references.rst" <<'EOF'
:orphan:

.. _ansible_collections.dfir.vmcollect.docsite.ansible_references:

Ansible references
==================

The pages of this site name these parts of the documentation of Ansible itself, which this site does not hold.

.. _common_return_values:

Common return values
--------------------

The values every module returns (``changed``, ``failed``, ``msg``, ...):
https://docs.ansible.com/ansible/latest/reference_appendices/common_return_values.html

.. _action_plugins:

Action plugins
--------------

A module with an action plugin runs code on the controller around the module's run on the host:
https://docs.ansible.com/ansible/latest/plugins/action.html

.. _ansible_configuration_settings:

Ansible configuration settings
------------------------------

Every setting of ``ansible.cfg`` and its environment variable:
https://docs.ansible.com/ansible/latest/reference_appendices/config.html
EOF

# -W: any warning fails the build (--keep-going: all of them are listed first).
if ! sphinx-build -W --keep-going -q -b html -c "$SITE" "$SITE/rst" "$OUT"; then
  echo "docs: FAILED: every warning above is an error (-W); fix a module's or role's documentation in its own file" >&2
  exit 1
fi
echo "docs: $(find "$OUT" -name '*.html' ! -path '*/_static/*' | wc -l) pages in $OUT (open $OUT/index.html)"
