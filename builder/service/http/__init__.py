"""The service's HTTP edge: request checks (``common``), the routes' dependencies (``deps``), a
router per resource of the public API (``trainings``, ``models``, ``uploads``, ``webhooks``,
``predictions``, ``files``), the routes of trainers' and models' Cog servers (``internal``),
operations (``operations``) and ``/docs``."""
