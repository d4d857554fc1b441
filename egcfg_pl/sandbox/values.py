"""Values crossing the sandbox boundary: tagged JSON of plain builtin data (never pickle).

Runs on both sides: the child encodes what a program returned, the host decodes it and compares
(``compare.py``). Standard library only: it is part of the fork server's source (``worker.py``).
"""

_MAX_DEPTH = 64


def encode_value(v, depth=0):
    """Plain data -> tagged JSON. Subclasses are reduced to their builtin base value (so an ``int``
    subclass with an always-true ``__eq__`` arrives as its integer); anything else is opaque."""
    if depth > _MAX_DEPTH:
        return {"o": "too-deep"}
    if v is None or v is True or v is False:
        return v
    if isinstance(v, bool):  # unreachable (bool cannot be subclassed); kept for clarity
        return bool(v)
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
            return {tag: [encode_value(x, depth + 1) for x in kind.__iter__(v)]}
    if isinstance(v, dict):
        return {"d": [[encode_value(k, depth + 1), encode_value(x, depth + 1)] for k, x in dict.items(v)]}
    return {"o": type.__getattribute__(type(v), "__name__")}


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


def decode_value(e):
    if e is None or e is True or e is False:
        return e
    (tag, x), = e.items()
    if tag == "i":
        return int(x)
    if tag == "f":
        return float(x)
    if tag == "s":
        return x
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    if tag == "b":
        return bytes.fromhex(x)
    if tag == "o":
        return Opaque(x)
    if tag == "d":
        return {decode_value(k): decode_value(v) for k, v in x}
    items = [decode_value(i) for i in x]
    return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
