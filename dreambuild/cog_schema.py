"""Cog's OpenAPI schema for a predictor and/or train function, built from the Cog SDK's own
introspection (``cog._inspector``), as ``cog build`` writes it to ``.cog/openapi_schema.json``.

coglet validates request inputs only when that file exists, so every place that runs a model
outside a Cog-built image (tests, the local runner, ``dreambuild predict``) writes it first.

    python -m dreambuild.cog_schema --predict trainer/cog_model.py:Predictor --train trainer/cog_model.py:train --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _module_name(file_ref: str) -> tuple[str, str]:
    path, _, attr = file_ref.partition(":")
    module = Path(path).with_suffix("").as_posix().replace("/", ".")
    return module, attr


def _input_schema(info: Any, title: str) -> dict[str, Any]:
    from cog import _adt

    optional = (_adt.Repetition.OPTIONAL, _adt.Repetition.OPTIONAL_REPEATED)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in info.inputs.items():
        prop = dict(field.type.json_type())
        prop.update({"title": name.replace("_", " ").title(), "x-order": field.order})
        if field.description:
            prop["description"] = field.description
        if field.default is not None:
            prop["default"] = field.type.json_encode(field.default)
        elif field.type.repetition not in optional:
            required.append(name)
        for key, value in (
            ("minimum", field.ge),
            ("maximum", field.le),
            ("minLength", field.min_length),
            ("maxLength", field.max_length),
            ("pattern", field.regex),
        ):
            if value is not None:
                prop[key] = value
        if field.choices is not None:
            prop["enum"] = list(field.choices)
        if field.type.repetition in optional:
            prop["nullable"] = True
        properties[name] = prop
    schema: dict[str, Any] = {"title": title, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def build_schema(predict_ref: str | None = None, train_ref: str | None = None) -> dict[str, Any]:
    """The combined OpenAPI document for the given ``file.py:Name`` references."""
    from cog import _inspector

    schemas: dict[str, Any] = {}
    for ref, prefix in ((predict_ref, ""), (train_ref, "Training")):
        if ref:
            info = _inspector.create_predictor(*_module_name(ref))
            schemas[f"{prefix}Input"] = _input_schema(info, f"{prefix}Input")
            schemas[f"{prefix}Output"] = {**info.output.json_type(), "title": f"{prefix}Output"}
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": {}, "components": {"schemas": schemas}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict")
    parser.add_argument("--train")
    parser.add_argument("--out", required=True, help="project directory; writes OUT/.cog/openapi_schema.json")
    ns = parser.parse_args(argv)
    sys.path.insert(0, str(Path.cwd()))
    doc = build_schema(ns.predict, ns.train)
    target = Path(ns.out) / ".cog" / "openapi_schema.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
