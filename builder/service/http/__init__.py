"""The service's HTTP edge: request checks (``common``), the public routes (``api``: trainings,
models, uploads, webhook secrets; ``predictions``: Replicate's predictions and models), the routes
of trainers' and models' Cog servers (``internal``), operations (``operations``) and ``/docs``."""
