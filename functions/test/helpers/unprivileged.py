"""Runs a command the way `docker run` without --privileged would: root, but
  - in a mount namespace of its own where every cgroup hierarchy is read-only (Docker mounts
    /sys/fs/cgroup read-only in an unprivileged container);
  - with only Docker's default capabilities (no CAP_SYS_ADMIN, CAP_SYS_PTRACE, ...), in the
    bounding, permitted, effective and inheritable sets;
  - under a seccomp filter like Docker's default profile: no unshare, setns, mount, umount,
    pivot_root, no clone() of a new namespace, no keyrings, bpf, ptrace, perf or kernel modules.

    python3 -I unprivileged.py COMMAND [ARG...]

Only for tests (functions/test/unprivileged.test.ts and the "unprivileged" jest project): it uses
nothing but the standard library and the system's libseccomp (a dependency of apt).
"""

import ctypes
import ctypes.util
import errno
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 1 << 18

# Docker's default capability set (moby's oci/caps/defaults.go).
DOCKER_CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}
PR_CAPBSET_DROP = 24

# What Docker's default seccomp profile refuses (to a root process without CAP_SYS_ADMIN).
DENIED = [
    "unshare", "setns", "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf",
    "ptrace", "perf_event_open", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "userfaultfd",
]
# clone()'s namespace flags (CLONE_NEWTIME's bit is the exit signal's in clone(), so not here).
NAMESPACE_FLAGS = 0x10000000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000 | 0x02000000 | 0x00020000


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def read_only_cgroups():
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split(" - ")[0].split()[4] for line in mountinfo if " - cgroup" in line]
    for point in points:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        check(libc.mount(None, point.encode(), None, flags, None), f"remounting {point} read-only")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def docker_capabilities():
    keep = set(DOCKER_CAPS.values())
    for cap in range(64):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            check(-1, f"dropping capability {cap}")
    mask = sum(1 << cap for cap in keep)
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = data[1].inheritable = mask >> 32
    check(libc.capset(ctypes.byref(header), data), "capset")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def docker_seccomp():
    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
    ctx = seccomp.seccomp_init(allow)
    for name in DENIED:
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:
            check(seccomp.seccomp_rule_add(ctx, deny, number, 0), f"seccomp rule for {name}")
    # clone3's flags cannot be inspected: ENOSYS, as Docker answers, makes libc fall back to clone().
    clone3 = seccomp.seccomp_syscall_resolve_name(b"clone3")
    check(seccomp.seccomp_rule_add(ctx, 0x00050000 | errno.ENOSYS, clone3, 0), "seccomp rule for clone3")
    masked_eq = 7  # SCMP_CMP_MASKED_EQ
    clone = seccomp.seccomp_syscall_resolve_name(b"clone")
    for bit in range(32):
        flag = 1 << bit
        if NAMESPACE_FLAGS & flag:
            rule = seccomp.seccomp_rule_add
            rule.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, _ArgCmp]
            check(rule(ctx, deny, clone, 1, _ArgCmp(0, masked_eq, flag, flag)), "seccomp rule for clone")
    check(seccomp.seccomp_load(ctx), "loading the seccomp filter")


def main():
    read_only_cgroups()
    # As runc does: the filter is loaded while CAP_SYS_ADMIN is still held (so without
    # no_new_privs, which Docker does not set by default), then the capabilities are dropped.
    docker_seccomp()
    docker_capabilities()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
