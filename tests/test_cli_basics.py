"""The command line's own behaviour: --version, and the data directory `serve` uses."""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from builder.service.config import load_config

CLI = str(Path(sys.executable).parent / "dreambuild")


def test_version():
    done = subprocess.run([CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"dreambuild {version('dreambuild')}"


def test_serve_uses_dreambuild_home_like_the_client(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBUILD_HOME", str(tmp_path / "home"))
    assert load_config(None).data_dir == tmp_path / "home"
    assert load_config(None, data_dir=tmp_path / "flag").data_dir == tmp_path / "flag"  # the flag wins
    config = tmp_path / "service.yaml"
    config.write_text(f"data_dir: {tmp_path / 'file'}\n")
    assert load_config(config).data_dir == tmp_path / "file"  # so does the configuration file
