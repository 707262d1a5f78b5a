"""The core shared by the Cog models (trainer and templates) and importable from an image's
``/src``: typed errors, safe archive handling, diffusers layout checks, Cog's schema generator,
image decoding and logging."""
