"""python -m services.board — one board worker."""

import sys

from shared.service_main import serve
from shared.wire import Service

from services.board.handler import BoardDeps, handle

sys.exit(serve(Service.BOARD.value, handle, lambda cfg, store: BoardDeps(store)))
