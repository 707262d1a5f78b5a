"""Likeness scores (trainer/likeness.py) against direct computations, and the service's reading
of a training's metrics.json (builder/service/trainings/metrics.py) against hostile ones."""

import json
import math
import zipfile

import pytest
import torch
from PIL import Image

from builder.service.trainings.metrics import MAX_BYTES, read_likeness
from trainer.likeness import EvalPrompts, Scorer, mean_paired_cosine, mean_pairwise_cosine


def test_the_means_of_cosines_on_known_vectors():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0]])
    assert mean_pairwise_cosine(a, b) == pytest.approx(0.5)  # cos 1 and cos 0
    assert mean_paired_cosine(a, torch.tensor([[1.0, 1.0], [0.0, 3.0]])) == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_the_scores_are_the_papers_means_of_the_embeddings(eval_models):
    scorer = Scorer.load(eval_models, torch.device("cpu"))
    real = [Image.new("RGB", (48, 48), (200, 40 * i, 30)) for i in range(3)]
    generated = [Image.new("RGB", (64, 64), (30, 90, 60 * i)) for i in range(2)]
    texts = ["a photo of a toy in the jungle", "a photo of a toy on a beach"]
    scorer.set_real(real)
    scores = scorer.score(5, generated, texts, klass=generated)
    cos = torch.nn.functional.cosine_similarity
    dino_g, dino_r = scorer.dino_embeddings(generated), scorer.dino_embeddings(real)
    clip_g, clip_r, text = scorer.clip_image_embeddings(generated), scorer.clip_image_embeddings(real), scorer.clip_text_embeddings(texts)
    pairs = [(g, r) for g in range(2) for r in range(3)]
    assert scores["dino"] == pytest.approx(sum(float(cos(dino_g[g], dino_r[r], dim=0)) for g, r in pairs) / 6, abs=1e-4)
    assert scores["clip_i"] == pytest.approx(sum(float(cos(clip_g[g], clip_r[r], dim=0)) for g, r in pairs) / 6, abs=1e-4)
    assert scores["clip_t"] == pytest.approx((float(cos(clip_g[0], text[0], dim=0)) + float(cos(clip_g[1], text[1], dim=0))) / 2, abs=1e-4)
    assert scores["prior_drift"] == 1.0 and scores["step"] == 5  # the first class images are the reference
    assert scorer.score(6, generated, texts, klass=real[:2])["prior_drift"] < 1.0
    assert EvalPrompts.build("a photo of sks dog", "a photo of a dog").texts[1] == "a photo of a dog on a beach"


def _zip(path, metrics: bytes | None, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as zf:
        zf.writestr("args.json", "{}")
        if metrics is not None:
            zf.writestr("metrics.json", metrics)
    return path


GOOD = {
    "likeness": {
        "steps": [
            {"step": 0, "dino": 0.5, "clip_i": 0.6, "clip_t": 0.2, "prior_drift": 1.0},
            {"step": 4, "dino": 0.7, "clip_i": 0.8, "clip_t": 0.25},
        ],
        "models": {"dino": {"name": "facebook/dino-vits16", "digest": "sha256:" + "a" * 64, "path": "/src/eval-models/dino"}, "other": {}},
        "evaluation_seconds": 1.5,
        "final": "ignored: recomputed from steps",
    }
}


def test_the_service_keeps_a_checked_copy_of_metrics_json(tmp_path):
    likeness = read_likeness(_zip(tmp_path / "good.zip", json.dumps(GOOD).encode()))
    assert likeness["final"] == {"step": 4, "dino": 0.7, "clip_i": 0.8, "clip_t": 0.25} and len(likeness["steps"]) == 2
    assert likeness["models"] == {"dino": {"name": "facebook/dino-vits16", "digest": "sha256:" + "a" * 64}}  # no host path, no unknown model
    assert read_likeness(_zip(tmp_path / "none.zip", None)) is None


@pytest.mark.parametrize(
    "metrics",
    [
        json.dumps({"likeness": {**GOOD["likeness"], "steps": [{"step": 0, "dino": 7.0}]}}).encode(),  # not a cosine
        json.dumps({"likeness": {**GOOD["likeness"], "steps": [{"step": -1, "dino": 0.5}]}}).encode(),
        json.dumps({"likeness": {**GOOD["likeness"], "steps": [{"step": 0, "dino": "0.5"}]}}).encode(),
        json.dumps({"likeness": {**GOOD["likeness"], "steps": [{"step": 0}] * 5000}}).encode(),
        json.dumps({"likeness": {**GOOD["likeness"], "evaluation_seconds": float("nan")}}).encode(),
        json.dumps({"likeness": {**GOOD["likeness"], "models": ["dino"]}}).encode(),  # a list where a mapping belongs
        b"not json",
        b'{"likeness": ' + b" " * (MAX_BYTES + 10) + b"{}}",  # larger than the bound, however it is compressed
    ],
)
def test_a_bad_metrics_json_is_left_out_and_fails_nothing(tmp_path, metrics):
    assert read_likeness(_zip(tmp_path / "bad.zip", metrics, zipfile.ZIP_DEFLATED)) is None


def test_keep_best_ships_the_weights_of_the_best_evaluation(tmp_path, tiny_base, eval_models, monkeypatch):
    """Scores forced into a known order (DINO 0.9 at step 2 but CLIP-T under the floor, 0.5 at step
    4, 0.2 at 6): keep_best ships step 4's adapters — the same tensors a 4-step training writes."""
    from safetensors.torch import load_file

    from dreambuild.archives import extract_zip
    from tests.helpers import photos_zip
    from trainer.job import run_job

    monkeypatch.setenv("DREAMBUILD_BASE_MODEL", str(tiny_base))
    monkeypatch.setenv("DREAMBUILD_EVAL_MODELS", str(eval_models))
    forced = {0: (0.1, 0.30), 2: (0.9, 0.10), 4: (0.5, 0.29), 6: (0.2, 0.30)}  # step: (dino, clip_t)

    def score(self, step, subject, texts, klass):
        dino, clip_t = forced[step]
        self.history.append({"step": step, "dino": dino, "clip_i": 0.5, "clip_t": clip_t})
        return self.history[-1]

    monkeypatch.setattr(Scorer, "score", score)
    photos = photos_zip(tmp_path / "photos.zip")
    inputs = {
        "instance_prompt": "a photo of a cjw toy",
        "class_prompt": "a photo of a toy",
        "with_prior_preservation": False,
        "resolution": 64,
        "seed": 0,
        "lora_rank": 2,
        "learning_rate": 1e-3,
    }
    outputs = {}
    for name, extra in (
        ("best", {"max_train_steps": 6, "measure_likeness": True, "keep_best": True, "validation_steps": 2, "save_infer_steps": 1}),
        ("four", {"max_train_steps": 4}),
    ):
        monkeypatch.setenv("DREAMBUILD_WORKDIR", str(tmp_path / f"work-{name}"))
        result = run_job({**inputs, **extra}, photos)
        outputs[name] = extract_zip(result.archive, tmp_path / name, label="output.zip")
    kept = json.loads((tmp_path / "best" / "metrics.json").read_text())["likeness"]
    assert kept["kept_step"] == 4 and [e["step"] for e in kept["steps"]] == [0, 2, 4, 6]
    best, four = (load_file(tmp_path / name / "pytorch_lora_weights.safetensors") for name in ("best", "four"))
    assert best.keys() == four.keys() and all(torch.equal(best[k], four[k]) for k in best)
    with pytest.raises(Exception, match="keep_best picks among likeness evaluations"):
        run_job({**inputs, "max_train_steps": 2, "keep_best": True}, photos)
