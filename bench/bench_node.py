#!/usr/bin/env python
"""Node benchmark (issue "ROS 2 matcher node"): the matcher node over DDS, across processes.

The node runs in its own process (``python -m glue_ros.ros.node``, as ``ros2 run``), this process
publishes 640x480 rgb8 frames (a synthetic sideways sequence, ping-pong over --unique frames so
motion stays continuous) with CameraInfo, both with config/fastdds_local.xml (64 MB shared memory).
Each frame is stamped with the wall clock when published; the latency is output receive time minus
that stamp (this process' clock = the node's clock), so it covers DDS both ways, the node's queue
and the processing. Modes (a fresh node for each, so its counters are the mode's own):

* ``30hz``:  --frames frames published at 30 Hz (open loop, as a camera);
* ``rate``:  --frames frames published at --rate Hz (open loop; e.g. 15 Hz for a learned backend);
* ``flood``: --frames frames published as fast as this process can (open loop, overload);
* ``paced``: the next frame is published when the previous one's ~/matches arrived (closed loop:
  the node's throughput without drops).

Reported: frames published / received by the node / processed / dropped by the node's queue /
lost before the node (published - received), processed frames per second (first publish to last
output), latency p50/p99 measured here and as the node reports it (/diagnostics, stamp→publish),
the node's CPU use (psutil if installed, else /proc; 100 % = one core) and its resident memory
(/proc/<pid>/status: VmHWM, the peak since the node started, model loading included, and VmRSS at
the end of the mode). The node's own percentiles cover its last 300 frames, so they include the
--warmup frames of that mode. The camera-rate modes (30hz, rate) get a verdict line: every frame processed and
p99 latency (here) <= --target-p99 ms.

--profile NAME runs a shipped profile (glue_ros/profiles/NAME.yaml, passed as the node's
--params-file, as the launch file does) with its real packaged weights; SuperPoint profiles use the
hub cache when it has the weights, else random weights (as --learned). --keypoints and the bench's
own overrides (device, queue size 1, diagnostics period, keyframe reset gap) are applied on top.

--learned uses random weights (test/checkpoints.py via bench/common.py; nothing is downloaded):
the compute is that of SuperPoint + LightGlue at --keypoints keypoints, but random descriptors give
(almost) no matches, and LightGlue's early exit / pruning decisions are arbitrary (the "LightGlue
layers" column; --full-depth disables both for the worst case).

    python bench/bench_node.py                       # ORB + nn (default)
    python bench/bench_node.py --learned             # SuperPoint + LightGlue, random weights, 1024 kp
    python bench/bench_node.py --modes paced --frames 50
    python bench/bench_node.py --profile xfeat_lighterglue --keypoints 512 --modes rate --rate 15 --frames 60
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "test")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import rosgraph as rg  # noqa: E402  (sets the DDS environment before rclpy is initialised)

import numpy as np  # noqa: E402

from glue_ros.ros.image_codec import encode_image  # noqa: E402
from glue_ros.ros.messages import decode_matches  # noqa: E402
from glue_ros.ros.msg_types import stamp_to_ns  # noqa: E402
from glue_ros.synthetic import render_sequence  # noqa: E402

MODES = ("30hz", "rate", "flood", "paced")
CAMERA_RATE = {"30hz", "rate"}  # modes that stand for a camera: the verdict lines apply


def node_params(args, weights: dict[str, Path] | None) -> dict:
    """-p overrides of the node (with --profile they come after the profile's params file)."""
    from glue_ros.config import parse_set
    # reset_gap_s: in the paced mode stamps are as far apart as the processing takes (seconds for the
    # learned path on a CPU); the default 2 s would reset the keyframe buffer before every frame.
    params = {"device": args.device, "diagnostics.period_s": 0.25, "input.queue_size": 1,
              "extractor.max_keypoints": args.keypoints, "keyframes.reset_gap_s": 60.0}
    if args.profile is None and weights is None:
        params.update({"extractor.type": "orb", "matcher.type": "nn"})
    elif weights is not None:
        if args.profile is None:
            params.update({"extractor.type": "superpoint", "matcher.type": "lightglue"})
        matcher_kind = "superglue_indoor" if "superglue_indoor" in weights else "lightglue"
        params.update({"extractor.weights": str(weights["superpoint"]), "matcher.weights": str(weights[matcher_kind]),
                       # random-weight SuperPoint scores are nearly uniform: keep exactly max_keypoints
                       "extractor.keypoint_threshold": 0.0})
    if args.full_depth:
        params.update({"matcher.depth_confidence": -1.0, "matcher.width_confidence": -1.0})
    params.update(parse_set(args.sets))  # the CLIs' --set parsing: NAME=VALUE, YAML scalars, strings verbatim
    return params


def make_weights(directory: Path, matcher: str = "lightglue") -> dict[str, Path]:
    import common  # bench/common.py: test/checkpoints.py random weights in the HF layout

    _, dirs = common.build_checkpoints(directory, kinds=("superpoint", matcher))
    return dirs


def profile_weights(profile: str, directory: Path) -> tuple[dict[str, Path] | None, str]:
    """(random-weight directories or None, label) for a profile: packaged / cached weights are used
    as they are; a SuperPoint profile whose hub weights are not cached gets random weights."""
    import common  # noqa: F401  (offline hub environment before huggingface_hub is imported)
    from glue_ros.config import load_config
    from glue_ros.models.weights import WeightsError, check_available

    flat = load_config(profile=profile)
    try:
        check_available(flat)
        return None, "real weights"
    except WeightsError:
        if flat["extractor.type"] != "superpoint":
            raise
    matcher = "superglue_indoor" if flat["matcher.type"] == "superglue" else "lightglue"
    return make_weights(directory, matcher), "random weights: hub weights not cached"


def node_memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set since start) and VmRSS of the node, KiB."""
    import soak  # bench/soak.py: the /proc probes

    status = soak.proc_status(pid)
    return {"hwm_kib": status["VmHWM"], "rss_kib": status["VmRSS"]}


def frames(seq, count: int):
    """Ping-pong order over the rendered frames (continuous motion for any count)."""
    n = len(seq.images)
    period = max(2 * n - 2, 1)
    for i in range(count):
        k = i % period
        yield k if k < n else period - k


def handshake(topics, seq, proc, timeout: float = 300.0) -> None:
    """Re-send frame 0 with fresh stamps until an output of any of them arrives: until then our
    best-effort frame or the node's first output may race discovery (a learned node's first frame
    can also take seconds, so any answer counts, not only the latest stamp's)."""
    sent: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        sent.add(topics.publish(seq.images[0], time.time_ns(), seq.camera))
        try:
            topics.graph.wait_for(lambda: sent & set(topics.matches.stamps()), 2.0, "the node's first output")
            return
        except AssertionError:
            if time.monotonic() > deadline or not proc.alive():
                raise AssertionError(f"no output from the node within {timeout:.0f} s") from None


def run_mode(mode: str, args, seq, messages, info, params, graph, log_dir: Path) -> dict:
    ns = f"/bench_{mode}"
    env = rg.child_env(single_threaded=False)  # the node uses every core, as deployed
    ros_args = ("--params-file", str(args.profile_file)) if args.profile else ()
    with rg.start_node(*ros_args, namespace=ns, params=params, env=env, log_dir=log_dir,
                       label=f"node_{mode}") as proc:
        topics = rg.MatcherTopics(graph, ns)
        topics.wait_ready(proc, timeout=300.0)
        try:
            handshake(topics, seq, proc)
            # warm-up (first-call costs), paced
            for k in range(args.warmup):
                stamp = topics.publish(seq.images[k], time.time_ns(), seq.camera)
                topics.matches.wait_for_stamp(stamp, 300.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; node output:\n{proc.output()[-3000:]}") from None
        before_rx = len(topics.matches)

        def idle():  # a report that counts every output received so far: the baseline of this mode
            # (one published before the last warm-up frame was processed can arrive after its output —
            # two topics, no order between them — and would leave every later count one short)
            reports = topics.diagnostics_of_node()
            return (reports and int(reports[-1]["frames_pending"]) == 0
                    and int(reports[-1]["frames_processed"]) >= before_rx and reports[-1])

        base = rg.wait_until(idle, 30.0, "idle node")

        stamps: list[int] = []
        cpu0, t0 = rg.process_cpu_seconds(proc.pid), time.monotonic()
        period = 1.0 / (30.0 if mode == "30hz" else args.rate)
        for n, k in enumerate(frames(seq, args.frames)):
            if mode in ("30hz", "rate"):
                delay = t0 + n * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            stamp = time.time_ns()
            msg = messages[k]
            msg.header.stamp = info.header.stamp = _time(stamp)
            topics.info_pub.publish(info)
            topics.image_pub.publish(msg)
            stamps.append(stamp)
            if mode == "paced":
                topics.matches.wait_for_stamp(stamp, 300.0)
        published_s = time.monotonic() - t0
        wanted = set(stamps)

        def settled():
            reports = topics.diagnostics_of_node()
            if len(reports) < 2:
                return None
            a, b = reports[-2], reports[-1]
            if a["_stamp_ns"] <= stamps[-1]:  # both reports must be newer than the last frame
                return None
            if int(b["frames_pending"]) == 0 and a["frames_received"] == b["frames_received"] \
                    and int(b["frames_processed"]) == len([s for s in topics.matches.stamps() if s in wanted]) \
                    + int(base["frames_processed"]):
                return b
            return None

        end = rg.wait_until(settled, 600.0, "the node to finish", poll=0.1)
        cpu1 = rg.process_cpu_seconds(proc.pid)
        memory = node_memory_kib(proc.pid)
        with graph.lock:
            outputs = [(r.msg, r.time_ns) for r in topics.matches.items[before_rx:]]
        latencies = [(t - stamp_to_ns(m.header.stamp)) * 1e-6 for m, t in outputs if stamp_to_ns(m.header.stamp) in wanted]
        last_output = max((t for m, t in outputs if stamp_to_ns(m.header.stamp) in wanted), default=0)
        matches = [len(decode_matches(m)) for m, _ in outputs if stamp_to_ns(m.header.stamp) in wanted]
        span_s = (last_output - stamps[0]) * 1e-9 if latencies else float("nan")
        busy_s = time.monotonic() - t0
        delta = {k: int(end[k]) - int(base[k]) for k in ("frames_received", "frames_processed",
                                                         "frames_dropped_queue_total", "frames_rejected_total")}
        assert proc.interrupt(timeout=30.0) == 0, proc.output()[-2000:]
        return {
            "mode": mode if mode != "rate" else f"{args.rate:g} Hz", "camera_rate": mode in CAMERA_RATE,
            "published": len(stamps), "publish_hz": len(stamps) / published_s,
            "received": delta["frames_received"], "processed": delta["frames_processed"],
            "dropped_queue": delta["frames_dropped_queue_total"], "rejected": delta["frames_rejected_total"],
            "lost_before_node": len(stamps) - delta["frames_received"],
            "lost_transport_reported": int(end.get("frames_lost_transport_total", 0)),
            "fps": len(latencies) / span_s if latencies else 0.0,
            "lat_p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "lat_p99": float(np.percentile(latencies, 99)) if latencies else float("nan"),
            "node_lat_p50": float(end["latency_p50_ms"]), "node_lat_p99": float(end["latency_p99_ms"]),
            "node_proc_p50": float(end["processing_p50_ms"]),
            "cpu_pct": 100.0 * (cpu1 - cpu0) / busy_s, "matches_median": float(np.median(matches)) if matches else 0,
            "keypoints": int(end["keypoints"]), "stop_layer": int(end["lightglue_stop_layer"]),
            "rss_peak_mib": memory["hwm_kib"] / 1024, "rss_end_mib": memory["rss_kib"] / 1024,
        }


def _time(stamp_ns: int):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def table(rows: list[dict]) -> str:
    headers = ["mode", "published (Hz)", "received", "processed", "dropped (queue)", "lost before node",
               "processed fps", "latency p50/p99 ms (here)", "latency p50/p99 ms (node)", "processing p50 ms",
               "node CPU %", "node RSS peak / end MiB", "keypoints", "matches (median)", "LightGlue layers"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["mode"], f"{r['published']} ({r['publish_hz']:.0f})", str(r["received"]), str(r["processed"]),
            str(r["dropped_queue"]), f"{r['lost_before_node']} (reported {r['lost_transport_reported']})",
            f"{r['fps']:.1f}", f"{r['lat_p50']:.0f} / {r['lat_p99']:.0f}",
            f"{r['node_lat_p50']:.0f} / {r['node_lat_p99']:.0f}", f"{r['node_proc_p50']:.0f}",
            f"{r['cpu_pct']:.0f}", f"{r['rss_peak_mib']:.0f} / {r['rss_end_mib']:.0f}", str(r["keypoints"]),
            f"{r['matches_median']:.0f}",
            str(r["stop_layer"]) if r["stop_layer"] >= 0 else "-"]) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict], target_p99_ms: float) -> list[str]:
    """Camera-rate modes: every published frame processed (none lost, dropped or rejected) and p99 latency."""
    out = []
    for r in rows:
        if not r["camera_rate"]:
            continue
        all_processed = r["processed"] == r["published"]
        fast = r["lat_p99"] <= target_p99_ms
        out.append(f"{r['mode']}: all frames processed: {'yes' if all_processed else 'NO'} "
                   f"({r['processed']}/{r['published']}); p99 latency {r['lat_p99']:.0f} ms <= {target_p99_ms:g} ms: "
                   f"{'yes' if fast else 'NO'}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    backend_group = parser.add_mutually_exclusive_group()
    backend_group.add_argument("--learned", action="store_true", help="SuperPoint + LightGlue (random weights)")
    backend_group.add_argument("--profile", help="a shipped profile (e.g. xfeat_lighterglue), its real weights")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per mode (default 200, learned backends 40)")
    parser.add_argument("--keypoints", type=int, default=1024, help="extractor.max_keypoints")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of {', '.join(MODES)} "
                             "(default 30hz,flood,paced; rate when --rate is given)")
    parser.add_argument("--rate", type=float, default=None, help="publishing rate of the rate mode, Hz (default 15)")
    parser.add_argument("--target-p99", type=float, default=150.0,
                        help="latency target of the open-loop verdict lines, ms")
    parser.add_argument("--device", default="cpu", help="node device parameter (cpu, cuda, auto)")
    parser.add_argument("--unique", type=int, default=40, help="distinct frames rendered (ping-pong)")
    parser.add_argument("--warmup", type=int, default=3, help="paced warm-up frames before each mode")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="a node parameter on top of the bench's, e.g. pipeline.extract_ahead=off (repeatable)")
    parser.add_argument("--full-depth", action="store_true",
                        help="LightGlue without early exit / pruning (random weights make both arbitrary)")
    args = parser.parse_args(argv)
    if args.modes is None:
        args.modes = "rate" if args.rate is not None else "30hz,flood,paced"
    args.rate = 15.0 if args.rate is None else args.rate
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown)) or '(none given)'}; modes: {', '.join(MODES)}")
    if not args.rate > 0:
        parser.error(f"--rate must be > 0 Hz, got {args.rate:g}")
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if args.unique < 2:
        parser.error(f"--unique must be >= 2, got {args.unique}")

    from glue_ros.config import ParameterError, load_params_file, profile_path, validate

    profile_values = {}
    if args.profile:
        try:
            args.profile_file = profile_path(args.profile)
        except ParameterError as exc:
            parser.error(str(exc))
        profile_values = load_params_file(args.profile_file)
    learned = args.learned or profile_values.get("extractor.type", "orb") not in ("orb", "sift")
    args.frames = args.frames or (40 if learned else 200)
    try:  # bad values here, not as a node that dies at start-up
        validate({**profile_values, **node_params(args, None)})
    except ParameterError as exc:
        parser.error(str(exc))

    from sensor_msgs.msg import Image

    print(f"rendering {args.unique} 640x480 frames ...", flush=True)
    seq = render_sequence(args.unique, 640, 480, motion="sideways", speed=1.0, seed=3)
    messages = [encode_image(im, "rgb8", Image, stamp_ns=0, frame_id="camera") for im in seq.images]
    info = rg.camera_info_msg(seq.camera, 0)
    with tempfile.TemporaryDirectory(prefix="glue_ros_bench_node_") as tmp:
        if args.profile:
            weights, label = profile_weights(args.profile, Path(tmp) / "weights")
            backend = f"profile {args.profile} ({label})"
        else:
            weights = make_weights(Path(tmp) / "weights") if args.learned else None
            backend = "SuperPoint + LightGlue (random weights)" if args.learned else "ORB + nn"
        params = node_params(args, weights)
        backend += "".join(f", {assignment}" for assignment in args.sets)
        print(f"backend: {backend}, extractor.max_keypoints {args.keypoints}, device {args.device}, "
              f"{args.frames} frames per mode, Fast DDS profile {rg.FASTDDS_PROFILE.name}, "
              f"ROS_DOMAIN_ID {rg.DOMAIN_ID}", flush=True)
        rows = []
        with rg.Graph("bench_node") as graph:
            for mode in modes:
                print(f"mode {mode if mode != 'rate' else f'{args.rate:g} Hz'} ...", flush=True)
                rows.append(run_mode(mode, args, seq, messages, info, params, graph, Path(tmp)))
    print()
    print(f"glue_ros node benchmark: {backend}, 640x480 rgb8, {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} usable cores, device {args.device}, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(table(rows))
    for line in verdicts(rows, args.target_p99):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
