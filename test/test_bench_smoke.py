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
        assert fp32["agreement"]["ok"] and fp32["agreement"]["keypoints"] == 1.0, profile
        assert fp32["speed"]["fps"] > 0 and fp32["speed"]["p99_ms"] >= fp32["speed"]["median_ms"], profile
        if not profile.startswith("superpoint"):
            assert entry["weights"] == "real" and fp32["agreement"]["matches"] > 0, profile
    assert report["target"]["profile"] == "superpoint_lightglue" and report["target"]["fps"] == 500.0
    assert "fp32 agreement with CPU: ok" in run.stdout
