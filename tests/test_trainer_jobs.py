"""Several trainings in one process, as a Cog server's worker runs them."""

from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tests.helpers import photos_zip


def test_a_job_after_one_with_another_precision(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("DREAMBUILD_BASE_MODEL", str(tiny_base))
    monkeypatch.setenv("DREAMBUILD_WORKDIR", str(tmp_path / "work"))
    from trainer.job import run_job

    AcceleratorState._reset_state(reset_partial_state=True)  # whatever another test of this process left
    Accelerator(mixed_precision="bf16", cpu=True)  # what an earlier job in this process left behind
    inputs = {
        "instance_prompt": "a photo of a cjw toy",
        "class_prompt": "a photo of a toy",
        "with_prior_preservation": False,
        "max_train_steps": 2,
        "resolution": 64,
        "seed": 0,
    }
    result = run_job(inputs, photos_zip(tmp_path / "photos.zip"))
    assert result.steps == 2 and result.archive.is_file()
