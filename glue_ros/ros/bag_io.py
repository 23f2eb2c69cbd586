"""rosbag2 reading and writing through ``rosbags`` (pure Python: mcap and sqlite3; no rclpy)."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .msg_types import default_typestore, stamp_to_ns

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class BagError(RuntimeError):
    """A bag cannot be used (missing, corrupt, no such topic). The message says why."""


def open_reader(path: str | Path):
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag '{path}' does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises ReaderError / storage errors / OSError for bad bags
        raise BagError(f"bag '{path}' cannot be opened: {str(exc).splitlines()[0] or type(exc).__name__} "
                       "(is it a rosbag2 directory with metadata.yaml, mcap or sqlite3 storage?)") from None
    return reader


def _pick(reader, wanted: str | None, types: tuple[str, ...], role: str, required: bool) -> str | None:
    topics = {c.topic: c.msgtype for c in reader.connections}
    if wanted:
        if wanted not in topics:
            candidates = [t for t, m in topics.items() if m in types]
            raise BagError(f"topic '{wanted}' is not in the bag; {role} topics there: "
                           f"{', '.join(candidates) or 'none'}")
        if topics[wanted] not in types:
            raise BagError(f"topic '{wanted}' has type {topics[wanted]}, expected {' or '.join(types)}")
        return wanted
    candidates = sorted(t for t, m in topics.items() if m in types)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if required:
            raise BagError(f"the bag has no {role} topic ({' or '.join(types)}); topics: "
                           f"{', '.join(sorted(topics)) or 'none'}")
        return None
    raise BagError(f"the bag has several {role} topics ({', '.join(candidates)}): choose one with "
                   f"--{role.replace(' ', '-')}-topic")


@dataclass
class BagMessage:
    """One image or CameraInfo message of the bag; ``msg`` is None when it could not be deserialised
    (``problem`` says why; ``stamp_ns`` is then -1)."""

    stamp_ns: int  # header stamp
    log_ns: int  # recorded (receive) time
    msg: object | None
    msgtype: str
    problem: str = ""

    @property
    def is_camera_info(self) -> bool:
        return self.msgtype == CAMERA_INFO_TYPE


@dataclass
class BagStats:
    images: int = 0
    camera_infos: int = 0
    corrupt: int = 0
    reordered: int = 0
    corrupt_reasons: dict[str, int] = field(default_factory=dict)


class BagFrames:
    """Iterate a bag's image and CameraInfo messages in header-stamp order (``BagMessage``), each
    CameraInfo before the image with the same stamp: the order a live node sees them in.

    Bags are written in receive order; we reorder within a window of ``window`` messages, which
    covers transport jitter. A stamp jump backwards larger than ``discontinuity_ns`` (a bag made of
    loops) flushes the window so the pipeline sees the discontinuity and resets. A message that
    cannot be deserialised is yielded at once, with ``msg`` None (the consumer counts it).
    """

    def __init__(self, path: str | Path, image_topic: str | None = None, camera_info_topic: str | None = None,
                 window: int = 64, discontinuity_ns: int = 2_000_000_000):
        self.path = Path(path)
        self.reader = open_reader(path)
        self.image_topic = _pick(self.reader, image_topic, IMAGE_TYPES, "image", True)
        self.camera_info_topic = _pick(self.reader, camera_info_topic, (CAMERA_INFO_TYPE,), "camera info", False)
        self.window = window
        self.discontinuity_ns = discontinuity_ns
        self.stats = BagStats()
        self.typestore = default_typestore()
        counts = {c.topic: c.msgcount for c in self.reader.connections}
        self.expected_images = counts.get(self.image_topic, 0)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _deserialize(self, raw: bytes, msgtype: str) -> tuple[object | None, str]:
        try:
            return self.typestore.deserialize_cdr(raw, msgtype), ""
        except Exception as exc:
            self.stats.corrupt += 1
            reason = type(exc).__name__
            self.stats.corrupt_reasons[reason] = self.stats.corrupt_reasons.get(reason, 0) + 1
            return None, reason

    def __iter__(self) -> Iterator[BagMessage]:
        connections = [c for c in self.reader.connections if c.topic in (self.image_topic, self.camera_info_topic)]
        heap: list[tuple[int, int, int, BagMessage]] = []  # (stamp, 0 = CameraInfo / 1 = image, order, message)
        newest_stamp = None
        order = 0
        try:
            messages = self.reader.messages(connections=connections)
            for connection, log_ns, raw in messages:
                is_info = connection.topic == self.camera_info_topic
                if is_info:
                    self.stats.camera_infos += 1
                else:
                    self.stats.images += 1
                msg, problem = self._deserialize(raw, connection.msgtype)
                if msg is None:
                    yield BagMessage(-1, log_ns, None, connection.msgtype, problem)
                    continue
                stamp = stamp_to_ns(msg.header.stamp)
                if newest_stamp is not None and stamp < newest_stamp - self.discontinuity_ns:
                    while heap:  # discontinuity: emit what came before it first
                        yield heapq.heappop(heap)[3]
                    newest_stamp = None
                elif newest_stamp is not None and stamp < newest_stamp and not is_info:
                    self.stats.reordered += 1
                newest_stamp = stamp if newest_stamp is None else max(newest_stamp, stamp)
                heapq.heappush(heap, (stamp, int(not is_info), order,
                                      BagMessage(stamp, log_ns, msg, connection.msgtype)))
                order += 1
                if len(heap) > self.window:
                    yield heapq.heappop(heap)[3]
        except Exception as exc:
            if isinstance(exc, GeneratorExit):
                raise
            raise BagError(f"bag '{self.path}' is unreadable after {self.stats.images} images: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} (truncated?)") from None
        while heap:
            yield heapq.heappop(heap)[3]


class BagWriter:
    """An mcap (default) or sqlite3 rosbag2 writer that is always closed properly."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        path = Path(path)
        if path.exists():
            raise BagError(f"output bag '{path}' already exists (remove it or choose another --output)")
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise BagError(f"unknown storage '{storage}' (mcap or sqlite3)")
        self.typestore = default_typestore()
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.path = path

    def write(self, topic: str, msgtype: str, msg, log_ns: int) -> None:
        connection = self.connections.get(topic)
        if connection is None:
            connection = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
            self.connections[topic] = connection
        self.writer.write(connection, int(log_ns), self.typestore.serialize_cdr(msg, msgtype))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
