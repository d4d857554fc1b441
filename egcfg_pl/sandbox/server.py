"""The fork server: a pre-warmed interpreter inside the isolation that forks one child per program.

This file runs in two places. On the host, ``egcfg_pl.sandbox`` imports it for ``encode_value`` /
``decode_value`` only. Inside the sandbox its *source text* is run with ``python -I -c`` (it must stay
standard-library only and import nothing from ``egcfg_pl``, which the sandbox cannot see).

Protocol with the host: one JSON job per line on stdin, one JSON result per line on stdout.

Inside the server (pid 1 of its own pid namespace when namespaces are on):

1. ``setup_root`` builds a read-only root (interpreter + system libraries only, a small tmpfs for work
   dirs, a fresh ``/proc``) and ``chroot``s into it. The project tree, ``/root``, ``/home`` and the
   shared data are simply not in that tree.
2. Per job: a fresh work dir owned by the worker's unprivileged uid; a child is forked, enters a new
   session, drops to that uid (``setgroups([])``, ``setgid``, ``setuid``, ``PR_SET_NO_NEW_PRIVS``),
   sets rlimits, installs an audit hook, closes every inherited descriptor except its private report
   pipe (moved to a random descriptor number), and only then executes the program.
3. The child reports ``start i`` / ``end i`` lines prefixed with a per-run random nonce; the server
   times each test with its own clock, kills on timeout and restarts from the next test.
4. After every job every other process in the namespace is SIGKILLed (``kill(-1)`` from pid 1), all are
   reaped, and the work dir is removed.
"""

from __future__ import annotations

import builtins
import json
import os
import resource
import secrets
import select
import signal
import sys
import time

# ---------------------------------------------------------------------------------------------
# Values crossing the sandbox boundary: tagged JSON of plain builtin data (never pickle).
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Root filesystem (runs as root inside fresh mount + pid namespaces)
# ---------------------------------------------------------------------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
NEW_ROOT = "/tmp/.sandbox-root"  # on a tmpfs that only this mount namespace sees


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {target}: {os.strerror(err)}")


def _bind_ro(libc, path, root):
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    elif os.path.exists(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    else:
        return
    flags = MS_BIND | MS_NOSUID
    _mount(libc, path, target, None, flags)
    _mount(libc, None, target, None, flags | MS_REMOUNT | MS_RDONLY)


def setup_root(cfg):
    """Build the read-only root described in the module docstring and chroot into it."""
    libc = _libc()
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "sandbox", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    root = NEW_ROOT
    os.makedirs(root)
    _mount(libc, "sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    for path in cfg["ro_paths"]:
        _bind_ro(libc, path, root)
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "random", "urandom", "full"):
        open(f"{root}/dev/{dev}", "a").close()
        _mount(libc, f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND | MS_NOSUID)
    os.makedirs(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    os.makedirs(root + "/tmp")
    _mount(libc, "work", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=755")
    _mount(libc, None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    os.chroot(root)
    os.chdir("/")


# ---------------------------------------------------------------------------------------------
# Child side: everything below runs in the forked child, as the unprivileged uid
# ---------------------------------------------------------------------------------------------

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


_DEVNULL = None


def _devnull():
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = os.open("/dev/null", os.O_RDWR)
    return _DEVNULL


_LIBC = None


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
        code = compile(job["program"], "<program>", "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        status = "memory" if isinstance(e, MemoryError) else "syntax_error"
        report(t="fail", status=status, detail=_describe(e))
        return None
    ns = {"__name__": job["name"], "__builtins__": builtins}
    try:
        exec(code, ns)
        if job["setup"]:
            exec(compile(job["setup"], "<test_setup>", "exec"), ns)
    except SystemExit as e:
        if job["kind"] == "stdio" and e.code in (None, 0):
            return ns  # a script may end with sys.exit(0); its stdout decides
        report(t="fail", status="error", detail=_describe(e))  # exiting is not passing
        return None
    except BaseException as e:
        report(t="fail", status="memory" if isinstance(e, MemoryError) else "error", detail=_describe(e))
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
            exec(compile(test["code"], "<test>", "exec"), ns)
            return "passed", "", None
        if kind == "value":
            value = eval(compile(test["expr"], "<test>", "eval"), ns)
        else:
            fn = ns.get(test["fn"])
            solution = ns.get("Solution")
            if isinstance(solution, type):
                fn = getattr(solution(), test["fn"])
            args = decode_value(test["args"])
            value = fn(*args)
        return "ok", "", encode_value(value)
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


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------


class Server:
    def __init__(self, cfg):
        self.cfg = cfg
        self.pid1 = os.getpid() == 1
        self.jobs = 0

    # -- process hygiene ---------------------------------------------------------------------
    def kill_all(self, pgid):
        """SIGKILL every process the program may have left, then reap them."""
        if self.pid1:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.cfg["uid"] is not None:
                self._kill_uid(self.cfg["uid"])
        self.reap()

    def _kill_uid(self, uid):
        for _ in range(50):
            pids = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reap(self):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG if not self.pid1 else 0)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- one child -----------------------------------------------------------------------------
    def spawn(self, job, workdir, body, stdin_fd, stdout_fd):
        nonce = secrets.token_hex(16)
        r, w = os.pipe()
        job = dict(job, report_fd=secrets.randbelow(job["limits"]["nofile"] - 40) + 20)
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                fd = _enter_child(job, stdin_fd, stdout_fd, w, workdir)
                body(job, _make_reporter(fd, nonce))
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(w)
        return pid, r, nonce

    def watch(self, pid, r, nonce, timeout, on_msg, stdout_r=None, stdin_w=None, stdin_data=b""):  # noqa: C901
        """Pump the child's report pipe (and stdio pipes) until it exits or a deadline passes.

        ``on_msg(msg)`` returns the new deadline length in seconds (or None to keep it).
        Returns ("exit", wait_status) | ("timeout", None) | ("flood", None), and stdout bytes.
        """
        limit = self.job["limits"]["max_output"]
        deadline = time.monotonic() + timeout
        buf, out, outcome = b"", [], None
        out_len = 0
        fds = {r: "report"}
        if stdout_r is not None:
            fds[stdout_r] = "stdout"
        if stdin_w is not None:
            if stdin_data:
                os.set_blocking(stdin_w, False)
                wfds = [stdin_w]
            else:
                os.close(stdin_w)
                wfds = []
        else:
            wfds = []
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                outcome = "timeout"
                break
            rl, wl, _ = select.select(list(fds), wfds, [], left)
            if wl:
                try:
                    n = os.write(stdin_w, stdin_data[:65536])
                    stdin_data = stdin_data[n:]
                except (BrokenPipeError, BlockingIOError) as e:
                    if isinstance(e, BrokenPipeError):
                        stdin_data = b""
                if not stdin_data:
                    os.close(stdin_w)
                    wfds = []
            for fd in rl:
                chunk = os.read(fd, 65536)
                if not chunk:
                    del fds[fd]
                    continue
                if fds[fd] == "stdout":
                    out_len += len(chunk)
                    if out_len > limit:
                        outcome = "output"
                        break
                    out.append(chunk)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > limit + 4096:
                    outcome = "flood"
                    break
                for line in lines:
                    msg = _authentic(line, nonce)
                    if msg is not None:
                        new = on_msg(msg)
                        if new is not None:
                            deadline = time.monotonic() + new
            if outcome:
                break
        if wfds:
            os.close(stdin_w)
        if outcome is None:
            _, wstatus = os.waitpid(pid, 0)
            result = ("exit", wstatus)
        else:
            result = (outcome, None)
        self.kill_all(pid)
        os.close(r)
        if stdout_r is not None:
            os.close(stdout_r)
        return result, b"".join(out)

    # -- jobs ----------------------------------------------------------------------------------
    def run_job(self, job):
        self.job = job
        job["uid"] = self.cfg["uid"]
        job["env"] = self.cfg["env"]
        workdir = self.make_workdir()
        t0 = time.perf_counter()
        try:
            if job["kind"] == "stdio":
                results = [self.run_stdio(job, i, workdir) for i in range(len(job["tests"]))]
            else:
                results = self.run_inprocess(job, workdir)
        finally:
            seconds = time.perf_counter() - t0
            self.remove_workdir(workdir)
        return {"results": results, "seconds": seconds}

    def run_inprocess(self, job, workdir):
        n, timeout = len(job["tests"]), job["limits"]["timeout"]
        results = [None] * n
        start = 0
        while start < n:
            state = {"cur": None, "t": 0.0, "fail": None}

            def on_msg(msg, state=state):
                t = msg.get("t")
                if t == "start" and isinstance(msg.get("i"), int) and start <= msg["i"] < n:
                    state["cur"], state["t"] = msg["i"], time.perf_counter()
                    return timeout
                if t == "end" and msg.get("i") == state["cur"] and state["cur"] is not None:
                    i = state["cur"]
                    results[i] = _result(msg, time.perf_counter() - state["t"])
                    state["cur"] = None
                    return timeout
                if t == "fail" and state["fail"] is None:
                    state["fail"] = msg
                return None

            devnull = _devnull()
            pid, r, nonce = self.spawn(job, workdir, lambda j, rep: child_inprocess(j, start, rep), devnull, devnull)
            (outcome, wstatus), _ = self.watch(pid, r, nonce, timeout, on_msg)
            cur = state["cur"]
            if state["fail"] is not None and cur is None:
                msg = state["fail"]
                return _fill(results, start, msg.get("status", "error"), str(msg.get("detail", ""))[:300])
            if cur is None:
                # died or timed out between tests, or before the first one: no trusted verdict for the rest
                todo = [i for i in range(start, n) if results[i] is None]
                if not todo:
                    break
                status, detail = _death(outcome, wstatus, timeout)
                if any(results[i] is not None for i in range(start, n)):
                    results[todo[0]] = {"status": status, "seconds": 0.0, "detail": detail}
                    start = todo[0] + 1
                    continue
                return _fill(results, start, status, detail)
            status, detail = _death(outcome, wstatus, timeout)
            results[cur] = {"status": status, "seconds": time.perf_counter() - state["t"], "detail": detail}
            start = cur + 1
        return results

    def run_stdio(self, job, i, workdir):
        timeout = job["limits"]["timeout"]
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        got = {}

        def on_msg(msg):
            if msg.get("t") in ("end", "fail") and not got:
                got.update(msg)
            return None

        t0 = time.perf_counter()
        pid, r, nonce = self.spawn(job, workdir, child_stdio, in_r, out_w)
        os.close(in_r)
        os.close(out_w)
        data = job["tests"][i].encode("utf-8", "surrogateescape")
        (outcome, wstatus), out = self.watch(pid, r, nonce, timeout, on_msg, out_r, in_w, data)
        seconds = time.perf_counter() - t0
        stdout = out.decode("utf-8", "replace")
        if outcome == "output":
            return {"status": "failed", "seconds": seconds, "detail": "output limit exceeded"}
        if got.get("status") in ("syntax_error", "error", "memory"):
            return {"status": got["status"], "seconds": seconds, "detail": str(got.get("detail", ""))[:300]}
        if outcome == "exit" and (got.get("status") == "ok" or wstatus == 0):
            # stdout is the program's real behaviour; an os._exit(0) after printing still counts
            return {"status": "ok", "seconds": seconds, "detail": "", "stdout": stdout}
        status, detail = _death(outcome, wstatus, timeout)
        return {"status": status, "seconds": seconds, "detail": detail}

    def make_workdir(self):
        self.jobs += 1
        path = os.path.join(self.cfg["work_root"], f"job{self.jobs}")
        os.mkdir(path, 0o700)
        if self.cfg["uid"] is not None:
            os.chown(path, self.cfg["uid"], self.cfg["uid"])
        return path

    def remove_workdir(self, path):
        try:
            os.rmdir(path)  # the common case: the program wrote nothing
        except OSError:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def _uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _authentic(line, nonce):
    """Parse a report line; None unless it carries this run's nonce and is well-formed JSON."""
    head, _, body = line.partition(b" ")
    if not secrets.compare_digest(head, nonce.encode()):
        return None
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _result(msg, seconds):
    status = msg.get("status")
    if status not in ("passed", "failed", "error", "memory", "ok"):
        status = "error"
    out = {"status": status, "seconds": seconds, "detail": str(msg.get("detail", ""))[:300]}
    if status == "ok":
        out["value"] = msg.get("value")
    return out


def _fill(results, start, status, detail):
    for i in range(start, len(results)):
        if results[i] is None:
            results[i] = {"status": status, "seconds": 0.0, "detail": detail}
    return results


def _death(outcome, wstatus, timeout):
    """Status for a test that got no trusted verdict."""
    if outcome == "timeout":
        return "timeout", f"no verdict within {timeout:g} s"
    if outcome == "flood":
        return "killed", "report channel flooded"
    if wstatus is not None and os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit"
        return "killed", f"killed by {signal.Signals(sig).name}"
    code = os.waitstatus_to_exitcode(wstatus) if wstatus is not None else None
    return "killed", f"exited with code {code} before reporting"


def main():
    global _LIBC
    cfg = json.loads(sys.argv[1])
    _LIBC = _libc()
    if cfg["chroot"]:
        setup_root(cfg)
    else:
        os.makedirs(cfg["work_root"], exist_ok=True)
    for name in cfg["preimport"]:
        try:
            __import__(name)
        except ImportError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import gc

    gc.collect()
    gc.freeze()  # children's GC never walks (and copy-on-write faults) the server's warm heap
    server = Server(cfg)
    host_in = os.fdopen(os.dup(0), "rb")
    host_out = os.fdopen(os.dup(1), "wb")
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)

    def send(obj):
        host_out.write(json.dumps(obj).encode() + b"\n")
        host_out.flush()

    send({"ready": True, "pid1": server.pid1, "uid": cfg["uid"], "chroot": cfg["chroot"]})
    for line in host_in:
        job = json.loads(line)
        try:
            send(server.run_job(job))
        except Exception as e:  # a server bug must not look like a program result
            send({"server_error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
