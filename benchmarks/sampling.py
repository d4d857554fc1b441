"""Sampling throughput and log-prob precision of the local sampler, float32 vs bfloat16.

``.venv/bin/python -m benchmarks.sampling`` loads the embedded SmolLM2-135M once, runs ``HFSampler``
(beam search by default) on the first N HumanEval problems in each dtype, and prints for each:
kept tokens/s, generate vs teacher-forced rescoring seconds. It then scores the float32 candidates' tokens
under the bfloat16 weights to show how much bf16 moves the possibility (|Δ logprob|, |Δ normalised P|),
and how many bf16 candidates are the same program as the float32 one at the same rank.
Every number is measured on the run; the machine's other load shows up in them (run it on an idle box).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics

import torch

from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, load_model, load_tokenizer
from egcfg_pl.problems import load_problems
from egcfg_pl.prompts import build_prompt
from egcfg_pl.sampling.beam import Generation, HFSampler, encode_prompt, sequence_logprobs
from egcfg_pl.sampling.settings import GenerationSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="humaneval")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--strategy", default="beam", choices=["beam", "greedy", "sample"])
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lora", action="store_true",
                        help="also time a LoRA-wrapped copy (all-linear, r 16) unmerged vs merged for sampling")
    parser.add_argument("--lora-dtype", default="bfloat16", choices=list(DTYPES))
    return parser.parse_args()


def lora_rows(base, tokenizer, problems, settings: GenerationSettings, dtype: str) -> None:
    """The same sampling through a LoRA adapter, left unmerged vs folded into the weights (``merge_lora``)."""
    model = apply_lora(copy.deepcopy(base).to(DTYPES[dtype]), LoraSettings())
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)  # a trained-looking adapter (a fresh one is zero)
    out = {}
    for merge in (False, True):
        out[merge] = run(model, tokenizer, problems, dataclasses.replace(settings, merge_lora=merge))
        st = out[merge][1]
        label = f"{dtype} + LoRA {'merged' if merge else 'unmerged'}"
        row = [label, st["tokens"], f"{st['generate_s']:.1f}", f"{st['rescore_s']:.1f}", f"{st['tokens_per_s']:.2f}"]
        print("| " + " | ".join(map(str, row)) + " |", flush=True)
    speedup = out[True][1]["tokens_per_s"] / max(out[False][1]["tokens_per_s"], 1e-9)
    same = sum(a.token_ids == b.token_ids for a, b in zip(out[True][0], out[False][0]))
    print(f"LoRA merged/unmerged kept tokens/s: {speedup:.2f}x; identical candidates: {same}/{len(out[True][0])}")


def run(model, tokenizer, problems, settings: GenerationSettings) -> tuple[list[Generation], dict[str, float]]:
    sampler = HFSampler(model, tokenizer, settings, name="bench")
    generations = sampler.generate(problems)
    s = sampler.last_stats
    stats = {
        "tokens": s.generated_tokens,
        "generate_s": s.generate_seconds,
        "rescore_s": s.rescore_seconds,
        "tokens_per_s": s.tokens_per_second,
    }
    return generations, stats


def logprob_drift(reference: list[Generation], model, tokenizer, problems) -> dict[str, float]:
    """Re-score ``reference`` token sequences under ``model``: how far the log-probs move."""
    prompts = [encode_prompt(tokenizer, build_prompt(problems[g.problem_index], tokenizer)) for g in reference]
    other = sequence_logprobs(model, prompts, [list(g.token_ids) for g in reference], tokenizer.pad_token_id)
    d_lp = [abs(a - g.logprob) for a, g in zip(other, reference)]
    d_norm = [abs(math.exp(a / len(g.token_ids)) - math.exp(g.logprob / len(g.token_ids)))
              for a, g in zip(other, reference)]
    return {"max_dlogprob": max(d_lp), "mean_dlogprob": statistics.mean(d_lp), "max_dnormP": max(d_norm)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(ModelSpec())
    base = load_model(ModelSpec(dtype="float32", device="cpu"))
    problems = load_problems(args.dataset, limit=args.problems)
    settings = GenerationSettings(
        strategy=args.strategy,
        num_beams=args.num_beams,
        num_return_sequences=args.num_beams if args.strategy != "greedy" else 1,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.problems,
        progress=False,
    )
    print(f"{args.dataset} x{len(problems)}, {args.strategy} {args.num_beams}, max_new_tokens {args.max_new_tokens}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print("| dtype | kept tokens | generate s | rescore s | kept tokens/s |")
    print("|---|---|---|---|---|")
    results, models = {}, {}
    for name in args.dtypes:
        models[name] = base if name == "float32" else copy.deepcopy(base).to(DTYPES[name])
        results[name] = run(models[name], tokenizer, problems, settings)
        st = results[name][1]
        row = [name, st["tokens"], f"{st['generate_s']:.1f}", f"{st['rescore_s']:.1f}", f"{st['tokens_per_s']:.2f}"]
        print("| " + " | ".join(map(str, row)) + " |", flush=True)
    if {"float32", "bfloat16"} <= set(results):
        ref, low = results["float32"][0], results["bfloat16"][0]
        drift = logprob_drift(ref, models["bfloat16"], tokenizer, problems)
        same = sum(a.token_ids == b.token_ids for a, b in zip(ref, low))
        speedup = results["bfloat16"][1]["tokens_per_s"] / max(results["float32"][1]["tokens_per_s"], 1e-9)
        print(f"bf16/fp32 kept tokens/s: {speedup:.2f}x; identical candidates: {same}/{len(ref)}")
        print("fp32 candidates re-scored in bf16: " + ", ".join(f"{k} {v:.4f}" for k, v in drift.items()))
    if args.lora:
        lora_rows(base, tokenizer, problems, settings, args.lora_dtype)


if __name__ == "__main__":
    main()
