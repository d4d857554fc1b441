"""The campaign report: ``report.md`` with one table per step, and its plots (PNG).

Per step: a bar chart of pass@1 and the average test pass rate per variant with 95% error bars (the
untrained baseline first), and the P2Value histogram of each fine-tuned variant's replay buffer. Built
with ``matplotlib.figure.Figure`` (no pyplot, no GUI backend), so it runs headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from egcfg_pl.crash_safe import atomic_write_text

TITLES = {
    "step1_baseline": "Step 1: sample-and-filter baseline",
    "step2_btp": "Step 2: BTP (P2Value-prioritized replay)",
    "step3_ablation": "Step 3: replay strategy ablation",
    "step4_hyperparams": "Step 4: hyperparameter study",
    "big_to_small": "Big-to-small",
    "protocol": "Pre-registered comparison",
}


def _rows(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) for the untrained baseline and every variant, in order."""
    return [("untrained", result["untrained"])] + [(v["name"], v) for v in result["variants"]]


def _error_bars(entries: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    means = np.array([e["held_out"][metric]["mean"] for e in entries], dtype=float)
    ci = np.array([e["held_out"][metric]["ci95"] for e in entries], dtype=float)
    return means, np.vstack([means - ci[:, 0], ci[:, 1] - means]).clip(min=0)


def plot_metrics(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: pass@1 and average test pass rate per variant, 95% intervals as error bars."""
    labels, entries = zip(*_rows(result))
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for offset, metric in ((-0.2, "pass@1"), (0.2, "avg_pass_rate")):
        means, err = _error_bars(list(entries), metric)
        ax.bar(x + offset, means, 0.4, yerr=err, capsize=3, label=metric)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out score (95% CI)")
    n = result["untrained"]["held_out"]["num_problems"]
    ax.set_title(f"{TITLES.get(result['step'], result['step'])} ({n} held-out problems)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_p2value(result: dict[str, Any], path: Path) -> Path | None:
    """Step histogram of the replay buffer's P2Values, one line per fine-tuned variant; None without buffers."""
    buffers = [(v["name"], v["buffer"]) for v in result["variants"] if v.get("buffer") and v["buffer"].get("size")]
    if not buffers:
        return None
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for name, buffer in buffers:
        hist = buffer["p2value_hist"]
        ax.stairs(hist["counts"], hist["edges"], label=f"{name} ({int(buffer['size'])})")
    ax.set_xlabel("P2Value = α·possibility + (1−α)·pass rate")
    ax.set_ylabel("experiences in buffer")
    ax.set_title(f"{TITLES.get(result['step'], result['step'])}: replay buffer", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def _interval(stat: dict[str, Any]) -> str:
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _delta(entry: dict[str, Any], metric: str) -> str:
    cmp = entry.get("vs_untrained")
    if not cmp or cmp["delta"][metric]["mean"] is None:
        return "–"
    d = cmp["delta"][metric]
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def _test(entry: dict[str, Any], metric: str) -> str:
    """``+b/−c, p = … (Holm …)`` of the paired exact test against the untrained model."""
    cmp = entry.get("vs_untrained")
    test = cmp["delta"][metric].get("test") if cmp else None
    if not test:
        return "–"
    holm = test.get("p_holm")
    adjusted = "" if holm is None else f", Holm {holm:.3f}"
    return f"+{test['better']}/−{test['worse']}, p {test['p_value']:.3f}{adjusted}"


def _table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | pass@1 [95% CI] | Δ pass@1 vs untrained [95% CI, unadjusted] | McNemar vs untrained"
        " (+better/−worse, exact p, Holm p) | avg pass rate [95% CI] | Δ avg pass rate [95% CI, unadjusted] | RSR"
        " | steps | buffer (solved problems) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, entry in _rows(result):
        held = entry["held_out"]
        cmp = entry.get("vs_untrained") or {}
        rsr = cmp.get("rsr_pass@1")
        rsr_text = "–" if not cmp else ("undefined" if rsr is None else f"{rsr:.2f}")
        buffer = entry.get("buffer") or {}
        buf = f"{int(buffer['size'])} ({int(buffer.get('problems_solved', 0))})" if buffer else "–"
        lines.append(
            f"| {label} | {_interval(held['pass@1'])} | {_delta(entry, 'pass@1')} | {_test(entry, 'pass@1')}"
            f" | {_interval(held['avg_pass_rate'])}"
            f" | {_delta(entry, 'avg_pass_rate')} | {rsr_text} | {entry.get('optimizer_steps', 0)} | {buf} |"
        )
    return lines


def step_section(result: dict[str, Any], folder: Path) -> list[str]:
    step = result["step"]
    lines = [f"## {TITLES.get(step, step)}", ""]
    lines += _table(result)
    lines.append("")
    if step == "big_to_small":
        target = result["variants"][-1]
        rsr = target["vs_source"]["rsr_pass@1"]
        lines.append(f"Target vs source pass@1 RSR: {'undefined' if rsr is None else f'{rsr:.2f}'}.")
        lines.append("")
    lines += [f"- {note}" for note in result.get("caveats", [])]
    lines.append("")
    lines.append(f"![{step} metrics]({plot_metrics(result, folder / f'{step}_metrics.png').name})")
    hist = plot_p2value(result, folder / f"{step}_p2value.png")
    if hist is not None:
        lines.append(f"![{step} P2Value]({hist.name})")
    lines += ["", f"Details: `{step}.json` (per-variant metrics, evaluation JSON paths, buffer statistics).", ""]
    return lines


def write_report(folder: Path, results: dict[str, dict[str, Any]], header: list[str]) -> Path:
    """``folder/report.md`` and its PNGs from the step results (in the order given)."""
    lines = ["# BTP experiments", "", *header, ""]
    lines += [
        "pass@1 intervals: Wilson (one greedy answer per problem) or bootstrap over problems; Δ: paired bootstrap "
        "over the same held-out problems. All intervals are per comparison, not adjusted for the many variants "
        "of a step. The paired test is the exact McNemar test on the discordant problems (+ solved only by the "
        "variant, − only by the untrained model; an exact sign test when a problem has several answers); its "
        "Holm p-value is adjusted across the step's variants, and is the one to read for a difference. "
        "RSR = pass@1 / untrained pass@1. A sample-and-filter or other variant with 0 optimizer steps is the "
        "untrained model.",
        "",
    ]
    for result in results.values():
        lines += protocol_section(result, folder) if result["step"] == "protocol" else step_section(result, folder)
    return atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")


def plot_learning_curves(chosen: dict[str, Any], path: Path, untrained: float | None = None) -> Path | None:
    """Validation pass@1 per BTP iteration, one line per trained variant, the chosen iteration circled, the
    untrained model's validation pass@1 dashed (when it was evaluated)."""
    curves = [(name, entry) for name, entry in chosen.items() if entry.get("curve")]
    if not curves:
        return None
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for name, entry in curves:
        x = [p["iteration"] for p in entry["curve"]]
        line, = ax.plot(x, [p["pass@1"] for p in entry["curve"]], marker=".", label=name)
        pick = entry.get("validation")
        if pick:
            ax.plot([pick["iteration"]], [pick["pass@1"]], "o", mfc="none", ms=10, color=line.get_color())
    if untrained is not None:
        ax.axhline(untrained, ls="--", color="gray", label="untrained")
    top = max([p["pass@1"] for _, e in curves for p in e["curve"]] + [untrained or 0.0])
    ax.set_ylim(0, max(0.05, 1.2 * top))
    return save_iteration_plot(fig, ax, path, "validation pass@1", "Learning curves (circled: the chosen iteration)", 10)


def save_iteration_plot(fig: Figure, ax: Any, path: Path, ylabel: str, title: str, title_size: int) -> Path:
    """Finish a per-iteration line plot (integer x ticks, labels, legend) and write it to ``path``."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("BTP iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def selection_lines(chosen: dict[str, Any], folder: Path, untrained: dict[str, Any] | None = None) -> list[str]:
    """The chosen iteration per variant and the learning curves (table and PNG); ``untrained``: the untrained
    model's validation scores (``selection.scores``), the curves' starting point."""
    lines = ["## Model selection on validation (chosen.yaml)", "",
             "| variant | chosen iteration | val pass@1 | val avg pass rate | val pass@1 per iteration |", "|---|---|---|---|---|"]
    for name, entry in chosen.items():
        pick = entry.get("validation") or {}
        curve = ", ".join(f"{p['pass@1']:.3f}" for p in entry.get("curve") or [])
        it = entry.get("iteration")
        val = " | ".join(f"{pick[m]:.3f}" if m in pick else "–" for m in ("pass@1", "avg_pass_rate"))
        lines.append(f"| {name} | {'– (no optimizer step)' if it is None else it} | {val} | {curve or '–'} |")
    if untrained is not None:
        lines.append(f"| untrained (reference) | – | {untrained['pass@1']:.3f} | {untrained['avg_pass_rate']:.3f} | – |")
    plot = plot_learning_curves(chosen, folder / "learning_curves.png", untrained and untrained["pass@1"])
    lines += ["", f"![learning curves]({plot.name})" if plot else "", ""]
    return lines


def write_selection_report(folder: Path, chosen: dict[str, Any]) -> Path:
    """``folder/selection.md``: what ``--until selection`` decided, before any test set was evaluated."""
    lines = ["# BTP campaign: model selection (no test set evaluated yet)", "", *selection_lines(chosen, folder)]
    return atomic_write_text(folder / "selection.md", "\n".join(lines) + "\n")


def _mcnemar(row: dict[str, Any], against: str) -> str:
    cmp = row.get(against)
    test = cmp["delta"]["pass@1"].get("test") if cmp else None
    if not test:
        return "–"
    holm = test.get("p_holm")
    return f"+{test['better']}/−{test['worse']}, p {test['p_value']:.3g}" + ("" if holm is None else f", Holm {holm:.3g}")


def _paired(row: dict[str, Any], metric: str) -> str:
    d = (row.get("vs_untrained") or {}).get("delta", {}).get(metric)
    if not d or d["mean"] is None:
        return "–"
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def protocol_table(name: str, table: dict[str, Any]) -> list[str]:
    """One held-out set of the protocol step: pass@1 with Wilson intervals and the three families of paired tests."""
    n = table["untrained"]["held_out"]["num_problems"]
    lines = [f"### {name} ({n} problems)", "",
             "| variant | pass@1 [95% Wilson] | McNemar vs untrained (+/−, exact p, Holm) | McNemar vs sample_and_filter"
             " (+/−, exact p, Holm) | McNemar vs uniform (+/−, exact p, Holm) | Δ pass@1 vs untrained [95% CI] |"
             " avg pass rate [95% CI] | Δ avg pass rate vs untrained [paired bootstrap 95%] | RSR |",
             "|---|---|---|---|---|---|---|---|---|"]
    held = table["untrained"]["held_out"]
    lines.append(f"| untrained | {_interval(held['pass@1'])} | – | – | – | – | {_interval(held['avg_pass_rate'])} | – | – |")
    for row in table["variants"]:
        held = row["held_out"]
        rsr = row["vs_untrained"].get("rsr_pass@1")
        label = row["name"] + (" (= untrained: no optimizer step)" if row.get("evaluated_as") else "")
        lines.append(f"| {label} | {_interval(held['pass@1'])} | {_mcnemar(row, 'vs_untrained')}"
                     f" | {_mcnemar(row, 'vs_sample_and_filter')} | {_mcnemar(row, 'vs_uniform')} | {_paired(row, 'pass@1')}"
                     f" | {_interval(held['avg_pass_rate'])} | {_paired(row, 'avg_pass_rate')}"
                     f" | {'undefined' if rsr is None else f'{rsr:.2f}'} |")
    return lines


def plot_solved(result: dict[str, Any], path: Path) -> Path | None:
    """Training problems with at least one fully passing sampled program, per refresh (iteration) and variant."""
    series = [(v["name"], v["solved_per_iteration"]) for v in result["variants"] if v.get("solved_per_iteration")]
    if not series:
        return None
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, points in series:
        ax.plot([p["iteration"] for p in points], [p["solved"] for p in points], marker=".", label=name)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return save_iteration_plot(fig, ax, path, "training problems solved",
                               "Solved training problems per iteration (>= 1 sampled program passes every test)", 9)


def protocol_section(result: dict[str, Any], folder: Path) -> list[str]:
    """The pre-registered comparison: one table and bar chart per held-out set, learning curves, solved training
    problems per iteration, P2Value histograms."""
    lines = ["## Pre-registered comparison (PROTOCOL.md)", "",
             "McNemar: exact two-sided test on the discordant problems (+ solved only by the variant, − only by the "
             "reference); Holm-adjusted within each family (vs untrained: the trained variants; vs sample_and_filter: "
             "the other trained variants) and each set. Δ intervals are paired bootstrap, unadjusted.", ""]
    for name, table in result["sets"].items():
        lines += protocol_table(name, table)
        pseudo = {"step": f"protocol: {name}", **table}
        png = plot_metrics(pseudo, folder / f"protocol_{name}_metrics.png")
        lines += ["", f"![{name} pass@1]({png.name})", ""]
    chosen_path = folder / "chosen.yaml"
    if chosen_path.is_file():
        from egcfg_pl.experiments.selection import read_chosen, scores

        validation = (result["untrained"].get("evaluations") or {}).get("validation")
        untrained = scores(Path(validation["eval_json"])) if validation else None
        lines += selection_lines(read_chosen(folder), folder, untrained)
    kept = sorted({v["train_problems"] for v in result["variants"] if v.get("train_problems") is not None})
    lines += ["## Solved training problems per iteration", "",
              f"Training problems after dropping those that overlap a validation or test problem: {kept or '–'}.", "", "| variant | solved / sampled per iteration |", "|---|---|"]
    for v in result["variants"]:
        points = v.get("solved_per_iteration") or []
        counts = ", ".join(f"{p['solved']}/{p['problems']}" for p in points) or "–"
        lines.append(f"| {v['name']} | {counts} |")
    solved = plot_solved(result, folder / "protocol_solved.png")
    hist = plot_p2value(result, folder / "protocol_p2value.png")
    lines += [""] + ([f"![solved training problems]({solved.name})"] if solved else [])
    lines += ([f"![P2Value]({hist.name})"] if hist else []) + [""]
    lines += [f"- {note}" for note in result.get("caveats", [])]
    lines += ["", "Details: `protocol.json`; every greedy answer: `answers/<set>/<variant>.jsonl`.", ""]
    return lines
