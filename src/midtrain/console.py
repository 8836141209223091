"""Terminal output: one stderr console, one progress-bar helper, markup-safe names.

Progress bars draw only on a terminal (a piped or logged run gets none); tables and messages that
contain user data (study, candidate, store and task names) go through `safe()`, so a name such as
`web[v2]` prints as written instead of being read as rich markup.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

err_console = Console(stderr=True)


def safe(text: object) -> str:
    """User data for a rich string: markup characters escaped."""
    return escape(str(text))


def progress(*columns: Any, enabled: bool = True, transient: bool = True) -> Progress:
    """A stderr progress bar: description, bar, the given columns, ETA; silent when not a TTY.

    Without `columns` it shows `completed/total`.
    """
    cols = columns or (MofNCompleteColumn(),)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *cols,
        TimeRemainingColumn(),
        console=err_console,
        disable=not (enabled and err_console.is_terminal),
        transient=transient,
    )


def unit_column(unit: str) -> tuple[Any, ...]:
    """Columns `completed/total unit` for `progress()`."""
    return (MofNCompleteColumn(), TextColumn(unit))
