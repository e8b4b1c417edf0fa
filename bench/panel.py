"""Benchmark (by hand) of the scheduled-jobs panel: first render and KV change → row updated.

    .venv/bin/python bench/panel.py              # in this process, on an asyncio loop like a kernel's
    .venv/bin/python bench/panel.py --kernel     # the same code inside a real ipykernel (nbclient)

For 100 / 1,000 / 10,000 entries: the time from `ScheduledJobsPanel(...)` to the widget built with
its first page drawn, and the latency from a change written on another connection until the
row shows it (p50 / p95 / max), plus how many row slots each update redrew; each figure is the
median of three runs. Results are printed and written to bench/results/panel.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from naq_ipy.client.job import Job  # noqa: E402
from naq_ipy.schedules.record import new_record  # noqa: E402
from naq_ipy.schedules.store import ScheduledJobManager  # noqa: E402
from naq_ipy.wire.connection import get_connection  # noqa: E402
from naq_ipy.wire.names import SCHEDULED_JOBS_KV_NAME  # noqa: E402

SIZES = (100, 1_000, 10_000)
UPDATES = 30
REPEATS = 3


def work(x: int) -> int:
    """The scheduled function (never run here)."""
    return x


async def populate(url: str, count: int) -> None:
    """Replace the bucket's content with `count` cron entries, written pipelined."""
    conn = await get_connection(url)
    with contextlib.suppress(Exception):  # first run: no bucket yet
        await conn.js.delete_key_value(SCHEDULED_JOBS_KV_NAME)
    kv = await conn.js.create_key_value(bucket=SCHEDULED_JOBS_KV_NAME, history=1)
    now = time.time()
    job = Job(work, (1,))
    for start in range(0, count, 500):
        await asyncio.gather(*(kv.put(f"bench{i:05d}", new_record(
            job, key=f"bench{i:05d}", schedule_type="cron", cron="*/5 * * * *", next_run_utc=now + 2 * 86400 + 1800 + i,
        ).to_bytes()) for i in range(start, min(start + 500, count))))


async def wait_for(check: Any, timeout_s: float = 10.0) -> None:
    """Poll `check` while letting this loop run (widget updates arrive on it)."""
    deadline = time.perf_counter() + timeout_s
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.0005)


async def measure_one(url: str, count: int, updates: int) -> dict[str, Any]:
    """First render and update latency for `count` entries."""
    from naq_ipy.client.bridge import stop_bridge
    from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel

    await populate(url, count)
    stop_bridge()  # start cold, as a fresh notebook would
    started = time.perf_counter()
    panel = ScheduledJobsPanel(url=url)
    panel.wait_loaded(30)
    loaded_s = time.perf_counter() - started
    assert panel.widget is not None
    render_s = time.perf_counter() - started
    redrawn: list[int] = []
    draw = panel._draw_slot

    def counted_draw(i: int, row: Any) -> None:
        redrawn.append(i)
        draw(i, row)

    panel._draw_slot = counted_draw  # type: ignore[method-assign]
    latencies, slots = [], []
    manager = ScheduledJobManager(url)
    key = panel.slot_keys[3]

    def shows(repeat: int) -> bool:
        return any(r is not None and r.key == key and r.cells[5] == str(repeat) for r in panel._shown)

    for n in range(1, updates + 1):
        redrawn.clear()
        before = time.perf_counter()
        await manager.update(key, lambda r, n=n: r.evolve(repeat=n))
        await wait_for(lambda n=n: shows(n))
        latencies.append(time.perf_counter() - before)
        slots.append(len(redrawn))
    panel.close()
    latencies.sort()
    assert len(panel.model.records) == count
    return {"entries": count, "loaded_s": loaded_s, "render_s": render_s,
            "update_p50_ms": 1000 * statistics.median(latencies),
            "update_p95_ms": 1000 * latencies[int(0.95 * len(latencies)) - 1],
            "update_max_ms": 1000 * latencies[-1], "slots_per_update": max(slots)}


async def measure(url: str, sizes: tuple[int, ...] = SIZES, updates: int = UPDATES, repeats: int = REPEATS
                  ) -> list[dict[str, Any]]:
    """Median figures of `repeats` runs for each size (run on a loop: plain asyncio or a kernel's)."""
    results = []
    for count in sizes:
        runs = [await measure_one(url, count, updates) for _ in range(repeats)]
        results.append({key: statistics.median(run[key] for run in runs) if key != "slots_per_update"
                        else max(run[key] for run in runs) for key in runs[0]})
    return results


def in_kernel(url: str) -> list[dict[str, Any]]:
    """Run `measure` inside a real ipykernel with top-level await (as a notebook user would)."""
    import nbclient
    import nbformat

    source = (f"import sys, json\nsys.path.insert(0, {str(HERE)!r})\nimport panel as bench\n"
              f"print(json.dumps(await bench.measure({url!r})))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = [o for o in notebook.cells[0].outputs if o.get("name") == "stdout"]
    return json.loads(outputs[-1]["text"].strip().splitlines()[-1])


def report(results: list[dict[str, Any]], where: str) -> str:
    """The figures as a small text table."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"scheduled-jobs panel ({where}), {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {load};",
             "first render = panel created → first page drawn in its widget;",
             "medians of 3 runs; updates: 30 per run, change written on another connection → row redrawn",
             f"{'entries':>8}  {'loaded':>8}  {'render':>8}  {'update p50':>10}  {'p95':>8}  {'max':>8}  slots/upd"]
    for r in results:
        lines.append(f"{r['entries']:>8,}  {r['loaded_s']:>7.3f}s  {r['render_s']:>7.3f}s  "
                     f"{r['update_p50_ms']:>8.1f}ms  {r['update_p95_ms']:>6.1f}ms  {r['update_max_ms']:>6.1f}ms  "
                     f"{r['slots_per_update']:>9}")
    return "\n".join(lines)


def main() -> None:
    """Start a private nats-server, measure, print and save the figures."""
    from naq_ipy.wire.server import NatsServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", action="store_true", help="measure inside a real ipykernel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store, NatsServer(port=None, store_dir=store) as server:
        where = "in a real ipykernel" if args.kernel else "in-process asyncio loop"
        results = in_kernel(server.url) if args.kernel else asyncio.run(measure(server.url))
    text = report(results, where)
    print(text)
    out = HERE / "results" / "panel.txt"
    out.parent.mkdir(exist_ok=True)
    previous = out.read_text() if out.exists() else ""
    kept = "\n\n".join(block.strip() for block in previous.split("\n\n") if block.strip() and where not in block)
    out.write_text((kept + "\n\n" if kept else "") + text + "\n")


if __name__ == "__main__":
    main()
