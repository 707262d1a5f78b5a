"""The trainings service: POST /v1/trainings → train → build → push → webhook, durably."""
