"""This checkout's Cog model sources: the trainer (``trainer/``, root ``cog.yaml``), the
templates (``templates/``) and the core they share (``dreambuild/``), plus the tiny-model fixture
generator (``fixtures/``).

Inside a Cog image these folders are ``/src``. On the host, the ``local`` runner, the template
image writer and the demo run them from the checkout; they are not part of the installed
``dreambuild`` distribution (see the README, "Packages").
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from dreambuild.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def has_checkout() -> bool:
    """Whether this install runs from a checkout (else from a wheel: no trainer sources beside it)."""
    return (REPO_ROOT / "trainer" / "cog_model.py").is_file() and (REPO_ROOT / "cog.yaml").is_file()


def require_checkout(what: str) -> Path:
    """Make the checkout's model sources importable; fail clearly where there is none."""
    if not has_checkout() or not (REPO_ROOT / "fixtures").is_dir():
        raise InputError(f"{what} runs this repository's trainer and templates: run it from a dreambuild checkout")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return REPO_ROOT


def sources_digest(*patterns: str, extra: str = "") -> str:
    """A digest of the checkout's files matching ``patterns`` (globs under the root) and ``extra``:
    a key for what is computed from them."""
    digest = hashlib.sha256(extra.encode() + b"\0")
    for path in sorted({p for pattern in patterns for p in REPO_ROOT.glob(pattern) if p.is_file()}):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def user_cache(name: str) -> Path:
    """``$XDG_CACHE_HOME/dreambuild/<name>`` (``~/.cache`` by default): what this machine computed
    from a checkout's sources, content-addressed, shared by every data directory and clone."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "dreambuild" / name
