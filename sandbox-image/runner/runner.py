"""The runner: the only program the sandbox starts. It runs one user script and exits.

Protocol with the service (functions/src/sandbox/protocol.ts):
  stdin  the job, one JSON document: {"script", "args", "limits", "confine", "result_max_bytes"}.
         Read to EOF, then replaced by /dev/null before user code runs.
  fd 3   the result channel: one byte 0x1e once every confinement layer is on (before any user
         code), then exactly one JSON document written after main() returns or fails,
         {"status": "ok", "result": ..., "cpu_ms": ...} or {"status": "error", "error": {...}}.
         A failed confinement writes {"status": "error", "error": {"type": "sandbox_error"}} with
         no 0x1e before it.
         It is moved to a high, close-on-exec descriptor first, so child processes never have
         it and fd 3 is free for the script. Whatever the script prints goes to fds 1 and 2,
         which the service captures separately; stdout can never change the result.
Exit status: 0 after writing the channel; 70 when confinement failed (no user code ran).
"""

import ast
import fcntl
import inspect
import json
import linecache
import os
import resource
import sys
import traceback
import types

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -I leaves the script's dir out
import confine  # noqa: E402 - after dont_write_bytecode
import jsonify  # noqa: E402

SCRIPT_NAME = "script.py"
EXIT_CONFINEMENT_FAILED = 70
RESULT_FD = 3
CONFINED_MARKER = b"\x1e"  # ASCII record separator: the runner is confined, user code follows


def _safe_str(value, limit=8192):
    try:
        text = str(value)
    except BaseException:  # noqa: BLE001 - a user object's __str__ may raise anything
        text = f"<{_safe_type_name(value)} whose str() failed>"
    if not isinstance(text, str):
        text = "<str() did not return text>"
    return text if len(text) <= limit else text[:limit] + "..."


def _safe_type_name(value):
    try:
        return str(type(value).__qualname__)
    except BaseException:  # noqa: BLE001
        return "object"


class Channel:
    """The result channel: written once, then the process exits."""

    def __init__(self, fd, max_bytes):
        self.fd = fd
        self.max_bytes = max_bytes
        self.layers = {}

    def send(self, message):
        message["layers"] = self.layers
        self.send_raw(json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii"))

    def send_result(self, value):
        try:
            encoded = jsonify.to_json(value)
        except jsonify.NotSerializable as exc:
            return self.send_error("result_not_serializable", str(exc))
        if len(encoded) > self.max_bytes:
            return self.send_error(
                "result_too_large",
                f"the result is {len(encoded)} bytes of JSON; the limit is {self.max_bytes} bytes",
            )
        head = json.dumps({"status": "ok", "cpu_ms": _cpu_ms(), "layers": self.layers}, separators=(",", ":"))
        self.send_raw(head[:-1].encode("ascii") + b',"result":' + encoded + b"}")

    def send_raw(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def send_error(self, error_type, message, **details):
        self.send({"status": "error", "cpu_ms": _cpu_ms(), "error": {"type": error_type, "message": message, **details}})


def _cpu_ms():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) * 1000)


def read_all(fd):
    """Everything until EOF on fd: the job, from the service."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def stdin_from_devnull():
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def take_channel_fd(fd):
    """Moves the result channel from fd to a high close-on-exec descriptor and closes every other
    descriptor but 0, 1 and 2: child processes never inherit the channel, a script writing to
    "other" descriptors finds them closed, and nothing the runner's parent left open (a pipe of
    the service's supervisor, the zygote's control pipes, other children's sockets) reaches the
    script."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(10, min(100, soft - 8)))
    os.closerange(3, high)
    os.closerange(high + 1, 1 << 20)
    return high


def _user_traceback(exc):
    """Only the user's frames: what happened in script.py, not in the runner or libraries."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SCRIPT_NAME]
    lines = ["Traceback (most recent call last):\n"]
    lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc) if _str_ok(exc) else [f"{_safe_type_name(exc)}\n"])
    return "".join(lines)


def _str_ok(exc):
    try:
        str(exc)
        return True
    except BaseException:  # noqa: BLE001
        return False


def _last_user_line(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SCRIPT_NAME]
    return frames[-1].lineno if frames else None


def _has_top_level_main(tree):
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main" for node in tree.body)


def _flush_std_streams():
    for stream in (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the script may have closed or replaced them
            pass


def run(job, channel):
    source = job["script"]
    try:
        tree = ast.parse(source, filename=SCRIPT_NAME)
        code = compile(tree, SCRIPT_NAME, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return channel.send_error(
            "syntax_error",
            f"{exc.msg} (script.py, line {exc.lineno})",
            line=exc.lineno,
            column=exc.offset,
            text=(exc.text or "").rstrip("\n")[:1000] or None,
        )
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return channel.send_error("syntax_error", _safe_str(exc), line=None, column=None)
    if not _has_top_level_main(tree):
        return channel.send_error("missing_main", "the script must define a top-level function main() (def main or async def main)")

    linecache.cache[SCRIPT_NAME] = (len(source), None, source.splitlines(True), SCRIPT_NAME)
    # A real module named "script", so pickle (multiprocessing) finds the script's functions.
    module = types.ModuleType("script")
    module.__file__ = SCRIPT_NAME
    sys.modules["script"] = module
    namespace = module.__dict__
    try:
        exec(code, namespace)
        main = namespace.get("main")
        if not callable(main):
            return channel.send_error("missing_main", "main was redefined as something that is not a function")
        value = main(**job.get("args", {}))
        if inspect.isawaitable(value):
            import asyncio

            value = asyncio.run(_await(value))
    except SystemExit as exc:
        _flush_std_streams()
        return channel.send_error("killed", f"the script called sys.exit({_safe_str(exc.code, 200)}) before main() returned", exit_code=_exit_code(exc.code))
    except MemoryError:
        _flush_std_streams()
        return channel.send_error("memory_limit", "the script ran out of memory (MemoryError)")
    except BaseException as exc:  # noqa: BLE001 - every user failure is reported, never raised
        _flush_std_streams()
        return channel.send_error(
            "runtime_error",
            f"{_safe_type_name(exc)}: {_safe_str(exc)}",
            exception=_safe_type_name(exc),
            line=_last_user_line(exc),
            traceback=_user_traceback(exc),
        )
    _flush_std_streams()
    channel.send_result(value)


def _exit_code(code):
    if code is None:
        return 0
    return code if isinstance(code, int) and not isinstance(code, bool) else 1


async def _await(awaitable):
    return await awaitable


def main():
    job = json.loads(read_all(0))
    stdin_from_devnull()
    channel = Channel(take_channel_fd(RESULT_FD), job["result_max_bytes"])
    try:
        channel.layers = confine.confine(job["confine"], job["limits"])
    except Exception as exc:  # noqa: BLE001 - no user code runs without every required layer
        channel.send_error("sandbox_error", f"confinement failed: {exc}")
        os._exit(EXIT_CONFINEMENT_FAILED)
    # Every layer is on: say so before any user code. The script can write to the channel too
    # (it is a descriptor of this very process), but it cannot unwrite this byte, so the service
    # believes a sandbox_error only without it and a result only after it.
    channel.send_raw(CONFINED_MARKER)
    os.chdir(job["confine"]["workdir"])
    try:
        run(job, channel)
    except BaseException as exc:  # noqa: BLE001 - e.g. the channel itself failed; exit says it all
        try:
            os.write(2, f"runner: {_safe_type_name(exc)}\n".encode())
        except OSError:
            pass
        os._exit(71)
    # atexit handlers and lingering threads of the script do not run past the result.
    os._exit(0)


if __name__ == "__main__":
    main()
