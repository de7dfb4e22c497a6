"""Progress bars that suit where the output goes: a live tqdm bar on a terminal, and one plain line every few
seconds otherwise (a log file, a Slurm output, a pipe), never the carriage-return updates that fill a log
with hundreds of overwritten bars. The trainer, the sweep and the demo all make their bars here."""

from __future__ import annotations

import sys
from typing import IO

from tqdm.std import tqdm as _plain_tqdm

LINE_INTERVAL = 10.0  # seconds between two lines when the output is not a terminal
LINE_FORMAT = "{desc}{n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, ETA {remaining}{postfix}"
LINE_FORMAT_NO_TOTAL = "{desc}{n_fmt} {unit}, {elapsed} elapsed{postfix}"


class LineBar(_plain_tqdm):
    """tqdm that writes each refresh as a line of its own (at most one per ``mininterval`` seconds, plus one
    when it closes) instead of redrawing one line with carriage returns."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the bar: nothing was drawn that needs clearing
            return False
        text = (self.__str__() if msg is None else msg).strip()
        self.fp.write(text + "\n")
        self.fp.flush()
        self._shown_n = self.n
        return True

    def close(self) -> None:
        if not self.disable and getattr(self, "_shown_n", None) != self.n:
            self.display()  # the final count, once
        super().close()


def is_terminal(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(total: int | None, *, unit: str = "it", desc: str = "", initial: int = 0, enabled: bool = True,
        file: IO | None = None, leave: bool = False, interval: float | None = None):
    """A progress bar on ``file`` (default stderr): tqdm's live bar on a terminal, :class:`LineBar` lines every
    ``interval`` seconds (default :data:`LINE_INTERVAL`) otherwise; a disabled bar when not ``enabled``."""
    file = sys.stderr if file is None else file
    desc = f"{desc}: " if desc else ""
    if is_terminal(file):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, disable=not enabled, file=file, leave=leave, unit=unit,
                    desc=desc.rstrip(": ") or None, dynamic_ncols=True)
    return LineBar(total=total, initial=initial, disable=not enabled, file=file, leave=False, unit=unit, desc=desc,
                   mininterval=LINE_INTERVAL if interval is None else interval,
                   bar_format=LINE_FORMAT if total is not None else LINE_FORMAT_NO_TOTAL)
