import os
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental hub download fails loudly

import pytest

from builder.cog.server import start_cog_server
from fixtures.tiny_models import build_tiny_sd
from templates.inference.catalog import TEMPLATES as CATALOG


def built(tmp_path_factory, name: str, build: Callable[..., Path], **kwargs) -> Path:
    """``build(dest, **kwargs)`` of fixtures/tiny_models.py, made once per version of that file, of
    the libraries that write the weights and of ``kwargs``, in the user's cache; each session gets
    its own tree of hard links to it (0.8 GB of annotators are not copied; tests may add files
    beside a model, and no test writes into a model's files)."""
    import hashlib
    import shutil
    import uuid
    from importlib.metadata import version

    from builder.checkout import sources_digest, user_cache

    libraries = " ".join(f"{lib} {version(lib)}" for lib in ("torch", "diffusers", "transformers", "controlnet-aux"))
    generator = sources_digest("fixtures/tiny_models.py", extra=libraries)[:16]
    call = hashlib.sha256(f"{build.__name__} {sorted(kwargs.items())}".encode()).hexdigest()[:16]
    cached = user_cache("test-models") / f"{generator}-{call}"
    if not cached.is_dir():
        for old in cached.parent.glob("*-*"):  # another generator's models (the annotators are 0.8 GB)
            if not old.name.startswith((generator, ".")):
                shutil.rmtree(old, ignore_errors=True)
        tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}")
        build(tmp, **kwargs)
        try:
            tmp.rename(cached)  # whole or not at all
        except OSError:  # another session put it there first
            shutil.rmtree(tmp, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    return shutil.copytree(cached, tmp_path_factory.mktemp("models") / name, copy_function=link)


# The test files xdist starts first (pyproject: a file per worker, in this order): the longest,
# so that no worker is left running one of them while the other has finished. Seconds on two
# cores in the run recorded in the README; the other files follow in their own order.
LONGEST_FIRST = (
    "test_workers.py",
    "test_journey.py",
    "test_service.py",
    "test_predictions.py",
    "test_trainer_server.py",
    "test_predict.py",
    "test_templates_server.py",
    "test_templates_controlnet.py",
    "test_dashboard.py",
    "test_templates_compiled.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The trainer's default base: a tiny random SD pipeline (seed 0)."""
    return built(tmp_path_factory, "tiny-sd", build_tiny_sd)


@pytest.fixture(scope="session")
def other_base(tmp_path_factory):
    """A second tiny pipeline with different weights (seed 1), to tell bases apart."""
    return built(tmp_path_factory, "tiny-sd-other", build_tiny_sd, seed=1)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """A tiny random SDXL pipeline (two text encoders, text-and-time conditioning)."""
    from fixtures.tiny_models import build_tiny_sdxl

    return built(tmp_path_factory, "tiny-sdxl", build_tiny_sdxl)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """A tiny random FLUX.1-dev pipeline (guidance-distilled transformer, CLIP and T5, 16-channel VAE)."""
    from fixtures.tiny_models import build_tiny_flux

    return built(tmp_path_factory, "tiny-flux", build_tiny_flux)


@pytest.fixture(scope="session")
def tiny_flux_schnell(tmp_path_factory):
    """A tiny random FLUX.1-schnell pipeline (no guidance embedding, 256 T5 tokens)."""
    from fixtures.tiny_models import build_tiny_flux

    return built(tmp_path_factory, "tiny-flux-schnell", build_tiny_flux, schnell=True, seed=1)


@pytest.fixture(scope="session")
def trainer_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("trainer-work")


@pytest.fixture(scope="session")
def eval_models(tmp_path_factory):
    """Tiny random likeness models (DINO and CLIP), where trainer.fetch_eval_models writes them."""
    from fixtures.tiny_models import build_tiny_eval_models

    return built(tmp_path_factory, "eval-models", build_tiny_eval_models)


def _trainer_server(tmp_path_factory, tiny_base, workdir, train, eval_models=None):
    project = tmp_path_factory.mktemp("trainer-train" if train else "trainer-predict")
    env = {"DREAMBUILD_BASE_MODEL": str(tiny_base), "DREAMBUILD_WORKDIR": str(workdir)}
    if eval_models is not None:
        env["DREAMBUILD_EVAL_MODELS"] = str(eval_models)
    server = start_cog_server("trainer/cog_model.py:" + ("train" if train else "Predictor"), project, train=train, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="module")  # one test module uses it: its memory is freed after it
def trainer_predict_server(tmp_path_factory, tiny_base, trainer_workdir, eval_models):
    """The trainer in the real Cog HTTP server, predict mode, with Cog's schema (and the likeness models)."""
    yield from _trainer_server(tmp_path_factory, tiny_base, trainer_workdir, train=False, eval_models=eval_models)


@pytest.fixture(scope="module")  # one test module uses it: its memory is freed after it
def trainer_train_server(tmp_path_factory, tiny_base, trainer_workdir):
    """The trainer in the real Cog HTTP server, train mode (`--x-mode train`)."""
    yield from _trainer_server(tmp_path_factory, tiny_base, trainer_workdir, train=True)


# --- templates -------------------------------------------------------------------------------

INSTANCE_PROMPT = "a photo of a cjw toy"


@pytest.fixture(scope="session")
def fine_tune(tmp_path_factory, tiny_base):
    """A trainer-shaped output: the tiny pipeline plus args.json with an instance prompt."""
    import json
    import shutil

    dest = tmp_path_factory.mktemp("models") / "fine-tune"
    shutil.copytree(tiny_base, dest)
    (dest / "args.json").write_text(json.dumps({"instance_prompt": INSTANCE_PROMPT, "resolution": 64}))
    return dest


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory, tiny_base):
    from fixtures.tiny_models import build_tiny_controlnet

    return build_tiny_controlnet(tmp_path_factory.mktemp("models") / "controlnet", tiny_base)


@pytest.fixture(scope="session")
def annotators(tmp_path_factory):
    from fixtures.tiny_models import build_openpose_annotators

    return built(tmp_path_factory, "annotators", build_openpose_annotators)


@pytest.fixture(scope="session")
def aux_annotators(tmp_path_factory):
    """Random HED, M-LSD, NormalBae and PiDiNet checkpoints (full size: built once)."""
    from fixtures.tiny_models import build_aux_annotators

    return built(tmp_path_factory, "aux-annotators", build_aux_annotators)


@pytest.fixture(scope="session")
def depth_estimator(tmp_path_factory):
    from fixtures.tiny_models import build_tiny_depth_estimator

    return built(tmp_path_factory, "depth", build_tiny_depth_estimator)


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory):
    from fixtures.tiny_models import build_tiny_segmenter

    return built(tmp_path_factory, "seg", build_tiny_segmenter)


@pytest.fixture(scope="session")
def loras(tmp_path_factory, tiny_base):
    """Two random LoRAs for the tiny pipeline in diffusers/peft keys and one in kohya keys."""
    from fixtures.tiny_models import build_tiny_lora

    root = tmp_path_factory.mktemp("loras")
    return {
        "diffusers": build_tiny_lora(root / "a.safetensors", tiny_base),
        "other": build_tiny_lora(root / "b.safetensors", tiny_base, seed=1),
        "kohya": build_tiny_lora(root / "kohya.safetensors", tiny_base, kohya=True, seed=2),
    }


def _lora_output(dest: Path, base: Path, adapters: Path) -> Path:
    import json
    import shutil

    from dreambuild.layout import LORA_WEIGHTS, pipeline_digest

    shutil.copy(adapters, dest / LORA_WEIGHTS)
    (dest / "args.json").write_text(json.dumps({"instance_prompt": INSTANCE_PROMPT, "lora_rank": 4, "base_digest": pipeline_digest(base)}))
    return dest


@pytest.fixture(scope="session")
def lora_output(tmp_path_factory, tiny_base, loras):
    """A LoRA training's output for the tiny base: the adapters and args.json naming the base."""
    return _lora_output(tmp_path_factory.mktemp("lora-output"), tiny_base, loras["diffusers"])


@pytest.fixture(scope="session")
def sdxl_lora_output(tmp_path_factory, tiny_sdxl):
    """A LoRA training's output for the tiny SDXL base (UNet and both text encoders)."""
    from fixtures.tiny_models import build_tiny_lora

    root = tmp_path_factory.mktemp("sdxl-lora-output")
    return _lora_output(root, tiny_sdxl, build_tiny_lora(tmp_path_factory.mktemp("sdxl-lora") / "a.safetensors", tiny_sdxl))


@pytest.fixture(scope="session")
def flux_lora_output(tmp_path_factory, tiny_flux):
    """A FLUX LoRA training's output for the tiny FLUX.1-dev base (transformer and CLIP adapters)."""
    from fixtures.tiny_models import build_tiny_lora

    root = tmp_path_factory.mktemp("flux-lora-output")
    return _lora_output(root, tiny_flux, build_tiny_lora(tmp_path_factory.mktemp("flux-lora") / "a.safetensors", tiny_flux))


@pytest.fixture(scope="session")
def safety_checker(tmp_path_factory):
    from fixtures.tiny_models import build_tiny_safety_checker

    return built(tmp_path_factory, "safety-checker", build_tiny_safety_checker)


@pytest.fixture(scope="session")
def flag_all_safety_checker(tmp_path_factory):
    from fixtures.tiny_models import build_tiny_safety_checker

    return built(tmp_path_factory, "safety-checker-flags", build_tiny_safety_checker, flag_everything=True)


TEMPLATE_CLASSES = {name: row.cog_class for name, row in CATALOG.items()}


def start_template(tmp_path_factory, template, *, weights, controlnet=None, annotators=None, safety_checker=None, base=None, serve_base=False):
    """A template in the real Cog server; a missing path stands for weights not baked;
    ``serve_base``: its base loaded for LoRA versions named in each request's context."""
    project = tmp_path_factory.mktemp(f"template-{template}")
    missing = project / "not-baked"
    env = {
        "DREAMBUILD_BASE": str(base or missing),
        "DREAMBUILD_WEIGHTS": str(weights or missing),
        "DREAMBUILD_CONTROLNET": str(controlnet or missing),
        "DREAMBUILD_ANNOTATORS": str(annotators or missing),
        "DREAMBUILD_SAFETY_CHECKER": str(safety_checker or missing),
        **({"DREAMBUILD_SERVE_BASE": "1"} if serve_base else {}),
    }
    return start_cog_server(f"templates/cog_models.py:{TEMPLATE_CLASSES[template]}", project, env=env)


@pytest.fixture(scope="module")  # one test module uses it: its memory is freed after it
def vanilla_server(tmp_path_factory, fine_tune, safety_checker):
    with start_template(tmp_path_factory, "vanilla", weights=fine_tune, safety_checker=safety_checker) as server:
        yield server


@pytest.fixture(scope="module")  # one test module uses it: its memory is freed after it
def canny_server(tmp_path_factory, fine_tune, tiny_controlnet, safety_checker):
    with start_template(tmp_path_factory, "controlnet-canny", weights=fine_tune, controlnet=tiny_controlnet, safety_checker=safety_checker) as server:
        yield server


@pytest.fixture(scope="module")  # one test module uses it: its memory is freed after it
def pose_server(tmp_path_factory, fine_tune, tiny_controlnet, annotators, safety_checker):
    with start_template(
        tmp_path_factory, "controlnet-pose", weights=fine_tune, controlnet=tiny_controlnet, annotators=annotators, safety_checker=safety_checker
    ) as server:
        yield server


# --- builder: real registry, podman engine, buildah-built templates -------------------------

REGISTRY_USER, REGISTRY_PASSWORD = "alice", "s3cret-pass"


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """The CNCF distribution registry, anonymous, on a free loopback port."""
    from fixtures.services import start_registry

    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """The registry with htpasswd (Basic) auth."""
    from fixtures.services import start_registry

    server = start_registry(tmp_path_factory.mktemp("auth-registry"), user=REGISTRY_USER, password=REGISTRY_PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def templates(tmp_path_factory, registry):
    """Template images built by buildah and pushed: {"oci": ref, "docker": ref}, pinned by digest."""
    from fixtures.services import buildah_template

    root = tmp_path_factory.mktemp("buildah")
    return {
        fmt: f"{registry.host}/dreambuild/vanilla-{fmt}@" + buildah_template(root, registry, f"dreambuild/vanilla-{fmt}", fmt=fmt)
        for fmt in ("oci", "docker")
    }


@pytest.fixture(scope="session")
def podman(tmp_path_factory, registry, auth_registry):
    """`podman system service` as the Docker engine, trusting the test registries over HTTP."""
    from fixtures.services import start_podman

    engine = start_podman(tmp_path_factory.mktemp("podman"), [registry.host, auth_registry.host])
    yield engine
    engine.stop()


@pytest.fixture
def builder_settings(tmp_path):
    from builder.settings import BuilderSettings

    return BuilderSettings.from_env({"DREAMBUILD_HOME": str(tmp_path / "home"), "DREAMBUILD_REGISTRY_RETRIES": "2"})


@pytest.fixture
def pipeline_zip(tmp_path):
    from tests.helpers import small_pipeline_files, write_tree, zip_dir

    return zip_dir(write_tree(tmp_path / "pipeline", small_pipeline_files()), tmp_path / "output.zip", prefix="output/")


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """The registry with bearer-token auth (Docker Hub's scheme), its token service beside it."""
    from fixtures.services import TokenServer, start_registry

    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(root, REGISTRY_USER, REGISTRY_PASSWORD)
    server = start_registry(root, token=tokens)
    server.user, server.password, server.tokens = REGISTRY_USER, REGISTRY_PASSWORD, tokens
    yield server
    server.stop()
    tokens.stop()


@pytest.fixture
def docker_login(tmp_path, monkeypatch):
    """Write a Docker config with credentials for a registry, as `docker login` does."""
    import base64
    import json

    def login(host: str, user: str = REGISTRY_USER, password: str = REGISTRY_PASSWORD) -> None:
        config = tmp_path / "docker-config"
        config.mkdir(exist_ok=True)
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config))

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return login


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (Debian's, initdb'd under /tmp, on a free port)."""
    from fixtures.services import start_postgres

    server = start_postgres()
    yield server
    server.remove()


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database on the session's server."""
    import uuid

    return postgres.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgresql"])
def database_target(request, tmp_path):
    """Each database the service supports: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "db.sqlite"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_base, registry, templates, eval_models):
    """`dreambuild serve` with the tiny trainer (and its likeness models), the vanilla template and
    tokens for alice and bob (tests/test_service.py's service_config), one per test module that uses it."""
    from builder.service.config import local_trainer_version
    from tests.test_service import Service, service_config

    root = tmp_path_factory.mktemp("service")
    config = service_config(root, tiny_base, registry, templates)
    config["trainers"][local_trainer_version()]["env"]["DREAMBUILD_EVAL_MODELS"] = str(eval_models)
    server = Service(root, config).start()
    yield server
    server.stop()
