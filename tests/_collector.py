"""Collecting a test's garbage without paying for the whole process' heap.

With every vendor SDK imported (litellm alone brings hundreds of thousands of objects) one full
``gc.collect()`` in the test process takes ~0.3 s; a test that collects and lets the loop finalize
until nothing new turns up paid ~10 s for it. ``block_collected`` freezes what existed before the
block (``gc.freeze``), so the rounds inside it scan the block's own objects only, then collects the
whole heap once more at the end, so nothing of the block that only an older object's cycle held is
missed.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator

import anyio.lowlevel


async def _rounds(found: Callable[[], int], *, at_least: int, quiet: int, checkpoints: int) -> None:
    """Collect and let the loop run finalizers until ``quiet`` rounds in a row add nothing to ``found()``
    (after ``at_least`` rounds). A finalized generator's ``aclose`` runs a few checkpoints after the
    collector hands it over, and may free others: hence rounds, not one collection."""
    done = still = 0
    while done < at_least or still < quiet:
        seen = found()
        gc.collect()
        for _ in range(checkpoints):
            await anyio.lowlevel.checkpoint()
        done += 1
        still = still + 1 if found() == seen else 0


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Inside the block, a collection scans only what was made in it: the heap is collected, then frozen."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.asynccontextmanager
async def block_collected(found: Callable[[], int], *, at_least: int = 3) -> AsyncIterator[None]:
    """At the block's end, everything the block left to the collector has been collected and finalized.

    ``found()`` counts what the caller records (the generators handed to the finalizer, the warnings
    caught). Earlier tests' garbage is collected before the block, so it is not counted in it.
    """
    with heap_frozen():
        yield
        await _rounds(found, at_least=at_least, quiet=3, checkpoints=1)  # the block's objects only: cheap
    await _rounds(found, at_least=1, quiet=1, checkpoints=3)  # the whole heap, once if nothing new
