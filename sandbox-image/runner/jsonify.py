"""Converts main()'s return value to strict JSON, or says precisely why it cannot.

Values are read through the base classes' own methods (dict.items, list.__iter__, ...), so a
subclass that overrides them to lie or raise cannot change what is serialized.
"""

import datetime
import json
import math

MAX_DEPTH = 200
# Characters of a key or a type name quoted in a message: the message still says what and where
# when a key is huge (the runner shortens whole messages to the channel's limits, from the end).
QUOTED_MAX = 200


class NotSerializable(Exception):
    """The result holds a value strict JSON cannot represent; the message names it and where."""


def _quoted(text):
    """text, or its beginning and a marker when it is longer than QUOTED_MAX."""
    if len(text) <= QUOTED_MAX:
        return text
    return f"{text[:QUOTED_MAX]}... [shortened: {len(text)} characters in all]"


def _type_name(value):
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "object")
    if not isinstance(module, str):
        module = ""
    top = module.split(".")[0]
    if module in ("builtins", "") or not isinstance(name, str):
        return _quoted(str.__str__(str(name)))
    return _quoted(f"{top}.{name}" if top in ("pandas", "numpy") else f"{module}.{name}")


_HINTS = {
    "pandas.DataFrame": 'return df.to_dict("records")',
    "pandas.Series": "return series.tolist() or series.to_dict()",
    "pandas.Index": "return index.tolist()",
    "builtins.set": "return a list, e.g. sorted(s)",
    "set": "return a list, e.g. sorted(s)",
    "frozenset": "return a list, e.g. sorted(s)",
    "bytes": "return text, e.g. b.decode() or base64",
    "bytearray": "return text, e.g. b.decode() or base64",
    "decimal.Decimal": "return str(d) or float(d)",
    "complex": "return [z.real, z.imag]",
    "datetime.timedelta": "return td.total_seconds()",
    "pandas.Timedelta": "return td.total_seconds()",
}


def _float(value):
    value = float.__float__(value)
    return value if math.isfinite(value) else None


def _numpy():
    import sys

    return sys.modules.get("numpy")


def _convert_numpy(value, path, depth, seen):
    np = _numpy()
    if np is None:
        return False, None
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufc" or value.dtype == object or value.dtype.kind in "USMm":
            return True, _convert(value.tolist(), path, depth, seen)
        raise NotSerializable(f"{path} is a numpy.ndarray of dtype {value.dtype}")
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return True, None
        return True, str(np.datetime_as_string(value))
    if isinstance(value, np.timedelta64):
        raise NotSerializable(f"{path} is a numpy.timedelta64; return e.g. int(td / np.timedelta64(1, 's'))")
    if isinstance(value, np.generic):
        return True, _convert(value.item(), path, depth, seen)
    return False, None


def _is_pandas_missing(value):
    """pandas.NaT and pandas.NA are JSON null (NaT would otherwise pass as a datetime)."""
    name = getattr(type(value), "__name__", "")
    return name in ("NaTType", "NAType") and getattr(type(value), "__module__", "").startswith("pandas")


def _convert(value, path, depth, seen):
    if depth > MAX_DEPTH:
        raise NotSerializable(f"{path} is nested more than {MAX_DEPTH} levels deep")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, bool):
        return bool.__bool__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if _is_pandas_missing(value):
        return None
    if isinstance(value, datetime.datetime):
        return datetime.datetime.isoformat(value)
    if isinstance(value, datetime.date):
        return datetime.date.isoformat(value)
    if isinstance(value, datetime.time):
        return datetime.time.isoformat(value)
    if isinstance(value, (dict, list, tuple)):
        marker = id(value)
        if marker in seen:
            raise NotSerializable(f"{path} refers back to one of its own containers (a cycle)")
        seen.add(marker)
        try:
            if isinstance(value, dict):
                out = {}
                for key, item in dict.items(value):
                    out[_key(key, path)] = _convert(item, f"{path}[{_key_repr(key)}]", depth + 1, seen)
                return out
            iterate = list.__iter__ if isinstance(value, list) else tuple.__iter__
            return [_convert(item, f"{path}[{i}]", depth + 1, seen) for i, item in enumerate(iterate(value))]
        finally:
            seen.discard(marker)
    handled, converted = _convert_numpy(value, path, depth, seen)
    if handled:
        return converted
    name = _type_name(value)
    hint = _HINTS.get(name)
    raise NotSerializable(f"{path} is a {name}" + (f"; {hint}" if hint else "; return JSON types (dict, list, str, int, float, bool, None)"))


def _key(key, path):
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or isinstance(key, (bool, int, float)):
        # json.dumps' own rule for non-string keys.
        return json.dumps(key if not isinstance(key, float) else float.__float__(key))
    raise NotSerializable(f"{path} has a key of type {_type_name(key)}; object keys must be str")


def _key_repr(key):
    if isinstance(key, str):
        key = str.__str__(key)
        if len(key) <= QUOTED_MAX:
            return json.dumps(key, ensure_ascii=False)
        return json.dumps(key[:QUOTED_MAX], ensure_ascii=False) + f"... [shortened: {len(key)} characters in all]"
    return _key(key, "result")


def to_json(value):
    """Returns the UTF-8 bytes of value as strict JSON (ASCII-escaped, so always valid UTF-8)."""
    try:
        plain = _convert(value, "result", 0, set())
    except NotSerializable:
        raise
    except RecursionError:
        raise NotSerializable(f"result is nested more than {MAX_DEPTH} levels deep") from None
    except Exception as exc:  # a value whose own methods raise while being read
        raise NotSerializable(f"reading the result failed: {type(exc).__name__}") from None
    return json.dumps(plain, allow_nan=False, ensure_ascii=True, separators=(",", ":")).encode("ascii")
