"""cog.yaml files validate against Cog's published schema and point at real code."""

import copy
import json
import re
import tomllib

import jsonschema
import pytest
import yaml

from templates.inference.catalog import TEMPLATES as CATALOG
from tests.conftest import TEMPLATE_CLASSES
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
    assert config["predict"] == "trainer/cog_model.py:Predictor"
    assert config["train"] == "trainer/cog_model.py:train"


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
    import trainer.cog_model as module

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


TEMPLATES = TEMPLATE_CLASSES


COMPILE_STEP = "python -c \"import compileall,sysconfig;compileall.compile_dir(sysconfig.get_paths()['purelib'],quiet=1,workers=0)\""


def _run_steps(config: dict) -> tuple[list[str], list[str]]:
    """A template's `run` steps after the bytecode step: its downloads, and the step that writes its base's digest."""
    assert config["build"]["run"][0] == COMPILE_STEP
    # A step with a build secret (FLUX.1-dev's Hugging Face token) is a mapping: its command counts.
    steps = [step["command"] if isinstance(step, dict) else step for step in config["build"]["run"][1:]]
    digests = [line for line in steps if line.startswith("python -c ") and "base.digest" in line]
    assert len(digests) <= 1 and steps[-len(digests) or len(steps) :] == digests, "the digest step comes last"
    return [line for line in steps if line not in digests], digests


def test_the_baked_digest_step_computes_pipeline_digest(tiny_base, tmp_path):
    """The `python -c` step of the templates with a base is a deliberate copy of
    dreambuild.layout.pipeline_digest (Cog runs `run` steps before /src exists): same value."""
    import shlex
    import shutil
    import subprocess
    import sys

    from dreambuild.layout import baked_pipeline_digest, pipeline_digest

    steps = {_run_steps(yaml.safe_load((REPO / "templates" / name / "cog.yaml").read_text()))[1][0] for name in TEMPLATES if CATALOG[name].base}
    (step,) = steps  # one copy, the same in every template
    words = shlex.split(step)
    assert words[:2] == ["python", "-c"] and len(words) == 3
    base = shutil.copytree(tiny_base, tmp_path / "opt" / "base")
    code = words[2].replace("/opt/dreambuild/base", str(base))
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "opt" / "base.digest").read_text() == pipeline_digest(tiny_base) + "\n"
    assert baked_pipeline_digest(base) == pipeline_digest(tiny_base)


def test_every_image_installs_its_packages_with_bytecode(tmp_path):
    """The first `run` step of every cog.yaml compiles the packages Cog installed (its pip step writes
    no .pyc, so each cold start would compile torch, diffusers and transformers again): run here
    against a fresh environment's site-packages, it writes their bytecode."""
    import shlex
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    for path in [REPO / "cog.yaml", *sorted((REPO / "templates").glob("*/cog.yaml"))]:
        assert yaml.safe_load(path.read_text())["build"]["run"][0] == COMPILE_STEP, path
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True)
    python = tmp_path / "env" / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert purelib.is_relative_to(tmp_path)
    (purelib / "some_package").mkdir(parents=True)
    (purelib / "some_package" / "__init__.py").write_text("VALUE = 1\n")
    words = shlex.split(COMPILE_STEP)
    subprocess.run([str(python), *words[1:]], check=True, env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    tag = sys.implementation.cache_tag or sysconfig.get_config_var("py_version_nodot")
    assert (purelib / "some_package" / "__pycache__" / f"__init__.{tag}.pyc").is_file()


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_cog_yaml_is_valid_and_points_at_its_class(name):
    import templates.cog_models as module

    config = yaml.safe_load((REPO / "templates" / name / "cog.yaml").read_text())
    jsonschema.validate(config, cog_schema())
    assert config["build"]["gpu"] is True
    assert config["build"]["python_requirements"] == "requirements/templates.txt"
    assert config["predict"] == f"templates/cog_models.py:{TEMPLATES[name]}"
    assert hasattr(module, TEMPLATES[name])
    env = dict(line.split("=", 1) for line in config["environment"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["DREAMBUILD_WEIGHTS"] == "/src/weights"
    # Every baked directory the environment names is written by a `run` step, and vice versa.
    downloads, digests = _run_steps(config)
    baked = {re.search(r"--local-dir (\S+)", line).group(1) for line in downloads}
    named = {v for k, v in env.items() if k in ("DREAMBUILD_SAFETY_CHECKER", "DREAMBUILD_CONTROLNET", "DREAMBUILD_ANNOTATORS", "DREAMBUILD_BASE")}
    assert baked == named
    # ... and they bake what the template's row in the catalog names.
    row = CATALOG[name]
    assert len(baked) == 1 + bool(row.controlnet) + bool(row.annotators) + bool(row.base)
    assert len(digests) == bool(row.base)  # a base's digest is baked with it
    downloads = [line.split("hf download ", 1)[1].split(" --local-dir")[0] for line in downloads]
    if row.controlnet:
        assert f"{row.controlnet} config.json diffusion_pytorch_model.safetensors" in downloads
    for spec in row.annotators:
        assert any(d == spec or d.startswith(spec + " --include") for d in downloads), spec
    if row.base:  # the files the trainer's base takes, so that a LoRA's base digest matches
        from trainer.fetch_base_model import ALLOW, DEFAULT_REPO, FLUX_DEV_REPO, FLUX_SCHNELL_REPO, IGNORE, SDXL_REPO

        (line,) = [d for d in downloads if d.startswith(row.base + " ")]
        assert row.base in (DEFAULT_REPO, SDXL_REPO, FLUX_DEV_REPO, FLUX_SCHNELL_REPO) and env["DREAMBUILD_BASE"] == "/opt/dreambuild/base"
        assert re.findall(r'--include "([^"]+)"', line) == ALLOW and re.findall(r'--exclude "([^"]+)"', line) == IGNORE


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_bake_steps_are_valid_hf_commands(name, tmp_path):
    """Each `run` line parses as an `hf download` command (offline here, so it stops at the network)."""
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    config = yaml.safe_load((REPO / "templates" / name / "cog.yaml").read_text())
    hf = Path(sys.executable).parent / "hf"
    for line in _run_steps(config)[0]:
        words = shlex.split(line)
        if words[1].startswith("HF_TOKEN_PATH="):  # a gated base: the token comes as a build secret
            assert words[1] == "HF_TOKEN_PATH=/run/secrets/hf_token", line
            (secret,) = [s for s in config["build"]["run"] if isinstance(s, dict)]
            assert secret["mounts"] == [{"type": "secret", "id": "hf_token", "target": "/run/secrets/hf_token"}]
            words = [words[0], *words[2:]]
        assert words[0] == "HF_HUB_OFFLINE=0" and words[1:3] == ["hf", "download"], line
        args = [a if a != words[words.index("--local-dir") + 1] else str(tmp_path / "out") for a in words[3:]]
        done = subprocess.run([str(hf), "download", *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 1 and "offline mode is enabled" in done.stdout + done.stderr, done.stderr


def test_every_cog_yaml_pins_the_sdk_of_the_tests():
    """dreambuild/cog_schema.py uses Cog internals: the images must get the SDK it was tested with."""
    pins = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"])
    for path in [REPO / "cog.yaml", *sorted((REPO / "templates").glob("*/cog.yaml"))]:
        assert yaml.safe_load(path.read_text())["build"]["sdk_version"] == pins["cog"], path


def test_image_requirements_match_pyproject_pins():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = _pins(pyproject["project"]["optional-dependencies"]["trainer"])
    image = _pins((REPO / "requirements" / "trainer.txt").read_text().splitlines())
    assert all("==" in dep for dep in pyproject["project"]["optional-dependencies"]["trainer"])
    shared = set(extra) & set(image)
    assert shared >= {"torch", "diffusers", "transformers", "accelerate"}
    assert {k: extra[k] for k in shared} == {k: image[k] for k in shared}
    gpu = _pins(pyproject["project"]["optional-dependencies"]["gpu"])
    assert {k: image[k] for k in set(image) - set(extra)} == gpu  # the GPU extra: bitsandbytes


def test_template_requirements_match_pyproject_pins():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = _pins(extras["trainer"]) | _pins(d for d in extras["templates"] if "==" in d)
    image = _pins((REPO / "requirements" / "templates.txt").read_text().splitlines())
    assert {"compel", "controlnet-aux", "diffusers", "torch"} <= set(image)
    assert {k: pins.get(k) for k in image} == image
    # Cog installs itself into its images; torchao quantises a FLUX LoRA's base in the trainer only
    # (importing transformers imports it when installed: +0.4 s on each template's cold start).
    assert set(pins) - set(image) == {"cog", "torchao"}


def _third_party_imports(package: str) -> dict[str, set[str]]:
    """Top-level modules outside the standard library that ``package`` imports, following the
    project's own modules it imports (dreambuild.layout and the like): module -> importing files."""
    import ast
    import sys
    from pathlib import Path

    own = {"dreambuild", "trainer", "templates", "fixtures"}
    seen: set[Path] = set()
    todo = sorted((REPO / package).rglob("*.py"))
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in own:
                    module = REPO.joinpath(*name.split("."))
                    todo += [module.with_suffix(".py"), module / "__init__.py"]
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("package", ["trainer", "templates"])
def test_each_image_installs_what_its_code_imports(package):
    """Every third-party module the Cog model's code imports (its own modules' imports included) is
    installed by its image's requirements: the tests run in an environment with every extra, so a
    missing one would only show in the built image, at the first training that reaches it."""
    import importlib.metadata

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    image = {normal(name) for name in _pins((REPO / "requirements" / f"{package}.txt").read_text().splitlines())} | {"cog"}
    distributions = importlib.metadata.packages_distributions()
    imports = _third_party_imports(package)
    assert {"torch", "diffusers"} <= set(imports)
    missing = {module: sorted(files) for module, files in imports.items() if not {normal(d) for d in distributions.get(module, [module])} & image}
    assert not missing, f"imported but not in requirements/{package}.txt: {missing}"
