"""Benchmark scripts in quick versions, so they cannot rot: the GPU readiness script on the CPU (--device cpu
--quick: every learned backend builds, agrees with itself on CPU fp32, is timed, the JSON report is
complete), the memory benchmark, the full-replay benchmark and the node benchmark over DDS."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                          "--output", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["backends"]) == {"superpoint_lightglue", "superpoint_superglue", "aliked_lightglue",
                                       "disk_lightglue", "xfeat_lighterglue"}
    for profile, entry in report["backends"].items():
        fp32 = entry["precisions"]["fp32"]
        assert fp32["agreement"]["keypoints"] == 1.0 == fp32["agreement"]["matches_iou"], profile  # CPU vs itself
        # the fp32 gate applies to real weights; random ones (near-tie score maps) are reported only
        assert fp32["agreement"].get("ok") is (True if entry["weights"] == "real" else None), profile
        assert fp32["speed"]["fps"] > 0 and fp32["speed"]["p99_ms"] >= fp32["speed"]["median_ms"], profile
        if not profile.startswith("superpoint"):
            assert entry["weights"] == "real" and fp32["agreement"]["matches"] > 0, profile
    assert report["target"]["profile"] == "superpoint_lightglue" and report["target"]["fps"] == 500.0
    assert "fp32 agreement with CPU: ok" in run.stdout


def test_bench_memory_quick(tmp_path):
    """bench/bench_memory.py --quick (orb_nn + xfeat_lighterglue, 160x120, 5 frames, a fresh process each):
    every cell measured, the RSS figures ordered as they must be, JSON and table complete."""
    out = tmp_path / "memory.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_memory.py"), "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    cells = {c["profile"]: c for c in report["cells"]}
    assert set(cells) == {"orb_nn", "xfeat_lighterglue"} and report["size"] == [160, 120]
    for profile, c in cells.items():
        assert "error" not in c and c["frames"] == 5 and c["keypoints"] == 256, profile
        assert 0 < c["keypoints_mean"] <= 256, profile
        assert c["peak_method"] in ("VmHWM-VmRSS", "maxrss"), profile
        # resident memory only grows through import -> load; peaks bound what was resident
        assert 0 < c["rss_import_mib"] <= c["peak_loading_mib"] and c["rss_loaded_mib"] <= c["peak_loading_mib"]
        assert c["rss_end_mib"] <= c["peak_frames_mib"], profile
    assert cells["xfeat_lighterglue"]["weights"] == "real"
    # XFeat + LighterGlue weights and model are resident after loading; ORB has none
    assert cells["xfeat_lighterglue"]["rss_loaded_mib"] - cells["xfeat_lighterglue"]["rss_import_mib"] > \
        cells["orb_nn"]["rss_loaded_mib"] - cells["orb_nn"]["rss_import_mib"]
    assert "| xfeat_lighterglue | real | 256 |" in run.stdout


def test_bench_pipeline_quick():
    """bench/bench_pipeline.py on a short bag (ORB + nn, 8 frames, one repeat): serial and extraction
    ahead both replayed, with a parameter given through --set, and both rows report the same poses
    (the one-frame pipeline changes the speed, not the results)."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_pipeline.py"), "--profiles", "orb_nn",
                          "--keypoints", "128", "--frames", "8", "--repeats", "1",
                          "--set", "extractor.resize_max=320"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "640x480; extractor.resize_max=320, output bag written" in run.stdout
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| orb_nn | 128 |")]
    assert [r[2].strip() for r in rows] == ["serial", "ahead"]
    assert all(float(r[3]) > 0 for r in rows)
    assert rows[0][6:9] == rows[1][6:9]  # valid poses, rotation and translation errors


def test_bench_node_quick():
    """bench/bench_node.py over real DDS (ORB + nn, 6 frames, paced and 10 Hz, extraction ahead set):
    the node runs in its own process, every frame is accounted for and reported."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_node.py"), "--modes", "paced,rate",
                          "--rate", "10", "--frames", "6", "--keypoints", "128", "--warmup", "1",
                          "--set", "pipeline.extract_ahead=on"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "glue_ros node benchmark: ORB + nn, pipeline.extract_ahead=on" in run.stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in run.stdout.splitlines() if line.startswith(("| paced |", "| 10 Hz |"))}
    assert set(rows) == {"paced", "10 Hz"}
    for mode, cells in rows.items():
        published, received, processed, dropped = cells[0].split()[0], cells[1], cells[2], cells[3]
        assert published == received == "6" and int(processed) + int(dropped) == 6, mode
    assert rows["paced"][2] == "6"  # closed loop: nothing dropped
