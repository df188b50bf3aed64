"""The benchmark floor's zygote (bench/floor.js starts it): the sandbox root's own Python, chrooted
into that root, with what the service's zygote preloads (numpy, pandas and the modules a run
uses), forking one child per run ahead of demand, and no confinement at all: no uid change, no
rlimits, no Landlock, no seccomp, no namespaces, no run directory, no cleanup.

    python3 -I -B floor_worker.py <unix-socket-path>

stdin: one line "fork" per child wanted. Each child connects to the socket (bench/floor.js
listens on it), waits there until it is handed a job, reads the job (JSON {"script", "args"}) up
to end of file, runs main(args?) with stdout and stderr captured in memory (1 MiB kept of each,
as the service keeps), writes JSON {"result", "stdout", "stderr"} or {"error"} back and exits.
stdout: "started" once preloading is done.
"""

import ctypes
import gc
import io
import json
import os
import signal
import socket
import sys

sys.dont_write_bytecode = True
PR_SET_PDEATHSIG = 1
MAX_STREAM = 1 << 20


def preload():
    import asyncio  # noqa: F401
    import ast  # noqa: F401
    import inspect  # noqa: F401
    import linecache  # noqa: F401
    import traceback  # noqa: F401

    import numpy  # noqa: F401
    import pandas  # noqa: F401


def read_all(sock):
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def child(path):
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        raw = read_all(sock)
        if not raw:
            os._exit(0)  # the server went away before handing over a job
        job = json.loads(raw)
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = out, err
        try:
            namespace = {"__name__": "__main__", "__builtins__": __builtins__}
            exec(compile(job["script"], "<script>", "exec"), namespace)
            main = namespace["main"]
            result = main(job["args"]) if job.get("args") else main()
            if hasattr(result, "__await__"):
                import asyncio

                result = asyncio.run(result)
            answer = {"result": result}
        except BaseException as exc:  # noqa: BLE001 - the floor reports, never raises
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answer["stdout"] = out.getvalue()[:MAX_STREAM]
        answer["stderr"] = err.getvalue()[:MAX_STREAM]
        sock.sendall(json.dumps(answer, default=repr).encode())
        sock.close()
    finally:
        os._exit(0)


def main():
    path = sys.argv[1]
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the server died: so do we
    preload()
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    os.write(1, b"started\n")
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        if os.fork() == 0:
            os.close(0)
            child(path)


if __name__ == "__main__":
    main()
