"""Prompt building, the response format, and program extraction (with its tricky cases)."""

from __future__ import annotations

import pytest

from egcfg_pl.problems import Problem, TestCase, load_problems
from egcfg_pl.prompts import (
    PromptTemplate,
    build_messages,
    build_prompt,
    extract_program,
    format_response,
    stop_strings,
)

CHAT = PromptTemplate()
COMPLETION = PromptTemplate(style="completion")


@pytest.fixture(scope="module")
def humaneval():
    return {p.id: p for p in load_problems("humaneval")}


@pytest.fixture(scope="module")
def mbpp(shared_data):
    return load_problems("mbpp", split="prompt", path=shared_data / "mbpp.jsonl")[0]


@pytest.fixture(scope="module")
def stdio_problem(shared_data):
    return load_problems("codecontests", split="train", path=shared_data / "codecontests_subset.jsonl", limit=1)[0]


def test_chat_messages_for_each_problem_kind(humaneval, mbpp, stdio_problem):
    system, user = build_messages(mbpp, CHAT)
    assert system["role"] == "system" and user["role"] == "user"
    assert mbpp.statement in user["content"] and "`min_cost`" in user["content"]
    assert mbpp.tests[0].code in user["content"] and "```python" in user["content"]
    he = build_messages(humaneval["HumanEval/0"], CHAT)[-1]["content"]
    assert humaneval["HumanEval/0"].prompt in he
    stdio = build_messages(stdio_problem, CHAT)[-1]["content"]
    assert "standard input" in stdio and "Input:\n" in stdio  # public examples shown


def test_tests_hidden_or_capped_by_template(mbpp):
    none = build_messages(mbpp, PromptTemplate(include_public_tests=False))[-1]["content"]
    assert "assert" not in none and "pass these tests" not in none
    one = build_messages(mbpp, PromptTemplate(max_tests_shown=1))[-1]["content"]
    assert one.count("assert ") == 1


def test_build_prompt_chat_uses_the_chat_template(mbpp, smol_tokenizer):
    text = build_prompt(mbpp, smol_tokenizer, CHAT)
    assert mbpp.statement in text and CHAT.system in text
    # generation prompt of the SmolLM2 template, then the opened code block
    assert text.endswith("<|im_start|>assistant\n" + CHAT.response_prefix)


def test_completion_prompts(humaneval, mbpp):
    he = humaneval["HumanEval/2"]
    assert build_prompt(he, None, COMPLETION) == he.prompt
    text = build_prompt(mbpp, None, COMPLETION)
    assert text.startswith('"""\n') and text.endswith('"""\n') and mbpp.tests[0].code in text
    with pytest.raises(ValueError, match="completion"):
        build_messages(mbpp, COMPLETION)


def test_stop_strings(humaneval, stdio_problem):
    assert stop_strings(CHAT) == ["\n```"]
    assert "\ndef " in stop_strings(COMPLETION, humaneval["HumanEval/0"])
    assert "\ndef " not in stop_strings(COMPLETION, stdio_problem)  # whole programs define functions


@pytest.mark.parametrize("template", [CHAT, COMPLETION], ids=["chat", "completion"])
def test_format_then_extract_round_trips(template, humaneval, mbpp, stdio_problem):
    programs = [(p, extract_program(p.solutions[0], p)) for p in list(humaneval.values())[:40]]
    programs += [(mbpp, extract_program(mbpp.solutions[0], mbpp))]
    programs += [(stdio_problem, "import sys\n\ndef main():\n\tprint(sys.stdin.read())\n\nif __name__ == '__main__':\n\tmain()")]
    for problem, program in programs:
        assert program and program == program.rstrip()
        response = format_response(program, template, problem)
        assert extract_program(response, problem, template) == program, problem.id


def test_completion_response_is_the_body(humaneval):
    p = humaneval["HumanEval/2"]
    program = extract_program(p.solutions[0], p)
    body = format_response(program, COMPLETION, p)
    assert p.prompt.startswith("\n") and not body.lstrip().startswith("def ")
    assert p.prompt.lstrip("\n") + body == program


PLAIN = Problem(
    id="x/1",
    source="custom",
    split="test",
    statement="Add one.",
    tests=(TestCase(kind="assert", code="assert add_one(1) == 2"),),
    entry_point="add_one",
)
STDIO = Problem(id="x/2", source="custom", split="test", statement="Echo.", tests=(TestCase(kind="stdio", input="1", output="1"),))


def test_unclosed_fence_counts():
    text = "Here you go:\n```python\ndef add_one(x):\n    return x + 1\n"
    assert extract_program(text, PLAIN) == "def add_one(x):\n    return x + 1"
    assert extract_program(text + "``", PLAIN) == "def add_one(x):\n    return x + 1"  # cut-off closing fence


def test_multiple_fences_prefer_the_entry_point():
    text = "```python\nprint(add_one(1))\n```\nand\n```python\ndef add_one(x):\n    return x + 1\n```"
    assert extract_program(text, PLAIN) == "def add_one(x):\n    return x + 1"
    assert extract_program(text, STDIO) == "print(add_one(1))"  # no entry point: the first block
    other_language = "```bash\npip install x\n```\n```\ndef add_one(x):\n    return x + 1\n```"
    assert extract_program(other_language, PLAIN).startswith("def add_one")


def test_prose_before_and_after_bare_code():
    text = "Sure! Here is the function.\ndef add_one(x):\n    return x + 1\nThis adds one to x."
    assert extract_program(text, PLAIN) == "def add_one(x):\n    return x + 1"


def test_body_only_completion_gets_the_prompt(humaneval):
    p = humaneval["HumanEval/2"]  # truncate_number
    body = "    return number % 1.0\n\n"
    head = p.prompt.lstrip("\n")  # extracted programs never start with blank lines
    assert extract_program(body, p) == head + "    return number % 1.0"
    fenced = "```python\n    return number % 1.0\n```"
    assert extract_program(fenced, p) == head + "    return number % 1.0"


def test_tab_indented_body_is_repaired(humaneval):
    p = humaneval["HumanEval/2"]
    program = extract_program("\treturn number % 1.0", p)
    assert program == p.prompt.lstrip("\n") + "    return number % 1.0"
    compile(program, "<t>", "exec")


def test_full_function_gets_missing_prompt_imports(humaneval):
    p = humaneval["HumanEval/0"]  # prompt starts with `from typing import List`
    code = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n    return False"
    program = extract_program(f"```python\n{code}\n```", p)
    assert program.startswith("from typing import List\n") and program.endswith(code)
    helper = humaneval["HumanEval/38"]  # decode_cyclic's tests call the prompt's encode_cyclic
    program = extract_program("def decode_cyclic(s: str):\n    return s", helper)
    assert "def encode_cyclic" in program and program.endswith("def decode_cyclic(s: str):\n    return s")


def test_main_block_kept_for_stdio_dropped_for_calls():
    code = "def add_one(x):\n    return x + 1\n\nif __name__ == '__main__':\n    print(add_one(int(input())))"
    assert extract_program(code, STDIO) == code
    assert extract_program(code, PLAIN) == "def add_one(x):\n    return x + 1"


def test_empty_output():
    assert extract_program("", PLAIN) == ""
    assert extract_program("```python\n```", PLAIN) == ""
    assert extract_program("   \n\n", STDIO) == ""
