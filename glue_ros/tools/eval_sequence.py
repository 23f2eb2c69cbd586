"""glue-ros-eval-sequence: keyframe-relative pose errors of a replay output bag vs a TUM ground truth.

    glue-ros-eval-sequence OUTPUT_BAG GROUNDTRUTH.txt [--json OUT.json]

Reads ~/relative_pose and ~/matches (the keyframe stamp of each pose comes from the matches
cloud with the same header stamp) and reports rotation and translation-direction errors.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

from .common import CliError, check_input_file, check_output_file, run_cli, write_text_atomic


def poses_from_bag(bag: str | Path, namespace_hint: str = "") -> list[tuple[int, int, object]]:
    """(keyframe stamp, frame stamp, pose) triples from a glue_ros output bag."""
    from ..ros.bag_io import open_reader
    from ..ros.messages import decode_matches, decode_relative_pose, pose_keyframe
    from ..ros.msg_types import RosbagsTypes

    reader = open_reader(bag)
    try:
        types = RosbagsTypes()
        topics = {c.topic: c for c in reader.connections}
        pose_topics = [t for t in topics if t.endswith("/relative_pose") and namespace_hint in t]
        match_topics = [t for t in topics if t.endswith("/matches") and namespace_hint in t]
        if len(pose_topics) != 1 or len(match_topics) != 1:
            raise CliError(f"expected one */relative_pose and one */matches topic in '{bag}', found "
                           f"{pose_topics or 'none'} and {match_topics or 'none'}")
        matches, poses = {}, {}
        wanted = [topics[pose_topics[0]], topics[match_topics[0]]]
        for connection, _, raw in reader.messages(connections=wanted):
            msg = types.deserialize(raw, connection.msgtype)
            if connection.topic == match_topics[0]:
                decoded = decode_matches(msg)
                matches[decoded.stamp_ns] = decoded
            else:
                decoded = decode_relative_pose(msg)
                poses[decoded.stamp_ns] = decoded
    finally:
        reader.close()
    triples = []
    for stamp, pose in sorted(poses.items()):
        if stamp not in matches:
            continue
        _, keyframe_stamp = pose_keyframe(stamp, matches[stamp])
        triples.append((keyframe_stamp, stamp, SimpleNamespace(valid=True, rotation_valid=True, reason="ok",
                                                                rotation=pose.rotation, translation=pose.translation)))
    return triples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glue-ros-eval-sequence", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("output_bag")
    parser.add_argument("groundtruth")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)

    def body() -> int:
        from ..evaluation import evaluate_sequence
        from ..ros.bag_io import BagError
        from ..synthetic import read_tum_trajectory

        check_input_file(args.groundtruth, "ground truth")
        if args.json:
            check_output_file(args.json, "--json")
        try:  # stamps are parsed exactly (synthetic.parse_stamp: decimal string → integer ns)
            stamps, gt = read_tum_trajectory(args.groundtruth)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CliError(f"ground truth '{args.groundtruth}': {str(exc).splitlines()[0]}") from None
        try:
            triples = poses_from_bag(args.output_bag)
        except BagError as exc:
            raise CliError(str(exc)) from None
        summary = evaluate_sequence(triples, stamps, gt).summary()
        print(f"poses {summary['pairs']} (unmatched {summary['unmatched']}): rotation error median "
              f"{summary['rotation_median_deg']:.3f} deg, translation direction median "
              f"{summary['translation_median_deg']:.2f} deg; AUC@5/10/20 {100 * summary['auc@5']:.1f} / "
              f"{100 * summary['auc@10']:.1f} / {100 * summary['auc@20']:.1f}")
        if args.json:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
            write_text_atomic(args.json, json.dumps(clean, indent=1), "--json")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
