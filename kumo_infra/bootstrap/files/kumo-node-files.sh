#!/bin/sh
# kumo-node-files REFERENCE SHA256: put the deployment's node files (kumo-bootstrap, its units
# and settings shared by every node) in place from the cloud's secret store, where kumo-infra
# keeps them when the user data cannot carry them (AWS: 16 KiB). Written by kumo-infra.
#
# The bundle is trusted only if its sha256 is the one in this machine's user data, so the
# store can only deliver exactly what was rendered with it. Fetched with kumo-fetch-secret and
# the machine's own identity, retried while a new grant propagates.
set -eu
ref=$1
want=$2
root=${KUMO_NODE_FILES_ROOT:-/}
here=$(dirname "$0")
wait_s=${KUMO_NODE_FILES_WAIT_S:-600}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
  echo "kumo-node-files: $*" >&2
  echo "KUMO-BOOTSTRAP FAILED step=node-files: $*" >/dev/console 2>/dev/null || true
  exit 1
}

py=$(command -v python3 || true)
[ -n "$py" ] || { [ -x /usr/libexec/platform-python ] && py=/usr/libexec/platform-python; } || fail "no python3 to fetch the node files with"
deadline=$(( $(date +%s) + wait_s ))
rc=0
until "$py" "$here/kumo-fetch-secret" "$ref" >"$work/bundle" 2>"$work/fetch.err"; do
  rc=$?
  [ "$rc" -ne 2 ] || fail "cannot fetch $ref: $(tail -n 1 "$work/fetch.err")"
  [ "$(date +%s)" -lt "$deadline" ] || fail "cannot fetch $ref within ${wait_s} s: $(tail -n 1 "$work/fetch.err")"
  sleep 10
done
got=$(sha256sum "$work/bundle" | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "$ref has sha256 $got, not the $want this machine was rendered with; refusing it"
base64 -d "$work/bundle" >"$work/bundle.tar.gz" || fail "$ref is not base64"
# Owned by root whatever the archive says; existing directories keep their own modes.
tar -xzf "$work/bundle.tar.gz" -C "$root" --no-same-owner --no-overwrite-dir || fail "cannot unpack $ref"
