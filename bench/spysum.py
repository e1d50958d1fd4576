"""Sum py-spy's raw samples (`thread;frame;... count` lines) per thread, per frame (inclusive) and per leaf.

python -m bench.spysum OUT.raw [TOP]
"""

from __future__ import annotations

import collections
import sys


def main() -> int:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    inclusive: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            thread = frames[0].split(": ", 1)[-1]
            by_thread[thread] += n
            leaf[frames[-1]] += n
            for key in {f"{thread} | {frame}" for frame in frames[1:]}:
                inclusive[key] += n
    total = sum(by_thread.values()) or 1
    print("samples", total)
    tables = (("thread", by_thread, 12), ("inclusive", inclusive, top), ("leaf", leaf, 25))
    for name, counter, limit in tables:
        print(f"--- {name}")
        for key, n in counter.most_common(limit):
            print(f"{100 * n / total:5.1f}% {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
