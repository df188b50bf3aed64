#!/usr/bin/env bash
# Starts the compiled service exactly as the container image does (see sandbox-image/Dockerfile
# CMD): the Functions Framework executed directly, so SIGTERM reaches the service itself. Under
# Node 24: scripts/node.sh puts it first on PATH (the machine's node where that is 24 already, as in
# the image).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(bash scripts/node.sh --bin-dir):$PATH"
export PATH
exec node node_modules/@google-cloud/functions-framework/build/src/main.js --target=service --signature-type=http
