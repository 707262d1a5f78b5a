"""``dreambuild predict``: one prediction of a model image, with or without Docker.

image → with a Docker engine: the image as a container (:mod:`builder.cog.container`); without:
its ``/src`` and ``/opt/dreambuild`` from the layer cache (:mod:`builder.cog.unpack`) and the
entry point its ``cog.yaml`` names in a local Cog server (:mod:`builder.cog.server`) with this
Python environment and the image's environment (paths mapped) → inputs typed by the model's
schema (locally: checked before the model loads) → one prediction (:class:`builder.cog.client.CogClient`) → output files.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import yaml

from builder.cog.client import CogClient
from builder.cog.container import engine_available, start_cog_container
from builder.cog.server import start_cog_server, write_schema
from builder.cog.unpack import unpack_src
from builder.settings import BuilderSettings
from dreambuild.errors import InputError


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    """``key=value`` pairs; ``key=@path`` reads a file (sent as a data URL)."""
    inputs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"input {pair!r} is not key=value")
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            if not path.is_file():
                raise InputError(f"input {key}: file {path} does not exist")
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            value = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
        inputs[key] = value
    return inputs


def coerce(inputs: dict[str, str], schema: dict) -> dict:
    """Give each value the type the model's OpenAPI schema declares for it."""
    properties = schema.get("components", {}).get("schemas", {}).get("Input", {}).get("properties", {})
    typed: dict = {}
    for key, value in inputs.items():
        spec = properties.get(key)
        if spec is None:
            raise InputError(f"the model has no input {key!r} (it has: {', '.join(sorted(properties))})")
        kind = spec.get("type") or next((s.get("type") for s in spec.get("anyOf", []) if s.get("type") != "null"), "string")
        try:
            if kind == "integer":
                typed[key] = int(value)
            elif kind == "number":
                typed[key] = float(value)
            elif kind == "boolean":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                typed[key] = value.lower() in ("true", "1", "yes")
            else:
                typed[key] = value
        except ValueError:
            raise InputError(f"input {key} must be {kind}, not {value!r}") from None
    return typed


def _write_outputs(output, out_dir: Path) -> list[Path]:
    items = output if isinstance(output, list) else [output]
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items):
        match = re.match(r"^data:([^;,]+)?(;base64)?,(.*)$", item, re.S) if isinstance(item, str) else None
        if match:
            suffix = mimetypes.guess_extension(match.group(1) or "") or ".bin"
            path = out_dir / f"output-{i}{suffix}"
            path.write_bytes(base64.b64decode(match.group(3)) if match.group(2) else match.group(3).encode())
        else:
            path = out_dir / f"output-{i}.json"
            path.write_text(json.dumps(item, indent=2))
        written.append(path)
    return written


ENGINES = ("auto", "local", "docker")


def predict(
    image: str,
    pairs: list[str],
    out_dir: Path,
    *,
    weights: Path | None = None,
    engine: str = "auto",
    gpus: bool = True,
    settings: BuilderSettings | None = None,
    on_step=lambda message: None,
) -> list[Path]:
    """Run one prediction of ``image`` with ``key=value`` inputs; return the written files.

    ``engine``: ``docker`` runs the image with the engine at DOCKER_HOST; ``local`` unpacks it
    and runs it in a local Cog server; ``auto`` uses docker when an engine answers and the
    image is in a registry (and no ``weights`` are given), else local.
    """
    inputs = parse_inputs(pairs)
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
    if weights is not None and not (Path(weights) / "model_index.json").is_file():
        raise InputError(f"--weights {weights} is not a diffusers pipeline directory (no model_index.json)")
    if engine == "auto":
        engine = "docker" if weights is None and not image.startswith("oci:") and engine_available() else "local"
    if engine == "docker":
        if weights is not None or image.startswith("oci:"):
            raise InputError("the docker engine runs registry images as they are: use --engine local for --weights or oci: images")
        return _predict_in_docker(image, inputs, out_dir, gpus=gpus, on_step=on_step)
    unpacked = unpack_src(image, settings)
    on_step(f"image {unpacked.reference}: /src at {unpacked.src}")
    try:
        config = yaml.safe_load((unpacked.src / "cog.yaml").read_text())
        entry = config["predict"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise InputError(f"{unpacked.reference} is not a Cog model: /src/cog.yaml with a predict entry is missing") from None
    env = unpacked.env()
    if weights is not None:
        env["DREAMBUILD_WEIGHTS"] = str(Path(weights).resolve())
    with tempfile.TemporaryDirectory(prefix="dreambuild-predict-") as project:
        # The inputs are typed and checked before the model loads: a wrong one fails in seconds.
        schema = unpacked.labelled_schema() or json.loads(write_schema(Path(project), predict=entry, code_root=unpacked.src).read_text())
        typed = coerce(inputs, schema)
        on_step(f"starting {entry} in a local Cog server")
        server = start_cog_server(entry, Path(project), env=env, code_root=unpacked.src, schema=schema)
        return _predict_once(server.url, typed, out_dir, server.stop, on_step)


def _predict_once(url: str, typed: dict, out_dir: Path, stop: Callable[[], None], on_step) -> list[Path]:
    """Run one prediction, stop the server, write outputs."""
    client = CogClient(url, what="model")
    try:
        on_step("predicting")
        result = client.predict(typed)
    finally:
        stop()
    return _write_outputs(result.get("output"), out_dir)


def _predict_in_docker(image: str, inputs: dict[str, str], out_dir: Path, *, gpus: bool, on_step) -> list[Path]:
    """``docker run`` the image (its own Python and CUDA), one prediction, then remove it."""
    on_step(f"running {image} with the Docker engine")
    container = start_cog_container(image, name=f"dreambuild-predict-{uuid.uuid4().hex[:12]}", gpus=gpus, what="model image")
    try:
        typed = coerce(inputs, CogClient(container.url, what="model").openapi())
    except BaseException:
        container.stop()
        raise
    return _predict_once(container.url, typed, out_dir, container.stop, on_step)
