"""What a user reads at the end of the demo: a small table with intervals, the buffer in words, the paths."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from egcfg_pl.experiments import demo

SUMMARY = {"num_problems": 20, "pass@1": {"mean": 0.05, "ci95": [0.009, 0.236]},
           "avg_pass_rate": {"mean": 0.186, "ci95": [0.08, 0.31]}}
STATS = {"buffer/size": 40.0, "buffer/problems": 8.0, "buffer/problems_solved": 3.0, "buffer/mean_p2value": 0.31,
         "buffer/mean_pass_rate": 0.12, "buffer/frac_all_passed": 0.1, "buffer/frac_partial": 0.25}


def test_table_rows_show_pass_at_1_and_pass_rate_with_intervals():
    table = demo.results_table({"MBPP test (baseline)": SUMMARY})
    header, row = table.splitlines()
    assert "pass@1 [95% CI]" in header and "avg test pass rate [95% CI]" in header
    assert row.startswith("MBPP test (baseline)") and "5.0% [0.9%, 23.6%]" in row and "18.6% [8.0%, 31.0%]" in row


def test_buffer_statistics_are_words_not_a_dict():
    text = demo.buffer_words(STATS)
    assert "{" not in text and "buffer/" not in text
    assert "40 tested programs from 8 training problems" in text and "3 of those problems" in text
    assert demo.buffer_words({"buffer/size": 0.0}).startswith("the replay buffer is empty")


def test_each_evaluation_is_summarised_before_the_next_one_overwrites_its_file(monkeypatch, tmp_path):
    """The baseline runs write the same eval_test_epoch0.json name: the intervals must be read at once."""
    path = tmp_path / "eval_test_epoch0.json"
    monkeypatch.setattr(demo, "summarize_eval", lambda p: {"read": Path(p).read_text()})
    path.write_text("humaneval")
    first = demo.with_summary(path)
    path.write_text("mbpp")
    assert first["summary"] == {"read": "humaneval"}


def test_summary_names_adapter_checkpoint_reports_and_tensorboard(tmp_path):
    results = {"MBPP test (baseline)": {"pass@1": 0.05, "path": str(tmp_path / "baseline" / "e.json"), "summary": SUMMARY},
               "MBPP test (after BTP)": {"pass@1": 0.1, "path": str(tmp_path / "tb" / "e.json"), "summary": SUMMARY}}
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(last_model_path="/ck/last.ckpt"), log_dir="/tb/v0")
    module = SimpleNamespace(adapter_dir=lambda: "/run/adapter")
    text = demo.summary(results, STATS, trainer, module, 12.0)
    for expected in ("/run/adapter", "/ck/last.ckpt", str(tmp_path / "baseline"), "tensorboard --logdir /tb/v0",
                     "RSR", "Replay buffer: 40 tested programs"):
        assert expected in text
    assert "{'" not in text  # no raw dicts
