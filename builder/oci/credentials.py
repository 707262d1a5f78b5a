"""Registry credentials from the Docker config file, as ``docker login`` writes it.

Looked up in ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), then in the
containers auth file (``$REGISTRY_AUTH_FILE``, or ``$XDG_RUNTIME_DIR/containers/auth.json``, as
``podman login`` writes it). ``credHelpers`` / ``credsStore`` run ``docker-credential-<name> get``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dreambuild.errors import RegistryAuthError

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # a password or an identity token

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _config_files(env: dict[str, str]) -> list[Path]:
    docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path.home() / ".docker"
    files = [docker_dir / "config.json"]
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    elif env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    return files


def _keys_for(registry: str) -> list[str]:
    if registry == "docker.io":
        return list(_HUB_KEYS)
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def _from_helper(helper: str, registry: str) -> Credentials | None:
    try:
        result = subprocess.run([f"docker-credential-{helper}", "get"], input=registry, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryAuthError(f"credential helper docker-credential-{helper} failed for {registry}: {exc}") from None
    if result.returncode != 0:
        return None  # the helper has nothing for this registry
    data = json.loads(result.stdout or "{}")
    if not data.get("Secret"):
        return None
    return Credentials(data.get("Username") or "<token>", data["Secret"])


def _from_entry(entry: dict, source: Path, registry: str) -> Credentials | None:
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except ValueError:
            raise RegistryAuthError(f"{source}: the auth entry for {registry} is not valid base64") from None
        return Credentials(username, password)
    if entry.get("username") and entry.get("password"):
        return Credentials(entry["username"], entry["password"])
    if entry.get("identitytoken"):
        return Credentials("<token>", entry["identitytoken"])
    return None


def lookup_credentials(registry: str, env: dict[str, str] | None = None) -> Credentials | None:
    """Credentials configured for ``registry`` (``host[:port]`` or ``docker.io``), or None."""
    env = dict(os.environ if env is None else env)
    keys = _keys_for(registry)
    for path in _config_files(env):
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except ValueError as exc:
            raise RegistryAuthError(f"{path} is not valid JSON ({exc})") from None
        helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
        if helper:
            found = _from_helper(helper, keys[0])
            if found:
                return found
        auths = config.get("auths") or {}
        for key in keys:
            if key in auths:
                found = _from_entry(auths[key], path, registry)
                if found:
                    return found
    return None
