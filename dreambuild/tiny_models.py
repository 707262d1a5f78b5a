"""The one fixture generator: tiny random-weight diffusers models built locally.

Tests and the demo never download from a model hub; they use pipelines written here with
the same structure as Stable Diffusion 1.5 (CLIP tokenizer and text model, UNet, VAE with an
8x downsampling factor, PNDM scheduler) but a few hundred kilobytes of weights.
"""

from __future__ import annotations

import json
from pathlib import Path

_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible byte-to-unicode alphabet (256 printable characters)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_tokenizer(max_length: int = 77):
    """A CLIP BPE tokenizer with a generated vocabulary: every byte, alone and word-final."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    tokens = list(_SPECIAL) + alphabet + [c + "</w>" for c in alphabet]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


# Layer shapes: "tiny" for tests and the demo; "sd15" has Stable Diffusion 1.5's exact layer
# shapes (CLIP ViT-L/14 text encoder, 860M-parameter UNet, 84M VAE) for benchmarks.
SHAPES = {
    "tiny": {
        "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        "vocab_size": None,  # the fixture tokenizer's own
        "unet": dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                     cross_attention_dim=32, attention_head_dim=8),
        "vae": dict(sample_size=64, layers_per_block=1, block_out_channels=(32, 32, 32, 32)),
    },
    "sd15": {
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768,
                     hidden_act="quick_gelu"),
        "vocab_size": 49408,
        "unet": dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(sample_size=512, layers_per_block=2, block_out_channels=(128, 256, 512, 512)),
    },
}


def build_tiny_sd(dest: Path, seed: int = 0) -> Path:
    """Write a tiny random Stable-Diffusion-1.x-shaped pipeline to ``dest`` (64x64 native size).

    Different seeds give different weights, so a test can tell two bases apart.
    """
    return build_sd(dest, seed=seed, shape="tiny")


def build_sd(dest: Path, seed: int = 0, shape: str = "tiny", dtype=None, device: str = "cpu") -> Path:
    """Write a random-weight pipeline of the given ``shape`` (see SHAPES) to ``dest``.

    ``dtype`` (e.g. torch.float16) sets the saved precision; ``device`` where the weights are
    initialised (a GPU initialises the 1B parameters of "sd15" in seconds).
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    spec = SHAPES[shape]
    dest = Path(dest)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    with torch.device(device):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=spec["vocab_size"] or len(tokenizer),
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **spec["text"],
            )
        )
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
        blocks = len(spec["vae"]["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            **spec["vae"],
        )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        requires_safety_checker=False,
    )
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(dest, safe_serialization=True)
    (dest / "dreambuild-fixture.json").write_text(json.dumps({"kind": f"{shape}-sd", "seed": seed}))
    return dest


def build_tiny_controlnet(dest: Path, base: Path, seed: int = 0) -> Path:
    """Write a random ControlNet shaped to the tiny pipeline at ``base`` (its UNet's blocks)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", local_files_only=True)
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    # ControlNet zero-initialises the conditioning embedding's output and its zero-convolutions;
    # randomise them so that the control image really changes the output.
    with torch.no_grad():
        convs = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for conv in convs:
            conv.weight.normal_(0, 0.5)
    controlnet.save_pretrained(dest, safe_serialization=True)
    return Path(dest)


def build_tiny_safety_checker(dest: Path, flag_everything: bool = False, seed: int = 0) -> Path:
    """Write a tiny random ``StableDiffusionSafetyChecker`` plus its feature extractor.

    With ``flag_everything`` every image is reported as NSFW (thresholds below any score),
    so tests can reach the "all images flagged" path; otherwise none is.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 224, "patch_size": 32},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        threshold = -10.0 if flag_everything else 10.0
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    dest = Path(dest)
    checker.save_pretrained(dest, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(dest)
    return dest


def build_openpose_annotators(dest: Path, seed: int = 0) -> Path:
    """Write random-weight OpenPose checkpoints (body_pose_model.pth, hand_pose_model.pth,
    facenet.pth) in the layout controlnet-aux's ``OpenposeDetector.from_pretrained`` reads.

    Their architectures are fixed, so these are full size (about 0.5 GB together): build them
    once per test session.
    """
    import torch

    from dreambuild.inference.control import controlnet_aux

    controlnet_aux()
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name, model in (("body_pose_model.pth", bodypose_model()), ("hand_pose_model.pth", handpose_model())):
        # The original checkpoints name layers without the block prefix; controlnet-aux's
        # util.transfer() adds it back when loading.
        state = {key.split(".", 1)[1]: value for key, value in model.state_dict().items()}
        torch.save(state, dest / name)
    torch.save(FaceNet().state_dict(), dest / "facenet.pth")
    return dest
