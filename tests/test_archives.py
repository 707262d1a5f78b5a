"""dreambuild.archives: hostile and broken zips are refused and leave nothing behind."""

import zipfile

import pytest

from dreambuild.archives import ArchiveLimits, extract_zip
from dreambuild.errors import ArchiveError
from tests.helpers import make_zip


def test_extracts_nested_files(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a/b/c.txt": b"hello", "top.txt": b"x", "dir/": b""})
    files = extract_zip(archive, tmp_path / "out", label="data")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["a/b/c.txt", "top.txt"]
    assert (tmp_path / "out" / "a" / "b" / "c.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "name, message",
    [
        ("../escape.txt", "points outside"),
        ("ok/../../escape.txt", "points outside"),
        ("..\\escape.txt", "points outside"),
        ("/etc/escape.txt", "absolute path"),
        ("C:/escape.txt", "absolute path"),
    ],
)
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, name, message):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_zip(tmp_path / "evil.zip", {"good.txt": b"fine", name: b"pwned"})
    with pytest.raises(ArchiveError, match=message) as info:
        extract_zip(archive, work / "out", label="instance_data")
    assert "instance_data" in str(info.value) and repr(name) in str(info.value)
    assert not (work / "out").exists()
    assert not (tmp_path / "escape.txt").exists() and not (work / "escape.txt").exists()


def test_symlink_entry_is_refused(tmp_path):
    archive = make_zip(tmp_path / "link.zip", {"a.txt": b"a"}, symlinks={"link": "/etc/passwd"})
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out", label="data")
    assert not (tmp_path / "out").exists()


def test_file_count_limit(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"" for i in range(11)})
    with pytest.raises(ArchiveError, match="11 entries, more than the limit of 10"):
        extract_zip(archive, tmp_path / "out", label="data", limits=ArchiveLimits(max_files=10))


def test_uncompressed_size_limit(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 << 20))
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(ArchiveError, match="more than the limit"):
        extract_zip(archive, tmp_path / "out", label="data", limits=ArchiveLimits(max_total_bytes=1 << 20))
    assert not (tmp_path / "out").exists()


def _patch_declared_size(archive, size: int) -> None:
    """Rewrite an entry's uncompressed size in both headers (a lying archive)."""
    raw = bytearray(archive.read_bytes())
    local = raw.find(b"PK\x03\x04")
    raw[local + 22 : local + 26] = size.to_bytes(4, "little")
    central = raw.find(b"PK\x01\x02")
    raw[central + 24 : central + 28] = size.to_bytes(4, "little")
    archive.write_bytes(bytes(raw))


def test_entry_larger_than_declared_is_refused(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (1 << 20))
    _patch_declared_size(archive, 10)
    with pytest.raises(ArchiveError):
        extract_zip(archive, tmp_path / "out", label="data")
    assert not (tmp_path / "out").exists()


def test_not_a_zip(tmp_path):
    path = tmp_path / "photo.zip"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ArchiveError, match="instance_data is not a zip archive"):
        extract_zip(path, tmp_path / "out", label="instance_data")


def test_corrupt_zip(tmp_path):
    archive = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", b"some text " * 1000)
    raw = bytearray(archive.read_bytes())
    start = raw.find(b"PK\x03\x04") + 30 + len("a.txt")
    raw[start : start + 20] = b"\xff" * 20  # damage the compressed data
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        extract_zip(archive, tmp_path / "out", label="data")
    assert not (tmp_path / "out").exists()


def test_truncated_zip_is_reported_as_corrupt(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.txt": b"x" * 1000})
    truncated = tmp_path / "t.zip"
    truncated.write_bytes(archive.read_bytes()[:-30])
    with pytest.raises(ArchiveError, match="corrupt zip archive: its central directory is missing"):
        extract_zip(truncated, tmp_path / "out", label="data")


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"x" * 300 + ".jpg": b"1"}, "cannot be extracted: File name too long"),
        ({"a": b"file", "a/b.jpg": b"1"}, "the same name as a file and as a folder"),
        ({"a/b.jpg": b"1", "a": b"file"}, "the same name as a file and as a folder"),
    ],
)
def test_unextractable_entries_are_named_without_server_paths(tmp_path, entries, message):
    archive = make_zip(tmp_path / "odd.zip", entries)
    with pytest.raises(ArchiveError, match=message) as info:
        extract_zip(archive, tmp_path / "work" / "out", label="instance_data")
    assert str(tmp_path) not in str(info.value) and str(info.value).startswith("instance_data: entry ")
    assert not (tmp_path / "work" / "out").exists()


def test_an_archive_of_photos_may_not_expand_far_past_its_size(tmp_path):
    """The trainer's photo limits: a small zip cannot become gigabytes (refused before anything is
    written, from the sizes it declares; a lying one stops at the same budget while written), nor can one entry be larger than any image it reads;
    real photos (compressed already) pass."""
    from dreambuild.images import MAX_PIXELS
    from tests.helpers import photos_zip
    from trainer.images import PHOTO_LIMITS

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(3):
            zf.writestr(f"photo{n}.png", b"\0" * (25 << 20))  # 75 MiB of zeros, about 75 KB zipped
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(
        ArchiveError,
        match=r"instance_data expands to 78643200 bytes, more than the limit of 67108864 "
        r"\(50 times its size",
    ):
        extract_zip(bomb, tmp_path / "out", label="instance_data", limits=PHOTO_LIMITS)
    assert not (tmp_path / "out").exists()
    one = make_zip(tmp_path / "one.zip", {"huge.tif": b"II*"})
    _patch_declared_size(one, MAX_PIXELS * 4 + 2**20 + 1)  # larger than any image the trainer reads
    with pytest.raises(
        ArchiveError,
        match=r"instance_data: entry 'huge.tif' expands to \d+ bytes, more than the limit of "
        r"\d+ for one file",
    ):
        extract_zip(one, tmp_path / "out", label="instance_data", limits=PHOTO_LIMITS)
    assert not (tmp_path / "out").exists()
    assert extract_zip(photos_zip(tmp_path / "photos.zip"), tmp_path / "photos", label="instance_data", limits=PHOTO_LIMITS)
