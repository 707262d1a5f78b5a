"""Cog's failures as their users read them: coglet's error or a server's log → the one line that
says what went wrong (the last exception, coglet's framing said once) → no path of the host.

The whole log stays with the operator (the service's own log): a user of a shared service never
sees the machine's directories, temporary files or coglet's JSON log lines.
"""

from __future__ import annotations

import json
import re

# coglet frames an error once per layer that passes it on: "worker setup failed: worker setup
# failed (slot …): Setup failed: setup failed: FileNotFoundError: …", "Prediction failed: …".
FRAMING = re.compile(r"^\s*(?:(?:worker )?setup failed(?: \(slot [^)]*\))?|prediction failed)\s*:\s*", re.I)
EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure)\b(?::.*)?$")
# An absolute path standing alone (not a URL's path or query: no word character, '/', ':', '.', '=', … before it).
HOST_PATH = re.compile(r"(?<![\w/:.~=&?%-])/(?:[^\s'\"()<>,;:/]+/)*[^\s'\"()<>,;:/]*")
IMAGE_ROOT = re.compile(r"/images/[^/]+/root(/.+)$")  # a layer cache's unpacked image: the image's own path


def prediction_error(error: object) -> str:
    """Cog's error of a failed prediction or setup without coglet's framing (said once per layer
    that re-raised it), so that callers say it once in their own words."""
    text = str(error or "").strip()
    while (framing := FRAMING.match(text)) is not None:
        text = text[framing.end() :].strip()
    return text or "no reason given"


def log_error(logs: str) -> str | None:
    """The last error a Cog server's log reports (coglet's JSON lines, or plain output): the
    last Python exception line, or the ``error`` of coglet's last ERROR line; None if none."""
    found = None
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            fields = entry.get("fields") if isinstance(entry, dict) else None
            if not isinstance(fields, dict):
                continue
            if entry.get("level") == "ERROR" and isinstance(fields.get("error"), str) and found is None:
                found = prediction_error(fields["error"])
            line = str(fields.get("message", "")).strip()
        if EXCEPTION.match(line):
            return line
    return found


def without_host_paths(text: str) -> str:
    """``text`` with every absolute path of the host replaced by the file's name (a path in an
    unpacked image by its path in the image; the image's own ``/src/…`` stays)."""

    def name(match: re.Match) -> str:
        path = match.group(0)
        if path.startswith("/src/"):
            return path
        inside = IMAGE_ROOT.search(path)
        if inside:
            return inside.group(1)
        return path.rstrip("/").rsplit("/", 1)[-1] or "/"

    return HOST_PATH.sub(name, text)
