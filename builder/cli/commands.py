"""The ``dreambuild`` command line. Every failure is one line on stderr and a non-zero exit
(:func:`run`, the console script, turns an error into that line; commands just raise)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from builder.service.schema import FINISHED, Stage, Status
from dreambuild.errors import DreambuildError

app = typer.Typer(
    help="dreambuild: train Stable Diffusion with DreamBooth and ship it as a Cog model image.", no_args_is_help=True, pretty_exceptions_enable=False
)
# soft_wrap: a message is one line whatever its length (Rich would break it at 80 columns when not
# on a terminal, splitting the paths and URLs of a service's log).
err = Console(stderr=True, soft_wrap=True)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"dreambuild {version('dreambuild')}")
        except PackageNotFoundError:
            print("dreambuild (not installed: running from a checkout)")
        raise typer.Exit()


@app.callback()
def main(show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """dreambuild command line."""


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _logging(level: int, log_format: str) -> None:
    """Logs on stderr: lines for people, or one JSON object per line for a log pipeline."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"asctime": "time"}))
    elif log_format == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    else:
        fail(f"--log-format {log_format!r}: choose text or json")
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for chatty in ("httpx", "httpcore", "alembic.runtime.plugins"):  # a line per request the service makes; alembic's set-up
        logging.getLogger(chatty).setLevel(logging.WARNING)


LOG_FORMAT = typer.Option("text", "--log-format", help="text, or json (one object per line).")


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="Directory for summary.json, output.zip and the generated PNG.")) -> None:
    """Run the pipeline end to end on tiny local models, with no configuration."""
    try:
        from builder.cli.demo import run_demo

        run_demo(out)
    except (OSError, httpx.HTTPError) as exc:  # a timeout, a refused connection, a full disk
        fail(f"the demo stopped: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
    except ImportError as exc:  # a builder-only install: no ML stack
        fail(f"the demo needs the ML stack ({exc.name or exc} is not installed): install dreambuild[all], or run ./dev demo in a checkout")


@app.command()
def serve(
    config: Path = typer.Option(None, help="Service configuration (YAML); default: embedded defaults."),
    host: str = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
    data_dir: Path = typer.Option(None, help="Data directory (default: the configuration's data_dir, else DREAMBUILD_HOME, else ./.dreambuild)."),
    log_format: str = LOG_FORMAT,
    access_log: bool = typer.Option(True, help="Log every request (uvicorn's access log)."),
) -> None:
    """Run the trainings service (POST /v1/trainings → train → build → push → webhook)."""
    import uvicorn

    from builder.service.app import create_app
    from builder.service.config import ensure_local_token, load_config

    _logging(logging.INFO, log_format)
    settings = load_config(config, host=host, port=port, data_dir=data_dir)
    token_file = ensure_local_token(settings)
    app_ = create_app(settings)
    if token_file:
        err.print(f"API token (all owners): {token_file}", highlight=False)
    for line in setup_lines(settings):
        err.print(line, highlight=False)
    err.print(f"dreambuild service on {settings.base_url} (docs: {settings.base_url}/docs)", highlight=False)
    err.print(f"Cog servers of cog-http trainers: --upload-url {app_.state.service.cog_upload_url}", highlight=False)
    # log_config=None: uvicorn's loggers (the access log among them) go through the handler above.
    uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info", access_log=access_log, log_config=None)


def setup_lines(settings) -> list[str]:
    """What a service starts with, for its first lines: data, catalog, where models go, and how
    to fill what is missing."""
    lines = [f"data: {settings.data_dir}"]
    if not settings.trainers:
        lines.append(
            "warning: no trainer in the catalog (this install has no checkout's trainer): list trainers in the "
            "configuration (README, 'The trainings service'); until then every training is refused"
        )
    for version, entry in settings.trainers.items():
        where = {"local": "", "cog-http": f", {len(entry.pool)} server(s)", "docker": f", image {entry.image}"}[entry.runner]
        line = f"trainer: {entry.name} {version[:12]} (runner {entry.runner}{where})"
        if entry.runner == "local":
            base = entry.local_base()
            line += f", base {base}" + (
                ""
                if (base / "model_index.json").is_file()
                else " MISSING: `python -m trainer.fetch_base_model` writes SD 1.5 there, or set DREAMBUILD_BASE_MODEL (README, 'Your own service')"
            )
            named = [f"{name} ({path})" for name, path in entry.local_bases().items() if (path / "model_index.json").is_file()]
            line += f"; base_model {', '.join(named)}" if named else ""
        lines.append(line)
    templates = settings.template_catalog()
    lines += [
        f"template: {entry.name} {version[:12]}" + (f" (base {entry.base_digest[:19]}: LoRA too)" if entry.base_digest else "")
        for version, entry in templates.items()
    ]
    if not templates:
        lines.append("templates: none, so every training is refused: add one with `dreambuild templates add vanilla` (README, 'Your own service')")
    lines.append(f"models go to: {settings.registry or f'oci:{settings.layout}'}")
    return lines


@app.command()
def worker(
    config: Path = typer.Option(..., help="The service's configuration (workers: external, database_url: postgresql://…)."),
    gpu: str = typer.Option(None, help="The GPU this worker trains on (default: CUDA_VISIBLE_DEVICES); one worker per GPU."),
    roles: str = typer.Option(
        "train,build,webhooks,predict",
        help="What it runs: train (the trainer versions' queues), "
        "build (build + push), webhooks, predict (hosted predictions, "
        "models kept warm); a CPU-only worker: build,webhooks.",
    ),
    trainer: list[str] = typer.Option([], help="Only these trainer versions (repeatable; default: every one in the catalog)."),
    data_dir: Path = typer.Option(None, help="This worker's own directory (work files, layer cache); shares nothing with the API."),
    name: str = typer.Option(None, help="How `dreambuild workers` names it (default host-pid[-gpuN])."),
    log_format: str = LOG_FORMAT,
) -> None:
    """Run the pipeline's jobs from the queue (many machines: README, "Many machines")."""
    from builder.service.config import load_config
    from builder.service.workers.worker import run_worker

    _logging(logging.WARNING, log_format)
    settings = load_config(config, data_dir=data_dir)
    run_worker(settings, roles={r.strip() for r in roles.split(",") if r.strip()}, gpu=gpu, trainers=trainer or None, name=name)


@app.command()
def workers(
    config: Path = typer.Option(..., help="The service's configuration (its database_url)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the live workers: their GPU, trainer versions and current trainings."""
    from builder.service.config import load_config
    from builder.service.store.database import Database
    from builder.service.workers.jobs import STALLED_SECONDS

    settings = load_config(config)
    live = Database(settings.database).heartbeats.live(within=STALLED_SECONDS)
    if as_json:
        print(json.dumps(live, indent=2))
        return
    if not live:
        err.print("no live workers", highlight=False)
    for w in live:
        versions = ",".join(v[:12] for v in w["trainer_versions"]) or "-"
        print(
            f"{w['name']}\tgpu={w['gpu'] if w['gpu'] is not None else '-'}\troles={','.join(w['roles'])}\t"
            f"trainers={versions}\tcurrent={','.join(w['current']) or 'idle'}\tseen={time.time() - w['last_seen']:.0f}s ago"
        )


@app.command()
def predict(
    image: str = typer.Argument(..., help="A built model (registry/owner/name@sha256:…, oci:PATH:NAME@sha256:…) or a template."),
    inputs: list[str] = typer.Option([], "-i", "--input", help="key=value; key=@file for a file input (repeatable)."),
    out: Path = typer.Option(Path("."), "-o", "--out", help="Directory for the outputs."),
    weights: Path = typer.Option(None, help="A fine-tune directory to use instead of the image's /src/weights (try a template)."),
    engine: str = typer.Option("auto", help="docker (docker run), local (no Docker: a local Cog server), or auto."),
    gpus: bool = typer.Option(True, help="With the docker engine: request the GPUs."),
) -> None:
    """Run a model image: with a Docker engine, `docker run`; without, its layers are pulled into a
    cache and it runs in a local Cog server with this Python environment."""
    from builder.cog.predict_image import predict as run_prediction

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    written = run_prediction(
        image,
        inputs,
        out,
        weights=weights,
        engine=engine,
        gpus=gpus,
        on_step=lambda message: err.print(f"[dim]•[/] {message}", highlight=False, soft_wrap=True),
    )
    for path in written:
        print(path)


@app.command()
def build(
    weights: str = typer.Option(..., help="output.zip, a diffusers pipeline directory, or an http(s) URL of a zip."),
    template: str = typer.Option(
        ...,
        help="Template image (registry/repo@sha256:…, registry/repo:tag, oci:PATH:NAME) "
        "or a bare sha256 version looked up in DREAMBUILD_TEMPLATE_REPOSITORIES.",
    ),
    model: str = typer.Option(
        ...,
        help="Destination: registry/owner/name[:tag], oci:PATH:owner/name[:tag], or owner/name (DREAMBUILD_REGISTRY, else the embedded OCI layout).",
    ),
    notes: str = typer.Option("", help="Notes recorded in the image's labels."),
    backend: str = typer.Option("auto", help="oci (daemonless), docker (the engine at DOCKER_HOST), or auto."),
    compression: str = typer.Option(
        None, help="Weights layer compression: none, gzip[:LEVEL], zstd[:LEVEL] (default DREAMBUILD_LAYER_COMPRESSION or none)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the reference."),
) -> None:
    """Layer weights onto a template image and push it; print the pushed reference (the model version)."""
    from builder.image.build import Reporter, build_image

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as progress:
        task = progress.add_task("weights layer", total=None, visible=False)
        reporter = Reporter(
            step=lambda message: err.print(f"[dim]•[/] {message}", highlight=False, soft_wrap=True) if not as_json else None,
            weights_total=lambda total: progress.update(task, total=total, visible=True),
            weights_bytes=lambda n: progress.advance(task, n),
        )
        result = build_image(weights, template, model, notes=notes, backend=backend, compression=compression, reporter=reporter)
    if as_json:
        print(json.dumps({k: v for k, v in result.as_json().items() if k != "steps"}))
    else:
        print(result.image)


# --- templates and the catalog ----------------------------------------------------------------

templates_app = typer.Typer(help="Template images in the embedded store, which the embedded catalog offers.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
CONFIG_OPTION = typer.Option(None, "--config", help="Service configuration (YAML); default: embedded defaults.")
DATA_DIR_OPTION = typer.Option(
    None, "--data-dir", help="Data directory (default: the configuration's data_dir, else DREAMBUILD_HOME, else ./.dreambuild)."
)


@templates_app.command("add")
def templates_add(
    template: str = typer.Argument(
        ...,
        help="A template of this checkout (templates/<name>: vanilla, vanilla-sd15, "
        "controlnet-canny, …), or an image reference of one built with Cog "
        "(registry/repo@sha256:… or :tag), copied in.",
    ),
    bake: list[str] = typer.Option(
        [], "--bake", help="KEY=DIR baked under /opt/dreambuild: safety-checker, controlnet, annotators, base (repeatable)."
    ),
    to: str = typer.Option(
        None,
        "--to",
        help="Also push it to this registry repository (registry/repo[:tag]), which a service lists in template_repositories (many machines).",
    ),
    config: Path = CONFIG_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Write a template of this checkout into the embedded image store (no Docker, no Cog build):
    the embedded service's catalog offers it at once; print its version."""
    from builder.checkout import REPO_ROOT, require_checkout
    from builder.cli.template_image import make_template_image, pull_template, push_template, template_env
    from builder.service.config import load_config
    from builder.settings import TEMPLATE_BASES

    settings = load_config(config, data_dir=data_dir)
    if "/" in template:  # an image reference: a template built and pushed with Cog
        if bake:
            fail("--bake writes a template of this checkout; an image built with Cog bakes its own weights")
        name, version = pull_template(template, settings.layout, settings.builder_settings())
        if to:
            push_template(settings.layout, name, to, settings.builder_settings())
        err.print(f"template {name} in oci:{settings.layout}:dreambuild/{name} (the embedded catalog offers it)", highlight=False)
        print(version.removeprefix("sha256:"))
        return
    require_checkout("templates add")
    baked = {}
    for pair in bake:
        key, sep, directory = pair.partition("=")
        if not sep or not key or not directory:
            fail(f"--bake {pair!r} is not KEY=DIR")
        baked[key] = Path(directory).expanduser().absolute()
    env = template_env(template) if (REPO_ROOT / "templates" / template / "cog.yaml").is_file() else []
    if "DREAMBUILD_BASE=/opt/dreambuild/base" in env and "base" not in baked:
        # Where `python -m trainer.fetch_base_model [--dest base-model-<name>]` put the trainer's base of this template.
        named = TEMPLATE_BASES.get(template)
        default = REPO_ROOT / ("base-model" if named is None else f"base-model-{named}")
        if default.is_dir():
            baked["base"] = default
            err.print(f"base: {default} (the local trainer's {'default' if named is None else 'base_model ' + named})", highlight=False)
    version = make_template_image(settings.layout, template, baked=baked)
    if to:
        push_template(settings.layout, template, to, settings.builder_settings())
    if any(line.startswith("DREAMBUILD_SAFETY_CHECKER=") for line in env) and "safety-checker" not in baked:
        err.print(
            "note: no safety checker baked: its predictions fail unless disable_safety_check is true (bake one with "
            "--bake safety-checker=DIR; `hf download CompVis/stable-diffusion-safety-checker --local-dir DIR`)",
            highlight=False,
        )
    err.print(
        f"template {template} in oci:{settings.layout}:dreambuild/{template} (the embedded catalog offers it)"
        + (f" and {to} (for template_repositories)" if to else ""),
        highlight=False,
    )
    print(version.removeprefix("sha256:"))


@templates_app.command("list")
def templates_list(config: Path = CONFIG_OPTION, data_dir: Path = DATA_DIR_OPTION) -> None:
    """This checkout's templates and the version of each in the embedded store (or "-")."""
    from builder.checkout import has_checkout
    from builder.cli.template_image import checkout_templates
    from builder.service.config import layout_templates, load_config

    settings = load_config(config, data_dir=data_dir)
    stored = {entry.name: (version, entry) for version, entry in layout_templates(settings.layout).items()}
    for name in sorted(set(checkout_templates() if has_checkout() else []) | set(stored)):
        version, entry = stored.get(name, ("-", None))
        base = f"  base {entry.base_digest}" if entry and entry.base_digest else ""
        print(f"{name:20} {version}{base}")


@app.command()
def catalog(
    local: bool = typer.Option(
        False, "--local", help="Read the configuration here (--config, or embedded defaults) instead of asking the running service."
    ),
    config: Path = CONFIG_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print GET /v1/catalog's JSON."),
    url: str = typer.Option(None, "--url", help="Service URL (default DREAMBUILD_URL or http://127.0.0.1:8000)."),
    token: str = typer.Option(None, "--token", help="API token (default DREAMBUILD_TOKEN or .dreambuild/token)."),
) -> None:
    """The trainers and templates a training may name: versions, names, bases, what each builds."""
    if local or config is not None:
        from builder.service.config import catalog_listing, load_config

        listing = catalog_listing(load_config(config, data_dir=data_dir))
    else:
        listing = _client(url, token).request("GET", "/v1/catalog")
    if as_json:
        _print_json(listing)
        return
    print("trainers:" if listing["trainers"] else "trainers: none")
    for t in listing["trainers"]:
        print(f"  {t['version']}  {t['name']}  runner {t.get('runner', '?')}" + (f"  base {t['base_digest']}" if t.get("base_digest") else ""))
        for name, digest in (t.get("base_digests") or {}).items():
            print(f"    base_model {name}: {digest}")
    print("templates:" if listing["templates"] else "templates: none (add one: dreambuild templates add vanilla)")
    for t in listing["templates"]:
        print(
            f"  {t['version']}  {t['name']}  builds {'+'.join(t.get('builds') or ['full'])}"
            + (f"  base {t['base_digest']}" if t.get("base_digest") else "")
        )


# --- the service's client commands -----------------------------------------------------------

URL_OPTION = typer.Option(None, "--url", help="Service URL (default DREAMBUILD_URL or http://127.0.0.1:8000).")
TOKEN_OPTION = typer.Option(None, "--token", help="API token (default DREAMBUILD_TOKEN or .dreambuild/token).")
trainings_app = typer.Typer(help="List, show and cancel trainings.", no_args_is_help=True)
versions_app = typer.Typer(help="A model's built versions.", no_args_is_help=True)
predictions_app = typer.Typer(help="List, show and cancel predictions.", no_args_is_help=True)
app.add_typer(trainings_app, name="trainings")
app.add_typer(predictions_app, name="predictions")
app.add_typer(versions_app, name="versions")


def _client(url, token):
    from builder.cli.service_client import ServiceClient

    return ServiceClient(url, token)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2))


def _step_of(logs: str) -> str:
    """The trainer's latest progress line (step N/M, loss, ETA), if any."""
    for line in reversed((logs or "").splitlines()):
        if line.lstrip().startswith("step "):
            return line.strip()
    return ""


@app.command()
def train(
    inputs: list[str] = typer.Option([], "-i", "--input", help="Trainer input key=value; key=@file uploads the file first."),
    file: Path = typer.Option(None, "--file", help="A JSON request (the seed's payload); flags override it."),
    trainer_version: str = typer.Option(None, help="Trainer version from the service's catalog."),
    template_version: str = typer.Option(None, help="Template version from the service's catalog."),
    model: str = typer.Option(None, help="owner/name to push the new version to."),
    notes: str = typer.Option(None, help="Notes for the new version."),
    webhook: str = typer.Option(None, help="webhook_completed URL."),
    wait: bool = typer.Option(False, "--wait", help="Show the stages live; exit non-zero unless the training succeeds."),
    url: str = URL_OPTION,
    token: str = TOKEN_OPTION,
) -> None:
    """Submit a training (POST /v1/trainings); print its id, or wait for it."""
    try:
        client = _client(url, token)
        request = json.loads(file.read_text()) if file else {}
        request.setdefault("input", {}).update(client.inputs(inputs))
        for key, value in {
            "trainer_version": trainer_version,
            "template_version": template_version,
            "model": model,
            "notes": notes,
            "webhook_completed": webhook,
        }.items():
            if value is not None:
                request[key] = value
        training = client.request("POST", "/v1/trainings", json=request)
        chosen = [f"{key.removesuffix('_version')} {training[key]}" for key in ("trainer_version", "template_version") if not request.get(key)]
        if chosen:
            err.print(f"{training['id']}: the catalog's default {' and '.join(chosen)}", highlight=False)
        if not wait:
            print(training["id"])
            return
        with err.status(f"{training['id']}: queued") as status:
            while training["stage"] != Stage.DONE:
                time.sleep(1)
                training = client.request("GET", f"/v1/trainings/{training['id']}")
                detail = {Stage.TRAINING: _step_of(training["logs"]), Stage.BUILDING: "building and pushing the image"}.get(training["stage"], "")
                status.update(f"{training['id']}: {training['stage']} {detail}".rstrip())
    except (OSError, ValueError) as exc:  # a file named by -i key=@path, a malformed -i
        fail(str(exc))
    if training["status"] != Status.SUCCEEDED:
        fail(f"training {training['id']} {training['status']}: {training.get('error')}")
    print(training["image"])


@trainings_app.command("list")
def trainings_list(limit: int = typer.Option(20, help="How many, newest first."), url: str = URL_OPTION, token: str = TOKEN_OPTION) -> None:
    """The newest trainings: id, status, stage, model, version."""
    page = _client(url, token).request("GET", "/v1/trainings", params={"limit": limit})
    for t in page["results"]:
        print(f"{t['id']}  {t['status']:10} {t['stage']:9} {t['model']}  {t.get('model_version') or ''}".rstrip())


@trainings_app.command("get")
def trainings_get(training_id: str, url: str = URL_OPTION, token: str = TOKEN_OPTION) -> None:
    """One training, as JSON."""
    _print_json(_client(url, token).request("GET", f"/v1/trainings/{training_id}"))


@trainings_app.command("cancel")
def trainings_cancel(training_id: str, url: str = URL_OPTION, token: str = TOKEN_OPTION) -> None:
    """Cancel a training (stops its trainer)."""
    training = _client(url, token).request("POST", f"/v1/trainings/{training_id}/cancel")
    print(f"{training['id']}: cancel requested ({training['status']})")


@versions_app.command("list")
def versions_list(model: str = typer.Argument(..., help="owner/name"), url: str = URL_OPTION, token: str = TOKEN_OPTION) -> None:
    """A model's built versions, newest first: digest, image, training, notes."""
    owner, sep, name = model.partition("/")
    if not sep:
        fail(f"model {model!r} must be owner/name")
    page = _client(url, token).request("GET", f"/v1/models/{owner}/{name}/versions")
    for v in page["results"]:
        print(f"{v['id']}  {v['image']}  {v['training_id']}  {v.get('notes') or ''}".rstrip())


@app.command("run")
def run_model(
    model: str = typer.Argument(..., help="owner/name (its latest version) or owner/name:version"),
    inputs: list[str] = typer.Option([], "-i", "--input", help="Model input key=value; key=@file uploads the file first."),
    out: Path = typer.Option(Path("outputs"), "-o", "--out", help="Directory for the output files (with --wait)."),
    wait: bool = typer.Option(False, "--wait", help="Show progress, write the outputs to --out; exit non-zero unless it succeeds."),
    url: str = URL_OPTION,
    token: str = TOKEN_OPTION,
) -> None:
    """Run a prediction of a model on the service (POST /v1/predictions); print its id, or wait."""
    from urllib.parse import urlsplit

    if "/" not in model:
        fail(f"model {model!r} must be owner/name or owner/name:version")
    try:
        client = _client(url, token)
        prediction = client.request("POST", "/v1/predictions", json={"version": model, "input": client.inputs(inputs, for_prediction=True)})
        if not wait:
            print(prediction["id"])
            return
        with err.status(f"{prediction['id']}: {prediction['status']}") as status:
            while prediction["status"] not in FINISHED:
                time.sleep(0.5)
                prediction = client.request("GET", f"/v1/predictions/{prediction['id']}")
                last = (prediction.get("logs") or "").strip().splitlines()[-1:] or [""]
                status.update(f"{prediction['id']}: {prediction['status']} {last[0][:80]}".rstrip())
        if prediction["status"] != Status.SUCCEEDED:
            fail(f"prediction {prediction['id']} {prediction['status']}: {prediction.get('error')}")
        outputs = prediction["output"] if isinstance(prediction["output"], list) else [prediction["output"]]
        for item in outputs:
            if isinstance(item, str) and item.startswith(("http://", "https://")):
                print(client.download(item, out / urlsplit(item).path.rsplit("/", 1)[-1]))
            else:
                print(json.dumps(item))
    except (OSError, ValueError) as exc:  # a file named by -i key=@path, a malformed -i
        fail(str(exc))


@predictions_app.command("list")
def predictions_list(
    limit: int = typer.Option(20, help="How many, newest first."),
    model: str = typer.Option(None, help="Only this owner/name."),
    status: str = typer.Option(None, help="Only this status."),
    url: str = URL_OPTION,
    token: str = TOKEN_OPTION,
) -> None:
    """The newest predictions: id, status, model, version, predict time."""
    params = {k: v for k, v in {"limit": limit, "model": model, "status": status}.items() if v is not None}
    page = _client(url, token).request("GET", "/v1/predictions", params=params)
    for p in page["results"]:
        seconds = (p.get("metrics") or {}).get("predict_time")
        print(f"{p['id']}  {p['status']:10} {p['model']}  {p['version'] or '-'}  {f'{seconds:.2f}s' if seconds else ''}".rstrip())


@predictions_app.command("get")
def predictions_get(prediction_id: str, url: str = URL_OPTION, token: str = TOKEN_OPTION) -> None:
    """One prediction, as JSON."""
    _print_json(_client(url, token).request("GET", f"/v1/predictions/{prediction_id}"))


@predictions_app.command("cancel")
def predictions_cancel(prediction_id: str, url: str = URL_OPTION, token: str = TOKEN_OPTION) -> None:
    """Cancel a prediction."""
    prediction = _client(url, token).request("POST", f"/v1/predictions/{prediction_id}/cancel")
    print(f"{prediction['id']}: cancel requested ({prediction['status']})")


def run() -> None:
    """The console script, and the one place failures become the user's one line: a
    :class:`DreambuildError` says what went wrong in the user's words; anything else is
    unexpected (its traceback only with DREAMBUILD_DEBUG=1): a user never gets a stack of frames."""
    import os

    try:
        app()
    except DreambuildError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last resort
        if os.environ.get("DREAMBUILD_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc} (DREAMBUILD_DEBUG=1 shows where)", highlight=False, soft_wrap=True)
        sys.exit(1)
