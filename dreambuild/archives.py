"""Safe extraction of user-supplied zip archives.

Archives come from users (training photos, base checkpoints, weights), so every entry is
checked before anything is written: no absolute paths, no ``..``, no symlinks, and bounded
file count and uncompressed size. Sizes declared in the archive are not trusted: bytes are
counted while they are written. On any failure the partial extraction is removed.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dreambuild.errors import ArchiveError

_COPY_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds for one archive. With ``max_ratio``, the whole expands to at most that many
    times the archive's own size (but always to ``ratio_floor`` bytes): what a zip bomb exceeds
    by far, and an archive of already compressed files (photos) never comes near."""

    max_files: int = 10_000
    max_total_bytes: int = 8 * 2**30
    max_entry_bytes: int | None = None
    max_ratio: float | None = None
    ratio_floor: int = 64 * 2**20

    def budget(self, archive_bytes: int) -> int:
        """The most this archive may expand to."""
        if self.max_ratio is None:
            return self.max_total_bytes
        return min(self.max_total_bytes, max(self.ratio_floor, int(self.max_ratio * archive_bytes)))


def entry_parts(label: str, name: str) -> tuple[str, ...]:
    """Split a zip entry name into safe relative parts, or raise naming the entry."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise ArchiveError(f"{label}: entry {name!r} has an absolute path; refusing to extract it")
    parts = tuple(p for p in PurePosixPath(unified).parts if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{label}: entry {name!r} points outside the archive ('..'); refusing to extract it")
    return parts


def is_symlink_entry(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry was stored as a symbolic link (Unix mode in its external attributes)."""
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_zip(archive: Path, dest: Path, *, label: str, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract ``archive`` into the new directory ``dest`` and return the extracted files.

    ``label`` names the archive in error messages (for example ``instance_data``).
    Raises :class:`ArchiveError` for anything that is not a sound, bounded zip archive.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"{label}: file not found")
    if not zipfile.is_zipfile(archive):
        with open(archive, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise ArchiveError(f"{label} is a corrupt zip archive: its central directory is missing (truncated upload?)")
        raise ArchiveError(f"{label} is not a zip archive")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    try:
        return _extract_checked(archive, dest, label, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _short(name: str, keep: int = 120) -> str:
    return name if len(name) <= keep else f"{name[: keep // 2]}…{name[-keep // 2 :]}"


def _extract_checked(archive: Path, dest: Path, label: str, limits: ArchiveLimits) -> list[Path]:  # noqa: C901
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"{label} is a corrupt zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise ArchiveError(f"{label} has {len(infos)} entries, more than the limit of {limits.max_files}")
        for info in infos:
            if limits.max_entry_bytes is not None and info.file_size > limits.max_entry_bytes:
                raise ArchiveError(
                    f"{label}: entry {_short(info.filename)!r} expands to {info.file_size} bytes, more than "
                    f"the limit of {limits.max_entry_bytes} for one file"
                )
        declared = sum(i.file_size for i in infos)
        budget = limits.budget(archive.stat().st_size)
        if declared > budget:
            raise ArchiveError(
                f"{label} expands to {declared} bytes, more than the limit of {budget}"
                + (
                    f" ({limits.max_ratio:g} times its size of {archive.stat().st_size} bytes: "
                    "already compressed files, such as photos, expand far less; a zip bomb?)"
                    if budget < limits.max_total_bytes
                    else ""
                )
            )
        planned: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        for info in infos:
            parts = entry_parts(label, info.filename)
            if is_symlink_entry(info):
                raise ArchiveError(f"{label}: entry {info.filename!r} is a symbolic link; refusing to extract it")
            if parts:
                planned.append((info, parts))

        root = dest.resolve()
        written_total = 0
        files: list[Path] = []
        for info, parts in planned:
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise ArchiveError(f"{label}: entry {info.filename!r} resolves outside the archive")
            written = 0
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_COPY_CHUNK):
                        written += len(chunk)
                        written_total += len(chunk)
                        if written > info.file_size or written_total > budget:
                            raise ArchiveError(
                                f"{label}: entry {info.filename!r} expands past its declared size or the archive limit of {budget} bytes (zip bomb?)"
                            )
                        out.write(chunk)
            except FileExistsError:
                if target.is_file() and not info.is_dir():
                    raise ArchiveError(f"{label}: entry {_short(info.filename)!r} appears twice") from None
                raise ArchiveError(
                    f"{label}: entry {_short(info.filename)!r} clashes with another entry: the same name as a file and as a folder"
                ) from None
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise ArchiveError(f"{label} is a corrupt zip archive: entry {info.filename!r} ({exc})") from None
            except RuntimeError as exc:  # zipfile raises RuntimeError for encrypted entries
                raise ArchiveError(f"{label}: entry {info.filename!r} cannot be read ({exc})") from None
            except NotImplementedError as exc:
                raise ArchiveError(f"{label}: entry {info.filename!r} uses an unsupported compression ({exc})") from None
            except OSError as exc:  # a name too long, a file where a folder should be: said without server paths
                raise ArchiveError(f"{label}: entry {_short(info.filename)!r} cannot be extracted: {exc.strerror or type(exc).__name__}") from None
            files.append(target)
        return files
