"""A progress display for the terminal with the standard library only (no tqdm on the device).

On a terminal: one bar line, redrawn in place. Elsewhere (a log file, a pipe): one line per status
change and epoch, no bar, so a log stays readable.
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from .training import TrainingEvent

BAR_MIN = 10


class ProgressBar:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._drawn = False

    def __call__(self, event: TrainingEvent) -> None:
        if self.tty:
            self._draw(event)
        elif event.type == "status":  # its message starts with the status
            print(event.message, file=self.stream, flush=True)
        elif event.type in ("epoch", "stage") or (event.type == "upload" and event.fraction >= 1):
            print(f"{event.status}: {event.message}", file=self.stream, flush=True)

    def _draw(self, event: TrainingEvent) -> None:
        label = "upload" if event.type == "upload" else event.status
        detail = event.message if event.type != "step" else f"epoch {event.epoch}/{event.epochs}, {event.message}"
        width = shutil.get_terminal_size((80, 20)).columns
        bar_width = max(BAR_MIN, min(30, width // 3))
        filled = round(max(0.0, min(1.0, event.fraction)) * bar_width)
        text = f"{label:<9} [{'#' * filled}{'.' * (bar_width - filled)}] {event.fraction:4.0%} {detail}"
        self.stream.write("\r\x1b[K" + text[: width - 1])
        self.stream.flush()
        self._drawn = True
        if event.type == "status" and event.status in ("succeeded", "failed", "cancelled"):
            self.close()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
