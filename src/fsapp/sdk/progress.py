"""A progress bar for long CLI work (file ingest, materialize), on stderr.

On a terminal it redraws one line (`\\r`); otherwise (a log file, CI) it
prints a plain line at most every 10% so logs stay readable. No dependency."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, total: int | None = None, unit: str = "rows", stream=None, width: int = 28):
        self.what, self.total, self.unit, self.width = what, total, unit, width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.extra = ""
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        self.extra = extra or self.extra
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1:  # redraw at most 10 times a second
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        elif self.total:
            decile = min(10, self.done * 10 // max(self.total, 1))
            if decile > self._last_decile and decile < 10:
                self._last_decile = decile
                print(self._line(), file=self.stream, flush=True)

    def _line(self) -> str:
        secs = time.monotonic() - self.started
        rate = f", {self.done / secs:,.0f} {self.unit}/s" if secs > 0.05 and self.unit == "rows" else ""
        extra = f" {self.extra}" if self.extra else ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
            return f"{self.what} [{bar}] {frac:4.0%} {self.done:,}/{self.total:,} {self.unit} {secs:.1f}s{rate}{extra}"
        return f"{self.what}: {self.done:,} {self.unit} {secs:.1f}s{rate}{extra}"

    def close(self) -> None:
        line = self._line()
        if self.tty:
            self.stream.write("\r" + line + "\n")
        else:
            print(line, file=self.stream)
        self.stream.flush()
