"""Progress bars for long command-line work: on a terminal only, never in JSON output or pipes.

A bar goes to stderr, and only when stderr is a terminal and the command is not asked for JSON, so
piped or logged output stays clean. Everything else gets a plain iterator (no tqdm import).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def wanted(quiet: bool = False) -> bool:
    """Whether a bar would be shown: not ``quiet`` (``--json``) and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


class _Silent:
    """The bar's interface, doing nothing."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, text: str) -> None: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self):  # returns self, as tqdm does
        return self

    def __exit__(self, *exc: object) -> None: ...


def bar(total: int | None, desc: str, unit: str = "it", quiet: bool = False):
    """A bar to ``update(n)`` by hand (``with bar(...) as b:``), or a silent stand-in."""
    if not wanted(quiet):
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
          quiet: bool = False) -> Iterator[T]:
    """``items`` with a bar that advances once per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit, quiet) as progress:
        for item in items:
            yield item
            progress.update(1)
