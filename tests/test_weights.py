"""Weights sources: zip (read in place), directory and URL give the same checked entries."""

import hashlib
import http.server
import threading
import zipfile
from functools import partial

import pytest

from builder.image.weights import WEIGHTS_LIMITS, DirWeights, ZipWeights, materialize, open_weights
from builder.oci.layer import write_layer
from dreambuild.archives import ArchiveLimits
from dreambuild.errors import ArchiveError, InputError, ModelLayoutError
from tests.helpers import make_zip, small_pipeline_files, write_tree, zip_dir


def layer_digest(source):
    h = hashlib.sha256()
    return write_layer(source.entries(), h.update).digest, h.hexdigest()


@pytest.fixture
def weights(tmp_path):
    return write_tree(tmp_path / "pipeline", small_pipeline_files())


@pytest.mark.parametrize("prefix", ["", "output/"])
@pytest.mark.parametrize("stored", [True, False])
def test_zip_and_directory_give_the_same_layer(tmp_path, weights, prefix, stored):
    archive = zip_dir(weights, tmp_path / "output.zip", prefix=prefix, stored=stored)
    assert layer_digest(ZipWeights(archive)) == layer_digest(DirWeights(weights))
    assert ZipWeights(archive).total_bytes() == DirWeights(weights).total_bytes()


def test_directory_may_hold_the_pipeline_folder(tmp_path, weights):
    assert layer_digest(DirWeights(tmp_path)) == layer_digest(DirWeights(weights))


def test_materialize_writes_the_same_files(tmp_path, weights):
    source = ZipWeights(zip_dir(weights, tmp_path / "w.zip", prefix="out/"))
    materialize(source, tmp_path / "ctx" / "weights")
    assert {
        p.relative_to(tmp_path / "ctx" / "weights").as_posix(): p.read_bytes() for p in (tmp_path / "ctx" / "weights").rglob("*") if p.is_file()
    } == small_pipeline_files()


def test_fingerprint_changes_with_the_content(tmp_path, weights):
    archive = zip_dir(weights, tmp_path / "w.zip")
    first = ZipWeights(archive).fingerprint()
    assert ZipWeights(archive).fingerprint() == first
    (weights / "args.json").write_text('{"seed": 2}')
    zip_dir(weights, archive)
    assert ZipWeights(archive).fingerprint() != first
    before = DirWeights(weights).fingerprint()
    (weights / "args.json").write_text('{"seed": 3}')
    assert DirWeights(weights).fingerprint() != before


HOSTILE = {
    "zip slip": ({"../evil.txt": b"x"}, None, "outside the archive"),
    "absolute": ({"/etc/evil": b"x"}, None, "absolute path"),
    "symlink": ({}, {"unet/link": "/etc/passwd"}, "symbolic link"),
    "no index": ({"unet/config.json": b"{}"}, None, "model_index.json is missing"),
    "adapters alone": ({"pytorch_lora_weights.safetensors": b"x"}, None, "holds LoRA adapters"),  # no args.json
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_or_wrong_archives_are_refused(tmp_path, case):
    entries, links, message = HOSTILE[case]
    archive = make_zip(tmp_path / "w.zip", {**small_pipeline_files(), **entries} if case not in ("no index", "adapters alone") else entries, links)
    with pytest.raises(InputError, match=message):
        ZipWeights(archive)


def test_a_lora_output_is_its_own_kind(tmp_path):
    """A LoRA training's output (adapters + args.json) is accepted as such: the build decides
    whether the template can take it."""
    files = {"pytorch_lora_weights.safetensors": b"adapters", "args.json": b'{"base_digest": "sha256:00"}'}
    assert ZipWeights(make_zip(tmp_path / "lora.zip", files)).kind == "lora"
    write_tree(tmp_path / "lora", files)
    assert DirWeights(tmp_path / "lora").kind == "lora"
    assert ZipWeights(make_zip(tmp_path / "full.zip", small_pipeline_files())).kind == "pipeline"


def test_missing_component_is_named(tmp_path):
    files = {k: v for k, v in small_pipeline_files().items() if not k.startswith("unet/")}
    with pytest.raises(ModelLayoutError, match="'unet'"):
        ZipWeights(make_zip(tmp_path / "w.zip", files))


def test_limits(tmp_path, weights):
    archive = zip_dir(weights, tmp_path / "w.zip")
    with pytest.raises(ArchiveError, match="more than the limit of 3"):
        ZipWeights(archive, limits=ArchiveLimits(max_files=3))
    with pytest.raises(ArchiveError, match="limit of 1000 bytes"):
        ZipWeights(archive, limits=ArchiveLimits(max_total_bytes=1000))
    with pytest.raises(InputError, match="limit of 1000"):
        DirWeights(weights, limits=ArchiveLimits(max_total_bytes=1000))


def test_corrupt_archives(tmp_path, weights):
    archive = zip_dir(weights, tmp_path / "w.zip")
    data = archive.read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="corrupt zip archive"):
        ZipWeights(tmp_path / "truncated.zip")
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(ArchiveError, match="neither a zip archive nor a directory"):
        ZipWeights(tmp_path / "text.zip")
    # Flip bytes inside the stored safetensors: the CRC check fails while the layer streams.
    offset = data.index(small_pipeline_files()["unet/diffusion_pytorch_model.safetensors"][:64]) + 1000
    (tmp_path / "flipped.zip").write_bytes(data[:offset] + bytes(b ^ 0xFF for b in data[offset : offset + 16]) + data[offset + 16 :])
    source = ZipWeights(tmp_path / "flipped.zip")
    with pytest.raises(ArchiveError, match="corrupt zip archive: entry 'unet/diffusion_pytorch_model.safetensors'"):
        write_layer(source.entries(), lambda chunk: None)


def test_declared_sizes_bound_a_bomb(tmp_path):
    # One entry whose header claims a small size but whose data inflates far beyond it.
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in small_pipeline_files().items():
            zf.writestr(name, data if name != "args.json" else b"\0" * 5_000_000)
    raw = bytearray(archive.read_bytes())
    # Rewrite the declared uncompressed size of args.json (local + central headers) to 10 bytes.
    info = zipfile.ZipFile(archive).getinfo("args.json")
    raw[info.header_offset + 22 : info.header_offset + 26] = (10).to_bytes(4, "little")
    start = zipfile.ZipFile(archive).start_dir
    pos = raw.index(b"args.json", start) - 46
    raw[pos + 24 : pos + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    source = ZipWeights(archive)
    with pytest.raises(ArchiveError, match="args.json"):
        write_layer(source.entries(), lambda chunk: None)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_url_source_downloads_and_checks(tmp_path, weights):
    served = tmp_path / "served"
    served.mkdir()
    zip_dir(weights, served / "output.zip")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        source = open_weights(f"{base}/output.zip", tmp_path / "work")
        assert layer_digest(source) == layer_digest(DirWeights(weights))
        with pytest.raises(InputError, match="HTTP 404"):
            open_weights(f"{base}/missing.zip", tmp_path / "work2")
        with pytest.raises(InputError, match="larger than the limit"):
            open_weights(f"{base}/output.zip", tmp_path / "work3", limits=ArchiveLimits(max_total_bytes=1000))
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(InputError, match="cannot download"):
        open_weights(f"{base}/output.zip", tmp_path / "work4")


def test_other_specs_are_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_weights(tmp_path / "nope.zip", tmp_path)
    with pytest.raises(InputError, match="not a file, a directory or an http"):
        open_weights("s3://bucket/key", tmp_path)
    assert WEIGHTS_LIMITS.max_total_bytes >= 16 * 2**30  # SDXL-sized fp32 pipelines fit
