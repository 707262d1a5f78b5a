"""DreamBooth trainer: fine-tunes a Stable Diffusion 1.x/2.x or SDXL diffusers pipeline (whole, or
LoRA adapters), or trains a FLUX.1 LoRA, and returns ``output.zip`` (the ``save_pretrained``
pipeline or the adapters, plus ``args.json``).

Data flow: ``cog_model.py`` (Cog entry points) -> ``job.py`` (inputs -> work directory ->
archive) -> ``images.py`` (photos) -> ``class_images.py`` (prior preservation) -> ``loop.py``
(the SD/SDXL optimisation) or ``flux.py`` (FLUX, photos in ``buckets.py``) -> ``archive.py`` (output.zip).
"""
