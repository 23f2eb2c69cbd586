"""The GPU readiness script runs on the CPU in CI (--device cpu --quick) so it cannot rot: every learned
backend builds, agrees with itself on CPU fp32, is timed, and the JSON report is complete."""
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
