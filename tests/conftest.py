"""Shared fixtures: a real nats-server per session, a clean URL per test, extra servers on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from naq_ipy.server import NatsServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server on a free port for the whole session."""
    server = NatsServer(port=None, store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


async def _delete_all_streams(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        # KV buckets and object stores are streams too (KV_*, OBJ_*).
        for info in await js.streams_info():
            if info.config.name:
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session server, emptied of every stream and KV bucket before the test."""
    asyncio.run(_delete_all_streams(nats_server.url))
    return nats_server.url


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Make extra servers (started unless `start=False`) in tmp dirs; all stopped at teardown."""
    servers: list[NatsServer] = []

    def make(*, start: bool = True, **kwargs: Any) -> NatsServer:
        kwargs.setdefault("store_dir", tmp_path / f"nats{len(servers)}")
        server = NatsServer(**kwargs)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()
