"""Errors an operator can act on.

Every problem with input (stack config, CLI arguments, environment) is raised
as a ``ConfigError`` carrying the exact key path, so the CLI can print it and
exit 2 without a traceback, before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where, and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """Bad input. Holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem | str, path: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(path, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"invalid configuration: {self.problems[0]}"
        lines = [f"invalid configuration ({len(self.problems)} problems):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def shown(value: object, limit: int = 80) -> str:
    """A config value as an error message quotes it: control characters escaped, long values cut.

    Messages reach terminals and CI logs; a hostile value must not reach them raw.
    """
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit - 20]!r}... ({len(text):,} characters)"
