"""cog.yaml files validate against Cog's published schema and point at real code."""

import copy
import json
import re
import tomllib

import jsonschema
import pytest
import yaml

from tests.helpers import REPO

SHARED_SCHEMA = REPO.parent / "shared" / "cog" / "config_schema_v1.0.json"
VENDORED_SCHEMA = REPO / "tests" / "data" / "cog_config_schema_v1.0.json"


def cog_schema() -> dict:
    return json.loads(VENDORED_SCHEMA.read_text())


def test_vendored_schema_matches_shared_copy():
    """CI runs on a clean clone, so the schema is vendored; keep it equal to the shared copy."""
    if not SHARED_SCHEMA.exists():
        pytest.skip("no ../shared/cog beside this checkout")
    assert cog_schema() == json.loads(SHARED_SCHEMA.read_text())


def test_root_cog_yaml_is_valid():
    config = yaml.safe_load((REPO / "cog.yaml").read_text())
    jsonschema.validate(config, cog_schema())
    assert config["build"]["gpu"] is True
    assert config["predict"] == "trainer/predict.py:Predictor"
    assert config["train"] == "trainer/predict.py:train"


def test_schema_check_can_fail():
    config = yaml.safe_load((REPO / "cog.yaml").read_text())
    broken = copy.deepcopy(config)
    broken["build"]["python_packages"] = "torch"  # must be a list
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, cog_schema())
    both = {**config, "run": config["predict"]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(both, cog_schema())


def test_entry_points_exist():
    import trainer.predict as module

    config = yaml.safe_load((REPO / "cog.yaml").read_text())
    for key in ("predict", "train"):
        path, name = config[key].split(":")
        assert (REPO / path).is_file()
        assert hasattr(module, name)


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = re.split(r"==", line)
            pins[name.lower()] = version
    return pins


def test_image_requirements_match_pyproject_pins():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = _pins(pyproject["project"]["optional-dependencies"]["trainer"])
    image = _pins((REPO / "requirements" / "trainer.txt").read_text().splitlines())
    assert all("==" in dep for dep in pyproject["project"]["optional-dependencies"]["trainer"])
    shared = set(extra) & set(image)
    assert shared >= {"torch", "diffusers", "transformers", "accelerate"}
    assert {k: extra[k] for k in shared} == {k: image[k] for k in shared}
    assert set(image) - set(extra) == {"bitsandbytes"}
