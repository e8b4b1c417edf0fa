"""Tests of naq_ipy.wire.server against the real nats-server binary."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from conftest import KEEPER_STREAM, cluster_node_options
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from naq_ipy.errors import ConfigurationError, NaqConnectionError
from naq_ipy.wire.server import (
    NatsServer,
    default_store_dir,
    find_server_binary,
    free_port,
    free_ports,
    is_reachable,
    server_name_at,
)

Factory = Callable[..., NatsServer]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.asyncio
async def test_start_connect_stop(nats_server_factory: Factory, tmp_path: Path) -> None:
    server = nats_server_factory(store_dir=tmp_path / "data")
    assert server.running
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert server.monitor_port != server.port
    nc = await nats.connect(server.url)
    info = await nc.jetstream().account_info()
    await nc.close()
    assert info.streams == 0
    server.stop()
    assert not server.running
    assert (tmp_path / "data" / "nats-server.log").exists()


@pytest.mark.asyncio
async def test_restart_keeps_jetstream_data(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="keep", subjects=["keep.>"]))
    for i in range(3):
        await js.publish("keep.x", str(i).encode())
    await nc.close()

    port, old_pid = server.port, server.pid
    server.restart()
    assert server.port == port and server.pid != old_pid

    nc = await nats.connect(server.url)
    js = nc.jetstream()
    info = await js.stream_info("keep")
    last = await js.get_last_msg("keep", "keep.x")
    await nc.close()
    assert info.state.messages == 3
    assert last.data == b"2"


def test_env_binary_missing_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-nats-server"
    monkeypatch.setenv("NAQ_NATS_SERVER", str(missing))
    with pytest.raises(ConfigurationError, match="NAQ_NATS_SERVER") as excinfo:
        find_server_binary()
    assert str(missing) in str(excinfo.value)
    with pytest.raises(ConfigurationError):
        NatsServer(store_dir=tmp_path).start()


def test_find_server_binary_in_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAQ_NATS_SERVER", raising=False)
    found = Path(find_server_binary())
    assert found.name == "nats-server"
    assert found.parent == Path(sysconfig.get_path("scripts"))
    assert os.access(found, os.X_OK)


def test_is_reachable(nats_server: NatsServer) -> None:
    assert is_reachable(nats_server.url)
    assert is_reachable(f"{nats_server.url},nats://127.0.0.1:1")
    assert not is_reachable(f"nats://127.0.0.1:{free_port()}")
    # An HTTP port accepts the connection but does not speak NATS.
    assert not is_reachable(f"nats://127.0.0.1:{nats_server.monitor_port}", timeout_s=0.2)


def test_stop_is_idempotent_and_reaps(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    pid = server.pid
    assert pid is not None and not _pid_gone(pid)
    server.stop()
    server.stop()
    server.kill()
    assert not server.running
    assert _pid_gone(pid)
    assert not is_reachable(server.url, timeout_s=0.2)


def test_kill_then_start_again(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    pid = server.pid
    server.kill()
    assert pid is not None and _pid_gone(pid)
    server.start()
    assert server.running and is_reachable(server.url)


def test_context_manager(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path) as server:
        assert is_reachable(server.url)
        pid = server.pid
    assert pid is not None and _pid_gone(pid)


def test_port_in_use_raises_with_log(nats_server: NatsServer, tmp_path: Path) -> None:
    clash = NatsServer(port=nats_server.port, store_dir=tmp_path)
    with pytest.raises(NaqConnectionError, match="exited") as excinfo:
        clash.start(timeout_s=5)
    assert "address already in use" in str(excinfo.value)
    assert not clash.running


IMPOSTOR = """#!{python}
import sys, http.server
monitor = int(sys.argv[sys.argv.index("-m") + 1])
class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", monitor), Healthy).serve_forever()
"""


def test_readiness_is_never_taken_from_another_server_on_its_port(nats_server: NatsServer, tmp_path: Path) -> None:
    """A process that says it is healthy while its client port is someone else's (two free-port picks that
    raced) is not ready: the INFO line on the port must carry this server's own name."""
    impostor = tmp_path / "nats-server"
    impostor.write_text(IMPOSTOR.format(python=sys.executable))
    impostor.chmod(0o755)
    clash = NatsServer(port=nats_server.port, store_dir=tmp_path / "store", binary=str(impostor))
    with pytest.raises(NaqConnectionError, match="timed out"):
        clash.start(timeout_s=2)
    assert not clash.running
    assert server_name_at(nats_server.url) is not None  # the real server's INFO names it


def test_wait_ready_before_start_raises(tmp_path: Path) -> None:
    with pytest.raises(NaqConnectionError, match="never started"):
        NatsServer(store_dir=tmp_path).wait_ready(0.1)


def test_default_store_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_dir() == tmp_path / "naq_ipy" / "nats"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_store_dir() == Path.home() / ".local" / "share" / "naq_ipy" / "nats"


def test_free_port_is_bindable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_free_ports_of_one_batch_never_repeat() -> None:
    # picked and released one by one, ports repeated within a batch of nine a few times in 2000
    # batches here, under load often enough to stop a three-node cluster from forming
    for _ in range(300):
        ports = free_ports(9)
        assert len(set(ports)) == 9


def test_a_server_s_client_and_monitor_ports_differ_from_given_ones(tmp_path: Path) -> None:
    taken = free_port()
    assert NatsServer(port=taken, store_dir=tmp_path).monitor_port != taken
    assert NatsServer(monitor_port=taken, store_dir=tmp_path).port != taken


@pytest.mark.parametrize("run", [1, 2])
@pytest.mark.asyncio
async def test_nats_url_starts_empty(nats_url: str, run: int) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    assert [info.config.name for info in await js.streams_info()] == [KEEPER_STREAM]
    await js.create_key_value(bucket="leftover")
    await js.add_stream(StreamConfig(name="leftover", subjects=["leftover.>"]))
    await nc.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_foreground_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    args = ["--port", str(port), "--store-dir", str(tmp_path)]
    cmd = [sys.executable, "-m", "naq_ipy.cli", "server", *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == f"nats-server ready at nats://127.0.0.1:{port}, data in {tmp_path}\n"
            assert is_reachable(f"nats://127.0.0.1:{port}")
            proc.send_signal(sig)
            assert proc.wait(10) == 0
            assert proc.stdout.read() == "nats-server stopped\n"
        finally:
            proc.kill()
    assert not is_reachable(f"nats://127.0.0.1:{port}", timeout_s=0.2)


async def _add_replicated_stream(url: str, timeout_s: float = 10.0) -> int:
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    try:
        info = None
        while True:
            try:
                # until the meta leader is elected the server answers "JetStream not ready"; until
                # the new stream has its own leader a publish finds no responders
                info = info or await js.add_stream(name="r3", subjects=["r3.>"], num_replicas=3)
                await js.publish("r3.x", b"hello")
                break
            except (APIError, nats.errors.TimeoutError, NoStreamResponseError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        return 1 + len(info.cluster.replicas or []) if info.cluster else 0
    finally:
        await nc.close()


@pytest.mark.asyncio
async def test_three_node_cluster(nats_server_factory: Factory) -> None:
    servers = [nats_server_factory(start=False, **options) for options in cluster_node_options(prefix="n")]
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_ready(10)
    for server in servers:
        server.wait_ready(10, full=True)  # meta leader elected
    assert await _add_replicated_stream(servers[0].url) == 3
