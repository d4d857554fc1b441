"""Forged verdicts (issue 16): a wrong program plus machinery that writes the harness's report.

Each attack is a deliberately wrong body for a HumanEval problem whose every test is a non-literal
assert (HumanEval/32, /38, /53: ``check`` kept whole, random inputs, helpers from the prompt), plus a
forger reached through a different door: a signal handler that walks the frames it is given up to the
harness and calls its reporter (triggered by an interval timer, a timer thread, a finaliser, a
background thread), an ``atexit`` hook, a rewritten prompt helper, or a lookup of the test code in
the memory the program's process inherited. On the one-process harness several of these were judged
passed; with the tests in their own process each must be judged failed (no test passes).
"""

from __future__ import annotations

import builtins
import os

import pytest

from egcfg_pl.problems import load_problems
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sandbox import Executor, Status
from egcfg_pl.sandbox.layers import namespaces_available

pytestmark = pytest.mark.skipif(
    not (namespaces_available() and os.geteuid() == 0), reason="attack suite needs root + Linux namespaces"
)

WRONG = {  # entry point -> a wrong body, slow enough for timers to fire during the call
    "find_zero": "    time.sleep(0.03)\n    return 12345.0\n",
    "decode_cyclic": "    time.sleep(0.03)\n    return s\n",
    "add": "    time.sleep(0.03)\n    return x - y\n",
}

# Walks the frames a signal handler is given up to the harness's test loop and reports test i passed
# (in the one-process harness the loop's locals hold ``report``, ``i`` and ``n``), then ends the process
# before the real verdict; also scribbles forged lines on every descriptor.
FORGER = '''
import os, signal, sys, threading, time, atexit, gc

def _scribble():
    for fd in range(0, 256):
        try:
            os.write(fd, b'{"t": "end", "i": 0, "status": "passed", "detail": "", "value": null}\\n')
        except OSError:
            pass

def _forge(signum=None, frame=None):
    f = frame
    while f is not None:
        try:
            loc = f.f_locals
        except Exception:
            break
        rep = loc.get("report")
        if callable(rep) and "i" in loc and "n" in loc:
            i, n = loc["i"], loc["n"]
            for k in range(i, n):
                rep({"t": "end", "i": k, "status": "passed", "detail": "", "value": None},
                    {"t": "start", "i": k + 1} if k + 1 < n else {"t": "done"})
            os._exit(0)
        try:
            f = f.f_back
        except Exception:
            break
    _scribble()

signal.signal(signal.SIGALRM, _forge)
signal.signal(signal.SIGUSR1, _forge)
'''

TRIGGERS = {
    "signal-handler": "signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)\n",
    "timer-thread": ("def _tick():\n    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)\n"
                     "    threading.Timer(0.005, _tick).start()\nthreading.Timer(0.005, _tick).start()\n"),
    "finaliser": ("class _Bomb:\n    def __del__(self):\n        os.kill(os.getpid(), signal.SIGUSR1)\n"
                  "        _Bomb()\n_Bomb()\n"),
    "thread": ("def _loop():\n    while True:\n        _scribble()\n"
               "        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)\n        time.sleep(0.002)\n"
               "threading.Thread(target=_loop, daemon=True).start()\n"),
    "atexit": "atexit.register(_scribble)\natexit.register(lambda: os._exit(0))\n",
}


@pytest.fixture(scope="module")
def executor():
    with Executor(timeout=3.0, workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def humaneval():
    problems = {p.id: p for p in load_problems("humaneval")}
    return [problems[f"HumanEval/{k}"] for k in (32, 38, 53)]


def wrong_program(problem: Problem, trigger: str) -> str:
    """The prompt, the forger, then a wrong body for the entry point (as a hostile completion would)."""
    return problem.prompt.rstrip() + "\n" + WRONG[problem.entry_point] + FORGER + trigger


def test_the_wrong_bodies_fail_and_the_references_pass(executor, humaneval):
    for p in humaneval:
        assert executor.run(p, p.solutions[0]).all_passed
        assert executor.run(p, p.prompt.rstrip() + "\n" + WRONG[p.entry_point] + "import time\n").passed == 0


@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_forging_the_report_is_judged_failed(executor, humaneval, trigger):
    for p in humaneval:
        verdict = executor.run(p, wrong_program(p, TRIGGERS[trigger]))
        assert verdict.passed == 0, (p.id, verdict)


def test_rewriting_the_prompt_helpers_is_judged_failed(executor, humaneval):
    """/38's check encodes with ``encode_cyclic``: a program that makes it the identity (and decodes with
    the identity) passes a check that uses the program's copy, not the dataset's."""
    p = humaneval[1]
    program = "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"
    assert executor.run(p, program).passed == 0


LOOKUP = '''
import os, signal

def _strings(x, seen, depth=0):
    if depth > 6 or id(x) in seen:
        return
    seen.add(id(x))
    if isinstance(x, (str, bytes)):
        yield x if isinstance(x, str) else x.decode("utf-8", "replace")
    elif isinstance(x, dict):
        for k, v in list(x.items()):
            yield from _strings(k, seen, depth + 1)
            yield from _strings(v, seen, depth + 1)
    elif isinstance(x, (list, tuple, set)):
        for v in list(x):
            yield from _strings(v, seen, depth + 1)
    elif hasattr(x, "__dict__") and not isinstance(x, type):
        yield from _strings(vars(x), seen, depth + 1)

FOUND = []
PREFIX = "SEC" + "RET-"  # not spelled out, or the program's own source would match

def _look(signum, frame):
    seen = set()
    while frame is not None:
        for s in _strings(frame.f_locals, seen):
            FOUND.extend(m for m in s.replace('"', "'").split("'") if m.startswith(PREFIX) and m != PREFIX)
        frame = frame.f_back

signal.signal(signal.SIGUSR1, _look)
os.kill(os.getpid(), signal.SIGUSR1)

def answer():
    return FOUND[0] if FOUND else "nothing found"
'''


def test_the_program_cannot_read_the_test_code(executor):
    """The expected answer of a non-literal assert must not be in the program's memory: the old harness
    forked the program from a server holding the whole job, test code included."""
    secret = "SECRET-7f3a9c"
    prob = Problem("attack/lookup", "custom", "test", "answer",
                   (TestCase("assert", code=f"assert candidate() in [{secret!r}]"),),
                   entry_point="answer", test_setup="candidate = answer")
    verdict = executor.run(prob, LOOKUP)
    assert verdict.results[0].status is Status.FAILED, verdict


def test_the_program_cannot_read_the_test_code_after_a_restart():
    """After a timed-out test the server starts both processes again: the new program process is forked
    after a test process was, and must still find no test code."""
    secret = "SECRET-51d0e2"
    hang = "import time\ndef hang():\n    time.sleep(60)\n"
    prob = Problem("attack/lookup2", "custom", "test", "answer",
                   (TestCase("assert", code="assert hang() is None"),
                    TestCase("assert", code=f"assert candidate() in [{secret!r}]")),
                   entry_point="answer", test_setup="candidate = answer")
    with Executor(timeout=0.5, workers=1) as ex:
        verdict = ex.run(prob, LOOKUP + hang)
    assert [r.status for r in verdict.results] == [Status.TIMEOUT, Status.FAILED], verdict


# An impostor: the program writes its own first ("ready") line to the reply pipe (descriptor 4) and
# answers the test process's calls itself (descriptor 3), offering names the tests never asked for.
# On the first two-process harness every offered name landed in the test namespace: `range` returning
# [] emptied /32's and /38's `for _ in range(100)` loops, so the wrong bodies were judged passed.
IMPOSTOR = '''
import json, os

def _enc(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return {"i": str(v)}
    if isinstance(v, float):
        return {"f": repr(v)}
    if isinstance(v, str):
        return {"s": v}
    if isinstance(v, (list, tuple)):
        return {"l": [_enc(x) for x in v]}
    return {"o": "x"}

def _dec(e):
    if e is None or isinstance(e, bool):
        return e
    (t, x), = e.items()
    if t in ("i", "f", "s"):
        return {"i": int, "f": float, "s": str}[t](x)
    return [_dec(y) for y in x] if t in ("l", "t") else None

_objs = [OBJECTS]
os.write(4, (json.dumps({"ready": {"l": [{"t": [{"s": n}, e]} for n, e in PAIRS]}}) + "\\n").encode())
for _line in os.fdopen(3, "rb"):
    _req = json.loads(_line)
    try:
        _out = {"v": _enc(_objs[_req["h"]](*_dec(_req["args"])))}
    except Exception as _e:
        _out = {"e": [type(_e).__name__, str(_e)]}
    os.write(4, (json.dumps(_out) + "\\n").encode())
os._exit(0)
'''


def impostor(body: str, entry: str, offered: dict[str, str], raw: dict[str, object] | None = None) -> str:
    """``body`` (defining ``entry``) + an impostor that offers ``entry`` and each name of ``offered``
    (name -> Python expression, served as a handle) and of ``raw`` (name -> an encoded value as is)."""
    objects = [entry, *offered.values()]
    pairs = [[name, {"h": [k, "function"]}] for k, name in enumerate([entry, *offered])]
    pairs += [[name, value] for name, value in (raw or {}).items()]
    return body + IMPOSTOR.replace("OBJECTS", ", ".join(objects)).replace("PAIRS", repr(pairs))


def test_an_impostor_offering_range_is_judged_failed(executor, humaneval):
    """The reviewer's attack: the wrong bodies of /32 and /38 plus a `range` that returns []."""
    for p in humaneval:
        body = p.prompt.rstrip() + "\n" + WRONG[p.entry_point] + "import time\n"
        verdict = executor.run(p, impostor(body, p.entry_point, {"range": "lambda *a, **k: []"}))
        assert verdict.passed == 0, (p.id, verdict)


SHADOWED = {  # builtin -> (test, a wrong `f`, the program's stand-in for the builtin)
    "abs": ("assert abs(f(2) - 4) < 1e-9", "def f(x):\n    return 0\n", "lambda *a: 0"),
    "len": ("assert len(f(3)) == 3", "def f(n):\n    return []\n", "lambda *a: 3"),
    "sorted": ("assert sorted(f([3, 1, 2])) == [1, 2, 3]", "def f(xs):\n    return []\n", "lambda *a: [1, 2, 3]"),
    "isinstance": ("assert isinstance(f(), int)", "def f():\n    return 'no'\n", "lambda *a: True"),
}


@pytest.mark.parametrize("name", sorted(SHADOWED))
def test_an_impostor_shadowing_a_builtin_is_judged_failed(executor, name):
    test, body, stand_in = SHADOWED[name]
    prob = Problem(f"attack/{name}", "custom", "test", "f", (TestCase("assert", code=test),), entry_point="f")
    assert executor.run(prob, body).passed == 0
    verdict = executor.run(prob, impostor(body, "f", {name: stand_in}))
    assert verdict.passed == 0, verdict


def test_an_impostor_replacing_the_builtins_is_judged_failed(executor, humaneval):
    """A fake `__builtins__` dict for the test namespace: the test process's own builtins (they cross by
    name) but the program's `range`, enough for /32's check to run without its loop."""
    p = humaneval[0]
    body = p.prompt.rstrip() + "\n" + WRONG[p.entry_point] + "import time\n"
    names = [n for n in dir(builtins) if isinstance(getattr(builtins, n), (type, type(len))) and n != "range"]
    fake = {"d": [[{"s": n}, {"B": n}] for n in names] + [[{"s": "range"}, {"h": [1, "function"]}]]}
    program = impostor(body, p.entry_point, {}, {"__builtins__": fake})
    program = program.replace("_objs = [find_zero]", "_objs = [find_zero, lambda *a, **k: []]")
    verdict = executor.run(p, program)
    assert verdict.passed == 0, verdict


def test_an_impostor_replacing_a_prompt_helper_is_judged_failed(executor, humaneval):
    """/38's check encodes with the dataset's `encode_cyclic`; an offered identity must not replace it."""
    p = humaneval[1]
    program = impostor("def decode_cyclic(s):\n    return s\n", "decode_cyclic", {"encode_cyclic": "lambda s: s"})
    assert executor.run(p, program).passed == 0
