"""dreambuild.layout: what counts as a diffusers pipeline (shared by trainer and builder)."""

import json
import shutil

import pytest

from dreambuild.errors import ModelLayoutError
from dreambuild.layout import check_diffusers_layout, locate_pipeline_root


@pytest.fixture
def pipeline(tiny_base, tmp_path):
    return shutil.copytree(tiny_base, tmp_path / "pipe")


def test_valid_pipeline(pipeline):
    assert "unet" in check_diffusers_layout(pipeline, "weights")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "model_index.json").write_text("{not json"), "model_index.json is not valid JSON"),
        (lambda p: (p / "model_index.json").write_text("[]"), "model_index.json has no _class_name"),
        (lambda p: (p / "model_index.json").write_text(json.dumps({"_class_name": "X"})), "names no components"),
        (lambda p: shutil.rmtree(p / "unet"), "component folder 'unet' named in model_index.json is missing"),
        (lambda p: (p / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "component 'vae' has a config.json but no weights"),
        (lambda p: (p / "scheduler" / "scheduler_config.json").unlink(), "component 'scheduler' has no configuration file"),
    ],
)
def test_broken_layouts_are_named(pipeline, damage, message):
    damage(pipeline)
    with pytest.raises(ModelLayoutError, match=message):
        check_diffusers_layout(pipeline, "weights")


def test_pipeline_root_in_a_single_folder(pipeline, tmp_path):
    outer = tmp_path / "outer"
    (outer / "__MACOSX").mkdir(parents=True)
    shutil.move(pipeline, outer / "my-model")
    assert locate_pipeline_root(outer) == outer / "my-model"
    assert locate_pipeline_root(outer / "my-model") == outer / "my-model"


def test_a_baked_digest_is_read_only_while_no_weight_file_is_newer(pipeline, tmp_path):
    import os
    import shutil

    from dreambuild.layout import baked_pipeline_digest, digest_file, pipeline_digest, write_pipeline_digest

    base = shutil.copytree(pipeline, tmp_path / "base")
    real = pipeline_digest(base)
    assert baked_pipeline_digest(base) == real  # none baked: computed
    assert write_pipeline_digest(base) == real and digest_file(base) == tmp_path / "base.digest"
    assert pipeline_digest(base) == real  # the file is outside the pipeline's folder
    planted = "sha256:" + "0" * 64
    digest_file(base).write_text(planted + "\n")
    assert baked_pipeline_digest(base) == planted  # read, not computed
    weights = sorted(base.rglob("*.safetensors"))[0]
    written = digest_file(base).stat().st_mtime
    os.utime(weights, (written + 10, written + 10))
    assert baked_pipeline_digest(base) == real  # a weight file changed after it: computed again
    for garbled in ("", "sha256:abc", "md5:" + "0" * 67):
        digest_file(base).write_text(garbled)
        os.utime(digest_file(base), (written + 20, written + 20))
        assert baked_pipeline_digest(base) == real, garbled
