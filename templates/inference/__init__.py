"""Image generation shared by the three template Cog models (``templates/cog_models.py``).

request (inputs) -> locations (where weights are) -> pipelines (loaded once, shared with
``from_pipe``) -> prompts (compel) / control (Canny, OpenPose) -> safety -> PNG files.
``generator.ImageGenerator`` ties these together.
"""
