"""Many machines: the queue's jobs (``jobs``, procrastinate in PostgreSQL) and the process that
runs them (``worker``: ``dreambuild worker``)."""
