"""Progress lines at a steady rate: step, loss, learning rate and ETA."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class StepLogger:
    """Logs the first and last step and then one line every ``interval`` seconds."""

    def __init__(self, total: int, interval: float = 10.0, label: str = "step", first: int = 0) -> None:
        self.total, self.interval, self.label = total, interval, label
        self.first = first  # steps done before this run (resumed from a checkpoint): not in the ETA
        self.start = time.monotonic()
        self.last = float("-inf")

    def due(self, step: int) -> bool:
        """Whether :meth:`update` would log ``step`` (callers read values from the GPU only then)."""
        return step in (self.first + 1, self.total) or time.monotonic() - self.last >= self.interval

    def update(self, step: int, **values: float) -> None:
        if not self.due(step):
            return
        now = time.monotonic()
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(step - self.first, 1) * (self.total - step)
        fields = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        log.info("%s %d/%d %s elapsed %s eta %s", self.label, step, self.total, fields, format_seconds(elapsed), format_seconds(eta))
