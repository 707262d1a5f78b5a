"""Predictions: the record (``record``) → a worker runs it (``predictor``) on its warm model
servers (``model_servers``)."""
