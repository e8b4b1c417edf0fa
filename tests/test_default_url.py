"""One URL per kernel: the default URL of calls given none, the stand-in server, the port check, non-NATS ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from magic_shell import stream_messages
from pids import environ, wait_gone
from squatter import Squatter

import naq_ipy
from naq_ipy import ConnectionSettings, NaqConnectionError, Queue
from naq_ipy.ipython.panels import ScheduledJobsPanel
from naq_ipy.local.processes import PROCESSES, port_free, wait_port_free
from naq_ipy.status.results import fetch_result
from naq_ipy.wire.server import Answer, NatsServer, probe
from naq_ipy.wire.settings import DEFAULT_URL, clear_default_url, default_url, set_default_url


def add(a: int, b: int = 0) -> int:
    return a + b


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No NAQ_URL and no URL override, before and after the test."""
    monkeypatch.delenv("NAQ_URL", raising=False)
    clear_default_url()
    yield
    clear_default_url()


@pytest.fixture
def squatter() -> Iterator[Squatter]:
    """A listener on a free port that accepts connections and never speaks NATS."""
    with Squatter() as held:
        yield held


# --- precedence: explicit > %config url > NAQ_URL > stand-in > built-in default -----------------


def test_precedence_of_the_default_url(no_override: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in, configured, env = "nats://127.0.0.1:5001", "nats://10.0.0.1:4222", "nats://10.0.0.2:4222"
    assert default_url() == DEFAULT_URL == ConnectionSettings.resolve().url
    set_default_url(stand_in, instead_of=DEFAULT_URL)
    assert default_url() == stand_in == ConnectionSettings.resolve().url == Queue().settings.url
    assert ConnectionSettings.resolve("nats://explicit:1").url == "nats://explicit:1"
    monkeypatch.setenv("NAQ_URL", env)
    assert default_url() == env, "a URL the user set in NAQ_URL wins over a stand-in for another one"
    monkeypatch.setenv("NAQ_URL", DEFAULT_URL)
    assert default_url() == stand_in, "the stand-in replaces exactly the URL it stands in for"
    set_default_url(configured)
    monkeypatch.setenv("NAQ_URL", env)
    assert default_url() == configured, "%config NaqMagics.url wins over NAQ_URL"
    assert Queue(nats_url="nats://explicit:1").settings.url == "nats://explicit:1"
    clear_default_url()
    assert default_url() == env


# --- the port check matches how nats-server binds ------------------------------------------------


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path).start()
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    for client in clients:
        assert client.recv(4).startswith(b"INFO")
    server.stop()  # the server closes its side first: those sockets stay in TIME_WAIT on its port
    for client in clients:
        while client.recv(4096):  # to the server's FIN: a close with unread data would reset instead
            pass
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", server.port))  # what the port check did before: "taken"
    assert port_free(server.port) and wait_port_free(server.port, timeout_s=0)
    server.start()  # and nats-server does bind it
    server.stop()


def test_a_port_being_released_is_waited_for() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused, as while a server stops
    port = holder.getsockname()[1]
    release = threading.Timer(0.5, holder.close)
    started = time.monotonic()
    release.start()
    try:
        assert not port_free(port)
        assert wait_port_free(port, timeout_s=10)
    finally:
        release.join()
    assert 0.4 < time.monotonic() - started < 5


def test_a_live_listener_is_not_waited_for(squatter: Squatter) -> None:
    started = time.monotonic()
    assert not wait_port_free(squatter.port, timeout_s=10)
    assert time.monotonic() - started < 2


# --- something that is not NATS on the configured port --------------------------------------------


def test_a_listener_that_is_not_nats_is_named(squatter: Squatter, no_override: None) -> None:
    assert probe(squatter.url) is Answer.OTHER
    with pytest.raises(NaqConnectionError) as info:
        naq_ipy.enqueue_sync(add, 1, nats_url=squatter.url)
    assert str(info.value) == (f"127.0.0.1:{squatter.port} is not a NATS server: "
                               "it accepts connections but sends no NATS INFO line")


def test_a_listener_that_is_not_nats_is_one_usage_error_line(squatter: Squatter, bare_shell: Any) -> None:
    shell = bare_shell(url=squatter.url, auto_start=False)
    shell.run_cell("def add(a):\n    return a")
    with pytest.raises(UsageError, match=f"^127.0.0.1:{squatter.port} is not a NATS server: [^\n]*$"):
        shell.run_line_magic("naq_enqueue", "add(1)")
    assert PROCESSES.server is None


def test_nothing_listening_is_still_not_reachable(no_override: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{sock.getsockname()[1]}"
    assert probe(url) is Answer.NOTHING
    with pytest.raises(NaqConnectionError, match=f"NATS server at {url} not reachable"):
        naq_ipy.enqueue_sync(add, 1, nats_url=url)


# --- the stand-in is the URL of the whole kernel -------------------------------------------------


@pytest.mark.slow
def test_the_stand_in_is_the_default_of_every_call_until_a_url_is_set(
        bare_shell: Any, squatter: Squatter, nats_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NAQ_URL", squatter.url)  # a local URL held by something else: served elsewhere
    shell = bare_shell()
    shell.run_line_magic("naq", "server start")
    server = PROCESSES.server
    assert server is not None and server.url != squatter.url
    out = capsys.readouterr().out
    line = (f"started a local NATS server at {server.url} for {squatter.url}: port {squatter.port} there is held "
            f"by something that is not a NATS server, so every call of this kernel without a URL now goes to "
            f"{server.url} (pid {server.pid}")
    assert line in out and out.count("\n") == 1, out
    # the Python API, the helpers, their sync twins, panels and child processes: all at the stand-in
    shell.run_cell("def add(a, b=0):\n    return a + b")  # by value: the worker cannot import this file
    add = shell.user_ns["add"]
    assert default_url() == server.url and Queue().settings.url == server.url
    job = naq_ipy.enqueue_sync(add, 1)
    Queue("other").enqueue_sync(add, 2)
    assert job.url.url == server.url and stream_messages(server.url) == 2
    panel = ScheduledJobsPanel()
    assert panel.settings.url == server.url
    panel.close()
    shell.run_line_magic("naq", "worker start")
    [worker] = PROCESSES.running("worker")
    assert environ(worker.pid)["NAQ_URL"] == server.url
    assert job.result_sync(30) == 1 and naq_ipy.run_sync(fetch_result(job.job_id, 5)) == 1
    shell.run_line_magic("naq", "worker stop")
    # an explicit argument wins, then a configured URL wins for every call
    assert Queue(nats_url=nats_url).settings.url == nats_url
    assert naq_ipy.enqueue_sync(add, 3, nats_url=nats_url).url.url == nats_url
    shell.run_line_magic("config", f"NaqMagics.url = {nats_url!r}")
    assert default_url() == nats_url and Queue().settings.url == nats_url
    assert shell.run_line_magic("naq_enqueue", "add(4)").url.url == nats_url
    shell.run_line_magic("config", f"NaqMagics.url = {squatter.url!r}")
    assert default_url() == server.url, "configured again to the URL it stands in for: the stand-in"
    capsys.readouterr()
    shell.run_line_magic("naq", "server stop")
    assert f"stopped the NATS server at {server.url} (pid {server.pid}); calls without a URL go to " \
           f"{squatter.url} again" in capsys.readouterr().out
    assert default_url() == squatter.url
    shell.run_line_magic("unload_ext", "naq_ipy")
    assert default_url() == squatter.url and wait_gone([server.pid or 0]) == []
    monkeypatch.delenv("NAQ_URL")
    assert default_url() == DEFAULT_URL, "unload forgets the kernel's URL"
    shell.run_line_magic("load_ext", "naq_ipy")
