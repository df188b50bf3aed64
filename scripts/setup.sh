#!/usr/bin/env bash
# Idempotent set-up shared by `npm start`, `npm test` (with --test) and `npm run bench` on a fresh Debian 12
# machine with Node 20: npm dependencies, the sandbox's Debian packages, and the compiled service.
set -euo pipefail
cd "$(dirname "$0")/.."

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" != "20" ]; then
  echo "setup: Node 20 is required (found $(node --version))" >&2
  exit 1
fi

# npm dependencies: install when missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

# The sandbox interpreter and its packages, from sandbox-image/packages.txt.
python="${SANDBOX_PYTHON:-/usr/bin/python3}"
if ! "$python" -c 'import numpy, pandas, seccomp' >/dev/null 2>&1 || ! command -v pkill >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing the sandbox's Debian packages from sandbox-image/packages.txt" >&2
    sh sandbox-image/install-packages.sh
  else
    echo "setup: the sandbox needs Debian packages; run as root:" >&2
    echo "  sudo sh sandbox-image/install-packages.sh" >&2
    exit 1
  fi
fi

# Tests also lint shell scripts (functions/test/deploy/shellcheck.test.ts).
if [ "${1:-}" = "--test" ] && ! command -v shellcheck >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing shellcheck for the tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck
  else
    echo "setup: the tests need shellcheck; run as root: apt-get install shellcheck" >&2
    exit 1
  fi
fi

# Compile the service when any source is newer than the build.
if [ ! -f functions/build/index.js ] || [ -n "$(find functions/src tsconfig.json -newer functions/build/index.js -print -quit)" ]; then
  echo "setup: compiling the service (tsc)" >&2
  rm -rf functions/build
  npx tsc -p tsconfig.json
fi
