"""What is wrong with a workflow file, each problem where it is (``file:line:col``).

Every check adds to one list instead of raising, so that ``load_workflow`` and
``fluxcelery validate`` report every problem of a file at once, in file order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import DefinitionError


@dataclass(frozen=True, order=True)
class Problem:
    """One problem of a workflow file; ``line`` and ``col`` count from 1."""

    line: int
    col: int
    message: str
    file: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class WorkflowFileError(DefinitionError):
    """A workflow file is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = tuple(sorted(set(problems)))
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"workflow file {file} has {count} problem{'s' if count != 1 else ''}:\n{lines}"
        )


__all__ = ["Problem", "WorkflowFileError"]
