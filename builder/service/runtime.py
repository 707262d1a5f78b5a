"""What does the work, built once for both processes that do it: configuration + database + how
deliveries are scheduled → notifier (webhooks) → trainer schemas → pipeline (trainings) →
predictor (predictions on this process's model servers).

``dreambuild serve`` runs it in its own process (embedded), ``dreambuild worker`` as queue jobs;
they differ only in their dispatcher (:mod:`builder.service.dispatch`) and in where files go.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.service.config import ServiceConfig
from builder.service.predictions.memory import budget as memory_budget
from builder.service.predictions.model_servers import ModelServers
from builder.service.predictions.predictor import Predictor
from builder.service.store.database import Database
from builder.service.store.files import FileStore
from builder.service.trainings.pipeline import Pipeline
from builder.service.trainings.schemas import TrainerSchemas
from builder.service.webhooks.deliveries import Notifier, Schedule


@dataclass
class Runtime:
    """The parts that run trainings, predictions and webhooks in one process."""

    notifier: Notifier
    schemas: TrainerSchemas
    pipeline: Pipeline
    predictor: Predictor


def build_runtime(
    config: ServiceConfig,
    db: Database,
    schedule: Schedule,
    *,
    files: FileStore | None = None,
    worker: str = "embedded",
    gpu: str | None = None,
    local_files: bool = True,
) -> Runtime:
    """The runtime of the API's process (``local_files``: it owns the file store) or of a worker
    on another machine (``worker``: its name, ``gpu``: its device; files go through the API)."""
    notifier = Notifier(config, db, schedule)
    schemas = TrainerSchemas(config, db)
    servers = ModelServers(
        config.builder_settings(),
        memory_budget(config.model_memory, config.model_gpu_memory, gpu),
        gpu,
        runner=config.model_runner,
        pools=config.model_urls,
        leases=db.leases,
        ahead=config.servers_ahead,
    )
    return Runtime(
        notifier=notifier,
        schemas=schemas,
        pipeline=Pipeline(config, db, schemas, notifier, local_files=local_files, gpu=gpu, worker=worker),
        predictor=Predictor(config, db, files or FileStore(config, db), notifier, servers, local_files=local_files, worker=worker),
    )
