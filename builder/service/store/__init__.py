"""What the service keeps: the database (``database``, its Alembic ``migrations``), the file store
of uploads, inputs and outputs (``files``), and their expiry (``retention``)."""
