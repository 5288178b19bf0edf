"""python -m services.board — one board worker (no server keys: it appends no audit entries)."""

import sys

from services.board.handler import BoardDeps, handle
from shared.board_settings import BoardSettings
from shared.config import ConfigError
from shared.service_main import serve_without_keys
from shared.wire import Service

try:
    settings = BoardSettings.from_env()
except ConfigError as exc:
    print(f"attestgate-board: {exc}", file=sys.stderr)
    sys.exit(2)
sys.exit(serve_without_keys(Service.BOARD.value, handle,
                            lambda cfg, store: BoardDeps(store, settings)))
