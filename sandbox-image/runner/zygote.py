"""The warm-pool zygote: an interpreter with the runner, numpy and pandas already imported, which
forks one child per run ahead of demand. It never runs user code and never sees a script.

Started by the service with the sandbox's environment allow-list, as
    python3 -I -B -u zygote.py <channel-socket-path> <seccomp-policy-path> <memory-mb> [--lean]
With --lean it preloads the runner and the small standard-library set but not numpy and pandas:
the lean zygote, whose children start and exit faster, for scripts that import only the standard
library. Its children are confined exactly as the full zygote's: the same command, the same
limits (RLIMIT_AS's preload allowance included: the service sends the full zygote's measure to
both), the same policy; only what is already imported differs.
Always on the sandbox root's interpreter. seccomp mode: as root, chrooted into its own copy of the
sandbox's root (the service's seccomp/slots.ts); each child chroots on into its run slot's root
("root" in its command) before it takes the run's uid. nsjail mode: as root of zygote.cfg's jail
(a user namespace), with only the capabilities forking jailed children takes.

Control protocol, one JSON object per line:
  stdin  (service -> zygote)  {"op": "prefork", "token", "uid", "workdir", "environment", "limits",
                               "confine", "preload_allowance_bytes", "root"?: "/slots/<n>",
                               "namespaces"?: {"mounts": [...]}}
  stdout (zygote -> service)  {"event": "started", "pid", "preload_bytes"}   once, when preloading is done
                              {"event": "exit", "token", "code", "signal"}
Each child, while still privileged, connects three times to the service's Unix socket (a
directory only root, or in nsjail mode the zygote's uid, can enter) and announces
"<token> <stream>\n" on each: stdout, stderr and result. With "namespaces" (nsjail mode) it is
PID 1 of a new pid namespace and enters new mount, ipc and network namespaces with its own /proc,
/tmp and /dev/shm (namespaces.py). It then becomes the run's uid, enters its directory, resets its
environment, and applies exactly the cold path's confinement (rlimits, no_new_privs, Landlock,
seccomp) before saying "ready\n" (runner.WARM_READY) on the result connection. Only then does the
service send the job (script, args, input files, and the run's own cpu_seconds and memory_bytes,
to which the child lowers its limits before any user code) on that same connection (runner.py's
protocol), so scripts, arguments, files and results never pass through the zygote's memory,
which later children inherit.
"""

import json
import os
import select
import signal
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confine  # noqa: E402
from launcher import signal_name  # noqa: E402
import namespaces  # noqa: E402
import runner  # noqa: E402

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
EXIT_SETUP_FAILED = 70


# Loaded once so children start with them: what the runner and a typical script import, and
# seccomp (confinement needs it); the full zygote adds numpy and pandas.
LEAN_PRELOAD = ("asyncio", "ast", "inspect", "linecache", "traceback", "seccomp")
FULL_PRELOAD = LEAN_PRELOAD + ("numpy", "pandas")


def preload(lean):
    import importlib

    for name in LEAN_PRELOAD if lean else FULL_PRELOAD:
        importlib.import_module(name)


def vm_size_bytes():
    """The address space this process maps (what RLIMIT_AS counts): /proc/self/status's VmSize,
    or where there is no /proc (seccomp mode's root has none) what is left under RLIMIT_AS,
    measured by reserving it: RLIMIT_AS minus the largest reservation the kernel grants."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _address_space_by_reservation()


def _address_space_by_reservation():
    import ctypes
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    prot_none, map_private_anonymous_noreserve = 0, 0x02 | 0x20 | 0x4000
    page = 1 << 16  # 64 KiB: precise enough for a limit in megabytes
    low, high = 0, limit // page  # the largest reservable number of pages lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        address = libc.mmap(None, middle * page, prot_none, map_private_anonymous_noreserve, -1, 0)
        if address is not None and address != ctypes.c_void_p(-1).value:
            libc.munmap(address, middle * page)
            low = middle
        else:
            high = middle - 1
    return max(0, limit - low * page)


def emit(event):
    os.write(1, (json.dumps(event, separators=(",", ":")) + "\n").encode())


def connect(path, token, stream):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(f"{token} {stream}\n".encode())
    return sock.detach()


def with_preload(limits, preload_bytes):
    """limits with RLIMIT_AS's room for what preloading mapped. RLIMIT_AS counts address space, and
    a child starts with numpy and pandas already mapped, which a cold run pays for only if the
    script imports them: the limit is raised by what preloading added, so a script has at least
    the cold path's room for its own data. preload_bytes is the full zygote's measure, for
    children of both kinds (the command's preload_allowance_bytes): a lean child that imports
    pandas itself ends up with the room a full child has. (Real memory use is what the service's
    sampler holds to SCRIPT_MEMORY_MB per run.)"""
    return dict(limits, memory_bytes=limits["memory_bytes"] + preload_bytes)


def child(command, channel_path, compiled):
    """Runs in the forked child. Ends in os._exit; never returns."""
    try:
        token = command["token"]
        uid = command["uid"]
        workdir = command["workdir"]
        out = connect(channel_path, token, "stdout")
        err = connect(channel_path, token, "stderr")
        res = connect(channel_path, token, "result")
        runner.stdin_from_devnull()
        os.dup2(out, 1)
        os.dup2(err, 2)
        result_fd = runner.take_channel_fd(res)
        if command.get("namespaces"):
            namespaces.enter_fresh_namespaces(command["namespaces"])
        if command.get("root"):
            # seccomp mode: into the run slot's own root (below the zygote's), while still root.
            # Nothing of the zygote's root stays reachable: the working directory moves with it,
            # and take_channel_fd closed every descriptor but the run's streams.
            os.chroot(command["root"])
            os.chdir("/")

        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        confine._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # cleared by setuid: set after
        # setuid also cleared "dumpable", which makes /proc/self root-owned; a cold run (exec'd as
        # its uid) is dumpable, so restore it for the same view of /proc/self.
        confine._libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(command["environment"])
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        channel = runner.Channel(result_fd, 0)
        preload_bytes = command["preload_allowance_bytes"]
        channel.layers = confine.confine(command["confine"], with_preload(command["limits"], preload_bytes), compiled)
    except BaseException as exc:  # noqa: BLE001 - no user code runs without every layer
        try:
            os.write(2, f"warm child set-up failed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(EXIT_SETUP_FAILED)
    try:
        os.write(result_fd, runner.WARM_READY + runner.CONFINED_MARKER)
        job = json.loads(runner.read_all(result_fd))
        # The run's own limits, at most those it was confined with: before any user code (and
        # before its input files are written, in runner.run).
        confine.lower_rlimits(with_preload(job["limits"], preload_bytes))
        channel.max_bytes = job["result_max_bytes"]
        runner.run(job, channel)
    except BaseException:  # noqa: BLE001 - e.g. the service went away; the exit status says it
        os._exit(runner.EXIT_RUNNER_FAILED)
    # Close the streams before exiting: tearing down an address space that maps numpy and pandas
    # (a full child's) takes milliseconds, and the kernel closes descriptors only after it. The service answers
    # once the streams are closed and every process of the run is dead or exiting.
    for fd in (result_fd, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    os._exit(0)


def main():
    """The zygote's loop. Returns None when the service is gone, and in each forked child the
    arguments of child(), which then runs outside this frame."""
    channel_path, policy_path, memory_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if sys.argv[4:] not in ([], ["--lean"]):
        sys.exit(f"unexpected arguments {sys.argv[4:]!r}: the only option is --lean")
    lean = sys.argv[4:] == ["--lean"]
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    confine._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of runs come back here to be reaped
    confine._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the service died: so do we
    before = vm_size_bytes()
    preload(lean)
    preload_bytes = max(0, vm_size_bytes() - before)
    # The seccomp policy compiled once to BPF: every child loads the same program.
    compiled = confine.compile_seccomp(confine.load_policy(policy_path))
    # Move everything loaded so far out of the collector's reach: a child's garbage collections
    # then do not touch (and copy) the pages it shares with the zygote.
    import gc

    gc.collect()
    gc.freeze()

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    tokens = {}  # pid -> token of children forked for runs
    pid_namespaces = None  # nsjail mode: made at the first child that asks for namespaces
    emit({"event": "started", "pid": os.getpid(), "preload_bytes": preload_bytes})
    pending = b""
    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            reap(tokens)
        if 0 in readable:
            data = os.read(0, 1 << 16)
            if not data:
                return  # the service closed our stdin: it is gone or wants us gone
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                command = json.loads(line)
                if command.get("op") != "prefork":
                    continue
                try:
                    if command.get("namespaces"):
                        pid_namespaces = pid_namespaces or namespaces.PidNamespaces()
                        pid_namespaces.next_child_in_new_namespace()
                    pid = os.fork()
                except OSError as exc:
                    os.write(2, f"cannot fork a child: {exc}\n".encode())
                    emit({"event": "exit", "token": command["token"], "code": EXIT_SETUP_FAILED, "signal": None})
                    continue
                if pid == 0:
                    # Leave the loop and this frame before the child does anything: its locals
                    # (other children's tokens, pending commands) must not be reachable from a
                    # script walking the stack.
                    return command, channel_path, compiled
                tokens[pid] = command["token"]


def reap(tokens):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        token = tokens.pop(pid, None)
        if token is None:
            continue  # an orphan of some run, reparented to us: reaped, nothing to report
        if os.WIFSIGNALED(status):
            emit({"event": "exit", "token": token, "code": None, "signal": signal_name(os.WTERMSIG(status))})
        else:
            emit({"event": "exit", "token": token, "code": os.waitstatus_to_exitcode(status), "signal": None})


if __name__ == "__main__":
    forked = main()
    if forked:  # in a forked child, with the zygote's loop already unwound
        child(*forked)
