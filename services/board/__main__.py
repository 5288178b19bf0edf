"""python -m services.board — one board worker (no server keys: it appends no audit entries)."""

import sys

from services.board.handler import BoardDeps, handle
from shared.service_main import serve_without_keys
from shared.wire import Service

sys.exit(serve_without_keys(Service.BOARD.value, handle, lambda cfg, store: BoardDeps(store)))
