"""LoRA on top: a user's ``.safetensors`` LoRA (diffusers/peft or kohya/A1111 keys) applied to
the shared pipeline for one prediction, through diffusers' LoRA loaders and peft adapters.

request (lora_weights, extra_lora) -> digest -> adapter (loaded once, cached) -> set_adapters
-> generate -> disable_lora (the next prediction without LoRA runs exactly the plain model)

Adapters are not fused: fusing and unfusing changes the base weights by float rounding, and a
plain prediction after a LoRA one must be byte-identical to one before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from dreambuild.errors import InputError

log = logging.getLogger(__name__)

MAX_CACHED = 4  # adapters kept loaded; the least recently used is deleted beyond this


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_DIGESTS: OrderedDict[tuple[str, int, int], str] = OrderedDict()  # (file, size, mtime) -> sha256


def digest_of(path: Path) -> str:
    """The file's sha256, hashed once while it is unchanged (a version's adapters, served by its
    base, are the same file at every prediction)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
        while len(_DIGESTS) > 64:
            _DIGESTS.popitem(last=False)
    _DIGESTS.move_to_end(key)
    return _DIGESTS[key]


def load_adapter(pipe: Any, field: str, path: Path, name: str) -> None:
    """Load the LoRA file ``path`` (input ``field``) into ``pipe`` as adapter ``name``; any
    refusal is an :class:`InputError` naming the input (the caller removes what was half loaded)."""
    check_lora(field, path)
    try:
        with _quiet_loading(), tempfile.TemporaryDirectory(prefix="dreambuild-lora-") as tmp:
            # By path, not as tensors: diffusers then reads the file's LoRA metadata (alpha,
            # when it is not the rank). The name makes it read safetensors, never a pickle.
            (Path(tmp) / "lora.safetensors").symlink_to(Path(path).resolve())
            pipe.load_lora_weights(tmp, weight_name="lora.safetensors", adapter_name=name, use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - any refusal by the loader is about the file
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise InputError(f"{field} cannot be applied to this model: {' '.join(line.strip() for line in lines[:2])}{more}") from None
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise InputError(f"{field} has no weights for this model's layers (is it a LoRA for another base model?)")


def lora_components(pipe: Any) -> list[str]:
    """Every component of ``pipe`` a LoRA may adapt, for ``fuse_lora(components=...)``."""
    return [name for name in pipe._lora_loadable_modules if getattr(pipe, name, None) is not None]


def fuse_adapters(pipe: Any, names: list[str]) -> None:
    """Fuse the loaded adapters ``names`` into the weights of every component they adapt, then
    remove the adapter layers. diffusers fuses FLUX's transformer alone unless told, and the unload
    would then drop a FLUX LoRA's text-encoder adapters unfused: so the components are named, and
    a layer of these adapters still unfused is an error, never dropped."""
    from peft.tuners.lora import LoraLayer

    pipe.fuse_lora(components=lora_components(pipe), adapter_names=names)
    left = [
        f"{component}.{path}"
        for component in pipe._lora_loadable_modules  # all, not only those named: what the fuse skipped
        if (model := getattr(pipe, component, None)) is not None
        for path, module in model.named_modules()
        if isinstance(module, LoraLayer) and set(names) & set(module.lora_A) - set(module.merged_adapters)
    ]
    if left:
        raise RuntimeError(f"LoRA layers left unfused: {', '.join(left[:3])}{f' (and {len(left) - 3} more)' if len(left) > 3 else ''}")
    pipe.unload_lora_weights()


class LoraAdapters:
    """The LoRA adapters loaded into one pipeline's UNet and text encoder, by content digest."""

    def __init__(self, pipe: Any, max_cached: int = MAX_CACHED) -> None:
        self.pipe = pipe
        self.max_cached = max_cached
        self._loaded: OrderedDict[str, str] = OrderedDict()  # digest -> adapter name
        self.active = False
        self.load_seconds = 0.0  # spent loading adapters in the last activate (0: all were loaded already)

    def activate(self, loras: list[tuple[str, Path, float]]) -> None:
        """Apply ``loras`` ((input name, file, scale) each) for the next generation; none: the
        plain model. Two inputs naming the same file add their scales."""
        self.deactivate()
        self.load_seconds = 0.0
        scales: dict[str, float] = {}
        for field, path, scale in loras:
            name = self._adapter(field, path)
            scales[name] = scales.get(name, 0.0) + scale
        if not scales:
            return
        self.pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))
        self.pipe.enable_lora()
        self.active = True
        log.info("LoRA applied: %s.", ", ".join(f"{name} x{scale:g}" for name, scale in scales.items()))

    def deactivate(self) -> None:
        if self.active:
            self.pipe.disable_lora()
            self.active = False

    def _adapter(self, field: str, path: Path) -> str:
        digest = digest_of(path)
        if digest in self._loaded:
            self._loaded.move_to_end(digest)
            return self._loaded[digest]
        name = f"lora_{digest[:16]}"
        started = time.perf_counter()
        try:
            load_adapter(self.pipe, field, path, name)
        except InputError:
            self._forget(name)
            raise
        self.load_seconds += time.perf_counter() - started
        self._loaded[digest] = name
        while len(self._loaded) > self.max_cached:
            _, old = self._loaded.popitem(last=False)
            self._forget(old)
        log.info("LoRA %s loaded from %s (sha256 %s).", name, field, digest)
        return name

    def _forget(self, name: str) -> None:
        try:
            self.pipe.delete_adapters(name)
        except Exception:  # noqa: BLE001 - a half-loaded adapter may not be registered anywhere
            pass


@contextlib.contextmanager
def _quiet_loading():
    """Loading a second adapter makes peft warn that the model has adapters already and
    transformers report the new adapter's keys as "missing" before they are filled: both are
    expected here and would only clutter the prediction's logs."""
    report = logging.getLogger("transformers")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        report.setLevel(level)


def check_lora(field: str, path: Path) -> None:
    """A safetensors file (a pickled checkpoint could run code) with LoRA tensors in it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{field} is not a .safetensors file ({exc}); LoRAs are accepted as safetensors only") from None
    if not any("lora" in key.lower() for key in keys):
        raise InputError(f"{field} holds no LoRA weights (no lora_* tensors among its {len(keys)} keys)")
