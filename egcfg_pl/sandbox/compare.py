"""Trusted comparison of what a program produced with what a test expects (runs on the host).

- stdio: the whitespace-separated token sequences must match (line structure, trailing spaces and
  trailing blank lines are ignored, as Codeforces' default checker does); two tokens also match when
  both parse as floats, at least one is not an integer literal, and they agree within 1e-6 (relative
  or absolute), as APPS / CodeContests answers with decimals need. Integer tokens compare exactly.
- values (call tests and ``assert f(x) == literal`` tests): the program's value crosses the sandbox
  boundary as plain data (``values.encode_value``), so an object with an always-true ``__eq__`` arrives
  as an opaque marker equal to nothing; plain values then compare with Python's ``==`` (numpy scalars,
  ``Decimal``, ``Fraction`` and dict views cross so that this gives what ``==`` gives on the original). For call tests
  a tuple equals the list with the same items (the APPS harness converts tuples to lists), and a test
  whose expected value the APPS loader unwrapped from a one-element list also accepts the wrapped form.
"""

from __future__ import annotations

import math
import re
from typing import Any

_INT = re.compile(r"[+-]?\d+\Z")
FLOAT_TOL = 1e-6


def _token_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    if _INT.match(a) and _INT.match(b):
        return False  # exact integers: never float-tolerant (big answers would collide)
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=FLOAT_TOL, abs_tol=FLOAT_TOL)


def stdout_matches(actual: str, expected: str) -> bool:
    """Token-wise, whitespace-tolerant, float-tolerant equality of two outputs."""
    got, want = actual.split(), expected.split()
    return len(got) == len(want) and all(_token_equal(a, b) for a, b in zip(got, want))


def _lists(value: Any) -> Any:
    """Tuples -> lists, recursively (APPS harness convention for call-based answers)."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _safe_eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. comparing exotic decoded values; not equal
        return False


def value_matches(value: Any, expected: Any) -> bool:
    """Python equality on plain data (``assert f(x) == literal`` tests)."""
    return _safe_eq(value, expected)


def call_matches(value: Any, expected: Any, wrapped: bool = False) -> bool:
    """Equality for APPS-style call tests (see module docstring)."""
    got = _lists(value)
    return _safe_eq(got, _lists(expected)) or (wrapped and _safe_eq(got, [_lists(expected)]))
