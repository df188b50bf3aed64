#!/usr/bin/env bash
# Prepares seccomp mode's roots in advance, next to the sandbox's root, as hard-link copies of it:
#
#   bash sandbox-image/rootfs/world.sh ROOT SLOTS
#
#   <dirname ROOT>/world/             the warm path's zygote's root
#   <dirname ROOT>/world/slots/<n>/   run slot n's root, for n = 0 .. SLOTS-1
#
# The container image runs it (sandbox-image/Dockerfile, stage rootfs-build); the service finds the
# result there and uses it instead of linking new roots at start-up (functions/src/sandbox/seccomp/
# slots.ts, which also says what it checks before it does). Why: in an image the root lies in an
# image layer, overlayfs' lower directory, and a hard link made at run time in the container's
# writable layer first copies its file up: linking the roots at start-up would copy all of the
# root (about 600 MB) per instance, on Cloud Run into the instance's memory. Made in the root's own
# layer (one COPY carries the root and these together, hard links kept), each costs directories
# only (about 2,000) and no file data. What a root still needs per instance (the runner at
# /sandbox, the /dev nodes, a /tmp of the slot's uid) the service adds at start-up: small files,
# in the writable layer. Hosts and tests do not run this: there the service links the roots in
# its work directory, which costs no data on a normal file system.
#
# Prints the world's path on stdout.
set -euo pipefail

usage="usage: world.sh ROOT SLOTS"
root="${1:?$usage}"
slots="${2:?$usage}"
case "$slots" in
  *[!0-9]*)
    echo "world.sh: SLOTS must be a whole number, got '$slots'" >&2
    exit 2
    ;;
esac
if [ ! -f "$root/var/lib/dpkg/status" ]; then
  echo "world.sh: $root is not a sandbox root (no var/lib/dpkg/status)" >&2
  exit 2
fi
root=$(cd "$root" && pwd -P)
world="$(dirname "$root")/world"

rm -rf --one-file-system "$world"
cp -al -- "$root" "$world"
mkdir -m 0711 "$world/slots"
n=0
while [ "$n" -lt "$slots" ]; do
  cp -al -- "$root" "$world/slots/$n"
  n=$((n + 1))
done
echo "$world"
