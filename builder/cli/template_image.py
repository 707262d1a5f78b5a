"""A template image written straight into an OCI image layout, without Docker or Cog.

For machines with no container engine (``dreambuild templates add``, the demo, CI): ``/src``
holds what ``cog build -f templates/<name>/cog.yaml`` copies from the repository (``templates/``,
``dreambuild/``, the template's ``cog.yaml`` as ``/src/cog.yaml``); further layers hold the
weights a real template bakes under ``/opt/dreambuild`` (here: the directories given, e.g. a
safety checker, or the base of a LoRA template with its ``base.digest``); the environment is the
cog.yaml's, as ``cog build`` sets it. No Python is installed in it: the service and ``dreambuild
predict`` run it with the local environment. The layers are deterministic, so the same checkout
and weights give the same template version.

checkout template + baked folders → layers → config (env, labels) → manifest → the layout's
``dreambuild/<template>``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from builder.checkout import REPO_ROOT
from builder.cog.unpack import BASE_LABEL
from builder.image.weights import tree_entries, walk_tree
from builder.oci.layer import Layer, write_layer
from builder.oci.layout import OciLayout
from builder.oci.manifest import OCI_CONFIG, OCI_MANIFEST, Manifest, canonical_json
from builder.oci.references import RegistryRef, parse_image_ref
from builder.oci.stores import RegistryAccess, ensure_blob, open_store
from dreambuild.errors import InputError
from dreambuild.layout import baked_pipeline_digest, check_diffusers_layout

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a template may bake under /opt/dreambuild, by the variable of its cog.yaml that names it.
BAKEABLE = {
    "safety-checker": "DREAMBUILD_SAFETY_CHECKER",
    "controlnet": "DREAMBUILD_CONTROLNET",
    "annotators": "DREAMBUILD_ANNOTATORS",
    "base": "DREAMBUILD_BASE",
}


def checkout_templates() -> list[str]:
    """The templates this checkout can write (``templates/<name>/cog.yaml``)."""
    return sorted(p.parent.name for p in (REPO_ROOT / "templates").glob("*/cog.yaml"))


def template_env(template: str) -> list[str]:
    """The image's ``Env``: the cog.yaml's ``environment``, as ``cog build`` writes it."""
    cog = yaml.safe_load((REPO_ROOT / "templates" / template / "cog.yaml").read_text())
    return [PATH] + list(cog.get("environment") or [])


def _layer_from(layout: OciLayout, root: Path, prefix: str) -> Layer:
    upload = layout.upload()
    try:
        layer = write_layer(tree_entries(root, walk_tree(root, str(root))), upload.write, prefix=prefix)
        upload.commit(layer.digest)
    except BaseException:
        upload.abort()
        raise
    return layer


def make_template_image(layout_path: Path, template: str = "vanilla", *, baked: dict[str, Path] | None = None, name: str | None = None) -> str:
    """Write the repo's ``template`` as ``dreambuild/<template>`` into the layout; return its digest.

    ``baked`` maps names under /opt/dreambuild (``safety-checker``, ``controlnet``, ``annotators``,
    ``base``) to local directories. A template whose cog.yaml bakes a base (vanilla-sd15,
    vanilla-sdxl) needs ``base``: a diffusers pipeline, whose digest goes beside it
    (``base.digest``, read by the template's setup) and into the ``io.dreambuild.base.digest`` label.
    """
    if template not in checkout_templates():
        raise InputError(f"no template {template!r} in this checkout (templates/: {', '.join(checkout_templates())})")
    baked = dict(baked or {})
    unknown = sorted(set(baked) - set(BAKEABLE))
    if unknown:
        raise InputError(f"cannot bake {', '.join(unknown)}: a template bakes {', '.join(BAKEABLE)}")
    env = template_env(template)
    labels = {"io.dreambuild.template.name": template}
    if any(line.startswith("DREAMBUILD_BASE=") for line in env):
        if "base" not in baked:
            raise InputError(
                f"template {template!r} bakes a base pipeline for LoRA outputs: give it (--bake base=DIR; "
                f"`python -m trainer.fetch_base_model` writes SD 1.5 to ./base-model)"
            )
        check_diffusers_layout(Path(baked["base"]), "--bake base")
        labels[BASE_LABEL] = baked_pipeline_digest(Path(baked["base"]))
    elif "base" in baked:
        raise InputError(f"template {template!r} bakes no base (only vanilla-sd15 and vanilla-sdxl do)")
    for key, directory in baked.items():
        if not Path(directory).is_dir():
            raise InputError(f"--bake {key}={directory}: not a directory")
    layout = OciLayout(layout_path, create=True)
    cog_yaml = REPO_ROOT / "templates" / template / "cog.yaml"
    with tempfile.TemporaryDirectory(prefix="dreambuild-template-") as stage:
        src = Path(stage) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO_ROOT / "templates", src / "templates", ignore=ignore)
        shutil.copytree(REPO_ROOT / "dreambuild", src / "dreambuild", ignore=ignore)
        shutil.copy(cog_yaml, src / "cog.yaml")
        layers = [_layer_from(layout, src, "src")]
    for baked_name, directory in sorted(baked.items()):
        layers.append(_layer_from(layout, Path(directory), f"opt/dreambuild/{baked_name}"))
    if BASE_LABEL in labels:  # what the template's setup reads instead of hashing the base at each start
        with tempfile.TemporaryDirectory(prefix="dreambuild-template-") as stage:
            (Path(stage) / "base.digest").write_text(labels[BASE_LABEL] + "\n")
            layers.append(_layer_from(layout, Path(stage), "opt/dreambuild"))
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Env": env, "WorkingDir": "/src", "Cmd": ["python", "-m", "cog.server.http"], "Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"dreambuild templates add {template}"}] * len(layers),
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": layout.put_blob(config), "size": len(config)},
        "layers": [{"mediaType": layer.media_type("oci"), "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    data = json.dumps(manifest, indent=2).encode()
    result = Manifest.parse(data, OCI_MANIFEST, str(layout))
    layout.put_manifest(result, name or f"dreambuild/{template}")
    return result.digest


def push_template(layout_path: Path, template: str, to: str, access: RegistryAccess) -> str:
    """Copy ``dreambuild/<template>`` from the layout to ``to`` (``registry/repo[:tag]``, tag
    default ``latest``), blob by blob; return its digest (the same: the manifest is unchanged)."""
    ref = parse_image_ref(to, what="--to")
    if not isinstance(ref, RegistryRef) or ref.digest:
        raise InputError(f"--to {to!r}: name a registry repository (registry/repo[:tag]), where the service's template_repositories read it")
    layout = OciLayout(layout_path)
    manifest = layout.manifest(f"dreambuild/{template}")
    dest = open_store(ref, access)
    for blob in [manifest.json["config"], *manifest.json["layers"]]:
        ensure_blob(layout, dest, blob["digest"])
    dest.put_manifest(manifest, ref.tag or "latest")
    return manifest.digest


def pull_template(reference: str, layout_path: Path, access: RegistryAccess) -> tuple[str, str]:
    """Copy a template image built elsewhere (``cog build`` + ``cog push``: registry/repo@sha256:…
    or :tag) into the layout as ``dreambuild/<its name>``, blob by blob (an index: its linux/amd64
    image); return (name, digest)."""
    from builder.oci.resolve import resolve_image

    image = resolve_image(reference, access, what="template")
    labels = (image.config.get("config") or {}).get("Labels") or {}
    repository = reference.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    name = labels.get("io.dreambuild.template.name") or repository
    layout = OciLayout(layout_path, create=True)
    for blob in [image.manifest.json["config"], *image.manifest.json["layers"]]:
        ensure_blob(image.store, layout, blob["digest"])
    layout.put_manifest(image.manifest, f"dreambuild/{name}")
    return name, image.manifest.digest
