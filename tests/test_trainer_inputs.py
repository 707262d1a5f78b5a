"""The trainer's two Cog entry points declare the same inputs, and they agree with
trainer/args.py, which enforces them even where no Cog schema is present."""

import dataclasses

import pytest
from cog import _inspector

from dreambuild.errors import InputError
from trainer.args import CHOICES, RANGES, TrainingArgs

FILE_INPUTS = {"instance_data", "input_images", "class_data", "ckpt_base"}


@pytest.fixture(scope="module")
def infos():
    return _inspector.create_predictor("trainer.cog_model", "Predictor"), _inspector.create_predictor("trainer.cog_model", "train")


def _describe(field):
    return (field.order, field.type.python_type_name(), field.default, field.description, field.ge, field.le, field.choices)


def test_predict_and_train_share_every_input(infos):
    predict, train = infos
    assert list(predict.inputs) == list(train.inputs)
    assert {n: _describe(f) for n, f in predict.inputs.items()} == {n: _describe(f) for n, f in train.inputs.items()}
    assert all(f.description for f in predict.inputs.values())


def test_inputs_match_training_args(infos):
    inputs = infos[0].inputs
    fields = {f.name: f for f in dataclasses.fields(TrainingArgs)}
    assert set(inputs) - FILE_INPUTS == set(fields)
    for name, field in fields.items():
        if field.default is not dataclasses.MISSING:
            assert inputs[name].default == field.default, name
        lo, hi = RANGES.get(name, (None, None))
        assert (inputs[name].ge, inputs[name].le) == (lo, hi), name
        assert inputs[name].choices == (list(CHOICES[name]) if name in CHOICES else None), name


BASE = {"instance_prompt": "a photo of a cjw toy", "class_prompt": "a photo of a toy"}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"resolution": 100}, "resolution must be a multiple of 8, got 100"),
        ({"resolution": 32}, "resolution must be between 64 and 2048"),
        ({"max_train_steps": 0}, "max_train_steps must be between 1 and 100000, got 0"),
        ({"max_train_steps": "abc"}, "max_train_steps must be of type int"),
        ({"max_train_steps": True}, "max_train_steps must be of type int"),
        ({"learning_rate": 0}, "learning_rate must be greater than 0"),
        ({"with_prior_preservation": "yes"}, "with_prior_preservation must be of type bool"),
        ({"lr_scheduler": "exponential"}, "lr_scheduler must be one of linear, cosine"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of no, fp16, bf16"),
        ({"quantize_base": "int4"}, "quantize_base must be one of no, int8, fp8"),
        ({"instance_prompt": "  "}, "instance_prompt is required .* or trigger_word alone"),
        ({"class_prompt": None, "with_prior_preservation": True}, "with_prior_preservation needs class_prompt"),
        ({"bogus": 1}, "unknown training input"),
        ({"lora_rank": 300}, "lora_rank must be between 0 and 256, got 300"),
        ({"lora_lr": 0}, "lora_lr must be greater than 0"),
        ({"lora_alpha": 0}, "lora_alpha must be greater than 0"),
        ({"text_encoder_lr": 2.0}, "text_encoder_lr must be between 0.0 and 1.0"),
    ],
)
def test_invalid_arguments_are_named(override, message):
    with pytest.raises(InputError, match=message):
        TrainingArgs.from_inputs({**BASE, **override})


def test_valid_arguments_keep_types():
    args = TrainingArgs.from_inputs({**BASE, "learning_rate": 1, "seed": None, "resolution": None, "max_train_steps": None})
    assert args.learning_rate == 1.0 and isinstance(args.learning_rate, float)
    assert args.seed is None  # explicit null: a random seed, drawn and logged by the job
    assert args.resolution is None  # the job sets the base's native size
    assert args.max_train_steps == 2000  # null on a required-typed input keeps the default
    assert TrainingArgs.from_inputs(BASE).seed == 1337
    assert args.to_json()["instance_prompt"] == BASE["instance_prompt"]


def test_lora_inputs_default_to_the_full_fine_tune_and_to_rank_16_on_flux():
    args = TrainingArgs.from_inputs(BASE)
    args.resolve_for("sd")
    assert args.lora_rank == 0 and not args.lora and args.lora_alpha is None and args.text_encoder_lr is None
    assert args.learning_rate == 1e-6
    lora = TrainingArgs.from_inputs({**BASE, "lora_rank": 16, "lora_alpha": None})
    assert lora.lora and lora.lora_alpha is None
    flux = TrainingArgs.from_inputs(BASE)
    flux.resolve_for("flux")  # FLUX trains LoRA only: an empty rank is Replicate's FLUX trainer's default
    assert flux.lora_rank == 16 and flux.lora_lr == 1e-4
    explicit = TrainingArgs.from_inputs({**BASE, "lora_rank": 0})
    explicit.resolve_for("flux")
    assert explicit.lora_rank == 0  # refused by the FLUX trainer (check_flux_args), not overridden


@pytest.mark.parametrize(
    "given, lora_lr",
    [({}, 1e-4), ({"learning_rate": 4e-4}, 4e-4), ({"lora_lr": 5e-2}, 5e-2), ({"learning_rate": 4e-4, "lora_lr": 5e-2}, 5e-2)],
)
def test_a_lora_learns_at_lora_lr_else_learning_rate(given, lora_lr):
    """Replicate's FLUX trainer names the adapters' rate learning_rate (diffusers' LoRA scripts
    too): a LoRA training takes it when lora_lr, the more specific name, is empty."""
    args = TrainingArgs.from_inputs({**BASE, "lora_rank": 4, **given})
    args.resolve_for("sd")
    assert args.lora_lr == lora_lr


def test_replicates_flux_request_needs_only_the_trigger_word():
    """Replicate's FLUX trainer's request ({input_images, trigger_word, steps}): the trigger word
    is the prompt, and without class_prompt there is no prior preservation."""
    args = TrainingArgs.from_inputs({"trigger_word": "TOK", "steps": 1000})
    assert args.instance_prompt == "TOK" and args.token_string == "TOK" and args.max_train_steps == 1000
    assert args.class_prompt is None and args.with_prior_preservation is False
    assert TrainingArgs.from_inputs(BASE).with_prior_preservation is True  # the seed's request: as before
    assert TrainingArgs.from_inputs({**BASE, "with_prior_preservation": False}).with_prior_preservation is False
    with pytest.raises(InputError, match="instance_prompt is required"):
        TrainingArgs.from_inputs({"steps": 1000})


def test_the_photos_under_either_name_and_not_both(tmp_path):
    from trainer.job import subject_photos

    assert subject_photos(tmp_path / "a.zip", None) == subject_photos(None, tmp_path / "a.zip") == tmp_path / "a.zip"
    with pytest.raises(InputError, match="instance_data is required"):
        subject_photos(None, None)
    with pytest.raises(InputError, match="same input .* under two names"):
        subject_photos(tmp_path / "a.zip", tmp_path / "b.zip")


def test_progress_is_due_on_the_first_and_last_step_and_then_by_interval(monkeypatch):
    from trainer import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    logger = progress.StepLogger(total=50, interval=10.0)
    assert logger.due(1)
    logger.update(1, loss=0.5)
    clock[0] += 1
    assert not logger.due(2) and logger.due(50)  # the loop reads the loss only when a line is due
    clock[0] += 10
    assert logger.due(3)


def test_schema_errors_name_the_reference(tmp_path):
    from builder.cog.client import CogError
    from builder.cog.server import write_schema

    with pytest.raises(CogError, match="trainer/cog_model.py:Nope"):
        write_schema(tmp_path, predict="trainer/cog_model.py:Nope")


def test_the_checkouts_trainer_schema_is_generated_once_per_source(tmp_path, monkeypatch):
    """Every service root and restart reads the trainer's schema from the user's cache, keyed by
    the sources: generated (a subprocess importing the trainer) only when they change."""
    import json

    from builder.service.trainings.schemas import input_schema, local_schema

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    schema = local_schema("trainer/cog_model.py:Predictor")
    (cached,) = (tmp_path / "dreambuild" / "schemas").glob("*.json")
    assert json.loads(cached.read_text()) == schema and "instance_prompt" in input_schema(schema)["properties"]
    cached.write_text(json.dumps({**schema, "info": {"title": "read from the cache"}}))
    assert local_schema("trainer/cog_model.py:Predictor")["info"]["title"] == "read from the cache"
    with pytest.raises(Exception, match="trainer/cog_model.py:Nope"):  # another reference is another key
        local_schema("trainer/cog_model.py:Nope")


def test_replicate_s_flux_trainer_names_are_aliases():
    """trigger_word, steps and batch_size (Replicate's FLUX trainer) set token_string,
    max_train_steps and train_batch_size; the same input given twice with two values is refused."""
    args = TrainingArgs.from_inputs({**BASE, "instance_prompt": "a photo of TOK", "trigger_word": "TOK", "steps": 500, "batch_size": 2})
    assert (args.token_string, args.max_train_steps, args.train_batch_size) == ("TOK", 500, 2)
    same = TrainingArgs.from_inputs({**BASE, "max_train_steps": 500, "steps": 500})
    assert same.max_train_steps == 500
    with pytest.raises(InputError, match=r"steps \(500\) and max_train_steps \(300\) are the same input under two names; give one"):
        TrainingArgs.from_inputs({**BASE, "max_train_steps": 300, "steps": 500})
    with pytest.raises(InputError, match="instance_prompt does not contain token_string 'TOK'"):
        args.check_token("a photo of a toy", "instance_prompt")


def test_the_service_knows_the_trainer_s_named_bases():
    """builder/settings.py's copies (the API side imports no trainer code): the bases' names, and
    the base each base-baking template of the catalog bakes."""
    from builder.settings import NAMED_BASES, TEMPLATE_BASES
    from templates.inference.catalog import TEMPLATES
    from trainer import job

    assert NAMED_BASES == job.NAMED_BASES
    assert set(TEMPLATE_BASES) == {name for name, row in TEMPLATES.items() if row.base}
    assert set(TEMPLATE_BASES.values()) - {None} <= set(NAMED_BASES)
