"""A template image written straight into an OCI image layout, without Docker or Cog.

For machines with no container engine (the demo, CI): ``/src`` holds what ``cog build -f
templates/<name>/cog.yaml`` copies from the repository (``templates/``, ``dreambuild/``, the
template's ``cog.yaml`` as ``/src/cog.yaml``); a second layer holds the weights a real template
bakes under ``/opt/dreambuild`` (here: whatever directories are given, e.g. a tiny safety
checker). No Python is installed in it: ``dreambuild predict`` runs it with the local
environment. The layers are deterministic, so the same checkout gives the same template version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from builder.checkout import REPO_ROOT
from builder.oci.layer import Layer, write_layer
from builder.oci.layout import OciLayout
from builder.oci.manifest import OCI_CONFIG, OCI_MANIFEST, Manifest, canonical_json
from builder.weights import tree_entries, walk_tree

ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DREAMBUILD_WEIGHTS=/src/weights"]


def _layer_from(layout: OciLayout, root: Path, prefix: str) -> Layer:
    upload = layout.upload()
    try:
        layer = write_layer(tree_entries(root, walk_tree(root, str(root))), upload.write, prefix=prefix)
        upload.commit(layer.digest)
    except BaseException:
        upload.abort()
        raise
    return layer


def make_template_image(layout_path: Path, template: str = "vanilla", *, baked: dict[str, Path] | None = None,
                        name: str | None = None) -> str:
    """Write the repo's ``template`` as ``dreambuild/<template>`` into the layout; return its digest.

    ``baked`` maps names under /opt/dreambuild (e.g. ``safety-checker``) to local directories.
    """
    layout = OciLayout(layout_path, create=True)
    cog_yaml = REPO_ROOT / "templates" / template / "cog.yaml"
    with tempfile.TemporaryDirectory(prefix="dreambuild-template-") as stage:
        src = Path(stage) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO_ROOT / "templates", src / "templates", ignore=ignore)
        shutil.copytree(REPO_ROOT / "dreambuild", src / "dreambuild", ignore=ignore)
        shutil.copy(cog_yaml, src / "cog.yaml")
        layers = [_layer_from(layout, src, "src")]
    for baked_name, directory in sorted((baked or {}).items()):
        layers.append(_layer_from(layout, Path(directory), f"opt/dreambuild/{baked_name}"))
    config = canonical_json({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ENV, "WorkingDir": "/src", "Cmd": ["python", "-m", "cog.server.http"],
                   "Labels": {"io.dreambuild.template.name": template}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": "dreambuild template " + template}] * len(layers),
    })
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": layout.put_blob(config), "size": len(config)},
                "layers": [{"mediaType": layer.media_type("oci"), "digest": layer.digest, "size": layer.size} for layer in layers]}
    data = json.dumps(manifest, indent=2).encode()
    result = Manifest.parse(data, OCI_MANIFEST, str(layout))
    layout.put_manifest(result, name or f"dreambuild/{template}")
    return result.digest
