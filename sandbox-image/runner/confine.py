"""Per-run confinement the runner applies to itself before any user code: rlimits, no_new_privs,
Landlock (when the kernel has it) and the seccomp policy of ../seccomp-policy.json.

Order matters: rlimits first (lowering needs no privilege), then no_new_privs (required by both
Landlock and seccomp for an unprivileged process), Landlock, and seccomp last so the filter does
not have to allow the Landlock syscalls' set-up.
"""

import ctypes
import errno
import json
import os
import resource
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_SET_NO_NEW_PRIVS = 38

# Landlock (include/uapi/linux/landlock.h); x86_64 syscall numbers.
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class ConfinementError(Exception):
    """A required layer could not be applied; the run must not proceed."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def apply_rlimits(limits):
    pairs = {
        resource.RLIMIT_CPU: (limits["cpu_seconds"], limits["cpu_seconds"] + 1),
        resource.RLIMIT_AS: (limits["memory_bytes"],) * 2,
        resource.RLIMIT_NPROC: (limits["max_processes"],) * 2,
        resource.RLIMIT_NOFILE: (limits["max_open_files"],) * 2,
        resource.RLIMIT_FSIZE: (limits["max_file_bytes"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in pairs.items():
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))


def lower_rlimits(limits):
    """A warm child's own run's limits, once its job arrives: RLIMIT_CPU and RLIMIT_AS lowered to
    limits ({"cpu_seconds", "memory_bytes"}) as apply_rlimits sets them, never raised (soft or
    hard). The child was confined with the service's largest. Lowering its own limits takes no
    privilege and no call the seccomp policy refuses (setrlimit and prlimit64 are allowed); raising
    a hard limit again takes CAP_SYS_RESOURCE, which no run has."""
    pairs = {
        resource.RLIMIT_CPU: (limits["cpu_seconds"], limits["cpu_seconds"] + 1),
        resource.RLIMIT_AS: (limits["memory_bytes"],) * 2,
    }
    for which, (soft, hard) in pairs.items():
        current_soft, current_hard = resource.getrlimit(which)
        hard = _at_most(hard, current_hard)
        soft = _at_most(min(soft, hard), current_soft)
        resource.setrlimit(which, (soft, hard))


def _at_most(value, limit):
    return value if limit == resource.RLIM_INFINITY else min(value, limit)


def set_no_new_privs():
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")


def landlock_abi():
    abi = _libc.syscall(SYS_landlock_create_ruleset, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return abi if abi > 0 else 0


def apply_landlock(read_paths, write_paths):
    """Reads only below read_paths, writes only below write_paths. Returns the ABI used (0 = none)."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    fs = FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(handled_access_fs=fs)
    size = 8
    if abi >= 4:  # no TCP bind or connect at all (seccomp already refuses the sockets)
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:  # no signals to, or abstract sockets of, processes outside this run
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = _libc.syscall(SYS_landlock_create_ruleset, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise ConfinementError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        for path in read_paths:
            _landlock_allow(ruleset, path, READ_RIGHTS)
        for path in write_paths:
            _landlock_allow(ruleset, path, fs & ~FS_IOCTL_DEV)
        if _libc.syscall(SYS_landlock_restrict_self, ruleset, 0) != 0:
            raise ConfinementError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return abi


def _landlock_allow(ruleset, path, rights):
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent on this system: nothing to allow
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        if _libc.syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise ConfinementError(f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def load_policy(policy_path):
    with open(policy_path, encoding="utf-8") as handle:
        return json.load(handle)


def apply_seccomp(policy):
    """Installs the policy. Returns the number of rules; raises ConfinementError if it cannot."""
    flt, rules = build_seccomp(policy)
    try:
        flt.load()
    except Exception as exc:  # noqa: BLE001 - any failure means no filter: refuse to run
        raise ConfinementError(f"loading the seccomp filter failed: {exc}") from None
    return rules


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def compile_seccomp(policy):
    """The policy as the kernel's BPF program, built once (the warm path's zygote) and loaded by
    many (load_seccomp_bpf): the same rules as apply_seccomp, without rebuilding them per run."""
    flt, rules = build_seccomp(policy)
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "wb", closefd=True) as sink:
            flt.export_bpf(sink)
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    return b"".join(chunks), rules


def load_seccomp_bpf(program):
    """Installs a program from compile_seccomp. Needs no_new_privs (set before)."""
    count = len(program) // ctypes.sizeof(_SockFilter)
    if count == 0 or len(program) % ctypes.sizeof(_SockFilter):
        raise ConfinementError("the compiled seccomp program is malformed")
    buffer = (_SockFilter * count).from_buffer_copy(program)
    fprog = _SockFprog(len=count, filter=ctypes.cast(buffer, ctypes.POINTER(_SockFilter)))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise ConfinementError(f"prctl(PR_SET_SECCOMP) failed: {os.strerror(ctypes.get_errno())}")


def build_seccomp(policy):
    """The libseccomp filter of the policy and its number of rules."""
    try:
        import seccomp
    except ImportError as exc:
        raise ConfinementError(f"python3-seccomp is not importable: {exc}") from None
    deny = lambda name: seccomp.ERRNO(getattr(errno, name))  # noqa: E731
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    flt.set_attr(seccomp.Attr.ACT_BADARCH, deny(policy["other_abis"]["errno"]))
    rules = 0

    def add(action, syscall, *args):
        nonlocal rules
        try:
            flt.add_rule(action, syscall, *args)
        except (RuntimeError, ValueError) as exc:
            if syscall_unknown(seccomp, syscall):
                return  # this libseccomp/kernel has no such syscall: nothing to deny
            raise ConfinementError(f"seccomp rule for {syscall} failed: {exc}") from None
        rules += 1

    for group in policy["deny"]:
        for syscall in group["syscalls"]:
            add(deny(group["errno"]), syscall)

    import socket

    sock = policy["socket"]
    family = getattr(socket, sock["allow_family"])
    add(deny(sock["errno"]), "socket", seccomp.Arg(0, seccomp.NE, family))
    add(deny(sock["errno"]), "socketpair", seccomp.Arg(0, seccomp.NE, family))
    allowed_type = getattr(socket, sock["allow_unix_type"])
    for sock_type in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_RDM, socket.SOCK_SEQPACKET, 10):
        if sock_type != allowed_type:
            # The low 4 bits are the type; SOCK_CLOEXEC and SOCK_NONBLOCK ride above them.
            for call in ("socket", "socketpair"):
                add(deny(sock["errno"]), call, seccomp.Arg(0, seccomp.EQ, family), seccomp.Arg(1, seccomp.MASKED_EQ, 0xF, sock_type))
    add(deny(policy["sendto_with_address"]["errno"]), "sendto", seccomp.Arg(4, seccomp.NE, 0))

    clone = policy["clone_namespace_flags"]
    for name in clone["flags"]:
        flag = CLONE_FLAGS[name]
        add(deny(clone["errno"]), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    add(deny(policy["clone3"]["errno"]), "clone3")

    persona = policy["personality"]
    for name in persona["deny_flags"]:
        flag = PERSONALITY_FLAGS[name]
        add(deny(persona["errno"]), "personality", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    return flt, rules


def syscall_unknown(seccomp, name):
    try:
        seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        return False
    except (ValueError, RuntimeError):
        return True


CLONE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_PARENT": 0x00008000,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

PERSONALITY_FLAGS = {
    "ADDR_NO_RANDOMIZE": 0x0040000,
    "MMAP_PAGE_ZERO": 0x0100000,
    "ADDR_COMPAT_LAYOUT": 0x0200000,
    "READ_IMPLIES_EXEC": 0x0400000,
    "ADDR_LIMIT_3GB": 0x8000000,
}


def interpreter_paths():
    """What the interpreter itself needs to read: its prefixes and import path."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    return sorted(paths)


def confine(spec, limits, compiled=None):
    """Applies every layer in spec; returns a dict of what is active, for the probe's report.
    compiled: (program, rules) from compile_seccomp, to load instead of building the filter."""
    policy = None if compiled else load_policy(spec["seccomp_policy"])  # read before Landlock hides it
    import seccomp  # noqa: F401 - likewise, import while its module file is still readable
    import socket  # noqa: F401
    del seccomp, socket  # loaded into sys.modules: the names are not needed

    apply_rlimits(limits)
    set_no_new_privs()
    abi = 0
    if spec.get("landlock", True):
        abi = apply_landlock(spec["read_paths"] + interpreter_paths(), spec["write_paths"])
        if abi == 0 and spec.get("landlock") == "required":
            raise ConfinementError("Landlock is required but this kernel does not offer it")
    if compiled:
        load_seccomp_bpf(compiled[0])
        rules = compiled[1]
    else:
        rules = apply_seccomp(policy)
    return {"landlock_abi": abi, "seccomp_rules": rules, "no_new_privs": True}
