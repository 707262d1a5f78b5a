"""A compiled UNet (DREAMBUILD_TORCH_COMPILE=1) serving its base: LoRA versions and users' LoRAs
switch without recompiling (fused in place: templates/inference/fused.py). Compiled on the CPU
here (inductor's CPU backend, about a minute for the tiny UNet); on a GPU the same code path."""

import io

import numpy as np
import torch
from PIL import Image

from tests.conftest import INSTANCE_PROMPT, _lora_output


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def close(a: list[bytes], b: list[bytes]) -> bool:
    """The same images up to float rounding: compiled kernels order their sums differently."""
    return len(a) == len(b) and all(np.abs(pixels(x) - pixels(y)).max() <= 2 for x, y in zip(a, b))


def test_a_compiled_base_switches_versions_and_loras_without_recompiling(tmp_path, monkeypatch, tiny_base, lora_output, loras):
    from templates.inference.fused import FusedLoras
    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest

    second = _lora_output(tmp_path, tiny_base, loras["other"])
    missing = tmp_path / "none"

    def request(**inputs) -> GenerationRequest:
        return GenerationRequest(prompt=INSTANCE_PROMPT, num_inference_steps=2, seed=42, disable_safety_check=True, **inputs)

    def run(generator, **inputs) -> list[bytes]:
        return [path.read_bytes() for path in generator.generate(request(**inputs))]

    on_top = {"lora_weights": loras["kohya"], "lora_scale": 0.7}
    torch._dynamo.reset()
    monkeypatch.setenv("DREAMBUILD_SERVE_BASE", "1")
    monkeypatch.setenv("DREAMBUILD_TORCH_COMPILE", "1")
    # torch's own patch: pytest's monkeypatch deletes a config module's value on undo, hiding it from later tests
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompilation fails the test
        try:
            compiled = ImageGenerator("vanilla", WeightLocations(missing, missing, missing, missing, base=tiny_base))
            compiled.setup()
            assert isinstance(compiled.loras, FusedLoras)
            plain = run(compiled)  # compiles
            first = run(compiled, version_weights=lora_output)
            other = run(compiled, version_weights=second)
            again = run(compiled, version_weights=lora_output)
            stacked = run(compiled, version_weights=lora_output, **on_top)
            plain_again = run(compiled)
        finally:
            torch._dynamo.reset()
    assert again == first and plain_again == plain  # restored exactly: fused values come and go without drift
    assert len({plain[0], first[0], other[0], stacked[0]}) == 4
    # The same images as the eager paths: the version's own server (fused at setup), and its
    # base serving the version with the user's LoRA as adapters (unfused).
    monkeypatch.delenv("DREAMBUILD_TORCH_COMPILE")
    eager_base = ImageGenerator("vanilla", WeightLocations(missing, missing, missing, missing, base=tiny_base))
    eager_base.setup()
    assert close(stacked, run(eager_base, version_weights=lora_output, **on_top))
    monkeypatch.delenv("DREAMBUILD_SERVE_BASE")
    own = ImageGenerator("vanilla", WeightLocations(lora_output, missing, missing, missing, base=tiny_base))
    own.setup()
    assert close(first, run(own))
