"""The runner's error messages fit what the service accepts on the result channel, whatever the
script raises: every string field within runnerMessageSchema's maxLength (MESSAGE_LIMITS), the
whole message within the channel's envelope (CHANNEL_ENVELOPE_BYTES), with a visible marker
wherever something was shortened. A message that did not fit would be reported as `killed`.

Scripts run in this process through runner.run (no sandbox, no confinement), with the result
channel on a temporary file.
"""

import json
import sys
import tempfile
import unittest

import runner
from runner import CHANNEL_ENVELOPE_BYTES, MESSAGE_LIMITS

ERROR_TYPES = {"syntax_error", "missing_main", "runtime_error", "result_not_serializable", "result_too_large", "memory_limit", "killed", "sandbox_error"}
ERROR_FIELDS = {"type", "message", "line", "column", "text", "exception", "traceback", "exit_code"}
SHORTENED = "... [shortened: "


def run_script(source, args=None, result_max_bytes=1 << 20):
    """Runs source as the runner would; returns (the channel's bytes, the parsed message)."""
    with tempfile.TemporaryFile() as channel_file:
        channel = runner.Channel(channel_file.fileno(), result_max_bytes)
        runner.run({"script": source, "args": args or {}}, channel)
        channel_file.seek(0)
        # The marker the runner writes before the script's module runs (the service reads it).
        raw = channel_file.read().removeprefix(runner.USER_CODE_MARKER)
    return raw, json.loads(raw.decode("ascii"))


class Case(unittest.TestCase):
    def assertFits(self, raw, message):
        """What readChannel (functions/src/sandbox/processRun.ts) accepts: ASCII JSON of the error
        shape of runnerMessageSchema, every string within its maxLength, and within the envelope."""
        self.assertLessEqual(len(raw) + 1, CHANNEL_ENVELOPE_BYTES)  # + the confinement marker
        self.assertEqual(set(message), {"status", "cpu_ms", "layers", "error"})
        self.assertEqual(message["status"], "error")
        error = message["error"]
        self.assertLessEqual(set(error), ERROR_FIELDS)
        self.assertIn(error["type"], ERROR_TYPES)
        self.assertIsInstance(error["message"], str)
        for field, limit in MESSAGE_LIMITS.items():
            if error.get(field) is not None:
                self.assertIsInstance(error[field], str)
                # Parsed JSON counts as ajv counts: code points, an escaped surrogate pair as one.
                self.assertLessEqual(len(error[field]), limit, field)
        for field in ("line", "column"):
            if field in error:
                self.assertTrue(error[field] is None or type(error[field]) is int, field)
        if "exit_code" in error:
            self.assertIs(type(error["exit_code"]), int)
            self.assertLessEqual(abs(error["exit_code"]), 2**53 - 1)
        return error

    def run_error(self, source, expected_type="runtime_error", **kwargs):
        raw, message = run_script(source, **kwargs)
        error = self.assertFits(raw, message)
        self.assertEqual(error["type"], expected_type, error["message"][:500])
        return error


class ShortenTest(unittest.TestCase):
    def test_fitting_text_is_kept_whole(self):
        for text in ("", "a", "x" * 100):
            self.assertEqual(runner.shorten(text, 100), text)
            self.assertEqual(runner.shorten(text, 100, keep_ends=True), text)

    def test_head_and_marker_within_the_limit(self):
        text = "abc" * 1000
        for limit in (60, 100, 999, 2999):
            short = runner.shorten(text, limit)
            self.assertLessEqual(len(short), limit)
            self.assertTrue(short.endswith("... [shortened: 3000 characters in all]"), short)
            self.assertTrue(text.startswith(short[: -len("... [shortened: 3000 characters in all]")]))

    def test_keep_ends_keeps_the_end_and_says_how_much_is_left_out(self):
        lines = [f"line {i}\n" for i in range(100000)]
        text = "".join(lines)
        short = runner.shorten(text, 20000, keep_ends=True)
        self.assertLessEqual(len(short), 20000)
        self.assertTrue(short.startswith("line 0\nline 1\n"))
        self.assertTrue(short.endswith("line 99999\n"))
        head, marker, tail = short.partition("... [shortened: ")
        self.assertTrue(head.endswith("\n"))  # cut at line ends
        self.assertTrue(tail.split("\n", 1)[1].startswith("line "))
        left_out = int(marker and tail.split(" of them left out here")[0].split(", ")[1])
        self.assertEqual(len(head) + left_out + len(tail.split("\n", 1)[1]), len(text))
        self.assertIn(f"[shortened: {len(text)} characters in all, ", short)

    def test_keep_ends_without_newlines(self):
        short = runner.shorten("x" * 500000, 2000, keep_ends=True)
        self.assertLessEqual(len(short), 2000)
        self.assertIn("[shortened: 500000 characters in all, ", short)

    def test_text_parts_are_never_joined_whole(self):
        text = runner.Text("a" * 10, "b" * 10, "c" * 10)
        self.assertEqual(text.length, 30)
        self.assertEqual(text.head(15), "a" * 10 + "b" * 5)
        self.assertEqual(text.tail(15), "b" * 5 + "c" * 10)
        self.assertEqual(text.head(100), text.whole())
        self.assertEqual(text.tail(0), "")

    def test_a_str_subclass_cannot_lie_about_its_length(self):
        class Liar(str):
            def __len__(self):
                return 1

            def __getitem__(self, item):
                return "forged"

        self.assertEqual(runner.shorten(Liar("x" * 5000), 100)[-len("5000 characters in all]"):], "5000 characters in all]")


class FitErrorTest(Case):
    def test_every_field_within_its_limit_and_the_whole_within_the_envelope(self):
        for char in ("x", "\u00e9", "\U0001F600", "\ud800", "\x00"):
            error = runner.fit_error({"type": "runtime_error", "message": char * 300000, "exception": char * 300000, "text": char * 300000, "traceback": char * 3000000, "line": 1})
            for field, limit in MESSAGE_LIMITS.items():
                self.assertLessEqual(len(error[field]), limit)
                self.assertIn(SHORTENED, error[field])
            self.assertLessEqual(len(json.dumps(error, ensure_ascii=True)), runner.ERROR_MAX_BYTES, repr(char))
            self.assertEqual(error["line"], 1)

    def test_ascii_fields_are_not_shortened_below_their_limit(self):
        error = runner.fit_error({"type": "runtime_error", "message": "m" * 300000, "exception": "e" * 300000, "traceback": "t" * 3000000})
        self.assertEqual(len(error["message"]), MESSAGE_LIMITS["message"])
        self.assertEqual(len(error["exception"]), MESSAGE_LIMITS["exception"])
        self.assertEqual(len(error["traceback"]), MESSAGE_LIMITS["traceback"])

    def test_small_errors_are_sent_as_they_are(self):
        error = {"type": "syntax_error", "message": "invalid syntax", "line": 3, "column": 7, "text": None}
        self.assertEqual(runner.fit_error(dict(error)), error)

    def test_the_marker_counts_the_original(self):
        error = runner.fit_error({"type": "killed", "message": runner.Text("a" * 100000, "b" * 100000)})
        self.assertTrue(error["message"].endswith("... [shortened: 200000 characters in all]"))

    def test_the_limits_are_the_schemas(self):
        # functions/test/runner.python.test.ts checks them against functions/src/schemas.ts.
        self.assertEqual(set(MESSAGE_LIMITS), {"message", "exception", "text", "traceback"})
        self.assertLess(runner.ERROR_MAX_BYTES, CHANNEL_ENVELOPE_BYTES)
        self.assertLess(len(MESSAGE_LIMITS) * runner._MIN_FIELD_CHARS * 12 * 2, runner.ERROR_MAX_BYTES)


class RuntimeErrorTest(Case):
    def test_an_ordinary_exception_is_reported_exactly(self):
        error = self.run_error("def main():\n    d = {}\n    return d['b']\n")
        self.assertEqual(error["message"], "KeyError: 'b'")
        self.assertEqual(error["exception"], "KeyError")
        self.assertEqual(error["line"], 3)
        self.assertEqual(error["traceback"], "Traceback (most recent call last):\n  File \"script.py\", line 3, in main\n    return d['b']\n           ~^^^^^\nKeyError: 'b'\n")

    def test_a_300_kB_message(self):
        error = self.run_error("def main():\n    raise ValueError('x' * 300000)\n")
        self.assertEqual(error["exception"], "ValueError")
        self.assertEqual(len(error["message"]), MESSAGE_LIMITS["message"])
        self.assertTrue(error["message"].startswith("ValueError: xxxx"))
        self.assertTrue(error["message"].endswith("... [shortened: 300012 characters in all]"))
        self.assertTrue(error["traceback"].startswith("Traceback (most recent call last):\n  File \"script.py\", line 2, in main\n"))
        self.assertTrue(error["traceback"].endswith("... [shortened: 300012 characters in all]\n"))

    def test_a_300_kB_message_of_characters_escaped_in_12_bytes(self):
        error = self.run_error("def main():\n    raise ValueError('\\U0001F600' * 300000)\n")
        self.assertTrue(error["message"].startswith("ValueError: \U0001F600\U0001F600"))
        self.assertIn(SHORTENED, error["message"])
        self.assertIn(SHORTENED, error["traceback"])
        self.assertTrue(error["traceback"].startswith("Traceback (most recent call last):\n  File \"script.py\", line 2, in main\n"))

    def test_non_ascii_and_control_characters(self):
        for char in ("\u00e9", "\x00", "\x1e", "\u2028", '"', "\\"):
            error = self.run_error(f"def main():\n    raise ValueError({char!r} * 300000)\n")
            self.assertTrue(error["message"].startswith("ValueError: " + char * 100), repr(char))

    def test_lone_surrogates(self):
        error = self.run_error("def main():\n    raise ValueError('\\ud800 lone \\udfff and a pair split: \\ud83d' + '\\ude00')\n")
        # Two surrogates that make a pair are one character once parsed, in Python as in JavaScript.
        self.assertEqual(error["message"], "ValueError: \ud800 lone \udfff and a pair split: \U0001F600")
        error = self.run_error("def main():\n    raise ValueError('\\udc00' * 300000)\n")
        self.assertIn(SHORTENED, error["message"])

    def test_a_huge_str(self):
        error = self.run_error("class Huge(Exception):\n    def __str__(self):\n        return 'h' * 300000\ndef main():\n    raise Huge()\n")
        self.assertEqual(error["exception"], "Huge")
        self.assertTrue(error["message"].endswith("... [shortened: 300006 characters in all]"))

    def test_a_str_subclass_from_str(self):
        source = (
            "class Liar(str):\n"
            "    def __len__(self): return 1\n"
            "    def __getitem__(self, i): return 'forged'\n"
            "    def __add__(self, other): return 'forged'\n"
            "class E(Exception):\n"
            "    def __str__(self): return Liar('y' * 300000)\n"
            "def main():\n"
            "    raise E()\n"
        )
        error = self.run_error(source)
        self.assertTrue(error["message"].startswith("E: yyyy"))
        self.assertTrue(error["message"].endswith("... [shortened: 300003 characters in all]"))
        self.assertNotIn("forged", json.dumps(error))

    def test_a_3_kB_type_name(self):
        error = self.run_error("def main():\n    raise type('X' * 3000, (Exception,), {})('boom')\n")
        self.assertTrue(error["exception"].startswith("X" * 1000))
        self.assertTrue(error["exception"].endswith("... [shortened: 3000 characters in all]"))
        self.assertEqual(error["message"], error["exception"] + ": boom")
        self.assertTrue(error["traceback"].endswith("X: boom\n"))

    def test_a_300_kB_type_name_whose_str_raises(self):
        source = "def main():\n    raise type('N' * 300000, (Exception,), {'__str__': lambda self: 1 / 0})()\n"
        error = self.run_error(source)
        self.assertTrue(error["exception"].endswith("... [shortened: 300000 characters in all]"))
        self.assertTrue(error["message"].startswith(error["exception"] + ": <N"))
        self.assertIn(SHORTENED, error["traceback"])

    def test_str_that_raises(self):
        error = self.run_error("class Evil(Exception):\n    def __str__(self): raise RuntimeError('nope')\n    def __repr__(self): raise RuntimeError('nope')\ndef main():\n    raise Evil()\n")
        self.assertEqual(error["exception"], "Evil")
        self.assertEqual(error["message"], "Evil: <Evil whose str() failed>")
        self.assertTrue(error["traceback"].endswith("\nEvil\n"))

    def test_str_that_raises_what_the_runner_does_not_expect(self):
        for raised in ("SystemExit(3)", "KeyboardInterrupt()", "MemoryError()", "GeneratorExit()"):
            error = self.run_error(f"class Evil(Exception):\n    def __str__(self): raise {raised}\ndef main():\n    raise Evil()\n")
            self.assertEqual(error["message"], "Evil: <Evil whose str() failed>", raised)

    def test_a_type_name_that_raises(self):
        source = (
            "class Meta(type):\n"
            "    def __getattribute__(cls, name):\n"
            "        if name == '__qualname__':\n"
            "            raise RuntimeError('no name')\n"
            "        return super().__getattribute__(name)\n"
            "class E(Exception, metaclass=Meta):\n"
            "    pass\n"
            "def main():\n"
            "    raise E('boom')\n"
        )
        error = self.run_error(source)
        self.assertEqual(error["exception"], "object")
        self.assertEqual(error["message"], "object: boom")

    def test_a_cause_chain_of_huge_messages(self):
        source = (
            "def main():\n"
            "    try:\n"
            "        try:\n"
            "            raise KeyError('k' * 300000)\n"
            "        except KeyError as exc:\n"
            "            raise TypeError('t' * 300000) from exc\n"
            "    except TypeError:\n"
            "        raise ValueError('v' * 300000)\n"
        )
        error = self.run_error(source)
        self.assertEqual(error["exception"], "ValueError")
        self.assertTrue(error["message"].startswith("ValueError: vvv"))
        self.assertEqual(error["line"], 8)

    def test_a_long_chain_of_causes(self):
        source = (
            "def main():\n"
            "    exc = None\n"
            "    for i in range(5000):\n"
            "        try:\n"
            "            raise ValueError(str(i) * 100) from exc\n"
            "        except ValueError as e:\n"
            "            exc = e\n"
            "    raise exc\n"
        )
        error = self.run_error(source)
        self.assertEqual(error["exception"], "ValueError")

    def test_huge_notes(self):
        error = self.run_error("def main():\n    e = ValueError('noted')\n    for i in range(3):\n        e.add_note('n' * 300000)\n    raise e\n")
        self.assertEqual(error["message"], "ValueError: noted")
        self.assertIn(SHORTENED, error["traceback"])
        self.assertTrue(error["traceback"].startswith("Traceback (most recent call last):\n  File \"script.py\", line 5, in main\n"))

    def test_notes_that_raise(self):
        source = (
            "class E(Exception):\n"
            "    @property\n"
            "    def __notes__(self): raise RuntimeError('no notes')\n"
            "def main():\n"
            "    raise E('boom')\n"
        )
        error = self.run_error(source)
        self.assertEqual(error["message"], "E: boom")
        # Python 3.13 adds a line saying the notes could not be read; 3.11 leaves them out.
        self.assertRegex(error["traceback"], r"E: boom\n(Ignored error getting __notes__: RuntimeError\('no notes'\)\n)?$")
        self.assertEqual(error["line"], 5)

    def test_a_broken_linecache(self):
        error = self.run_error("import linecache\ndef main():\n    linecache.cache['script.py'] = None\n    raise ValueError('boom')\n")
        self.assertEqual(error["message"], "ValueError: boom")
        self.assertIn("(the frames could not be read)", error["traceback"])

    def test_a_recursion_as_deep_as_the_limit_allows(self):
        comment = "#" * 250
        source = (
            "def down(n):\n"
            "    try:\n"
            f"        return across(n + 1)  {comment}\n"
            "    except RecursionError:\n"
            "        raise ValueError(f'bottom of a recursion {n} calls deep') from None\n"
            "def across(n):\n"
            f"    return down(n + 1)  {comment}\n"
            "def main():\n"
            "    down(0)\n"
        )
        error = self.run_error(source)
        self.assertEqual(error["exception"], "ValueError")
        self.assertEqual(error["line"], 5)
        traceback = error["traceback"]
        self.assertGreater(len(traceback), MESSAGE_LIMITS["traceback"] // 2)
        self.assertTrue(traceback.startswith('Traceback (most recent call last):\n  File "script.py", line 9, in main\n    down(0)\n'))
        self.assertRegex(traceback, r"\n\.\.\. \[shortened: \d+ characters in all, \d+ of them left out here\] \.\.\.\n")
        self.assertRegex(traceback, r'File "script\.py", line 5, in down\n.*\nValueError: bottom of a recursion \d+ calls deep\n$')

    def test_thousands_of_frames(self):
        limit = sys.getrecursionlimit()
        self.addCleanup(sys.setrecursionlimit, limit)
        source = (
            "import sys\n"
            "def a(n):\n"
            "    if n == 0:\n"
            "        raise LookupError('deep')\n"
            "    return b(n - 1)\n"
            "def b(n):\n"
            "    return a(n - 1)\n"
            "def main():\n"
            "    sys.setrecursionlimit(30000)\n"
            "    a(20000)\n"
        )
        error = self.run_error(source)
        self.assertEqual(error["message"], "LookupError: deep")
        self.assertIn(SHORTENED, error["traceback"])
        self.assertTrue(error["traceback"].endswith("LookupError: deep\n"))

    def test_a_long_source_line(self):
        error = self.run_error("def main():\n    x = 1; " + "y = 2; " * 100000 + "raise ValueError('long line')\n")
        self.assertEqual(error["message"], "ValueError: long line")
        self.assertLessEqual(len(error["traceback"]), MESSAGE_LIMITS["traceback"])
        self.assertTrue(error["traceback"].endswith("ValueError: long line\n"))


class OtherErrorsTest(Case):
    def test_a_syntax_error_on_a_300_kB_line(self):
        error = self.run_error("def main():\n    return 1 " + "+ 1 " * 100000 + "+\n", "syntax_error")
        self.assertEqual(error["line"], 2)
        self.assertTrue(error["text"].startswith("    return 1 + 1"))
        self.assertTrue(error["text"].endswith("characters in all]"))
        self.assertIn(SHORTENED, error["text"])

    def test_a_short_syntax_error_is_reported_exactly(self):
        error = self.run_error("def main(:\n    pass\n", "syntax_error")
        self.assertEqual(error["message"], "invalid syntax (script.py, line 1)")
        self.assertEqual((error["line"], error["column"], error["text"]), (1, 10, "def main(:"))

    def test_null_bytes(self):
        error = self.run_error("def main():\n    pass\n\x00", "syntax_error")
        self.assertIsNone(error["line"])

    def test_sys_exit_with_a_300_kB_argument(self):
        error = self.run_error("import sys\ndef main():\n    sys.exit('x' * 300000)\n", "killed")
        self.assertIn("... [shortened: 300000 characters in all]", error["message"])
        self.assertTrue(error["message"].endswith(") before main() returned"))
        self.assertEqual(error["exit_code"], 1)

    def test_sys_exit_codes(self):
        cases = [("None", 0), ("0", 0), ("3", 3), ("-1", -1), ("True", 1), ("2**53 - 1", 2**53 - 1), ("2**53", 1), ("2**70", 1), ("-(2**70)", 1), ("10**5000", 1), ("'bye'", 1)]
        for code, expected in cases:
            error = self.run_error(f"import sys\ndef main():\n    sys.exit({code})\n", "killed")
            self.assertEqual(error["exit_code"], expected, code)
        self.assertEqual(error["message"], "the script called sys.exit(bye) before main() returned")
        # str() of an int over 4300 digits raises: the message says so, the message is still sent.
        error = self.run_error("import sys\ndef main():\n    sys.exit(10**5000)\n", "killed")
        self.assertEqual(error["message"], "the script called sys.exit(<int whose str() failed>) before main() returned")

    def test_an_int_subclass_exit_code(self):
        error = self.run_error("import sys\nclass I(int):\n    def __index__(self): return 10**100\n    def __le__(self, other): return True\ndef main():\n    sys.exit(I(7))\n", "killed")
        self.assertEqual(error["exit_code"], 7)

    def test_a_result_with_a_300_kB_key(self):
        error = self.run_error("def main():\n    return {'k' * 300000: {1, 2}}\n", "result_not_serializable")
        self.assertIn("... [shortened: 300000 characters in all]", error["message"])
        self.assertTrue(error["message"].endswith(" is a set; return a list, e.g. sorted(s)"), error["message"][-200:])

    def test_a_result_too_large(self):
        error = self.run_error("def main():\n    return 'x' * 100\n", "result_too_large", result_max_bytes=50)
        self.assertEqual(error["message"], "the result is 102 bytes of JSON; the limit is 50 bytes")

    def test_a_huge_sandbox_error(self):
        with tempfile.TemporaryFile() as channel_file:
            channel = runner.Channel(channel_file.fileno(), 1 << 20)
            channel.send_error("sandbox_error", runner.Text("confinement failed: ", "\U0001F600" * 1000000))
            channel_file.seek(0)
            raw = channel_file.read()
        error = self.assertFits(raw, json.loads(raw))
        self.assertTrue(error["message"].startswith("confinement failed: \U0001F600"))

    def test_memory_error(self):
        error = self.run_error("def main():\n    raise MemoryError('m' * 300000)\n", "memory_limit")
        self.assertEqual(error["message"], "the script ran out of memory (MemoryError)")

    def test_a_successful_run_is_unchanged(self):
        raw, message = run_script("def main(a):\n    return {'a': a, 's': '\u00e9\\ud800'}\n", args={"a": [1, 2]})
        self.assertEqual(message["status"], "ok")
        self.assertEqual(message["result"], {"a": [1, 2], "s": "\u00e9\ud800"})
        raw.decode("ascii")


if __name__ == "__main__":
    unittest.main()
