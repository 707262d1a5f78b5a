"""What a cold start costs with and without the installed packages' bytecode, in one run.

    .venv/bin/python bench/cold_start.py [--repeat 3]

`uv sync` (and Cog's pip step in an image) writes no ``.pyc`` unless asked, so every process
that imports torch, diffusers and transformers compiles them again. ``./dev``, the images and the
cog.yaml files now install with bytecode. The baseline, "no bytecode", is the same environment
run with ``PYTHONPYCACHEPREFIX`` set to an empty folder and ``PYTHONDONTWRITEBYTECODE=1``:
Python then finds no ``.pyc`` and writes none, as in an environment installed without them.
Measured, each the median of ``--repeat`` runs, on the tiny fixture models:

- imports: ``import torch, diffusers, transformers, cog`` in a new process
- schema: generating a template's Cog schema in a subprocess (what every model cold start paid
  before model servers started with the version's stored schema)
- template server: a template (vanilla) in the real Cog server, from start to ready (setup done)
- cold prediction: that start plus its first prediction (2 steps, 64 px)
- trainer server: the trainer in the real Cog server, from start to ready

Prints seconds for each and the ratio no bytecode / bytecode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.cog.client import CogClient  # noqa: E402
from builder.cog.server import start_cog_server, write_schema  # noqa: E402
from fixtures.tiny_models import build_tiny_safety_checker, build_tiny_sd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEMPLATE, TRAINER = "templates/cog_models.py:Vanilla", "trainer/cog_model.py:Predictor"
FAST = {"prompt": "a photo of a cjw toy", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 1}


def without_bytecode(scratch: Path) -> dict[str, str]:
    empty = Path(tempfile.mkdtemp(prefix="no-pyc-", dir=scratch))
    return {"PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(env: dict[str, str], root: Path, models: dict[str, Path], schemas: dict[str, dict]) -> dict[str, float]:
    """One round of every measurement in the environment ``env`` adds."""
    out: dict[str, float] = {}
    full_env = {**os.environ, **env}
    out["imports"] = timed(lambda: subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers, cog"], env=full_env, check=True))
    project = Path(tempfile.mkdtemp(dir=root))
    out["schema"] = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "dreambuild.cog_schema", "--predict", TEMPLATE, "--out", str(project / "schema")],
            cwd=REPO,
            env={**full_env, "PYTHONPATH": str(REPO)},
            check=True,
        )
    )
    template_env = {
        **env,
        "DREAMBUILD_WEIGHTS": str(models["weights"]),
        "DREAMBUILD_SAFETY_CHECKER": str(models["safety"]),
        "DREAMBUILD_BASE": str(root / "none"),
        "DREAMBUILD_CONTROLNET": str(root / "none"),
        "DREAMBUILD_ANNOTATORS": str(root / "none"),
    }
    started = time.perf_counter()
    server = start_cog_server(TEMPLATE, project / "template", env=template_env, schema=schemas["template"])
    out["template server"] = time.perf_counter() - started
    try:
        status, body = CogClient(server.url).request("POST", "/predictions", {"input": FAST})
        assert status == 200 and body["status"] == "succeeded", body
        out["cold prediction"] = time.perf_counter() - started
    finally:
        server.stop()
    trainer_env = {**env, "DREAMBUILD_BASE_MODEL": str(models["weights"]), "DREAMBUILD_WORKDIR": str(project / "work")}
    started = time.perf_counter()
    server = start_cog_server(TRAINER, project / "trainer", env=trainer_env, schema=schemas["trainer"])
    out["trainer server"] = time.perf_counter() - started
    server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        root = Path(tmp)
        models = {"weights": build_tiny_sd(root / "tiny-sd"), "safety": build_tiny_safety_checker(root / "safety")}
        (root / "tiny-sd" / "args.json").write_text(json.dumps({"instance_prompt": "a photo of a cjw toy", "resolution": 64}))
        schemas = {
            "template": json.loads(write_schema(root / "s1", predict=TEMPLATE).read_text()),
            "trainer": json.loads(write_schema(root / "s2", predict=TRAINER).read_text()),
        }
        rounds: dict[str, list[dict[str, float]]] = {"no bytecode": [], "bytecode": []}
        for _ in range(args.repeat):  # interleaved, so that a busy moment of the machine hits both
            rounds["no bytecode"].append(measure(without_bytecode(root), root, models, schemas))
            rounds["bytecode"].append(measure({}, root, models, schemas))
    print(f"{'measure':<18} {'no bytecode s':>14} {'bytecode s':>11} {'ratio':>6}")
    for key in rounds["bytecode"][0]:
        before = statistics.median(r[key] for r in rounds["no bytecode"])
        after = statistics.median(r[key] for r in rounds["bytecode"])
        print(f"{key:<18} {before:>14.2f} {after:>11.2f} {before / after:>5.1f}x")


if __name__ == "__main__":
    main()
