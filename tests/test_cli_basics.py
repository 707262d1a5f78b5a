"""The command line's own behaviour: --version, and the data directory `serve` uses."""

import subprocess
import sys
import time
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


def test_relative_data_directories_are_read_where_they_are_given(tmp_path, monkeypatch):
    """`dreambuild serve` in a checkout uses ./.dreambuild: the model servers, which run in folders
    of their own, must be given the same place (the demo's last step failed on a relative one)."""
    from builder.settings import BuilderSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DREAMBUILD_HOME", raising=False)
    assert load_config(None).data_dir == tmp_path / ".dreambuild"
    assert load_config(None, data_dir=Path("rel")).data_dir == tmp_path / "rel"
    assert load_config(None, data_dir=Path("rel")).builder_settings().cache == tmp_path / "rel" / "cache"
    assert BuilderSettings.from_env({"DREAMBUILD_HOME": "home"}).cache == tmp_path / "home" / "cache"
    assert BuilderSettings.from_env({}).layout == tmp_path / ".dreambuild" / "images"


def test_a_long_path_is_printed_on_one_line(tmp_path):
    """Messages are not broken at 80 columns when stderr is a file (a service's log): the token's
    path, the docs URL and the upload URL are read back from it whole."""
    from builder.cog.server import free_port

    data = tmp_path / ("a-data-directory-whose-path-is-longer-than-a-terminal-line-" * 2)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CLI, "serve", "--port", str(free_port()), "--data-dir", str(data)], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "--upload-url" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(20)
    assert f"API token (all owners): {data / 'token'}\n" in log.read_text(), log.read_text()


def test_a_misspelled_configuration_key_is_refused_naming_the_nearest(tmp_path):
    import pytest

    from dreambuild.errors import InputError

    config = tmp_path / "service.yaml"
    config.write_text("prot: 8000\ntrainers:\n  " + "a" * 64 + ": {name: t, runer: local}\n")
    with pytest.raises(InputError) as refused:
        load_config(config)
    assert "prot: unknown key (did you mean 'port'?)" in str(refused.value)
    assert f"trainers.{'a' * 64}.runer: unknown key (did you mean 'runner'?)" in str(refused.value)
    config.write_text(f"templates: {{{'b' * 64}: {{name: v, repository: r/v, base_digest: 'sha256:…'}}}}\n")
    with pytest.raises(InputError, match="is not a base digest"):
        load_config(config)
    config.write_text("- port: 8000\n")  # a list, not a mapping
    with pytest.raises(InputError, match="a mapping of keys"):
        load_config(config, port=9000)


def test_every_yaml_block_of_the_readme_loads(tmp_path, monkeypatch):
    """The README's configurations are real examples: each loads as written."""
    import re

    from builder.checkout import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for index, block in enumerate(blocks):
        path = tmp_path / f"block-{index}.yaml"
        path.write_text(block)
        load_config(path)
    deploy = load_config(REPO_ROOT / "deploy" / "service.yaml")  # and the one deploy/ ships
    assert deploy.trainers and deploy.template_repositories


def test_users_get_public_urls_and_workers_internal_ones(tmp_path):
    config = tmp_path / "service.yaml"
    config.write_text("public_url: https://dreambuild.example.com/\ninternal_url: http://api:8000\n")
    settings = load_config(config)
    assert settings.base_url == "https://dreambuild.example.com" and settings.internal_base_url == "http://api:8000"
    assert settings.to_internal("https://dreambuild.example.com/v1/uploads/x/p.zip") == "http://api:8000/v1/uploads/x/p.zip"
    assert settings.to_internal("https://other.example.com/p.zip") == "https://other.example.com/p.zip"
    assert load_config(None, data_dir=tmp_path).internal_base_url == "http://127.0.0.1:8000"  # the default: as users


def test_every_configuration_key_is_shown_in_the_readme():
    import re

    from builder.checkout import REPO_ROOT
    from builder.service.config import ServiceConfig, TemplateEntry, TokenEntry, TrainerEntry

    shown = "\n".join(re.findall(r"```yaml\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S))
    missing = {
        model.__name__: [key for key in model.model_fields if not re.search(rf"\b{key}:", shown)]
        for model in (ServiceConfig, TrainerEntry, TemplateEntry, TokenEntry)
    }
    assert missing == {name: [] for name in missing}


def test_an_unexpected_failure_is_one_line_too(monkeypatch, capsys):
    import pytest

    from builder.cli import commands

    def broken() -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(commands, "app", broken)
    monkeypatch.delenv("DREAMBUILD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        commands.run()
    assert exited.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: unexpected RuntimeError: the disk went away")
    monkeypatch.setenv("DREAMBUILD_DEBUG", "1")
    with pytest.raises(RuntimeError):
        commands.run()


def test_the_readmes_service_configuration_serves(tmp_path):
    """The README's complete configuration, as written, is a service that starts and answers
    (its own folder and port given on the command line, as the README's flags allow)."""
    import re

    import httpx

    from builder.checkout import REPO_ROOT
    from builder.cog.server import free_port

    example = re.findall(r"```yaml\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)[0]
    (tmp_path / "service.yaml").write_text(example)
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            [CLI, "serve", "--config", "service.yaml", "--data-dir", "data", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                catalog = httpx.get(f"http://127.0.0.1:{port}/v1/catalog", headers={"Authorization": "Bearer r8_alice_secret"})
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
        assert catalog.status_code == 200, catalog.text
        assert {t["name"] for t in catalog.json()["templates"]} == {"controlnet-pose", "vanilla-sd15"}
        assert "dreambooth-sd15" in {t["name"] for t in catalog.json()["trainers"]}
        assert (tmp_path / "data" / "dreambuild.sqlite").is_file()  # where --data-dir said, relative to where it ran
    finally:
        server.terminate()
        server.wait(30)
