"""Image generation shared by the template Cog models (``templates/cog_models.py``), one row
each in ``catalog``.

request (inputs) -> locations (where weights are) -> pipelines (loaded once, shared with
``from_pipe``) -> loras (LoRA on top) -> prompts (compel, A1111) / control (the annotators)
-> safety -> outputs (png, jpg, webp). ``generator.ImageGenerator`` ties these together.
"""
