"""Prompt templates, the response format the model is trained to emit, and program extraction.

The trainer fine-tunes on ``prompt + format_response(program) + eos`` (a program cut off by the token budget
gets neither the closing fence nor eos), and sampling turns the generated text back into a program with
``extract_program``; the two are inverses (``extract_program(format_response(p)) == p`` for an extracted
program ``p``). Extraction drops only prose around the code, never a line of code, so a broken program is
scored as written (as the official HumanEval harness scores prompt + completion).

Two styles:

- ``chat`` (instruct models): system + user messages through the tokenizer's chat template; the
  answer is one ```` ```python ```` block, and generation stops at the closing fence ``"\\n```"``.
- ``completion`` (base models): plain text the model continues. HumanEval-like problems (the prompt
  defines the entry point) are continued from the raw prompt and stop at the Codex/HumanEval
  stop sequences (Chen et al. 2021, as used by evalplus): a new top-level ``def``/``class``/
  ``if __name__``/``print(``/``#``. Other problems get the statement as a docstring and the
  model writes the whole program, stopping at the next docstring.
"""

from __future__ import annotations

import ast
import keyword
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from egcfg_pl.ast_parse import parse
from egcfg_pl.problems.problem import Problem, TestCase

CHAT_STOP = "\n```"
FUNCTION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
PROGRAM_STOPS = ('\n"""',)
_PY_FENCE_TAGS = ("", "python", "py", "python3")


@dataclass
class PromptTemplate:
    """How a problem is shown to the model. Instructions are ``str.format`` templates with the fields
    ``{statement}``, ``{prompt}``, ``{tests}`` and ``{entry_point}``; in them ``{prompt}`` and ``{tests}``
    are the rendered ``starter_section`` / ``tests_section`` (or "" when there is nothing to show)."""

    style: Literal["chat", "completion"] = "chat"
    """chat: messages through the tokenizer's chat template (instruct models); completion: plain text to continue."""
    system: str = "You are an expert Python programmer. You answer with code only."
    """System message for chat style ("" for none)."""
    call_instruction: str = (
        "{statement}\n\n{prompt}{tests}Write the Python function `{entry_point}`. "
        "Reply with the complete code in one ```python code block, with no explanation."
    )
    """Instruction for function problems (MBPP, APPS call-based)."""
    stdio_instruction: str = (
        "{statement}\n\n{tests}Write a complete Python 3 program that reads standard input and writes the answer "
        "to standard output. Reply with the program in one ```python code block, with no explanation."
    )
    """Instruction for stdin/stdout problems (APPS, CodeContests)."""
    humaneval_instruction: str = (
        "Complete this Python function:\n```python\n{prompt}```\n"
        "Reply with the complete function, including its imports, in one ```python code block, with no explanation."
    )
    """Instruction for problems whose prompt is the function's signature and docstring (HumanEval); {prompt} is raw."""
    starter_section: str = "Start from this code:\n```python\n{prompt}\n```\n\n"
    """How starter code (APPS call-based) is shown; {prompt} here is the raw starter code."""
    tests_section: str = "Your code should pass these tests:\n{tests}\n\n"
    """How public tests are shown; {tests} here is the list of tests, one per line."""
    include_public_tests: bool = True
    """Show the problem's public tests (MBPP asserts, CodeContests examples) in the prompt."""
    max_tests_shown: int = 3
    """At most this many public tests are shown."""
    response_prefix: str = "```python\n"
    """Chat style: text that opens the assistant's turn in the prompt, so the model starts inside the code block
    (a small instruct model otherwise often opens with prose, and the closing-fence stop string would end it
    there). "" for none. Only local models get it: chat APIs cannot prefill a turn."""

    def __post_init__(self) -> None:
        if self.style not in ("chat", "completion"):
            raise ValueError(f"style {self.style!r} is unknown; use 'chat' or 'completion'")


def continues_prompt(problem: Problem) -> bool:
    """True when the problem's prompt is the start of the program (it defines the entry point)."""
    return _defines(problem.prompt, problem.entry_point, top_level=True)


def render_tests(problem: Problem, template: PromptTemplate) -> str:
    """The public tests shown in the prompt, one per line (stdin tests as input/output pairs)."""
    if not template.include_public_tests:
        return ""
    shown = [t for t in problem.tests if t.public][: template.max_tests_shown]
    return "\n".join(_render_test(t) for t in shown)


def _render_test(test: TestCase) -> str:
    if test.kind == "stdio":
        return f"Input:\n{test.input.rstrip()}\nOutput:\n{test.output.rstrip()}"
    if test.kind == "call":
        return f"{test.fn_name}({', '.join(map(repr, test.args))}) == {test.expected!r}"
    return test.code.strip()


def user_text(problem: Problem, template: PromptTemplate) -> str:
    """The instruction for one problem (the chat user message)."""
    tests = render_tests(problem, template)
    fields: dict[str, Any] = {
        "statement": problem.statement.strip(),
        "entry_point": problem.entry_point,
        "tests": template.tests_section.format(tests=tests) if tests else "",
        "prompt": template.starter_section.format(prompt=problem.prompt.strip("\n")) if problem.prompt.strip() else "",
    }
    if continues_prompt(problem):
        return template.humaneval_instruction.format(**{**fields, "prompt": _with_newline(problem.prompt)})
    if problem.io_mode == "stdio":
        return template.stdio_instruction.format(**fields)
    return template.call_instruction.format(**fields)


def build_messages(problem: Problem, template: PromptTemplate | None = None) -> list[dict[str, str]]:
    """Chat messages for one problem (local chat template or an OpenAI-compatible API)."""
    template = template or PromptTemplate()
    if template.style != "chat":
        raise ValueError("completion-style templates have no chat messages; use build_prompt, or style: chat")
    system = [{"role": "system", "content": template.system}] if template.system else []
    return [*system, {"role": "user", "content": user_text(problem, template)}]


def build_prompt(problem: Problem, tokenizer: Any = None, template: PromptTemplate | None = None) -> str:
    """The exact text the model continues: the chat template with a generation prompt, or plain text."""
    template = template or PromptTemplate()
    if template.style == "completion":
        return completion_text(problem, template)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat-style prompts need a tokenizer with a chat template; use style: completion for base models")
    chat = tokenizer.apply_chat_template(build_messages(problem, template), tokenize=False, add_generation_prompt=True)
    return chat + template.response_prefix


def completion_text(problem: Problem, template: PromptTemplate) -> str:
    """Completion-style prompt: the raw prompt for HumanEval-like problems, else a docstring header."""
    if continues_prompt(problem):
        return problem.prompt
    tests = render_tests(problem, template)
    header = problem.statement.strip() + (f"\n\n{template.tests_section.format(tests=tests).rstrip()}" if tests else "")
    return f'"""\n{header}\n"""\n' + (_with_newline(problem.prompt) if problem.prompt.strip() else "")


def format_response(
    program: str, template: PromptTemplate | None = None, problem: Problem | None = None, finished: bool = True
) -> str:
    """What the model should emit for ``program`` (the training target before eos).

    chat: the program in one fenced block; completion: the continuation of ``completion_text``
    (for HumanEval-like problems the program minus the prompt it starts with). ``finished=False`` (a program
    cut off by the token budget) leaves the closing fence out: a cut-off program must not be taught to end.
    """
    template = template or PromptTemplate()
    if template.style == "chat":
        fenced = f"```python\n{program}" + ("\n```" if finished else "")
        return fenced.removeprefix(template.response_prefix)  # the prompt already ends with the prefix
    if problem is not None:
        prefix = completion_text(problem, template).lstrip("\n")  # extraction drops leading blank lines
        if program.startswith(prefix):
            return program[len(prefix) :]
    return program


def stop_strings(template: PromptTemplate | None = None, problem: Problem | None = None) -> list[str]:
    """Strings that end generation (see the module docstring for the convention)."""
    template = template or PromptTemplate()
    if template.style == "chat":
        return [CHAT_STOP]
    if problem is None or continues_prompt(problem):
        return list(FUNCTION_STOPS)
    return list(PROGRAM_STOPS)


def extract_program(text: str, problem: Problem, template: PromptTemplate | None = None) -> str:
    """The runnable program in a model's output.

    1. The first ```` ```python ```` (or untagged) fenced block; with several, the first that
       defines the entry point. An unclosed final fence counts (generation stops before closing it).
    2. Without a fence: the text minus leading / trailing *prose* lines (``_is_prose``: lines that
       read as natural language and are not code-shaped, like "Here is the code:" or "Output: 3";
       ``x = not valid code here`` is code). A line of code is never dropped, even when the
       program then fails to compile: it is scored as written.
    3. For problems whose prompt defines the entry point (HumanEval): an indented body gets the
       prompt prepended; a full function gets the prompt's imports and helpers it lacks.
       Completion-style templates follow the official HumanEval protocol instead: the program is
       prompt + continuation verbatim, after the stop-string cut (nothing dropped, nothing repaired).
    4. Call-based problems lose a top-level ``if __name__ == "__main__":`` block (it would read
       stdin or print under the test harness); stdin problems keep it.

    Returns "" for empty output; trailing whitespace is removed.
    """
    source, start, end = _program_region(text, problem, template)
    if _verbatim_continuation(problem, template):
        continuation = source[start:end].rstrip()
        return _prompt_head(problem) + continuation if continuation.strip() else ""
    code = _normalise(source[start:end])
    if not code:
        return ""
    if continues_prompt(problem):
        code = _complete_with_prompt(code, problem)
    if problem.io_mode != "stdio":
        code = _drop_main_block(code)
    return code


def program_span(text: str, problem: Problem, template: PromptTemplate | None = None) -> tuple[int, int]:
    """``(start, end)``: the characters of ``text`` (a model's output) that ``extract_program`` takes the program
    from (the chosen fenced block's contents, or the text minus prose lines). The API sampler sums the log-probs
    of the tokens inside it only, so prose and fences around the code do not enter the possibility."""
    source, start, end = _program_region(text, problem, template)
    shift = len(source) - len(text)  # the chat prefix put in front of ``text``
    return max(start - shift, 0), max(end - shift, 0)


def _verbatim_continuation(problem: Problem, template: PromptTemplate | None) -> bool:
    """Completion-style continuation of a HumanEval-like prompt: scored as prompt + completion, as written."""
    return template is not None and template.style == "completion" and continues_prompt(problem)


def _program_region(text: str, problem: Problem, template: PromptTemplate | None) -> tuple[str, int, int]:
    """``(source, start, end)``: the program is ``source[start:end]`` before normalisation, where ``source`` is
    ``text`` with the chat template's response prefix in front when the prompt opened the block ``text``
    continues (not when ``text`` opens its own fence: a model that repeats the opening fence)."""
    if template is not None and template.style == "chat" and not _opens_fence(text):
        text = template.response_prefix + text
    if _verbatim_continuation(problem, template):
        return text, 0, _first_stop(text, FUNCTION_STOPS)
    spans = _fenced_spans(text)
    if spans:
        blocks = [text[a:b] for a, b in spans]
        defining = [i for i, b in enumerate(blocks) if problem.entry_point and _defines(b, problem.entry_point)]
        non_empty = [i for i, b in enumerate(blocks) if b.strip()]
        return (text, *spans[(defining or non_empty or [0])[0]])
    return (text, *_prose_free_span(text, problem))


def _opens_fence(text: str) -> bool:
    """True when the first non-blank line of ``text`` is a fence (```` ```python ````)."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    return first.strip().startswith("```")


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the first stop string in ``text`` (``len(text)`` when none): the sampler's cut, repeated."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))


def fenced_blocks(text: str) -> list[str]:
    """Contents of the Python (or untagged) fenced blocks in ``text``; an unclosed last block included."""
    return [text[a:b] for a, b in _fenced_spans(text)]


def _fenced_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each Python (or untagged) fenced block's contents in ``text``.

    A fence line with a language tag inside an open block closes it and opens a new one: models that
    repeat the opening fence (or open a second block without closing the first) write exactly that.
    """
    spans: list[tuple[int, int]] = []
    start: int | None = None
    tag, pos = "", 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("```"):
            new_tag = stripped[3:].strip().lower()
            if start is not None and tag in _PY_FENCE_TAGS:
                spans.append((start, max(pos - 1, start)))  # up to the newline before this fence
            reopen = start is not None and bool(new_tag)
            start, tag = (pos + len(line) + 1, new_tag) if start is None or reopen else (None, "")
        pos += len(line) + 1
    if start is not None and tag in _PY_FENCE_TAGS:
        spans.append((min(start, len(text)), len(text)))
    return spans


def _normalise(code: str) -> str:
    """Leading blank lines and trailing whitespace off; a partial closing fence (```` `` ````) off."""
    lines = code.rstrip().split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and set(lines[-1].strip()) <= {"`"} and lines[-1].strip():
        lines.pop()
    return "\n".join(lines).rstrip()


_STRING = re.compile(r"""[rRbBfFuU]{0,2}("([^"\\\n]|\\.)*"|'([^'\\\n]|\\.)*')""")
_WORD_OR_SYMBOL = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")
_SENTENCE = re.compile(r"[^\W\d][\w ,'-]*[.!?]")  # words only, then a sentence end: "That is all."
_LABEL = re.compile(r"[A-Z][a-z]+( [A-Za-z]+){0,2}:( .*)?")  # "Output: 3", "Example input: 1 2", "Note:"
_CODE_WORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
# code shapes: an assignment (`=`, `+=`, not `==`), a call or subscript (`f(`, `xs[`), an operator
_ASSIGNMENT = re.compile(r"(?<![=<>!])=(?!=)")
_CALL = re.compile(r"\w[(\[]")
_OPERATOR = re.compile(r"==|!=|<=|>=|->|//|\*\*|\s[+*/%<>|&^]\s")  # not `-`, `/`: "well-known", "and/or"


def _is_prose(line: str) -> bool:
    """True for a line that reads as natural language and is not code-shaped, so dropping it around the
    code never turns a broken line of code into a program that runs.

    Natural language: two plain words side by side ("Here is the code"), a ``Label: value`` line
    ("Output: 3", "Explanation:"), words alone ending a sentence ("That is all."), or markdown emphasis /
    backticks at the start. Code-shaped (never prose): a first word that is a Python keyword
    (``def``, ``return``, ``import`` ...), an assignment, a call or subscript, an operator
    (``x = not valid code here`` stays). One exception: a line that starts with a capitalised word and
    another word and ends a sentence ("The time complexity is O(n).") is prose, operators and all: no
    line of Python, whole or broken, reads so.
    Indented lines and comments are never prose."""
    if not line.strip() or line[:1].isspace():
        return False
    bare = _STRING.sub('""', line).split("#", 1)[0].strip()
    if bare.startswith(("**", "`")):
        return True  # never Python at the start of a line
    tokens = _WORD_OR_SYMBOL.findall(bare)
    plain = [(t[:1].isalpha() or t[:1] == "_") and t not in _CODE_WORDS for t in tokens]
    if len(tokens) > 2 and plain[0] and tokens[0][0].isupper() and tokens[1].isalpha() and bare[-1] in ".!?:":
        return True  # "The time complexity is O(n).", "Here is `add_one`:"
    if _code_shaped(bare, tokens):
        return False
    if _SENTENCE.fullmatch(bare) or _LABEL.fullmatch(bare) or (len(tokens) == 2 and plain[0] and tokens[1] == ":"):
        return True
    return any(plain[i] and plain[i + 1] for i in range(len(tokens) - 1))


def _code_shaped(bare: str, tokens: list[str]) -> bool:
    """A keyword first, an assignment, a call / subscript or an operator; in a label line, in its value."""
    if tokens and tokens[0] in _CODE_WORDS and tokens[0].islower():  # not "None of these ..."
        return True
    if _LABEL.fullmatch(bare):
        bare = bare.partition(":")[2]
    return bool(_ASSIGNMENT.search(bare) or _CALL.search(bare) or _OPERATOR.search(bare))


def _prose_free_span(text: str, problem: Problem) -> tuple[int, int]:
    """``text`` without its leading and trailing prose (and blank) lines; all of it when it parses as it is."""
    if _parses(text.strip("\n"), problem):
        return 0, len(text)
    lines = text.split("\n")
    first, last = 0, len(lines)
    while first < last and (not lines[first].strip() or _is_prose(lines[first])):
        first += 1
    while last > first and (not lines[last - 1].strip() or _is_prose(lines[last - 1])):
        last -= 1
    start = sum(len(line) + 1 for line in lines[:first])
    return start, start + len("\n".join(lines[first:last]))


def _parses(code: str, problem: Problem) -> bool:
    if _compiles(code):
        return True
    return code[:1].isspace() and continues_prompt(problem) and _compiles(_prompt_head(problem) + code)


def _complete_with_prompt(code: str, problem: Problem) -> str:
    """Prepend the prompt to a body, or the prompt's missing imports / helpers to a full function.

    A body is joined to the prompt as written (no indentation repair), as the official harness joins them."""
    if not _defines(code, problem.entry_point):
        return _prompt_head(problem) + code if code[:1].isspace() else code  # else: for the tests to judge
    missing = _missing_prompt_parts(code, problem)
    return "\n".join(missing) + "\n\n\n" + code if missing else code


def _missing_prompt_parts(code: str, problem: Problem) -> list[str]:
    """The prompt's import lines and helper functions / classes that ``code`` lacks (in prompt order)."""
    try:
        prompt_tree, code_tree = parse(problem.prompt), parse(code)
    except SyntaxError:
        return []
    code_names = _bound_names(code_tree)
    parts = []
    for node in prompt_tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = {(a.asname or a.name).split(".")[0] for a in node.names}
            if not names <= code_names:
                parts.append(ast.get_source_segment(problem.prompt, node) or ast.unparse(node))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name != problem.entry_point:
            if node.name not in code_names:
                parts.append(ast.get_source_segment(problem.prompt, node) or ast.unparse(node))
    return parts


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _drop_main_block(code: str) -> str:
    try:
        tree = parse(code)
    except SyntaxError:
        return code
    lines = code.split("\n")
    for node in reversed(tree.body):
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            del lines[node.lineno - 1 : node.end_lineno]
    return "\n".join(lines).rstrip()


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    return has_name and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _defines(code: str, name: str, top_level: bool = False) -> bool:
    """True when ``code`` has a ``def name`` line (a regex, so that unfinished code still counts)."""
    if not name:
        return False
    indent = "" if top_level else r"[ \t]*"
    return re.search(rf"^{indent}(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def _compiles(code: str) -> bool:
    try:
        with warnings.catch_warnings():  # model code often has invalid escape sequences
            warnings.simplefilter("ignore")
            compile(code, "<candidate>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def _prompt_head(problem: Problem) -> str:
    """The prompt as the start of a program: no leading blank lines, ending with a newline."""
    return _with_newline(problem.prompt.lstrip("\n"))


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
