"""Routes for operators, not users: ``/healthz`` (the process answers), ``/readyz`` (the database
and the queue answer: 503 naming which does not) and Prometheus ``/metrics``.

Metrics are read from the database at scrape time, so every API replica reports the same whole
(the workers have no HTTP server): trainings by status, jobs waiting per queue, stage durations of
recent trainings, webhook deliveries by outcome, workers seen.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from builder.service.http.deps import ServiceDep
from builder.service.schema import STAGES, Stage
from builder.service.state import Service
from builder.service.store.database import DatabaseUnavailable
from builder.service.trainings.record import stage_seconds

BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200)
RECENT = 1000  # stage durations: of the newest trainings, as the scrape must stay cheap

log = logging.getLogger(__name__)


router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(service: ServiceDep) -> JSONResponse:
    problems = {}
    try:
        service.db.ping()
    except DatabaseUnavailable as exc:  # no token is needed here: what failed goes to the log, not to the client
        log.warning("readyz: %s (%s)", exc, exc.detail)
        problems["database"] = str(exc)
    if service.queue is not None and "database" not in problems:
        from builder.service.workers.jobs import queue_depths

        try:
            queue_depths(service.config)
        except Exception as exc:  # psycopg's errors, a missing schema: all mean the queue is not usable
            log.warning("readyz: the queue is unavailable: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            problems["queue"] = "the queue is unavailable"
    elif "database" in problems and service.queue is not None:
        problems["queue"] = "the queue is unavailable: it lives in the database"
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.core import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(_Collector(service))
    try:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    except DatabaseUnavailable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503)


class _Collector:
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        db = self.service.db
        trainings = GaugeMetricFamily("dreambuild_trainings", "Trainings by status.", labels=["status"])
        for status, count in sorted(db.trainings.count().items()):
            trainings.add_metric([status], count)
        yield trainings

        depth = GaugeMetricFamily("dreambuild_queue_depth", "Jobs waiting, per queue.", labels=["queue"])
        if self.service.queue is not None:
            from builder.service.workers.jobs import queue_depths

            for queue, count in sorted(queue_depths(self.service.config).items()):
                depth.add_metric([queue], count)
        else:  # the embedded worker's queue: trainings not yet started
            depth.add_metric(["embedded"], sum(1 for d in db.trainings.unfinished() if d["stage"] == Stage.QUEUED))
        yield depth

        durations = HistogramMetricFamily("dreambuild_stage_seconds", f"Stage durations of the newest {RECENT} trainings.", labels=["stage"])
        page, _ = db.trainings.page(None, limit=RECENT)
        for stage in STAGES[:-1]:
            values = [s[stage] for s in (stage_seconds(d) for d in page) if stage in s]
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in BUCKETS] + [("+Inf", len(values))]
            durations.add_metric([stage], buckets, sum(values))
        yield durations

        deliveries = CounterMetricFamily("dreambuild_webhook_deliveries", "Webhook deliveries by outcome.", labels=["outcome"])
        for outcome, count in sorted(db.deliveries.count().items()):
            deliveries.add_metric([outcome], count)
        yield deliveries

        from builder.service.workers.jobs import STALLED_SECONDS

        seen = GaugeMetricFamily("dreambuild_workers", "Workers seen in the last 20 s.", labels=["role"])
        live = db.heartbeats.live(within=STALLED_SECONDS)
        for role in ("train", "build", "webhooks"):
            seen.add_metric([role], sum(1 for w in live if role in w["roles"]))
        yield seen
