"""Trainer versions' Cog schemas, and a training's input checked against its trainer's.

version → schema, read once, published in the database (``trainer_schema/<version>``: an API
without the trainer's code reads what a worker published) and cached as
``data_dir/schemas/<version>.json`` (``local``: generated from the checkout's trainer, as
``cog build`` would, once per source for every data directory; ``cog-http``: the server's ``/openapi.json``;
``docker``: the image's ``run.cog.openapi_schema`` label, read from its registry without pulling)
→ at creation: unknown keys, JSON types, ranges, choices and required inputs (422 naming the
field; of an input with two names, one) → file inputs (Cog ``Path``: ``format: uri``), which must be http(s) URLs. The local runner
hands the cached schema to its Cog server instead of generating it again for every training.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from builder.checkout import sources_digest, user_cache
from builder.cog.client import CogClient
from builder.cog.server import write_schema
from builder.cog.unpack import SCHEMA_LABEL
from builder.oci.resolve import resolve_image
from builder.service.config import ServiceConfig, TrainerEntry
from builder.service.store.database import Database
from dreambuild.errors import DreambuildError

log = logging.getLogger(__name__)


class SchemaUnavailable(DreambuildError):
    """A trainer version's Cog schema cannot be read."""


class TrainerSchemas:
    """The catalog's trainer schemas, each read once (per process: memory; across restarts: disk)."""

    def __init__(self, config: ServiceConfig, db: Database | None = None) -> None:
        self.config, self.db = config, db
        self._schemas: dict[str, dict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, version: str) -> dict:
        """The schema of catalog version ``version``; raises :class:`SchemaUnavailable`."""
        with self._guard:
            lock = self._locks.setdefault(version, threading.Lock())
        with lock:  # one read per version, however many requests wait for it
            if version not in self._schemas:
                self._schemas[version] = self._load(version)
            return self._schemas[version]

    def warm(self) -> None:
        """Read every trainer's schema in the background, so that the first request need not wait."""

        def run() -> None:
            for version in list(self.config.trainers):
                try:
                    self.get(version)
                except DreambuildError as exc:
                    log.warning("trainer version %s: %s", version, exc)

        threading.Thread(target=run, name="trainer-schemas", daemon=True).start()

    def _load(self, version: str) -> dict:
        """Published in the database, else cached on disk, else read (then published and cached)."""
        entry = self.config.trainers[version]
        key = f"trainer_schema/{version.removeprefix('sha256:')}"
        published = self.db.settings.get(key, str) if self.db is not None else ""
        cached = self.config.data_dir / "schemas" / f"{version.removeprefix('sha256:')}.json"
        schema = json.loads(published) if published else None
        if schema is None:
            try:
                schema = json.loads(cached.read_text())
            except (OSError, ValueError):
                pass
        if schema is None:
            try:
                schema = _read(entry, self.config)
            except DreambuildError as exc:
                raise SchemaUnavailable(f"the schema of trainer version {version} ({entry.name}) cannot be read: {exc}") from None
        if not isinstance(input_schema(schema), dict):
            raise SchemaUnavailable(f"trainer version {version} ({entry.name}) has a Cog schema without an Input")
        if self.db is not None and not published:  # for API replicas and workers that cannot read it themselves
            self.db.settings.set(key, json.dumps(schema))
        if not cached.is_file():
            _write_whole(cached, schema)
        return schema


def _read(entry: TrainerEntry, config: ServiceConfig) -> dict:
    if entry.runner == "local":
        return local_schema(entry.predictor)
    if entry.runner == "cog-http":
        if not entry.pool:
            raise SchemaUnavailable("the cog-http runner has no url")
        return CogClient(entry.pool[0], what="trainer's Cog server").openapi()
    if not entry.image:
        raise SchemaUnavailable("the docker runner names no image")
    image = resolve_image(entry.image, config.builder_settings(), what="trainer image")
    label = ((image.config.get("config") or {}).get("Labels") or {}).get(SCHEMA_LABEL)
    if not label:
        raise SchemaUnavailable(f"the image {image.reference} has no {SCHEMA_LABEL} label (build it with cog build)")
    try:
        return json.loads(label)
    except ValueError:
        raise SchemaUnavailable(f"the image's {SCHEMA_LABEL} label is not JSON") from None


def local_schema(predictor: str) -> dict:
    """The schema of this checkout's ``predictor`` (``trainer/cog_model.py:Predictor``): generated
    by a subprocess that imports the trainer (seconds), once per source, then read from the user's
    cache (:func:`builder.checkout.user_cache`), keyed by the trainer's and the core's sources and
    Cog's version, for every data directory and restart."""
    from importlib.metadata import version as installed

    key = sources_digest("trainer/*.py", "dreambuild/*.py", "cog.yaml", extra=f"{predictor}\0cog {installed('cog')}")
    cached = user_cache("schemas") / f"{key}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory(prefix="dreambuild-schema-") as project:
        schema = json.loads(write_schema(Path(project), predict=predictor).read_text())
    try:
        _write_whole(cached, schema)
    except OSError as exc:  # a read-only home: generated again next time
        log.warning("could not cache the trainer's schema at %s: %s", cached, exc)
    return schema


def _write_whole(path: Path, schema: dict) -> None:
    """Written whole or not at all: a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(schema))
    tmp.replace(path)


def model_schema(image: str, settings, db: Database | None = None) -> tuple[dict, str]:
    """A model image's Cog schema and Cog version: its ``run.cog.*`` labels (``cog build`` writes
    them; a version built on a template inherits them), else generated from its ``/src`` as
    ``dreambuild predict`` does. Published in the database per image digest: a template's
    versions all share its code, so its schema is made once."""
    import yaml

    from builder.cog.unpack import unpack_src
    from builder.oci.references import normalize_digest

    # Keyed by the digest the reference pins (a template version), so that every build after a
    # template's first needs no registry round trip, and an index and its manifest are one key.
    digest = normalize_digest(image.rsplit("@", 1)[-1]) if "@" in image else None
    resolved = None if digest else resolve_image(image, settings, what="model image")
    key = f"model_schema/{(digest or resolved.manifest.digest).removeprefix('sha256:')}"
    published = db.settings.get(key, str) if db is not None else ""
    if published:
        found = json.loads(published)
        return found["schema"], found["cog_version"]
    resolved = resolved or resolve_image(image, settings, what="model image")
    labels = (resolved.config.get("config") or {}).get("Labels") or {}
    cog_version = labels.get("run.cog.version") or ""
    if labels.get(SCHEMA_LABEL):
        try:
            schema = json.loads(labels[SCHEMA_LABEL])
        except ValueError:
            raise SchemaUnavailable(f"the image's {SCHEMA_LABEL} label is not JSON") from None
    else:
        unpacked = unpack_src(resolved.reference, settings)
        try:
            cog = yaml.safe_load((unpacked.src / "cog.yaml").read_text())
            entry = cog["predict"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            raise SchemaUnavailable(f"{resolved.reference} is not a Cog model: /src/cog.yaml with a predict entry is missing") from None
        with tempfile.TemporaryDirectory(prefix="dreambuild-schema-") as project:
            schema = json.loads(write_schema(Path(project), predict=entry, code_root=unpacked.src).read_text())
        cog_version = cog_version or str((cog.get("build") or {}).get("sdk_version") or "")
    if db is not None:
        db.settings.set(key, json.dumps({"schema": schema, "cog_version": cog_version}))
    return schema, cog_version


def input_schema(schema: dict) -> dict | None:
    return ((schema.get("components") or {}).get("schemas") or {}).get("Input")


def file_inputs(schema: dict) -> set[str]:
    """The inputs that are files (Cog ``Path``/``File``: ``format: uri``, alone or in a list)."""
    found = set()
    for name, spec in (input_schema(schema) or {}).get("properties", {}).items():
        for candidate in (spec, spec.get("items") or {}, *spec.get("anyOf", []), *spec.get("allOf", [])):
            if isinstance(candidate, dict) and candidate.get("format") == "uri":
                found.add(name)
    return found


def input_problems(schema: dict, inputs: dict[str, Any]) -> list[str]:
    """What is wrong with ``inputs`` for this Cog schema, a ``input.<name>: <problem>`` each."""

    spec = input_schema(schema) or {}
    properties = spec.get("properties") or {}
    problems = [f"input.{key}: unknown input (this model takes: {', '.join(sorted(properties))})" for key in inputs if key not in properties]
    problems += [f"input.{key}: required" for key in spec.get("required") or [] if key not in inputs]
    checked = {  # OpenAPI 3.0's `nullable` as JSON Schema, the rest as Cog wrote it
        "type": "object",
        "properties": {name: ({"anyOf": [prop, {"type": "null"}]} if prop.get("nullable") else prop) for name, prop in properties.items()},
        "components": schema.get("components") or {},  # where Cog's $refs (enums) point
    }
    validator = _validator(json.dumps(checked, sort_keys=True))
    for error in sorted(validator.iter_errors({k: v for k, v in inputs.items() if k in properties}), key=lambda e: list(e.path)):
        field = ".".join(str(p) for p in error.absolute_path)
        problems.append(f"input.{field}: {_message(error)}")
    return problems


# Inputs a trainer takes under two names (the seed's and Replicate's FLUX trainer's), so its
# schema cannot mark either required: one of each group is, where the schema has the whole group.
ONE_OF = (("instance_data", "input_images"), ("instance_prompt", "trigger_word", "token_string"))


def missing_alternatives(schema: dict, inputs: dict[str, Any]) -> list[str]:
    """``input.<name>: required (or …)`` for each :data:`ONE_OF` group none of whose inputs is given."""
    properties = (input_schema(schema) or {}).get("properties") or {}
    return [
        f"input.{group[0]}: required (or {' or '.join(group[1:])})"
        for group in ONE_OF
        if all(name in properties for name in group) and all(inputs.get(name) in (None, "") for name in group)
    ]


@functools.lru_cache(maxsize=64)
def _validator(checked: str):
    """One validator per schema (building one costs more than checking an input)."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(checked))


def _message(error) -> str:
    if error.validator == "anyOf":  # a nullable input: say what the value itself lacks
        inner = [e for e in error.context if e.validator != "type" or e.validator_value != "null"]
        return inner[0].message if inner else error.message
    return error.message
