"""`*_sync` helpers and top-level `await` inside a real Jupyter kernel (its loop is running), via nbclient."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import nats
import nbformat
import pytest
from nbclient import NotebookClient

from naq_ipy import Job

CELLS = [
    """
    import asyncio, json, sys
    import naq_ipy
    from naq_ipy import Queue
    URL = {url!r}
    loop_running = asyncio.get_running_loop().is_running()
    """,
    """
    def double(x):
        return x * 2
    """,
    """
    first = naq_ipy.enqueue_sync(double, 1, nats_url=URL)
    second = naq_ipy.enqueue_sync(double, 1, nats_url=URL)
    """,
    """
    q = Queue("kernel", URL)
    loop_ids = [q.enqueue_sync(double, i).job_id for i in range(50)]
    """,
    """
    awaited = await q.enqueue(double, 21)
    """,
    """
    print(json.dumps({
        "executable": sys.executable,
        "loop_running": loop_running,
        "ids": [first.job_id, second.job_id, *loop_ids, awaited.job_id],
        "bridge": naq_ipy.client.bridge._bridge.thread is not None,
        "mode": naq_ipy.client.bridge.get_loop_mode(),
    }))
    """,
]


@pytest.fixture
def isolated_jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `python3` kernelspec for this interpreter in a temp prefix; nothing under the user's home is touched."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "prefix"
    install(prefix=str(prefix), kernel_name="python3")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    for name, folder in (("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.delenv("NAQ_LOOP_MODE", raising=False)
    spec = json.loads((prefix / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return tmp_path


async def _queue_messages(url: str) -> dict[str, list[bytes]]:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info("naq_jobs", subjects_filter="naq.queue.>")
        found: dict[str, list[bytes]] = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("naq_jobs", seq=seq)
            found.setdefault(msg.subject or "", []).append(msg.data or b"")
        return found
    finally:
        await nc.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sync_helpers_inside_a_running_kernel(nats_url: str, isolated_jupyter: Path) -> None:
    import textwrap

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(cell).strip().replace("{url!r}", repr(nats_url)))
                for cell in CELLS]
    client = NotebookClient(nb, kernel_name="python3", timeout=60,
                            resources={"metadata": {"path": str(isolated_jupyter)}})
    client.execute()
    outputs = nb.cells[-1].outputs
    assert outputs and outputs[0].output_type == "stream", outputs
    result = json.loads(outputs[0].text.strip().splitlines()[-1])
    assert result["executable"] == sys.executable
    assert result["loop_running"] is True, "the kernel's loop was not running: the test would prove nothing"
    assert result["bridge"] is True and result["mode"] == "thread"
    assert len(set(result["ids"])) == 53
    messages = asyncio.run(_queue_messages(nats_url))
    assert {subject: len(items) for subject, items in messages.items()} == {
        "naq.queue.default": 2, "naq.queue.kernel": 51}
    # `double` was defined in the notebook's __main__: it travelled by value and runs here
    job = Job.deserialize(messages["naq.queue.kernel"][-1])
    assert job.func_name == "__main__.double" and job.function(*job.args) == 42
