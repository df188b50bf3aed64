"""Starts one cold run on the host: the service's own code, run as the service's user (root), never
inside a sandbox and never given a script.

    python3 -I -S launcher.py --status-fd N [--uid U] [--join FILE]... [--chroot DIR --chdir DIR] -- ARGV...

It runs on the host's /usr/bin/python3 with the standard library only (-I -S): never the
sandbox's interpreter, which lives in the sandbox's root. It forks the run's process (the runner,
or nsjail), which before anything else
  - joins the run's cgroup: writes its own pid to each FILE (cgroup.procs of each controller), so
    every process the run ever starts is inside the cgroup and limited and killed with it;
  - with --chroot (seccomp mode), chroots into DIR, the run slot's own copy of the sandbox's root,
    and changes to --chdir (a path inside it), while still root: from then on ARGV and everything
    it opens are inside that root. (nsjail is never chrooted: it could not make its namespaces.)
  - with --uid, drops every group and takes uid and gid U (the run slot's own);
then execs ARGV with the descriptors below N (stdin, stdout, stderr, the result channel, ...).

The launcher itself stays outside the cgroup, as a child subreaper: whatever the run leaves behind
(daemons, clone(CLONE_PARENT) children) is reparented here and reaped, whatever PID 1 is. When the
run's process exits it writes "exit CODE" or "signal NAME" and a newline to fd N, keeps reaping
until no descendant is left (the service kills the cgroup meanwhile), and exits 0.

If the child cannot join or change uid it writes a sandbox_error message on the result channel
(fd 3) and exits 70 without running ARGV.
"""

import ctypes
import json
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
EXIT_SETUP_FAILED = 70
RESULT_FD = 3


def signal_name(number):
    """SIGKILL, ..., and SIGRTMIN+n for the real-time signals Python's enum has no member for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        rtmin = signal.SIGRTMIN
        return f"SIGRTMIN+{number - rtmin}" if number >= rtmin else f"SIG{number}"


def parse(argv):
    status_fd, uid, join, root, workdir = None, None, [], None, "/"
    i = 0
    while argv[i] != "--":
        flag, value = argv[i], argv[i + 1]
        if flag == "--status-fd":
            status_fd = int(value)
        elif flag == "--uid":
            uid = int(value)
        elif flag == "--join":
            join.append(value)
        elif flag == "--chroot":
            root = value
        elif flag == "--chdir":
            workdir = value
        else:
            raise SystemExit(f"launcher: unknown flag {flag}")
        i += 2
    command = argv[i + 1 :]
    if status_fd is None or not command:
        raise SystemExit("launcher: usage: --status-fd N [--uid U] [--join FILE]... [--chroot DIR --chdir DIR] -- ARGV...")
    return status_fd, uid, join, root, workdir, command


def child(status_fd, uid, join, root, workdir, command, libc):
    try:
        os.close(status_fd)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for procs in join:
            with open(procs, "w") as handle:
                handle.write(f"{os.getpid()}\n")
        if root is not None:
            os.chroot(root)
            os.chdir(workdir)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.execv(command[0], command)
    except BaseException as exc:  # noqa: BLE001 - no run without its cgroup and uid
        message = {"status": "error", "cpu_ms": 0, "layers": {}, "error": {"type": "sandbox_error", "message": f"the launcher could not start the run: {type(exc).__name__}: {exc}"[:2000]}}
        try:
            os.write(RESULT_FD, json.dumps(message).encode())
        finally:
            os._exit(EXIT_SETUP_FAILED)


def main():
    status_fd, uid, join, root, workdir, command = parse(sys.argv[1:])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the service died: so do we
    pid = os.fork()
    if pid == 0:
        child(status_fd, uid, join, root, workdir, command, libc)
    # Hold none of the run's pipes: the service sees end-of-file when the run's processes close them.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, status_fd)
    os.closerange(status_fd + 1, 1 << 16)
    reported = False
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break  # nothing left to reap
        except InterruptedError:
            continue
        if done == pid and not reported:
            reported = True
            # Whatever happens here, the launcher goes on reaping: its orphans have no one else.
            try:
                if os.WIFSIGNALED(status):
                    line = f"signal {signal_name(os.WTERMSIG(status))}\n"
                else:
                    line = f"exit {os.waitstatus_to_exitcode(status)}\n"
                os.write(status_fd, line.encode())
            except Exception:  # noqa: BLE001
                pass
            finally:
                try:
                    os.close(status_fd)
                except OSError:
                    pass
    os._exit(0)


if __name__ == "__main__":
    main()
