"""DreamBooth trainer: fine-tunes a Stable Diffusion 1.x/2.x diffusers pipeline and returns
``output.zip`` (the ``save_pretrained`` pipeline plus ``args.json``).

Data flow: ``predict.py`` (Cog entry points) -> ``job.py`` (inputs -> work directory ->
archive) -> ``images.py`` (photos) -> ``class_images.py`` (prior preservation) -> ``loop.py``
(the optimisation) -> ``archive.py`` (output.zip).
"""
