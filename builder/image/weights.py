"""The weights to build into an image: an ``output.zip``, a directory, or an http(s) URL.

Every source is checked before anything is uploaded: a diffusers layout (``model_index.json``
and the component folders it names), zip entries that stay inside the archive (no ``..``,
absolute paths or symlinks), and bounded file count and size. A zip is read in place, entry by
entry, into the layer: it is never extracted, so the weights are not copied on disk.

Sources list their entries sorted by path, so a zip and a directory holding the same files give
the same layer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from builder.egress import FetchUnavailable, fetch
from builder.oci.layer import LayerEntry
from dreambuild.archives import ArchiveLimits, entry_parts, is_symlink_entry
from dreambuild.errors import ArchiveError, InputError
from dreambuild.layout import check_diffusers_layout, check_diffusers_listing, is_lora_output, locate_pipeline_root, no_index_message

WEIGHTS_LIMITS = ArchiveLimits(max_files=5_000, max_total_bytes=32 * 2**30)
_INDEX_MAX = 2**20
_IGNORED_TOP = ("__MACOSX",)


class _ZipEntryReader(io.RawIOBase):
    """Reads one zip entry, turning corruption into :class:`ArchiveError` naming the entry."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> None:
        self._label, self._name = label, info.filename
        self._file = self._guard(lambda: zf.open(info))

    def _guard(self, call):
        try:
            return call()
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{self._label} is a corrupt zip archive: entry {self._name!r} ({exc})") from None
        except RuntimeError as exc:  # encrypted entries
            raise ArchiveError(f"{self._label}: entry {self._name!r} cannot be read ({exc})") from None
        except NotImplementedError as exc:
            raise ArchiveError(f"{self._label}: entry {self._name!r} uses an unsupported compression ({exc})") from None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._guard(lambda: self._file.read(size))

    def close(self) -> None:
        self._file.close()
        super().close()


class ZipWeights:
    """Weights inside an ``output.zip``, read in place."""

    def __init__(self, archive: Path, *, label: str = "weights", limits: ArchiveLimits = WEIGHTS_LIMITS) -> None:  # noqa: C901
        self.archive = Path(archive)
        self.label = label
        if not zipfile.is_zipfile(self.archive):
            with open(self.archive, "rb") as handle:
                if handle.read(4) == b"PK\x03\x04":
                    raise ArchiveError(f"{label} is a corrupt zip archive: its central directory is missing (truncated?)")
            raise ArchiveError(f"{label} is neither a zip archive nor a directory")
        try:
            self._zip = zipfile.ZipFile(self.archive)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ArchiveError(f"{label} is a corrupt zip archive ({exc})") from None
        infos = self._zip.infolist()
        if len(infos) > limits.max_files:
            raise ArchiveError(f"{label} has {len(infos)} entries, more than the limit of {limits.max_files}")
        if sum(i.file_size for i in infos) > limits.max_total_bytes:
            raise ArchiveError(f"{label} expands to more than the limit of {limits.max_total_bytes} bytes")
        entries: dict[tuple[str, ...], zipfile.ZipInfo | None] = {}
        for info in infos:
            parts = entry_parts(label, info.filename)
            if is_symlink_entry(info):
                raise ArchiveError(f"{label}: entry {info.filename!r} is a symbolic link; refusing it")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{label}: entry {info.filename!r} is encrypted")
            if not parts or parts[0] in _IGNORED_TOP:
                continue
            if parts in entries and not info.is_dir():
                raise ArchiveError(f"{label}: entry {info.filename!r} appears twice")
            entries[parts] = None if info.is_dir() else info
        self._root = self._find_root(entries)
        self._files = {p[len(self._root) :]: i for p, i in entries.items() if p[: len(self._root)] == self._root and i}
        dirs = {p[len(self._root) :] for p, i in entries.items() if p[: len(self._root)] == self._root and i is None}
        for parts in self._files:
            dirs.update(parts[:n] for n in range(1, len(parts)))
        clash = dirs & self._files.keys()
        if clash:
            raise ArchiveError(f"{label}: {'/'.join(sorted(clash)[0])!r} is both a file and a directory")
        self._dirs = dirs - {()}
        index = self._files.get(("model_index.json",))
        self.kind = "pipeline"
        if index is None and is_lora_output("/".join(p) for p in self._files):
            self.kind = "lora"
            return
        if index is None:
            raise InputError(no_index_message(label, ["/".join(p) for p in self._files]))
        if index.file_size > _INDEX_MAX:
            raise InputError(f"{label}: model_index.json is implausibly large ({index.file_size} bytes)")
        with _ZipEntryReader(self._zip, index, label) as handle:
            index_json = handle.read()
        listing = ["/".join(p) for p in self._files] + ["/".join(p) + "/" for p in self._dirs]
        check_diffusers_listing(index_json, listing, label)

    def _find_root(self, entries: dict) -> tuple[str, ...]:
        """The pipeline's folder: the archive root, or its single top-level folder."""
        if ("model_index.json",) in entries:
            return ()
        tops = {p[0] for p in entries if len(p) > 1 or entries[p] is None}
        files_at_top = [p for p, i in entries.items() if len(p) == 1 and i]
        if len(tops) == 1 and not files_at_top:
            return (next(iter(tops)),)
        return ()

    def entries(self) -> Iterator[LayerEntry]:
        items = [(p, True, None) for p in self._dirs] + [(p, False, i) for p, i in self._files.items()]
        for parts, is_dir, info in sorted(items, key=lambda item: item[0]):
            if is_dir:
                yield LayerEntry("/".join(parts), True)
            else:
                yield LayerEntry("/".join(parts), False, info.file_size, lambda info=info: _ZipEntryReader(self._zip, info, self.label))

    def total_bytes(self) -> int:
        return sum(i.file_size for i in self._files.values())

    def fingerprint(self) -> str:
        """Identity of this archive for the layer cache, without reading its contents.

        File identity (device, inode, size, modification and change times, as BuildKit's content
        cache and git's index use) plus the central directory, which holds every entry's CRC.
        """
        st = self.archive.stat()
        with open(self.archive, "rb") as handle:
            handle.seek(self._zip.start_dir)
            central = hashlib.sha256(handle.read(16 * 2**20)).hexdigest()
        key = ["zip", str(self.archive.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, central]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    def close(self) -> None:
        self._zip.close()


def walk_tree(root: Path, label: str, limits: ArchiveLimits = WEIGHTS_LIMITS) -> list[tuple[tuple[str, ...], os.stat_result]]:
    """Every directory and regular file under ``root``, sorted by path; refuses links and
    special files, and trees past ``limits``."""
    paths: list[tuple[tuple[str, ...], os.stat_result]] = []
    total = 0
    for current, dirs, files in os.walk(root):
        rel = Path(current).relative_to(root).parts
        for name in dirs + files:
            st = (Path(current) / name).lstat()
            if stat.S_ISLNK(st.st_mode):
                raise InputError(f"{label} contains a symbolic link, which an image layer must not carry: {'/'.join(rel + (name,))}")
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise InputError(f"{label} contains a special file: {'/'.join(rel + (name,))}")
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
            paths.append((rel + (name,), st))
    if len(paths) > limits.max_files:
        raise InputError(f"{label} has {len(paths)} files, more than the limit of {limits.max_files}")
    if total > limits.max_total_bytes:
        raise InputError(f"{label} holds {total} bytes, more than the limit of {limits.max_total_bytes}")
    return sorted(paths, key=lambda item: item[0])


def tree_entries(root: Path, paths: list[tuple[tuple[str, ...], os.stat_result]]) -> Iterator[LayerEntry]:
    """Layer entries for a walked tree."""
    for parts, st in paths:
        path = root.joinpath(*parts)
        if stat.S_ISDIR(st.st_mode):
            yield LayerEntry("/".join(parts), True)
        else:
            yield LayerEntry("/".join(parts), False, st.st_size, lambda path=path: open(path, "rb"))


class DirWeights:
    """Weights in a directory (a ``save_pretrained`` pipeline)."""

    def __init__(self, directory: Path, *, label: str = "weights", limits: ArchiveLimits = WEIGHTS_LIMITS) -> None:
        self.label = label
        self.root = locate_pipeline_root(Path(directory))
        self._paths = walk_tree(self.root, label, limits)
        self.kind = "lora" if is_lora_output("/".join(p) for p, _ in self._paths) else "pipeline"
        if self.kind == "pipeline":
            check_diffusers_layout(self.root, label)

    def entries(self) -> Iterator[LayerEntry]:
        return tree_entries(self.root, self._paths)

    def total_bytes(self) -> int:
        return sum(st.st_size for _, st in self._paths if stat.S_ISREG(st.st_mode))

    def fingerprint(self) -> str:
        """Identity of every file (path, device, inode, size, mtime, ctime) for the layer cache."""
        key = [["/".join(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns] for p, st in self._paths]
        return hashlib.sha256(json.dumps(["dir", str(self.root.resolve()), key]).encode()).hexdigest()

    def close(self) -> None:
        pass


WeightsSource = ZipWeights | DirWeights


def download(url: str, dest: Path, *, label: str, max_bytes: int, retries: int = 3) -> Path:
    """Stream ``url`` to ``dest`` (size-limited; an operator's URL, so no egress policy), trying
    again when the connection fails; raise :class:`InputError` naming the failure."""
    for attempt in range(retries):
        try:
            return fetch(url, dest, policy=None, what=label, max_bytes=max_bytes)
        except FetchUnavailable:
            if attempt + 1 == retries:
                raise
    raise AssertionError("unreachable")


def open_weights(spec: str | Path, workdir: Path, *, label: str = "weights", limits: ArchiveLimits = WEIGHTS_LIMITS) -> WeightsSource:
    """Open and check weights given as a zip path, a directory, or an http(s) URL."""
    text = str(spec)
    if text.startswith(("http://", "https://")):
        workdir.mkdir(parents=True, exist_ok=True)
        archive = download(text, workdir / "weights.zip", label=label, max_bytes=limits.max_total_bytes)
        return ZipWeights(archive, label=label, limits=limits)
    if "://" in text:
        raise InputError(f"{label}: {text!r} is not a file, a directory or an http(s) URL")
    path = Path(text).expanduser()
    if path.is_dir():
        return DirWeights(path, label=label, limits=limits)
    if path.is_file():
        return ZipWeights(path, label=label, limits=limits)
    raise InputError(f"{label}: {text} does not exist")


def materialize(source: WeightsSource, dest: Path) -> None:
    """Write the weights as files under the new directory ``dest`` (for a Docker build context)."""
    dest.mkdir(parents=True)
    for entry in source.entries():
        target = dest / PurePosixPath(entry.path)
        if entry.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        with entry.open() as src, open(target, "xb") as out:
            while chunk := src.read(8 * 2**20):
                out.write(chunk)
