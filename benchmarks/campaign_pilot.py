"""Pilot for the issue-15 campaign design: how many MBPP *training* problems each sampler solves, and at what cost.

Runs on training problems only (never validation or test), so it may choose the campaign's sampler. For each
decoding in ``--decodings`` it samples the first ``--problems`` MBPP train problems with the embedded model
(bf16), tests every candidate in the sandbox and prints: candidates, problems with >= 1 passing program, problems
with a partial pass, mean pass rate, kept tokens, truncated share, seconds and kept tok/s.

    python -m benchmarks.campaign_pilot --problems 48 --out benchmarks/results/campaign_pilot.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from egcfg_pl.models import ModelSpec, load_model, load_tokenizer  # noqa: E402
from egcfg_pl.problems import ProblemSet  # noqa: E402
from egcfg_pl.prompts import PromptTemplate  # noqa: E402
from egcfg_pl.sampling.factory import build_sampler  # noqa: E402
from egcfg_pl.sampling.settings import GenerationSettings  # noqa: E402
from egcfg_pl.sandbox import Executor, SandboxConfig  # noqa: E402

DECODINGS = {
    "beam5": dict(strategy="beam", num_beams=5, num_return_sequences=5),
    "beam10": dict(strategy="beam", num_beams=10, num_return_sequences=10),
    "nucleus10_t0.8": dict(strategy="sample", num_return_sequences=10, temperature=0.8, top_p=0.95),
    "nucleus10_t1.0": dict(strategy="sample", num_return_sequences=10, temperature=1.0, top_p=0.95),
    "greedy": dict(strategy="greedy", num_beams=1, num_return_sequences=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--decodings", nargs="+", default=["beam5", "nucleus10_t0.8"], choices=sorted(DECODINGS))
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    spec = ModelSpec(dtype="bfloat16")
    model, tokenizer = load_model(spec), load_tokenizer(spec)
    template = PromptTemplate()
    problems = ProblemSet(dataset="mbpp", split="train", offset=args.offset, limit=args.problems).load()
    executor = Executor(SandboxConfig(timeout=3.0))
    rows = []
    print(f"{len(problems)} MBPP train problems from offset {args.offset}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print("| decoding | candidates | solved problems | partial-pass problems | mean pass rate | kept tokens | truncated |"
          " sample s | test s | kept tok/s |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    solved_by: dict[str, set[str]] = {}
    for name in args.decodings:
        settings = GenerationSettings(**DECODINGS[name], max_new_tokens=args.max_new_tokens,
                                      batch_size=args.batch_size, progress=False)
        sampler = build_sampler(settings, template, model=model, tokenizer=tokenizer, name=spec.name)
        start = time.perf_counter()
        candidates = sampler.sample(problems, iteration=0)
        sampled = time.perf_counter() - start
        by_id = {p.id: p for p in problems}
        start = time.perf_counter()
        verdicts = executor.run_many([(by_id[c.problem_id], c.program) for c in candidates])
        tested = time.perf_counter() - start
        rates = [v.pass_rate for v in verdicts]
        solved = {c.problem_id for c, v in zip(candidates, verdicts) if v.pass_rate == 1.0}
        partial = {c.problem_id for c, v in zip(candidates, verdicts) if v.pass_rate > 0}
        solved_by[name] = solved
        kept = sum(c.num_tokens for c in candidates)
        truncated = sum(bool(c.truncated) for c in candidates)
        row = dict(decoding=name, settings=DECODINGS[name], candidates=len(candidates), solved=len(solved),
                   partial=len(partial), mean_pass_rate=sum(rates) / len(rates), kept_tokens=kept,
                   truncated=truncated, sample_s=sampled, test_s=tested, kept_tok_s=kept / sampled,
                   solved_ids=sorted(solved), load_average_after=os.getloadavg()[0])
        rows.append(row)
        print(f"| {name} | {len(candidates)} | {len(solved)} | {len(partial)} | {row['mean_pass_rate']:.3f} | {kept} | "
              f"{truncated} | {sampled:.0f} | {tested:.1f} | {row['kept_tok_s']:.1f} |", flush=True)
    union = set().union(*solved_by.values())
    print(f"solved by any: {len(union)}; " + ", ".join(
        f"only {k}: {len(v - set().union(*(w for j, w in solved_by.items() if j != k)))}" for k, v in solved_by.items()))
    executor.close()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"problems": len(problems), "offset": args.offset, "max_new_tokens": args.max_new_tokens,
                       "rows": rows, "solved_by_any": len(union)}, f, indent=2)


if __name__ == "__main__":
    main()
