"""The user's path, literally: the README's commands as a newcomer types them, from a copy of
the checkout, with relative paths and the default directories.

copy of the checkout → ``./dev demo`` (creates .venv, runs the demo) → the README's "Your own
service, step by step" block, line by line (``dreambuild serve`` with no configuration, ``train``
without version ids, ``run``, ``predictions list``) → the official Python and JavaScript
clients' train-then-run against that service, each with its default settings → the trainings
service's and the predictions' curl and CLI blocks → the many-machines configuration and
commands (PostgreSQL, ``dreambuild serve``, three workers, a user's train and run).

The only changes to what the README says: the two hub downloads are replaced by tiny local models
at the paths they write, ``serve`` gets a free port (``DREAMBUILD_URL`` tells the client commands),
and ``train`` and ``run`` get tiny sizes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image

from builder.checkout import REPO_ROOT
from builder.cog.server import free_port
from dreambuild.layout import write_pipeline_digest
from tests.helpers import photos_zip

STEP_BY_STEP = "## Your own service, step by step"
HUB_DOWNLOADS = (["python", "-m", "trainer.fetch_base_model"], ["hf", "download", "CompVis/stable-diffusion-safety-checker"])
TINY = {
    "train": ["-i", "max_train_steps=2", "-i", "resolution=64", "-i", "with_prior_preservation=false"],
    "run": ["-i", "num_inference_steps=2", "-i", "width=64", "-i", "height=64", "-i", "disable_safety_check=true"],
}


def readme_commands(heading: str) -> list[list[str]]:
    """The first bash block after ``heading`` in the README: one command per line (continuations
    joined) as its words, comments and blank lines left out."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(heading) :], re.S).group(1)
    return [words for line in block.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, tiny_base, safety_checker):
    """A copy of the checkout's files (what a clone has), with ./dev's uv, after ``./dev demo``."""
    root = tmp_path_factory.mktemp("journey") / "dreambuild"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / ".dev-tools", root / ".dev-tools", symlinks=True)  # uv, as ./dev installed it
    # The tiny models the demo builds (same generator, same arguments), already built for the suite.
    _link_tree(tiny_base, root / ".dreambuild" / "cache" / "tiny-sd")
    _link_tree(safety_checker, root / ".dreambuild" / "cache" / "safety-checker")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "DREAMBUILD_HOME", "DREAMBUILD_URL")}
    started = time.monotonic()
    demo = subprocess.run(["./dev", "demo"], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    return {"root": root, "env": env, "demo": demo, "demo_seconds": time.monotonic() - started}


def test_dev_demo_as_written(checkout):
    """The README's first command, no arguments: the environment, then the whole pipeline."""
    demo, root = checkout["demo"], checkout["root"]
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Traceback" not in demo.stderr
    summary = json.loads((root / "demo-out" / "summary.json").read_text())  # its default output folder
    assert summary["status"] == "succeeded" and summary["version"].startswith("sha256:")
    assert summary["image"].endswith("@" + summary["version"]) and summary["image"].startswith("oci:")
    assert summary["webhook"]["received"] and summary["webhook"]["signature_valid"] and summary["webhook"]["version"] == summary["version"]
    assert set(summary["timings_seconds"]) >= {"stage_queued", "stage_training", "stage_building", "stage_webhook", "predict"}
    # The last step ran the new version through the service: a cold start, so its setup is timed.
    assert summary["prediction"]["status"] == "succeeded" and summary["prediction"]["metrics"]["setup_time"] > 0
    (png,) = summary["outputs"]
    assert Path(png).parent == root / "demo-out" and Image.open(png).size == (64, 64)
    print(f"journey: ./dev demo {checkout['demo_seconds']:.0f} s (environment created, then the demo)")


@pytest.fixture(scope="module")
def own_service(checkout, tmp_path_factory):
    """The step-by-step block up to ``dreambuild serve &``, as written; the rest is the test's."""
    root = checkout["root"]
    assert checkout["demo"].returncode == 0, "./dev demo failed: its environment is the journey's"
    commands = readme_commands(STEP_BY_STEP)
    port = free_port()
    env = {**checkout["env"], "DREAMBUILD_URL": f"http://127.0.0.1:{port}"}
    # What the hub downloads write, from the tiny models (fetch_base_model also records the digest).
    _link_tree(root / ".dreambuild" / "cache" / "tiny-sd", root / "base-model")
    write_pipeline_digest(root / "base-model")
    _link_tree(root / ".dreambuild" / "cache" / "safety-checker", root / "safety-checker")
    photos_zip(root / "photos.zip")  # the user's photos
    outputs, server, log = {}, None, (tmp_path_factory.mktemp("serve") / "serve.log").open("w+")
    rest = list(commands)
    for command in commands:
        rest.pop(0)
        if any(command[: len(download)] == download for download in HUB_DOWNLOADS):
            continue
        if command == ["source", ".venv/bin/activate"]:
            env.update(VIRTUAL_ENV=str(root / ".venv"), PATH=f"{root / '.venv' / 'bin'}:{env['PATH']}")
            continue
        if command == ["dreambuild", "serve", "&"]:
            server = subprocess.Popen(
                ["dreambuild", "serve", "--port", str(port)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            _wait_ready(env["DREAMBUILD_URL"], server, log)
            break
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        outputs[shlex.join(command)] = done
    assert server is not None, "the README's block has no `dreambuild serve &`"
    yield {
        "root": root,
        "env": env,
        "url": env["DREAMBUILD_URL"],
        "rest": rest,
        "outputs": outputs,
        "log": log,
        "token": (root / ".dreambuild" / "token").read_text().strip(),
    }
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


def _wait_ready(url: str, server: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise AssertionError(f"dreambuild serve exited: {log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("dreambuild serve did not answer within 180 s")


def test_your_own_service_step_by_step(own_service):
    root, env, timings = own_service["root"], own_service["env"], {}
    added = {command: out.stdout.strip() for command, out in own_service["outputs"].items() if " templates add " in f" {command}"}
    assert len(added) == 2 and all(re.fullmatch(r"[0-9a-f]{64}", v) for v in added.values()), added
    own_service["log"].seek(0)
    started_with = own_service["log"].read()
    assert "base " + str(root / "base-model") in started_with and "MISSING" not in started_with, started_with
    assert "template: vanilla " in started_with and "template: vanilla-sd15 " in started_with and "LoRA too" in started_with
    results = {}
    for command in own_service["rest"]:
        args = command + TINY.get(command[1], [])
        started = time.monotonic()
        done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        timings[" ".join(args[:2])] = time.monotonic() - started
        assert done.returncode == 0, f"{shlex.join(args)}: {done.stdout[-1000:]} {done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        results[args[1]] = done
    catalog = results["catalog"].stdout
    assert "dreambooth (this checkout)" in catalog and "vanilla-sd15  builds full+lora" in catalog, catalog
    # train named no versions: it took the catalog's trainer and the vanilla template, and said so.
    vanilla = added["dreambuild templates add vanilla --bake safety-checker=safety-checker"]
    assert f"template sha256:{vanilla}" in results["train"].stderr or f"template {vanilla}" in results["train"].stderr, results["train"].stderr
    image = results["train"].stdout.strip().splitlines()[-1]
    assert image.startswith(f"oci:{root / '.dreambuild' / 'images'}:alice/toy@sha256:"), image
    (written,) = results["run"].stdout.split()
    assert Path(written) == Path("out") / "output-0.png" or Path(written) == root / "out" / "output-0.png"
    assert Image.open(root / "out" / "output-0.png").size == (64, 64)
    listed = results["predictions"].stdout.splitlines()
    assert listed and all("alice/toy" in line for line in listed) and "succeeded" in listed[0]
    print("journey: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_the_official_clients_train_then_run_with_their_defaults(own_service, tmp_path):
    """Python: trainings.create with an open file (the client uploads it to /v1/files), then
    run with the client's default timeouts. JavaScript: files.create, trainings.create, run."""
    url, token, root = own_service["url"], own_service["token"], own_service["root"]
    trainer = httpx.get(f"{url}/v1/catalog", headers={"Authorization": f"Bearer {token}"}).json()["trainers"][0]["version"]
    client = replicate.Client(api_token=token, base_url=url)
    with open(root / "photos.zip", "rb") as photos:
        training = client.trainings.create(
            model="dreambuild/dreambooth",
            version=trainer,
            destination="alice/pyclient",
            input={
                "instance_prompt": "a photo of a cjw toy",
                "class_prompt": "a photo of a toy",
                "instance_data": photos,
                "max_train_steps": 2,
                "resolution": 64,
                "with_prior_preservation": False,
            },
        )
    while training.status not in ("succeeded", "failed", "canceled"):
        time.sleep(1)
        training.reload()
    assert training.status == "succeeded", training.error
    assert training.output["version"].startswith("alice/pyclient:sha256:")
    output = client.run(
        training.output["version"],
        input={"prompt": "a photo of a cjw toy", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 1, "disable_safety_check": True},
    )
    (image,) = output
    assert httpx.get(str(image)).content[1:4] == b"PNG"  # a signed URL: no token

    done = subprocess.run(
        ["node", str(REPO_ROOT / "tests" / "js" / "train_then_run.mjs"), url, token, trainer, "alice/jsclient", str(root / "photos.zip")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["training"]["status"] == "succeeded", result
    assert result["training"]["version"].startswith("alice/jsclient:sha256:")
    assert result["outputs"] == [{"status": 200, "png": True}], result


def test_the_readmes_curl_examples(own_service):
    """The trainings service's and the predictions' curl blocks, run by bash as written (the
    service's port for 8000; two training steps instead of 2000), after the step-by-step block
    (alice/toy exists; photos.zip is there; photo.png is the user's)."""
    root, env, url = own_service["root"], own_service["env"], own_service["url"]
    text = (REPO_ROOT / "README.md").read_text()
    script = ["set -euo pipefail"]
    for heading in ("## The trainings service", "### Predictions"):
        block = re.search(r"```bash\n(.*?)```", text[text.index(heading) :], re.S).group(1)
        script += [line for line in block.splitlines() if not line.startswith("dreambuild serve")]
    source = "\n".join(script).replace("http://127.0.0.1:8000", url)
    source = source.replace('"max_train_steps": 2000', '"max_train_steps": 2, "with_prior_preservation": false')
    Image.new("RGB", (64, 64), (30, 90, 200)).save(root / "photo.png")
    done = subprocess.run(["bash", "-c", source], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answers, decoder, rest = [], json.JSONDecoder(), done.stdout.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        answers.append(value)
        rest = rest[end:].strip()
    training, waited, with_file, queued = answers
    assert training["model"] == "yourusername/yourmodel" and training["input"]["instance_data"].startswith(f"{url}/v1/uploads/")
    assert with_file["model"] == "alice/toy" and queued["model"] == "yourusername/yourmodel" and "detail" not in with_file
    headers = {"Authorization": f"Bearer {own_service['token']}"}

    def finished(prediction: dict) -> dict:
        deadline = time.monotonic() + 300
        while (doc := httpx.get(f"{url}/v1/predictions/{prediction['id']}", headers=headers).json())["status"] not in (
            "succeeded",
            "failed",
            "canceled",
        ) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert doc["status"] == "succeeded", doc.get("error")
        return doc

    # Prefer: wait answers the finished prediction, or (as the README says) `starting` when its
    # wait runs out first: here a cold start beside a training on two busy cores may take longer.
    assert waited["model"] == "alice/toy" and waited["status"] in ("succeeded", "starting"), waited
    waited = waited if waited["status"] == "succeeded" else finished(waited)
    assert waited["output"][0].startswith(f"{url}/v1/files/")
    for prediction in (with_file, queued):
        finished(prediction)
    # The section's CLI block: run with an image file, then the list (its `get|cancel ID` is the syntax line).
    section = text[text.index("### Predictions") :]
    block = re.findall(r"```bash\n(.*?)```", section[: section.index("### Many machines")], re.S)[1]
    run, listing = (shlex.split(line.split(";")[0], comments=True) for line in block.splitlines())
    for command in (run + TINY["run"], listing):
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{shlex.join(command)}: {done.stderr[-2000:]}"
    assert Image.open(root / "out" / "output-0.png").size == (64, 64) and "succeeded" in done.stdout.splitlines()[0]


FLUX_BLOCK = "### FLUX.1 on the same service"


def readme_python(heading: str) -> str:
    """The first Python block after ``heading`` in the README."""
    text = (REPO_ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S).group(1)


def test_flux_on_the_same_service_as_written(own_service, tiny_flux_schnell, tmp_path, monkeypatch):
    """The FLUX block, as written, on the step-by-step block's service: the base fetched (a tiny
    FLUX.1-schnell at that path, its digest beside it) while the service runs, its template added,
    a FLUX LoRA trained by base_model with Replicate's FLUX trainer's request (input_images,
    trigger_word, steps: its defaults), then run. Then Replicate's guide as the README's Python
    block writes it (models.create, trainings.create with a file handle, run); the version through
    the API and the JS client: one small layer over the template, FLUX's inputs the template's
    schema (no negative_prompt), and the SD base refused on the FLUX template."""
    from builder.oci.layout import OciLayout

    root, env, url = own_service["root"], own_service["env"], own_service["url"]
    results = {}
    for command in readme_commands(FLUX_BLOCK):
        if command[:3] == ["python", "-m", "trainer.fetch_base_model"]:
            dest = root / command[command.index("--dest") + 1]
            _link_tree(tiny_flux_schnell, dest)
            write_pipeline_digest(dest)
            continue
        extra = {"train": ["-i", "resolution=64"], "run": TINY["run"]}.get(command[1], [])
        args = ["steps=2" if word == "steps=1000" else word for word in command] + extra
        done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{shlex.join(args)}: {done.stderr[-3000:]}"
        results[command[1]] = done
    assert "base-model-flux-schnell (the local trainer's base_model flux-schnell)" in results["templates"].stderr
    image = results["train"].stdout.strip().splitlines()[-1]
    assert image.startswith(f"oci:{root / '.dreambuild' / 'images'}:alice/flux-toy@sha256:"), image
    assert Image.open(root / "out-flux" / "output-0.png").size == (64, 64)

    layout = OciLayout(root / ".dreambuild" / "images")
    layers = layout.manifest(image.rsplit("@", 1)[1]).json["layers"]
    assert layers[-1]["size"] < 300_000  # the adapters, not a pipeline
    headers = {"Authorization": f"Bearer {own_service['token']}"}
    version = httpx.get(f"{url}/v1/models/alice/flux-toy", headers=headers).json()["latest_version"]["id"]
    trained = next(t for t in httpx.get(f"{url}/v1/trainings", headers=headers).json()["results"] if t["model"] == "alice/flux-toy")
    assert "No class_prompt: training without prior preservation" in trained["logs"], trained["logs"][-3000:]
    assert "of FLUX LoRA rank 16 " in trained["logs"], trained["logs"][-3000:]  # Replicate's FLUX trainer's default rank
    inputs = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 1, "disable_safety_check": True}
    wrong = httpx.post(f"{url}/v1/predictions", headers=headers, json={"version": version, "input": {**inputs, "negative_prompt": "x"}})
    assert wrong.status_code == 422 and "negative_prompt" in wrong.text
    trainer = httpx.get(f"{url}/v1/catalog", headers=headers).json()["trainers"][0]["version"]
    guide = readme_python(FLUX_BLOCK)
    tiny = {
        '"steps": 1000': '"steps": 2, "resolution": 64',
        "time.sleep(5)": "time.sleep(1)",
        '{"prompt": "a photo of cjw on a beach"}': f"{{'prompt': 'cjw', **{inputs}}}",
    }
    for written, changed in {"http://127.0.0.1:8000": url, **tiny}.items():
        assert written in guide, written
        guide = guide.replace(written, changed)
    monkeypatch.chdir(root)  # open("photos.zip"), as the user's shell would
    scope = {"TOKEN": own_service["token"], "TRAINER_VERSION": trainer}
    exec(compile(guide, "README.md (FLUX, Python)", "exec"), scope)
    assert scope["training"].status == "succeeded", scope["training"].error
    assert scope["training"].output["version"].startswith("alice/flux-cjw:sha256:")
    assert scope["training"].input["input_images"].startswith(f"{url}/v1/uploads/")  # the client's file handle, as an upload
    assert httpx.get(str(scope["output"][0])).content[:4] == b"\x89PNG"
    created = httpx.get(f"{url}/v1/models/alice/flux-cjw", headers=headers).json()
    assert created["hardware"] == "gpu-h100" and created["latest_version"]["id"] == scope["training"].output["version"].split(":", 1)[1]
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "in.png")
    node = subprocess.run(
        ["node", str(REPO_ROOT / "tests" / "js" / "run_model.mjs"), url, own_service["token"], f"alice/flux-toy:{version}", str(tmp_path / "in.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert node.returncode == 0 and json.loads(node.stdout.strip().splitlines()[-1])["outputs"][0]["png"], node.stderr
    # A training of the trainer's default (SD) base on the FLUX template: refused at creation.
    catalog = httpx.get(f"{url}/v1/catalog", headers=headers).json()
    flux_template = next(t["version"] for t in catalog["templates"] if t["name"] == "vanilla-flux-schnell")
    refused = subprocess.run(
        [
            "dreambuild",
            "train",
            "--template-version",
            flux_template,
            "-i",
            "lora_rank=4",
            "-i",
            "instance_prompt=a photo of cjw toy",
            "-i",
            "class_prompt=a photo of a toy",
            "-i",
            "instance_data=@photos.zip",
            "--model",
            "alice/wrong",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "the trainer's base is" in refused.stderr and "'vanilla-flux-schnell' bakes" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


MANY_MACHINES = "### Many machines (`dreambuild worker`, PostgreSQL)"


def test_many_machines_as_written(checkout, registry, tiny_base, safety_checker, tmp_path):
    """The README's many-machines configuration and commands as written: `dreambuild serve`, two
    GPU workers and a CPU one (each its own --data-dir and --name), `dreambuild workers`, then a
    user's training and prediction through them. The
    only changes: the hosts (db, api, registry) are this test's PostgreSQL, a free loopback port
    and the test registry; /var/lib/dreambuild is ./var; the trainer version is the one
    `dreambuild catalog --local` prints, as the configuration's comment says, and its base the
    tiny model; serve gets that free port; train and run get tiny sizes."""
    from fixtures.services import start_postgres

    root = checkout["root"]
    assert checkout["demo"].returncode == 0, "./dev demo failed: its environment is the journey's"
    env = {**checkout["env"], "VIRTUAL_ENV": str(root / ".venv"), "PATH": f"{root / '.venv' / 'bin'}:{checkout['env']['PATH']}"}
    section = (REPO_ROOT / "README.md").read_text()
    section = section[section.index(MANY_MACHINES) :]
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    local = subprocess.run(["dreambuild", "catalog", "--local"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    (trainer,) = re.findall(r"([0-9a-f]{64})  dreambooth \(this checkout\)", local.stdout)
    (shown,) = re.findall(r"^  ([0-9a-f]{64}):\s+# a trainer version", config, re.M)
    postgres, port, procs = start_postgres(), free_port(), []
    work = tmp_path / "box"
    work.mkdir()
    try:
        for before, after in (
            ("postgresql://dreambuild:secret@db:5432/dreambuild", postgres.create_database("journey")),
            ("api:8000", f"127.0.0.1:{port}"),
            ("registry:5000", registry.host),
            ("/models/sd15", str(tiny_base)),
            (shown, trainer),
        ):
            assert before in config, before
            config = config.replace(before, after)
        (work / "service.yaml").write_text(config + f"port: {port}\n")
        # What the configuration's comment says pushed the template its template_repositories read.
        pushed = subprocess.run(
            [
                "dreambuild",
                "templates",
                "add",
                "vanilla",
                "--bake",
                f"safety-checker={safety_checker}",
                "--to",
                f"{registry.host}/dreambuild/vanilla",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert pushed.returncode == 0, pushed.stderr
        commands = [[word.replace("/var/lib/dreambuild/", "var/") for word in command] for command in readme_commands(MANY_MACHINES)]
        assert commands[0] == ["dreambuild", "serve", "--config", "service.yaml"], commands
        names = [command[command.index("--name") + 1] for command in commands if "--name" in command]
        photos_zip(work / "photos.zip")  # the user's photos
        timings = {}
        for command in commands:
            if command[:2] in (["dreambuild", "serve"], ["dreambuild", "worker"]):  # long-running: in the background
                log = open(work / f"{command[1]}-{len(procs)}.log", "w")
                procs.append(subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                if command[1] == "serve":
                    _wait_ready(f"http://127.0.0.1:{port}", procs[-1], open(log.name))
            elif command[0] == "export":
                env.update(word.replace("api:8000", f"127.0.0.1:{port}").split("=", 1) for word in command[1:])
            elif command[:2] == ["dreambuild", "workers"]:
                _wait_listed(command, names, work, env)
            else:
                command = [trainer if word == shown else word for word in command] + TINY.get(command[1], [])
                started = time.monotonic()
                done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
                timings[command[1]] = time.monotonic() - started
                assert done.returncode == 0, f"{shlex.join(command)}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
                if command[1] == "train":  # built on a CPU worker, pushed to the registry
                    assert done.stdout.strip().splitlines()[-1].startswith(f"{registry.host}/alice/toy@sha256:"), done.stdout
        assert set(timings) == {"train", "run"} and Image.open(work / "out" / "output-0.png").size == (64, 64)
        print("journey, many machines: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        postgres.stop()


def _wait_listed(command: list[str], names: list[str], cwd: Path, env: dict) -> None:
    """Until ``dreambuild workers`` lists every worker (each heartbeats once it is up)."""
    deadline = time.monotonic() + 180
    while True:
        listed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if listed.returncode == 0 and all(name in listed.stdout for name in names) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert listed.returncode == 0 and all(name in listed.stdout for name in names), listed.stdout + listed.stderr
