"""python -m services.attestor — one attestor worker."""

import sys

from services.attestor.enroll import EnrollSettings
from services.attestor.handler import AttestorDeps, AuditAnchor, handle
from services.attestor.policy import AttestPolicy
from shared.audit import Checkpoint
from shared.config import ServerConfig, parse_window
from shared.plugins import load_all
from shared.service_main import WorkerKeys, serve
from shared.store.redis_store import RedisStore
from shared.wire import Service


def deps(cfg: ServerConfig, store: RedisStore, keys: WorkerKeys) -> AttestorDeps:
    return AttestorDeps(
        store=store,
        vault=keys.vault,
        enroll=EnrollSettings.load(cfg.enroll_policy, cfg.ek_ca_dir, cfg.ek_allowlist,
                                   cfg.pcr_selection),
        policy=AttestPolicy(cfg.pcr_selection, cfg.max_failures, cfg.consequence,
                            parse_window(cfg.connect_window)),
        audit=AuditAnchor(keys.audit_key, lambda: _checkpoints(keys)),
        plugins=load_all(),  # entry points attestgate.policies / attestgate.consequences
    )


def _checkpoints(keys: WorkerKeys) -> list[Checkpoint | None] | None:
    try:
        return keys.checkpoints.read()
    except FileNotFoundError:
        return None


sys.exit(serve(Service.ATTESTOR.value, handle, deps))
