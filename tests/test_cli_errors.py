"""Every bad input gets one line naming the field and the fix, exit status 2, and no traceback (issue 12's table).

Most rows call ``cli.main`` in-process (what ``python cli.py`` runs, minus the interpreter start); the last tests
run the real process to check the exit status, the absence of a traceback, ``--debug`` and ``--help``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch  # noqa: F401 (imported here, not under capsys: it binds a log handler to stderr)
import pytest

ROOT = Path(__file__).resolve().parents[1]
HUMANEVAL_EVAL = ["test", "--config", str(ROOT / "configs/eval_humaneval_smollm2.yaml")]
DEMO_FIT = ["fit", "--config", str(ROOT / "configs/base_cpu.yaml"), "--config", str(ROOT / "configs/demo_cpu.yaml")]
MBPP_ROW = {"text": "Add.", "code": "def add(a, b):\n    return a + b", "task_id": 11, "test_setup_code": "",
            "test_list": ["assert add(1, 2) == 3"], "challenge_test_list": []}


def load_cli():
    spec = importlib.util.spec_from_file_location("egcfg_cli_errors", ROOT / "cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_cli(capsys, monkeypatch, tmp_path):
    """``cli.main(argv)`` → (status, the stderr text); fails the test on any exception (= a traceback)."""
    cli = load_cli()
    monkeypatch.chdir(tmp_path)  # checkpoints/, api caches and logs land in the test's folder

    def run(argv: list[str]) -> tuple[int, str]:
        status = cli.main(list(argv))
        return status, capsys.readouterr().err

    return run


@pytest.fixture(autouse=True)
def drop_new_root_handlers():
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    for handler in set(root.handlers) - set(handlers):  # basicConfig's handler holds this test's captured stderr
        root.removeHandler(handler)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


@pytest.fixture
def no_data(no_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_typo_in_a_nested_option_suggests_the_field(run_cli):
    status, err = run_cli([*DEMO_FIT, "--data.replay.p2value_alfa", "0.3"])
    assert status == 2
    assert error_line(err) == "error: unknown option data.replay.p2value_alfa; did you mean data.replay.p2value_alpha?"
    assert "usage:" not in err


def test_typo_in_a_top_level_option_suggests_the_option(run_cli):
    status, err = run_cli([*DEMO_FIT, "--data.batch_sise", "4"])
    assert status == 2 and "did you mean --data.batch_size?" in error_line(err)


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--data.replay.p2value_alpha", "1.5", "data.replay.p2value_alpha"),
    ("--data.replay.sampling_alpha", "-1", "data.replay.sampling_alpha"),
    ("--data.samples_per_epoch", "0", "data.samples_per_epoch"),
    ("--model.evaluation.max_new_tokens", "0", "max_new_tokens"),
    ("--data.replay.capacity", "0", "data.replay.capacity"),
    ("--refresh.chunk_problems", "0", "refresh: chunk_problems"),
])
def test_out_of_range_values_name_the_field(run_cli, tmp_path, option, value, field):
    status, err = run_cli([*DEMO_FIT, option, value, f"--trainer.default_root_dir={tmp_path}"])
    assert status == 2 and field in error_line(err)


def test_refresh_left_in_trainer_callbacks_says_to_move_it(run_cli, tmp_path):
    """A YAML from before the ``refresh:`` section would otherwise run two refreshes each epoch."""
    old = tmp_path / "old.yaml"
    old.write_text("trainer:\n  callbacks:\n    - class_path: egcfg_pl.lightning.refresh.ReplayRefresh\n"
                   "      init_args: {problems_per_refresh: 2}\n")
    status, err = run_cli([*DEMO_FIT, "--config", str(old), f"--trainer.default_root_dir={tmp_path}"])
    assert status == 2 and "move its init_args there" in error_line(err) and "refresh:" in error_line(err)


def test_print_config_refuses_an_invalid_value(run_cli, capsys):
    status, err = run_cli([*DEMO_FIT, "--data.replay.p2value_alpha", "1.5", "--print_config"])
    assert status == 2 and "must be in [0, 1], got 1.5" in error_line(err)


def test_print_config_still_prints_a_valid_config(run_cli, capsys):
    cli = load_cli()
    with pytest.raises(SystemExit) as done:  # jsonargparse exits 0 after printing
        cli.main([*DEMO_FIT, "--data.replay.p2value_alpha", "0.7", "--print_config"])
    assert done.value.code in (0, None) and "p2value_alpha: 0.7" in capsys.readouterr().out


@pytest.mark.parametrize(("content", "expected"), [
    (None, "does not exist; check the `path` setting"),
    (json.dumps(MBPP_ROW) + "\n" + json.dumps(MBPP_ROW)[:40] + "\n", "row 2: not valid JSON"),
    (json.dumps({k: v for k, v in MBPP_ROW.items() if k != "test_list"}) + "\n", "row 1: missing field 'test_list'"),
], ids=["missing-file", "truncated-line", "no-test_list"])
def test_bad_dataset_files_name_file_row_and_fix(run_cli, tmp_path, content, expected):
    path = tmp_path / "mbpp.jsonl"
    if content is not None:
        path.write_text(content)
    status, err = run_cli([*HUMANEVAL_EVAL, "--data.held_out.dataset", "mbpp", "--data.held_out.split", "all",
                           "--data.held_out.path", str(path)])
    assert status == 2 and expected in err and "Traceback" not in err


def test_hub_unavailable_says_how_to_give_the_dataset(run_cli, no_data):
    start = time.perf_counter()
    status, err = run_cli([*HUMANEVAL_EVAL, "--data.held_out.dataset", "mbpp"])
    line = error_line(err)
    assert status == 2 and "dataset 'mbpp' is not available" in line and "EGCFG_DATA_DIR" in line and "path:" in line
    assert time.perf_counter() - start < 60  # parse + one offline cache miss, never a network wait


def test_model_alias_typo_suggests_the_alias_without_a_hub_attempt(run_cli, monkeypatch, closed_port):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")  # a hub attempt would fail differently
    status, err = run_cli([*HUMANEVAL_EVAL, "--data.held_out.limit", "1", "--model.model.name", "smollm2-13m"])
    assert status == 2 and "did you mean 'smollm2-135m'?" in error_line(err)


def test_empty_local_model_folder_says_it_holds_no_model(run_cli, tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    status, err = run_cli([*HUMANEVAL_EVAL, "--data.held_out.limit", "1", "--model.model.name", str(empty)])
    line = error_line(err)
    assert status == 2 and "holds no model" in line and "sentencepiece" not in line


def api_fit(tmp_path, *api: str) -> list[str]:
    """The openai-mode config on one HumanEval problem (no MBPP needed), with API overrides."""
    return ["fit", "--config", str(ROOT / "configs/base_cpu.yaml"), "--config", str(ROOT / "configs/openai_btp.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--data.train.dataset", "humaneval", "--data.train.split", "test", "--data.train.limit", "1",
            "--data.held_out.dataset", "humaneval", "--data.held_out.limit", "1", "--data.allow_overlap", "true",
            "--data.drop_overlapping_train", "false", "--model.pass_k", "[1]", "--model.api.cache_dir", "null", *api]


def test_openai_key_unset_names_the_variable(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    status, err = run_cli(api_fit(tmp_path))
    assert status == 2 and "environment variable OPENAI_API_KEY is not set" in error_line(err)


def test_api_base_url_with_nothing_listening_fails_fast_naming_the_url(run_cli, tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/v1"
    start = time.perf_counter()
    status, err = run_cli(api_fit(tmp_path, "--model.api.provider", "custom", "--model.api.base_url", url,
                                  "--model.api.api_key_env", "none", "--model.api.max_retries", "5"))
    line = error_line(err)
    assert status == 2 and url in line and "nothing is listening" in line
    assert "retry" not in err  # not 45 retry warnings: refused means nobody is there
    assert time.perf_counter() - start < 60


def test_evaluate_missing_samples_file(run_cli, tmp_path):
    status, err = run_cli(["evaluate", "--dataset", "humaneval", "--samples", str(tmp_path / "none.jsonl")])
    assert status == 2 and "no such file" in error_line(err)


def test_evaluate_dataset_typo_suggests_the_dataset(run_cli, tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "pass"}) + "\n")
    status, err = run_cli(["evaluate", "--dataset", "humanevl", "--samples", str(samples)])
    assert status == 2 and "did you mean 'humaneval'?" in error_line(err)


def run_process(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_process_prints_one_line_and_debug_shows_the_traceback():
    bad = [*DEMO_FIT, "--data.replay.capacity", "0"]
    plain = run_process(*bad)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert error_line(plain.stderr).startswith("error: data.replay.capacity")
    for noise in ("litlogger", "not recommended", "gemm_4bit_forward"):
        assert noise not in plain.stderr + plain.stdout
    debug = run_process(*bad, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_help_lists_every_command():
    result = run_process("--help")
    assert result.returncode == 0
    for command in ("demo", "evaluate", "experiment", "fit"):
        assert command in result.stdout


def test_demo_without_mbpp_stops_at_once_saying_how_to_give_it(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "EGCFG_DATA_DIR": ""}
    result = run_process("demo", "--humaneval", "0", **env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = error_line(result.stderr)
    assert "'mbpp'" in line and "EGCFG_DATA_DIR" in line


def test_command_typo_and_missing_config_file(run_cli, tmp_path):
    status, err = run_cli(["fitt", "--config", str(ROOT / "configs/demo_cpu.yaml")])
    assert status == 2 and "unknown command 'fitt' (did you mean 'fit'?)" in error_line(err) and "demo" in err
    status, err = run_cli(["fit", "--config", str(tmp_path / "nope.yaml")])
    assert status == 2 and error_line(err).startswith("error: --config: File does not exist")


@pytest.mark.parametrize("section", ["refresh", "model"])
def test_a_sandbox_left_under_model_or_refresh_says_to_move_it(run_cli, tmp_path, section):
    """One ``sandbox:`` feeds the refresh and the held-out tests; the linked copies would be overwritten silently."""
    old = tmp_path / "old.yaml"
    old.write_text(f"{section}:\n  sandbox: {{timeout: 9.0}}\n")
    status, err = run_cli([*DEMO_FIT, "--config", str(old), f"--trainer.default_root_dir={tmp_path}"])
    assert status == 2 and f"{section}.sandbox is set from sandbox" in error_line(err)


def test_a_run_stopped_by_sigterm_exits_143_not_0(monkeypatch):
    """Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` whose status would be 0): the stopped run
    (its resumable checkpoint already written by ``lightning/interrupt.py``) must not look finished to a script."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    cli = load_cli()

    def stopped(argv):
        raise SIGTERMException

    monkeypatch.setattr(cli, "_run", stopped)
    assert cli.main(["fit"]) == 143
    monkeypatch.setattr(cli, "_run", lambda argv: sys.exit(3))
    with pytest.raises(SystemExit) as other:  # any other exit keeps its own status
        cli.main(["fit"])
    assert other.value.code == 3
