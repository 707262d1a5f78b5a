"""The template Cog models: ``<name>/cog.yaml`` each, their entry points (``cog_models.py``) and
their shared predictor core (``inference/``)."""
