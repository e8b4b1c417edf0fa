"""TLS with a self-made CA and `.creds` files, configured as the README says: NAQ_TLS_* and NAQ_CREDS.

Each secured server is a real nats-server; the worker runs in the test's loop, `naq` runs as a
subprocess with the same environment. Refusals are a NaqConnectionError (exit 3 from `naq`) that
names the URL and shows no secret.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jobs
import nkeys
import pytest
from secure_server import Operator, make_pki, new_keys, tls_config
from test_cli import naq
from test_worker import running_worker

from naq_ipy import ConnectionSettings, NaqConnectionError, Queue
from naq_ipy.wire.connection import close_all
from naq_ipy.wire.server import NatsServer

Factory = Callable[..., NatsServer]
TLS_ENV = ("NAQ_TLS_CA", "NAQ_TLS_CERT", "NAQ_TLS_KEY", "NAQ_CREDS", "NAQ_URL", "NAQ_USER", "NAQ_PASSWORD",
           "NAQ_TOKEN")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection setting from outside the test."""
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


def configured_server(nats_server_factory: Factory, tmp_path: Path, config: str) -> NatsServer:
    path = tmp_path / "server.conf"
    path.write_text(config)
    return nats_server_factory(config_file=path)


async def round_trip(url: str) -> None:
    """Enqueue a job, run it on a worker and read its result, all with settings from the environment."""
    async with running_worker(url):
        job = await Queue("default", url).enqueue(jobs.add, 20, 22)
        assert await job.result(timeout=20) == 42
    await close_all()


async def test_tls_with_a_self_made_ca_and_a_client_certificate_from_the_environment(
    nats_server_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = configured_server(nats_server_factory, tmp_path, tls_config(pki, verify=True))
    monkeypatch.setenv("NAQ_TLS_CA", str(pki.ca))
    monkeypatch.setenv("NAQ_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("NAQ_TLS_KEY", str(pki.client_key))
    await round_trip(server.url)
    await round_trip(server.url.replace("nats://", "tls://"))
    listed = naq("list-scheduled", "--url", server.url)
    assert (listed.code, listed.out) == (0, "no scheduled jobs\n")


@pytest.mark.slow
async def test_tls_refuses_an_unknown_ca_and_a_client_without_a_certificate(
    nats_server_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other")
    server = configured_server(nats_server_factory, tmp_path, tls_config(pki, verify=True))
    monkeypatch.setenv("NAQ_TLS_CA", str(other.ca))  # the server's certificate is not from this CA
    monkeypatch.setenv("NAQ_TLS_CERT", str(other.client_cert))
    monkeypatch.setenv("NAQ_TLS_KEY", str(other.client_key))
    with pytest.raises(NaqConnectionError, match=f"NATS server at {server.url} not reachable"):
        await Queue("default", server.url).enqueue(jobs.add, 1, 1)
    assert naq("list-scheduled", "--url", server.url).code == 3
    monkeypatch.setenv("NAQ_TLS_CA", str(pki.ca))
    monkeypatch.delenv("NAQ_TLS_CERT")  # trusted server, but the client shows no certificate
    monkeypatch.delenv("NAQ_TLS_KEY")
    with pytest.raises(NaqConnectionError, match=f"{server.url}"):
        await Queue("default", server.url).enqueue(jobs.add, 1, 1)
    assert naq("list-scheduled", "--url", server.url).code == 3
    await close_all()


async def test_a_creds_file_from_naq_creds_connects_in_operator_mode(
    nats_server_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator = Operator(tmp_path / "operator")
    server = configured_server(nats_server_factory, tmp_path, operator.server_config())
    creds = operator.creds("alice")
    monkeypatch.setenv("NAQ_CREDS", str(creds))
    assert ConnectionSettings.resolve(server.url).credentials_file == str(creds)
    await round_trip(server.url)
    listed = naq("list-scheduled", "--url", server.url)
    assert (listed.code, listed.out) == (0, "no scheduled jobs\n")


async def test_a_creds_file_of_an_unknown_account_is_refused_without_showing_its_seed(
    nats_server_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    operator = Operator(tmp_path / "operator")
    server = configured_server(nats_server_factory, tmp_path, operator.server_config())
    forged = operator.creds("mallory", account=new_keys(nkeys.PREFIX_BYTE_ACCOUNT))
    monkeypatch.setenv("NAQ_CREDS", str(forged))
    with pytest.raises(NaqConnectionError) as refused:
        await Queue("default", server.url).enqueue(jobs.add, 1, 1)
    ran = naq("list-scheduled", "--url", server.url)
    assert ran.code == 3 and ran.err.splitlines()[-1] == f"naq: NATS server at {server.url} authorization failed"
    seed = next(line for line in forged.read_text().splitlines() if line.startswith("SU"))
    shown = "\n".join([str(refused.value), repr(refused.value), ran.out, ran.err, caplog.text])
    assert seed not in shown and "authorization" in shown.lower()
    await close_all()
