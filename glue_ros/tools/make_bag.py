"""glue-ros-make-bag: write a rosbag2 (mcap or sqlite3) with Image/CompressedImage + CameraInfo.

From a folder of images:
    glue-ros-make-bag OUT_BAG --images DIR (--rate HZ | --rgb-txt rgb.txt) --intrinsics FX,FY,CX,CY
From the synthetic scene generator (ground truth written as a TUM trajectory):
    glue-ros-make-bag OUT_BAG --synthetic 300 [--motion mixed] [--width 640 --height 480]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .common import CliError, check_input_file, run_cli

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")


@dataclass(frozen=True)
class BagLayout:
    image_topic: str = "/camera/image"
    camera_info_topic: str = "/camera/camera_info"
    frame_id: str = "camera_optical_frame"
    encoding: str = "rgb8"  # rgb8 | bgr8 | mono8 (raw images)
    compressed: str = ""  # "" (raw Image) | jpeg | png


def write_bag(path: str | Path, frames: Iterable[tuple[int, np.ndarray]], camera=None, *, storage: str = "mcap",
              layout: BagLayout = BagLayout()) -> int:
    """Write (stamp_ns, RGB image) frames (+ CameraInfo with the same stamp when ``camera`` is given).
    Messages are logged at their stamps. Returns the number of frames written."""
    import cv2

    from ..ros.bag_io import BagWriter
    from ..ros.camera_info import camera_info_message
    from ..ros.image_codec import encode_compressed, encode_image
    from ..ros.msg_types import RosbagsTypes

    count = 0
    with BagWriter(path, storage) as writer:
        types = RosbagsTypes(writer.typestore)
        for stamp_ns, rgb in frames:
            if layout.compressed:
                msg = encode_compressed(rgb, layout.compressed, types, stamp_ns=stamp_ns, frame_id=layout.frame_id)
                msgtype = "sensor_msgs/msg/CompressedImage"
            else:
                pixels = {"rgb8": lambda a: a, "bgr8": lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGR),
                          "mono8": lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)}[layout.encoding](rgb)
                msg = encode_image(np.ascontiguousarray(pixels), layout.encoding, types, stamp_ns=stamp_ns,
                                   frame_id=layout.frame_id)
                msgtype = "sensor_msgs/msg/Image"
            if camera is not None:
                writer.write(layout.camera_info_topic, "sensor_msgs/msg/CameraInfo",
                             camera_info_message(types, camera, stamp_ns, layout.frame_id), stamp_ns)
            writer.write(layout.image_topic, msgtype, msg, stamp_ns)
            count += 1
    return count


def read_rgb_txt(rgb_txt: Path, directory: Path) -> list[tuple[int, Path]]:
    """(stamp_ns, image path) of a TUM ``rgb.txt`` (``timestamp filename`` lines, ``#`` comments). Stamps
    are parsed exactly (decimal string → integer ns, no float rounding); paths are relative to rgb.txt's
    folder (TUM's "rgb/1.png"), else to ``directory``. CliError naming the line otherwise."""
    from ..synthetic import parse_stamp

    try:
        text = rgb_txt.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--rgb-txt '{rgb_txt}' cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise CliError(f"{rgb_txt}:{number}: expected 'timestamp filename', got {line.strip()!r}")
        try:
            stamp = parse_stamp(fields[0])
        except ValueError as exc:
            raise CliError(f"{rgb_txt}:{number}: {exc}") from None
        path = rgb_txt.parent / fields[1]
        entries.append((stamp, path if path.exists() else directory / fields[1]))
    return entries


def image_folder_frames(directory: Path, rate: float | None, rgb_txt: Path | None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames of a folder: stamps from a TUM rgb.txt (``timestamp filename`` lines) or a fixed rate."""
    import cv2

    if rgb_txt is not None:
        entries = read_rgb_txt(rgb_txt, directory)
        if not entries:
            raise CliError(f"{rgb_txt} lists no images")
    else:
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CliError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
        period = int(round(1e9 / rate))
        entries = [(1_000_000_000 + i * period, f) for i, f in enumerate(files)]
    for stamp, file in entries:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise CliError(f"image '{file}' could not be read")
        yield stamp, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def make_synthetic_bag(path: str | Path, num_frames: int, *, motion: str = "mixed", width: int = 640,
                       height: int = 480, fps: float = 30.0, seed: int = 0, storage: str = "mcap",
                       layout: BagLayout = BagLayout(), groundtruth: str | Path | None = None):
    """Render a synthetic sequence into a bag; write its ground truth (TUM format). Returns the sequence."""
    from ..synthetic import render_sequence, write_tum_trajectory

    seq = render_sequence(num_frames, width=width, height=height, motion=motion, fps=fps, seed=seed)
    write_bag(path, zip(seq.stamps_ns, seq.images), seq.camera, storage=storage, layout=layout)
    groundtruth = Path(groundtruth) if groundtruth else default_groundtruth_path(path)
    write_tum_trajectory(groundtruth, seq.stamps_ns, seq.poses)
    return seq


def default_groundtruth_path(bag: str | Path) -> Path:
    bag = Path(bag)
    return bag.with_name(bag.name + ".groundtruth.txt")


def parse_intrinsics(text: str):
    from ..geometry import CameraModel

    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
        raise CliError(f"--intrinsics expects FX,FY,CX,CY, got {text!r}") from None
    camera = CameraModel.from_intrinsics(fx, fy, cx, cy)
    if camera.problem():
        raise CliError(f"--intrinsics {text}: {camera.problem()}")
    return camera


NO_INTRINSICS_WARNING = ("warning: no --intrinsics: the bag gets no CameraInfo, so replay and the node compute "
                         "no poses from it (matches only); give --intrinsics FX,FY,CX,CY")


def bag_name_warning(path: str | Path) -> str:
    """A one-line warning for output names some readers misread ('' if fine): rosbags' AnyReader (and
    ROS 1 tooling) takes a path ending in .bag for a ROS 1 bag, but a rosbag2 is a folder."""
    name = Path(path).name
    if name.endswith(".bag"):
        return (f"warning: output '{path}' ends in .bag, which rosbags' AnyReader reads as a ROS 1 bag; "
                f"prefer a folder name such as '{name[:-4]}_bag'")
    return ""


def _remove_partial(path: Path) -> None:
    """Remove what this run created at ``path`` (an interrupted or failed bag): complete or absent."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glue-ros-make-bag", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("output_bag")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="folder of images")
    source.add_argument("--synthetic", type=int, metavar="N", help="render N synthetic frames")
    parser.add_argument("--rate", type=float, help="frame rate for --images (Hz)")
    parser.add_argument("--rgb-txt", help="TUM rgb.txt with stamps for --images")
    parser.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="camera intrinsics (pixels)")
    parser.add_argument("--motion", default="mixed", help="synthetic motion: forward, sideways, orbit, rotation, mixed")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groundtruth", help="TUM ground-truth output (synthetic); default OUT_BAG.groundtruth.txt")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--compressed", default="", choices=("", "jpeg", "png"),
                        help="write sensor_msgs/CompressedImage instead of Image")
    parser.add_argument("--encoding", default="rgb8", choices=("rgb8", "bgr8", "mono8"))
    parser.add_argument("--image-topic", default=BagLayout.image_topic)
    parser.add_argument("--camera-info-topic", default=BagLayout.camera_info_topic)
    parser.add_argument("--frame-id", default=BagLayout.frame_id)
    args = parser.parse_args(argv)

    def body() -> int:
        output = Path(args.output_bag)
        if output.exists():  # checked before any work (BagWriter refuses it too)
            raise CliError(f"output bag '{output}' already exists (remove it or choose another name)")
        if not output.parent.is_dir():
            raise CliError(f"output bag '{output}': folder '{output.parent}' does not exist (create it first)")
        created: list[Path] = [output]
        if args.synthetic is not None:
            created.append(Path(args.groundtruth) if args.groundtruth else default_groundtruth_path(output))
        created = [path for path in created if not path.exists()]
        try:
            return write(output)
        except BaseException:  # error, Ctrl-C or SIGTERM: no half-written bag or ground truth stays behind
            for path in created:
                _remove_partial(path)
            raise

    def write(output: Path) -> int:
        from ..ros.bag_io import BagError

        layout = BagLayout(args.image_topic, args.camera_info_topic, args.frame_id, args.encoding, args.compressed)
        if bag_name_warning(output):
            print(bag_name_warning(output), file=sys.stderr)
        try:
            if args.synthetic is not None:
                if args.synthetic <= 0:
                    raise CliError("--synthetic needs a positive frame count")
                seq = make_synthetic_bag(args.output_bag, args.synthetic, motion=args.motion, width=args.width,
                                         height=args.height, fps=args.fps, seed=args.seed, storage=args.storage,
                                         layout=layout, groundtruth=args.groundtruth)
                gt = args.groundtruth or default_groundtruth_path(args.output_bag)
                print(f"wrote {len(seq)} synthetic frames to {args.output_bag}, ground truth {gt}")
                return 0
            directory = Path(args.images)
            if not directory.is_dir():
                raise CliError(f"--images {directory} is not a directory")
            if (args.rate is None) == (args.rgb_txt is None):
                raise CliError("give exactly one of --rate or --rgb-txt with --images")
            if args.rate is not None and not args.rate > 0:
                raise CliError("--rate must be > 0")
            if args.rgb_txt is not None:
                check_input_file(args.rgb_txt, "--rgb-txt")
            camera = parse_intrinsics(args.intrinsics) if args.intrinsics else None
            if camera is None:
                print(NO_INTRINSICS_WARNING, file=sys.stderr)
            frames = image_folder_frames(directory, args.rate, Path(args.rgb_txt) if args.rgb_txt else None)
            if camera is not None:
                first = next(frames)
                import itertools

                from ..geometry import CameraModel

                h, w = first[1].shape[:2]
                camera = CameraModel(camera.K, camera.D, camera.distortion_model, w, h)
                frames = itertools.chain([first], frames)
            count = write_bag(args.output_bag, frames, camera, storage=args.storage, layout=layout)
        except BagError as exc:
            raise CliError(str(exc)) from None
        print(f"wrote {count} frames to {args.output_bag}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
