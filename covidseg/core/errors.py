"""The workspace's one error convention.

A problem the user can fix (a missing input, a bad file, a step not run yet) is a WorkflowError whose
message names the file or case and says what to do. Commands run their main through `main_guard`, which
prints it as one 'ERROR:' paragraph and exits with status 1, without a traceback. Exceptions that
libraries raise for such problems are translated where a command calls them (`translate_errors`), with
the original kept as the cause (`raise ... from e`). Anything else is a bug and keeps its traceback.
"""
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Type


class WorkflowError(Exception):
    """A problem the user can fix; printed as one clear message, exit status 1."""


class ProblemsError(WorkflowError):
    """Several problems found at once (e.g. in an input folder); all are reported, none is acted on."""

    def __init__(self, summary: str, problems: Sequence[str]):
        self.summary = summary
        self.problems = list(problems)
        super().__init__(f"{summary}:\n" + "\n".join(f"  - {p}" for p in self.problems))


@contextmanager
def translate_errors(*types: Type[BaseException], context: str) -> Iterator[None]:
    """Turn the library exceptions `types` raised inside the block into a WorkflowError prefixed by `context`."""
    try:
        yield
    except types as e:
        raise WorkflowError(f"{context}: {e}") from e


def main_guard(main: Callable[[Optional[Sequence[str]]], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run a command's main; a WorkflowError becomes one 'ERROR:' message and exit status 1."""
    try:
        main(argv)
    except WorkflowError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
