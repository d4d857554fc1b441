"""The child side of the fork server: enter the jail, run the program, report per-test results.

Everything here runs in the forked child. ``_enter_child`` orders the steps (session, descriptors,
limits, uid drop, ``no_new_privs``, audit hook) so that nothing privileged is left when the program's
first line runs. Results go to the server as nonce-prefixed JSON lines on a private pipe.
Standard library only: part of the fork server's source (``worker.py``).
"""

import builtins
import json
import os
import resource
import signal
import sys

from egcfg_pl.sandbox.values import decode_value, encode_value  # inlined

_BLOCKED_EVENTS = {
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
    "sys.settrace", "sys.setprofile", "sys._getframe",
}
_BLOCKED_ATTRS = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"}


def _audit_hook(event, args):
    """Speed bump against programs that go looking for the harness (report fd, nonce, frames)."""
    if event in _BLOCKED_EVENTS or event.startswith("ctypes."):
        raise ValueError(f"{event} is not available in the sandbox")
    if event == "object.__getattr__" and args[1] in _BLOCKED_ATTRS:
        raise ValueError(f"{args[1]} is not available in the sandbox")
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path == "/proc" or path.startswith("/proc/"):
            raise PermissionError(f"{path} is not available in the sandbox")


def _enter_child(job, stdin_fd, stdout_fd, report_fd, workdir):
    """New session, descriptors, limits, privileges, then the audit hook. Order matters."""
    os.setsid()
    os.dup2(stdin_fd, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(_devnull(), 2)
    fd = job["report_fd"]
    os.dup2(report_fd, fd)
    os.closerange(3, fd)
    os.closerange(fd + 1, 65536)
    os.chdir(workdir)
    _set_oom_score(0)  # the program, not the server, is what the OOM killer should pick
    os.environ.clear()
    os.environ.update(job["env"], HOME=workdir, TMPDIR=workdir)
    lim = job["limits"]
    mem = lim["memory_mb"] * 2**20
    for res, val in (
        (resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_FSIZE, lim["fsize_mb"] * 2**20),
        (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_NPROC, lim["nproc"]),
    ):
        resource.setrlimit(res, (val, val))
    uid = job["uid"]
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _no_new_privs()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False, errors="replace")
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False, errors="replace")
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", closefd=False, errors="replace")
    sys.argv = ["program"]
    sys.modules["__main__"] = type(sys)("__main__")  # the harness module is not importable by name
    import random

    random.seed()
    sys.setrecursionlimit(1000)
    sys.addaudithook(_audit_hook)
    return fd


def _set_oom_score(value):
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass


_DEVNULL = None


def _devnull():
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = os.open("/dev/null", os.O_RDWR)
    return _DEVNULL


_LIBC = None
_POSTPONED_ANNOTATIONS = __import__("__future__").annotations.compiler_flag


def load_libc():
    """ctypes handle on libc, loaded once in the server (before any program can block ctypes)."""
    global _LIBC
    import ctypes

    _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _no_new_privs():
    if _LIBC is None or _LIBC.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")


def _make_reporter(fd, nonce):
    """``report(msg, ...)``: one write of nonce-prefixed JSON lines (the program cannot patch what this
    closure captured before it ran)."""
    write, dumps = os.write, json.dumps

    def report(*msgs, **msg):
        data = "".join(nonce + " " + dumps(m) + "\n" for m in (msgs or (msg,))).encode()
        while data:
            data = data[write(fd, data):]

    return report


def _status_of(exc):
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, AssertionError):
        return "failed"
    return "error"


def _describe(exc):
    text = f"{type(exc).__name__}: {exc}"
    return text[:300]


def _run_program(job, report):
    """Compile and exec the program (+ the problem's test setup); None when it could not run."""
    try:
        # PEP 563: annotations stay unevaluated, so LeetCode-style `def f(self, a: List[int])` runs
        # without `from typing import List` (LeetCode pre-imports it; the APPS harness adds a header)
        code = compile(job["program"], "<program>", "exec", flags=_POSTPONED_ANNOTATIONS, dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        status = "memory" if isinstance(e, MemoryError) else "syntax_error"
        report(t="fail", status=status, detail=_describe(e))
        return None
    ns = {"__name__": job["name"], "__builtins__": builtins}
    failure = None
    try:
        exec(code, ns)
        if job["setup"]:
            exec(compile(job["setup"], "<test_setup>", "exec", dont_inherit=True), ns)
    except SystemExit as e:
        if job["kind"] != "stdio" or e.code not in (None, 0):  # a script may end with sys.exit(0)
            failure = ("error", _describe(e))  # exiting is not passing
    except MemoryError:
        failure = ("memory", "MemoryError")
    except BaseException as e:
        failure = ("error", _describe(e))
    if failure is not None:  # reported outside the handler, once the program's frames are freed
        report(t="fail", status=failure[0], detail=failure[1])
        return None
    return ns


def _restore(ns, pristine):
    """Undo monkeypatching of builtins by the program (the harness and the tests rely on them)."""
    builtins.__dict__.clear()
    builtins.__dict__.update(pristine)
    ns["__builtins__"] = builtins


def _run_one(test, ns, pristine):
    """Run one in-process test; returns (status, detail, encoded value or None)."""
    _restore(ns, pristine)
    kind = test["k"]
    try:
        if kind == "assert":
            exec(compile(test["code"], "<test>", "exec", dont_inherit=True), ns)
            return "passed", "", None
        if kind == "value":
            value = eval(compile(test["expr"], "<test>", "eval", dont_inherit=True), ns)
        else:
            fn = ns.get(test["fn"])
            solution = ns.get("Solution")
            if isinstance(solution, type):
                fn = getattr(solution(), test["fn"])
            args = decode_value(test["args"])
            value = fn(*args)
        return "ok", "", encode_value(value)
    except MemoryError:
        return "memory", "MemoryError", None  # no allocation while the failed frames still hold memory
    except BaseException as e:
        return _status_of(e), _describe(e), None


def child_inprocess(job, start, report):
    pristine = dict(builtins.__dict__)
    ns = _run_program(job, report)
    if ns is None:
        return
    _restore(ns, pristine)
    n = len(job["tests"])
    report({"t": "ready"}, {"t": "start", "i": start})  # one write per test: end i + start i+1
    for i in range(start, n):
        status, detail, value = _run_one(job["tests"][i], ns, pristine)
        _restore(ns, pristine)
        end = {"t": "end", "i": i, "status": status, "detail": detail, "value": value}
        report(end, {"t": "start", "i": i + 1} if i + 1 < n else {"t": "done"})


def child_stdio(job, report):
    """Run the program as ``__main__`` with the test input on stdin; the server keeps its stdout."""
    ns = _run_program(job, report)
    if ns is not None:
        report(t="end", i=0, status="ok", detail="", value=None)
    try:
        sys.stdout.flush()
    except BaseException as e:
        report(t="end", i=0, status="error", detail=_describe(e), value=None)
