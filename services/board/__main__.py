"""python -m services.board — one board worker."""

import sys

from services.board.handler import BoardDeps, handle
from shared.service_main import serve
from shared.wire import Service

sys.exit(serve(Service.BOARD.value, handle, lambda cfg, store: BoardDeps(store)))
