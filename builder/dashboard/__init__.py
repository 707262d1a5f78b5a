"""The web dashboard: train, watch and try models in the browser.

``/`` → ``static/index.html`` + ``app.js`` (no build step, no CDN: it works offline) → the user's
API token, kept in the browser's session storage (never in a URL) → the public API: trainings
(live through ``/v1/trainings/{id}/events``), uploads, the catalog, models and versions,
predictions. The page holds no state the API does not; everything it shows, a script could fetch.
"""
