#!/usr/bin/env bash
# Builds ./caddy: Caddy with the dtable_bucket_proxy module from this working tree.
# xcaddy is pinned as a Go tool in go.mod (go get -tool ...xcaddy@v0.4.6), so
# nothing needs installing globally. Usage: ./xcaddy.sh [extra xcaddy build flags]
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION="${CADDY_VERSION:-v2.11.9}"   # keep in step with go.mod
MODULE="github.com/dtablecluster/dtable-router"

# The module root package (caddy.go) imports ./caddymodule. The version
# v0.0.0 is a placeholder resolved by the replacement, so go needs no
# module proxy lookup for this module.
go tool xcaddy build "$CADDY_VERSION" \
  --output ./caddy \
  --with "$MODULE@v0.0.0=." \
  "$@"

./caddy list-modules | grep -E 'dtable' >/dev/null || {
  echo "xcaddy.sh: the built ./caddy does not list the dtable modules" >&2
  exit 1
}
echo "built ./caddy ($("./caddy" version))"
