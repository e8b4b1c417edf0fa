"""A TCP listener that is not a NATS server: it accepts connections and never says a word."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from naq_ipy.local.processes import wait_port_free
from naq_ipy.wire.server import Answer, probe


class Squatter:
    """Holds `127.0.0.1:port` (0: any free port) like a foreign service would; accepted connections stay open."""

    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket()
        # as a server would bind: a port whose last connections linger in TIME_WAIT can be taken
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(("127.0.0.1", port))
        except OSError:
            self._sock.close()
            raise
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name=f"squatter-{self.port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self._held.append(conn)

    def close(self) -> None:
        """Stop listening and drop every held connection."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()

    def __enter__(self) -> Squatter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def squat_default_port() -> Squatter | None:
    """Hold 127.0.0.1:4222 with a Squatter; None if something that is not NATS holds it already.

    Skips the calling test when a NATS server answers there: the notebooks would use someone
    else's server, and what they should show (a stand-in started elsewhere) could not happen.
    """
    wait_port_free(4222)  # a server of this machine still stopping there
    try:
        return Squatter(4222)
    except OSError:
        pass
    answer = probe("nats://127.0.0.1:4222")
    if answer is Answer.NATS:
        pytest.skip("a NATS server of someone else answers on 127.0.0.1:4222: the notebooks would use it")
    if answer is not Answer.OTHER:
        pytest.skip(f"127.0.0.1:4222 is held but answers as {answer.value}: cannot set up a foreign listener there")
    return None


def default_port_state() -> Answer | None:
    """None when 127.0.0.1:4222 is free (after a brief wait for a stopping server); else what answers there."""
    return None if wait_port_free(4222) else probe("nats://127.0.0.1:4222")
