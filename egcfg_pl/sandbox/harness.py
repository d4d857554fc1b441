"""The children of the fork server: enter the jail, then run the program, or run the tests.

Everything here runs in a forked child. ``enter_child`` orders the steps (session, descriptors,
limits, uid drop, ``no_new_privs``, audit hook) so that nothing privileged is left when the first line
of dataset or model code runs. For assert/call tests there are two children per run: the program's
(``child_program``: runs the program, then answers calls, ``remote.serve``) and the tests'
(``child_tests``: the test code with ``Remote`` proxies for the program's names, under another uid;
it reports per-test results to the server as nonce-prefixed JSON lines on a pipe the program never
holds). Standard library only: part of the fork server's source (``worker.py``).
"""

import builtins
import fcntl
import json
import os
import random
import resource
import signal
import sys

from egcfg_pl.sandbox.remote import Channel, ProgramLost, Remote, serve  # inlined
from egcfg_pl.sandbox.values import Opaque, encode_value  # inlined

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


def enter_child(job, fds, workdir, uid, oom_score=0, audit=True):
    """New session, descriptors (``fds``: target -> source, 0-2 included), limits, privileges, then the
    audit hook. Order matters."""
    os.setsid()
    _place_fds(fds)
    os.chdir(workdir)
    set_oom_score(oom_score)  # the program, not the server or the tests, is what the OOM killer should pick
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
    sys.modules["__main__"] = type(sys)("__main__")  # the server module is not importable by name
    random.seed()
    sys.setrecursionlimit(1000)
    if audit:
        sys.addaudithook(_audit_hook)


def _place_fds(fds):
    """Move each source descriptor to its target (via copies above 1000, so no source is overwritten
    before it is moved) and close every other descriptor."""
    high = {target: fcntl.fcntl(source, fcntl.F_DUPFD, 1000) for target, source in fds.items()}
    for target, fd in high.items():
        os.dup2(fd, target)
    low = 0
    for target in sorted(high):
        if low < target:  # closerange(n, n) closes everything from n on (close_range(n, -1))
            os.closerange(low, target)
        low = target + 1
    os.closerange(low, 65536)


def set_oom_score(value):
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass


_DEVNULL = None


def open_devnull():
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


def make_reporter(fd, nonce):
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
    """Compile and exec the program (+ the import lines of the problem's test setup, which the official
    harnesses run in the program's namespace); None when it could not run."""
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


# -- the program's child ---------------------------------------------------------------------------------
def child_program(job, rfd, wfd):
    """Run the program, say whether it is ready (with handles for the names the tests take from it), then
    answer the test process's calls (``remote.serve``).
    Nothing here can write a verdict: the report pipe was never in this process."""
    ns = _run_program(job, lambda **msg: _say(wfd, {"fail": [msg["status"], msg["detail"]]}))
    if ns is None:
        return
    serve(ns, job["names"], rfd, wfd)


def _say(fd, msg):
    data = (json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


# -- the test process (trusted: never runs model code) ------------------------------------------------------
def tester_main(ctrl_fd, host_fd, report):
    """The worker's long-lived test process: one round per control message, which brings the two pipe
    ends to the program's process of that round. It reads the job's test code itself, straight from the
    host's pipe (exact-size reads), so the server never holds it; every report line carries the round."""
    import socket

    ctrl = socket.socket(fileno=ctrl_fd)
    tests = None
    while True:
        data, fds, _, _ = socket.recv_fds(ctrl, 1 << 16, 2)
        if not data:
            return
        msg = json.loads(data)
        if msg["read"]:
            tests = None
            tests = json.loads(read_frame(host_fd))
        tagged = _tagged(report, msg["round"])
        random.seed()  # as a fresh process would be: test code may have seeded it
        sys.setrecursionlimit(1000)
        channel = Channel(fds[0], fds[1], msg["limit"])
        try:
            child_tests(tests, msg["start"], tagged, channel)
        finally:
            channel.close()
        tagged(t="idle")


def _tagged(report, round_):
    def tagged(*msgs, **msg):
        report(*[dict(m, r=round_) for m in (msgs or (msg,))])

    return tagged


def read_frame(fd):
    """One length-prefixed frame (``worker.Worker._send``) from ``fd``; b"" at end of input."""
    head = read_exact(fd, 12)
    return read_exact(fd, int(head)) if head else b""


def read_exact(fd, n):
    """Exactly ``n`` bytes from ``fd`` (b"" at end of input), never more: what follows stays in the pipe."""
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            if chunks:
                raise EOFError("the host closed the pipe inside a frame")
            return b""
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


_FAIL_STATUSES = ("syntax_error", "error", "memory")


def child_tests(tests, start, report, channel):
    """Run ``tests["tests"][start:]`` with the program's names as ``Remote`` proxies; report each."""
    ns = _test_namespace(tests, channel, report)
    if ns is None:
        return
    n = len(tests["tests"])
    report({"t": "ready"}, {"t": "start", "i": start})  # one write per test: end i + start i+1
    for i in range(start, n):
        status, detail, value = _run_test(tests["tests"][i], ns, channel)
        end = {"t": "end", "i": i, "status": status, "detail": detail, "value": value}
        if channel.lost:  # the program is gone: the server starts a new round from test i+1
            report(end, {"t": "again", "i": i + 1})
            return
        report(end, {"t": "start", "i": i + 1} if i + 1 < n else {"t": "done"})


def _test_namespace(tests, channel, report):
    """The test code's globals: the program's names as proxies (only those the tests asked for:
    ``remote.accept``), then the problem's helpers and setup, which bind over them."""
    try:
        hello = channel.hello(tests["names"], tests["entry"])
        if hello[0] == "fail":
            status = hello[1] if hello[1] in _FAIL_STATUSES else "error"
            report(t="fail", status=status, detail=hello[2])
            return None
        ns = {"__name__": "__test__", "__builtins__": builtins}
        ns.update(hello[1])
        if tests["setup"]:
            exec(compile(tests["setup"], "<test_setup>", "exec", dont_inherit=True), ns)
        return ns
    except ProgramLost as e:
        report(t="fail", status="killed", detail=f"{e} before the tests ran")
    except MemoryError:
        report(t="fail", status="memory", detail="MemoryError")
    except BaseException as e:
        report(t="fail", status="error", detail=_describe(e))
    return None


def _run_test(test, ns, channel):
    """Run one test in the test process; returns (status, detail, encoded value or None). A failure
    says how many non-plain values the program answered with (they stay opaque: ``remote.py``)."""
    before = channel.handles
    status, detail, value = _run_test_code(test, ns, channel)
    if channel.lost and status != "killed":  # test code that swallowed the loss still saw no program
        status, detail, value = "killed", channel.lost, None
    handles = channel.handles - before
    if handles and status not in ("passed", "ok"):
        detail = f"{detail} [{handles} non-plain value(s) from the program stayed opaque]".strip()
    return status, detail, value


def _opaque(v):
    """How a value of the test process reaches the host when it is not plain data."""
    if isinstance(v, Opaque):  # already opaque on arrival (a module the test process does not have)
        return {"o": str(v.type_name)}
    return {"o": v._type if isinstance(v, Remote) else type(v).__name__}


def _run_test_code(test, ns, channel):
    kind = test["k"]
    try:
        if kind == "assert":
            exec(compile(test["code"], "<test>", "exec", dont_inherit=True), ns)
            return "passed", "", None
        if kind == "value":
            value = eval(compile(test["expr"], "<test>", "eval", dont_inherit=True), ns)
        else:
            value = channel.ask("calltest", fn=test["fn"], args=test["args"])
        return "ok", "", encode_value(value, other=_opaque)  # the program's objects stay opaque
    except ProgramLost as e:
        return "killed", str(e), None
    except MemoryError:
        return "memory", "MemoryError", None
    except BaseException as e:
        if channel.lost:
            return "killed", channel.lost, None
        return _status_of(e), _describe(e), None


def child_stdio(job, report):
    """Run the program as ``__main__`` with the test input on stdin; the server keeps its stdout."""
    ns = _run_program(job, report)
    if ns is not None:
        report(t="end", i=0, status="ok", detail="", value=None)
    try:
        sys.stdout.flush()
    except BaseException as e:
        report(t="end", i=0, status="error", detail=_describe(e), value=None)
