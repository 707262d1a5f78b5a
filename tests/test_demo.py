"""The README's main job: `dreambuild demo` runs the whole pipeline with no configuration."""

import json
from pathlib import Path

from PIL import Image

from builder.cli.demo import run_demo


def test_demo_trains_builds_calls_the_webhook_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as `./dev demo` runs it: a relative output folder (its default is demo-out)
    summary = run_demo(Path("out"), say=lambda message: None)
    assert summary == json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["version"].startswith("sha256:")
    assert summary["image"].endswith("@" + summary["version"]) and summary["image"].startswith("oci:")
    assert summary["webhook"]["received"] and summary["webhook"]["signature_valid"] and summary["webhook"]["version"] == summary["version"]
    assert set(summary["timings_seconds"]) >= {"stage_queued", "stage_training", "stage_building", "stage_webhook", "predict"}
    # The last step ran the new version through the service: a cold start, so its setup is timed.
    assert summary["prediction"]["status"] == "succeeded" and summary["prediction"]["metrics"]["setup_time"] > 0
    (png,) = summary["outputs"]
    assert Image.open(png).size == (64, 64)
