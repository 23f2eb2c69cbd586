"""Persistent feature track ids and image velocities.

A frame keypoint inherits the track id of the keyframe keypoint it is matched to (newest keyframe
first, so the freshest reference wins, also when two keypoints claim the same track); unmatched
keypoints get new ids. Ids are unique for the
life of the pipeline (a reset does not reuse them). Velocities are pixel/s between a track's
previous observation and the current one, as VINS-style front-ends publish.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Observation:
    stamp_ns: int
    position: np.ndarray  # (2,)


class TrackTable:
    def __init__(self):
        self._next_id = 0
        self._last_seen: dict[int, _Observation] = {}

    @property
    def next_id(self) -> int:
        return self._next_id

    def __len__(self) -> int:
        return len(self._last_seen)

    def new_ids(self, count: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + count, dtype=np.int64)
        self._next_id += count
        return ids

    def assign(self, num_keypoints: int, inherited: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Track ids for a frame's keypoints.

        ``inherited``: per keyframe, newest first, (frame keypoint indices, keyframe track ids).
        """
        ids = np.full(num_keypoints, -1, dtype=np.int64)
        for frame_indices, track_ids in inherited:  # newest keyframe first: the freshest reference wins
            # a keypoint keeps its first track; a track goes to one keypoint only (ids stay unique)
            take = (ids[frame_indices] < 0) & ~np.isin(track_ids, ids)
            frame_indices, track_ids = frame_indices[take], track_ids[take]
            _, first = np.unique(track_ids, return_index=True)
            ids[frame_indices[first]] = track_ids[first]
        missing = ids < 0
        ids[missing] = self.new_ids(int(missing.sum()))
        return ids

    def velocities(self, stamp_ns: int, keypoints: np.ndarray, track_ids: np.ndarray) -> np.ndarray:
        """Pixel/s since each track's previous observation (0 for new tracks), and record this one."""
        velocity = np.zeros((len(track_ids), 2), np.float32)
        for i, track in enumerate(track_ids.tolist()):
            previous = self._last_seen.get(track)
            if previous is not None and stamp_ns > previous.stamp_ns:
                velocity[i] = (keypoints[i] - previous.position) / ((stamp_ns - previous.stamp_ns) * 1e-9)
            self._last_seen[track] = _Observation(stamp_ns, keypoints[i].astype(np.float32))
        return velocity

    def retain(self, live_ids: np.ndarray) -> None:
        """Forget tracks that can no longer be continued (not in the current frame or any keyframe):
        keeps the table bounded by (keyframes + 1) x max keypoints."""
        live = set(live_ids.tolist())
        for track in [t for t in self._last_seen if t not in live]:
            del self._last_seen[track]

    def clear(self) -> None:
        """Forget observations (on reset); ids keep counting so they stay unique."""
        self._last_seen.clear()
