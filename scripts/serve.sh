#!/usr/bin/env bash
# Starts the compiled service exactly as the container image does (see sandbox-image/Dockerfile
# CMD): the Functions Framework executed directly, so SIGTERM reaches the service itself.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node node_modules/@google-cloud/functions-framework/build/src/main.js --target=service --signature-type=http
