"""What the packaged learned extractors (ALIKED, DISK, XFeat) share: loading through the one resolver,
construction from the parameters, and extraction through the shared image preparation. Each model
file adds only its network, ``from_state_dict`` (original key names → its own, architecture from the
tensors) and ``forward`` on a prepared batch."""
from __future__ import annotations

from typing import Mapping, TypeVar

import torch
from torch import nn

from ..config import DEFAULT_EXTRACTOR_WEIGHTS, ExtractorConfig
from ..features import Features, Images
from ..interfaces import DetectionOptions
from . import imaging
from .weights import WeightsError, load_checkpoint

Model = TypeVar("Model", bound="LearnedExtractor")
LOW_PRECISION = (torch.float16, torch.bfloat16)  # compute dtypes that run the CNNs under autocast


class LearnedExtractor(nn.Module):
    features: str  # feature family = extractor.type = the checkpoint's model_type, if it names one
    rgb: bool  # the network takes RGB (else gray)
    options: DetectionOptions

    @classmethod
    def from_state_dict(cls: type[Model], state_dict: Mapping[str, torch.Tensor],
                        options: DetectionOptions | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, *, source: str = "state dict") -> Model:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls: type[Model], weights: str = "", revision: str = "", *, parameter: str = "",
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        options: DetectionOptions | None = None) -> Model:
        """Load ``weights`` (default: this family's packaged file) in any form ``load_checkpoint``
        resolves: packaged name, .pth/.pt/.safetensors file, directory or hub repo id."""
        weights = weights or DEFAULT_EXTRACTOR_WEIGHTS[cls.features]
        checkpoint = load_checkpoint(weights, revision, parameter=parameter)
        model_type = (checkpoint.config or {}).get("model_type", cls.features)
        if model_type != cls.features:
            raise WeightsError(f"weights '{weights}' are a '{model_type}' checkpoint, not {cls.features} "
                               f"(check {parameter or 'extractor.weights'})")
        return cls.from_state_dict(checkpoint.state_dict, options, device, dtype, source=weights)

    @classmethod
    def from_config(cls: type[Model], config: ExtractorConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Model:
        return cls.from_pretrained(config.resolved_weights, config.revision, parameter="extractor.weights",
                                   device=device, dtype=dtype, options=DetectionOptions.from_config(config))

    def placed(self: Model, device: torch.device | str, dtype: torch.dtype) -> Model:
        """Move to ``device``; NHWC memory for low precision (oneDNN/cuDNN low-precision convs prefer it)."""
        self.to(device)
        if dtype in LOW_PRECISION:
            self.to(memory_format=torch.channels_last)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def extract(self, images: Images) -> list[Features]:
        """Detect and describe on one image, a list of images (sizes may differ) or a batch (see
        :mod:`glue_ros.models.imaging` for the accepted forms); keypoints in each input's pixels."""
        return imaging.extract_batched(images, self.device, rgb=self.rgb, resize_max=self.options.resize_max,
                                       forward=self.forward)
