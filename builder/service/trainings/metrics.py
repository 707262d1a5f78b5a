"""A training's likeness scores: its output.zip → ``metrics.json`` (``measure_likeness``,
written by :mod:`trainer.likeness`; read bounded, checked value by value, since a ``cog-http``
trainer is another machine's) → the training record's ``metrics.likeness`` (answers, the
completed webhook, ``dreambuild trainings get``). Anything malformed is left out with a warning:
the scores describe a training, they never fail it."""

from __future__ import annotations

import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # metrics.json: a few KB per evaluation
MAX_EVALUATIONS = 1000
SCORES = ("dino", "clip_i", "clip_t", "prior_drift")
TEXTS = 200  # longest kept string: a model's name, a digest, a prompt


def read_likeness(archive: Path) -> dict[str, Any] | None:
    """The checked ``likeness`` of ``archive``'s metrics.json; None when it has none (or a bad one)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo("metrics.json")
            except KeyError:
                return None
            with zf.open(info) as f:
                data = f.read(MAX_BYTES + 1)  # bounded on the bytes read, whatever the entry declares
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        return _checked(json.loads(data)["likeness"])
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError, AttributeError) as exc:  # any shape it may have
        log.warning("%s: metrics.json left out: %s", archive, exc)
        return None


def _score(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise ValueError(f"a score must be a number within [-1, 1], not {value!r}")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value[:TEXTS]


def _evaluation(entry: Any) -> dict[str, Any]:
    step = entry["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a whole number ≥ 0, not {step!r}")
    return {"step": step, **{key: _score(entry[key]) for key in SCORES if key in entry}}


def _checked(likeness: Any) -> dict[str, Any]:
    steps = likeness["steps"]
    if not isinstance(steps, list) or len(steps) > MAX_EVALUATIONS:
        raise ValueError(f"steps must be a list of at most {MAX_EVALUATIONS} evaluations")
    seconds = likeness.get("evaluation_seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e7:
        raise ValueError(f"evaluation_seconds {seconds!r}")
    evaluations = [_evaluation(entry) for entry in steps]
    models = {key: {"name": _text(m["name"]), "digest": _text(m["digest"])} for key, m in likeness["models"].items() if key in ("dino", "clip")}
    kept = likeness.get("kept_step")
    if kept is not None and kept not in [e["step"] for e in evaluations]:
        raise ValueError(f"kept_step {kept!r} is none of the evaluated steps")
    return {
        **({"kept_step": kept} if "kept_step" in likeness else {}),
        "final": evaluations[-1] if evaluations else None,
        "steps": evaluations,
        "models": models,
        "evaluation_seconds": round(float(seconds), 3),
    }
