"""python -m services.registry — one registry worker."""

import sys

from services.registry.handler import RegistryDeps, handle
from shared.service_main import serve
from shared.vault import Vault
from shared.wire import Service

sys.exit(serve(Service.REGISTRY.value, handle, lambda cfg, store: RegistryDeps(
    store, Vault.open(cfg.server_home), cfg.open_enrollment, cfg.token_max_failures)))
