"""python -m services.registry — one registry worker."""

import sys

from services.registry.handler import RegistryDeps, handle
from shared.config import ServerConfig
from shared.service_main import WorkerKeys, serve
from shared.store.redis_store import RedisStore
from shared.wire import Service


def deps(cfg: ServerConfig, store: RedisStore, keys: WorkerKeys) -> RegistryDeps:
    return RegistryDeps(store, keys.vault, cfg.open_enrollment, cfg.token_max_failures)


sys.exit(serve(Service.REGISTRY.value, handle, deps))
