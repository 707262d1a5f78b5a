"""Builder configuration from the environment, with embedded defaults that need none.

- ``DREAMBUILD_HOME`` (default ``./.dreambuild``): data directory; its ``images/`` is the
  embedded OCI image layout used when no registry is configured.
- ``DREAMBUILD_REGISTRY``: registry host for model names without one (``owner/name``).
- ``DREAMBUILD_TEMPLATE_REPOSITORIES``: comma-separated repositories (``registry/repo`` or
  ``oci:PATH``) searched for a template given as a bare ``sha256:`` version; default: the
  embedded layout, plus ``$DREAMBUILD_REGISTRY/dreambuild/<template>`` for every template.
- ``DREAMBUILD_INSECURE_REGISTRIES``: comma-separated hosts spoken to over plain HTTP
  (loopback hosts always are, as with Docker).
- ``DREAMBUILD_REGISTRY_RETRIES`` (default 5): attempts for transient registry failures.
- ``DREAMBUILD_LAYER_COMPRESSION`` (default ``none``, see the README's measurement).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# A copy of trainer.job.NAMED_BASES (tests/test_trainer_inputs.py keeps them equal): the trainer's
# bases besides its default, each in a folder beside it named <default>-<name> (./base-model-flux-dev).
NAMED_BASES = ("sdxl", "flux-dev", "flux-schnell")
# The base each base-baking template bakes by default in `dreambuild templates add`: None the
# trainer's default base (./base-model), else one of NAMED_BASES.
TEMPLATE_BASES = {"vanilla-sd15": None, "vanilla-sdxl": "sdxl", "vanilla-flux": "flux-dev", "vanilla-flux-schnell": "flux-schnell"}

# A copy of templates/inference/catalog.py's names (the host side does not import the Cog models'
# sources; tests/test_templates_inputs.py keeps the two equal).
TEMPLATE_NAMES = (
    "vanilla",
    "vanilla-sd15",
    "vanilla-sdxl",
    "vanilla-flux",
    "vanilla-flux-schnell",
    "controlnet-canny",
    "controlnet-pose",
    "controlnet-depth",
    "controlnet-hed",
    "controlnet-mlsd",
    "controlnet-normal",
    "controlnet-scribble",
    "controlnet-seg",
)


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


@dataclass(frozen=True)
class BuilderSettings:
    home: Path = Path(".dreambuild")
    registry: str | None = None
    template_repositories: tuple[str, ...] = ()
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    retries: int = 5
    compression: str = "none"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "BuilderSettings":
        env = os.environ if env is None else env
        home = Path(env.get("DREAMBUILD_HOME") or ".dreambuild").expanduser().absolute()  # the model servers' cwd is elsewhere
        registry = (env.get("DREAMBUILD_REGISTRY") or "").strip().rstrip("/") or None
        templates = _split(env.get("DREAMBUILD_TEMPLATE_REPOSITORIES"))
        if not templates:
            templates = [f"oci:{home / 'images'}"]
            if registry:
                templates += [f"{registry}/dreambuild/{name}" for name in TEMPLATE_NAMES]
        return cls(
            home=home,
            registry=registry,
            template_repositories=tuple(templates),
            insecure_registries=frozenset(_split(env.get("DREAMBUILD_INSECURE_REGISTRIES"))),
            retries=max(1, int(env.get("DREAMBUILD_REGISTRY_RETRIES") or 5)),
            compression=env.get("DREAMBUILD_LAYER_COMPRESSION") or "none",
        )

    @property
    def layout(self) -> Path:
        """The embedded OCI image layout."""
        return self.home / "images"

    @property
    def cache(self) -> Path:
        return self.home / "cache"
