"""Generation throughput of the local sampler, side by side: naive per-problem generate, plain batched generate
(the anchor), the project's sampler; for held-out greedy evaluation and for refresh beam search.

``python -m benchmarks.sampling`` loads the embedded SmolLM2-135M once (bfloat16 where the CPU has avx512_bf16
or AMX, else float32; ``--dtype``) and runs, for each workload, on the same prompts and settings:

* ``naive``: ``HFSampler`` with one problem per ``model.generate`` call plus the teacher-forced re-score (the seed);
* ``generate``: plain batched ``model.generate`` (batches of ``--batch-size``, length buckets, stop strings), no
  log-probs: the anchor;
* ``generate+rescore``: the same plus the teacher-forced re-score (the project before the engine);
* ``generate+recorded`` (beam only): ``model.generate`` with the log-probs recorded during the search
  (``beam_scores``; ``continuous: false``), the project's beam path before its engine;
* ``engine``: the project's sampler now (``HFSampler`` default settings: continuous batching for every strategy,
  beam search on ``beam_engine.BeamDecoder``).

Columns: kept tokens (returned candidates, through EOS / the stop string), total tokens (every position the
model ran, padding and re-score included), seconds, kept and total tokens/s, speed-up over the anchor, and the
share of two ceilings measured on the run: ``prefill`` (one teacher-forced pass over rows x 256 tokens: the
compute bound) and ``decode`` (cached one-token steps at the batch's row count: the bound of step-by-step
decoding with that many rows). Then: greedy candidates identical between the engine and ``generate``, and how
far the stored log-probs sit from an fp32 teacher-forced pass. Nothing is hard-coded; the machine's other
load shows in the numbers, so the script prints ``os.getloadavg()`` before each row.
"""

from __future__ import annotations

import os

# libgomp's default spin-waiting cost 5-30x on a loaded 2-core box (see benchmarks/README.md); it is read once,
# when OpenMP starts, so it is set before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, load_model, load_tokenizer  # noqa: E402
from egcfg_pl.problems import load_problems  # noqa: E402
from egcfg_pl.prompts import build_prompt  # noqa: E402
from egcfg_pl.sampling.beam import Generation, HFSampler, encode_prompt, sequence_logprobs  # noqa: E402
from egcfg_pl.sampling.engine import CACHE_FIELD  # noqa: E402
from egcfg_pl.sampling.settings import GenerationSettings  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DATA_FILES = {"mbpp": "mbpp.jsonl", "mbpp_sanitized": "mbpp_sanitized.jsonl"}


def cpu_has_bf16() -> bool:
    """avx512_bf16 or AMX in /proc/cpuinfo (torch's capability string does not tell bf16 apart)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    parser.add_argument("--greedy-dataset", default="humaneval")
    parser.add_argument("--greedy-problems", type=int, default=16)
    parser.add_argument("--greedy-max-new-tokens", type=int, default=384)
    parser.add_argument("--beam-dataset", default="mbpp")
    parser.add_argument("--beam-split", default="train")
    parser.add_argument("--beam-problems", type=int, default=8)
    parser.add_argument("--beam-max-new-tokens", type=int, default=128)
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--beam-batch-size", type=int, default=8, help="problems per beam batch")
    parser.add_argument("--batch-size", type=int, default=8, help="problems per batch (greedy evaluation)")
    parser.add_argument("--engine-batch-sizes", nargs="*", type=int, default=[32],
                        help="extra engine rows with more problems in flight (greedy)")
    parser.add_argument("--beam-engine-batch-sizes", nargs="*", type=int, default=[],
                        help="extra engine rows with more problems in flight (beam)")
    parser.add_argument("--data-dir", default=os.environ.get("EGCFG_DATA_DIR"),
                        help="folder with mbpp.jsonl etc. (default: $EGCFG_DATA_DIR; else the hub)")
    parser.add_argument("--path", default=None, help="a local dataset file for the beam workload")
    parser.add_argument("--dtype", default="bfloat16" if cpu_has_bf16() else "float32", choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-naive", action="store_true", help="leave out the per-problem row (slow)")
    parser.add_argument("--fp32-check", action="store_true",
                        help="also decode greedy in fp32 with the engine and generate: identical tokens?")
    parser.add_argument("--thread-sweep", nargs="*", type=int, default=None, metavar="ROWS",
                        help="only time prefill/decode per thread count (1..cpus) at these row counts")
    parser.add_argument("--pass-at-1", action="store_true", help="sandbox the greedy candidates: solved before/engine")
    parser.add_argument("--dump", default=None, help="write the engine's candidates (text, tokens, truncated) as JSON")
    parser.add_argument("--lora", action="store_true",
                        help="also time a LoRA-wrapped copy (all-linear, r 16) unmerged vs merged for beam sampling")
    return parser.parse_args()


@contextmanager
def count_positions(model) -> Iterator[dict[str, int]]:
    """Every (row, position) the model runs, padding included: the work behind the kept tokens."""
    seen = {"positions": 0}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        seen["positions"] += ids.numel() if ids is not None else 0

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@dataclasses.dataclass
class Row:
    label: str
    kept: int
    total: int
    seconds: float
    generations: list[Generation]
    rows: int  # rows decoded together at most

    @property
    def kept_per_s(self) -> float:
        return self.kept / self.seconds

    @property
    def total_per_s(self) -> float:
        return self.total / self.seconds


@contextmanager
def old_paths(generate_only: bool) -> Iterator[None]:
    """Beam without its recorded log-probs (teacher-forced re-score, the project before), and with
    ``generate_only`` no log-probs at all (the plain ``generate`` anchor); patched for one call only."""
    import egcfg_pl.sampling.beam as beam

    saved = beam.sequence_logprobs, HFSampler._beam_recorder
    HFSampler._beam_recorder = lambda self: None
    if generate_only:
        beam.sequence_logprobs = lambda m, prompts, conts, pad: [float("nan")] * len(conts)
    try:
        yield
    finally:
        beam.sequence_logprobs, HFSampler._beam_recorder = saved


def sampler_row(label, model, tokenizer, problems, settings, old: bool = False, generate_only: bool = False,
                recorded: bool = False) -> Row:
    """``old``: the pre-engine path (``model.generate`` per batch with the model's own attention, re-score);
    ``recorded``: beam through ``model.generate`` with recorded log-probs (``continuous: false``, as configured)."""
    if old:
        settings = dataclasses.replace(settings, continuous=False, attention=None)
    if recorded:
        settings = dataclasses.replace(settings, continuous=False)
    sampler = HFSampler(model, tokenizer, settings, name="bench")
    with count_positions(model) as seen:
        if old:
            with old_paths(generate_only):
                gens = sampler.generate(problems)
        else:
            gens = sampler.generate(problems)
    st = sampler.last_stats
    rows = settings.batch_size * settings.rows_per_problem
    return Row(label, st.generated_tokens, seen["positions"], st.seconds, gens, rows)


@torch.no_grad()
def ceilings(model, rows: int, context: int = 192, steps: int = 8, repeats: int = 2) -> tuple[float, float]:
    """Measured tokens/s (best of ``repeats``) of one teacher-forced pass over rows x context tokens (the compute
    bound) and of cached one-token steps with ``rows`` rows after such a prompt (the step-by-step bound)."""
    ids = torch.randint(100, 1000, (rows, context))
    model(input_ids=ids[:1, :8])  # warm-up
    prefill = decode = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        prefill = max(prefill, rows * context / (time.perf_counter() - start))
        cache, token = getattr(out, CACHE_FIELD), ids[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, use_cache=True, **{CACHE_FIELD: cache}).logits[:, -1:].argmax(-1)
        decode = max(decode, rows * steps / (time.perf_counter() - start))
    return prefill, decode


def thread_sweep(model, rows_list: list[int], threads_list: list[int]) -> None:
    """Decode and prefill tokens/s per torch thread count and row count, with the load average beside it."""
    print("\n| threads | rows | prefill tok/s | decode tok/s | load average before |\n|---|---|---|---|---|")
    saved = torch.get_num_threads()
    for threads in threads_list:
        torch.set_num_threads(threads)
        for rows in rows_list:
            load_avg = f"{os.getloadavg()[0]:.2f}"
            prefill, decode = ceilings(model, rows)
            print(f"| {threads} | {rows} | {prefill:.0f} | {decode:.0f} | {load_avg} |", flush=True)
    torch.set_num_threads(saved)


def print_rows(title: str, rows: list[Row], anchor: Row, model) -> None:
    print(f"\n{title}")
    print("| path | rows | kept tokens | total tokens | seconds | kept tok/s | total tok/s | x anchor (kept/s) "
          "| kept/s share of prefill ceiling | of decode ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    prefill_ceiling = ceilings(model, max(r.rows for r in rows))[0]
    for r in rows:
        prefill, decode = prefill_ceiling, ceilings(model, r.rows, repeats=1)[1]
        print(f"| {r.label} | {r.rows} | {r.kept} | {r.total} | {r.seconds:.1f} | {r.kept_per_s:.1f} | "
              f"{r.total_per_s:.1f} | {r.kept_per_s / anchor.kept_per_s:.2f} | {r.kept_per_s / prefill:.1%} "
              f"(of {prefill:.0f}) | {r.kept_per_s / decode:.1%} (of {decode:.0f}) |", flush=True)


def load(dataset: str, split: str, limit: int, path: str | None, data_dir: str | None):
    if path is None and data_dir and dataset in DATA_FILES:
        path = str(Path(data_dir) / DATA_FILES[dataset])
    return load_problems(dataset, split=split, limit=limit, path=path)


def logprob_error(gens: list[Generation], reference_model, tokenizer, problems) -> tuple[float, float]:
    """max and mean |stored logprob - fp32 teacher-forced logprob| over ``gens``."""
    prompts = [encode_prompt(tokenizer, build_prompt(problems[g.problem_index], tokenizer)) for g in gens]
    exact = sequence_logprobs(reference_model, prompts, [list(g.token_ids) for g in gens], tokenizer.pad_token_id)
    errors = [abs(a - g.logprob) for a, g in zip(exact, gens)]
    return max(errors), statistics.mean(errors)


def run_workload(name: str, args, model, fp32, tokenizer, problems, settings: GenerationSettings) -> None:
    load_avg = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n### {name}: {problems[0].source} x{len(problems)}, {settings.strategy}"
          f"{' ' + str(settings.num_beams) if settings.strategy == 'beam' else ''}, max_new_tokens "
          f"{settings.max_new_tokens}, batch {settings.batch_size}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"load average before {load_avg}")
    rows = []
    if not args.skip_naive:
        rows.append(sampler_row("naive (1 problem per generate + re-score)", model, tokenizer, problems,
                                dataclasses.replace(settings, batch_size=1), old=True))
    anchor = sampler_row("generate (batched, anchor)", model, tokenizer, problems, settings, old=True,
                         generate_only=True)
    rows.append(anchor)
    before = sampler_row("generate + re-score (before)", model, tokenizer, problems, settings, old=True)
    rows.append(before)
    beam = settings.strategy == "beam"
    if beam:
        previous = sampler_row("generate + recorded log-probs (previous)", model, tokenizer, problems, settings,
                               recorded=True)
        rows.append(previous)
    engine = sampler_row("engine (project now)", model, tokenizer, problems, settings)
    rows.append(engine)
    for size in args.beam_engine_batch_sizes if beam else args.engine_batch_sizes:
        rows.append(sampler_row(f"engine, {size} problems in flight", model, tokenizer, problems,
                                dataclasses.replace(settings, batch_size=size)))
    if args.dump:
        dump(Path(args.dump).with_suffix(f".{settings.strategy}.json"), engine.generations, problems)
    print(f"load average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_rows(f"{name} ({args.dtype})", rows, anchor, model)
    same = sum(a.token_ids == b.token_ids for a, b in zip(engine.generations, before.generations))
    print(f"engine vs generate+re-score: identical candidates {same}/{len(engine.generations)}; "
          f"truncated {sum(g.truncated for g in engine.generations)} vs {sum(g.truncated for g in before.generations)}")
    if beam:
        same = sum(a.token_ids == b.token_ids for a, b in zip(engine.generations, previous.generations))
        print(f"engine vs generate + recorded log-probs: identical candidates {same}/{len(engine.generations)}; "
              f"kept tok/s ratio engine / previous {engine.kept_per_s / previous.kept_per_s:.2f}, "
              f"engine / anchor {engine.kept_per_s / anchor.kept_per_s:.2f}")
    if args.pass_at_1 and settings.strategy == "greedy":
        solved = {r.label: solved_problems(r.generations, problems) for r in (before, engine)}
        a, b = solved[before.label], solved[engine.label]
        print(f"pass@1 (greedy, sandbox): before {len(a)}/{len(problems)}, engine {len(b)}/{len(problems)}; "
              f"only before: {sorted(a - b)}, only engine: {sorted(b - a)}")
    if fp32 is not model:
        for r in (before, previous, engine) if beam else (before, engine):
            worst, mean = logprob_error(r.generations, fp32, tokenizer, problems)
            print(f"{r.label}: |stored {args.dtype} logprob - fp32 teacher forcing| max {worst:.4f}, mean {mean:.4f}")
    if args.fp32_check and settings.strategy == "greedy":
        a = sampler_row("fp32 generate", fp32, tokenizer, problems, settings, old=True, generate_only=True)
        b = sampler_row("fp32 engine", fp32, tokenizer, problems, settings)
        same = sum(x.token_ids == y.token_ids for x, y in zip(a.generations, b.generations))
        worst, _ = logprob_error(b.generations, fp32, tokenizer, problems)
        print(f"fp32 greedy: engine == generate token for token for {same}/{len(a.generations)} problems; "
              f"engine logprob vs teacher forcing max |d| {worst:.5f}; kept tok/s {b.kept_per_s:.1f} vs "
              f"{a.kept_per_s:.1f}")


def solved_problems(gens: list[Generation], problems) -> set[str]:
    """Ids of the problems whose rank-0 candidate passes every test in the sandbox."""
    from egcfg_pl.prompts import PromptTemplate, extract_program
    from egcfg_pl.sandbox import Executor

    firsts = [g for g in gens if g.rank == 0]
    jobs = [(problems[g.problem_index], extract_program(g.text, problems[g.problem_index], PromptTemplate()))
            for g in firsts]
    executor = Executor()
    try:
        verdicts = executor.run_many(jobs)
    finally:
        getattr(executor, "close", lambda: None)()
    return {p.id for (p, _), v in zip(jobs, verdicts) if v.all_passed}


def dump(path: Path, gens: list[Generation], problems) -> None:
    import json

    rows = [{"problem_id": problems[g.problem_index].id, "rank": g.rank, "tokens": len(g.token_ids),
             "truncated": g.truncated, "logprob": g.logprob, "text": g.text} for g in gens]
    path.write_text(json.dumps(rows, indent=1))


def lora_rows(base, tokenizer, problems, settings: GenerationSettings, dtype: str) -> None:
    """The same sampling through a LoRA adapter, left unmerged vs folded into the weights (``merge_lora``)."""
    model = apply_lora(copy.deepcopy(base).to(DTYPES[dtype]), LoraSettings())
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)  # a trained-looking adapter (a fresh one is zero)
    out = {merge: sampler_row(f"{dtype} + LoRA {'merged' if merge else 'unmerged'}", model, tokenizer, problems,
                              dataclasses.replace(settings, merge_lora=merge)) for merge in (False, True)}
    print("\n| model | kept tokens | seconds | kept tokens/s |\n|---|---|---|---|")
    for r in out.values():
        print(f"| {r.label} | {r.kept} | {r.seconds:.1f} | {r.kept_per_s:.2f} |")
    same = sum(a.token_ids == b.token_ids for a, b in zip(out[True].generations, out[False].generations))
    print(f"LoRA merged/unmerged kept tokens/s: {out[True].kept_per_s / out[False].kept_per_s:.2f}x; "
          f"identical candidates: {same}/{len(out[True].generations)}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(ModelSpec())
    fp32 = load_model(ModelSpec(dtype="float32", device="cpu"))
    model = fp32 if args.dtype == "float32" else copy.deepcopy(fp32).to(DTYPES[args.dtype])
    print(f"torch {torch.__version__}, {args.threads} threads (torch.set_num_threads), OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY')}, cpu bf16: {cpu_has_bf16()}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cpus")
    if args.thread_sweep is not None:
        thread_sweep(model, args.thread_sweep or [1, 8, 16, 32], list(range(1, (os.cpu_count() or 1) + 1)))
        return
    common = dict(progress=False, batch_size=args.batch_size)
    if "greedy" in args.workloads:
        problems = load(args.greedy_dataset, "test", args.greedy_problems, None, args.data_dir)
        settings = GenerationSettings(strategy="greedy", num_beams=1, num_return_sequences=1,
                                      max_new_tokens=args.greedy_max_new_tokens, **common)
        run_workload("held-out greedy evaluation", args, model, fp32, tokenizer, problems, settings)
    if "beam" in args.workloads:
        problems = load(args.beam_dataset, args.beam_split, args.beam_problems, args.path, args.data_dir)
        settings = GenerationSettings(strategy="beam", num_beams=args.num_beams, num_return_sequences=args.num_beams,
                                      max_new_tokens=args.beam_max_new_tokens,
                                      **{**common, "batch_size": args.beam_batch_size})
        run_workload(f"refresh beam {args.num_beams}", args, model, fp32, tokenizer, problems, settings)
        if args.lora:
            lora_rows(fp32, tokenizer, problems, settings, args.dtype)


if __name__ == "__main__":
    main()
