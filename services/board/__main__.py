"""python -m services.board — one board worker."""

import sys

from services.board.handler import BoardDeps, handle
from shared.board_settings import BoardSettings
from shared.errors import AttestgateError
from shared.service_main import serve
from shared.wire import Service

try:
    settings = BoardSettings.from_env()
except AttestgateError as exc:
    print(f"attestgate-board: configuration: {exc.detail}", file=sys.stderr)
    sys.exit(2)
sys.exit(serve(Service.BOARD.value, handle, lambda cfg, store: BoardDeps(store, settings)))
