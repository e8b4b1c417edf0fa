"""Benchmark (run by hand): `%naq_enqueue f(1)` in a real kernel, beside `Queue.enqueue_sync` and raw nats-py.

    .venv/bin/python bench/magics.py [--n 1000] [--rounds 5]

Starts its own nats-server on a free port and a kernel for this interpreter (kernelspec and
Jupyter/IPython dirs in a temp dir), then in that kernel times, per call and in interleaved
rounds: the magic through `run_line_magic`, the core's blocking `Queue.enqueue_sync` (both
through the sync bridge), and an awaited nats-py `js.publish` of the same job bytes on the
kernel's own loop. Prints p50/p99/mean and writes them to bench/results/magics.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from naq_ipy.wire.server import NatsServer, find_server_binary

RESULTS = Path(__file__).parent / "results" / "magics.txt"

SETUP = """
%load_ext naq_ipy
%config NaqMagics.url = {url!r}
import json, time, uuid
import nats
from naq_ipy import Queue
from naq_ipy.wire.settings import queue_subject

def f(x):
    return x

ip = get_ipython()
queue = Queue("default", {url!r})
payload = queue.job(f, (1,)).serialize()
nc = await nats.connect({url!r})
js = nc.jetstream()
samples = {{"magic": [], "core": [], "raw": []}}
"""

ROUND = """
def timed(call, n):
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out

samples["magic"] += timed(lambda: ip.run_line_magic("naq_enqueue", "f(1)"), {n})
samples["core"] += timed(lambda: queue.enqueue_sync(f, 1), {n})
raw = []
for _ in range({n}):
    start = time.perf_counter()
    await js.publish(queue_subject("default"), payload, headers={{"Nats-Msg-Id": uuid.uuid4().hex}})
    raw.append(time.perf_counter() - start)
samples["raw"] += raw
"""

REPORT = """
def summary(values):
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    mean_ms = sum(ordered) / len(ordered) * 1000
    return {"n": len(ordered), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "mean_ms": mean_ms}

await nc.close()
print(json.dumps({name: summary(values) for name, values in samples.items()}))
"""


def kernel_dirs(tmp: Path) -> str:
    """A kernelspec for this interpreter and private Jupyter/IPython dirs under `tmp`; returns its name."""
    name = "naq-bench"
    spec = tmp / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name, "language": "python",
    }))
    for var, sub in (("JUPYTER_PATH", "jupyter"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("XDG_DATA_HOME", "xdg")):
        os.environ[var] = str(tmp / sub)
    os.environ.pop("NAQ_URL", None)
    return name


def run(n: int, rounds: int) -> dict[str, dict[str, float]]:
    """Execute the benchmark notebook; the per-call statistics of each way, in milliseconds."""
    with tempfile.TemporaryDirectory(prefix="naq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        kernel = kernel_dirs(tmp)
        server = NatsServer(port=None, store_dir=tmp / "nats").start()
        try:
            warmup = ROUND.format(n=50) + '\nsamples = {"magic": [], "core": [], "raw": []}'
            cells = [SETUP.format(url=server.url), warmup] + [ROUND.format(n=n // rounds)] * rounds + [REPORT]
            nb = new_notebook(cells=[new_code_cell(src) for src in cells])
            NotebookClient(nb, kernel_name=kernel, timeout=600).execute()
        finally:
            server.stop()
    [output] = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    return dict(json.loads(output.text))


def report(stats: dict[str, dict[str, float]], n: int, rounds: int) -> str:
    """The figures as a text table with the machine they were measured on."""
    version = subprocess.run([find_server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"bench/magics.py: {n} calls per way in {rounds} interleaved rounds, one real ipykernel, loopback NATS",
        f"python {platform.python_version()}, {os.cpu_count()} cores, {version}",
        "",
        f"{'way':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}",
    ]
    labels = {"magic": "%naq_enqueue f(1) (run_line_magic)", "core": "Queue.enqueue_sync(f, 1)",
              "raw": "await js.publish (nats-py, raw)"}
    for key, label in labels.items():
        s = stats[key]
        lines.append(f"{label:<34}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['mean_ms']:>9.3f}")
    gap = stats["magic"]["p50_ms"] - stats["core"]["p50_ms"]
    lines += ["", f"magic p50 - core p50 = {gap:+.3f} ms (target: within 1 ms)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="calls per way (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    text = report(run(args.n, args.rounds), args.n, args.rounds)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
