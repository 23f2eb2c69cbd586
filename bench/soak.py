#!/usr/bin/env python
"""Soak: many frames through the node (over DDS) and through the offline replay; nothing grows.

Two modes, each on CPU with the classical backend (ORB + nn; --profile NAME runs any shipped
profile instead, e.g. xfeat_lighterglue with its packaged weights) at a small resolution (default
160x120) so 10,000 frames take minutes:

* ``node``: the matcher node in its own process (``python -m glue_ros.ros.node``); this process
  publishes N frames of a short rendered sequence played ping-pong (0..K-1, K-2..1, 0..: the motion
  stays continuous, no visual jumps) with increasing wall-clock stamps and CameraInfo. ``paced``
  (default) publishes a frame when the previous one's ~/matches arrived (nothing may be dropped:
  received = processed = N is checked); ``free`` publishes at --rate Hz open loop (drops are
  counted by the node: received = processed + dropped + rejected is checked).
* ``replay``: a rosbag2 (mcap) of N frames, made by cycling the same ping-pong sequence with
  increasing stamps (cheap to generate), replayed by ``glue_ros.tools.replay.replay_offline`` in
  a child process that samples itself.

Sampled every --sample-every frames: resident memory (VmRSS) of the node process / the replay
process; OS threads (/proc/<pid>/status Threads) and, for the replay, Python threads
(threading.active_count); open file descriptors (/proc/<pid>/fd); Fast DDS shared-memory segments
mapped by the node (/dev/shm, from /proc/<pid>/maps); in the replay, len(frontend.buffer) and
len(frontend.tracks) at *every* frame (bounds: buffer_size and (buffer_size + 1) * max_keypoints).

Reported per mode: RSS at the first sample after warm-up and at the end, the least-squares RSS
slope after warm-up (KB per 1000 frames), thread / fd counts (after warm-up: min..max), frames/s,
and after the node exits (SIGINT, exit code 0): the shared-memory segments it had mapped that are
still in /dev/shm and no live process maps (leaked). ``check()`` turns the figures into pass/fail
(test/test_soak.py runs a short version with these checks).

    python bench/soak.py                          # both modes, 10,000 frames each
    python bench/soak.py --modes node --frames 2000 --pace free --rate 200
    python bench/soak.py --json out/soak.json
    python bench/soak.py --modes replay --profile xfeat_lighterglue --keypoints 256   # a learned backend
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "test")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

SHM = Path("/dev/shm")
PERIOD_NS = 33_333_333  # 30 Hz stamps
NODE_PARAMS = {"device": "cpu", "extractor.type": "orb", "matcher.type": "nn", "extractor.max_keypoints": 200,
               "keyframes.buffer_size": 5, "keyframes.match_against": 2, "keyframes.min_matches": 40,
               "diagnostics.period_s": 1.0}
DEFAULT_PROFILE = "orb_nn"  # NODE_PARAMS' backend
CLASSICAL = ("orb", "sift")


def soak_params(profile: str = DEFAULT_PROFILE, keypoints: int | None = None) -> dict:
    """NODE_PARAMS with the profile's parameters (its backend) and ``keypoints`` on top; ParameterError
    for an unknown profile or bad value."""
    from glue_ros.config import load_params_file, profile_path, validate

    params = dict(NODE_PARAMS)
    params.update(load_params_file(profile_path(profile)))
    if keypoints is not None:
        params["extractor.max_keypoints"] = keypoints
    validate(params)
    return params


# =============================================================================== /proc probes


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS (KiB) and Threads of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def shm_mapped(pid: int | str = "self") -> set[str]:
    """Names of the /dev/shm files a process maps (Fast DDS segments) or holds open (lock files)."""
    names = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
            if path.startswith("/dev/shm/"):
                names.add(path[len("/dev/shm/"):].replace(" (deleted)", ""))
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/shm/"):
                names.add(target[len("/dev/shm/"):].replace(" (deleted)", ""))
    except OSError:
        pass
    return names


def shm_in_use() -> set[str]:
    """/dev/shm names mapped or held open by any live process we can inspect."""
    used: set[str] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            used |= shm_mapped(entry)
    return used


def leaked_shm(names: set[str], existed_before: set[str], mutexes: bool = False) -> list[str]:
    """Fast DDS segments among ``names`` (with their ``_el`` lock files) that were created after
    ``existed_before`` was listed and are still in /dev/shm although no live process uses them. (A
    segment that existed before — e.g. a shared port left by someone else's killed process — is not
    ours to clean.) ``mutexes``: the ports' named semaphores (``sem.fastdds_port<N>_mutex``) instead:
    Fast DDS sometimes leaves the mutex of a port shared by several participants (the 70xx ports)
    after the port itself is gone; reported separately, not counted as a leak."""
    names = {n for n in names if n.startswith("fastdds_")}
    if mutexes:
        candidates = {f"sem.{n}_mutex" for n in names if n.startswith("fastdds_port") and not n.endswith("_el")}
    else:
        candidates = names | {n + "_el" for n in names if not n.endswith("_el")}
    existing = {n for n in candidates - existed_before if (SHM / n).exists()}
    return sorted(existing - shm_in_use())


def slope_kb_per_1000(samples: list["Sample"], warmup: int) -> float:
    """Least-squares slope of RSS over frames after ``warmup`` frames, in KB per 1000 frames."""
    points = [(s.frame, s.rss_kb) for s in samples if s.frame >= warmup]
    if len(points) < 3:
        return float("nan")
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 1000.0)


# =============================================================================== figures


@dataclass
class Sample:
    frame: int
    t: float
    rss_kb: int
    threads: int  # OS threads
    fds: int
    py_threads: int = -1  # threading.active_count (replay: in the process itself)
    shm: int = -1  # /dev/shm segments mapped (node)


@dataclass
class SoakFigures:
    mode: str
    frames: int
    warmup: int
    seconds: float = 0.0
    frames_per_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    rss_start_kb: int = 0  # first sample after warm-up
    rss_end_kb: int = 0
    rss_peak_kb: int = 0
    rss_slope_kb_per_1000: float = 0.0
    threads: tuple[int, int] = (0, 0)  # min, max after warm-up
    fds: tuple[int, int] = (0, 0)
    py_threads: tuple[int, int] = (-1, -1)
    extra: dict = field(default_factory=dict)

    def finish(self) -> "SoakFigures":
        after = [s for s in self.samples if s.frame >= self.warmup] or self.samples
        self.rss_start_kb, self.rss_end_kb = after[0].rss_kb, self.samples[-1].rss_kb
        self.rss_peak_kb = max(s.rss_kb for s in self.samples)
        self.rss_slope_kb_per_1000 = slope_kb_per_1000(self.samples, self.warmup)
        self.threads = (min(s.threads for s in after), max(s.threads for s in after))
        self.fds = (min(s.fds for s in after), max(s.fds for s in after))
        self.py_threads = (min(s.py_threads for s in after), max(s.py_threads for s in after))
        return self

    def lines(self) -> list[str]:
        e = self.extra
        backend = f", {e['profile']} at {e['keypoints']} keypoints" if "profile" in e else ""
        out = [f"[{self.mode}] {self.frames} frames in {self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s)"
               + backend,
               f"  RSS after warm-up ({self.warmup} frames) {self.rss_start_kb / 1024:.1f} MiB -> end "
               f"{self.rss_end_kb / 1024:.1f} MiB (peak {self.rss_peak_kb / 1024:.1f} MiB), slope "
               f"{self.rss_slope_kb_per_1000:+.1f} KB / 1000 frames",
               f"  OS threads {self.threads[0]}..{self.threads[1]}, open fds {self.fds[0]}..{self.fds[1]}"
               + (f", Python threads {self.py_threads[0]}..{self.py_threads[1]}" if self.py_threads[0] >= 0 else "")]
        if self.mode == "node":
            out.append(f"  node: received {e.get('received')} processed {e.get('processed')} dropped "
                       f"{e.get('dropped_queue')} rejected {e.get('rejected')} errors {e.get('errors')}, "
                       f"exit code {e.get('exit_code')}")
            out.append(f"  shared memory: {e.get('shm_mapped_max')} /dev/shm files mapped by the node "
                       f"({e.get('shm_created_by_node')} Fast DDS segments created during the run); after its exit "
                       f"leaked {e.get('shm_leaked')}; this process after closing its graph: leaked "
                       f"{e.get('shm_leaked_graph')}; port mutexes left {e.get('shm_mutexes_left')}")
            out.append(f"  publisher process: RSS {e.get('publisher_rss_start_kb', 0) / 1024:.1f} -> "
                       f"{e.get('publisher_rss_end_kb', 0) / 1024:.1f} MiB, Python threads "
                       f"{e.get('publisher_threads_before')} before / {e.get('publisher_threads_after')} after")
        else:
            out.append(f"  pipeline: processed {e.get('processed')}, keyframes {e.get('keyframes')}, resets "
                       f"{e.get('resets')}; max len(buffer) {e.get('max_buffer')} (<= {e.get('buffer_bound')}), "
                       f"max len(tracks) {e.get('max_tracks')} (<= {e.get('tracks_bound')})")
            out.append(f"  bag: {e.get('bag_mib', 0):.0f} MiB in, generated in {e.get('generate_s', 0):.1f} s; "
                       f"output {e.get('output_mib', 0):.0f} MiB; exit code {e.get('exit_code')}")
        return out


def check(fig: SoakFigures, max_slope_kb_per_1000: float) -> list[str]:
    """What is wrong with a soak's figures (empty: nothing)."""
    problems = []
    e = fig.extra
    if not fig.rss_slope_kb_per_1000 <= max_slope_kb_per_1000:
        problems.append(f"RSS grows {fig.rss_slope_kb_per_1000:.0f} KB / 1000 frames (> {max_slope_kb_per_1000})")
    if fig.threads[1] != fig.threads[0]:
        problems.append(f"OS threads vary after warm-up: {fig.threads}")
    if fig.fds[1] - fig.fds[0] > 2:
        problems.append(f"open file descriptors vary after warm-up: {fig.fds}")
    if fig.py_threads[1] != fig.py_threads[0]:
        problems.append(f"Python threads vary after warm-up: {fig.py_threads}")
    if e.get("exit_code") != 0:
        problems.append(f"exit code {e.get('exit_code')}")
    if fig.mode == "node":
        if e.get("errors"):
            problems.append(f"{e['errors']} errors")
        accounted = e.get("processed", 0) + e.get("dropped_queue", 0) + e.get("rejected", 0)
        if e.get("received") != accounted:
            problems.append(f"received {e.get('received')} != processed + dropped + rejected {accounted}")
        if e.get("pace") == "paced" and not e.get("received") == e.get("processed") == fig.frames:
            problems.append(f"paced: received {e.get('received')} processed {e.get('processed')} of {fig.frames}")
        if e.get("shm_leaked") or e.get("shm_leaked_graph"):
            problems.append(f"shared memory leaked: {e.get('shm_leaked')} {e.get('shm_leaked_graph')}")
        if e.get("publisher_threads_after") != e.get("publisher_threads_before"):
            problems.append(f"publisher threads {e.get('publisher_threads_before')} -> "
                            f"{e.get('publisher_threads_after')}")
    else:
        if e.get("processed") != fig.frames:
            problems.append(f"processed {e.get('processed')} of {fig.frames}")
        if e.get("max_buffer", 0) > e.get("buffer_bound", 0):
            problems.append(f"keyframe buffer {e['max_buffer']} > {e['buffer_bound']}")
        if e.get("max_tracks", 0) > e.get("tracks_bound", 0):
            problems.append(f"track table {e['max_tracks']} > {e['tracks_bound']}")
    return problems


# =============================================================================== frames


def pingpong(count: int, unique: int) -> list[int]:
    """Indices 0..unique-1, unique-2..1, 0.. (continuous motion) for ``count`` frames."""
    cycle = list(range(unique)) + list(range(unique - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(count)]


def render(unique: int, width: int, height: int):
    from glue_ros.synthetic import render_sequence

    return render_sequence(unique, width, height, motion="sideways", speed=1.0, seed=4)


# =============================================================================== node mode


class _Last:
    """A lightweight recorder: the count and last stamp of a topic (never keeps the messages)."""

    def __init__(self, graph, topic: str, msg_type, on_message=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.graph, self.count, self.last_stamp, self.value = graph, 0, None, None
        self.updates = 0  # messages on_message made a value of
        self._on_message = on_message

        def record(msg):
            value = on_message(msg) if on_message else None
            with graph.lock:
                self.count += 1
                self.last_stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec \
                    if hasattr(msg, "header") else None
                if value is not None:
                    self.value = value
                    self.updates += 1
                graph.lock.notify_all()

        self.subscription = graph.node.create_subscription(
            msg_type, topic, record, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))


def _settled(graph, diagnostics: _Last, timeout: float = 15.0) -> dict:
    """The node's diagnostics once nothing is pending and two fresh reports agree on the input count."""
    seen: list[tuple[int, int]] = []

    def idle():
        d = diagnostics.value
        if d is None or int(d["frames_pending"]) or (seen and diagnostics.updates == seen[-1][0]):
            return None
        seen.append((diagnostics.updates, int(d["frames_received"])))
        return d if len(seen) >= 2 and seen[-1][1] == seen[-2][1] else None

    return graph.wait_for(idle, timeout, "settled diagnostics of the node")


def run_node(frames: int, *, width: int = 160, height: int = 120, unique: int = 60, pace: str = "paced",
             rate: float = 100.0, sample_every: int = 100, warmup: int | None = None, log_dir: str | None = None,
             progress: bool = True, profile: str = DEFAULT_PROFILE, keypoints: int | None = None) -> SoakFigures:
    import rosgraph as rg  # sets the isolated DDS environment before rclpy is initialised

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2

    from glue_ros.ros.diagnostics import decode_diagnostics

    warmup = warmup if warmup is not None else min(max(frames // 5, 100), 1000)
    params = soak_params(profile, keypoints)
    fig = SoakFigures("node", frames, warmup, extra={"pace": pace, "profile": profile,
                                                     "keypoints": params["extractor.max_keypoints"]})
    seq = render(unique, width, height)
    order = pingpong(frames, unique)
    images = [rg.image_msg(image, 0) for image in seq.images]  # built once; only the stamp changes
    infos = [rg.camera_info_msg(seq.camera, 0) for _ in seq.images]
    threads_before = threading.active_count()
    shm_names: set[str] = set()
    shm_max = 0
    namespace = f"/soak_{os.getpid()}"
    fqn = f"{namespace}/glue_ros_matcher"
    existed_before = set(os.listdir(SHM))
    graph = rg.Graph("soak")
    proc = None
    try:
        proc = rg.start_node(namespace=namespace, params=params, log_dir=log_dir, label="soak_node")

        def node_report(msg):
            for report in decode_diagnostics(msg):
                if report.name.startswith(fqn + ":"):
                    return dict(report.values)
            return None

        matches = _Last(graph, f"{fqn}/matches", PointCloud2)
        diagnostics = _Last(graph, "/diagnostics", DiagnosticArray, node_report)
        topics = rg.MatcherTopics.__new__(rg.MatcherTopics)  # only the publishers (no recorders)
        topics.graph = graph
        topics.image_pub = graph.publisher(f"{namespace}/image", type(images[0]))
        topics.info_pub = graph.publisher(f"{namespace}/camera_info", type(infos[0]))
        graph.wait_for_subscribers(topics.image_pub, 90.0, proc)
        graph.wait_for_subscribers(topics.info_pub, 90.0, proc)
        rg.wait_until(lambda: graph.node.count_publishers(f"{fqn}/matches") > 0, 30.0, "the node's ~/matches")
        publisher_rss_start = proc_status()["VmRSS"]

        def sample(n: int) -> None:
            nonlocal shm_max
            status = proc_status(proc.pid)
            mapped = shm_mapped(proc.pid)
            shm_names.update(mapped)
            shm_max = max(shm_max, len(mapped))
            fig.samples.append(Sample(n, time.monotonic() - start, status["VmRSS"], status["Threads"],
                                      fd_count(proc.pid), shm=len(mapped)))
            if progress and n % (sample_every * 10) == 0:
                print(f"  node {n}/{frames}: RSS {status['VmRSS'] / 1024:.1f} MiB, threads {status['Threads']}, "
                      f"fds {fig.samples[-1].fds}, shm {len(mapped)}", file=sys.stderr, flush=True)

        # Handshake: discovery is done when a frame's output arrives (the node's writer may match our
        # reader after both show up in the graph; a best-effort first frame may be lost). Counters are
        # taken as deltas from a settled report after it.
        stamp = max(time.time_ns(), 1)
        deadline = time.monotonic() + 60.0
        while True:
            stamp = max(stamp + 1_000_000, time.time_ns())
            sec, nanosec = divmod(stamp, 1_000_000_000)
            for msg in (infos[0], images[0]):
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
            topics.info_pub.publish(infos[0])
            topics.image_pub.publish(images[0])
            try:
                graph.wait_for(lambda: matches.last_stamp == stamp, 1.0, "handshake")
                break
            except AssertionError:
                if time.monotonic() > deadline or not proc.alive():
                    raise AssertionError("no output from the node within 60 s:\n" + proc.output()[-3000:]) from None
        baseline = _settled(graph, diagnostics)
        matches_before = matches.count
        start = time.monotonic()
        next_due = start
        for n, index in enumerate(order):
            if n % sample_every == 0:
                sample(n)
            stamp = max(stamp + 1_000_000, time.time_ns())
            sec, nanosec = divmod(stamp, 1_000_000_000)
            for msg in (infos[index], images[index]):
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
            topics.info_pub.publish(infos[index])
            topics.image_pub.publish(images[index])
            if pace == "paced":
                graph.wait_for(lambda: matches.last_stamp == stamp, 20.0, f"~/matches of frame {n}")
            else:
                next_due += 1.0 / rate
                delay = next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if pace != "paced":  # the last frame (the node's queue holds the newest) comes out
            graph.wait_for(lambda: matches.last_stamp == stamp, 20.0, "~/matches of the last frame")
        fig.seconds = time.monotonic() - start
        sample(frames)
        fig.frames_per_s = frames / fig.seconds

        d = _settled(graph, diagnostics)

        def delta(key: str) -> int:
            return int(d[key]) - int(baseline[key])

        fig.extra.update(received=delta("frames_received"), processed=delta("frames_processed"),
                         dropped_queue=delta("frames_dropped_queue_total"), rejected=delta("frames_rejected_total"),
                         errors=int(d["errors"]), lost_transport=int(d["frames_lost_transport_total"]),
                         keyframes=delta("keyframes"), resets=delta("resets"),
                         matches_received=matches.count - matches_before,
                         publisher_rss_start_kb=publisher_rss_start, publisher_rss_end_kb=proc_status()["VmRSS"])
        fig.extra["exit_code"] = proc.interrupt(timeout=15.0)
        fig.extra["shm_mapped_max"] = shm_max
        fig.extra["shm_names"] = sorted(shm_names)
    finally:
        if proc is not None:
            proc.close()
        own = shm_mapped()
        graph.close()
    # Segments are unlinked by the last user; give the peers' cleanup a moment, then look.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and (leaked_shm(shm_names, existed_before)
                                           or leaked_shm(own - shm_mapped(), existed_before)):
        time.sleep(0.2)
    fig.extra["shm_leaked"] = leaked_shm(shm_names, existed_before)
    fig.extra["shm_leaked_graph"] = leaked_shm(own - shm_mapped(), existed_before)
    fig.extra["shm_mutexes_left"] = leaked_shm(shm_names | own, existed_before, mutexes=True)
    fig.extra["shm_created_by_node"] = len({n for n in shm_names if n.startswith("fastdds_")} - existed_before)
    fig.extra["publisher_threads_before"] = threads_before
    fig.extra["publisher_threads_after"] = threading.active_count()
    return fig.finish()


# =============================================================================== replay mode


def make_bag(path: Path, frames: int, *, width: int = 160, height: int = 120, unique: int = 60) -> float:
    """A bag of ``frames`` mono8 frames cycling a ping-pong sequence with increasing stamps; seconds."""
    from glue_ros.tools.make_bag import BagLayout, write_bag

    start = time.monotonic()
    seq = render(unique, width, height)
    order = pingpong(frames, unique)
    write_bag(path, ((1_000_000_000 + n * PERIOD_NS, seq.images[i]) for n, i in enumerate(order)), seq.camera,
              layout=BagLayout(encoding="mono8"))
    return time.monotonic() - start


def replay_worker(bag: str, output: str, figures_path: str, frames: int, sample_every: int, warmup: int,
                  profile: str = DEFAULT_PROFILE, keypoints: int | None = None) -> int:
    """Runs in the child process: replay with an observer that samples this process."""
    from glue_ros.config import FrontEndConfig, load_config
    from glue_ros.tools.replay import replay_offline

    sets = [f"{k}={v}" for k, v in soak_params(profile, keypoints).items()]
    params = load_config(None, sets)  # as glue-ros-replay --set
    fig = SoakFigures("replay", frames, warmup)
    bounds = {"max_buffer": 0, "max_tracks": 0}
    count = [0]
    start = time.monotonic()

    def observe(frontend, result) -> None:
        bounds["max_buffer"] = max(bounds["max_buffer"], len(frontend.buffer))
        bounds["max_tracks"] = max(bounds["max_tracks"], len(frontend.tracks))
        n = count[0]
        count[0] += 1
        if n % sample_every == 0 or count[0] == frames:
            status = proc_status()
            fig.samples.append(Sample(count[0], time.monotonic() - start, status["VmRSS"], status["Threads"],
                                      fd_count(), py_threads=threading.active_count()))

    summary = replay_offline(bag, output, params, progress=False, observer=observe)
    fig.seconds = time.monotonic() - start
    fig.frames_per_s = summary.processed / fig.seconds
    config = FrontEndConfig.from_flat(params)
    fig.extra.update(bounds, processed=summary.processed, keyframes=summary.keyframes, resets=summary.resets,
                     skipped=summary.skipped, buffer_bound=config.keyframes.buffer_size, profile=profile,
                     keypoints=config.extractor.max_keypoints,
                     tracks_bound=(config.keyframes.buffer_size + 1) * config.extractor.max_keypoints)
    Path(figures_path).write_text(json.dumps(asdict(fig)))
    return 0


def run_replay(frames: int, *, width: int = 160, height: int = 120, unique: int = 60, sample_every: int = 100,
               warmup: int | None = None, work_dir: str | None = None, progress: bool = True,
               profile: str = DEFAULT_PROFILE, keypoints: int | None = None) -> SoakFigures:
    warmup = warmup if warmup is not None else min(max(frames // 5, 100), 1000)
    params = soak_params(profile, keypoints)  # bad names fail here, not in the child
    # learned backends on a shared CPU: up to ~1 s a frame under load (ORB + nn: ~10 ms)
    per_frame_s = 0.2 if params["extractor.type"] in CLASSICAL else 2.0
    with tempfile.TemporaryDirectory(prefix="glue_ros_soak_", dir=work_dir) as tmp:
        bag, output, figures = Path(tmp) / "in_bag", Path(tmp) / "out_bag", Path(tmp) / "figures.json"
        generate_s = make_bag(bag, frames, width=width, height=height, unique=unique)
        if progress:
            print(f"  replay: bag of {frames} frames written in {generate_s:.1f} s", file=sys.stderr, flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        command = [sys.executable, str(Path(__file__).resolve()), "--replay-worker", str(bag), str(output),
                   str(figures), str(frames), str(sample_every), str(warmup), profile,
                   str(params["extractor.max_keypoints"])]
        proc = subprocess.Popen(command, env=env, cwd=str(ROOT), start_new_session=True)
        try:
            code = proc.wait(timeout=max(600.0, frames * per_frame_s))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0 or not figures.exists():
            raise RuntimeError(f"replay worker exited with {code}")
        data = json.loads(figures.read_text())
        fig = SoakFigures("replay", frames, warmup, seconds=data["seconds"], frames_per_s=data["frames_per_s"],
                          samples=[Sample(**s) for s in data["samples"]], extra=data["extra"])
        fig.extra.update(exit_code=code, generate_s=generate_s, bag_mib=_size(bag) / 2 ** 20,
                         output_mib=_size(output) / 2 ** 20)
        return fig.finish()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# =============================================================================== CLI


def argument_problem(args) -> str | None:
    """One line on what is wrong with the CLI arguments (None: nothing)."""
    from glue_ros.config import ParameterError

    unknown = [m for m in args.modes.split(",") if m.strip() and m.strip() not in ("node", "replay")]
    if unknown:
        return f"unknown mode(s): {', '.join(unknown)}; modes: node, replay"
    if args.frames < 2:
        return f"--frames must be >= 2, got {args.frames}"
    if args.keypoints is not None and args.keypoints < 1:  # the track-table bound needs a finite count
        return f"--keypoints must be >= 1, got {args.keypoints}"
    if min(args.width, args.height) < 32 or args.unique < 2 or args.sample_every < 1:
        return "--width/--height must be >= 32, --unique >= 2, --sample-every >= 1"
    try:
        params = soak_params(args.profile, args.keypoints)
    except ParameterError as exc:
        return str(exc)
    if params["extractor.type"] not in CLASSICAL:  # missing hub weights: say so before any bag is written
        import common  # noqa: F401  (offline hub environment)
        from glue_ros.models.weights import WeightsError, check_available

        try:
            check_available(params)
        except WeightsError as exc:
            return str(exc).splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--replay-worker"]:
        bag, output, figures, frames, every, warmup, profile, keypoints = argv[1:9]
        return replay_worker(bag, output, figures, int(frames), int(every), int(warmup), profile, int(keypoints))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help="backend: a shipped profile (glue_ros/profiles), e.g. xfeat_lighterglue")
    parser.add_argument("--keypoints", type=int, default=None,
                        help=f"extractor.max_keypoints (default {NODE_PARAMS['extractor.max_keypoints']})")
    parser.add_argument("--modes", default="node,replay", help="comma-separated: node, replay")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--unique", type=int, default=60, help="rendered frames, played ping-pong")
    parser.add_argument("--pace", choices=("paced", "free"), default="paced")
    parser.add_argument("--rate", type=float, default=100.0, help="frames/s with --pace free")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--warmup", type=int, help="frames before the slope is fitted (default: 20 %%, <= 1000)")
    parser.add_argument("--max-slope", type=float, default=512.0, help="KB per 1000 frames counted as a leak")
    parser.add_argument("--json", help="write all figures (with samples) here")
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        print(f"soak: {mode}, {args.frames} frames at {args.width}x{args.height}, profile {args.profile}",
              file=sys.stderr, flush=True)
        backend = {"profile": args.profile, "keypoints": args.keypoints}
        if mode == "node":
            fig = run_node(args.frames, width=args.width, height=args.height, unique=args.unique, pace=args.pace,
                           rate=args.rate, sample_every=args.sample_every, warmup=args.warmup, **backend)
        elif mode == "replay":
            fig = run_replay(args.frames, width=args.width, height=args.height, unique=args.unique,
                             sample_every=args.sample_every, warmup=args.warmup, **backend)
        else:
            parser.error(f"unknown mode {mode!r}")
        results.append(fig)
        print("\n".join(fig.lines()), flush=True)
        problems = check(fig, args.max_slope)
        print("  check: " + ("ok" if not problems else "; ".join(problems)), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(f) for f in results], indent=1))
    return 0 if all(not check(f, args.max_slope) for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
