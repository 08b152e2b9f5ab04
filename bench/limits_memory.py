"""What a rate-limited request costs in the limits' memory storage, the library's own
beside ours (`PrunedMemoryStorage`, its clean-up at most once a second), as the number of
users with a moving window grows. The library starts its clean-up (a task, and a trip to
a worker thread for every window) at every hit once the previous one has ended.

Printed: CPU ms per request (the whole process, every thread), requests 1 ms apart, each
a hit on one user's `60/minute` window.

    .venv/bin/python -m bench.limits_memory [--hits 2000] [--users 1,100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from backend.common.settings import parse_limit
from backend.services.limits import PrunedMemoryStorage


async def per_request(storage: MemoryStorage, users: int, hits: int) -> float:
    window, item = MovingWindowRateLimiter(storage), parse_limit("60/minute")
    for user in range(users):
        await window.hit(item, "requests", str(user))
    started = time.process_time()
    for i in range(hits):
        await window.hit(item, "requests", str(i % users))
        await asyncio.sleep(0.001)  # the next request
    return (time.process_time() - started) / hits * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--users", default="1,100,1000")
    args = parser.parse_args()
    print("users | CPU ms per request: library's storage | ours (cleaned up once a second)")
    for users in (int(u) for u in args.users.split(",")):
        library = asyncio.run(per_request(MemoryStorage(), users, args.hits))
        ours = asyncio.run(per_request(PrunedMemoryStorage(), users, args.hits))
        print(f"{users:>5} | {library:.3f} | {ours:.3f}")


if __name__ == "__main__":
    main()
