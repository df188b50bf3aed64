"""The runner: the only program the sandbox starts. It runs one user script and exits.

Protocol with the service, the runner's side. The service's side is
functions/src/sandbox/protocol.ts, which names this file as its counterpart; the constants below
are this side's names and numbers of it, in one place (zygote.py uses them too).
  stdin  the job, one JSON document: {"script", "args", "result_max_bytes", "files", "out",
         "limits", "confine"}. Read to EOF, then replaced by /dev/null before user code runs.
         "files" ([{"path", "content" or "content_base64"}]) are written into the working
         directory before any user code, then "out"["dir"] is made (files.py); a file that cannot
         be written is an "input_files" error and no user code runs.
  fd 3   the result channel (RESULT_FD): CONFINED_MARKER once every confinement layer is on (before
         any user code), then exactly one JSON document written after main() returns or fails,
         {"status": "ok", "result", "cpu_ms", "files", "skipped", "files_truncated"} or
         {"status": "error", "error": {...}}. "files" ([{"path", "size", "content_base64"}], by
         path) are the regular files the script left below "out"["dir"], within its "max_files"
         and "max_bytes"; "skipped" ([{"path", "reason"}]) what was passed over (links, fifos,
         ...); "files_truncated" whether a cap left something out (files.py).
         A failed confinement writes {"status": "error", "error": {"type": "sandbox_error"}} with
         no CONFINED_MARKER before it. USER_CODE_MARKER follows CONFINED_MARKER once the input
         files are written, right before the script's module runs: an "input_files" error is
         sent (and believed) only without it.
         It is moved to a high, close-on-exec descriptor first, so child processes never have
         it and fd 3 is free for the script. Whatever the script prints goes to fds 1 and 2,
         which the service captures separately; stdout can never change the result.
On the warm path a child of zygote.py is confined before its run exists (its "limits" and
"confine" come in the zygote's command): it writes WARM_READY and CONFINED_MARKER on its result
connection, reads the job there ({"script", "args", "result_max_bytes", "files", "out",
"limits": {"cpu_seconds", "memory_bytes"}}), lowers its RLIMIT_CPU and RLIMIT_AS to the run's own
"limits" (confine.lower_rlimits) and answers on it.
Every error message is fitted to what the service accepts (MESSAGE_LIMITS, fit_error): a field
too long is shortened, visibly, never sent as it is (the service would not believe the message).
Exit status: 0 after writing the channel; EXIT_CONFINEMENT_FAILED when confinement failed (no user
code ran); EXIT_RUNNER_FAILED when the runner itself failed afterwards.
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
import files  # noqa: E402
import jsonify  # noqa: E402

RESULT_FD = 3
CONFINED_MARKER = b"\x1e"  # ASCII record separator: the runner is confined, user code follows
USER_CODE_MARKER = b"\x1d"  # ASCII group separator: the input files are written, the script's module runs next
WARM_READY = b"ready\n"  # a warm child is confined and waits for its job
EXIT_CONFINEMENT_FAILED = 70
EXIT_RUNNER_FAILED = 71
SCRIPT_NAME = "script.py"  # what tracebacks name the script


# What the service accepts on the result channel. It checks every message against these, and one
# over any of them is not believed: the run is reported as `killed` (an "invalid" channel) or
# `result_too_large` ("oversize"), whatever the script really did. So every error message is
# fitted to them before it is sent (fit_error), with a visible marker wherever something was
# shortened. The one place in the runner for these numbers; their sources, in
# functions/src/sandbox/protocol.ts:
#   MESSAGE_LIMITS          the maxLength, in characters, of each string field of "error" in
#                           runnerMessageSchema;
#   CHANNEL_ENVELOPE_BYTES  CHANNEL_ENVELOPE_BYTES: the room on the channel beyond
#                           RESULT_MAX_BYTES, which a whole error message fits in.
# functions/test/runner.python.test.ts checks that they agree with their sources.
# (ajv counts characters as code points, a surrogate pair as one; Python's len() counts each
# surrogate of a pair as one, so it never counts fewer than ajv does.)
MESSAGE_LIMITS = {
    "message": 20000,
    "exception": 2000,
    "text": 2000,
    "traceback": 200000,
}
CHANNEL_ENVELOPE_BYTES = 256 * 1024
# The most bytes the error object's JSON takes as sent (ASCII-escaped: up to 12 bytes a character);
# the last 4 KiB of the envelope are for the rest of the message ("status", "cpu_ms", "layers")
# and the confinement marker.
ERROR_MAX_BYTES = CHANNEL_ENVELOPE_BYTES - 4096
# No field is shortened below this many characters to fit ERROR_MAX_BYTES (four fields of them,
# fully escaped, are a small fraction of it).
_MIN_FIELD_CHARS = 200
# Tracebacks keep their beginning and their end (where the exception was raised); the rest keep
# their beginning.
_KEEP_ENDS = frozenset({"traceback"})
# Characters of sys.exit's argument quoted in the message.
_EXIT_ARG_SHOWN = 200


def _exact_str(text):
    """A plain str with text's characters: a str subclass's own methods (len, slicing) never run."""
    return str.__str__(text)


class Text:
    """A text kept as its parts, so that a huge one (a 100 MB exception message) is measured and
    shortened without ever being copied whole."""

    def __init__(self, *parts):
        self.parts = [_exact_str(part) for part in parts]
        self.length = sum(len(part) for part in self.parts)

    def whole(self):
        return "".join(self.parts)

    def head(self, count):
        pieces = []
        for part in self.parts:
            if count <= 0:
                break
            pieces.append(part[:count])
            count -= len(pieces[-1])
        return "".join(pieces)

    def tail(self, count):
        pieces = []
        for part in reversed(self.parts):
            if count <= 0:
                break
            pieces.append(part[-count:])
            count -= len(pieces[-1])
        return "".join(reversed(pieces))


def shorten(text, limit, keep_ends=False):
    """text (a str or Text) in at most limit characters: whole when it fits; otherwise its
    beginning and a marker, "... [shortened: N characters in all]", or with keep_ends its beginning
    and end around a line "... [shortened: N characters in all, M of them left out here] ...",
    cut at line ends where one is near."""
    if not isinstance(text, Text):
        text = Text(text)
    total = text.length
    if total <= limit:
        return text.whole()
    if not keep_ends:
        marker = f"... [shortened: {total} characters in all]"
        return (text.head(max(0, limit - len(marker))) + marker)[:limit]
    # The marker's longest form (M <= N), on a line of its own.
    room = max(0, limit - len(f"\n... [shortened: {total} characters in all, {total} of them left out here] ...\n"))
    head = text.head(room // 4)
    tail = text.tail(room - room // 4)
    newline = head.rfind("\n")
    if newline >= 0 and len(head) - newline <= 1000:
        head = head[: newline + 1]
    newline = tail.find("\n")
    if 0 <= newline < min(1000, len(tail) - 1):
        tail = tail[newline + 1 :]
    marker = f"... [shortened: {total} characters in all, {total - len(head) - len(tail)} of them left out here] ...\n"
    if head and not head.endswith("\n"):
        marker = "\n" + marker
    return (head + marker + tail)[:limit]


def _json_length(value):
    return len(json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":")))


def fit_error(error, max_bytes=ERROR_MAX_BYTES):
    """The error object to send: each field of MESSAGE_LIMITS (a str or Text, or None) shortened
    to its limit, then the largest shortened further until the whole, as JSON, is within
    max_bytes. Other fields (type, line, exit_code, ...) are sent as they are."""
    texts = {key: value for key, value in error.items() if key in MESSAGE_LIMITS and value is not None}
    limits = {key: MESSAGE_LIMITS[key] for key in texts}
    while True:
        fitted = {key: shorten(value, limits[key], key in _KEEP_ENDS) for key, value in texts.items()}
        out = {**error, **fitted}
        size = _json_length(out)
        if size <= max_bytes:
            return out
        shrinkable = {key: _json_length(fitted[key]) for key in fitted if limits[key] > _MIN_FIELD_CHARS}
        if not shrinkable:
            return out  # unreachable: the fields at their least are far within max_bytes
        # Shorten the largest field in proportion to what is over (escapes make bytes per
        # character vary along a text, so this may take a few rounds; each takes at least 1/32).
        key = max(shrinkable, key=shrinkable.get)
        chars = min(limits[key], len(fitted[key]))
        wanted = chars * max(0, shrinkable[key] - (size - max_bytes)) // shrinkable[key]
        limits[key] = max(_MIN_FIELD_CHARS, min(wanted, chars - max(1, chars // 32)))


def _safe_str(value):
    """str(value) as a plain str, or a note that it failed: a user object's __str__ may raise
    anything, or return a str subclass."""
    text = _str_or_none(value)
    return text if text is not None else f"<{_safe_type_name(value)} whose str() failed>"


def _str_or_none(value):
    try:
        return _exact_str(str(value))
    except BaseException:  # noqa: BLE001
        return None


def _safe_type_name(value):
    try:
        return _exact_str(str(type(value).__qualname__))
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

    def send_result(self, value, outputs=None):
        """Sends the result, and with outputs (workdir descriptor, the job's "out") the files the
        script left there, streamed: each file's base64 is written as it is, never copied into one
        message."""
        try:
            encoded = jsonify.to_json(value)
        except jsonify.NotSerializable as exc:
            return self.send_error("result_not_serializable", str(exc))
        if len(encoded) > self.max_bytes:
            return self.send_error(
                "result_too_large",
                f"the result is {len(encoded)} bytes of JSON; the limit is {self.max_bytes} bytes",
            )
        head = {"status": "ok"}
        found = files.collect(*outputs) if outputs else None
        if found is not None:
            head.update(skipped=found.skipped, files_truncated=found.truncated)
        head.update(cpu_ms=_cpu_ms(), layers=self.layers)
        self.send_raw(json.dumps(head, ensure_ascii=True, separators=(",", ":"))[:-1].encode("ascii"))
        if found is not None:
            self.send_raw(b',"files":[')
            for i, (path, size, content) in enumerate(found.files):
                path = json.dumps(path, ensure_ascii=True).encode("ascii")
                self.send_raw(b'%s{"path":%s,"size":%d,"content_base64":"' % (b"," if i else b"", path, size))
                self.send_raw(content)
                self.send_raw(b'"}')
            self.send_raw(b"]")
        self.send_raw(b',"result":' + encoded + b"}")

    def send_raw(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def send_error(self, error_type, message, **details):
        """Sends an error; message and the details of MESSAGE_LIMITS may be str or Text of any
        length: they are shortened to what the service accepts (fit_error)."""
        try:
            error = fit_error({"type": error_type, "message": message, **details})
        except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError: still say what happened
            error = {"type": error_type, "message": f"{error_type} (its details could not be reported: {type(exc).__name__})"}
        self.send({"status": "error", "cpu_ms": _cpu_ms(), "error": error})


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
    """stdin reads end-of-file: /dev/null, or an empty pipe where the sandbox's root has no device
    nodes (seccomp mode without CAP_MKNOD)."""
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        null, write_end = os.pipe()
        os.close(write_end)
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


def _user_traceback(exc, name, text):
    """Only the user's frames: what happened in script.py, not in the runner or libraries. A Text:
    it can be huge (thousands of frames, a huge message); fit_error shortens it. The exception's
    own lines at its end are shortened here to the length of a message, so that a huge message
    leaves room for the frames. Every part is read defensively: a broken linecache entry, a
    __notes__ that raises, or a MemoryError costs that part, never the report."""
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SCRIPT_NAME]
        lines = traceback.format_list(frames)
    except BaseException:  # noqa: BLE001
        lines = ["  (the frames could not be read)\n"]
    try:
        ending = traceback.format_exception_only(type(exc), exc) if text is not None else [name]
    except BaseException:  # noqa: BLE001
        ending = [name, ": ", text] if text else [name]
    ending = Text(*ending)
    if ending.length > MESSAGE_LIMITS["message"]:
        # Shortened before its final newline, so that its count matches the message's.
        if ending.parts[-1].endswith("\n"):
            ending.parts[-1] = ending.parts[-1][:-1]
            ending.length -= 1
        ending = Text(shorten(ending, MESSAGE_LIMITS["message"]))
    if ending.tail(1) != "\n":
        ending = Text(*ending.parts, "\n")
    return Text("Traceback (most recent call last):\n", *lines, *ending.parts)


def _last_user_line(exc):
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SCRIPT_NAME]
        line = frames[-1].lineno if frames else None
        return line if isinstance(line, int) else None
    except BaseException:  # noqa: BLE001
        return None


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
            Text(_safe_str(exc.msg), f" (script.py, line {exc.lineno})"),
            line=exc.lineno,
            column=exc.offset,
            text=(_safe_str(exc.text).rstrip("\n") or None) if exc.text is not None else None,
        )
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return channel.send_error("syntax_error", _safe_str(exc), line=None, column=None)
    if not _has_top_level_main(tree):
        return channel.send_error("missing_main", "the script must define a top-level function main() (def main or async def main)")
    try:
        # A descriptor of the working directory, kept for collecting "out": the script may chdir.
        workdir = files.prepare(job.get("files", []), job.get("out"))
    except files.InputFileError as exc:
        details = {"errno": exc.errno} if exc.errno else {}
        return channel.send_error("input_files", str(exc), **details)
    # From here on the script may write to the channel too: the service believes an input_files
    # error only before this byte, which the script cannot unwrite.
    channel.send_raw(USER_CODE_MARKER)

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
        shown = shorten(_safe_str(exc.code), _EXIT_ARG_SHOWN)
        return channel.send_error("killed", f"the script called sys.exit({shown}) before main() returned", exit_code=_exit_code(exc.code))
    except MemoryError:
        _flush_std_streams()
        return channel.send_error("memory_limit", "the script ran out of memory (MemoryError)")
    except BaseException as exc:  # noqa: BLE001 - every user failure is reported, never raised
        _flush_std_streams()
        return _send_exception(channel, exc)
    _flush_std_streams()
    channel.send_result(value, (workdir, job["out"]) if job.get("out") else None)


def _send_exception(channel, exc):
    """A runtime_error for what the script raised, whatever its name, str() and traceback are."""
    name = _safe_type_name(exc)
    text = _str_or_none(exc)
    # The message begins with the exception field as sent (so a huge name leaves room for the text).
    shown = shorten(name, MESSAGE_LIMITS["exception"])
    message = Text(shown, ": ", text) if text is not None else Text(shown, ": <", shown, " whose str() failed>")
    try:
        trace = _user_traceback(exc, name, text)
    except BaseException:  # noqa: BLE001 - e.g. MemoryError: the rest is still reported
        trace = Text("Traceback (most recent call last):\n  (the traceback could not be read)\n", shown, "\n")
    return channel.send_error("runtime_error", message, exception=name, line=_last_user_line(exc), traceback=trace)


# The largest exit code sent as it is: beyond it, a JSON number is no longer an exact integer
# (nor, past 4300 digits, something json.dumps writes at all).
_MAX_EXIT_CODE = 2**53 - 1


def _exit_code(code):
    if code is None:
        return 0
    if not isinstance(code, int) or isinstance(code, bool):
        return 1
    code = int.__index__(code)
    return code if -_MAX_EXIT_CODE <= code <= _MAX_EXIT_CODE else 1


async def _await(awaitable):
    return await awaitable


def main():
    job = json.loads(read_all(0))
    stdin_from_devnull()
    channel = Channel(take_channel_fd(RESULT_FD), job["result_max_bytes"])
    try:
        channel.layers = confine.confine(job["confine"], job["limits"])
    except Exception as exc:  # noqa: BLE001 - no user code runs without every required layer
        channel.send_error("sandbox_error", Text("confinement failed: ", _safe_str(exc)))
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
        os._exit(EXIT_RUNNER_FAILED)
    # atexit handlers and lingering threads of the script do not run past the result.
    os._exit(0)


if __name__ == "__main__":
    main()
