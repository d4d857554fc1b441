"""The fork server: a pre-warmed interpreter inside the isolation that forks one child per program.

Inside the sandbox this runs as ``python -I -c <source>``, where the source is ``values.py`` +
``rootfs.py`` + ``harness.py`` + this file (``worker.server_source``; lines marked ``# inlined`` are
dropped). Protocol with the host: one JSON job per line on stdin, one JSON result per line on stdout.

The server is pid 1 of its own pid namespace (when namespaces are on). Per job: a fresh work dir owned
by the worker's unprivileged uid; a forked child runs the program (``harness.py``) and reports
``start i`` / ``end i`` lines prefixed with a per-run random nonce; the server times each test with its
own clock, kills on timeout and restarts from the next test. After every job every other process in
the namespace is SIGKILLed (``kill(-1)`` from pid 1), all are reaped, and the work dir is removed.
"""

import json
import os
import secrets
import select
import signal
import sys
import time

from egcfg_pl.sandbox.harness import _devnull, _enter_child, _make_reporter, _set_oom_score  # inlined
from egcfg_pl.sandbox.harness import child_inprocess, child_stdio, load_libc  # inlined
from egcfg_pl.sandbox.rootfs import setup_root  # inlined

class Server:
    def __init__(self, cfg):
        self.cfg = cfg
        self.pid1 = os.getpid() == 1
        self.jobs = 0
        self.check_end = float("inf")  # monotonic end of the whole-check budget (SandboxConfig.check_timeout)

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
            left = min(deadline, self.check_end) - time.monotonic()
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
        budget = job["limits"].get("check_timeout")
        self.check_end = time.monotonic() + budget if budget else float("inf")
        try:
            return self._run_inprocess(job, workdir, n, timeout, results)
        finally:
            self.check_end = float("inf")

    def _run_inprocess(self, job, workdir, n, timeout, results):
        start = 0
        while start < n:
            if time.monotonic() >= self.check_end:
                return _fill(results, start, "timeout", self._budget_detail())
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
                status, detail = self._death(outcome, wstatus, timeout)
                if any(results[i] is not None for i in range(start, n)):
                    results[todo[0]] = {"status": status, "seconds": 0.0, "detail": detail}
                    start = todo[0] + 1
                    continue
                return _fill(results, start, status, detail)
            status, detail = self._death(outcome, wstatus, timeout)
            results[cur] = {"status": status, "seconds": time.perf_counter() - state["t"], "detail": detail}
            start = cur + 1
        return results

    def _budget_detail(self):
        return f"whole-check budget of {self.job['limits']['check_timeout']:g} s spent"

    def _death(self, outcome, wstatus, timeout):
        """``_death``, naming the whole-check budget when that is what ran out."""
        if outcome == "timeout" and time.monotonic() >= self.check_end:
            return "timeout", self._budget_detail()
        return _death(outcome, wstatus, timeout)

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
    cfg = json.loads(sys.argv[1])
    load_libc()
    _set_oom_score(-1000)
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
