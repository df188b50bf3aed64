#!/bin/sh
# Installs the host's Debian packages listed in packages.txt (comments and blank lines ignored).
# Used by the Dockerfile and by scripts/setup.sh so both install the same list. (The sandbox's own
# packages are not installed here: sandbox-image/rootfs/build.sh builds them into the sandbox root.)
set -eu
list="$(dirname "$0")/packages.txt"
packages=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$list" | tr '\n' ' ')
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $packages
