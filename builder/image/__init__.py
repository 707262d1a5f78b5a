"""The image builder wing: weights + template → model image, pushed (``dreambuild build``, and the
service's build stage): ``build`` → ``weights`` → ``oci_build`` (or ``docker_build``)."""
