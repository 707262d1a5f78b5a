"""The dashboard's image previews read from a training's zips: only image members, never a
member's name that is not listed, at most PREVIEW_MAX_BYTES of one as decompressed."""

import pytest

from builder.service.trainings import previews
from dreambuild.errors import InputError
from tests.helpers import image_bytes, make_zip


def test_only_the_subjects_images_are_listed_and_read(tmp_path):
    png = image_bytes()
    archive = make_zip(
        tmp_path / "photos.zip",
        {
            "photos/a.png": png,
            "photos/b.JPG": png,
            "photos/notes.txt": b"x",
            "photos/.hidden.png": png,
            "dataset_class/c.png": png,
            "samples/s.png": png,
            "photos/drawing.svg": b"<svg onload='alert(1)'/>",
        },
        symlinks={"photos/link.png": "/etc/passwd"},
    )
    assert previews.zip_images(archive) == ["photos/a.png", "photos/b.JPG", "samples/s.png", "photos/link.png"]
    assert previews.zip_images(archive, "samples/") == ["samples/s.png"]
    assert previews.read_image(archive, "photos/a.png") == png
    # A symlink member is its target's text, never the file it names.
    assert previews.read_image(archive, "photos/link.png") == b"/etc/passwd"
    for name in ("photos/notes.txt", "dataset_class/c.png", "photos/drawing.svg", "../photos/a.png", "photos/missing.png"):
        assert previews.read_image(archive, name) is None, name
    assert previews.read_image(archive, "photos/a.png", "samples/") is None  # outside the asked folder
    assert previews.media_type("x.JPG") == "image/jpeg" and previews.media_type("x.svg") is None


def test_a_bomb_stops_at_the_limit_and_a_broken_zip_is_named(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setattr(previews, "PREVIEW_MAX_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("samples/huge.png", b"\0" * (64 << 20))  # 64 MiB that compress to ~64 KB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(InputError, match="samples/huge.png is over 1 MiB"):
        previews.read_image(bomb, "samples/huge.png", "samples/")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="broken.zip is not a readable zip"):
        previews.zip_images(broken)
    with pytest.raises(InputError, match="broken.zip is not a readable zip"):
        previews.read_image(broken, "a.png")
