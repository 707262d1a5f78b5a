"""The image builder, the trainings service and the ``dreambuild`` command line."""
