"""Command-line errors that suggest the fix: "did you mean --server?".

argparse (Python 3.11) names an unknown flag or subcommand and stops there. `suggest_close`
makes a parser, and every subparser under it, add the closest known spelling to its error
(`difflib.get_close_matches` over the option strings and the subcommand or choice names), so
``thermoledger push --sever URL`` answers ``unknown flag --sever; did you mean --server?``.

It lives at the top of the distribution, beside no package, because both command lines use it:
the meter's (``thermoledger``), which must not import the service, and the server's
(``thermoledger-server``), which may import only the meter's wire schema. It imports the
standard library only, so the meter's import cost does not grow.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Iterator
from typing import NoReturn

__all__ = ["suggest_close", "suggestion"]

#: How alike a typo and a known name must be (`difflib.SequenceMatcher.ratio`).
_CUTOFF = 0.6
_UNRECOGNIZED = "unrecognized arguments: "
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$", re.DOTALL)
_QUOTED = re.compile(r"'([^']*)'")


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subparser below it, each once."""
    seen: set[int] = set()
    stack = [parser]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every long and short option string of ``parser``'s tree (``--server``, ``-v``)."""
    return sorted(
        {
            option
            for p in _parsers(parser)
            for action in p._actions
            for option in action.option_strings
        }
    )


def _close(word: str, known: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, known, n=1, cutoff=_CUTOFF)
    return matches[0] if matches else None


def suggestion(message: str, options: list[str]) -> str | None:
    """The hint for an argparse error ``message``, if a known name is close to the bad one.

    Args:
        message: What argparse would print after ``error:``.
        options: The option strings the command knows (for unknown flags).

    Returns:
        ``"unknown flag --sever; did you mean --server?"`` or ``"did you mean 'serve'?"``, or
        None when nothing known is close enough.
    """
    if message.startswith(_UNRECOGNIZED):
        hints = []
        for token in message[len(_UNRECOGNIZED) :].split():
            flag = token.split("=", 1)[0]
            if not flag.startswith("-") or flag == "--":
                continue
            close = _close(flag, options)
            if close is not None:
                hints.append(f"unknown flag {flag}; did you mean {close}?")
        return "; ".join(hints) or None
    match = _INVALID_CHOICE.search(message)
    if match is not None:
        close = _close(match.group(1), _QUOTED.findall(match.group(2)))
        if close is not None:
            return f"did you mean {close!r}?"
    return None


def suggest_close(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` and its subparsers suggest the closest name in their usage errors.

    Call it on the finished parser (after every subcommand is added). The exit status and the
    usage line stay argparse's (2); only the message grows.

    Returns:
        ``parser`` itself, for ``parser = suggest_close(build_parser())``.
    """
    options = _options(parser)
    for current in _parsers(parser):
        # An instance attribute: argparse calls self.error(...) on the parser that failed.
        current.error = _suggesting(current.error, options)  # type: ignore[method-assign,assignment]
    return parser


def _suggesting(
    original: Callable[[str], NoReturn], options: list[str]
) -> Callable[[str], NoReturn]:
    def error(message: str) -> NoReturn:
        hint = suggestion(message, options)
        original(f"{message} ({hint})" if hint else message)

    return error
