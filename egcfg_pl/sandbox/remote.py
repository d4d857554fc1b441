"""The pipe between the trusted test process and the program's process: calls go over as plain data.

The test code (asserts, HumanEval ``check``, the problem's own helpers) runs in a test process that
never contains model code. Each name the tests take from the program (the entry point, a class the
tests instantiate) is a ``Remote`` proxy there: calling it, reading or setting an attribute, asking its
truth value, length or items sends one request line to the program's process, which does the operation
and answers with the result as tagged plain data (``values.encode_value``).

The one rule for values that are not plain data (generators, custom objects, functions): they stay in
the process that made them. The program's come back as ``Remote`` handles, which equal only themselves
(the test side's ``==``, ``hash``, ``<``, ``+``, ``in`` ... never ask the program, so an always-true
``__eq__`` or a ``__sub__`` that returns 0 is never consulted), but forward calls, attributes,
``bool``, ``len`` and iteration (each answer again plain data or a handle). Non-plain values of the
test side (a lambda, an object of a class the test setup defines) reach the program as ``Opaque``
markers; builtin types and functions (``int``, ``len``) cross by name; a module the program imported
is the test process's own module of that name when it has one already (never imported for it), else
opaque. Standard library only: part of the fork server's source.
"""

import builtins
import json
import os
import sys
import types

from egcfg_pl.sandbox.values import Opaque, decode_value, encode_value  # inlined


class ProgramLost(BaseException):
    """The program's process died, hung up or broke the protocol: no verdict for this test."""


class ProgramError(Exception):
    """An exception of the program that has no builtin counterpart (custom classes, ``SystemExit``)."""


# -- the program's side (untrusted process) -------------------------------------------------------------
class _Objects:
    """What the program's process has handed out as handles, by id (kept alive for the whole run)."""

    def __init__(self):
        self.by_id = []

    def encode(self, v):
        return encode_value(v, other=self._handle)

    def _handle(self, o):
        if isinstance(o, _Handle):
            o = o.value
        if isinstance(o, types.ModuleType):
            return {"m": o.__name__}
        self.by_id.append(o)
        return {"h": [len(self.by_id) - 1, type(o).__name__]}

    def decode(self, e):
        return decode_value(e, resolve=lambda tag, x: self.by_id[x[0]] if tag == "h" else Opaque("module"))


def serve(ns, names, rfd, wfd):
    """Say ready with the program's values of ``names`` (as handles), then answer the test process's
    requests on the program's namespace until the pipe closes."""
    objects = _Objects()
    ready = objects.encode([(n, _Handle(ns[n])) for n in names if n in ns])
    _write_all(wfd, (json.dumps({"ready": ready}) + "\n").encode())
    reader = os.fdopen(rfd, "rb")
    for line in reader:
        req = json.loads(line)
        try:
            reply = {"v": _do(req, ns, objects)}
        except StopIteration:
            reply = {"e": ["StopIteration", ""]}
        except MemoryError:
            reply = {"e": ["MemoryError", ""]}
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: the test process decides
            reply = {"e": [type(e).__name__, str(e)[:300]]}
        _write_all(wfd, (json.dumps(reply) + "\n").encode())


def _do(req, ns, objects):
    op = req["op"]
    if op == "calltest":  # APPS call test: fn_name(*args), or Solution().fn_name(*args)
        fn, solution = ns.get(req["fn"]), ns.get("Solution")
        if isinstance(solution, type):
            fn = getattr(solution(), req["fn"])
        return objects.encode(fn(*objects.decode(req["args"])))
    target = objects.by_id[req["h"]]
    if op == "call":
        args = objects.decode(req["args"])
        kwargs = {k: objects.decode(v) for k, v in req["kwargs"]}
        result = target(*args, **kwargs)
    elif op == "getattr":
        result = getattr(target, req["name"])
    elif op == "setattr":
        setattr(target, req["name"], objects.decode(req["value"]))
        result = None
    elif op == "bool":
        result = bool(target)
    elif op == "len":
        result = len(target)
    elif op == "iter":
        result = _Handle(iter(target))
    elif op == "next":
        result = next(target)
    else:
        raise ValueError(f"unknown request {op!r}")
    return objects.encode(result)


class _Handle:
    """Forces a handle (or a module name) for a value that would otherwise cross by value."""

    def __init__(self, value):
        self.value = value


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


# -- the test side (trusted process) ----------------------------------------------------------------------
class Channel:
    """The test process's end of the pipe: one request, one reply line."""

    def __init__(self, rfd, wfd, limit):
        self.reader = os.fdopen(rfd, "rb")
        self.wfd = wfd
        self.limit = limit  # bytes per reply (SandboxConfig.max_output_bytes); more ends the run
        self.lost = ""  # why the program can no longer answer ("" while it can)
        self.handles = 0  # non-plain values the program answered with (each stayed in the program)

    def close(self):
        self.reader.close()
        os.close(self.wfd)

    def hello(self, names, entry):
        """The program's first line: ``("ready", {name: value})`` with its values of the names the tests
        asked for (``names``; see ``accept``), or ``("fail", status, detail)`` when it could not run.
        The program writes that line itself, so it is checked here, never trusted: an offered name the
        tests did not ask for ends the run (KILLED)."""
        reply = self._read()
        if "fail" in reply:
            try:
                status, detail = reply["fail"]
            except (TypeError, ValueError):
                self._lose("malformed first line from the program")
            return ("fail", str(status), str(detail)[:300])
        try:
            pairs = decode_value(reply["ready"], resolve=self._resolve)
        except MemoryError:
            raise
        except Exception as e:  # anything the program wrote: a reason to stop, never to crash the judge
            self._lose(f"malformed first line from the program ({type(e).__name__})")
        why, accepted = accept(pairs, names, entry)
        if why:
            self._lose(f"first line from the program rejected: {why}")
        return ("ready", accepted)

    def ask(self, op, **fields):
        if self.lost:
            raise ProgramLost(self.lost)
        try:
            _write_all(self.wfd, (json.dumps(dict(fields, op=op)) + "\n").encode())
        except OSError:
            self._lose("the program's process is gone")
        reply = self._read()
        if "e" in reply:
            raise _exception(reply["e"])
        try:
            return decode_value(reply["v"], resolve=self._resolve)
        except MemoryError:
            raise
        except Exception as e:  # e.g. Fraction(1, 0), a bad Decimal, nesting past the recursion limit
            raise ProgramError(f"unreadable value from the program ({type(e).__name__})") from None

    def _read(self):
        line = self.reader.readline(self.limit + 2)
        if not line.endswith(b"\n"):
            self._lose("the program's process exited" if len(line) <= self.limit else "reply too large")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._lose("malformed reply from the program")
        return reply

    def _lose(self, why):
        self.lost = why
        raise ProgramLost(why)

    def _resolve(self, tag, x):
        if tag == "m":  # a module the program imported: the test process uses its own copy
            return _own_module(str(x))
        self.handles += 1
        return Remote(self, int(x[0]), str(x[1]))

    def encode(self, v):
        return encode_value(v, other=_encode_test_side)


def accept(pairs, names, entry):
    """(why not, accepted ``{name: value}``): the program's values for the names the tests asked for.

    The test namespace is trusted: only a name in ``names`` (what the tests read but never bind,
    ``testcode.program_names``), never a dunder (``__builtins__``) and never a builtin other than the
    entry point itself (mbpp/126's entry point is ``sum``) may come from the program, each at most once,
    and only as a handle or a module: a program that offers ``range`` or ``abs`` does not replace the
    test process's own. The problem's helpers are bound by its setup afterwards, over any program name.
    """
    allowed = {n for n in names if not n.startswith("__") and (n == entry or not hasattr(builtins, n))}
    if type(pairs) is not list:
        return "not a list of (name, value) pairs", {}
    accepted = {}
    for pair in pairs:
        if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not str:
            return "not a list of (name, value) pairs", {}
        name, value = pair
        if name not in allowed:
            return f"the tests did not ask for {name[:50]!r}", {}
        if name in accepted:
            return f"{name!r} offered twice", {}
        if type(value) is not Remote and not isinstance(value, types.ModuleType):
            return f"{name!r} is not a handle or a module", {}
        accepted[name] = value
    return "", accepted


def _own_module(name):
    """The test process's own module of that name if it has already imported it, else opaque.

    Never an import: the program chose the name, and importing runs module code in the long-lived
    trusted process (``unittest.__main__`` runs a test runner and raises ``SystemExit``). ``__main__``
    (the fork server's) stays opaque too.
    """
    module = sys.modules.get(name) if type(name) is str and name != "__main__" else None
    return module if isinstance(module, types.ModuleType) else Opaque("module")


def _encode_test_side(v):
    if isinstance(v, Remote):
        return {"h": [object.__getattribute__(v, "_id"), ""]}
    return {"o": type(v).__name__}


def _exception(e):
    """The test-side exception for the program's (a builtin class by name, else ``ProgramError``)."""
    name, detail = str(e[0]), str(e[1])[:300]
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(detail)
        except Exception:
            pass
    return ProgramError(f"{name}: {detail}" if detail else name)


class Remote:
    """A value that lives in the program's process (see the module docstring for what is forwarded)."""

    __slots__ = ("_channel", "_id", "_type")

    def __init__(self, channel, id_, type_name):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_id", id_)
        object.__setattr__(self, "_type", type_name)

    def _ask(self, op, **fields):
        channel = object.__getattribute__(self, "_channel")
        return channel.ask(op, h=object.__getattribute__(self, "_id"), **fields)

    def __call__(self, *args, **kwargs):
        channel = object.__getattribute__(self, "_channel")
        return self._ask("call", args=channel.encode(args), kwargs=[[k, channel.encode(v)] for k, v in kwargs.items()])

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __setattr__(self, name, value):
        channel = object.__getattribute__(self, "_channel")
        self._ask("setattr", name=name, value=channel.encode(value))

    def __bool__(self):
        return self._ask("bool") is True

    def __len__(self):
        n = self._ask("len")
        if type(n) is not int:
            raise TypeError("len() of a program object is not an int")
        return n

    def __iter__(self):
        it = self._ask("iter")
        if not isinstance(it, Remote):
            raise TypeError("the program's iterator did not stay in the program")
        while True:
            try:
                yield it._ask("next")
            except StopIteration:
                return

    def __repr__(self):
        return f"<program {object.__getattribute__(self, '_type')}>"

    __eq__ = object.__eq__
    __hash__ = object.__hash__
