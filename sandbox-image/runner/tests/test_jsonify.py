"""jsonify.to_json: main()'s return value as strict, ASCII-escaped JSON, or NotSerializable with a
message that says what and where."""

import datetime
import decimal
import json
import math
import unittest

import jsonify
from jsonify import NotSerializable, to_json

try:
    import numpy as np
except ImportError:  # pragma: no cover - Debian's python3-numpy is a dependency of the sandbox
    np = None
try:
    import pandas as pd
except ImportError:  # pragma: no cover
    pd = None


def convert(value):
    raw = to_json(value)
    raw.decode("ascii")  # always ASCII
    return json.loads(raw)


class PlainValuesTest(unittest.TestCase):
    def test_json_types(self):
        value = {"s": "text", "i": 3, "f": 1.5, "t": True, "n": None, "l": [1, [2]], "d": {"x": {}}}
        self.assertEqual(convert(value), value)
        self.assertEqual(to_json(value), b'{"s":"text","i":3,"f":1.5,"t":true,"n":null,"l":[1,[2]],"d":{"x":{}}}')

    def test_tuples_are_lists(self):
        self.assertEqual(convert((1, (2, 3))), [1, [2, 3]])

    def test_non_finite_floats_are_null(self):
        self.assertEqual(convert([math.nan, math.inf, -math.inf, 0.0]), [None, None, None, 0.0])

    def test_big_ints(self):
        self.assertEqual(convert(2**100), 2**100)

    def test_non_ascii_is_escaped(self):
        self.assertEqual(to_json("\u00e9\U0001F600\ud800"), b'"\\u00e9\\ud83d\\ude00\\ud800"')
        self.assertEqual(convert("\x00\x1e\u2028"), "\x00\x1e\u2028")

    def test_non_string_keys(self):
        self.assertEqual(convert({1: "a", 2.5: "b", False: "c", None: "d"}), {"1": "a", "2.5": "b", "false": "c", "null": "d"})

    def test_dates_and_times(self):
        self.assertEqual(
            convert([datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), datetime.time(3, 4)]),
            ["2024-01-02T03:04:05", "2024-01-02", "03:04:00"],
        )
        aware = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
        self.assertEqual(convert(aware), "2024-01-02T00:00:00+00:00")


class RefusedValuesTest(unittest.TestCase):
    def assertRefused(self, value, *fragments):
        with self.assertRaises(NotSerializable) as caught:
            to_json(value)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))
        return str(caught.exception)

    def test_sets_bytes_and_others_with_hints(self):
        self.assertRefused({"a": [{1}]}, 'result["a"][0] is a set', "sorted(s)")
        self.assertRefused(b"x", "result is a bytes", "decode")
        self.assertRefused(decimal.Decimal("1.5"), "decimal.Decimal", "str(d)")
        self.assertRefused(1j, "complex")
        self.assertRefused(datetime.timedelta(seconds=1), "total_seconds")
        self.assertRefused(object(), "result is a object", "return JSON types")

    def test_a_class_of_the_script(self):
        class Thing:
            pass

        self.assertRefused([Thing()], "result[0] is a tests.test_jsonify.RefusedValuesTest.test_a_class_of_the_script.<locals>.Thing")

    def test_keys_that_are_not_text(self):
        self.assertRefused({(1, 2): 3}, "has a key of type tuple")

    def test_cycles(self):
        loop = []
        loop.append(loop)
        self.assertRefused(loop, "result[0] refers back to one of its own containers")
        # The same object twice, not nested in itself, is fine.
        shared = [1]
        self.assertEqual(convert([shared, shared]), [[1], [1]])

    def test_depth(self):
        deep = []
        for _ in range(jsonify.MAX_DEPTH + 5):
            deep = [deep]
        self.assertRefused(deep, f"nested more than {jsonify.MAX_DEPTH} levels deep")
        ok = []
        for _ in range(jsonify.MAX_DEPTH):
            ok = [ok]
        to_json(ok)

    def test_a_huge_key_is_quoted_shortened(self):
        message = self.assertRefused({"k" * 300000: {1}}, "... [shortened: 300000 characters in all]", "is a set")
        self.assertLess(len(message), 1000)

    def test_a_huge_type_name_is_quoted_shortened(self):
        huge = type("T" * 300000, (), {})
        message = self.assertRefused([huge()], "... [shortened: ", "return JSON types")
        self.assertLess(len(message), 1000)

    def test_a_type_whose_module_is_not_text(self):
        odd = type("Odd", (), {})
        odd.__module__ = 5
        self.assertRefused(odd(), "result is a Odd")


class LyingValuesTest(unittest.TestCase):
    """Subclasses are read through their base classes' own methods."""

    def test_dict_list_int_str_subclasses(self):
        class D(dict):
            def items(self):
                return [("forged", 1)]

        class L(list):
            def __iter__(self):
                return iter(["forged"])

        class I(int):
            def __index__(self):
                return 666

        class S(str):
            def __str__(self):
                return "forged"

        class F(float):
            def __float__(self):
                return 666.0

        self.assertEqual(convert({"d": D(real=1), "l": L([1, 2]), "i": I(7), "s": S("real"), "f": F(0.5)}), {"d": {"real": 1}, "l": [1, 2], "i": 7, "s": "real", "f": 0.5})

    def test_a_str_subclass_key(self):
        class K(str):
            def __str__(self):
                return "forged"

            def __hash__(self):
                return hash(str.__str__(self))

        self.assertEqual(convert({K("real"): 1}), {"real": 1})

    def test_bool_subclass_is_impossible_but_bools_stay_bools(self):
        self.assertEqual(convert([True, False]), [True, False])


@unittest.skipIf(np is None, "numpy is not installed")
class NumpyTest(unittest.TestCase):
    def test_scalars(self):
        self.assertEqual(convert([np.int64(3), np.float32(0.5), np.bool_(True), np.float64("nan")]), [3, 0.5, True, None])

    def test_arrays(self):
        self.assertEqual(convert(np.arange(6).reshape(2, 3)), [[0, 1, 2], [3, 4, 5]])
        self.assertEqual(convert(np.array([1.5, np.inf])), [1.5, None])
        self.assertEqual(convert(np.array(["a", "b"])), ["a", "b"])

    def test_datetimes(self):
        self.assertEqual(convert(np.datetime64("2024-01-02T03:04:05")), "2024-01-02T03:04:05")
        self.assertIsNone(convert(np.datetime64("NaT")))

    def test_refused(self):
        with self.assertRaisesRegex(NotSerializable, "timedelta64"):
            to_json(np.timedelta64(1, "s"))
        with self.assertRaisesRegex(NotSerializable, r"result\[0\] is a numpy.ndarray of dtype"):
            to_json([np.zeros(2, dtype=[("a", "i4"), ("b", "f4")])])
        with self.assertRaisesRegex(NotSerializable, r"result\[0\] is a set"):
            to_json(np.array([{1}], dtype=object))


@unittest.skipIf(pd is None, "pandas is not installed")
class PandasTest(unittest.TestCase):
    def test_timestamps_and_missing(self):
        self.assertEqual(convert([pd.Timestamp("2024-01-02 03:04:05"), pd.NaT, pd.NA]), ["2024-01-02T03:04:05", None, None])

    def test_records(self):
        df = pd.DataFrame({"k": ["a", "b"], "v": [1, 2.5]})
        self.assertEqual(convert(df.to_dict("records")), [{"k": "a", "v": 1.0}, {"k": "b", "v": 2.5}])
        self.assertEqual(convert(df.groupby("k")["v"].sum().to_dict()), {"a": 1.0, "b": 2.5})

    def test_frames_and_series_are_refused_with_a_hint(self):
        with self.assertRaisesRegex(NotSerializable, r'result is a pandas.DataFrame; return df.to_dict\("records"\)'):
            to_json(pd.DataFrame({"a": [1]}))
        with self.assertRaisesRegex(NotSerializable, r"result is a pandas.Series; return series.tolist"):
            to_json(pd.Series([1]))


if __name__ == "__main__":
    unittest.main()
