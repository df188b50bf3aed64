"""A run's files (files.py): input files are written where they say and never through a link;
what the script leaves under out/ is collected by the rules of runner.py's protocol (regular files
only, in path order, within the caps, every link, fifo or odd name passed over and said so); and a
warm child's limits are only ever lowered (confine.lower_rlimits), which a confined process may do.

In temporary directories of this process; the confinement test forks.
"""

import base64
import importlib.util
import json
import os
import resource
import shutil
import socket
import stat
import tempfile
import unittest
from unittest import mock

import confine
import files
import runner

OUT = {"dir": "out", "max_files": 100, "max_bytes": 1 << 20}


class InDirectory(unittest.TestCase):
    """Each test in a fresh, empty working directory (as a run's is)."""

    def setUp(self):
        self.previous = os.getcwd()
        self.dir = tempfile.mkdtemp()
        os.chdir(self.dir)
        self.addCleanup(self._leave)
        self.outside = tempfile.mkdtemp()  # where a link points: must stay untouched and unread
        with open(os.path.join(self.outside, "secret"), "w") as f:
            f.write("secret")

    def _leave(self):
        os.chdir(self.previous)
        shutil.rmtree(self.dir)
        shutil.rmtree(self.outside)

    def prepare(self, items, out=OUT):
        fd = files.prepare(items, out)
        self.addCleanup(os.close, fd)
        return fd

    def collect(self, **caps):
        workdir = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, workdir)
        found = files.collect(workdir, dict(OUT, **caps))
        return [(path, base64.b64decode(content)) for path, size, content in found.files], found.skipped, found.truncated

    def make(self, path, data=b"x"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


class WriteInputsTest(InDirectory):
    def test_text_and_base64_files_in_their_directories_then_out(self):
        self.prepare([
            {"path": "data/in.csv", "content": "a,b\n1,\u00e9\n"},
            {"path": "data/deeper/img.bin", "content_base64": base64.b64encode(bytes(range(256))).decode()},
            {"path": "top.txt", "content": ""},
        ])
        with open("data/in.csv", "rb") as f:
            self.assertEqual(f.read(), "a,b\n1,\u00e9\n".encode())
        with open("data/deeper/img.bin", "rb") as f:
            self.assertEqual(f.read(), bytes(range(256)))
        self.assertEqual(os.path.getsize("top.txt"), 0)
        self.assertTrue(stat.S_ISDIR(os.lstat("out").st_mode))
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(stat.S_IMODE(os.stat("top.txt").st_mode), 0o644 & ~umask)
        self.assertEqual(stat.S_IMODE(os.stat("data").st_mode), 0o755 & ~umask)

    def test_nothing_to_do_without_files_or_out(self):
        self.assertIsNone(files.prepare([], None))
        self.assertEqual(os.listdir("."), [])

    def test_a_symlink_component_fails_and_is_not_followed(self):
        os.symlink(self.outside, "data")
        with self.assertRaisesRegex(files.InputFileError, r"^could not write input file data/x: "):
            files.prepare([{"path": "data/x", "content": "x"}], OUT)
        self.assertEqual(os.listdir(self.outside), ["secret"])

    def test_a_symlink_in_place_of_the_file_fails_and_is_not_followed(self):
        os.symlink(os.path.join(self.outside, "secret"), "x")
        os.symlink(os.path.join(self.outside, "new"), "dangling")
        for path in ("x", "dangling"):
            with self.assertRaisesRegex(files.InputFileError, f"^could not write input file {path}: File exists"):
                files.prepare([{"path": path, "content": "overwritten"}], OUT)
        with open(os.path.join(self.outside, "secret")) as f:
            self.assertEqual(f.read(), "secret")
        self.assertEqual(os.listdir(self.outside), ["secret"])

    def test_content_that_is_not_base64_or_not_utf8(self):
        for item in ({"path": "a", "content_base64": "not base64!"}, {"path": "a", "content": "\ud800"}):
            with self.assertRaisesRegex(files.InputFileError, "^could not write input file a: its content is not valid"):
                files.prepare([item], OUT)

    def test_over_rlimit_fsize_is_an_error(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # the interpreter ignores SIGXFSZ
        try:
            with self.assertRaisesRegex(files.InputFileError, "^could not write input file big: File too large$"):
                files.prepare([{"path": "big", "content": "x" * 5000}], OUT)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    def test_out_not_made(self):
        os.chmod(".", 0o500)
        self.addCleanup(os.chmod, self.dir, 0o700)
        if os.geteuid() == 0:
            self.skipTest("root writes anywhere")
        with self.assertRaisesRegex(files.InputFileError, "^could not create the output directory out: Permission denied$"):
            files.prepare([], OUT)


class CollectTest(InDirectory):
    def setUp(self):
        super().setUp()
        os.mkdir("out")

    def test_regular_files_in_path_order(self):
        for path in ("out/a0", "out/a/x", "out/a.txt", "out/a-b", "out/b/c/d", "out/\u00e9t\u00e9 \U0001f600.txt"):
            self.make(path, path.encode())
        got, skipped, truncated = self.collect()
        paths = [path for path, _ in got]
        self.assertEqual(paths, sorted(paths))
        self.assertEqual(set(paths), {"out/a0", "out/a/x", "out/a.txt", "out/a-b", "out/b/c/d", "out/\u00e9t\u00e9 \U0001f600.txt"})
        self.assertTrue(all(data == path.encode() for path, data in got))
        self.assertEqual((skipped, truncated), ([], False))

    def test_symlinks_are_skipped_never_followed(self):
        os.symlink("/etc/passwd", "out/passwd")
        os.symlink(self.outside, "out/dir")
        os.symlink("nowhere", "out/dangling")
        self.make("out/real", b"real")
        got, skipped, truncated = self.collect()
        self.assertEqual(got, [("out/real", b"real")])
        self.assertEqual(skipped, [{"path": f"out/{name}", "reason": "symlink"} for name in ("dangling", "dir", "passwd")])
        self.assertFalse(truncated)

    def test_fifo_socket_and_device_are_skipped_without_blocking(self):
        os.mkfifo("out/fifo")
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind("out/sock")
        got, skipped, _ = self.collect()
        self.assertEqual(got, [])
        self.assertEqual(skipped, [{"path": "out/fifo", "reason": "fifo"}, {"path": "out/sock", "reason": "socket"}])
        self.assertEqual(files._kind(stat.S_IFCHR), "device")
        self.assertEqual(files._kind(stat.S_IFBLK), "device")

    def test_deep_tree(self):
        path = "out"
        for depth in range(1, 21):
            path += f"/d{depth}"
            self.make(f"{path}/f", str(depth).encode())
        got, skipped, truncated = self.collect()
        self.assertEqual(sorted(int(data) for _, data in got), list(range(1, 17)))  # out/d1/d2/f < out/d1/f
        self.assertEqual([path for path, _ in got], sorted(path for path, _ in got))
        self.assertEqual(skipped, [{"path": "out/" + "/".join(f"d{d}" for d in range(1, 18)), "reason": "too_deep"}])
        self.assertFalse(truncated)

    def test_too_many_files(self):
        for name in "edcba":
            self.make(f"out/{name}")
        got, skipped, truncated = self.collect(max_files=3)
        self.assertEqual([path for path, _ in got], ["out/a", "out/b", "out/c"])
        self.assertEqual((skipped, truncated), ([], True))

    def test_too_many_entries(self):
        for i in range(10):
            self.make(f"out/{i}")
        with mock.patch.object(files, "MAX_ENTRIES", 6):
            got, _, truncated = self.collect()
        self.assertEqual(len(got), 6)
        self.assertTrue(truncated)

    def test_byte_budget_leaves_out_what_does_not_fit_and_takes_a_later_smaller_file(self):
        self.make("out/a", b"12345")
        self.make("out/b", b"x" * 100)
        self.make("out/c", b"123")
        self.make("out/d", b"1234")
        got, skipped, truncated = self.collect(max_bytes=10)
        self.assertEqual(got, [("out/a", b"12345"), ("out/c", b"123")])
        self.assertEqual((skipped, truncated), ([], True))
        got, _, truncated = self.collect(max_bytes=12)
        self.assertEqual(got, [("out/a", b"12345"), ("out/c", b"123"), ("out/d", b"1234")])
        self.assertTrue(truncated)

    def test_sizes_are_what_was_read(self):
        self.make("out/a", b"abc")
        workdir = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, workdir)
        self.assertEqual(files.collect(workdir, OUT).files, [("out/a", 3, b"YWJj")])

    def test_names_that_are_not_utf8(self):
        os.mkdir(b"out/dir\xff")
        self.make(b"out/dir\xff/inside")
        self.make(b"out/\xfe\xfe.txt")
        self.make("out/ok")
        got, skipped, _ = self.collect()
        self.assertEqual(got, [("out/ok", b"x")])
        self.assertEqual(sorted(s["path"] for s in skipped), ["out/dir\ufffd", "out/\ufffd\ufffd.txt"])
        self.assertEqual({s["reason"] for s in skipped}, {"name_not_utf8"})

    def test_names_with_control_characters(self):
        os.mkdir("out/dir\nx")
        self.make("out/dir\nx/inside")
        self.make("out/a\x1bb")
        self.make("out/z")
        got, skipped, _ = self.collect()
        self.assertEqual(got, [("out/z", b"x")])
        self.assertEqual(sorted((s["path"], s["reason"]) for s in skipped), [("out/a\x1bb", "name_not_printable"), ("out/dir\nx", "name_not_printable")])

    def test_path_too_long(self):
        path = "out"
        while len(path) < 1100:
            path += "/" + "n" * 200
            os.mkdir(path)
        got, skipped, _ = self.collect()
        self.assertEqual(got, [])
        self.assertEqual(len(skipped), 1)
        self.assertEqual(skipped[0]["reason"], "path_too_long")
        self.assertEqual(len(skipped[0]["path"]), 1024)

    def test_skipped_is_capped(self):
        for i in range(files.SKIPPED_MAX + 50):
            os.symlink("x", f"out/link{i:04d}")
        got, skipped, truncated = self.collect()
        self.assertEqual(len(skipped), files.SKIPPED_MAX)
        self.assertEqual((got, truncated), ([], False))

    @unittest.skipIf(os.geteuid() == 0, "root reads every file")
    def test_unreadable(self):
        self.make("out/secret")
        os.chmod("out/secret", 0)
        os.mkdir("out/closed")
        os.chmod("out/closed", 0)
        self.addCleanup(os.chmod, os.path.join(self.dir, "out", "closed"), 0o700)
        got, skipped, _ = self.collect()
        self.assertEqual(got, [])
        self.assertEqual(skipped, [{"path": "out/closed", "reason": "unreadable"}, {"path": "out/secret", "reason": "unreadable"}])


class OutItselfTest(InDirectory):
    def test_out_replaced_by_a_symlink(self):
        os.mkdir(os.path.join(self.outside, "out"))
        with open(os.path.join(self.outside, "out", "stolen"), "w") as f:
            f.write("x")
        os.symlink(os.path.join(self.outside, "out"), "out")
        self.assertEqual(self.collect(), ([], [{"path": "out", "reason": "symlink"}], False))

    def test_out_replaced_by_a_file(self):
        self.make("out")
        self.assertEqual(self.collect(), ([], [{"path": "out", "reason": "other"}], False))

    def test_out_removed(self):
        self.assertEqual(self.collect(), ([], [], False))

    def test_anything_unexpected_is_one_error(self):
        os.mkdir("out")
        self.make("out/a")
        with mock.patch.object(files, "_walk", side_effect=MemoryError):
            self.assertEqual(self.collect(), ([], [{"path": "out", "reason": "error"}], True))


class RunWithFilesTest(InDirectory):
    """Through runner.run, as the service sends a job and reads the message."""

    def run_job(self, script, **job):
        with tempfile.TemporaryFile() as channel_file:
            runner.run({"script": script, "args": {}, "files": [], "out": OUT, **job}, runner.Channel(channel_file.fileno(), 1 << 20))
            channel_file.seek(0)
            return json.loads(channel_file.read().removeprefix(runner.USER_CODE_MARKER).decode("ascii"))

    def test_inputs_before_the_script_and_outputs_after(self):
        script = (
            "import os, pathlib\n"
            "def main():\n"
            "    data = pathlib.Path('in/data.txt').read_text()\n"
            "    pathlib.Path('out/copy.txt').write_text(data.upper())\n"
            "    os.makedirs('out/sub')\n"
            "    pathlib.Path('out/sub/raw.bin').write_bytes(bytes([0, 255]))\n"
            "    os.symlink('/etc/passwd', 'out/passwd')\n"
            "    os.chdir('/')\n"
            "    return len(data)\n"
        )
        message = self.run_job(script, files=[{"path": "in/data.txt", "content": "hello"}])
        self.assertEqual(set(message), {"status", "cpu_ms", "layers", "result", "files", "skipped", "files_truncated"})
        self.assertEqual((message["status"], message["result"], message["files_truncated"]), ("ok", 5, False))
        self.assertEqual(message["files"], [
            {"path": "out/copy.txt", "size": 5, "content_base64": base64.b64encode(b"HELLO").decode()},
            {"path": "out/sub/raw.bin", "size": 2, "content_base64": "AP8="},
        ])
        self.assertEqual(message["skipped"], [{"path": "out/passwd", "reason": "symlink"}])

    def test_no_files_without_out(self):
        with tempfile.TemporaryFile() as channel_file:
            runner.run({"script": "def main():\n    return 1\n", "args": {}}, runner.Channel(channel_file.fileno(), 100))
            channel_file.seek(0)
            self.assertEqual(set(json.loads(channel_file.read().removeprefix(runner.USER_CODE_MARKER))), {"status", "cpu_ms", "layers", "result"})
        self.assertEqual(os.listdir("."), [])

    def test_an_input_that_cannot_be_written_runs_no_user_code(self):
        os.symlink(self.outside, "in")
        script = "import os\nos.mkdir('ran')\ndef main():\n    os.mkdir('ran too')\n"
        message = self.run_job(script, files=[{"path": "in/x", "content": "x"}])
        self.assertEqual(message["status"], "error")
        self.assertEqual(message["error"]["type"], "input_files")
        self.assertRegex(message["error"]["message"], "^could not write input file in/x: ")
        self.assertFalse(os.path.exists("ran"))

    def test_cheap_errors_come_first(self):
        message = self.run_job("def main(:\n", files=[{"path": "x", "content": "x"}])
        self.assertEqual(message["error"]["type"], "syntax_error")

    def test_no_files_with_an_unserializable_result(self):
        message = self.run_job("import os\ndef main():\n    os.mkdir('out/a')\n    return {1}\n")
        self.assertEqual(set(message), {"status", "cpu_ms", "layers", "error"})
        self.assertEqual(message["error"]["type"], "result_not_serializable")


class LowerRlimitsTest(unittest.TestCase):
    def in_child(self, body):
        """Runs body in a forked child (its limits change); returns what it returned, or raises
        what it raised, as a string."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                try:
                    answer = {"value": body()}
                except BaseException as exc:  # noqa: BLE001
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                os.write(write_end, json.dumps(answer).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            answer = json.loads(f.read() or b'{"error": "the child died"}')
        os.waitpid(pid, 0)
        if "error" in answer:
            raise AssertionError(answer["error"])
        return answer["value"]

    def test_lowers_and_never_raises(self):
        def body():
            resource.setrlimit(resource.RLIMIT_CPU, (50, 51))
            resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
            seen = []
            for cpu, memory in ((100, 16 << 30), (20, 4 << 30), (30, 6 << 30), (10, 5 << 30)):
                confine.lower_rlimits({"cpu_seconds": cpu, "memory_bytes": memory})
                seen.append([resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_AS)])
            return seen

        G = 1 << 30
        self.assertEqual(self.in_child(body), [
            [[50, 51], [8 * G, 8 * G]],
            [[20, 21], [4 * G, 4 * G]],
            [[20, 21], [4 * G, 4 * G]],
            [[10, 11], [4 * G, 4 * G]],
        ])

    def test_a_confined_process_may_lower_its_limits_but_not_raise_them(self):
        if importlib.util.find_spec("seccomp") is None:
            self.skipTest("python3-seccomp is not installed for this interpreter")
        policy = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(files.__file__))), "seccomp-policy.json")

        def body():
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            limits = {"cpu_seconds": 50, "memory_bytes": 8 << 30, "max_processes": 64, "max_open_files": 64, "max_file_bytes": 1 << 20}
            confine.apply_rlimits(limits)
            confine.set_no_new_privs()
            confine.apply_seccomp(confine.load_policy(policy))
            confine.lower_rlimits({"cpu_seconds": 10, "memory_bytes": 4 << 30})
            lowered = [resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_AS)]
            refused = []
            for which, limit in ((resource.RLIMIT_CPU, (50, 51)), (resource.RLIMIT_AS, (8 << 30, 8 << 30))):
                try:
                    resource.setrlimit(which, limit)
                except ValueError as exc:  # what CPython makes of EPERM
                    refused.append(str(exc))
            return lowered, refused

        lowered, refused = self.in_child(body)
        self.assertEqual(lowered, [[10, 11], [4 << 30, 4 << 30]])
        self.assertEqual(refused, ["not allowed to raise maximum limit"] * 2)


if __name__ == "__main__":
    unittest.main()
