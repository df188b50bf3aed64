"""Fresh namespaces for each warm child in nsjail mode (the zygote runs in zygote.cfg's jail).

A cold run gets new pid, mount, ipc and network namespaces from nsjail. A warm child gets the
same from the zygote: the zygote points its next child at a new pid namespace (the child is its
PID 1, so when it ends every process of the run ends with it and no run sees another's
processes), and the child unshares mount, ipc and network namespaces, then mounts its own /proc,
/tmp and /dev/shm as the service describes them (python.cfg's options). All of it needs the
jail's capabilities, which the child gives up before any user code: it empties its bounding,
ambient and inheritable sets here, and loses the rest when it takes its run's uid.
"""

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_FLAGS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8}
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class PidNamespaces:
    """Held by the zygote: before each fork, a new pid namespace for the next child."""

    def __init__(self):
        # The zygote's own pid namespace: setns back to it first, because unshare(CLONE_NEWPID)
        # refuses (EINVAL) while the namespace for children is not the caller's own.
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def next_child_in_new_namespace(self):
        _check(_libc.setns(self._own, CLONE_NEWPID), "setns(own pid namespace)")
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")


def enter_fresh_namespaces(spec):
    """In the child, while it still has the jail's capabilities. spec: {"mounts", "unmount"}."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET), "unshare(mount, ipc, network)")
    # Nothing mounted here may reach the zygote's mount namespace, nor anything of it reach here.
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    for mount in spec["mounts"]:
        flags = 0
        for name in mount["flags"]:
            flags |= MS_FLAGS[name]
        source = mount["fstype"].encode()
        options = mount["options"].encode() or None
        _check(_libc.mount(source, mount["target"].encode(), source, flags, options), f"mounting {mount['target']}")
    # What only the zygote's side needs (the channel socket's directory, once connected).
    for target in spec["unmount"]:
        _check(_libc.umount2(target.encode(), MNT_DETACH), f"unmounting {target}")
    drop_capability_sets()


def drop_capability_sets():
    """Empties the bounding, ambient and inheritable sets, as nsjail does for a cold run."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, f"dropping capability {cap} from the bounding set")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing the ambient set")
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "clearing the inheritable set")
