"""Fetch ahead: overlap object-storage reads with decoding.

Workers decode on every core; if each also waited for its video's bytes, the network's
latency would be added to every video. The parent instead fetches a few items ahead on
threads (network waits release the GIL) while the workers decode the ones already here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetched(items: Iterable[T], fetch: Callable[[T], T], lookahead: int = 8, threads: int = 8) -> Iterator[T]:
    """Yield fetch(item) for each item, in order, with up to `lookahead` fetches under way.

    `fetch` must not raise for an expected failure: it returns the item as it was, and the
    worker then meets the failure itself and reports it the usual way.
    """
    source = iter(items)
    with ThreadPoolExecutor(threads) as pool:
        queue = deque(pool.submit(fetch, item) for _, item in zip(range(lookahead), source))
        while queue:
            head = queue.popleft()
            for item in source:
                queue.append(pool.submit(fetch, item))
                break
            yield head.result()
