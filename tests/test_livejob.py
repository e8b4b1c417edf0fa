"""The live Job display: widget-level tests in-process, and in a real kernel (nbclient, widget state stored)."""

from __future__ import annotations

import asyncio
import html
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jobs
import nbformat
import pytest
from magic_shell import make_shell
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook
from polling import wait_until
from test_magics_kernel import KERNEL_NAME, kernel_env  # noqa: F401  (fixture)
from test_worker import TESTS_DIR, spawn_worker  # noqa: F401  (fixture)

from naq_ipy import Job, Queue
from naq_ipy.ipython.livejob import HIDE, SHOW, LiveJob, job_mimebundle
from naq_ipy.status.workers import idle_queue_hint
from naq_ipy.worker.consumer import Worker

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def worker(nats_url: str) -> Iterator[Worker]:
    """A thread-mode worker on `default`, running on its own loop in a thread."""
    worker = Worker("default", url=nats_url, heartbeat_s=0.5)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),), daemon=True)
    thread.start()
    wait_until(lambda: worker.started_at, what="the worker to start")
    yield worker
    worker.request_stop()
    thread.join(15)


@pytest.fixture
def live(nats_url: str) -> Iterator[Callable[[Job | str], LiveJob]]:
    """`live(job or job id)`: a LiveJob with its widget built; all closed at the end."""
    made: list[LiveJob] = []

    def make(job: Job | str) -> LiveJob:
        view = LiveJob(job, nats_url)
        made.append(view)
        assert view.wait_loaded(5)
        assert view.widget is not None
        return view

    yield make
    for view in made:
        view.close()


def test_a_failed_job_shows_its_error_line_and_the_traceback_on_demand(
    worker: Worker, live: Callable[[Job | str], LiveJob], nats_url: str,
) -> None:
    view = live(Queue("default", nats_url).enqueue_sync(jobs.boom, "kaput").job_id)
    parts = view.parts
    wait_until(lambda: "RuntimeError: kaput" in parts.outcome.value, what="the error line")
    assert "jobs.boom</b> on default" in parts.title.value  # known from the status record
    assert "failed" in parts.state.value
    assert parts.bar.bar_style == "danger"
    assert parts.toggle.layout.display is None and parts.toggle.description == SHOW
    assert parts.traceback.layout.display == "none"
    assert "Traceback (most recent call last)" in parts.traceback.value and "kaput" in parts.traceback.value
    parts.toggle.click()
    assert parts.traceback.layout.display is None and parts.toggle.description == HIDE
    parts.toggle.click()
    assert parts.traceback.layout.display == "none"
    wait_until(lambda: not view.watching, what="the watch to stop")


def test_a_running_job_fills_its_bar_then_shows_its_result(
    worker: Worker, live: Callable[[Job | str], LiveJob], nats_url: str,
) -> None:
    queue = Queue("default", nats_url)
    job = queue.job(jobs.report_steps, ([0.25, 0.5, 1.0], 0.4))
    view = live(job)
    assert "queued" in view.parts.state.value
    shown: list[float] = []
    view.parts.bar.observe(lambda change: shown.append(change["new"]), "value")
    queue.enqueue_job_sync(job)
    wait_until(lambda: view.parts.outcome.value.count("reported"), what="the result preview")
    assert shown[:3] == [0.25, 0.5, 1.0]
    assert "finished" in view.parts.state.value and view.parts.bar.bar_style == "success"
    assert "100% · step 3 of 3" in view.parts.message.value
    assert "ran " in view.parts.outcome.value
    assert view.parts.toggle.layout.display == "none"
    wait_until(lambda: not view.watching, what="the watch to stop")
    assert "finished · 100% · step 3 of 3" in repr(view) and "'reported'" in repr(view)


def test_without_a_worker_a_job_is_queued_or_scheduled_and_has_a_text_form(
    live: Callable[[Job | str], LiveJob], nats_url: str,
) -> None:
    queue = Queue("nobody", nats_url)
    queued, later = queue.enqueue_sync(jobs.add, 1, 2), queue.enqueue_in_sync(3600, jobs.add, 1, 2)
    queued_view, later_view = live(queued), live(later)
    wait_until(lambda: "scheduled" in later_view.parts.state.value, what="the scheduled label")
    assert "queued" in queued_view.parts.state.value and queued_view.parts.bar.value == 0
    wait_until(lambda: queued_view.hint is not None, what="the no-worker hint")  # nothing serves "nobody"
    assert repr(queued_view) == f"job {queued.job_id} jobs.add: queued · {idle_queue_hint('nobody')}"
    assert "no worker serves queue" in queued_view.parts.hint.value and later_view.hint is None
    bundle = queued_view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"} and "queued" in bundle["text/html"]
    assert job_mimebundle(queued) is None  # not in a kernel: IPython shows the Job's own repr
    queued_view.close()
    assert not queued_view.watching


def test_the_extension_registers_the_live_display_for_jobs_and_removes_it(nats_url: str) -> None:
    shell = make_shell(url=nats_url)
    try:
        formatter = shell.display_formatter.mimebundle_formatter
        shell.run_line_magic("load_ext", "naq_ipy")
        assert formatter.lookup_by_type(Job) is job_mimebundle
        shell.run_line_magic("unload_ext", "naq_ipy")
        with pytest.raises(KeyError):
            formatter.lookup_by_type(Job)
    finally:
        type(shell).clear_instance()


# --- in a real kernel -------------------------------------------------------------------------

KERNEL_CELLS = [
    "import asyncio, sys\nsys.path.insert(0, {tests!r})\nimport jobs, naq_ipy\nfrom naq_ipy import Queue\n"
    "from IPython.display import display\nURL = {url!r}",
    "thread_job = Queue('threads', URL).enqueue_sync(jobs.report_steps, [0.25, 0.5, 1.0], 0.4)\n"
    "display(thread_job)\nawait thread_job.result(30)\nawait asyncio.sleep(1)",
    "process_job = Queue('processes', URL).enqueue_sync(jobs.report_steps, [0.25, 0.5, 1.0], 0.4)\n"
    "display(process_job)\nawait process_job.result(30)\nawait asyncio.sleep(1)",
    "%naq_enqueue --wait 30 -q threads -o waited_job jobs.report_steps([0.5, 1.0], 0.4)",
    "failing = Queue('threads', URL).enqueue_sync(jobs.boom, 'kaput')\ndisplay(failing)\n"
    "await asyncio.sleep(3)\nall_three = naq_ipy.wait([thread_job, process_job, failing], timeout=30)\n"
    "print(all_three)\nprint(thread_job.job_id, process_job.job_id, waited_job.job_id, failing.job_id)",
]


def widget_views(nb: Any) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """From the stored widget state: each LiveJob's parts by job id, and every IntProgress (wait bars)."""
    models = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    state = {model_id: model["state"] for model_id, model in models.items()}

    def child(ref: str) -> dict[str, Any]:
        return state[ref.removeprefix("IPY_MODEL_")]

    views: dict[str, dict[str, Any]] = {}
    for model in state.values():
        if model["_model_name"] != "VBoxModel" or len(model.get("children", [])) != 7:
            continue
        top, middle, _output, outcome, toggle = (child(ref) for ref in model["children"][:5])
        title, label = (child(ref) for ref in top["children"][:2])
        bar, message = (child(ref) for ref in middle["children"])
        job_id = title["value"].split("<code>")[1].split("</code>")[0]
        views[job_id] = {"state": label["value"], "bar": bar["value"], "style": bar["bar_style"],
                         "message": message["value"], "outcome": html.unescape(outcome["value"]),
                         "toggle": toggle["description"]}
    bars = [model for model in state.values() if model["_model_name"] == "IntProgressModel"]
    return views, bars


@pytest.mark.slow
def test_live_displays_in_a_kernel_reach_the_end(
    kernel_env: Path, nats_url: str, spawn_worker: Callable[..., Any],  # noqa: F811  (imported fixtures)
) -> None:
    spawn_worker(nats_url, "threads")
    spawn_worker(nats_url, "processes", "--process-pool")
    cells = [src.format(tests=str(TESTS_DIR), url=nats_url) for src in KERNEL_CELLS]
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=60, store_widget_state=True,
                   resources={"metadata": {"path": str(kernel_env)}}).execute()
    nbformat.validate(nb)
    printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs).splitlines()
    thread_id, process_id, waited_id, failing_id = printed[-1].split()
    assert printed[0].startswith("<WaitResult 3 of 3 ended: 2 done, 1 failed")
    views, bars = widget_views(nb)
    for job_id in (thread_id, process_id, waited_id):
        view = views[job_id]
        assert (view["bar"], view["style"]) == (1.0, "success"), json.dumps(view)
        assert "finished" in view["state"] and "'reported'" in view["outcome"]
    assert "step 3 of 3" in views[thread_id]["message"] and "step 3 of 3" in views[process_id]["message"]
    assert "failed" in views[failing_id]["state"] and "RuntimeError: kaput" in views[failing_id]["outcome"]
    assert views[failing_id]["toggle"] == SHOW
    assert [(bar["value"], bar["max"], bar["bar_style"]) for bar in bars] == [(3, 3, "danger")]


# --- the Cancel button ------------------------------------------------------------------------

def test_cancel_button_stops_a_running_job_and_hides_itself(
    worker: Worker, nats_url: str, tmp_path: Path, live: Callable[[Job | str], LiveJob],
) -> None:
    evidence = str(tmp_path / "spin")
    view = live(Queue("default", nats_url).enqueue_sync(jobs.busy_loop, evidence))
    wait_until(lambda: view.status is not None and view.status.status == "running", what="the job to run")
    assert view.parts.cancel.layout.display is None and view.parts.cancel.description == "Cancel"
    view.parts.cancel.click()
    assert view.ended.wait(15)
    wait_until(lambda: view.status_text == "cancel: cancelled", 5, "the cancel's outcome in the status line")
    assert view.status is not None and view.status.status == "cancelled"
    view.refresh()
    assert view.parts.cancel.layout.display == "none" and "cancelled" in view.parts.state.value
    assert not jobs.marks(evidence, "end")


@pytest.mark.slow
def test_a_thread_blocked_in_c_shows_stopping_until_it_returns(
    worker: Worker, nats_url: str, tmp_path: Path, live: Callable[[Job | str], LiveJob],
) -> None:
    evidence = str(tmp_path / "sleep")
    view = live(Queue("default", nats_url).enqueue_sync(jobs.slow, evidence, 3))
    wait_until(lambda: jobs.marks(evidence, "start"), what="the job to start")
    view.cancel()
    wait_until(lambda: view.status is not None and view.status.status == "stopping", 5, "stopping")
    view.refresh()
    assert view.parts.cancel.disabled and view.parts.cancel.description == "Stopping…"
    assert "stopping" in view.parts.state.value
    assert view.ended.wait(15) and view.status.status == "cancelled"
    assert not jobs.marks(evidence, "end")


CANCEL_CELLS = [
    KERNEL_CELLS[0] + "\nfrom naq_ipy.ipython.livejob import LiveJob\nfrom naq_ipy.status.results import wait_for_end",
    "spin = Queue('threads', URL).enqueue_sync(jobs.busy_loop, {evidence!r})\nlive = LiveJob(spin)\ndisplay(live)\n"
    "while not jobs.marks({evidence!r}, 'start'):\n    await asyncio.sleep(0.05)",
    "live.parts.cancel.click()\nended = await wait_for_end(spin.job_id, 30, URL)\nawait asyncio.sleep(1.5)\n"
    "print(ended.status, live.status.status, live.parts.cancel.layout.display, live.status_text, sep='|')",
]


@pytest.mark.slow
def test_cancel_button_in_a_kernel(
    kernel_env: Path, nats_url: str, tmp_path: Path, spawn_worker: Callable[..., Any],  # noqa: F811
) -> None:
    spawn_worker(nats_url, "threads", "--concurrency", "1")
    evidence = str(tmp_path / "spin")
    cells = [src.format(tests=str(TESTS_DIR), url=nats_url, evidence=evidence) for src in CANCEL_CELLS]
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=60, store_widget_state=True,
                   resources={"metadata": {"path": str(kernel_env)}}).execute()
    printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs).strip()
    assert printed == "cancelled|cancelled|none|cancel: cancelled"
    assert jobs.marks(evidence, "start") and not jobs.marks(evidence, "end")
