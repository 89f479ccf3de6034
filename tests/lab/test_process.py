from __future__ import annotations

import asyncio
import signal
import sys

from shoal.lab.process import stop_process

SLEEPER = "import time; time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(60)"
)


async def test_sigterm_first_then_sigkill_after_the_grace() -> None:
    polite = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    await stop_process(polite, grace=5)
    assert polite.returncode == -signal.SIGTERM
    stubborn = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STUBBORN, stdout=asyncio.subprocess.PIPE
    )
    assert stubborn.stdout is not None
    await stubborn.stdout.readline()  # its SIGTERM handler is in place
    await stop_process(stubborn, grace=0.2)
    assert stubborn.returncode == -signal.SIGKILL
    await stop_process(stubborn)  # already gone: nothing to do
