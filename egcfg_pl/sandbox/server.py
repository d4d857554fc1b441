"""The fork server: a pre-warmed interpreter inside the isolation that forks the processes of each run.

Inside the sandbox this runs as ``python -I -c <source>``, where the source is ``values.py`` +
``remote.py`` + ``rootfs.py`` + ``harness.py`` + this file (``worker.server_source``; lines marked
``# inlined`` are dropped). Protocol with the host: jobs come on stdin as length-prefixed JSON frames
(read with exact-size ``os.read``: nothing beyond the frame is ever read into the server), results go
out as one JSON line each on stdout. An assert/call job is followed by a second frame, its test code,
which the server never reads: the test process reads it from the same pipe (it holds a copy of the
descriptor) when the server hands it the job's first round; a new test process asks the host for it
again (``{"tests": i}``, answered by a frame). So the server never holds test code while it forks a
program's process.

The server is pid 1 of its own pid namespace (when namespaces are on). Each assert/call run (round)
forks the program's process (uid ``uid``, fresh work dir) and hands the worker's long-lived test process
(uid ``test_uid``, forked once, ``harness.tester_main``) the ends of two pipes to it over a control
socket (``remote.py`` speaks on them). The test process reports ``start i`` / ``end i`` lines prefixed
with its random nonce and tagged with the round; the server times each test with its own clock, kills
the program on a timeout and starts a new round from the next test. After every run every process of
the program's uid is SIGKILLed and reaped (pid 1 adopts orphans), and the work dir is removed.
"""

import json
import os
import resource
import secrets
import select
import signal
import socket
import sys
import time

from egcfg_pl.sandbox.harness import open_devnull, enter_child, make_reporter, set_oom_score  # inlined
from egcfg_pl.sandbox.harness import child_program, child_stdio, load_libc, read_exact, tester_main  # inlined
from egcfg_pl.sandbox.rootfs import setup_root  # inlined

TESTER_ROUNDS = 1000  # rounds one test process serves before it is replaced


class Server:
    def __init__(self, cfg, read_frame=None, send=None):
        self.cfg = cfg
        self.read_frame, self.send = read_frame, send  # the host's frames in, JSON lines out
        self.host_fd = None  # the host's pipe, which the test process reads test code from
        self.pushed = False  # the current job's test code waits in the host pipe, unread
        self.tester = None  # the worker's test process (``Tester``), started at the first assert/call job
        self.pid1 = os.getpid() == 1
        self.jobs = 0  # work directories made
        self.job_seq = 0  # jobs run
        self.check_end = float("inf")  # monotonic end of the whole-check budget (SandboxConfig.check_timeout)
        self.exits = {}  # pid -> wait status of the children reaped during the current run

    # -- process hygiene ---------------------------------------------------------------------
    def kill_all(self, pgids):
        """SIGKILL every process the program may have left (all of its uid), then reap them. The test
        process (another uid) lives on; without a uid drop only ``kill(-1)`` from pid 1 reaches them all,
        the test process included."""
        for pgid in pgids:  # each is also the pid of our child that leads the group
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.exits[pgid] = os.waitpid(pgid, 0)[1]
            except ChildProcessError:
                pass
        if self.cfg["uid"] is not None:
            self._kill_uid(self.cfg["uid"])
        elif self.pid1:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.stop_tester()
        self.reap()

    def _kill_uid(self, uid):
        for attempt in range(200):
            self.reap()  # zombies of our children (orphans are ours too, as pid 1) still show their uid
            pids = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if attempt:
                time.sleep(0.0002 * attempt)  # let the killed ones finish dying

    def reap(self):
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = wstatus

    # -- one child -----------------------------------------------------------------------------
    def spawn(self, job, workdir, body, fds, uid, oom_score=0, audit=True):
        """Fork a child that enters the jail with ``fds`` (target -> source) and runs ``body()``."""
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                enter_child(job, fds, workdir, uid, oom_score, audit)
                body()
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        return pid

    def spawn_reporting(self, job, workdir, body, fds, uid, oom_score=0, audit=True):
        """``spawn`` with a fresh report pipe and nonce: ``body(report)``; returns (pid, read end, nonce)."""
        nonce = secrets.token_hex(16)
        r, w = os.pipe()
        fd = secrets.randbelow(job["limits"]["nofile"] - 40) + 20
        pid = self.spawn(job, workdir, lambda: body(make_reporter(fd, nonce)), {**fds, fd: w},
                         uid, oom_score, audit)
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
        self.kill_all((pid,))
        os.close(r)
        if stdout_r is not None:
            os.close(stdout_r)
        return result, b"".join(out)

    # -- jobs ----------------------------------------------------------------------------------
    def run_job(self, job):
        self.job = job
        self.job_seq += 1
        job["env"] = self.cfg["env"]
        workdir = self.make_workdir(self.cfg["uid"])
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
        n, timeout = job["n"], job["limits"]["timeout"]
        results = [None] * n
        budget = job["limits"].get("check_timeout")
        self.check_end = time.monotonic() + budget if budget else float("inf")
        self.pushed = True
        try:
            return self._run_inprocess(job, workdir, n, timeout, results)
        finally:
            self.check_end = float("inf")
            if self.pushed:  # never read: drop it unparsed, or it would be read as the next job
                self.read_frame(parse=False)
                self.pushed = False

    def _run_inprocess(self, job, workdir, n, timeout, results):
        start = 0
        while start < n:
            if time.monotonic() >= self.check_end:
                return _fill(results, start, "timeout", self._budget_detail())
            state = {"cur": None, "t": 0.0, "fail": None, "again": None}

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
                if t == "again" and state["cur"] is None and msg.get("i") == _last_done(results, start) + 1:
                    state["again"] = msg["i"]
                if t == "fail" and state["fail"] is None:
                    state["fail"] = msg
                return None

            program = self.spawn_round(job, start, workdir)
            self.exits = {}
            outcome, wstatus = self.watch_round(timeout, on_msg)
            self.kill_all((program,))
            if outcome != "idle":
                self.settle_tester()
            _name_the_death(results, start, state["fail"], self.exits.get(program))
            cur = state["cur"]
            if state["fail"] is not None and cur is None:
                msg = state["fail"]
                return _fill(results, start, msg.get("status", "error"), str(msg.get("detail", ""))[:300])
            if state["again"] is not None:  # the program died during a test; that test has its verdict
                start = state["again"]
                continue
            if cur is None:
                # no verdict for the rest (the test process died, or a timeout before the first test)
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

    # -- the test process ------------------------------------------------------------------------
    def spawn_round(self, job, start, workdir):
        """Fork the program's process (the server holds no test code), then hand the test process the
        two pipe ends of this round; returns the program's pid."""
        devnull = open_devnull()
        to_prog_r, to_prog_w = os.pipe()
        to_test_r, to_test_w = os.pipe()
        program = self.spawn(job, workdir, lambda: child_program(job, 3, 4),
                             {0: devnull, 1: devnull, 2: devnull, 3: to_prog_r, 4: to_test_w}, self.cfg["uid"])
        os.close(to_prog_r)
        os.close(to_test_w)
        if self.tester is not None and self.tester.round >= TESTER_ROUNDS:
            self.stop_tester()  # a fresh one now and then: nothing piles up in a long-lived process
        for _ in range(2):  # a test process that died while idle is replaced once
            if self.tester is None:
                self.start_tester(job)
            tester = self.tester
            read = tester.job != self.job_seq  # it does not hold this job's test code yet
            msg = {"start": start, "read": read, "round": tester.round + 1,
                   "limit": job["limits"]["max_output"] + 4096}
            try:
                socket.send_fds(tester.ctrl, [json.dumps(msg).encode()], [to_test_r, to_prog_w])
                break
            except OSError:
                self.stop_tester()
        if read and not self.pushed:  # a new test process: the host sends the test code again
            self.send({"tests": start})
        if read:
            self.pushed = False
        tester.job, tester.round = self.job_seq, tester.round + 1
        os.close(to_test_r)
        os.close(to_prog_w)
        return program

    def start_tester(self, job):
        """Fork the test process (trusted, uid ``test_uid``, no CPU-seconds limit: it lives across runs)."""
        ctrl, theirs = socket.socketpair()
        r, w = os.pipe()
        nonce = secrets.token_hex(16)
        fd = secrets.randbelow(job["limits"]["nofile"] - 40) + 20
        workdir = self.make_workdir(self.cfg["test_uid"])
        tjob = dict(job, limits=dict(job["limits"], cpu_s=resource.RLIM_INFINITY))
        devnull = open_devnull()
        fds = {0: devnull, 1: devnull, 2: devnull, 3: theirs.fileno(), 4: self.host_fd, fd: w}
        pid = self.spawn(tjob, workdir, lambda: tester_main(3, 4, make_reporter(fd, nonce)), fds,
                         self.cfg["test_uid"], -500, False)
        theirs.close()
        os.close(w)
        self.tester = Tester(pid, ctrl, r, nonce, workdir)

    def stop_tester(self):
        tester, self.tester = self.tester, None
        if tester is None:
            return
        try:
            os.kill(tester.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            _, wstatus = os.waitpid(tester.pid, 0)
            self.exits[tester.pid] = wstatus
        except ChildProcessError:
            pass
        tester.ctrl.close()
        os.close(tester.r)
        self.remove_workdir(tester.workdir)

    def watch_round(self, timeout, on_msg):
        """Pump the test process's reports of the current round until it is idle again, it dies, or a
        deadline passes: ("idle", None) | ("exit", wait status) | ("timeout", None) | ("flood", None)."""
        tester = self.tester
        limit = self.job["limits"]["max_output"] + 4096
        deadline = time.monotonic() + timeout
        while True:
            left = min(deadline, self.check_end) - time.monotonic()
            if left <= 0:
                return "timeout", None
            if not select.select([tester.r], [], [], left)[0]:
                continue
            chunk = os.read(tester.r, 65536)
            if not chunk:
                self.stop_tester()
                return "exit", self.exits.get(tester.pid)
            *lines, tester.buf = (tester.buf + chunk).split(b"\n")
            if len(tester.buf) > limit:
                self.stop_tester()
                return "flood", None
            for line in lines:
                msg = _authentic(line, tester.nonce)
                if msg is None or msg.get("r") != tester.round:
                    continue
                if msg.get("t") == "idle":
                    return "idle", None
                new = on_msg(msg)
                if new is not None:
                    deadline = time.monotonic() + new

    def settle_tester(self, grace=1.0):
        """After a timeout the program is gone, so the test process should finish its round at once
        (every call fails); one that does not is running away on its own and is replaced."""
        if self.tester is not None and self.watch_round_idle(grace) is False:
            self.stop_tester()

    def watch_round_idle(self, grace):
        end = self.check_end
        self.check_end = float("inf")
        try:
            outcome, _ = self.watch_round(grace, lambda msg: None)
        finally:
            self.check_end = end
        return outcome == "idle"

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
        fds = {0: in_r, 1: out_w, 2: open_devnull()}
        body = lambda report: child_stdio(job, report)  # noqa: E731
        pid, r, nonce = self.spawn_reporting(job, workdir, body, fds, self.cfg["uid"])
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

    def make_workdir(self, uid):
        self.jobs += 1
        path = os.path.join(self.cfg["work_root"], f"job{self.jobs}")
        os.mkdir(path, 0o700)
        if uid is not None:
            os.chown(path, uid, uid)
        return path

    def remove_workdir(self, path):
        try:
            os.rmdir(path)  # the common case: the program wrote nothing
        except OSError:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


class Tester:
    """The worker's test process and the server's ends of its pipes."""

    def __init__(self, pid, ctrl, r, nonce, workdir):
        self.pid, self.ctrl, self.r, self.nonce, self.workdir = pid, ctrl, r, nonce, workdir
        self.buf = b""
        self.job = None  # the job whose test code it holds
        self.round = 0


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
    if status not in ("passed", "failed", "error", "memory", "killed", "ok"):
        status = "error"
    out = {"status": status, "seconds": seconds, "detail": str(msg.get("detail", ""))[:300]}
    if status == "ok":
        out["value"] = msg.get("value")
    return out


def _name_the_death(results, start, fail, wstatus):
    """Add how the program's process died (``killed by SIGKILL``: e.g. the cgroup's OOM killer) to the
    results the test process could only call 'killed' because the program went away."""
    if wstatus is None or not os.WIFSIGNALED(wstatus):
        return
    how = f" ({_death('exit', wstatus, 0)[1]})"
    for msg in [r for r in results[start:] if r is not None] + ([fail] if fail is not None else []):
        if msg.get("status") == "killed" and "program's process" in str(msg.get("detail", "")):
            msg["detail"] = str(msg["detail"]) + how


def _last_done(results, start):
    """Index of the last test with a result from ``start`` on (``start - 1`` when none)."""
    done = [i for i in range(start, len(results)) if results[i] is not None]
    return done[-1] if done else start - 1


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
    set_oom_score(-1000)
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
    host_in = os.dup(0)
    host_out = os.fdopen(os.dup(1), "wb")
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)

    def send(obj):
        host_out.write(json.dumps(obj).encode() + b"\n")
        host_out.flush()

    def read_frame(parse=True):
        head = read_exact(host_in, 12)
        data = read_exact(host_in, int(head)) if head else b""
        return json.loads(data) if parse and data else None

    server.read_frame, server.send, server.host_fd = read_frame, send, host_in
    send({"ready": True, "pid1": server.pid1, "uid": cfg["uid"], "chroot": cfg["chroot"]})
    while True:
        job = read_frame()
        if job is None:
            break
        try:
            send(server.run_job(job))
        except Exception as e:  # a server bug must not look like a program result
            send({"server_error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
