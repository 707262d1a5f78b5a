"""The deployment files (deploy/): the compose file is valid by the official Compose
Specification schema (vendored from github.com/compose-spec/compose-spec, schema/compose-spec.json
at 170098ba) and wires what the README says; the Dockerfiles install what the wheel test
installs, and send only what they copy."""

import json
import re

import jsonschema
import yaml

from builder.service.config import ServiceConfig
from tests.helpers import REPO

DEPLOY = REPO / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_the_compose_file_is_valid_by_the_compose_specification():
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(compose())] == []
    broken = compose()
    broken["services"]["api"]["prots"] = ["8000:8000"]  # a typo is caught: the check can fail
    assert list(validator.iter_errors(broken))


def test_the_compose_file_has_the_roles_of_the_readme():
    services = compose()["services"]
    assert {"db", "registry", "api", "worker"} <= set(services)
    assert services["api"]["command"][0] == "serve" and "8000:8000" in services["api"]["ports"]
    assert services["worker"]["command"][:1] == ["worker"] and "build,webhooks" in services["worker"]["command"]
    gpu = {name: s for name, s in services.items() if name.startswith("worker-gpu-")}
    assert len(gpu) >= 2
    for n, (name, service) in enumerate(sorted(gpu.items())):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [str(n)] and device["capabilities"] == ["gpu"] and service["profiles"] == ["gpu"]
        assert "train,predict" in service["command"]
    for service in services.values():
        for path in [service.get("build", {}).get("dockerfile")] if service.get("build") else []:
            assert (REPO / path).is_file() and (REPO / f"{path}.dockerignore").is_file()


def test_the_deployment_configuration_is_a_valid_service_configuration():
    config = ServiceConfig.model_validate(yaml.safe_load((DEPLOY / "service.yaml").read_text()))
    assert config.workers == "external" and config.database_url.startswith("postgresql://")
    # Users get URLs they can reach (the published port); trainers and workers the compose network's.
    assert config.public_url == "http://localhost:8000" and config.internal_url == "http://api:8000"
    assert config.registry == "registry:5000" and config.trainers and config.template_repositories
    assert all(repo.startswith("registry:5000/dreambuild/") for repo in config.template_repositories)
    # compose's one-shot `templates` service pushes exactly the repositories the catalog reads.
    pushed = re.findall(r"--to (\S+)", " ".join(compose()["services"]["templates"]["command"]))
    assert pushed == config.template_repositories
    # Compose waits longer than the service's own grace before it SIGKILLs (its default is 10 s).
    for name in ("api", "worker", "worker-gpu-0", "worker-gpu-1"):
        waits = compose()["services"][name]["stop_grace_period"]
        assert int(waits.removesuffix("s")) > config.shutdown_grace_seconds, name


def test_the_dockerfiles_copy_only_what_their_ignore_files_send():
    for dockerfile in DEPLOY.glob("*.Dockerfile"):
        sent = {
            line.lstrip("!").rstrip("/") for line in (DEPLOY / f"{dockerfile.name}.dockerignore").read_text().splitlines() if line.startswith("!")
        }
        copied = set()
        for line in dockerfile.read_text().splitlines():
            match = re.match(r"COPY (?!--from)(.+) \S+$", line)
            if match:
                copied |= set(match.group(1).split())
        assert copied and copied <= sent, (dockerfile.name, copied - sent)
        assert all((REPO / path).exists() for path in copied)
    service = (DEPLOY / "service.Dockerfile").read_text()
    # The same install as tests/test_packaging.py: the locked builder extra and the wheel, no torch.
    assert "uv export --frozen --extra builder --no-emit-project" in service and "[builder]" in service
    assert "--extra trainer" not in service and "--extra all" not in service
    # Both install with bytecode (a cold start must not compile torch or FastAPI): pip by default, uv when asked.
    assert "--no-compile" not in service and "pip install" in service
    worker = (DEPLOY / "worker-gpu.Dockerfile").read_text()
    assert worker.index("ENV UV_COMPILE_BYTECODE=1") < worker.index("RUN uv sync")


def _closure(extras: list[str]) -> set[str]:
    """The distributions installed for dreambuild's ``extras``: their requirements and theirs,
    as this environment's metadata declares them (normalized names)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = [("dreambuild", extra) for extra in extras]
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    while wanted:
        name, extra = wanted.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        names.add(canonicalize_name(name))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                wanted += [(requirement.name, "")] + [(requirement.name, e) for e in requirement.extras]
    return names


def _imports(*folders: str) -> set[str]:
    """Top-level modules imported anywhere (lazily too) in the folders' Python files."""
    import ast
    import sys

    found = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names}


def test_the_gpu_worker_image_installs_what_its_roles_import():
    """train runs trainer/, predict the templates' /src (templates/) with the worker's Python,
    build and webhooks builder/: every module they import comes with the extras the image installs
    (the image once had no compel: every prediction failed at import)."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    extras = re.findall(r"--extra (\w+)", (DEPLOY / "worker-gpu.Dockerfile").read_text())
    installed = _closure(sorted(set(extras)))
    ours = {"builder", "dreambuild", "trainer", "templates", "fixtures", "bench", "tests"}
    providers = packages_distributions()
    missing = {
        module: providers.get(module)
        for module in _imports("trainer", "templates", "dreambuild", "builder") - ours
        if not {canonicalize_name(d) for d in providers.get(module, [module])} & installed
    }
    assert missing == {}, f"imported but not installed by the extras {extras}: {missing}"
    assert "compel" in _imports("templates") and "compel" in installed  # the check sees what it must see
    assert "compel" not in _closure(["trainer", "builder"])


def test_the_service_image_installs_what_the_api_and_cpu_workers_import():
    """The API and the CPU workers (build, webhooks) run builder/ with the builder extra alone (no
    torch): every module builder's service, image and CLI code imports comes with it."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    assert "[builder]" in (DEPLOY / "service.Dockerfile").read_text()
    installed = _closure(["builder"])
    providers = packages_distributions()
    ours = {"builder", "dreambuild", "trainer", "templates", "fixtures", "bench", "tests"}
    missing = {
        module: providers.get(module)
        for module in _imports("builder") - ours
        if not {canonicalize_name(d) for d in providers.get(module, [module])} & installed
    }
    assert missing == {}, f"imported by builder/ but not installed by the builder extra: {missing}"
