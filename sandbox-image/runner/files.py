"""A run's files (runner.py's protocol): the job's input "files", written into the working
directory before any user code, and what the script leaves under the job's "out" directory,
collected after main() returns for the ok message's "files", "skipped" and "files_truncated".

Both go one path component at a time from directory descriptors and never follow a symbolic link:
the working directory is the script's to fill with anything, and what the runner writes or sends
must be exactly what is there, never what a link points to.
"""

import base64
import errno
import os
import stat

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a regular file swapped for a fifo after its lstat must not block the open.
READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

MAX_DEPTH = 16  # directories below out/ that are walked; deeper ones are skipped "too_deep"
MAX_ENTRIES = 10000  # directory entries looked at in all; more: files_truncated
SKIPPED_MAX = 100  # entries of "skipped"; more are left out of it
PATH_MAX_CHARS = 1024  # the service's maxLength of a path


class InputFileError(Exception):
    """An input file (or out/) could not be made: no user code may run (error type input_files).
    errno names the OSError's cause where there was one: ENOSPC or EDQUOT is the run's disk being
    full, the instance's trouble rather than the request's (the service answers 503 for it)."""

    def __init__(self, message, error=None):
        super().__init__(message)
        self.errno = errno.errorcode.get(error.errno) if isinstance(error, OSError) and error.errno else None


def prepare(files, out):
    """Writes the input files (the job's "files") in the working directory, in their order, then
    makes the out directory (the job's "out"). Returns a descriptor of the working directory for
    collect (the script may chdir), or None when the job has neither. Raises InputFileError."""
    if not files and not out:
        return None
    try:
        workdir = os.open(".", OPEN_DIR)
    except OSError as exc:
        raise InputFileError(f"could not open the working directory: {exc.strerror}", exc) from None
    for item in files:
        path = item["path"]
        try:
            if "content" in item:
                data = item["content"].encode("utf-8")
            else:
                data = base64.b64decode(item["content_base64"], validate=True)
        except (UnicodeError, ValueError):
            raise InputFileError(f"could not write input file {path}: its content is not valid UTF-8 text or base64") from None
        except MemoryError:
            raise InputFileError(f"could not write input file {path}: it does not fit in the run's memory") from None
        try:
            _write(workdir, path.split("/"), data)
        except OSError as exc:
            raise InputFileError(f"could not write input file {path}: {exc.strerror or exc}", exc) from None
    if out:
        try:
            os.mkdir(out["dir"], 0o755, dir_fd=workdir)
        except FileExistsError:
            pass  # only an input file could have made it (the service refuses paths below out/)
        except OSError as exc:
            raise InputFileError(f"could not create the output directory {out['dir']}: {exc.strerror}", exc) from None
    return workdir


def _write(workdir, names, data):
    """Creates the file names[-1] in the directory names[:-1] below workdir (made where missing),
    with data. Fails if anything on the way is a symbolic link, or the file exists."""
    fd = os.open(".", OPEN_DIR, dir_fd=workdir)
    try:
        for name in names[:-1]:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass  # an earlier file's directory (or a link: the open below refuses it)
            parent, fd = fd, None
            try:
                fd = os.open(name, OPEN_DIR, dir_fd=parent)
            finally:
                os.close(parent)
        parent, fd = fd, None
        try:
            fd = os.open(names[-1], CREATE_FILE, 0o644, dir_fd=parent)
        finally:
            os.close(parent)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        if fd is not None:
            os.close(fd)


class Collected:
    """What collect found: files as (path, size, base64 bytes), in path order; skipped as the
    message's objects; truncated when a cap left something out."""

    def __init__(self, max_files, max_bytes):
        self.files = []
        self.skipped = []
        self.truncated = False
        self.max_files = max_files
        self.budget = max_bytes  # bytes still allowed
        self.entries = 0

    def skip(self, path, reason):
        if len(self.skipped) < SKIPPED_MAX:
            self.skipped.append({"path": path[:PATH_MAX_CHARS], "reason": reason})


def collect(workdir, out):
    """The regular files below out["dir"] in workdir, within out["max_files"] and out["max_bytes"].
    Never raises: whatever goes wrong (a MemoryError, a signal handler of the script's raising) is
    one skipped "error" and nothing collected."""
    try:
        found = Collected(out["max_files"], out["max_bytes"])
        fd = _open_dir(workdir, out["dir"], out["dir"], found, missing_ok=True)
        if fd is not None:
            try:
                _walk(fd, out["dir"], 0, found)
            finally:
                os.close(fd)
        return found
    except BaseException:  # noqa: BLE001 - the result is still sent, without files
        found = Collected(0, 0)
        found.skip(out["dir"], "error")
        found.truncated = True
        return found


def _kind(mode):
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _open_dir(dir_fd, name, path, found, missing_ok=False):
    """A descriptor of the directory name in dir_fd, or None (and a skipped entry unless it is
    simply missing and missing_ok)."""
    try:
        return os.open(name, OPEN_DIR, dir_fd=dir_fd)
    except OSError as exc:
        failure = exc
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        if not missing_ok:
            found.skip(path, "changed")
        return None
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        found.skip(path, _kind(mode) if missing_ok else "changed")
    else:
        found.skip(path, "changed" if failure.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR) else "unreadable")
    return None


def _walk(fd, prefix, depth, found):
    """The entries of the directory fd (whose path is prefix), in path order: each entry is sorted
    by its name, with "/" after a directory's, so that the walk meets paths in sorted order."""
    names = []
    with os.scandir(fd) as listing:
        for entry in listing:
            if found.entries >= MAX_ENTRIES:
                found.truncated = True
                break
            found.entries += 1
            names.append(entry.name)
    entries = []
    for name in names:
        raw = os.fsencode(name)
        try:
            shown, utf8 = raw.decode("utf-8"), True
        except UnicodeDecodeError:
            shown, utf8 = raw.decode("utf-8", "replace"), False
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except OSError:
            mode = None  # gone since it was listed
        key = shown + "/" if mode is not None and stat.S_ISDIR(mode) else shown
        entries.append((key, name, f"{prefix}/{shown}", utf8, mode))
    entries.sort(key=lambda entry: entry[0])
    for _, name, path, utf8, mode in entries:
        if not utf8:
            found.skip(path, "name_not_utf8")
        elif has_control_character(name):
            found.skip(path, "name_not_printable")
        elif mode is None:
            found.skip(path, "changed")
        elif len(path) > PATH_MAX_CHARS:
            found.skip(path, "path_too_long")
        elif stat.S_ISREG(mode):
            _take(fd, name, path, found)
        elif not stat.S_ISDIR(mode):
            found.skip(path, _kind(mode))
        elif depth >= MAX_DEPTH:
            found.skip(path, "too_deep")
        else:
            child = _open_dir(fd, name, path, found)
            if child is not None:
                try:
                    _walk(child, path, depth + 1, found)
                finally:
                    os.close(child)


def has_control_character(name):
    """Whether name holds a control character: C0 (U+0000 to U+001F) or DEL (U+007F), a newline or
    an escape sequence in a path a client may print or use. The service's rule for the paths it
    accepts (protocol.ts, hasControlCharacter); runner.python.test.ts checks that the two agree."""
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in name)


def _take(dir_fd, name, path, found):
    """The regular file name of dir_fd into found, if it fits what is left of the caps."""
    if len(found.files) >= found.max_files:
        found.truncated = True
        return
    try:
        fd = os.open(name, READ_FILE, dir_fd=dir_fd)
    except OSError as exc:
        found.skip(path, "changed" if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.ENOTDIR) else "unreadable")
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return found.skip(path, "changed")
        if info.st_size > found.budget:
            found.truncated = True  # a later, smaller file may still fit
            return
        data = bytearray()
        while len(data) <= found.budget:  # at most budget + 1 bytes: enough to tell it does not fit
            chunk = os.read(fd, min(found.budget + 1 - len(data), 1 << 20))
            if not chunk:
                break
            data += chunk
    except OSError:
        return found.skip(path, "unreadable")
    finally:
        os.close(fd)
    if len(data) > found.budget:
        found.truncated = True
        return
    found.budget -= len(data)
    found.files.append((path, len(data), base64.b64encode(data)))
