"""Logging for code that runs inside Cog: plain lines on stdout, which Cog streams as the
prediction's logs, and no library progress bars (our own lines report progress instead)."""

from __future__ import annotations

import logging
import sys


def configure_logging() -> None:
    """Idempotently route ``logging`` to stdout and silence noisy libraries."""
    root = logging.getLogger()
    if not any(getattr(h, "_dreambuild", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._dreambuild = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        for noisy in ("httpx", "urllib3", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
