"""The experiments package: every step end to end on tiny random models, the rerun skip, the configs, the stats."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from egcfg_pl.experiments.campaign import Campaign, main, parse_spec
from egcfg_pl.experiments.spec import STEPS, ExperimentSpec, HyperGrid
from egcfg_pl.experiments.stats import bootstrap_ci, paired_delta, wilson_interval
from egcfg_pl.experiments.steps import UNTRAINED, Variant
from egcfg_pl.experiments.variant import fit_config, layer
from egcfg_pl.lightning.cli import check_config
from egcfg_pl.metrics.report import EvalReport
from egcfg_pl.user_errors import UsageError
from egcfg_pl.replay import sampling_probabilities
from egcfg_pl.replay.experience import experience_from_dict

from btp_helpers import SHARED_MBPP

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["power", "rank", "uniform", "pass_rate", "possibility"]


def tiny_spec(root: Path, target: Path, source: Path) -> dict:
    """A whole campaign on tiny models: 2 training and 2 held-out MBPP problems, 12 new tokens, 1 iteration; the
    fit config is embedded (``fit:``), and a second held-out set is named (the first 2 test problems again, later)."""
    def model(path: Path) -> dict:
        return {"name": str(path), "dtype": "float32", "device": "cpu"}

    sandbox = {"timeout": 2.0, "workers": 2}
    test = {"dataset": "mbpp", "split": "test", "path": str(SHARED_MBPP), "limit": 2}
    return {
        "name": "tiny",
        "output_dir": str(root),
        "fit": {
            "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
                        "enable_model_summary": False, "num_sanity_val_steps": 0},
            "model": {
                "model": model(target),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "evaluation": {"strategy": "greedy", "num_beams": 1, "num_return_sequences": 1, "max_new_tokens": 12,
                               "progress": False},
                "learning_rate": 1e-2,
            },
            "data": {
                "train": {"dataset": "mbpp", "split": "train", "path": str(SHARED_MBPP), "limit": 2},
                "held_out": test,
                "drop_overlapping_train": True,
                "replay": {"truncated": "no_eos"},  # a random tiny model never ends within 12 tokens
                "samples_per_epoch": 4,
                "batch_size": 2,
                "max_length": 256,
            },
            "refresh": {
                "generation": {"strategy": "beam", "num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 12,
                               "progress": False},
            },
            "sandbox": sandbox,
        },
        "held_out": {"mbpp_test": test, "mbpp_test_offset": {**test, "offset": 2}},
        "strategies": STRATEGIES,
        "grid": {"p2value_alpha": [0.0, 1.0], "sampling_alpha": [1.0]},
        "big_to_small_source": model(source),
        "bootstrap_samples": 200,
    }


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, tiny_model_dir, tiny_source_dir):
    """Runs every step once through ``cli.py experiment``'s entry point; returns the campaign folder."""
    root = tmp_path_factory.mktemp("results")
    config = root / "tiny.yaml"
    config.write_text(json.dumps(tiny_spec(root, tiny_model_dir, tiny_source_dir)))  # JSON is YAML
    with one_torch_thread():
        report = main(["--config", str(config), "--log_level", "WARNING"])
    return report.parent, config


@contextlib.contextmanager
def one_torch_thread():
    """A 3 M-parameter model runs faster on one thread (and the test box is shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load(folder: Path, step: str) -> dict:
    return json.loads((folder / f"{step}.json").read_text())


def test_every_step_writes_json_report_and_plots(campaign):
    folder, _ = campaign
    generic = [s for s in STEPS if s != "protocol"]  # protocol: one table per held-out set (below)
    for step in generic:
        result = load(folder, step)
        assert result["step"] == step and result["variants"]
        for entry in [result["untrained"], *result["variants"]]:
            held = entry["held_out"]
            assert held["num_problems"] == 2 and Path(held["eval_json"]).is_file()
            lo, hi = held["pass@1"]["ci95"]
            assert 0.0 <= lo <= held["pass@1"]["mean"] <= hi <= 1.0
    protocol = load(folder, "protocol")
    assert list(protocol["sets"]) == ["mbpp_test", "mbpp_test_offset"]
    for table in protocol["sets"].values():
        assert [row["held_out"]["num_problems"] for row in table["variants"]] == [2] * 5
    report = (folder / "report.md").read_text()
    for name in protocol["sets"]:
        assert f"(protocol_{name}_metrics.png)" in report and (folder / f"protocol_{name}_metrics.png").is_file()
    for step in generic:
        assert f"({step}_metrics.png)" in report and (folder / f"{step}_metrics.png").stat().st_size > 1000
    assert (folder / "step2_btp_p2value.png").is_file()
    assert "unadjusted" in report and "McNemar" in report and "Holm" in report
    ablation = load(folder, "step3_ablation")["variants"]
    tests = [v["vs_untrained"]["delta"]["pass@1"]["test"] for v in ablation]
    assert all(t["holm_family"] == len(ablation) and t["p_holm"] >= t["p_value"] for t in tests)
    saved, _, _ = parse_spec(["--config", str(folder / "config.yaml")])  # the resolved spec reruns as is
    given = parse_spec(["--config", str(campaign[1])])[0]
    assert (saved.fit, saved.held_out) == (given.fit, given.held_out)


def test_every_variant_is_tested_on_every_named_held_out_set(campaign):
    """One evaluation JSON per named set (issue 15: a campaign reports MBPP test and HumanEval); the first set is
    the one the steps compare, and each variant folder holds the fit config it ran (``cli.py fit --config``)."""
    folder, _ = campaign
    result = load(folder, "step3_ablation")
    for entry in [result["untrained"], *result["variants"]]:
        sets = entry["evaluations"]
        assert list(sets) == ["mbpp_test", "mbpp_test_offset"]
        first, second = (EvalReport.from_json(sets[name]["eval_json"]) for name in sets)
        assert entry["held_out"]["eval_json"] == sets["mbpp_test"]["eval_json"]
        assert len(first.problems) == len(second.problems) == 2
        assert not {p.problem_id for p in first.problems} & {p.problem_id for p in second.problems}
        assert Path(entry["folder"], "fit_config.yaml").is_file()


def test_ablation_has_one_evaluated_fine_tuned_variant_per_strategy(campaign):
    folder, _ = campaign
    result = load(folder, "step3_ablation")
    assert [v["name"] for v in result["variants"]] == STRATEGIES
    for entry in result["variants"]:
        assert entry["replay"]["strategy"] == entry["name"]
        assert entry["trained"] and entry["optimizer_steps"] == 2  # 4 draws / batch 2
        assert Path(entry["adapter"], "adapter_config.json").is_file()
        assert "evaluated_as" not in entry  # its own held-out evaluation, not the untrained one
        assert entry["buffer"]["size"] > 0 and sum(entry["buffer"]["p2value_hist"]["counts"]) == entry["buffer"]["size"]
        held_out_bins = json.loads(Path(entry["held_out"]["eval_json"]).read_text())["bin_edges"]
        assert entry["buffer"]["p2value_hist"]["edges"] == pytest.approx(held_out_bins)  # one histogram, one set of bins
        assert set(entry["vs_untrained"]["delta"]) == {"pass@1", "avg_pass_rate"}
    evals = {v["held_out"]["eval_json"] for v in result["variants"]}
    assert len(evals) == len(STRATEGIES)
    step2 = load(folder, "step2_btp")["variants"][0]
    power = result["variants"][0]
    assert power["key"] == step2["key"]  # the same settings ran once


def _experiences(entry: dict) -> dict[tuple[str, str], dict]:
    """The variant's refreshed experiences keyed by (problem id, program)."""
    lines = Path(entry["experiences"]).read_text().splitlines()
    return {(e["candidate"]["problem_id"], e["candidate"]["program"]): e for e in map(json.loads, lines)}


def test_steps_share_the_initial_samples_but_replay_differently(campaign):
    folder, _ = campaign
    grid = load(folder, "step4_hyperparams")["variants"]
    assert [v["name"] for v in grid] == ["p2value_alpha=0,sampling_alpha=1", "p2value_alpha=1,sampling_alpha=1"]
    assert all(v["samples_shared"] for v in grid)  # step 1 sampled the iteration-0 candidates for everyone
    alpha0, alpha1 = grid
    # same candidates, different P2Value: α = 0 keeps only the pass rate (0 for a random model)
    assert alpha0["buffer"]["mean_p2value"] == pytest.approx(alpha0["buffer"]["mean_pass_rate"])
    assert alpha1["buffer"]["mean_p2value"] == pytest.approx(alpha1["buffer"]["mean_possibility"])
    # shared: the very same candidates, texts and verdicts in both variants ...
    exp0, exp1 = _experiences(alpha0), _experiences(alpha1)
    assert exp0.keys() == exp1.keys() and len(exp0) > 1
    keys = sorted(exp0)
    assert all(exp0[k]["candidate"] == exp1[k]["candidate"] and exp0[k]["verdict"] == exp1[k]["verdict"] for k in keys)
    # ... replayed differently: each variant's own replay settings give another draw distribution over them
    probs = []
    for entry, exps in ((alpha0, exp0), (alpha1, exp1)):
        replay = entry["replay"]
        items = [experience_from_dict(exps[k]) for k in keys]
        probs.append(sampling_probabilities(
            [e.p2value for e in items], [e.pass_rate for e in items], [e.possibility for e in items],
            strategy=replay["strategy"], alpha=replay["sampling_alpha"],
        ))
    assert [exp0[k]["p2value"] for k in keys] != [exp1[k]["p2value"] for k in keys]
    assert np.abs(probs[0] - probs[1]).max() > 0.01
    # and both were trained from those draws: their own adapters and held-out evaluations
    assert alpha0["trained"] and alpha1["trained"] and alpha0["adapter"] != alpha1["adapter"]
    assert alpha0["held_out"]["eval_json"] != alpha1["held_out"]["eval_json"]


def test_sample_and_filter_with_nothing_passing_is_the_untrained_model(campaign):
    folder, _ = campaign
    result = load(folder, "step1_baseline")
    entry = result["variants"][0]
    assert entry["replay"]["min_pass_rate"] == 1.0 and entry["replay"]["strategy"] == "uniform"
    # a random 3 M-parameter model writing 12 tokens passes no MBPP test: candidates were sampled and tested,
    # and the filter kept none of them
    assert entry["refresh"]["refresh/candidates"] > 0 and entry["buffer"]["size"] == 0
    assert not entry["trained"] and entry["optimizer_steps"] == 0 and "no sampled program" in entry["note"]
    assert entry["adapter"] is None
    assert entry["evaluated_as"].startswith("untrained")
    assert entry["held_out"]["eval_json"] == result["untrained"]["held_out"]["eval_json"]
    assert entry["vs_untrained"]["delta"]["pass@1"]["mean"] == 0.0
    assert entry["vs_untrained"]["delta"]["pass@1"]["test"]["p_value"] == 1.0  # no discordant problem
    assert any("no sampled program" in c for c in result["caveats"])


def test_big_to_small_candidates_come_from_the_source(campaign, tiny_source_dir):
    folder, _ = campaign
    result = load(folder, "big_to_small")
    source, target = result["variants"]
    assert not source["trained"] and source["model"]["name"] == str(tiny_source_dir)
    assert target["trained"] and target["buffer"]["sources"] == [str(tiny_source_dir)]
    assert target["model"]["name"] != str(tiny_source_dir)
    assert "rsr_pass@1" in target["vs_source"]


def test_rerun_skips_finished_steps_and_force_redoes_one(campaign, monkeypatch):
    folder, config = campaign
    stamps = {s: (folder / f"{s}.json").stat().st_mtime_ns for s in STEPS}

    def no_runs(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr("egcfg_pl.experiments.campaign.fit_variant", no_runs)
    monkeypatch.setattr("egcfg_pl.experiments.campaign.test_variant", no_runs)
    main(["--config", str(config), "--log_level", "WARNING"])
    assert stamps == {s: (folder / f"{s}.json").stat().st_mtime_ns for s in STEPS}
    assert (folder / "report.md").is_file()

    monkeypatch.undo()
    with one_torch_thread():
        main(["--config", str(config), "--steps", "[step1_baseline]", "--force", "--log_level", "WARNING"])
    assert (folder / "step1_baseline.json").stat().st_mtime_ns > stamps["step1_baseline"]
    assert (folder / "step2_btp.json").stat().st_mtime_ns == stamps["step2_btp"]


@pytest.mark.parametrize("name", ["experiments_cpu.yaml", "experiments_gpu.yaml"])
def test_shipped_campaigns_build_every_variant(name, monkeypatch):
    """Each variant of the shipped campaigns is a fit config the LightningCLI parser accepts and builds."""
    monkeypatch.chdir(ROOT)  # base: paths are relative to the working directory, as for cli.py fit --config
    spec, _, _ = parse_spec(["--config", str(ROOT / "configs" / name)])
    assert spec.steps == list(STEPS) and spec.big_to_small_source is not None and len(spec.strategies) == 5
    campaign = Campaign(spec)
    campaign.check()
    assert campaign.config(Variant("x", {"data.replay.strategy": "rank"}))["data"]["replay"] == {"strategy": "rank"}
    keys = {campaign.key(v) for v in (UNTRAINED, Variant("btp"), Variant("x", {"data.replay.strategy": "rank"}))}
    assert len(keys) == 3  # the folder key follows the fit config and whether it trains


def test_the_standard_campaign_follows_the_protocol(monkeypatch):
    """configs/experiments_standard.yaml: PROTOCOL.md's data, decoding, budget and variants, each a valid fit config."""
    monkeypatch.chdir(ROOT)
    spec, _, _ = parse_spec(["--config", str(ROOT / "configs" / "experiments_standard.yaml")])
    assert spec.steps == ["protocol"] and spec.validation.split == "validation"
    assert {n: (p.dataset, p.split, p.limit) for n, p in spec.held_out.items()} == {
        "mbpp_test": ("mbpp", "test", None), "humaneval": ("humaneval", "test", None)}
    campaign = Campaign(spec)
    campaign.check()
    c = check_config(campaign.config(Variant("btp_power")), "standard")
    assert c["data"]["train"]["split"] == "train" and c["data"]["train"]["limit"] is None
    assert c["refresh"]["generation"]["num_beams"] == 5 and c["refresh"]["generation"]["max_new_tokens"] == 160
    assert c["model"]["evaluation"]["max_new_tokens_by_source"] == {"mbpp": 256}
    assert c["model"]["evaluation"]["max_new_tokens"] == 384 and c["sandbox"]["check_timeout"] == 3.0


def test_any_fit_option_is_a_variant_change(tmp_path, monkeypatch):
    """The RunSettings translators could not express weight decay, warm-up or the scheduler; a variant of the one
    schema sets any fit option, checked where it lives (the module), before the campaign runs anything."""
    monkeypatch.chdir(ROOT)
    spec = ExperimentSpec(base=["configs/base_cpu.yaml"], steps=[],
                          fit={"model.weight_decay": 0.1, "model.warmup_steps": 2, "model.scheduler": "cosine"})
    Campaign(spec).check()
    built = fit_config(spec.base, spec.fit)["model"]
    assert (built["weight_decay"], built["warmup_steps"], built["scheduler"]) == (0.1, 2, "cosine")
    assert built["model"]["name"] == "smollm2-135m"  # the base is still there
    with pytest.raises(UsageError, match=r"variant untrained: .*scheduler"):
        Campaign(ExperimentSpec(base=["configs/base_cpu.yaml"], steps=[], fit={"model.scheduler": "steep"})).check()


def test_a_bad_grid_value_fails_before_any_variant_runs(monkeypatch):
    """p2value_alpha is checked once, by ReplaySettings, for every variant up front (not by the grid, not by a run)."""
    monkeypatch.chdir(ROOT)
    spec = ExperimentSpec(base=["configs/base_cpu.yaml"], steps=["step4_hyperparams"],
                          grid=HyperGrid(p2value_alpha=[0.5, 1.5], sampling_alpha=[1.0]))
    with pytest.raises(UsageError, match=r"variant p2value_alpha=1.5.*data\.replay\.p2value_alpha must be in \[0, 1\]"):
        Campaign(spec).check()


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="steps"):
        ExperimentSpec(base=["b.yaml"], steps=["step9"])
    with pytest.raises(ValueError, match="big_to_small_source"):
        ExperimentSpec(base=["b.yaml"], steps=["big_to_small"])
    with pytest.raises(ValueError, match="no fit config"):
        ExperimentSpec(steps=[])


def test_a_campaign_file_with_the_old_run_section_says_how_to_move_it(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("name: old\nrun: {max_epochs: 2, replay: {strategy: rank}}\n")
    with pytest.raises(UsageError, match=r"run: section is gone.*base:.*fit:"):
        parse_spec(["--config", str(old)])


def test_layer_merges_mappings_and_dotted_keys_and_replaces_lists():
    base = {"trainer": {"max_epochs": 1, "callbacks": [{"class_path": "A"}]}, "data": {"replay": {"strategy": "power"}}}
    out = layer(base, {"trainer": {"callbacks": []}, "data.replay.sampling_alpha": 2.0, "data": {"batch_size": 2}})
    assert out == {"trainer": {"max_epochs": 1, "callbacks": []},
                   "data": {"replay": {"strategy": "power", "sampling_alpha": 2.0}, "batch_size": 2}}
    assert base["trainer"]["callbacks"] == [{"class_path": "A"}]  # the base is untouched


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson_interval(10, 20)
    assert (lo, hi) == (pytest.approx(0.2993, abs=1e-4), pytest.approx(0.7007, abs=1e-4))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bootstrap_and_paired_delta():
    values = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(values, samples=2000, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.25
    assert bootstrap_ci([0.3] * 10) == (pytest.approx(0.3), pytest.approx(0.3))
    delta = paired_delta({"a": 1.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0})
    assert delta["num_problems"] == 3 and delta["mean"] == pytest.approx(1 / 3)


def test_a_step_written_by_another_spec_is_assembled_again(tmp_path, monkeypatch):
    """A step JSON is reused only when its spec hash matches this spec's, and the hash covers the base files'
    contents: an edited base_cpu.yaml (same path) must not serve the old step's results."""
    import egcfg_pl.experiments.campaign as campaign_module

    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "configs" / "base_cpu.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    spec = ExperimentSpec(base=[str(base)], steps=["step2_btp"], output_dir=str(tmp_path / "out"))
    calls = []
    monkeypatch.setattr(campaign_module, "assemble", lambda step, spec, run: calls.append(step) or {"step": step})
    campaign = Campaign(spec)
    campaign.step("step2_btp")
    campaign.step("step2_btp")
    assert calls == ["step2_btp"]  # same spec: reused
    base.write_text(base.read_text(encoding="utf-8") + "\n# edited\nseed_everything: 1\n", encoding="utf-8")
    Campaign(spec).step("step2_btp")
    assert calls == ["step2_btp", "step2_btp"]  # edited base file: assembled again, not served stale
