"""Process mode leaves nothing behind: the children of a killed worker (and their forkserver) exit too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pids import descendants, wait_gone

SCRIPT = textwrap.dedent("""
    import asyncio, os, pickle, time
    from naq_ipy.worker.executor import Executor
    from naq_ipy.client.job import Job

    async def main():
        executor = Executor(2, process_pool=True)
        job, slow = Job(function=os.getpid), Job(function=time.sleep, args=(120,))
        print(pickle.loads((await executor.run(job, job.serialize())).data), flush=True)  # a child's pickle
        await asyncio.gather(*(executor.run(slow, slow.serialize()) for _ in range(2)))

    if __name__ == "__main__":
        asyncio.run(main())
""")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_killed_amid_jobs_leaves_no_pool_child_or_forkserver(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"  # a file: forkserver children import the parent's main module
    script.write_text(SCRIPT)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        forkserver = parent_of(int(worker.stdout.readline()))
        deadline = time.monotonic() + 10
        while len(children := list(descendants(forkserver))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the second slot's child is starting
        assert len(children) == 2 and worker.pid not in children
        os.kill(worker.pid, signal.SIGKILL)  # no pool shutdown, jobs running: as under the OOM killer
        worker.wait(10)
        assert wait_gone([*children, forkserver], within_s=10) == []
    finally:
        worker.kill()
        worker.wait(10)
