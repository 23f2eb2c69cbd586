"""The one-frame pipeline (glue_ros/overlap.py): extraction ahead on its own thread gives the same
results as serial processing, each stage gets its own intra-op thread count, and bad frames are
still rejected (counted), not crashed on; the node's queue (FrameQueue) extracts one frame at a
time, never drops a frame whose extraction has started, and drops frames not yet extracted first.
The replay's and the node's use of it are tested in test_tools.py (byte-identical bags with and without) and test_node.py
(every node test runs with it)."""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from glue_ros.config import FrontEndConfig, PipelineConfig
from glue_ros.frontend import Frame, FrontEnd
from glue_ros.overlap import (ExtractionThread, FrameQueue, extracts_ahead, intra_op_threads, one_ahead,
                              stage_threads)
from glue_ros.synthetic import render_sequence


@pytest.mark.parametrize("cpu_threads, ahead, cores, expected", [
    (0, True, 2, (1, 1)),  # the 2-core case: one core per stage
    (0, True, 1, (1, 1)),  # never zero threads
    (0, True, 3, (2, 1)),  # extraction (the heavier CNN stage) gets the odd core
    (0, True, 16, (8, 8)),
    (0, False, 4, (4, 4)),  # serial: every core for each step in turn
    (3, True, 16, (3, 3)),  # explicit: that many per stage
    (3, False, 2, (3, 3)),
])
def test_stage_threads_policy(cpu_threads, ahead, cores, expected):
    assert stage_threads(ahead, cpu_threads, cores) == expected


@pytest.mark.parametrize("setting, device, keypoints, cores, expected", [
    ("on", "cpu", 2048, 2, True), ("off", "cuda", 256, 16, False),  # as given
    ("auto", "cpu", 512, 2, True), ("auto", "cpu", 1024, 2, False),  # 2 cores: matching needs both at 1024+
    ("auto", "cpu", -1, 2, False), ("auto", "cpu", 1024, 4, True), ("auto", "cuda", 4096, 2, True),
])
def test_extract_ahead_decision(setting, device, keypoints, cores, expected):
    config = PipelineConfig(extract_ahead=setting)
    assert extracts_ahead(config, torch.device(device), keypoints, cores) is expected


def test_intra_op_threads_is_scoped():
    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _xfeat(**params) -> FrontEnd:
    flat = {"extractor.type": "xfeat", "matcher.type": "lightglue", "extractor.max_keypoints": 256,
            "device": "cpu", "keyframes.max_interval_s": 0.1, **params}
    return FrontEnd(FrontEndConfig.from_flat(flat))


def _summary(result):
    return (result.status, result.keyframe.is_keyframe, result.keypoints.tobytes(), result.track_ids.tobytes(),
            [(m.keyframe_id, m.matches.tobytes(), m.pose.valid, m.pose.rotation.round(9).tobytes(), m.stop_layer)
             for m in result.matches])


def test_extracting_ahead_gives_the_serial_results_with_real_weights():
    """XFeat + LighterGlue (packaged weights): frame t+1 extracted on the extraction thread while frame t is
    matched (``one_ahead``, the replay's loop), against plain FrontEnd.process; same thread count both ways."""
    seq = render_sequence(10, 320, 240, motion="mixed", seed=7)
    frames = [Frame(im, st, "cam", seq.camera) for im, st in zip(seq.images, seq.stamps_ns)]
    serial_frontend = _xfeat()
    with intra_op_threads(1):
        serial = [serial_frontend.process(f) for f in frames]
        frontend = _xfeat()
        ahead = []
        with ExtractionThread(frontend, threads=1) as worker:
            assert worker.submit(torch.get_num_threads).result() == 1, "the stage's own thread count"
            for frame, extraction in one_ahead(worker, frames):  # frame t+1 extracts while t is matched
                extracted = extraction.result()
                ahead.append(frontend.process(frame, extracted.features, extract_ms=extracted.extract_ms))
    assert sum(len(r.matches[0]) for r in serial[1:]) > 9 * 30, "a real sequence, not empty matches"
    assert [_summary(r) for r in ahead] == [_summary(r) for r in serial]
    assert all(r.timings_ms["extract_ms"] > 0 for r in ahead)
    assert frontend.stats.images_extracted == len(frames) and frontend.stats.frames == len(frames)


def test_extracting_ahead_rejects_bad_frames_like_serial():
    frontend = _xfeat()
    bad = [np.zeros((8, 8), np.uint8), np.full((64, 64), np.nan, np.float32), "not an image"]
    with ExtractionThread(frontend, threads=1) as worker:
        for n, image in enumerate(bad):
            extracted = worker.extract(Frame(image, n + 1, "cam")).result()
            assert extracted.features is None
            result = frontend.process(Frame(image, n + 1, "cam"), extracted.features)
            assert result.status in ("image_too_small", "invalid_image") and not result.matches
    assert frontend.stats.images_extracted == 0 and sum(frontend.stats.rejected.values()) == len(bad)


class GatedStage:
    """A one-thread extraction stage whose jobs end when the test opens their gate, so the queue's
    scheduling decisions can be checked one step at a time."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1)
        self.started: list[int] = []
        self.gates: dict[int, threading.Event] = collections.defaultdict(threading.Event)

    def __call__(self, item: int):
        return self.pool.submit(self._run, item)

    def _run(self, item: int) -> int:
        self.started.append(item)
        assert self.gates[item].wait(10), f"gate {item} never opened"
        return item * 10


@pytest.fixture
def stage():
    stage = GatedStage()
    yield stage
    for gate in stage.gates.values():  # a failed assertion must not leave the pool's thread waiting
        gate.set()
    stage.pool.shutdown()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_frame_queue_extracts_one_frame_ahead_and_never_wastes_an_extraction(stage):
    lock = threading.Condition()
    queue = FrameQueue(1, lock, stage)
    with lock:
        assert queue.put(0) is None
    wait_until(lambda: stage.started == [0])  # a free extraction thread starts at once
    with lock:
        assert queue.put(1) is None  # frame 0 is being extracted: it does not count as waiting
        assert queue.put(2) == 1  # full: the frame not yet extracted goes, fresher frame waits
        assert len(queue) == 2
    stage.gates[0].set()
    wait_until(lambda: stage.started == [0, 2])  # the thread takes the next frame when it is free
    with lock:
        taken = queue.take()
    assert taken.item == 0 and taken.extraction.result(10) == 0
    with lock:
        assert queue.put(3) is None  # 2 is running: not counted
    stage.gates[2].set()
    wait_until(lambda: stage.started == [0, 2, 3])
    with lock:
        assert queue.put(4) == 4  # 2 (extracted) and 3 (running) keep their work: the newcomer goes
        assert [w.item for w in (queue.take(), queue.take())] == [2, 3]  # arrival order
        assert queue.take() is None
        assert queue.put(5) is None  # 3 is running: not counted
    stage.gates[3].set()
    wait_until(lambda: stage.started == [0, 2, 3, 5])  # 3 done: the next waiting frame starts
    stage.gates[5].set()
    with lock:
        taken = queue.take()
    assert taken.item == 5 and taken.extraction.result(10) == 50
    assert 1 not in stage.started and 4 not in stage.started  # dropped before extraction: none spent


def test_frame_queue_drops_an_unextracted_frame_before_an_extracted_one(stage):
    lock = threading.Condition()
    queue = FrameQueue(2, lock, stage)
    with lock:
        assert [queue.put(i) for i in range(3)] == [None, None, None]  # 0 running, 1 and 2 wait
    stage.gates[0].set()
    wait_until(lambda: stage.started == [0, 1])
    with lock:  # waiting: 0 (extracted), 2 (not started); 1 is running
        assert queue.put(3) == 2
        assert [queue.take().item for _ in range(2)] == [0, 1]
    stage.gates[1].set()
    wait_until(lambda: stage.started == [0, 1, 3])
    stage.gates[3].set()


def test_closed_frame_queue_starts_no_extraction(stage):
    lock = threading.Condition()
    queue = FrameQueue(1, lock, stage)
    with lock:
        queue.put(0)
        queue.put(1)
        queue.close()  # the node closes its queue before shutting the extraction thread down
    stage.gates[0].set()
    stage.pool.shutdown(wait=True)  # a submit from 0's completion would raise in its done callback
    assert stage.started == [0]
    with lock:
        assert [queue.take().item, queue.take().item] == [0, 1]


def test_frame_queue_without_extraction_drops_the_oldest():
    queue = FrameQueue(2, threading.Condition())
    assert [queue.put(i) for i in range(4)] == [None, None, 0, 1]
    taken = [queue.take() for _ in range(3)]
    assert [t.item for t in taken[:2]] == [2, 3] and taken[2] is None
    assert all(t.extraction is None for t in taken[:2])
