#!/usr/bin/env bash
# Idempotent set-up shared by `npm start`, `npm test` (with --test) and `npm run bench` on a fresh Debian
# machine (12 or 13): Node 24, npm dependencies, the host's Debian packages, the sandbox's root file
# system, and the compiled service. `npm run lint` (--lint) needs only Node 24, the npm dependencies
# and pyflakes; `npm run typecheck` and `npm run format` (--npm) only Node 24 and the npm dependencies.
#
# Node 24: scripts/node.sh (the machine's node when it is 24, otherwise the official binary from the
# npm registry, fetched once into /var/cache/pyexec-node). Every npm script runs node through it.
#
# The sandbox root: sandbox-image/rootfs/build.sh (debootstrap of Debian 13 with the packages of
# sandbox-image/rootfs/packages.txt, cached by the list's hash; minutes the first time, then found).
# Its stable path is /var/cache/pyexec-rootfs/current/root (or $PYEXEC_ROOTFS_CACHE/current/root),
# a symlink to the root built from the current list; set-up prints it.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in
  "" | --test | --lint | --npm) ;;
  *)
    echo "setup: unknown option $mode (expected --test, --lint or --npm)" >&2
    exit 1
    ;;
esac

# One set-up at a time per checkout: two `npm test` runs started together would otherwise both
# reinstall node_modules or remove and recompile functions/build under each other's services.
exec 9>.setup.lock
if ! flock -n 9; then
  echo "setup: another set-up of this checkout is running; waiting for it" >&2
  flock 9
fi

# Node 24 first on PATH for everything below (npm ci's install scripts, tsc).
node_bin=$(bash scripts/node.sh --bin-dir)
export PATH="$node_bin:$PATH"

# npm dependencies: install when missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

# Lint checks the runner's Python with pyflakes (Debian's pyflakes3).
if [ "$mode" = "--lint" ] && ! command -v pyflakes3 >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing pyflakes3 for the lint" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pyflakes3
  else
    echo "setup: the lint needs pyflakes3; run as root: apt-get install pyflakes3" >&2
    exit 1
  fi
fi
if [ "$mode" = "--lint" ] || [ "$mode" = "--npm" ]; then
  exit 0
fi

# The host's Debian packages, from sandbox-image/packages.txt: the host's python3 only for the cold
# path's launcher (standard library only, run with -I -S; SANDBOX_PYTHON is the sandbox root's
# interpreter, not this one), procps, and jemalloc, the service's allocator (scripts/serve.sh; the
# dynamic loader prints an error when it cannot preload it). numpy, pandas and seccomp live in the
# sandbox root alone.
if ! /usr/bin/python3 -I -S -c 'import ctypes, json, os, signal' >/dev/null 2>&1 || ! command -v pkill >/dev/null ||
  [ -n "$(LD_PRELOAD=libjemalloc.so.2 /bin/true 2>&1)" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing the host's Debian packages from sandbox-image/packages.txt" >&2
    sh sandbox-image/install-packages.sh
  else
    echo "setup: the host needs Debian packages; run as root:" >&2
    echo "  sudo sh sandbox-image/install-packages.sh" >&2
    exit 1
  fi
fi

# Tests also lint shell scripts (functions/test/deploy/shellcheck.test.ts).
if [ "$mode" = "--test" ] && ! command -v shellcheck >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing shellcheck for the tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck
  else
    echo "setup: the tests need shellcheck; run as root: apt-get install shellcheck" >&2
    exit 1
  fi
fi

# The sandbox's root file system: built once per package list (root only), then found in the cache.
rootfs=$(bash sandbox-image/rootfs/build.sh)
echo "setup: sandbox root $rootfs (stable path: $(dirname "$(dirname "$rootfs")")/current/root)" >&2

# Compile the service when any source is newer than the build.
if [ ! -f functions/build/index.js ] || [ -n "$(find functions/src tsconfig.json -newer functions/build/index.js -print -quit)" ]; then
  echo "setup: compiling the service (tsc)" >&2
  rm -rf functions/build
  node node_modules/.bin/tsc -p tsconfig.json
fi
