"""The OCI wing: a small library for container images, in the steps go-containerregistry takes.

reference (``references``) → credentials → store (``registry`` or ``layout``, ``stores``) →
resolve (``resolve``: manifest, platform, config) → layer (``layer``) → manifest and config
(``manifest``) → push. Knows nothing of models, trainings or Cog.
"""
