"""TPM work done ahead, in a thread, while the caller waits on the network.

An attested connect spends a round trip waiting for the gateway's handshake answer; the
TPM commands the rest of the connect needs (load the HMAC key, create the AK, read the
PCRs; about 4 ms on swtpm, far more on a hardware TPM) can run meanwhile. The ``Tpm`` is
not thread-safe, so the caller touches it again only after :meth:`Ahead.wait`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Ahead:
    """Starts ``work`` in a thread at once; :meth:`wait` joins it (idempotent).

    A failure of ``work`` is kept, not raised: what it prepared is redone by the TPM call
    that needs it, and that call reports the error where the caller expects it.
    """

    def __init__(self, work: Callable[[], None]) -> None:
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="tpm-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # kept, see the class doc
            self.error = exc

    def wait(self) -> None:
        self._thread.join()
