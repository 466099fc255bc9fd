#!/usr/bin/env bash
# Build the lab's vSphere simulator (lab/vcsim/main.go) offline against Debian's
# govmomi (golang-github-vmware-govmomi-dev) into ${LAB_DIR}/bin/vcsim.
#
#   LAB_DIR=/var/tmp/vmcollect-lab lab/vcsim/build.sh [--force]
#
# Needs: apt-get install golang-go golang-github-vmware-govmomi-dev
# GOPATH, GOCACHE and GOTMPDIR are private, under $LAB_DIR; modules and the
# module proxy are off, so the build never touches the network or $HOME.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_DIR="${LAB_DIR:-/var/tmp/vmcollect-lab}"
bin="$LAB_DIR/bin/vcsim"
gocode=/usr/share/gocode

force=0
case "${1:-}" in
  --force|-f) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' not found: apt-get install golang-go golang-github-vmware-govmomi-dev" >&2
  exit 1
fi
if [ ! -d "$gocode/src/github.com/vmware/govmomi/simulator" ]; then
  echo "build.sh: govmomi sources missing under $gocode: apt-get install golang-github-vmware-govmomi-dev" >&2
  exit 1
fi

up_to_date=1
for f in "$here"/*.go "$0"; do
  [ "$bin" -nt "$f" ] || up_to_date=0
done
if [ "$force" = 0 ] && [ -x "$bin" ] && [ "$up_to_date" = 1 ]; then
  echo "build.sh: $bin is up to date (newer than every lab/vcsim/*.go); skipping (use --force to rebuild)"
  exit 0
fi

mkdir -p "$LAB_DIR/bin" "$LAB_DIR/go/path" "$LAB_DIR/go/cache" "$LAB_DIR/go/tmp"

# Go 1.19 reuses the prebuilt standard library in GOROOT/pkg only for the
# default settings: -trimpath or CGO_ENABLED=0 recompile it (~20-40 s more).
# Without a C compiler cgo would fail, so then (only) build pure Go.
cgo=1
command -v gcc >/dev/null 2>&1 || cgo=0

start=$(date +%s.%N)
# GOPATH mode: the package is built from a file list, its imports resolved in
# $LAB_DIR/go/path (empty) and then Debian's /usr/share/gocode.
(
  cd "$here"
  env GO111MODULE=off GOPROXY=off GOFLAGS= GOSUMDB=off GONOSUMDB= GOTOOLCHAIN=local \
    GOPATH="$LAB_DIR/go/path:$gocode" \
    GOCACHE="$LAB_DIR/go/cache" \
    GOTMPDIR="$LAB_DIR/go/tmp" \
    HOME="$LAB_DIR/go" \
    CGO_ENABLED="$cgo" \
    go build -o "$bin.tmp" ./*.go
)
mv -f "$bin.tmp" "$bin"
end=$(date +%s.%N)

printf 'build.sh: built %s in %.1f s (%s)\n' "$bin" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')" "$(go version)"
