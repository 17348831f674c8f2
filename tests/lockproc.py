"""A process using a FileLocker, for tests/test_workers.py: `python -m tests.lockproc MODE DIR ...`.

  hold DIR ID READY ASKED   take ID's lock, touch READY, hold it until another process
                            asks to let go (then touch ASKED) or 20 s pass
  count DIR ID COUNTER N    N times: under ID's lock, read COUNTER, yield, write it + 1
  lease DIR NAME            print whether the lease NAME (60 s) was taken
  version DIR ID            print ID's version as this process sees it
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tusserver.locking.files import FileLocker


async def main(mode: str, directory: str, *args: str) -> None:
    locker = FileLocker(directory, timeout=10.0)
    await locker.start()
    try:
        if mode == "hold":
            name, ready, asked = args
            released = asyncio.Event()
            async with locker.lock(name, released.set):
                Path(ready).touch()
                try:
                    await asyncio.wait_for(released.wait(), 20)
                except asyncio.TimeoutError:
                    return
                Path(asked).touch()
        elif mode == "count":
            name, counter, times = args
            for _ in range(int(times)):
                async with locker.lock(name):
                    value = int(Path(counter).read_text() or 0)
                    await asyncio.sleep(0.001)  # others run meanwhile: only the lock keeps this whole
                    Path(counter).write_text(str(value + 1))
        elif mode == "lease":
            print(await locker.take_lease(args[0], 60))
        elif mode == "version":
            print(await locker.version(args[0]))
    finally:
        await locker.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
