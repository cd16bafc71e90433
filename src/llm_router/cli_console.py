"""Where the CLI's messages go: `err`, stderr without wrapping (the terminal wraps; a pipe gets
whole lines), and `error`, one error line whose text is shown as it is (a message's `[...]`,
such as a route's `skipped=[...]`, is text, not rich markup)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

__all__ = ["err", "error"]

err = Console(stderr=True, soft_wrap=True, highlight=False)


def error(message: object) -> None:
    """Print `error: MESSAGE` on stderr."""
    err.print(f"[red]error:[/red] {escape(str(message))}")
