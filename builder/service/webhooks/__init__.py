"""Webhooks: recorded, scheduled and retried deliveries (``deliveries``) → one signed attempt
(``attempt``)."""
