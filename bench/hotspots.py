"""Summarise a py-spy raw profile (`bench/run.py --profile DIR` writes DIR/ours-<store>.txt).

    python bench/hotspots.py DIR/ours-file.txt [--top 25] [--under tusserver]

Prints the functions with the most samples on top of the stack (self) and anywhere on
it (total), as shares of all samples of the event loop's thread and of the rest.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE = re.compile(r"\s*\(([^)]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`write (aiohttp/streams.py:123)` -> `write (aiohttp/streams.py)`: one row per function."""
    return _LINE.sub(lambda m: f" ({_short(m.group(1))})", frame)


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/", "/tmp/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def summarise(path: str, top: int, under: str | None) -> str:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [frame_name(fr) for fr in stack.split(";") if fr] or ["(no Python frame)"]
            samples += n
            self_time[frames[-1]] += n
            for name in set(frames):
                total_time[name] += n
    lines = [f"{samples} samples in {path}", "", "self %  function"]
    lines += [f"{100 * n / samples:5.1f}  {name}" for name, n in self_time.most_common(top)]
    lines += ["", "total %  function" + (f" (only {under})" if under else "")]
    chosen = [(name, n) for name, n in total_time.most_common() if under is None or under in name]
    lines += [f"{100 * n / samples:6.1f}  {name}" for name, n in chosen[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", help="only functions whose name or file contains this, in the totals")
    args = parser.parse_args()
    print(summarise(args.profile, args.top, args.under))


if __name__ == "__main__":
    main()
