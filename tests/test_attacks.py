"""Hostile programs: each gets an exact verdict, and the host must be unharmed afterwards.

"Unharmed" = no process carrying the run's marker (or running as a sandbox uid) survives, no file
appears outside the sandbox, no connection reaches the test's own 127.0.0.1 listener, and the
executor still answers a benign program correctly. Requires Linux namespaces (root in CI).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sandbox import Executor, SandboxConfig, Status
from egcfg_pl.sandbox.layers import namespaces_available
from egcfg_pl.sandbox.worker import TEST_UID_OFFSET

pytestmark = pytest.mark.skipif(
    not (namespaces_available() and os.geteuid() == 0), reason="attack suite needs root + Linux namespaces"
)

MARK = f"egcfg-attack-{uuid.uuid4().hex[:12]}"
REPO = Path(__file__).resolve().parents[1]
CONFIG = SandboxConfig(timeout=1.0, workers=2, memory_mb=512, max_processes=32)
P, F, T, M, E, S, K = (Status.PASSED, Status.FAILED, Status.TIMEOUT, Status.MEMORY, Status.ERROR,
                       Status.SYNTAX, Status.KILLED)


def problem(*tests: str, setup: str = "candidate = add") -> Problem:
    """Assert-style problem around ``add(a, b)``; default tests: one literal and one computed assert."""
    tests = tests or ("assert candidate(1, 2) == 3", "assert abs(candidate(2, 2) - 4) < 1e-9")
    return Problem("attack/add", "custom", "test", "add two numbers",
                   tuple(TestCase("assert", code=t) for t in tests), entry_point="add", test_setup=setup)


def stdio_problem() -> Problem:
    return Problem("attack/stdio", "custom", "test", "sum", (TestCase("stdio", input="1 2\n", output="3\n"),))


def call_problem(expected, fn: str = "f") -> Problem:
    return Problem("attack/call", "custom", "test", "call", (TestCase("call", fn_name=fn, expected=expected),))


GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
SLEEPER = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', '{MARK}'])"


@pytest.fixture(scope="module")
def executor():
    with Executor(CONFIG) as ex:
        ex.run_many([(problem(), GOOD)] * 4)  # start both fork servers
        _remember_namespaces(ex)
        assert _NAMESPACES
        yield ex


_NAMESPACES: set[str] = set()  # pid namespaces of this module's fork servers


def _remember_namespaces(executor: Executor) -> None:
    for worker in executor._workers:
        children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text().split()
        _NAMESPACES.update(os.readlink(f"/proc/{c}/ns/pid") for c in children)


def _survivors() -> list[str]:
    """Host processes left by an attack: the marker in the cmdline, or anything besides the fork
    server and its test process (a test uid) inside one of our sandboxes' pid namespaces (other
    executors on the machine may use the same uids, so uids alone would not tell)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if MARK in cmd or (ns in _NAMESPACES and uid != "0" and int(uid) < CONFIG.base_uid + TEST_UID_OFFSET):
            found.append(f"{pid} uid={uid} {cmd[:80]}")
    return found


def check(executor, prob: Problem, program: str, expected: list[Status]) -> None:
    verdict = executor.run(prob, program)
    assert [r.status for r in verdict.results] == expected, verdict
    assert _survivors() == []
    assert executor.run(problem(), GOOD).all_passed  # the sandbox still answers


# ---- resources -----------------------------------------------------------------------------------
def test_infinite_loop_at_top_level(executor):
    check(executor, problem(), "while True:\n    pass\n", [T, T])


def test_infinite_loop_in_one_test_only(executor):
    prog = "def add(a, b):\n    while a == 1:\n        pass\n    return a + b\n"
    check(executor, problem(), prog, [T, P])


def test_busy_child_processes(executor):
    prog = f"import os, sys\nfor _ in range(4):\n    if os.fork() == 0:\n        {SLEEPER.splitlines()[1]}\n{GOOD}"
    check(executor, problem(), prog, [P, P])


def test_fork_bomb(executor):
    prog = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    check(executor, problem(), prog, [T, T])


def test_memory_bomb_single_allocation(executor):
    check(executor, problem(), "x = bytearray(8 * 2**30)\n" + GOOD, [M, M])


def test_memory_bomb_growing(executor):
    prog = "def add(a, b):\n    xs = []\n    while True:\n        xs.append(bytearray(2**24))\n"
    check(executor, problem(), prog, [M, M])


def test_huge_stdout_is_capped(executor):
    check(executor, stdio_problem(), "while True:\n    print('x' * 4096)\n", [F])


def test_huge_output_in_assert_tests_is_discarded(executor):
    check(executor, problem(), "print('x' * 50_000_000)\n" + GOOD, [P, P])


def test_huge_file_write(executor):
    check(executor, problem(), "open('big', 'wb').write(b'x' * 100 * 2**20)\n" + GOOD, [E, E])


def test_deep_recursion(executor):
    check(executor, problem(), "def add(a, b):\n    return add(a, b)\n", [E, E])


def test_recursion_limit_abuse_crashes_only_the_child(executor):
    # through C (map) so the C stack overflows: SIGSEGV kills the child, the server is untouched
    prog = "import sys\nsys.setrecursionlimit(10**8)\ndef add(a, b):\n    return sum(map(add, [a], [b]))\n"
    check(executor, problem(), prog, [K, K])


# ---- processes -----------------------------------------------------------------------------------
def test_sigterm_ignored(executor):
    prog = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    check(executor, problem(), prog, [T, T])


def test_daemonised_orphan(executor):
    prog = (f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        {SLEEPER.splitlines()[1]}\n    os._exit(0)\n{GOOD}")
    check(executor, problem(), prog, [P, P])


def test_setsid_escape(executor):
    prog = f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    {SLEEPER.splitlines()[1]}\n{GOOD}"
    check(executor, problem(), prog, [P, P])


def test_threads_left_running(executor):
    prog = "import threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=False).start()\n" + GOOD
    check(executor, problem(), prog, [P, P])


def test_kill_parent(executor):
    check(executor, problem(), "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + GOOD, [E, E])


def test_kill_everything_visible(executor):
    # kill(-1) reaches only processes of the program's own uid: not the server, not the test process
    # (another uid), so the tests still run and judge the program
    kill = "import os, signal\ndef add(a, b):\n    os.kill(-1, signal.SIGKILL)\n    return a {} b\n"
    check(executor, problem(), kill.format("+"), [P, P])
    check(executor, problem(), kill.format("-"), [F, F])


# ---- fake passes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("trick", ["exit(0)", "quit()", "import sys\nsys.exit(0)", "raise SystemExit(0)"])
def test_exit_at_top_level_is_not_a_pass(executor, trick):
    check(executor, problem(), WRONG + trick + "\n", [E, E])


def test_os_exit_at_top_level_is_not_a_pass(executor):
    check(executor, problem(), WRONG + "import os\nos._exit(0)\n", [K, K])


def test_exit_inside_the_tested_function(executor):
    check(executor, problem(), "import sys\ndef add(a, b):\n    sys.exit(0)\n", [E, E])
    check(executor, problem(), "import os\ndef add(a, b):\n    os._exit(0)\n", [K, K])


def test_fake_success_marker_on_stdout(executor):
    prog = WRONG + "print('ALL TESTS PASSED')\nprint('passed', flush=True)\n"
    check(executor, problem(), prog, [F, F])
    check(executor, stdio_problem(), "print(4)\nprint('PASSED')\n", [F])


def test_monkeypatched_assertion_error(executor):
    prog = WRONG + "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
    check(executor, problem(), prog, [F, F])


def test_monkeypatched_builtins(executor):
    # the tests run in their own process with their own builtins; the program only breaks its own side of
    # the pipe (its replies become unreadable: no verdict, KILLED)
    prog = "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n" + WRONG
    check(executor, problem(), prog, [K, K])
    check(executor, problem(), "import builtins\nbuiltins.abs = lambda x: 0\n" + WRONG, [F, F])


def test_always_equal_objects(executor):
    evil = "class Eq:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
    check(executor, problem("assert candidate(1, 2) == 3"), evil + "def add(a, b):\n    return Eq()\n", [F])
    sub = "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
    check(executor, problem("assert candidate(1, 2) == 3"), sub + "def add(a, b):\n    return I(0)\n", [F])
    check(executor, call_problem([1, 2]), evil + "def f():\n    return Eq()\n", [F])


def test_modules_named_by_the_program_are_not_imported_by_the_judge(executor):
    """A returned module crosses by name and the test process used to import it: `unittest.__main__` and
    `venv.__main__` ran their command lines in the trusted process and raised SystemExit there."""
    for name in ("unittest.__main__", "venv.__main__", "antigravity"):
        prog = f"import types\ndef add(a, b):\n    return types.ModuleType({name!r})\n"
        verdict = executor.run(problem("assert candidate(1, 2) == 3"), prog)
        assert [r.status for r in verdict.results] == [F], verdict
        assert verdict.results[0].detail == "got <opaque module>", verdict
    check(executor, problem("assert candidate(1, 2) == 3"), "import math\ndef add(a, b):\n    return math\n", [F])


def test_closing_all_descriptors(executor):
    check(executor, problem(), "import os\nos.closerange(0, 4096)\n" + GOOD, [K, K])


def test_redirecting_all_descriptors(executor):
    prog = "import os\nnull = os.open('/dev/null', os.O_WRONLY)\nfor fd in range(3, 256):\n    if fd != null:\n" \
           "        try:\n            os.dup2(null, fd)\n        except OSError:\n            pass\n" + GOOD
    check(executor, problem(), prog, [K, K])


def test_forged_report_lines_on_every_descriptor(executor):
    forged = ('deadbeef {"t": "end", "i": 0, "status": "passed"}\\n'
              'deadbeef {"t": "end", "i": 1, "status": "passed"}\\n')
    prog = (f"import os\nfor fd in range(0, 256):\n    try:\n        os.write(fd, b'{forged}')\n"
            f"    except OSError:\n        pass\n") + WRONG
    check(executor, problem(), prog, [K, K])  # the lines reach only the program's own pipe: unreadable


def test_tampering_with_the_harness_module(executor):
    prog = WRONG + ("import __main__, json, sys\n__main__.report = None\njson.dumps = lambda *a, **k: 'x'\n"
                    "sys.modules['__main__'].__dict__.clear()\n")
    check(executor, problem(), prog, [K, K])  # a broken json breaks only the program's replies


def test_introspection_for_the_nonce_is_blocked(executor):
    for hunt in ("import gc\ngc.get_objects()", "import sys\nsys._getframe(1)",
                 "import sys\nsys._current_frames()", "import sys\nsys.settrace(lambda *a: None)"):
        check(executor, problem(), hunt + "\n" + GOOD, [E, E])


def test_ctypes(executor):
    check(executor, problem(), "import ctypes\nctypes.CDLL(None).getpid()\n" + GOOD, [E, E])
    check(executor, problem(), "import ctypes\nctypes.string_at(id(1), 8)\n" + GOOD, [E, E])


# ---- filesystem, secrets, network ------------------------------------------------------------------
def test_writes_outside_the_work_dir(executor, tmp_path):
    targets = [f"/tmp/{MARK}", str(REPO / f"{MARK}.txt"), f"/etc/{MARK}", f"/usr/{MARK}", str(tmp_path / MARK)]
    for target in targets:
        check(executor, problem(), f"open({target!r}, 'w').write('pwned')\n" + GOOD, [E, E])
        assert not os.path.exists(target)


def test_proc_of_the_parent(executor):
    for path in ("/proc/1/environ", "/proc/1/cmdline", "/proc/self/mem"):
        check(executor, problem(), f"open({path!r}, 'rb').read()\n" + GOOD, [E, E])


def test_read_project_home_and_host_files(executor, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    for path in (str(secret), str(REPO / "pyproject.toml"), "/root/.ssh/id_rsa", "/root/.bashrc",
                 str(Path.home() / ".ssh"), "/work/shared/data/README.md"):
        prog = f"def f():\n    return open({path!r}).read()\n"
        check(executor, call_problem("hunter2"), prog, [E])
    check(executor, problem(), "import egcfg_pl\n" + GOOD, [E, E])


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("EGCFG_FAKE_API_KEY", "sk-secret")
    with Executor(CONFIG, workers=1) as ex:
        assert ex.run(call_problem("sk-secret"), "import os\ndef f():\n    return os.environ.get('EGCFG_FAKE_API_KEY')\n").results[0].status is F
        keys = ex.run(call_problem(["HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"]),
                      "import os\ndef f():\n    return sorted(os.environ)\n")
        assert keys.all_passed, keys


def test_socket_to_a_local_listener(executor):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        prog = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5).sendall(b'hi')\n" + GOOD
        check(executor, problem(), prog, [E, E])
        with pytest.raises(TimeoutError):
            listener.accept()


def test_no_survivors_after_the_suite(executor):
    assert _survivors() == []
    assert executor.run(problem(), GOOD).all_passed


def test_memory_bomb_across_forked_children(executor):
    # each child stays under RLIMIT_AS, together they exceed it: the per-worker cgroup catches the total
    prog = ("import os, time\nfor _ in range(12):\n    if os.fork() == 0:\n        x = b'x' * (400 * 2**20)\n"
            "        time.sleep(60)\n" + GOOD)
    verdict = executor.run(problem(), prog)
    assert [r.status for r in verdict.results] in ([P, P], [M, M])
    assert _survivors() == []
    assert executor.run(problem(), GOOD).all_passed


def test_memory_bomb_during_a_call_is_a_memory_verdict(executor):
    # the program's process dies (RLIMIT_AS -> MemoryError, or the cgroup's OOM killer -> SIGKILL) during a call
    # the test process makes: MEMORY either way, and the next test still runs
    prog = "def add(a, b):\n    if a == 1:\n        xs = [bytearray(2**24) for _ in range(10**4)]\n    return a + b\n"
    check(executor, problem("assert candidate(1, 2) == 3", "assert candidate(2, 2) == 4"), prog, [M, P])


def test_huge_reply_is_capped(executor):
    # a reply above max_output_bytes never reaches the test process's memory: no verdict for that test
    prog = "def add(a, b):\n    return 'x' * (50 * 2**20) if a == 1 else a + b\n"
    check(executor, problem("assert candidate(1, 2) == 3", "assert candidate(2, 2) == 4"), prog, [K, P])


def test_dying_under_test_code_that_swallows_everything(executor):
    # the test code catches every exception (ProgramLost included), so it ends "without failing": the
    # program is gone all the same, so the test has no verdict and the next one gets a fresh program
    prob = problem("try:\n    candidate(1, 2)\nexcept BaseException:\n    pass", "assert candidate(2, 2) == 4")
    check(executor, prob, "import os\ndef add(a, b):\n    if a == 1:\n        os._exit(0)\n    return a + b\n", [K, P])
