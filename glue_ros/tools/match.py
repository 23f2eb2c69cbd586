"""glue-ros-match: match two images and write JSON and/or a picture.

    glue-ros-match IMAGE0 IMAGE1 [--profile NAME] [--params-file FILE.yaml] [--set NAME=VALUE ...]
                   [--json OUT.json] [--image OUT.png]

Inputs, outputs, the device and the weights are checked before any model loads; every failure is one
line and exit 2. Outputs are written to a temporary file and renamed: complete or absent (also on
Ctrl-C / SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .common import (CliError, add_param_args, check_input_file, check_output_file, params_from_args, preflight,
                     run_cli, write_bytes_atomic, write_text_atomic)

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB (or mono) uint8; CliError naming the path if it cannot be read."""
    import cv2

    file = check_input_file(path, "image")
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise CliError(f"image '{path}' could not be decoded (not an image file?)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def match_images(image0: np.ndarray, image1: np.ndarray, params: dict) -> dict:
    import torch

    from ..backends import build_pair
    from ..device import describe, resolve_device, resolve_dtype

    config, extractor, matcher = build_pair(params)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        features0, features1 = extractor.extract([image0, image1])
        t1 = time.perf_counter()
        pair = matcher.match([features0], [features1])[0]
        t2 = time.perf_counter()
    return {
        "keypoints0": features0.keypoints_numpy().tolist(),
        "keypoints1": features1.keypoints_numpy().tolist(),
        "matches": pair.matches.astype(int).tolist(),
        "scores": pair.scores.astype(float).tolist(),
        "stop_layer": pair.stop_layer,
        "pruned": [pair.pruned0, pair.pruned1],
        "timing_ms": {"extract": (t1 - t0) * 1e3, "match": (t2 - t1) * 1e3},
        "device": describe(device),
        "precision": str(dtype).replace("torch.", ""),
        "extractor": config.extractor.type,
        "matcher": config.matcher.type,
    }


def check_picture_path(path: str) -> str:
    """The picture's extension (OpenCV picks the format from it); CliError before any work when OpenCV
    cannot write it or the path cannot be written."""
    import cv2

    check_output_file(path, "--image")
    suffix = Path(path).suffix.lower()
    if not suffix or not cv2.haveImageWriter(f"x{suffix}"):
        raise CliError(f"--image '{path}': unknown picture extension '{suffix or '(none)'}' "
                       f"(use one of {', '.join(PICTURE_SUFFIXES)})")
    return suffix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glue-ros-match", description=__doc__.splitlines()[0])
    parser.add_argument("image0")
    parser.add_argument("image1")
    add_param_args(parser)
    parser.add_argument("--json", metavar="OUT.json", help="write keypoints, matches, scores, timings")
    parser.add_argument("--image", metavar="OUT.png", help="write a side-by-side picture of the matches")
    args = parser.parse_args(argv)

    def body() -> int:
        params = params_from_args(args)
        # Every input and output is checked before the models load: no minutes of work for nothing.
        if args.json:
            check_output_file(args.json, "--json")
        suffix = check_picture_path(args.image) if args.image else ""
        image0, image1 = read_image(args.image0), read_image(args.image1)
        preflight(params)  # device, then hub weights missing and offline: one error, at once
        result = match_images(image0, image1, params)
        if args.json:
            write_text_atomic(args.json, json.dumps(result), "--json")
        if args.image:
            import cv2

            from ..viz import draw_matches

            m = np.asarray(result["matches"], np.int64).reshape(-1, 2)
            k0 = np.asarray(result["keypoints0"], np.float32).reshape(-1, 2)
            k1 = np.asarray(result["keypoints1"], np.float32).reshape(-1, 2)
            picture = draw_matches(image0, image1, k0[m[:, 0]], k1[m[:, 1]], np.asarray(result["scores"]),
                                   keypoints0=k0, keypoints1=k1, title=f"{result['extractor']} + {result['matcher']}"
                                   f" on {result['device']}", timings_ms=result["timing_ms"])
            ok, encoded = cv2.imencode(suffix, picture)
            if not ok:
                raise CliError(f"--image '{args.image}': OpenCV could not encode a {suffix} picture")
            write_bytes_atomic(args.image, encoded.tobytes(), "--image")
        stop = f", stop layer {result['stop_layer']}" if result["stop_layer"] >= 0 else ""
        print(f"{len(result['keypoints0'])} / {len(result['keypoints1'])} keypoints, {len(result['matches'])} "
              f"matches{stop}; extract {result['timing_ms']['extract']:.1f} ms, match "
              f"{result['timing_ms']['match']:.1f} ms on {result['device']} ({result['precision']})")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
