"""Mutation check for the core rules: apply each mutation, run test/test_core_rules.py, expect a failure.

Run from the repository root with the venv python: `.venv/bin/python scripts/mutation_check.py`."""
import subprocess, sys, pathlib
muts = [
 ("glue_ros/tracks.py", "        for frame_indices, track_ids in inherited:  #", "        for frame_indices, track_ids in inherited[::-1]:  #", "newest-wins"),
 ("glue_ros/tracks.py", "(ids[frame_indices] < 0) & ~np.isin(track_ids, ids)", "(ids[frame_indices] < 0)", "no-dup-removal"),
 ("glue_ros/keyframes.py", '''    if signals.num_matches < config.min_matches:
        return "few_matches"
    if signals.inlier_ratio is not None and signals.inlier_ratio < config.min_inlier_ratio:
        return "low_inlier_ratio"''', '''    if signals.inlier_ratio is not None and signals.inlier_ratio < config.min_inlier_ratio:
        return "low_inlier_ratio"
    if signals.num_matches < config.min_matches:
        return "few_matches"''', "keyframe-order"),
 ("glue_ros/tracks.py", "            self._last_seen[track] = _Observation(", "            if previous is None: self._last_seen[track] = _Observation(", "velocity-first-obs"),
 ("glue_ros/tracks.py", '        self._last_seen.clear()', '        self._last_seen.clear(); self._next_id = 0', "ids-reused"),
 ("glue_ros/keyframes.py", '''    if keyframe_size is not None and image_size != keyframe_size:
        return "image_size_changed"
    if last_stamp_ns is not None:''', '''    if last_stamp_ns is not None and stamp_ns < last_stamp_ns:
        return "stamp_backwards"
    if keyframe_size is not None and image_size != keyframe_size:
        return "image_size_changed"
    if last_stamp_ns is not None:''', "reset-order"),
]
for path, old, new, name in muts:
    p = pathlib.Path(path); src = p.read_text()
    assert old in src, name
    p.write_text(src.replace(old, new, 1))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "test/test_core_rules.py"], capture_output=True, text=True)
        print(name, "CAUGHT" if r.returncode else "SURVIVED", r.stdout.strip().splitlines()[-1])
    finally:
        p.write_text(src)
