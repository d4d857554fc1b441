"""Bad input becomes one line that names the field and the fix; a bug keeps its traceback.

``cli.py`` catches what :func:`user_message` recognises and prints ``error: <message>`` with exit status 2;
``--debug`` (or ``--log_level DEBUG``) re-raises it with the traceback. The checks themselves live where the
values are used (settings ``__post_init__``, loaders, samplers); this module only decides what reaches the
user as one line, and turns ``jsonargparse``'s usage dumps into "unknown option X; did you mean Y?".
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable
from typing import Any

EXIT_USAGE = 2
COMMANDS = ("fit", "validate", "test", "predict", "demo", "evaluate", "experiment")


class UsageError(ValueError):
    """A command line or config file that does not parse; the message is already the one line to show."""


def user_message(error: BaseException) -> str | None:
    """The line to show for a user error, or ``None`` when ``error`` looks like a bug (keep the traceback)."""
    from egcfg_pl.sampling.api_retry import ApiRequestError, RequestBudgetExceeded

    if isinstance(error, argparse.ArgumentError):
        return explain_parse_error(str(error))
    if isinstance(error, (ValueError, OSError, ImportError, ApiRequestError, RequestBudgetExceeded)):
        error = _innermost(error)
        text = str(error).strip() or type(error).__name__
        return explain_parse_error(text) if _is_jsonargparse_text(text) else text
    if type(error).__name__ == "MisconfigurationException":  # Lightning's own config checks
        return str(error).strip()
    return None


def _is_jsonargparse_text(text: str) -> bool:
    return text.startswith(("Parser key", "Does not validate", "Problem with given class_path"))


def _innermost(error: BaseException) -> BaseException:
    """jsonargparse wraps a settings class's own ValueError ("must be in [0, 1]") in a Union report: unwrap it."""
    while _is_jsonargparse_text(str(error)) and isinstance(error.__cause__, ValueError):
        error = error.__cause__
    return error


def close_match(word: str, options: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def explain_parse_error(message: str, options: Iterable[str] = ()) -> str:
    """One line for a jsonargparse error: the key, what is wrong with it, and a close option when there is one."""
    key = _search(r'Parser key "([^"]+)"', message)
    unaccepted = _search(r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)", message)
    if unaccepted is not None:
        fields = _class_fields(_search(r"class_path '([\w.]+)'", message) or _search(r"<class '([\w.]+)'>", message))
        full = f"{key}.{unaccepted}" if key else unaccepted
        guess = close_match(unaccepted, fields)
        hint = f"did you mean {key + '.' if key else ''}{guess}?" if guess else f"valid: {', '.join(sorted(fields))}"
        return f"unknown option {full}; {hint}" if fields else f"unknown option {full}; see --help"
    unrecognized = _search(r"(?i)unrecognized arguments: (.+)", message)
    if unrecognized is not None:
        first = unrecognized.split()[0]
        guess = close_match(first, [o for o in options if o.startswith("--")])
        hint = f"did you mean {guess}?" if guess else "see --help for the options"
        return f"unknown option {first}; {hint}"
    command = _search(r"invalid choice: '([^']+)'", message)
    if command is not None or 'expected "subcommand"' in message:
        guess = close_match(command or "", COMMANDS)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        head = f"unknown command {command!r}{hint}" if command else "no command given"
        return f"{head}; commands: {', '.join(COMMANDS)} (python cli.py --help)"
    expected = _search(r"(Expected a <class '\w+'>.*)", message)
    if key and expected:
        return f"invalid value for {key}: {expected.replace('<class ', '').replace('>', '')}"
    return _one_line(message)


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def _class_fields(path: str | None) -> list[str]:
    """Field names of the settings class ``path`` (a dataclass or a class's ``__init__``), [] if unknown."""
    if not path or "." not in path:
        return []
    module, _, name = path.rpartition(".")
    try:
        cls: Any = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]


def _one_line(message: str) -> str:
    """jsonargparse's nested explanation folded to one line: the key and the innermost reasons."""
    lines = [line.strip(" -") for line in message.strip().splitlines() if line.strip()]
    skip = ("Subtypes:", "Errors:", "Given value", "Does not validate", "Expected a <class 'NoneType'>", "Problem with")
    useful = [line for line in lines if not line.startswith(skip)]
    text = "; ".join(dict.fromkeys(useful)) if useful else message.strip()
    return re.sub(r'^Parser key "([^"]+)":;?\s*', r"--\1: ", text)
