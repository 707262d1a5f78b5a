"""The CLI against a running service: train (with an upload and --wait), trainings, versions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.service.config import local_trainer_version
from dreambuild.errors import DreambuildError
from tests.helpers import photos_zip
from tests.test_service import receiver  # noqa: F401  (a module fixture; `service` is conftest's, one per module)

CLI = str(Path(sys.executable).parent / "dreambuild")


def cli(server, *args, token="tok-alice"):
    env = {**os.environ, "DREAMBUILD_URL": server.url, "DREAMBUILD_TOKEN": token}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=900)


def one_error(done) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]


def test_train_wait_then_list_get_and_versions(tmp_path, service):  # noqa: F811
    photos = photos_zip(tmp_path / "photos.zip")
    template = next(iter(service.config["templates"]))
    done = cli(
        service,
        "train",
        "-i",
        "instance_prompt=a photo of a cjw toy",
        "-i",
        "class_prompt=a photo of a toy",
        "-i",
        f"instance_data=@{photos}",
        "-i",
        "max_train_steps=4",
        "-i",
        "resolution=64",
        "-i",
        "with_prior_preservation=false",
        "--trainer-version",
        local_trainer_version(),
        "--template-version",
        template,
        "--model",
        "alice/from-cli",
        "--notes",
        "via the CLI",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    image = done.stdout.strip()
    assert "/alice/from-cli@sha256:" in image
    listed = cli(service, "trainings", "list")
    assert listed.returncode == 0 and any(image.split("@")[1] in line for line in listed.stdout.splitlines())
    training_id = next(line.split()[0] for line in listed.stdout.splitlines() if image.split("@")[1] in line)
    got = json.loads(cli(service, "trainings", "get", training_id).stdout)
    assert got["status"] == "succeeded" and got["input"]["max_train_steps"] == 4 and got["input"]["instance_data"].startswith(service.url)
    versions = cli(service, "versions", "list", "alice/from-cli")
    assert versions.returncode == 0 and image.split("@")[1] in versions.stdout and "via the CLI" in versions.stdout


def test_cli_errors_are_one_line(tmp_path, service):  # noqa: F811
    template = next(iter(service.config["templates"]))
    base = [
        "train",
        "-i",
        "instance_prompt=x",
        "-i",
        "class_prompt=y",
        "--trainer-version",
        local_trainer_version(),
        "--template-version",
        template,
        "--model",
        "alice/failing",
        "--wait",
    ]
    assert "file /nope.zip does not exist" in one_error(cli(service, *base, "-i", "instance_data=@/nope.zip"))
    failed = one_error(cli(service, *base, "-i", "instance_data=http://127.0.0.1:9/none.zip", "-i", "resolution=64"))
    assert "failed" in failed and "none.zip" in failed
    assert "404" in one_error(cli(service, "trainings", "get", "nope"))
    assert "401" in one_error(cli(service, "trainings", "list", token="wrong"))
    assert "cannot reach the service" in one_error(cli(service, "trainings", "list", "--url", "http://127.0.0.1:9"))
    assert "must be owner/name" in one_error(cli(service, "versions", "list", "alice"))


def test_cancel_from_the_cli(tmp_path, service):  # noqa: F811
    template = next(iter(service.config["templates"]))
    submitted = cli(
        service,
        "train",
        "-i",
        "instance_prompt=a photo of a cjw toy",
        "-i",
        "class_prompt=a photo of a toy",
        "-i",
        f"instance_data=@{photos_zip(tmp_path / 'photos.zip')}",
        "-i",
        "max_train_steps=5000",
        "-i",
        "resolution=64",
        "-i",
        "with_prior_preservation=false",
        "--trainer-version",
        local_trainer_version(),
        "--template-version",
        template,
        "--model",
        "alice/canceled",
    )
    assert submitted.returncode == 0, submitted.stderr
    training_id = submitted.stdout.strip()
    canceled = cli(service, "trainings", "cancel", training_id)
    assert canceled.returncode == 0 and "cancel requested" in canceled.stdout
    assert service.wait(training_id, timeout=300)["status"] == "canceled"


def test_a_second_embedded_service_on_the_same_data_directory_is_refused(tmp_path):
    """Both would resume and run the same trainings."""
    from builder.service.app import create_app
    from builder.service.config import ServiceConfig

    config = ServiceConfig(data_dir=tmp_path / "data", trainers={}, templates={})
    first = create_app(config)
    with pytest.raises(DreambuildError, match="another dreambuild service runs on .* two would run the same trainings"):
        create_app(config)
    first.state.service.stop()
    create_app(config).state.service.stop()  # free again once the first stopped
