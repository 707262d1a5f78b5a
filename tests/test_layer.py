"""The weights layer is deterministic, correct as a tar, and hashed as it streams."""

import gzip
import hashlib
import io
import os
import tarfile

import pytest

from builder import layer as layer_mod
from builder.layer import write_layer
from dreambuild.errors import InputError


def weights_dir(root):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(3000) * 50)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "args.json").write_text("{}")
    return root


def collect(weights, **kw):
    chunks = []
    result = write_layer(weights, chunks.append, **kw)
    return result, b"".join(chunks), chunks


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_layer_is_a_tar_of_src_weights_with_matching_digests(tmp_path, compression):
    weights = weights_dir(tmp_path / "w")
    result, blob, _ = collect(weights, compression=compression)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and result.size == len(blob)
    tar_bytes = gzip.decompress(blob) if compression == "gzip" else blob
    assert result.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["src", "src/weights", "src/weights/args.json", "src/weights/model_index.json", "src/weights/unet",
                         "src/weights/unet/diffusion_pytorch_model.safetensors"]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
        assert {m.mode for m in members if m.isdir()} == {0o755} and {m.mode for m in members if m.isfile()} == {0o644}
        data = tar.extractfile("src/weights/unet/diffusion_pytorch_model.safetensors").read()
    assert data == (weights / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_same_weights_give_the_same_digest(tmp_path):
    first = weights_dir(tmp_path / "a")
    second = tmp_path / "b"
    import shutil

    shutil.copytree(first, second)
    os.utime(second / "args.json", (1e9, 1e9))  # other mtimes, same content
    assert collect(first)[0] == collect(second)[0]
    (second / "args.json").write_text('{"seed": 1}')
    assert collect(first)[0].digest != collect(second)[0].digest


def test_blob_is_streamed_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_mod, "CHUNK", 4096)
    result, blob, chunks = collect(weights_dir(tmp_path / "w"), compression="none")
    assert len(chunks) > 10 and all(len(c) >= 4096 for c in chunks[:-1])


def test_symlinks_are_refused(tmp_path):
    weights = weights_dir(tmp_path / "w")
    (weights / "escape").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="symbolic link.*escape"):
        collect(weights)
