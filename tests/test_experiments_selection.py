"""Model selection in a campaign (PROTOCOL.md), on tiny random models: validation after every iteration, one
adapter per iteration, chosen.yaml before any test set (``until: selection``), the chosen adapter tested, the
shared iteration-0 samples on disk, the compact answers per variant and set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from egcfg_pl.experiments.campaign import main
from egcfg_pl.experiments.selection import choose
from egcfg_pl.experiments.shared_samples import SampleStore

from btp_helpers import SHARED_MBPP
from test_experiments import one_torch_thread, tiny_spec


def selection_spec(root: Path, target: Path, source: Path) -> dict:
    spec = tiny_spec(root, target, source)
    spec["fit"]["trainer"]["max_epochs"] = 2
    spec["validation"] = {"dataset": "mbpp", "split": "validation", "path": str(SHARED_MBPP), "limit": 2}
    spec["held_out"] = {"mbpp_test": spec["held_out"]["mbpp_test"]}
    spec["steps"] = ["protocol"]
    spec["name"] = "tiny_selection"
    return spec


@pytest.fixture(scope="module")
def selected(tmp_path_factory, tiny_model_dir, tiny_source_dir):
    """``until: selection`` first (fits only), then the same campaign without it (tests the chosen adapters)."""
    root = tmp_path_factory.mktemp("results")
    spec = selection_spec(root, tiny_model_dir, tiny_source_dir)
    config = root / "tiny.yaml"
    config.write_text(json.dumps({**spec, "until": "selection"}))
    with one_torch_thread():
        main(["--config", str(config), "--log_level", "WARNING"])
    folder = root / "tiny_selection"
    before = {p.name for p in folder.iterdir()}
    chosen_text = (folder / "chosen.yaml").read_text()
    runs = list((folder / "runs").iterdir())
    tested_before = [r for r in runs if (r / "eval").exists()]
    config.write_text(json.dumps(spec))
    with one_torch_thread():
        main(["--config", str(config), "--log_level", "WARNING"])
    return folder, before, chosen_text, tested_before


def test_until_selection_fits_validates_and_writes_chosen_yaml_before_any_test(selected):
    folder, before, chosen_text, tested_before = selected
    assert "chosen.yaml" in before and "selection.md" in before and "protocol.json" not in before
    assert tested_before == []  # no test set was evaluated by the selection run
    chosen = yaml.safe_load(chosen_text)["variants"]["btp_power"]
    run = folder / "runs" / chosen["key"]
    assert [p["iteration"] for p in chosen["curve"]] == [0, 1]
    for epoch in (0, 1):
        assert (run / f"eval_val_epoch{epoch}.json").is_file()
        assert (run / f"adapter_epoch{epoch}" / "adapter_config.json").is_file()
    assert chosen["iteration"] == choose(chosen["curve"])["iteration"]
    assert chosen["adapter"] == f"runs/{chosen['key']}/adapter_epoch{chosen['iteration']}"  # moves with the folder
    ran = yaml.safe_load((run / "fit_config.yaml").read_text())  # the config as run: validation set, not base's
    assert ran["data"]["held_out"]["split"] == "validation" and ran["data"]["held_out"]["limit"] == 2
    assert ran["trainer"]["default_root_dir"] == str(run)


def test_the_test_run_evaluates_the_chosen_adapter_and_writes_answers(selected):
    folder, _, chosen_text, _ = selected
    chosen = yaml.safe_load(chosen_text)["variants"]["btp_power"]
    assert (folder / "chosen.yaml").read_text() == chosen_text  # the committed selection is not rewritten
    record = json.loads((folder / "runs" / chosen["key"] / "record.json").read_text())
    assert record["tested_adapter"] == str(folder / chosen["adapter"])
    step = json.loads((folder / "protocol.json").read_text())
    assert "validation" in step["untrained"]["evaluations"]  # the learning curves' starting point
    rows = [json.loads(line) for line in (folder / "answers" / "mbpp_test" / "btp_power.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"problem_id", "program", "passed"} <= set(rows[0])
    untrained = (folder / "answers" / "mbpp_test" / "untrained.jsonl").read_text()
    assert (folder / "answers" / "mbpp_test" / "sample_and_filter.jsonl").read_text() == untrained  # no step taken
    assert len(SampleStore(folder / "shared_samples")) == 1  # iteration 0, sampled once, on disk
    assert record["solved_per_iteration"][0]["problems"] == 2


def test_choose_prefers_pass_at_1_then_pass_rate_then_the_earlier_iteration():
    points = [{"iteration": 0, "pass@1": 0.1, "avg_pass_rate": 0.5}, {"iteration": 1, "pass@1": 0.2, "avg_pass_rate": 0.1},
              {"iteration": 2, "pass@1": 0.2, "avg_pass_rate": 0.3}, {"iteration": 3, "pass@1": 0.2, "avg_pass_rate": 0.3}]
    assert choose(points)["iteration"] == 2
    assert choose([]) is None


def test_sample_store_round_trips_and_persists(tmp_path):
    store = SampleStore(tmp_path / "s")
    store["k"] = [(1, "a")]
    assert "k" in SampleStore(tmp_path / "s") and SampleStore(tmp_path / "s")["k"] == [(1, "a")]
    assert "other" not in store
    with pytest.raises(KeyError):
        store["other"]


def test_an_interrupted_fit_continues_from_its_last_epoch_checkpoint(tmp_path, tiny_model_dir, tiny_source_dir, monkeypatch):
    """A campaign stopped inside a variant's second iteration resumes it from ``checkpoints/last.ckpt`` (the first
    iteration is not redone) instead of starting the variant again."""
    spec = selection_spec(tmp_path, tiny_model_dir, tiny_source_dir)
    base = tmp_path / "base.yaml"  # a class_path under the campaign's fit: would be instantiated by its parser
    base.write_text(json.dumps({"trainer": {"callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                           "init_args": {"save_last": True}}]}}))
    spec["base"] = [str(base)]
    spec["steps"] = ["step2_btp"]  # one trained variant: the one stopped
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({**spec, "until": "selection"}))

    def stop_in_second_iteration(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("stopped")

    monkeypatch.setattr("egcfg_pl.experiments.selection.EpochAdapters.on_train_epoch_start", stop_in_second_iteration,
                        raising=False)
    with one_torch_thread(), pytest.raises(RuntimeError, match="stopped"):
        main(["--config", str(config), "--log_level", "WARNING"])
    run = next((tmp_path / "tiny_selection" / "runs").iterdir())
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "fit.json").exists()
    first_val = (run / "eval_val_epoch0.json").stat().st_mtime_ns
    kept = load_file(run / "adapter_epoch0" / "adapter_model.safetensors")
    shutil.rmtree(run / "adapter_epoch0")  # as if killed between the epoch-0 checkpoint and its adapter
    monkeypatch.undo()
    with one_torch_thread():
        main(["--config", str(config), "--log_level", "WARNING"])
    record = json.loads((run / "fit.json").read_text())
    assert record["resumed_from"] == "last"
    assert [p["iteration"] for p in record["validation"]] == [0, 1]  # iteration 0 stays in the selection
    assert (run / "eval_val_epoch0.json").stat().st_mtime_ns == first_val  # iteration 0 was not redone
    saved = load_file(run / "adapter_epoch0" / "adapter_model.safetensors")  # ... and its adapter is the validated one
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in kept)


def test_protocol_step_compares_per_set_against_untrained_and_sample_and_filter(selected):
    """PROTOCOL.md: per test set, McNemar vs untrained (family of 5, Holm), vs sample_and_filter (family of 4) and
    the prioritized variants vs uniform (family of 3)."""
    folder, *_ = selected
    step = json.loads((folder / "protocol.json").read_text())
    assert list(step["sets"]) == ["mbpp_test"]  # the untrained model's validation scores are no test set
    rows = step["sets"]["mbpp_test"]["variants"]
    assert [r["name"] for r in rows] == ["sample_and_filter", "btp_power", "btp_rank", "uniform", "pass_rate_only"]
    for row in rows:
        test = row["vs_untrained"]["delta"]["pass@1"]["test"]
        assert test["method"] == "exact McNemar" and test["holm_family"] == 5
        assert row["held_out"]["pass@1"]["method"] == "wilson"
    assert "vs_sample_and_filter" not in rows[0]
    assert all(r["vs_sample_and_filter"]["delta"]["pass@1"]["test"]["holm_family"] == 4 for r in rows[1:])
    prioritized = [r for r in rows if r["name"] in ("btp_power", "btp_rank", "pass_rate_only")]  # question 3
    assert all(r["vs_uniform"]["delta"]["pass@1"]["test"]["holm_family"] == 3 for r in prioritized)
    assert not any("vs_uniform" in r for r in rows if r not in prioritized)
    report = (folder / "report.md").read_text()
    for part in ("### mbpp_test (2 problems)", "protocol_mbpp_test_metrics.png", "learning_curves.png",
                 "Solved training problems per iteration", "| untrained (reference) |", "McNemar vs uniform"):
        assert part in report
    assert (folder / "protocol_mbpp_test_metrics.png").is_file() and (folder / "learning_curves.png").is_file()


def test_a_record_that_tested_another_adapter_than_chosen_yaml_names_is_tested_again(selected, monkeypatch):
    """A variant's record.json is reused only if it tested the adapter chosen.yaml names now (after a reselection
    the old test results must not stand for the new choice)."""
    import egcfg_pl.experiments.campaign as campaign_module
    from egcfg_pl.experiments.campaign import Campaign, parse_spec
    from egcfg_pl.experiments.steps import VARIANTS

    folder, *_ = selected
    spec, _, _ = parse_spec(["--config", str(folder.parent / "tiny.yaml")])
    variant = next(v for v in VARIANTS["protocol"](spec) if v.name == "btp_power")
    chosen_path = folder / "chosen.yaml"
    chosen_text = chosen_path.read_text()
    record_path = folder / "runs" / yaml.safe_load(chosen_text)["variants"]["btp_power"]["key"] / "record.json"
    record_text = record_path.read_text()
    tested = []

    def fake_test(config, run_folder, sets, adapter, train):
        tested.append(adapter)
        return {"tested_adapter": adapter, "evaluations": json.loads(record_text)["evaluations"], "seconds": {}}

    monkeypatch.setattr(campaign_module, "test_variant", fake_test)
    try:
        with one_torch_thread():
            Campaign(spec).variant(variant)
        assert tested == []  # the record tested the chosen adapter: reused
        document = yaml.safe_load(chosen_text)
        entry = document["variants"]["btp_power"]
        other = 1 - entry["iteration"]
        entry["iteration"], entry["adapter"] = other, entry["adapter"][: -1] + str(other)
        chosen_path.write_text(yaml.safe_dump(document, sort_keys=False))
        with one_torch_thread():
            Campaign(spec).variant(variant)
        assert tested == [str(folder / entry["adapter"])]
    finally:
        chosen_path.write_text(chosen_text)
        record_path.write_text(record_text)


def test_a_set_tested_before_a_stop_is_not_tested_again(selected, monkeypatch):
    """A campaign killed between two test sets of a variant (record.json not yet written) resumes at the set it was
    on: a finished set is read back from its ``tested.json`` marker, but only for the same weights."""
    import egcfg_pl.experiments.variant as variant_module
    from egcfg_pl.experiments.campaign import Campaign, parse_spec
    from egcfg_pl.experiments.steps import VARIANTS

    folder, *_ = selected
    spec, _, _ = parse_spec(["--config", str(folder.parent / "tiny.yaml")])
    variant = next(v for v in VARIANTS["protocol"](spec) if v.name == "btp_power")
    run = folder / "runs" / yaml.safe_load((folder / "chosen.yaml").read_text())["variants"]["btp_power"]["key"]
    record_path, marker = run / "record.json", run / "eval" / "mbpp_test" / "tested.json"
    record_text, marker_text = record_path.read_text(), marker.read_text()
    assert json.loads(marker_text)["adapter"] == json.loads(record_text)["tested_adapter"]
    tested = []

    def fake_record(cli, problems, set_folder):
        tested.append(set_folder.name)
        return json.loads(marker_text) | {"metrics": {"pass@1": -1.0}}

    monkeypatch.setattr(variant_module, "held_out_record", fake_record)
    try:
        record_path.unlink()  # killed after the set, before the record
        with one_torch_thread():
            record = Campaign(spec).variant(variant)
        assert tested == [] and record["evaluations"]["mbpp_test"]["metrics"] == json.loads(marker_text)["metrics"]
        record_path.unlink()
        marker.write_text(json.dumps(json.loads(marker_text) | {"adapter": "another/adapter"}))
        with one_torch_thread():
            record = Campaign(spec).variant(variant)
        assert tested == ["mbpp_test"] and record["evaluations"]["mbpp_test"]["metrics"] == {"pass@1": -1.0}
    finally:
        record_path.write_text(record_text)
        marker.write_text(marker_text)
