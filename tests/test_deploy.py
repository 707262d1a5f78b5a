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
    assert config.public_url == "http://api:8000" and config.registry == "registry:5000"


def test_the_dockerfiles_copy_only_what_their_ignore_files_send():
    for dockerfile in DEPLOY.glob("*.Dockerfile"):
        sent = {line.lstrip("!").rstrip("/") for line in (DEPLOY / f"{dockerfile.name}.dockerignore").read_text().splitlines()
                if line.startswith("!")}
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
