"""`naq dashboard`: arguments, the page it serves, and what it says without Voilà or without a NATS server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from naq_ipy.cli import dashboard
from naq_ipy.cli import main as cli
from naq_ipy.wire.server import free_port

NAQ = [sys.executable, "-m", "naq_ipy.cli"]

# imported first in the child (sitecustomize): any import of voila fails as if it were not installed
BLOCK_VOILA = """
import sys

class BlockVoila:
    def find_spec(self, name, path=None, target=None):
        if name == "voila" or name.startswith("voila."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockVoila())
"""


def test_dashboard_is_a_naq_command() -> None:
    args = cli.build_parser().parse_args(["dashboard", "--port", "9999", "--url", "nats://h:1", "--no-browser",
                                          "--read-only", "--queue", "reports"])
    assert (args.command, args.port, args.url, args.no_browser, args.read_only, args.queue) == (
        "dashboard", 9999, "nats://h:1", True, True, "reports")
    args = cli.build_parser().parse_args(["dashboard"])
    assert (args.port, args.url, args.no_browser, args.read_only, args.queue) == (None, None, False, False, None)


def test_without_voila_it_says_what_to_install_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_VOILA)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*NAQ, "dashboard", "--no-browser"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == dashboard.MISSING + "\n" and "pip install 'naq_ipy[dashboard]'" in done.stderr
    assert done.stdout == ""


def test_no_nats_server_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    assert cli.main(["dashboard", "--no-browser", "--url", url]) == 3
    err = capsys.readouterr().err
    assert err == f"naq: no NATS server answers at {url}: start one (naq server, naq lab) or pass --url\n"


def test_a_taken_port_is_a_usage_error(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind((dashboard.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["dashboard", "--no-browser", "--url", nats_url, "--port", str(port)]) == 2
    assert f"port {port} is taken" in capsys.readouterr().err


def test_settings_go_through_the_environment_and_the_token_stays_off_the_command_line() -> None:
    server = dashboard.DashboardServer("nats://127.0.0.1:4999", port=free_port(), queue="reports", read_only=True)
    command, env = server.command(), server.environment()
    assert server.token not in " ".join(command) and server.address.endswith(f"?token={server.token}")
    assert command[1:3] == ["-m", "naq_ipy.cli.dashboard"] and str(dashboard.NOTEBOOK) in command
    assert "--strip_sources=True" in command and f"--port={server.port}" in command
    assert (env["NAQ_URL"], env[dashboard.QUEUE_ENV], env[dashboard.READ_ONLY_ENV], env[dashboard.TOKEN_ENV]) == (
        "nats://127.0.0.1:4999", "reports", "1", server.token)
    plain = dashboard.DashboardServer("nats://127.0.0.1:4999", port=free_port()).environment()
    assert dashboard.QUEUE_ENV not in plain and dashboard.READ_ONLY_ENV not in plain


def test_the_page_is_package_data_with_one_code_cell_and_no_outputs() -> None:
    nb = json.loads(dashboard.NOTEBOOK.read_text())
    assert [cell["cell_type"] for cell in nb["cells"]] == ["code"] and nb["cells"][0]["outputs"] == []
    source = "".join(nb["cells"][0]["source"])
    for name in ("NAQ_URL", dashboard.QUEUE_ENV, dashboard.READ_ONLY_ENV):
        assert f'"{name}"' in source
    assert dashboard.TOKEN_ENV not in source
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"naq_ipy.ipython" = ["dashboard/*.ipynb"]' in pyproject
