"""python -m services.registry — one registry worker."""

import sys

from shared.service_main import serve
from shared.vault import Vault
from shared.wire import Service

from services.registry.handler import RegistryDeps, handle

sys.exit(serve(Service.REGISTRY.value, handle, lambda cfg, store: RegistryDeps(
    store, Vault.open(cfg.server_home), cfg.open_enrollment)))
