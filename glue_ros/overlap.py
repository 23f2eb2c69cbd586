"""The one-frame pipeline: frame t+1's features are extracted on a thread of their own while frame t is
matched.

    frame t+1 ─► extraction thread ─► features ─┐
    frame t (features ready) ─► FrontEnd.process: match vs keyframes ─► pose ─► tracks ─► keyframe decision

Matching frame t needs the keyframe decision of frame t-1, so matching stays in order on the caller's
thread; extraction depends on the frame alone, so it can run ahead. The calls and their inputs are
those of serial processing, so the results are too (with the same ``pipeline.cpu_threads``). On a
CPU the two stages share the cores: each stage gets its own intra-op thread count
(:func:`stage_threads`), since two stages both using every core make OpenMP threads spin against each
other. PyTorch releases the GIL inside operators, so the stages really overlap.
"""
from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Iterable, Iterator, TypeVar

import torch

from .config import PipelineConfig
from .features import Features

if TYPE_CHECKING:
    from .frontend import Frame, FrontEnd

T = TypeVar("T")

AUTO_MAX_KEYPOINTS = 512  # pipeline.extract_ahead: auto extracts ahead on a 2-3 core CPU up to this many


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def extracts_ahead(config: PipelineConfig, device: torch.device, max_keypoints: int,
                   cores: int | None = None) -> bool:
    """Whether to run extraction ahead: ``on`` / ``off`` as given; ``auto`` = on with CUDA (the stages'
    host work overlaps), with 4+ CPU cores, or at up to ``AUTO_MAX_KEYPOINTS`` keypoints. On a 2-core CPU
    at 1024+ keypoints LightGlue's matching dominates and needs both cores: serial was faster there
    (XFeat + LighterGlue replay: 7.9 vs 6.3-6.6 frames/s at 1024, 2.7 vs 1.8-2.5 at 2048; ahead 12.5 vs
    10.9 at 512)."""
    if config.extract_ahead != "auto":
        return config.extract_ahead == "on"
    if device.type == "cuda" or (cores or usable_cores()) >= 4:
        return True
    return 0 < max_keypoints <= AUTO_MAX_KEYPOINTS


def stage_threads(ahead: bool, cpu_threads: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(extraction, matching) intra-op threads: ``cpu_threads`` each when set; else every core for
    serial processing, or the cores split in two (at least one each) when extracting ahead."""
    cores = cores or usable_cores()
    if cpu_threads > 0:
        return cpu_threads, cpu_threads
    if not ahead:
        return cores, cores
    matching = max(1, cores // 2)
    return max(1, cores - matching), matching


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Within the block, torch operators called from this thread use ``threads`` threads; the previous
    count is restored after (a library call must not change its caller's settings)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Extracted:
    """What the extraction stage hands to the matching stage for one frame."""

    features: Features | None  # None: the frame is invalid (FrontEnd.process rejects it, counted)
    extract_ms: float


class ExtractionThread:
    """One worker thread that runs extractions in submission order (bounded by its callers: the replay
    keeps one frame ahead, the node's FrameQueue runs one at a time). Use as a context manager, or
    ``close()``."""

    def __init__(self, frontend: "FrontEnd", threads: int):
        self._frontend = frontend
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="glue_ros_extract",
                                        initializer=torch.set_num_threads, initargs=(threads,))

    def extract(self, frame: "Frame") -> Future[Extracted]:
        """Start extracting ``frame``'s features; the future raises what extraction raised (e.g. out of
        memory), for the caller to handle as it would a serial extraction."""
        return self._pool.submit(self._extract, frame)

    def submit(self, fn: Callable[..., T], *args) -> Future[T]:
        """Run ``fn(*args)`` on the extraction thread (adapters prepend their decoding to extraction)."""
        return self._pool.submit(fn, *args)

    def extract_now(self, frame: "Frame") -> Extracted:
        """Extract on the calling thread (called from a job that ``submit`` runs on the extraction thread)."""
        return self._extract(frame)

    def _extract(self, frame: "Frame") -> Extracted:
        from .frontend import image_problem

        if image_problem(frame.image):
            return Extracted(None, 0.0)
        start = time.perf_counter()
        features = self._frontend.extract([frame.image])[0]
        return Extracted(features, (time.perf_counter() - start) * 1e3)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ExtractionThread":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def one_ahead(worker: ExtractionThread, frames: Iterable["Frame"]) -> Iterator[tuple["Frame", Future[Extracted]]]:
    """Each frame with its extraction, yielded once the next frame's extraction has started: the caller
    matches frame t while frame t+1 is extracted. ``frames`` is consumed one frame ahead of what is
    yielded (the replay prepares, counts and writes the next input then)."""
    held = None
    for frame in frames:
        extraction = worker.extract(frame)
        if held is not None:
            yield held
        held = (frame, extraction)
    if held is not None:
        yield held


@dataclass
class Waiting(Generic[T]):
    """A frame in a :class:`FrameQueue`: the adapter's item and its extraction once started."""

    item: T
    extraction: Future | None = None


class FrameQueue(Generic[T]):
    """The node's input queue with extraction ahead: frames wait for the matching stage while at most
    one extraction runs, on the oldest waiting frame not yet extracted, started as soon as the
    extraction thread is free (so the next frame is usually extracted before the matching stage asks).

    ``size`` frames may wait, not counting the one being extracted. When full, a newcomer replaces
    the oldest frame not yet extracted; a frame whose extraction has started (running or done) is
    never dropped — if only such frames wait, the newcomer is. Extraction work is never thrown away:
    extracting every arrival at once queued the next frame behind frames the queue then dropped (the
    node processed half the frames at 15 Hz), and replacing extracted frames by fresher ones wasted
    extractions whenever frames came faster than extraction (8.7 instead of 12.6 frames/s at 30 Hz;
    bench_node.py). Without ``extract`` it is a plain drop-oldest queue.

    Not locked by itself: callers hold ``lock`` (a ``threading.Condition`` over its default RLock)
    around every call; the extraction-done callback takes it too and notifies it."""

    def __init__(self, size: int, lock: threading.Condition, extract: Callable[[T], Future] | None = None):
        self._size = size
        self._lock = lock
        self._extract = extract
        self._waiting: collections.deque[Waiting[T]] = collections.deque()
        self._running: Future | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, item: T) -> T | None:
        """Add a newly arrived frame; returns the frame dropped (an older one, or ``item`` itself), if
        any, for the caller to count."""
        dropped = None
        counted = [w for w in self._waiting if w.extraction is None or w.extraction is not self._running]
        if len(counted) >= self._size:
            victim = next((w for w in counted if w.extraction is None), None)
            if victim is None:
                return item
            self._waiting.remove(victim)
            dropped = victim.item
        self._waiting.append(Waiting(item))
        self._extract_next()
        return dropped

    def take(self) -> Waiting[T] | None:
        """The oldest waiting frame (its ``extraction`` may still run: wait on it), or None."""
        if not self._waiting:
            return None
        self._extract_next()  # the head may not have started while the thread was busy
        taken = self._waiting.popleft()
        self._extract_next()  # the next frame is extracted while this one is matched
        return taken

    def close(self) -> None:
        """Start no more extractions (before the extraction thread shuts down: a running job's
        completion must not submit another)."""
        self._extract = None

    def _extract_next(self) -> None:
        if self._extract is None or (self._running is not None and not self._running.done()):
            return
        entry = next((w for w in self._waiting if w.extraction is None), None)
        if entry is not None:
            self._running = entry.extraction = self._extract(entry.item)
            entry.extraction.add_done_callback(self._extraction_done)

    def _extraction_done(self, future: Future) -> None:
        with self._lock:
            if self._running is future:
                self._running = None
            self._extract_next()
            self._lock.notify_all()
