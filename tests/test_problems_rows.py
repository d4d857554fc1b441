"""Hub-schema rows, malformed input reporting, and the train / held-out overlap check."""

from __future__ import annotations

import json
import logging

import pytest

from egcfg_pl.problems import OverlapError, Problem, ProblemDataError, TestCase, check_overlap, load_problems, normalize_text

GOOD_APPS = {
    "problem_id": 7,
    "question": "Add two numbers.",
    "difficulty": "introductory",
    "starter_code": "",
    "input_output": json.dumps({"inputs": [["1 2", "3 4"]], "outputs": [["3", "7"]]}),
    "solutions": json.dumps(["print(1)"]),
}
GOOD_CALL = {
    "problem_id": 8,
    "question": "Double it.",
    "difficulty": "interview",
    "starter_code": "class Solution:\n    def double(self, x):\n",
    "input_output": json.dumps({"fn_name": "double", "inputs": [[2], [[1, 2]]], "outputs": [[4], [[1, 2, 1, 2]]]}),
    "solutions": "[]",
}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_apps_hub_schema_json_strings(tmp_path):
    path = write_jsonl(tmp_path / "apps.jsonl", [GOOD_APPS, GOOD_CALL])
    stdio, call = load_problems("apps", split="all", path=path)
    assert stdio.tests[0].input == "1 2\n3 4" and stdio.tests[0].output == "3\n7"
    assert stdio.solutions == ("print(1)",) and stdio.split == ""
    assert [t.expected for t in call.tests] == [4, [1, 2, 1, 2]]  # one-element wrapping removed
    assert call.meta["wrapped_expected"] == (True, True) and call.entry_point == "double"
    assert call.tests[1].args == ([1, 2],)


def test_codecontests_hub_schema(tmp_path):
    row = {
        "name": "1_A. Theatre Square",
        "description": "Pave the square.",
        "difficulty": 7,
        "public_tests": {"input": ["6 6 4\n"], "output": ["4\n"]},
        "private_tests": {"input": ["1 1 1\n"], "output": ["1\n"]},
        "generated_tests": {"input": ["2 2 1\n", "3 3 1\n"], "output": ["4\n", "9\n"]},
        "solutions": {"language": [1, 3, 2], "solution": ["print 4", "print(4)", "int main(){}"]},
    }
    path = write_jsonl(tmp_path / "cc.jsonl", [row])
    (p,) = load_problems("codecontests", split="all", path=path)
    assert p.id == "codecontests/1_A. Theatre Square" and p.difficulty == "7"
    assert [t.public for t in p.tests] == [True, False, False, False]
    assert p.solutions == ("print(4)",)  # Python 3 only
    (q,) = load_problems("codecontests", split="all", path=path, test_sets=["public", "generated"])
    assert [t.input for t in q.tests] == ["6 6 4\n", "2 2 1\n", "3 3 1\n"]


def test_apps_ids_include_the_split(tmp_path):
    """codeparrot/apps numbers train and test from 0: the same problem_id in both splits is two problems."""
    train_row = {**GOOD_APPS, "split": "train"}
    test_row = {**GOOD_APPS, "split": "test", "question": "Multiply two numbers."}
    path = write_jsonl(tmp_path / "apps.jsonl", [train_row, test_row])
    both = load_problems("apps", split="all", path=path)
    assert [p.id for p in both] == ["apps/train/7", "apps/test/7"]  # unique across splits
    train = load_problems("apps", split="train", path=path)
    test = load_problems("apps", split="test", path=path)
    assert check_overlap(train, test) == []  # no false overlap on the shared problem_id
    for spelling in ("apps/test/7", "test/7", "7"):
        assert [p.id for p in load_problems("apps", split="test", path=path, ids=[spelling])] == ["apps/test/7"]
    with pytest.raises(ValueError, match="not in this apps split"):
        load_problems("apps", split="test", path=path, ids=["apps/train/7"])


def test_json_array_file(tmp_path):
    path = tmp_path / "apps.json"
    path.write_text(json.dumps([GOOD_APPS]))
    assert load_problems("apps", split="all", path=path)[0].id == "apps/7"


def bad_apps_file(tmp_path):
    no_tests = {**GOOD_APPS, "problem_id": 3, "input_output": json.dumps({"inputs": [], "outputs": []})}
    missing = {k: v for k, v in GOOD_APPS.items() if k != "question"}
    bad_io = {**GOOD_APPS, "problem_id": 5, "input_output": "{not json"}
    return write_jsonl(tmp_path / "bad.jsonl", [GOOD_APPS, "{broken json", missing, no_tests, bad_io])


def test_malformed_rows_are_all_reported(tmp_path):
    path = bad_apps_file(tmp_path)
    with pytest.raises(ProblemDataError) as info:
        load_problems("apps", split="all", path=path)
    message = str(info.value)
    assert "4 malformed row(s)" in message
    assert f"{path}, row 2: not valid JSON" in message
    assert f"{path}, row 3: missing field 'question'" in message
    assert f"{path}, row 4:" in message and "no tests" in message
    assert f"{path}, row 5: field 'input_output' is not valid JSON" in message
    assert "problem_id, question, input_output" in message  # the expected fields
    assert "skip_malformed: true" in message  # the fix


def test_skip_malformed_drops_with_warning(tmp_path, caplog):
    path = bad_apps_file(tmp_path)
    with caplog.at_level(logging.WARNING):
        problems = load_problems("apps", split="all", path=path, skip_malformed=True)
    assert [p.id for p in problems] == ["apps/7"]
    assert "skipped 4 malformed row(s)" in caplog.text


def test_mbpp_without_tests_is_malformed(tmp_path):
    row = {"task_id": 11, "text": "t", "code": "def f(): pass", "test_setup_code": "", "test_list": []}
    path = write_jsonl(tmp_path / "mbpp.jsonl", [row])
    with pytest.raises(ProblemDataError, match=r"row 1: field 'test_list' is empty"):
        load_problems("mbpp", path=path)


def test_missing_file_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_problems("mbpp", path=tmp_path / "nope.jsonl")


def _problem(pid: str, statement: str) -> Problem:
    return Problem(id=pid, source="custom", split="x", statement=statement, tests=(TestCase(kind="assert", code="assert 1"),))


def test_overlap_same_id_and_respaced_text():
    train = [_problem("mbpp/601", "Write a function to add."), _problem("mbpp/602", "Sort a list,  then  REVERSE it!")]
    held = [_problem("mbpp/601", "other"), _problem("mbpp/11", "sort a list then\nreverse it"), _problem("mbpp/12", "new")]
    with pytest.raises(OverlapError) as info:
        check_overlap(train, held)
    assert "mbpp/601 ~ mbpp/601" in str(info.value) and "mbpp/602 ~ mbpp/11" in str(info.value)
    assert "`data.allow_overlap: true`" in str(info.value) and "`data.drop_overlapping_train: true`" in str(info.value)
    assert check_overlap(train, held, allow=True) == [("mbpp/601", "mbpp/601"), ("mbpp/602", "mbpp/11")]


def test_mbpp_train_test_share_three_statements(shared_data):
    """MBPP itself repeats a few task texts across splits (e.g. 602 and 217): the check finds them."""
    train = {p.id: p for p in load_problems("mbpp", split="train", path=shared_data / "mbpp.jsonl")}
    test = {p.id: p for p in load_problems("mbpp", split="test", path=shared_data / "mbpp.jsonl")}
    pairs = check_overlap(list(train.values()), list(test.values()), allow=True)
    assert ("mbpp/602", "mbpp/217") in pairs and len(pairs) == 3
    assert all(normalize_text(train[a].statement) == normalize_text(test[b].statement) for a, b in pairs)
    with pytest.raises(OverlapError, match="and 495 more"):
        check_overlap(list(test.values()), list(test.values()))
