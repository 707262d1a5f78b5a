"""The host side of dreambuild: the image builder (this folder: ``build`` and its backends), the
OCI library (``oci/``), running Cog models (``cog/``), the trainings service (``service/``) and
the command line (``cli/``)."""
