"""Short soak (bench/soak.py, which runs 10,000 frames): the node over DDS and the offline replay
keep their memory, threads, file descriptors and shared memory bounded.

* node: 600 paced frames (ORB + nn, 160x120) into the node process; every frame processed, no
  drops, no errors; RSS slope after warm-up under a generous limit; OS threads and fds constant
  after warm-up; the node exits 0 on SIGINT and every Fast DDS segment it created is gone (as are
  this process' after its graph is closed); this process has no leftover threads.
* replay: a 1200-frame bag through ``replay_offline`` in a child process: every frame processed;
  ``len(frontend.buffer) <= buffer_size`` and ``len(frontend.tracks) <= (buffer_size + 1) *
  max_keypoints`` at every frame; RSS slope, threads (OS and Python) and fds stable.
* learned replay: 240 frames of XFeat + LighterGlue (packaged weights, 96x72, 64 keypoints; ~15 s)
  through the same replay soak: every frame processed, buffer / track bounds, RSS slope (a looser
  limit: the short run sits on the tail of the allocator's warm-up), threads and fds stable.
* the detectors themselves: a SIGKILLed node leaves its segments behind and ``leaked_shm`` sees
  them (then this test removes them); the slope fit recovers a known leak.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import rosgraph as rg  # noqa: F401  (isolated DDS graph for the node this file starts)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import soak  # noqa: E402

# Generous: a short run still carries allocator noise; a per-frame leak of a frame's pixels (19 KB mono
# at 160x120), of a keyframe's features or of the track table's entries is well above it.
MAX_SLOPE_KB_PER_1000 = 4096.0


def test_node_soak_short(tmp_path):
    fig = soak.run_node(600, sample_every=25, warmup=200, log_dir=tmp_path, progress=False)
    print("\n".join(fig.lines()))
    e = fig.extra
    assert e["received"] == e["processed"] == 600 and e["dropped_queue"] == 0 and e["rejected"] == 0
    assert e["errors"] == 0 and e["exit_code"] == 0 and e["matches_received"] == 600
    assert e["shm_created_by_node"] > 0, "the node should have created its Fast DDS segments"
    assert e["shm_leaked"] == [] and e["shm_leaked_graph"] == []
    assert fig.threads[0] == fig.threads[1] and fig.fds[1] - fig.fds[0] <= 2
    assert e["publisher_threads_after"] == e["publisher_threads_before"]
    assert len(fig.samples) >= 20
    assert soak.check(fig, MAX_SLOPE_KB_PER_1000) == []


def test_replay_soak_short(tmp_path):
    fig = soak.run_replay(1200, sample_every=40, warmup=400, work_dir=str(tmp_path), progress=False)
    print("\n".join(fig.lines()))
    e = fig.extra
    assert e["processed"] == 1200 and e["skipped"] == 0 and e["exit_code"] == 0
    assert e["buffer_bound"] == 5 and e["tracks_bound"] == 6 * soak.NODE_PARAMS["extractor.max_keypoints"]
    assert 1 <= e["max_buffer"] <= e["buffer_bound"] and 0 < e["max_tracks"] <= e["tracks_bound"]
    assert e["keyframes"] > 10, "keyframes are created (and dropped from the buffer) throughout"
    assert fig.py_threads[0] == fig.py_threads[1] and fig.threads[0] == fig.threads[1]
    assert fig.fds[1] - fig.fds[0] <= 2
    assert soak.check(fig, MAX_SLOPE_KB_PER_1000) == []


# Short learned run (96x72): RSS still creeps ~0.5 MiB over the 120 frames after warm-up (allocator);
# a leak of a frame's features (64 x 64 float descriptors, 16 KB) or matcher outputs is far above it.
MAX_SLOPE_LEARNED_KB_PER_1000 = 8192.0


def test_replay_soak_learned_short(tmp_path):
    fig = soak.run_replay(240, width=96, height=72, sample_every=8, warmup=120, work_dir=str(tmp_path),
                          progress=False, profile="xfeat_lighterglue", keypoints=64)
    print("\n".join(fig.lines()))
    e = fig.extra
    assert e["profile"] == "xfeat_lighterglue" and e["keypoints"] == 64
    assert e["processed"] == 240 and e["skipped"] == 0 and e["exit_code"] == 0
    assert e["buffer_bound"] == 5 and e["tracks_bound"] == 6 * 64
    assert 1 <= e["max_buffer"] <= e["buffer_bound"] and 0 < e["max_tracks"] <= e["tracks_bound"]
    assert e["keyframes"] > 5
    assert len(fig.samples) >= 25
    assert soak.check(fig, MAX_SLOPE_LEARNED_KB_PER_1000) == []


def test_leak_detectors_see_a_killed_node(tmp_path):
    """Negative control: SIGKILL gives Fast DDS no chance to clean up; the detector must see it."""
    before = set(os.listdir(soak.SHM))
    proc = rg.start_node(namespace="/t_soak_killed", params=soak.NODE_PARAMS, log_dir=tmp_path, label="killed")
    leaked: list[str] = []
    try:
        proc.wait_for_output("ready:", timeout=60.0)
        names: set[str] = set()
        rg.wait_until(lambda: names.update(soak.shm_mapped(proc.pid)) or
                      any(n.startswith("fastdds_") and n not in before for n in names), 10.0, "its segments")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10.0)
        time.sleep(0.5)
        leaked = soak.leaked_shm(names, before)
        assert leaked, "a SIGKILLed participant's segments are left behind and must be reported"
        assert all(n.startswith(("fastdds_", "sem.fastdds_")) and n not in before for n in leaked)
        leaked += soak.leaked_shm(names, before, mutexes=True)
    finally:
        proc.close()
        for name in leaked:  # ours: remove what the killed node could not
            try:
                (soak.SHM / name).unlink()
            except FileNotFoundError:
                pass


def test_slope_fit_recovers_a_known_leak():
    samples = [soak.Sample(frame=n, t=0.0, rss_kb=100_000 + 10 * n + (n % 7), threads=1, fds=3)
               for n in range(0, 3000, 50)]
    assert soak.slope_kb_per_1000(samples, warmup=500) == pytest.approx(10_000, rel=0.01)
    flat = [soak.Sample(frame=n, t=0.0, rss_kb=100_000 + (n % 7), threads=1, fds=3) for n in range(0, 3000, 50)]
    assert abs(soak.slope_kb_per_1000(flat, warmup=500)) < 50
    fig = soak.SoakFigures("replay", 3000, 500, samples=samples, extra={"exit_code": 0, "processed": 3000,
                                                                      "max_buffer": 1, "buffer_bound": 5,
                                                                      "max_tracks": 1, "tracks_bound": 5})
    problems = soak.check(fig.finish(), MAX_SLOPE_KB_PER_1000)
    assert len(problems) == 1 and "RSS grows" in problems[0]
