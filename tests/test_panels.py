"""Widget-level tests of the panels against a real nats-server: built in-process, driven through their widgets."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from polling import wait_until

import naq_ipy
import naq_ipy.wire.connection
from naq_ipy.client.queue import Queue
from naq_ipy.ipython import close_registered
from naq_ipy.ipython.monitor_panel import QueueMonitor
from naq_ipy.ipython.schedules_form import CONFLICT_MESSAGE
from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel
from naq_ipy.schedules.record import new_record
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.names import SCHEDULED_JOBS_KV_NAME
from naq_ipy.wire.server import NatsServer

pytestmark = pytest.mark.timeout(60)


def work(x: int) -> int:
    return x


def elsewhere(coro_fn: Callable[[], Any]) -> Any:
    """Run a coroutine on a fresh loop in this thread: its own NATS connection, not the panel's."""
    return asyncio.run(coro_fn())


def schedule_jobs(url: str, count: int, queue: str = "default", prefix: str = "job") -> None:
    q = Queue(queue, url)
    for i in range(count):
        q.schedule_sync(work, i, cron="0 6 * * *", name=f"{prefix}{i:03d}")


def row_text(panel: ScheduledJobsPanel, key: str) -> str | None:
    """The HTML drawn in the slot that shows `key`, or None if it is not on the page."""
    return panel.drawn_html(key)


def check_row(panel: ScheduledJobsPanel, key: str) -> None:
    """Tick the checkbox of `key`'s row, as a user would."""
    assert panel.controls is not None
    panel.controls.slots[panel.slot_keys.index(key)].check.value = True


@pytest.fixture
def open_panel(nats_url: str) -> Iterator[Callable[..., ScheduledJobsPanel]]:
    panels: list[ScheduledJobsPanel] = []

    def make(**kwargs: Any) -> ScheduledJobsPanel:
        kwargs.setdefault("url", nats_url)
        panel = ScheduledJobsPanel(**kwargs)
        panels.append(panel)
        assert panel.wait_loaded(5)
        assert panel.widget is not None
        return panel

    yield make
    for panel in panels:
        panel.close()


def test_rows_paging_and_filters(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 27)
    schedule_jobs(nats_url, 2, queue="mail", prefix="mail")
    panel = open_panel(page_size=10)
    wait_until(lambda: panel.slot_keys[0] is not None, what="first page")
    assert panel.controls.pager.value.count("1–10 of 29 · page 1/3")
    assert sum(1 for slot in panel.controls.slots if slot.box.layout.display != "none") == 10
    panel.controls.next.click()
    panel.controls.next.click()
    assert panel.page == 2 and panel.slot_keys[:9] == [*(f"job{i:03d}" for i in range(20, 27)), "mail000", "mail001"]
    assert panel.controls.slots[9].box.layout.display == "none" and panel.controls.next.disabled
    panel.controls.queue.value = "mail"
    assert panel.page == 0 and panel.slot_keys[:3] == ["mail000", "mail001", None]
    assert list(panel.controls.queue.options) == ["(all)", "default", "mail"]
    panel.controls.queue.value = "(all)"
    panel.controls.text.value = "job02"
    assert [k for k in panel.slot_keys if k] == [f"job{i:03d}" for i in range(20, 27)]
    assert "cron 0 6 * * *" in row_text(panel, "job020")


def test_queue_argument_preselects_a_queue(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 2)
    schedule_jobs(nats_url, 1, queue="mail", prefix="mail")
    panel = open_panel(queue="mail")
    wait_until(lambda: panel.slot_keys[0] == "mail000", what="mail row")
    assert panel.slot_keys[1] is None and panel.controls.queue.value == "mail"
    empty = open_panel(queue="nothing-yet")
    assert empty.controls.queue.value == "nothing-yet" and empty.slot_keys[0] is None


def test_failed_action_shows_in_the_status_line(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]
                                                ) -> None:
    schedule_jobs(nats_url, 2)
    panel = open_panel()
    wait_until(lambda: "job001" in panel.slot_keys, what="rows")
    panel.stop_watching()  # the panel does not learn of the delete below
    elsewhere(lambda: naq_ipy.cancel_scheduled_job("job001", nats_url=nats_url))
    check_row(panel, "job000")
    check_row(panel, "job001")
    panel.controls.pause.click()
    wait_until(lambda: panel.status_error, what="error shown")
    assert panel.status_text.startswith("pause 2 job(s) failed: 1 of 2 failed — job001: no scheduled job named")
    assert "color:#b00020" in panel.status_html


def test_pause_button_pauses_the_selected_row(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 3)
    panel = open_panel()
    wait_until(lambda: "job001" in panel.slot_keys, what="rows")
    check_row(panel, "job001")
    assert panel.selected == {"job001"} and "1 selected" in panel.controls.selection.value
    panel.controls.pause.click()
    manager = ScheduledJobManager(nats_url)
    wait_until(lambda: naq_ipy.run_sync(manager.get("job001")).paused, what="paused in KV")
    assert not naq_ipy.run_sync(manager.get("job000")).paused
    wait_until(lambda: ">paused<" in (row_text(panel, "job001") or ""), 1.0, "row shows paused")
    wait_until(lambda: panel.status_text.startswith("paused: job001"), what="status line")
    panel.controls.resume.click()
    wait_until(lambda: not naq_ipy.run_sync(manager.get("job001")).paused, what="resumed in KV")


def shown_buttons(widget: Any) -> list[str]:
    """The labels of every button in `widget`'s displayed tree."""
    if type(widget).__name__ == "Button":
        return [widget.description]
    return [label for child in getattr(widget, "children", ()) for label in shown_buttons(child)]


ACTIONS = {"Pause", "Resume", "Run now", "Edit", "Cancel…", "Save", "Yes, cancel them", "Purge…", "Yes, purge",
           "Requeue"}


def test_read_only_panels_show_no_action_and_refuse_one(nats_url: str,
                                                         open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 2)
    assert {"Pause", "Edit", "Cancel…", "Save"} <= set(shown_buttons(open_panel().widget))
    panel = open_panel(read_only=True)
    assert set(shown_buttons(panel.widget)) == {"◀", "▶", "Recent runs"}
    wait_until(lambda: "job001" in panel.slot_keys, what="rows")
    check_row(panel, "job001")
    panel.pause()
    assert panel.status_text == "pause: this panel is read-only" and panel.status_error
    assert not naq_ipy.run_sync(ScheduledJobManager(nats_url).get("job001")).paused
    monitor = QueueMonitor(url=nats_url, refresh_s=0.2, read_only=True)
    try:
        assert monitor.wait_loaded(5)
        assert not ACTIONS & set(shown_buttons(monitor.widget))
        monitor.ask_purge()
        assert monitor.status_text == "purge: this panel is read-only"
    finally:
        monitor.close()


def test_cancel_asks_to_confirm_first(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 2)
    panel = open_panel()
    wait_until(lambda: "job000" in panel.slot_keys, what="rows")
    panel.controls.cancel.click()
    assert "select the jobs to cancel first" in panel.status_text
    check_row(panel, "job000")
    panel.controls.cancel.click()
    assert panel.controls.confirm.layout.display is None and "job000" in panel.controls.confirm_text.value
    panel.controls.confirm_no.click()
    assert panel.controls.confirm.layout.display == "none"
    assert len(naq_ipy.list_scheduled_jobs_sync(nats_url=nats_url)) == 2
    panel.controls.cancel.click()
    panel.controls.confirm_yes.click()
    wait_until(lambda: [r.key for r in naq_ipy.list_scheduled_jobs_sync(nats_url=nats_url)] == ["job001"],
               what="deleted in KV")
    wait_until(lambda: [k for k in panel.slot_keys if k] == ["job001"], 1.0, "row removed")
    assert panel.selected == set()


def test_run_now_publishes_one_run(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 1)
    panel = open_panel()
    wait_until(lambda: "job000" in panel.slot_keys, what="rows")
    check_row(panel, "job000")
    panel.controls.run_now.click()
    wait_until(lambda: panel.status_text.startswith("ran now: job000"), what="run now done")

    async def queued() -> int:
        from naq_ipy.wire.connection import get_connection

        conn = await get_connection(nats_url)
        info = await conn.js.stream_info("naq_jobs")
        return info.state.messages

    assert elsewhere(queued) == 1


def test_bad_cron_shows_why_and_writes_nothing(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 1)
    panel = open_panel()
    wait_until(lambda: "job000" in panel.slot_keys, what="rows")
    before = naq_ipy.get_scheduled_job_sync("job000", nats_url=nats_url)
    panel.controls.edit.click()
    assert "select exactly one job to edit" in panel.status_text
    check_row(panel, "job000")
    panel.controls.edit.click()
    editor = panel.editor
    assert editor.box.layout.display is None and editor.fields["cron"].value == "0 6 * * *"
    editor.fields["cron"].value = "61 * * * *"
    assert "out of range" in editor.feedback.value and editor.save_button.disabled
    editor.save_button.click()
    # a change made elsewhere after the click reaches the panel's watch after any write the click made
    schedule_jobs(nats_url, 1, prefix="later")
    wait_until(lambda: "later000" in panel.model.records, what="the later change in the panel")
    assert panel.model.records["job000"].revision == before.revision
    after = naq_ipy.get_scheduled_job_sync("job000", nats_url=nats_url)
    assert after.revision == before.revision and after.cron == "0 6 * * *"


def test_edit_saves_and_previews_three_runs(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 1)
    panel = open_panel()
    wait_until(lambda: "job000" in panel.slot_keys, what="rows")
    check_row(panel, "job000")
    panel.controls.edit.click()
    editor = panel.editor
    editor.fields["cron"].value = "*/10 * * * *"
    editor.fields["tz"].value = "Europe/Berlin"
    editor.fields["repeat"].value = "4"
    assert "next runs:" in editor.feedback.value and editor.feedback.value.count("·") == 2
    assert not editor.save_button.disabled
    editor.mode.value = "interval"
    assert editor.fields["cron"].layout.display == "none" and editor.fields["interval"].layout.display is None
    editor.mode.value = "cron"
    editor.save_button.click()
    wait_until(lambda: naq_ipy.get_scheduled_job_sync("job000", nats_url=nats_url).cron == "*/10 * * * *",
               what="saved")
    saved = naq_ipy.get_scheduled_job_sync("job000", nats_url=nats_url)
    assert (saved.tz, saved.repeat) == ("Europe/Berlin", 4)
    wait_until(lambda: "cron */10 * * * * (Europe/Berlin)" in (row_text(panel, "job000") or ""), 1.0, "row")
    assert editor.box.layout.display == "none" and panel.status_text.startswith("saved job000")


def test_change_elsewhere_shows_within_one_second(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]
                                                  ) -> None:
    schedule_jobs(nats_url, 3)
    panel = open_panel()
    wait_until(lambda: "job002" in panel.slot_keys, what="rows")
    started = time.monotonic()
    elsewhere(lambda: naq_ipy.modify_scheduled_job("job002", nats_url=nats_url, interval="45s"))
    wait_until(lambda: "every 45 s" in (row_text(panel, "job002") or ""), 1.0, "row updated within 1 s")
    assert time.monotonic() - started < 1.0
    elsewhere(lambda: Queue("default", nats_url).schedule(work, 9, interval="1h", name="added"))
    wait_until(lambda: "added" in panel.slot_keys, 1.0, "new row")
    elsewhere(lambda: naq_ipy.cancel_scheduled_job("added", nats_url=nats_url))
    wait_until(lambda: "added" not in panel.slot_keys, 1.0, "row gone")


def test_conflicting_edit_is_refused_and_reloaded(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]
                                                  ) -> None:
    schedule_jobs(nats_url, 1)
    panel = open_panel()
    wait_until(lambda: "job000" in panel.slot_keys, what="rows")
    check_row(panel, "job000")
    panel.controls.edit.click()
    editor = panel.editor
    panel.stop_watching()  # so the panel cannot have seen the other change before the save
    elsewhere(lambda: naq_ipy.modify_scheduled_job("job000", nats_url=nats_url, cron="15 4 * * *"))
    editor.fields["cron"].value = "0 12 * * *"
    editor.save_button.click()
    wait_until(lambda: CONFLICT_MESSAGE in panel.status_text, what="conflict message")
    assert naq_ipy.get_scheduled_job_sync("job000", nats_url=nats_url).cron == "15 4 * * *"
    assert "cron 15 4 * * *" in (row_text(panel, "job000") or "")
    assert editor.fields["cron"].value == "15 4 * * *" and editor.shown is not None
    assert "changed elsewhere, reloaded" in panel.status_html


def test_last_run_outcome_is_read_for_visible_rows(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]
                                                   ) -> None:
    from naq_ipy.status.results import JobStatus, write_status
    from naq_ipy.wire.connection import get_connection

    schedule_jobs(nats_url, 1)

    async def ran() -> None:
        conn = await get_connection(nats_url)
        await write_status(conn, JobStatus(job_id="job000.1", status="failed", error="ValueError: nope"))
        await ScheduledJobManager(nats_url).update("job000", lambda r: r.evolve(last_run_id="job000.1", run_count=1))

    panel = open_panel()
    elsewhere(ran)
    wait_until(lambda: "failed: ValueError: nope" in (row_text(panel, "job000") or ""), 2.0, "outcome")


def test_static_fallback_and_repr(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    schedule_jobs(nats_url, 2)
    panel = open_panel()
    wait_until(lambda: "job001" in panel.slot_keys, what="rows")
    assert "<table class='naq-scheduled'>" in panel._repr_html_() and ">job001<" in panel._repr_html_()
    bundle = panel._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}  # no kernel here: no widget view
    assert repr(panel).splitlines()[0] == "Scheduled jobs: 1–2 of 2 · page 1/1"


def test_close_stops_the_watch_and_widgets(nats_url: str) -> None:
    panel = ScheduledJobsPanel(url=nats_url)
    root = panel.widget
    assert panel.watching
    root._view_count = 1
    root._view_count = 0  # the output was cleared
    assert not panel.watching
    root._view_count = 1  # shown again (notebook reopened)
    assert panel.watching
    close_registered()  # what %unload_ext does
    assert panel.closed and not panel.watching and root.comm is None
    other = ScheduledJobsPanel(url=nats_url)
    other.widget.close()  # the frontend / user closed the widget
    assert other.closed and not other.watching


def test_status_line_shows_server_gone_and_recovers(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory()
    schedule_jobs(server.url, 1)
    panel = ScheduledJobsPanel(url=server.url)
    try:
        assert panel.wait_loaded(5) and panel.widget is not None
        server.stop()
        wait_until(lambda: panel.problem and "unreachable" in panel.problem, 5, "server gone")
        assert "unreachable" in panel.status_html
        server.start()
        wait_until(lambda: panel.problem is None, 15, "recovered")
        elsewhere(lambda: naq_ipy.pause_scheduled_job("job000", nats_url=server.url))
        wait_until(lambda: ">paused<" in (row_text(panel, "job000") or ""), 5, "live again")
    finally:
        panel.close()


def test_a_server_started_later_is_picked_up(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory(start=False)
    panel = ScheduledJobsPanel(url=server.url)
    try:
        assert panel.widget is not None
        wait_until(lambda: panel.problem and "not reachable — retrying in" in panel.problem, 10, "problem shown")
        server.start()
        schedule_jobs(server.url, 1)
        wait_until(lambda: "job000" in panel.slot_keys, 15, "loaded once the server is up")
        assert panel.problem is None and panel.wait_loaded(0)
    finally:
        panel.close()


def test_marshal_and_coalescer_hand_work_to_the_widgets_loop() -> None:
    from naq_ipy.ipython.livewatch import Coalescer, Marshal

    calls: list[str] = []
    Marshal.capture().call(calls.append, "direct")  # no running loop here: runs at once
    assert calls == ["direct"]

    async def on_a_loop() -> None:
        marshal = Marshal.capture()
        coalescer = Coalescer(marshal, lambda: calls.append(threading.current_thread().name))
        def ask_often() -> None:
            for _ in range(50):
                coalescer.request()

        worker = threading.Thread(target=ask_often, name="other")
        worker.start()
        worker.join()
        assert calls == ["direct"]  # nothing ran on the other thread
        await asyncio.sleep(0.05)

    asyncio.run(on_a_loop())
    assert calls == ["direct", "MainThread"]


@pytest.mark.slow
def test_in_a_kernel_updates_go_through_the_kernel_loop_and_nbconvert_gets_a_table(nats_url: str) -> None:
    import nbclient
    import nbformat
    from nbconvert import HTMLExporter

    cells = [
        "import asyncio, time\nimport naq_ipy\nfrom naq_ipy.ipython.panels import ScheduledJobsPanel\n"
        f"URL = {nats_url!r}\ndef f(x):\n    return x\n"
        "naq_ipy.Queue('default', URL).schedule_sync(f, 1, cron='0 6 * * *', name='static-one')\n"
        "panel = ScheduledJobsPanel(url=URL)\npanel",
        "naq_ipy.modify_scheduled_job_sync('static-one', nats_url=URL, interval='45s')\nstarted = time.monotonic()\n"
        "while 'every 45 s' not in panel.controls.slots[0].line.value and time.monotonic() - started < 5:\n"
        "    await asyncio.sleep(0.01)\n"
        "print('kernel loop:', panel.marshal.loop is asyncio.get_running_loop(), 'updated:',\n"
        "      'every 45 s' in panel.controls.slots[0].line.value)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=60, store_widget_state=False).execute()
    shown = notebook.cells[0].outputs[-1]["data"]
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(shown)
    assert notebook.cells[1].outputs[-1]["text"].strip() == "kernel loop: True updated: True"
    page, _ = HTMLExporter().from_notebook_node(notebook)
    assert "naq-scheduled" in page and ">static-one<" in page


async def store_schedules_pipelined(url: str, count: int) -> None:
    """`count` daily entries `s00000`... on queue `bulk`, written as the store writes them, but pipelined."""
    conn = await naq_ipy.wire.connection.get_connection(url)
    await conn.kv(SCHEDULED_JOBS_KV_NAME)
    job = Queue("bulk", url).job(work, (1,))
    template = new_record(job, key="s", schedule_type="cron", cron="0 6 * * *", next_run_utc=time.time() + 3600)
    acks = [await conn.js.publish_async(f"$KV.{SCHEDULED_JOBS_KV_NAME}.s{i:05d}",
                                        dataclasses.replace(template, key=f"s{i:05d}").to_bytes(), wait_stall=5)
            for i in range(count)]
    await asyncio.wait_for(asyncio.gather(*acks), 60)
    await naq_ipy.wire.connection.close_all()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ten_thousand_schedules_page_by_page(nats_url: str, open_panel: Callable[..., ScheduledJobsPanel]) -> None:
    asyncio.run(store_schedules_pipelined(nats_url, 10_000))
    panel = open_panel()
    wait_until(lambda: len(panel.model.records) == 10_000, timeout_s=60, what="all 10,000 entries in the panel")
    wait_until(lambda: panel.slot_keys[0] == "s00000", what="the first page")
    assert panel.controls.pager.value.count("1–25 of 10,000 · page 1/400")
    assert panel.slot_keys == [f"s{i:05d}" for i in range(25)]
    panel.controls.next.click()
    assert panel.slot_keys == [f"s{i:05d}" for i in range(25, 50)] and not panel.controls.prev.disabled
    panel.go_to(399)
    assert panel.slot_keys == [f"s{i:05d}" for i in range(9975, 10_000)] and panel.controls.next.disabled
    assert panel.controls.pager.value.count("9,976–10,000 of 10,000 · page 400/400")
    panel.go_to(10_000)  # past the end: clamped to the last page
    assert panel.page == 399
    panel.controls.text.value = "s0999"
    assert [k for k in panel.slot_keys if k] == [f"s0999{i}" for i in range(10)]
    assert panel.controls.pager.value.count("1–10 of 10 · page 1/1 · 10,000 in all") and panel.controls.next.disabled
    panel.controls.text.value = ""
    # an entry deleted elsewhere leaves the first page and the count
    elsewhere(lambda: ScheduledJobManager(nats_url).delete("s00000"))
    wait_until(lambda: "1–25 of 9,999 · page 1/400" in panel.controls.pager.value, what="the count to drop")
    wait_until(lambda: panel.slot_keys[0] == "s00001", what="the deleted entry to leave the first page")
