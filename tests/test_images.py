"""trainer.images: which files are photos, and how they are decoded."""

import io

import pytest
from PIL import Image

from dreambuild.errors import ImageDataError
from tests.helpers import image_bytes
from trainer.images import find_images, load_rgb


def _tree(root, files):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_layout_rules(tmp_path):
    _tree(
        tmp_path,
        {
            "a.jpg": image_bytes(fmt="JPEG"),
            "deep/er/b.PNG": image_bytes(),
            "dataset_class/c1.png": image_bytes(),
            "dataset_class/sub/c2.webp": image_bytes(fmt="WEBP"),
            "other/dataset_class/d.png": image_bytes(),  # not top-level: an instance image
            "__MACOSX/._a.jpg": b"junk",
            ".hidden/e.png": image_bytes(),
            ".f.png": image_bytes(),
            "notes.txt": b"hello",
        },
    )
    found = find_images(tmp_path)
    assert [n for _, n in found.instance] == ["a.jpg", "deep/er/b.PNG", "other/dataset_class/d.png"]
    assert [n for _, n in found.klass] == ["dataset_class/c1.png", "dataset_class/sub/c2.webp"]
    assert found.skipped == ["notes.txt"]
    assert [n for _, n in find_images(tmp_path, all_class=True).klass][:2] == ["a.jpg", "dataset_class/c1.png"]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(image_bytes(size=(80, 40), fmt="JPEG", exif=exif.tobytes()))
    assert load_rgb(path, "rotated.jpg").size == (40, 80)


@pytest.mark.parametrize("mode, color", [("RGBA", (255, 0, 0, 0)), ("LA", (0, 0)), ("L", 128), ("CMYK", (0, 255, 0, 0)), ("I;16", 300)])
def test_every_mode_becomes_rgb(tmp_path, mode, color):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    buf = io.BytesIO()
    Image.new(mode, (8, 8), color).save(buf, "JPEG" if mode == "CMYK" else "PNG")
    path.write_bytes(buf.getvalue())
    image = load_rgb(path, path.name)
    assert image.mode == "RGB"
    if mode in ("RGBA", "LA"):  # fully transparent pixels become white, not black
        assert image.getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageDataError, match="'photos/broken.jpg' cannot be read") as refused:
        load_rgb(path, "photos/broken.jpg")
    assert str(tmp_path) not in str(refused.value)  # the user's name for it, never this machine's path
    truncated = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    truncated.write_bytes(buffer.getvalue()[:80])
    with pytest.raises(ImageDataError, match="'photos/cut.png' cannot be read") as refused:
        load_rgb(truncated, "photos/cut.png")
    assert str(tmp_path) not in str(refused.value)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """A few kilobytes of PNG that would decode to 108 million pixels (PIL only warns at this size)."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 9_000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageDataError, match=r"'bomb.png' is 12000x9000 pixels \(108 MP\), over the limit of 50 MP"):
        load_rgb(bomb, "bomb.png")
    huge = tmp_path / "huge.png"  # past PIL's own limit, which stops it while opening: the same message
    Image.new("1", (15_000, 12_000)).save(huge, optimize=True)
    with pytest.raises(ImageDataError, match=r"^image 'huge.png' is over the limit of 50 MP"):
        load_rgb(huge, "huge.png")


def test_photos_are_kept_at_the_training_resolution(tmp_path):
    from trainer.images import load_all

    (tmp_path / "wide.png").write_bytes(image_bytes(size=(300, 200)))
    (tmp_path / "small.png").write_bytes(image_bytes(size=(40, 50)))
    wide, small = load_all([(tmp_path / "wide.png", "wide.png"), (tmp_path / "small.png", "small.png")], shorter_side=64)
    assert wide.size == (96, 64) and small.size == (40, 50)  # as torchvision's Resize(64) sizes them; small ones are kept
