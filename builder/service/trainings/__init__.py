"""Trainings: the record (``record``) → its durable stages (``pipeline``) → where the trainer's Cog
server comes from (``runners``), with the trainers' schemas (``schemas``) and the dashboard's
previews of a training's images (``previews``)."""
