"""Values crossing the sandbox boundary: tagged JSON of plain data (never pickle).

Runs on both sides: the child encodes what a program returned, the trusted side decodes it and compares
(``compare.py``). Standard library only: it is part of the fork server's source (``worker.py``).

What crosses, so that a trusted ``==`` on the decoded value gives what Python's ``==`` gives on the
program's value: builtin scalars and containers by value (subclasses reduced to their builtin base, so an
``int`` subclass with an always-true ``__eq__`` arrives as its integer); ``Decimal`` and ``Fraction`` as
themselves; dict views (``keys()``, ``values()``, ``items()``) as real views of a fresh dict; numpy
scalars (``np.int64``, ``np.bool_``, ``np.float32``, 0-d arrays) as the Python value ``.item()`` gives,
which is what they compare equal to; builtin types and functions (``int``, ``len``) by name. Anything
else is opaque, or whatever the caller's ``other`` makes of it (``remote.py``: a handle).
"""

import builtins
from decimal import Decimal
from fractions import Fraction

_MAX_DEPTH = 64
_VIEWS = {type({}.keys()): "K", type({}.values()): "V", type({}.items()): "I"}


def encode_value(v, depth=0, other=None):
    """Plain data -> tagged JSON (see the module docstring); anything else -> ``other(v)``, by default
    ``{"o": type name}``."""
    if depth > _MAX_DEPTH:
        return {"o": "too-deep"}
    if v is None or v is True or v is False:
        return v
    if isinstance(v, int):
        return {"i": int.__repr__(v)}
    if isinstance(v, float):
        return {"f": float.__repr__(v)}
    if isinstance(v, str):
        return {"s": str.__str__(v)}
    if isinstance(v, complex):
        return {"c": [float.__repr__(v.real), float.__repr__(v.imag)]}
    if isinstance(v, (bytes, bytearray)):
        return {"b": bytes(v).hex()}
    for tag, kind in (("l", list), ("t", tuple), ("S", set), ("F", frozenset)):
        if isinstance(v, kind):
            return {tag: [encode_value(x, depth + 1, other) for x in kind.__iter__(v)]}
    if isinstance(v, dict):
        return {"d": [[encode_value(k, depth + 1), encode_value(x, depth + 1, other)] for k, x in dict.items(v)]}
    return _encode_other(v, depth, other)


def _encode_other(v, depth, other):
    """Numbers and views that Python compares by value although they are not builtin containers."""
    if isinstance(v, Decimal):
        return {"D": Decimal.__str__(v)}
    if isinstance(v, Fraction):
        return {"Q": [int.__repr__(int(v.numerator)), int.__repr__(int(v.denominator))]}
    for kind, tag in _VIEWS.items():
        if isinstance(v, kind):
            return {tag: [encode_value(x, depth + 1, other) for x in v]}
    if _is_numpy_scalar(v):
        plain = v.item()
        if type(plain) in (bool, int, float, complex, str, bytes):
            return encode_value(plain, depth + 1, other)
    if isinstance(v, (type, _BUILTIN_FUNCTION)) and _builtin(getattr(v, "__name__", None)) is v:
        return {"B": v.__name__}
    if other is not None:
        return other(v)
    return {"o": type.__getattribute__(type(v), "__name__")}


_BUILTIN_FUNCTION = type(len)


def _builtin(name):
    """The builtin type or function of that name, else None."""
    v = getattr(builtins, name, None) if isinstance(name, str) else None
    return v if isinstance(v, (type, _BUILTIN_FUNCTION)) else None


def _is_numpy_scalar(v):
    """numpy scalars (``np.int64(3)``) and 0-d arrays, recognised without importing numpy."""
    module = type.__getattribute__(type(v), "__module__")
    return module == "numpy" and getattr(v, "shape", None) == () and hasattr(v, "item")


class Opaque:
    """A value that could not cross the boundary as plain data; equal to nothing."""

    def __init__(self, type_name):
        self.type_name = type_name

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<opaque {self.type_name}>"


def decode_value(e, resolve=None):
    """Tagged JSON -> a fresh value of builtin (or ``decimal``/``fractions``) types. Handles (``h``) and
    modules (``m``) become ``resolve(tag, x)``, by default ``Opaque``."""
    if e is None or e is True or e is False:
        return e
    (tag, x), = e.items()
    scalar = _SCALARS.get(tag)
    if scalar is not None:
        return scalar(x)
    if tag in ("h", "m"):
        return resolve(tag, x) if resolve is not None else Opaque("module" if tag == "m" else str(x[1]))
    if tag == "d":
        return {decode_value(k, resolve): decode_value(v, resolve) for k, v in x}
    items = [decode_value(i, resolve) for i in x]
    if tag == "K":
        return dict.fromkeys(items).keys()
    if tag == "V":
        return dict(enumerate(items)).values()
    if tag == "I":
        return dict(items).items()
    return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)


def _decode_builtin(name):
    v = _builtin(name)
    return v if v is not None else Opaque(str(name))


_SCALARS = {
    "i": int, "f": float, "s": str, "b": bytes.fromhex, "o": Opaque, "D": Decimal, "B": _decode_builtin,
    "c": lambda x: complex(float(x[0]), float(x[1])),
    "Q": lambda x: Fraction(int(x[0]), int(x[1])),
}
