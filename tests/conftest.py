import os

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental hub download fails loudly

import pytest

from dreambuild.cog_server import start_cog_server
from dreambuild.tiny_models import build_tiny_sd


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The trainer's default base: a tiny random SD pipeline (seed 0)."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def other_base(tmp_path_factory):
    """A second tiny pipeline with different weights (seed 1), to tell bases apart."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-other", seed=1)


@pytest.fixture(scope="session")
def trainer_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("trainer-work")


def _trainer_server(tmp_path_factory, tiny_base, workdir, train):
    project = tmp_path_factory.mktemp("trainer-train" if train else "trainer-predict")
    env = {"DREAMBUILD_BASE_MODEL": str(tiny_base), "DREAMBUILD_WORKDIR": str(workdir)}
    server = start_cog_server("trainer/predict.py:" + ("train" if train else "Predictor"), project, train=train, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def trainer_predict_server(tmp_path_factory, tiny_base, trainer_workdir):
    """The trainer in the real Cog HTTP server, predict mode, with Cog's schema."""
    yield from _trainer_server(tmp_path_factory, tiny_base, trainer_workdir, train=False)


@pytest.fixture(scope="session")
def trainer_train_server(tmp_path_factory, tiny_base, trainer_workdir):
    """The trainer in the real Cog HTTP server, train mode (`--x-mode train`)."""
    yield from _trainer_server(tmp_path_factory, tiny_base, trainer_workdir, train=True)
