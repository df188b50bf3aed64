#!/usr/bin/env bash
# Starts the compiled service exactly as the container image does (see sandbox-image/Dockerfile
# CMD and ENV): the Functions Framework executed directly, so SIGTERM reaches the service itself.
# Under Node 24: scripts/node.sh puts it first on PATH (the machine's node where that is 24 already,
# as in the image).
#
# The service's allocator is jemalloc (Debian's libjemalloc2, from sandbox-image/packages.txt),
# preloaded with the settings below, the same as the image's ENV LD_PRELOAD and MALLOC_CONF. Under
# glibc's malloc the service's memory grows with the load and stays grown: what it frees (read
# buffers of run output, mostly) lies between live chunks of its heap, where glibc never gives pages
# back (bench/soak.js, 120 s of its mix: settled RSS +21 to +31%, all of it free memory of glibc's
# arenas, unchanged after 20 to 90 s idle; with jemalloc, within 2% of the start 5 s after the load,
# for the same CPU). background_thread: freed pages are given back by jemalloc's own thread, also
# while the service idles; dirty_decay_ms: about a second after they are freed. Only the service's
# process gets these: it starts every child with an environment of its own (the sandbox's processes
# and scripts an allow-list: functions/src/sandbox/protocol.ts, sandboxEnvironment).
# LD_PRELOAD set by the caller, even empty, is kept as it is (`LD_PRELOAD= npm start`: glibc).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(bash scripts/node.sh --bin-dir):$PATH"
export PATH
ALLOCATOR_PRELOAD=libjemalloc.so.2
ALLOCATOR_CONF=background_thread:true,dirty_decay_ms:1000
if [ -z "${LD_PRELOAD+set}" ]; then
  # The dynamic loader says so (and carries on without it) when it cannot preload the library.
  if [ -z "$(LD_PRELOAD="$ALLOCATOR_PRELOAD" /bin/true 2>&1)" ]; then
    export LD_PRELOAD="$ALLOCATOR_PRELOAD" MALLOC_CONF="${MALLOC_CONF-$ALLOCATOR_CONF}"
  else
    echo "serve.sh: $ALLOCATOR_PRELOAD cannot be loaded (install libjemalloc2: sandbox-image/install-packages.sh); using glibc's malloc" >&2
  fi
fi
exec node node_modules/@google-cloud/functions-framework/build/src/main.js --target=service --signature-type=http
