"""Image processor for multi-camera GeoMIM and BEVDet models.

For every sample it turns the N camera images (``CAMERA_CHANNELS`` order) into a normalised ``(N, 3, H, W)`` input,
with each camera's exact 2D augmentation, and draws the sample's BEV augmentation. Batches are
``(B, N_cams, 3, H, W)`` float32.

Pixel coordinates are continuous, with pixel (i, j) covering [i, i + 1) x [j, j + 1), so the top-left pixel's centre
is (0.5, 0.5). PIL's resize, crop, flip and affine warps are exact in this convention, and so are BEVDet's
``post_rot`` / ``post_tran`` (``img_transform`` in ``PrepareImageInputs``) and the synthetic renderer's intrinsics. The
augmentation sends pixel p of the source image to ``p_aug = post_rot @ p + post_tran``.

The image augmentation is BEVDet's and bevfusion's (``ImageAug3D``), applied in this order:
1. resize;
2. crop to the output size, keeping the bottom rows (``bot_pct_lim``) at a horizontal offset;
3. horizontal flip;
4. rotation about the output centre.

Resize factors are relative to the source width: ``resize = 1`` maps the source width onto the output width. This
works for any source size. The original configs give the factors for 1600-pixel-wide nuScenes images (BEVDet:
704/1600 + U(-0.06, 0.11)); see :func:`nuscenes_resize`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

from .bev_augmentation import augment_boxes, augment_points, sample_bev_augmentation

ImageLike = Image.Image | np.ndarray | str | os.PathLike | dict

NUSCENES_IMAGE_WIDTH = 1600
# PIL's affine warp supports only these three filters; the resize uses the same one.
SUPPORTED_RESAMPLING = (PILImageResampling.NEAREST, PILImageResampling.BILINEAR, PILImageResampling.BICUBIC)


def nuscenes_resize(factor: float, output_width: int = 704) -> float:
    """A resize factor of the original configs, which apply to 1600-pixel-wide nuScenes images, as a factor of ours.

    Example: BEVDet's test resize 704/1600 = 0.44 is ``nuscenes_resize(0.44) = 1.0``.
    """
    return factor * NUSCENES_IMAGE_WIDTH / output_width


@dataclasses.dataclass(frozen=True)
class CameraAugmentation:
    """One camera's image augmentation. The fields do not depend on the source image size.

    Attributes:
        resize: factor of the scale that maps the source width onto the output width.
        crop_position: horizontal position of the crop in the resized image, from 0 (left edge) to 1 (right edge).
        bottom_crop: fraction of the resized height cut off at the bottom (``bot_pct_lim``). The crop takes the rows
            just above it, so the sky is cut first.
        flip: mirror left-right.
        rotation_deg: rotation about the output centre, counter-clockwise on screen (PIL's ``Image.rotate``).
    """

    resize: float = 1.0
    crop_position: float = 0.5
    bottom_crop: float = 0.0
    flip: bool = False
    rotation_deg: float = 0.0


def augment_image(
    image: Image.Image,
    augmentation: CameraAugmentation,
    output_size: tuple[int, int],
    resample: PILImageResampling = PILImageResampling.BICUBIC,
) -> tuple[Image.Image, np.ndarray]:
    """Apply ``augmentation`` to ``image`` and return the augmented image with its exact pixel transform.

    The result is that of resizing the whole image (with PIL's antialiasing) and then cropping, flipping and rotating
    it, but computed with less work: only the part of the resized image that the output shows is resampled (PIL's
    ``resize(box=...)`` samples it at exactly the same positions; its 8-bit rounding may differ by a level here and
    there), a JPEG that is not decoded yet is decoded at a reduced scale (1/2,
    1/4 or 1/8, by the DCT) when that is still at least the resized size, and the affine warp runs only when there is
    a rotation; crops and flips are copies.

    Args:
        image: the source image, any size and mode (converted to RGB).
        augmentation: what to apply.
        output_size: (H, W) of the output.
        resample: filter for the resize and for the warp.

    Returns:
        The (H, W) RGB output image, black where it samples outside the source, and the (3, 3) float64 homogeneous
        matrix that sends source pixels to output pixels.
    """
    height, width = output_size
    source_width, source_height = image.size
    scale = augmentation.resize * width / source_width
    resized_size = (max(1, round(source_width * scale)), max(1, round(source_height * scale)))
    # PIL maps the source rectangle exactly onto the resized one, so the rounding gives each axis its own scale.
    resize = np.diag([resized_size[0] / source_width, resized_size[1] / source_height, 1.0])
    crop_left = int(augmentation.crop_position * max(0, resized_size[0] - width))
    crop_top = int((1.0 - augmentation.bottom_crop) * resized_size[1]) - height
    flip = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if augmentation.flip else np.eye(3)
    cos, sin = np.cos(np.radians(augmentation.rotation_deg)), np.sin(np.radians(augmentation.rotation_deg))
    # With v pointing down, this matrix turns the picture counter-clockwise on screen for a positive angle.
    rotation = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    centre = _translation(width / 2, height / 2)
    warp = centre @ rotation @ np.linalg.inv(centre) @ flip @ _translation(-crop_left, -crop_top)

    # The part of the resized image the output samples, with a margin for the filter, in whole resized pixels.
    corners = np.linalg.inv(warp) @ np.array([[0, width, 0, width], [0, 0, height, height], [1, 1, 1, 1]])
    margin = 0 if augmentation.rotation_deg == 0 else 3
    left, top = (max(0, int(np.floor(corners[axis].min())) - margin) for axis in (0, 1))
    right = min(resized_size[0], int(np.ceil(corners[0].max())) + margin)
    bottom = min(resized_size[1], int(np.ceil(corners[1].max())) + margin)
    output = Image.new("RGB", (width, height))
    if right <= left or bottom <= top:
        return output, warp @ resize

    if image.format == "JPEG":
        # A no-op once the file is decoded; otherwise the decoder shrinks by 2, 4 or 8 while staying >= resized_size.
        image.draft("RGB", resized_size)
    image = image.convert("RGB")
    source = np.array([source_width, source_height], dtype=np.float64)
    reduction = np.round(source / np.array(image.size))  # 1, or the DCT scaling: decoded pixel k = source [k r, k r + r)
    to_decoded = source / reduction / np.array(resized_size)  # decoded pixels per resized pixel, per axis
    box = (left * to_decoded[0], top * to_decoded[1], right * to_decoded[0], bottom * to_decoded[1])
    patch = image.resize((right - left, bottom - top), resample, box=box)  # resized[top:bottom, left:right]

    patch_to_output = warp @ _translation(left, top)
    if augmentation.rotation_deg == 0:
        if augmentation.flip:
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = round(patch_to_output[0, 2]) - patch.width
        else:
            left = round(patch_to_output[0, 2])
        output.paste(patch, (left, round(patch_to_output[1, 2])))
    else:
        # For every output pixel, PIL's affine warp asks where to sample the input, i.e. it needs the inverse map.
        inverse = tuple(np.linalg.inv(patch_to_output)[:2].ravel())
        output = patch.transform((width, height), Image.Transform.AFFINE, inverse, resample)
    return output, warp @ resize


class GeoMIMImageProcessorKwargs(ImagesKwargs, total=False):
    """The settings of :class:`GeoMIMImageProcessor`, so that ``from_pretrained(..., setting=value)`` overrides them."""

    resize_range: tuple[float, float]
    test_resize: float
    bottom_crop_range: tuple[float, float]
    flip_probability: float
    rotation_range_deg: tuple[float, float]
    channel_order: str
    bev_rotation_range_deg: tuple[float, float]
    bev_scale_range: tuple[float, float]
    bev_flip_x_probability: float
    bev_flip_y_probability: float


class GeoMIMImageProcessor(BaseImageProcessor):
    r"""Multi-camera image processor: per-camera augmentation with its exact affine, normalisation, BEV augmentation.

    The defaults are GeoMIM pretraining: bevfusion's ``ImageAug3D`` at 256x704 with resize 0.38-0.55 (train) and 0.48
    (test) of 1600-pixel nuScenes images, rotation +-5.4 degrees, flip p 0.5, no bottom crop; true RGB with ImageNet
    mean/std; and ``RandomFlip3D`` (BEV x- and y-flip, p 0.5 each). :meth:`bevdet_finetuning` gives the finetuning
    preset.

    Args:
        size: output ``{"height": H, "width": W}``.
        resize_range: training resize, uniform, as factors of the fit-width scale (see :func:`nuscenes_resize`).
        test_resize: evaluation resize. The evaluation crop is centred horizontally.
        bottom_crop_range: fraction of the resized height cut off at the bottom: uniform in training, the midpoint in
            evaluation (``bot_pct_lim``).
        flip_probability: chance of a horizontal image flip in training.
        rotation_range_deg: training image rotation, uniform, counter-clockwise on screen.
        resample: filter for the resize and the warp: nearest, bilinear or bicubic (the default of ``Image.resize``,
            which the original pipelines call).
        image_mean, image_std: per channel position, on the 0-1 scale.
        channel_order: ``"rgb"``, or ``"bgr"`` to reproduce BEVDet finetuning. BEVDet loads RGB with PIL, and
            ``mmcv.imnormalize(..., to_rgb=True)`` then swaps it to B, G, R before it subtracts the RGB mean and
            divides by the RGB std (HuangJunJie2017/BEVDet #274). Use ``"bgr"`` with BEVDet-finetuned weights, and
            ``"rgb"`` (as in GeoMIM pretraining) otherwise.
        bev_rotation_range_deg, bev_scale_range, bev_flip_x_probability, bev_flip_y_probability: the BEV
            augmentation in training (:func:`~geomim_hf.data.bev_augmentation.sample_bev_augmentation`).
    """

    valid_kwargs = GeoMIMImageProcessorKwargs
    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: dict[str, int] | None = None,
        resize_range: tuple[float, float] = (nuscenes_resize(0.38), nuscenes_resize(0.55)),
        test_resize: float = nuscenes_resize(0.48),
        bottom_crop_range: tuple[float, float] = (0.0, 0.0),
        flip_probability: float = 0.5,
        rotation_range_deg: tuple[float, float] = (-5.4, 5.4),
        resample: PILImageResampling | int = PILImageResampling.BICUBIC,
        image_mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        channel_order: Literal["rgb", "bgr"] = "rgb",
        bev_rotation_range_deg: tuple[float, float] = (0.0, 0.0),
        bev_scale_range: tuple[float, float] = (1.0, 1.0),
        bev_flip_x_probability: float = 0.5,
        bev_flip_y_probability: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.size = dict(size) if size is not None else {"height": 256, "width": 704}
        self.resize_range = _check_range("resize_range", resize_range)
        self.test_resize = float(test_resize)
        self.bottom_crop_range = _check_range("bottom_crop_range", bottom_crop_range, low=0.0, high=1.0)
        self.flip_probability = _check_probability("flip_probability", flip_probability)
        self.rotation_range_deg = _check_range("rotation_range_deg", rotation_range_deg)
        self.resample = PILImageResampling(resample)
        self.image_mean = tuple(float(value) for value in image_mean)
        self.image_std = tuple(float(value) for value in image_std)
        self.channel_order = channel_order
        self.bev_rotation_range_deg = _check_range("bev_rotation_range_deg", bev_rotation_range_deg)
        self.bev_scale_range = _check_range("bev_scale_range", bev_scale_range)
        self.bev_flip_x_probability = _check_probability("bev_flip_x_probability", bev_flip_x_probability)
        self.bev_flip_y_probability = _check_probability("bev_flip_y_probability", bev_flip_y_probability)
        if min(self.resize_range[0], self.test_resize, self.bev_scale_range[0]) <= 0:
            raise ValueError(f"resize_range, test_resize and bev_scale_range must be positive, got {resize_range}, "
                             f"{test_resize} and {bev_scale_range}")
        if set(self.size) != {"height", "width"} or min(self.size.values()) < 1:
            raise ValueError(f"size must be {{'height': H, 'width': W}} with positive H and W, got {size}")
        if self.resample not in SUPPORTED_RESAMPLING:
            raise ValueError(f"resample must be one of {[r.name for r in SUPPORTED_RESAMPLING]}, got {self.resample!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean and image_std need 3 values, std > 0; got {image_mean} and {image_std}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")

    @classmethod
    def geomim_pretraining(cls, **overrides) -> GeoMIMImageProcessor:
        """GeoMIM pretraining (bevfusion's ``ImageAug3D`` and ``RandomFlip3D``): the class defaults."""
        return cls(**overrides)

    @classmethod
    def bevdet_finetuning(cls, **overrides) -> GeoMIMImageProcessor:
        """BEVDet finetuning (``bevdet-swinb-4d-256x704-cbgs-geomim.py``). Images: resize 704/1600 + U(-0.06, 0.11)
        in training and 704/1600 at test, with the sky cropped and the crop centred, flip p 0.5, rotation
        U(-5.4, 5.4) degrees, BGR order (the BEVDet quirk). BDA: rotation U(-22.5, 22.5) degrees, scale
        U(0.95, 1.05), x- and y-flip p 0.5 each."""
        preset = dict(
            resize_range=(nuscenes_resize(704 / 1600 - 0.06), nuscenes_resize(704 / 1600 + 0.11)),
            test_resize=1.0,
            channel_order="bgr",
            bev_rotation_range_deg=(-22.5, 22.5),
            bev_scale_range=(0.95, 1.05),
        )
        return cls(**{**preset, **overrides})

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        return self.size["height"], self.size["width"]

    def sample_camera_augmentation(self, generator: torch.Generator | None = None) -> CameraAugmentation:
        """A random training augmentation for one camera. It always draws 5 numbers from ``generator``."""
        draws = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        resize, crop_position, bottom_crop, flip, rotation = draws
        return CameraAugmentation(
            resize=_uniform(self.resize_range, resize),
            crop_position=crop_position,
            bottom_crop=_uniform(self.bottom_crop_range, bottom_crop),
            flip=flip < self.flip_probability,
            rotation_deg=_uniform(self.rotation_range_deg, rotation),
        )

    def evaluation_augmentation(self) -> CameraAugmentation:
        """The fixed evaluation augmentation: test resize, crop centred horizontally."""
        return CameraAugmentation(resize=self.test_resize, bottom_crop=sum(self.bottom_crop_range) / 2)

    def sample_bev_augmentation(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random training ``bda`` (4, 4) for one sample. It always draws 4 numbers from ``generator``."""
        return sample_bev_augmentation(self.bev_rotation_range_deg, self.bev_scale_range, self.bev_flip_x_probability,
                                       self.bev_flip_y_probability, generator)

    def sample_augmentations(
        self, batch_size: int, num_cameras: int, augment: bool, generator: torch.Generator | None = None
    ) -> tuple[list[list[CameraAugmentation]], torch.Tensor]:
        """Every camera's image augmentation and every sample's BEV augmentation (B, 4, 4) for a batch: random ones
        in the documented draw order (see :meth:`preprocess`) when ``augment``, the evaluation ones otherwise."""
        cameras, bev = [], []
        for _ in range(batch_size):
            if augment:
                cameras.append([self.sample_camera_augmentation(generator) for _ in range(num_cameras)])
                bev.append(self.sample_bev_augmentation(generator))
            else:
                cameras.append([self.evaluation_augmentation()] * num_cameras)
                bev.append(torch.eye(4))
        return cameras, torch.stack(bev)

    def preprocess(
        self,
        images: Sequence[Sequence[ImageLike]] | Sequence[ImageLike],
        camera_intrinsics: Sequence | np.ndarray | torch.Tensor,
        camera_to_ego: Sequence | np.ndarray | torch.Tensor,
        gt_boxes: Sequence | np.ndarray | torch.Tensor | None = None,
        points: Sequence | np.ndarray | torch.Tensor | None = None,
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
        augmentations: tuple[Sequence[Sequence[CameraAugmentation]], torch.Tensor] | None = None,
    ) -> BatchFeature:
        """Augment (if ``augment``), normalise and batch the camera images of B samples.

        Pass a batch (a list of samples, each a list of N images), or one sample (a list of N images, with
        unbatched intrinsics, extrinsics, boxes and points). Images are PIL images, (H, W, 3) uint8 arrays or file
        paths, in ``CAMERA_CHANNELS`` order. Sizes may differ from camera to camera.

        Args:
            images: B x N images.
            camera_intrinsics: (B, N, 3, 3) of the source images.
            camera_to_ego: (B, N, 4, 4), into the frame of ``gt_boxes`` and ``points``. For nuScenes this is the
                LIDAR_TOP key frame's ego frame.
            gt_boxes: optional, B arrays (M_b, 9) ``[x, y, z, w, l, h, yaw, vx, vy]``.
            points: optional, B arrays (P_b, C >= 3).
            augment: draw the random training augmentation. Otherwise apply the fixed evaluation one, with no BEV
                augmentation.
            generator: source of the random draws, for reproducible training augmentation. Samples draw in turn:
                5 numbers per camera, in camera order, then 4 for the BEV augmentation. A batch therefore gets the
                augmentations that its samples would get one after the other.
            augmentations: the camera and BEV augmentations to apply, as :meth:`sample_augmentations` returns them,
                instead of drawing them (``augment`` and ``generator`` are then not used): BEVDet4D applies the key
                frame's to the previous frame.

        Returns:
            A :class:`BatchFeature` (float32 tensors) with:
            - ``pixel_values`` (B, N, 3, H, W);
            - ``camera_intrinsics`` (B, N, 3, 3) and ``camera_to_ego`` (B, N, 4, 4), unchanged by the augmentation;
            - ``post_rot`` (B, N, 3, 3) and ``post_tran`` (B, N, 3), with ``p_aug = post_rot @ p + post_tran``
              (the third row and column of ``post_rot`` are those of the identity, and ``post_tran[2]`` is 0);
            - ``bev_augmentation`` (B, 4, 4), the ``bda`` that sends ego points to the augmented ego frame;
            - ``gt_boxes`` and ``points``, if given: lists of B tensors, moved by ``bev_augmentation``.
        """
        required = {"images": images, "camera_intrinsics": camera_intrinsics, "camera_to_ego": camera_to_ego}
        for name, value in required.items():
            if value is None or len(value) == 0:
                raise ValueError(f"{name} is missing: pass one entry per sample, or per camera for a single sample")
        if not isinstance(images[0], (list, tuple)):  # one sample: give it a batch dimension
            images, camera_intrinsics, camera_to_ego = [images], [camera_intrinsics], [camera_to_ego]
            gt_boxes = None if gt_boxes is None else [gt_boxes]
            points = None if points is None else [points]
        intrinsics = _stack("camera_intrinsics", camera_intrinsics)
        extrinsics = _stack("camera_to_ego", camera_to_ego)
        _check_cameras(images, intrinsics, extrinsics)
        for name, per_sample in (("gt_boxes", gt_boxes), ("points", points)):
            if per_sample is not None and len(per_sample) != len(images):
                raise ValueError(f"{name} has {len(per_sample)} samples but images has {len(images)}")

        batch, cameras = intrinsics.shape[:2]
        if augmentations is None:
            augmentations = self.sample_augmentations(batch, cameras, augment, generator)
        camera_augmentations, bev_augmentation = augmentations
        if len(camera_augmentations) != batch or any(len(sample) != cameras for sample in camera_augmentations) or \
                tuple(bev_augmentation.shape) != (batch, 4, 4):
            raise ValueError(f"augmentations must hold {batch} x {cameras} camera augmentations and a ({batch}, 4, 4) "
                             f"BEV augmentation")
        augmented_images, affines = [], []
        for sample_index, sample_images in enumerate(images):
            for camera_index, image in enumerate(sample_images):
                source = _load_image(image, f"images[{sample_index}][{camera_index}]")
                augmented, affine = augment_image(source, camera_augmentations[sample_index][camera_index],
                                                  self.output_size, self.resample)
                augmented_images.append(tvF.pil_to_tensor(augmented))
                affines.append(affine)

        affine = torch.tensor(np.stack(affines), dtype=torch.float32).view(batch, cameras, 3, 3)
        post_rot = affine.clone()
        post_rot[..., :2, 2] = 0.0
        post_tran = torch.cat([affine[..., :2, 2], torch.zeros(batch, cameras, 1)], dim=-1)
        data = {
            "pixel_values": self._normalize(torch.stack(augmented_images).view(batch, cameras, 3, *self.output_size)),
            "camera_intrinsics": intrinsics,
            "camera_to_ego": extrinsics,
            "post_rot": post_rot,
            "post_tran": post_tran,
            "bev_augmentation": bev_augmentation,
        }
        if gt_boxes is not None:
            data["gt_boxes"] = [augment_boxes(_as_float32(boxes), bda)
                                for boxes, bda in zip(gt_boxes, bev_augmentation)]
        if points is not None:
            data["points"] = [augment_points(_as_float32(cloud), bda)
                              for cloud, bda in zip(points, bev_augmentation)]
        return BatchFeature(data=data)

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 RGB -> float32 in ``channel_order``, normalised with the mean and std."""
        pixels = pixels.float() / 255.0
        if self.channel_order == "bgr":
            pixels = pixels.flip(-3)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _uniform(bounds: tuple[float, float], draw: float) -> float:
    """The point at fraction ``draw`` of the interval ``bounds``."""
    return bounds[0] + (bounds[1] - bounds[0]) * draw


def _check_range(
    name: str, bounds: Sequence[float], low: float = -float("inf"), high: float = float("inf")
) -> tuple[float, float]:
    """``bounds`` as a (low, high) tuple of floats, checked to be ordered and within [low, high]."""
    if len(bounds) != 2 or not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(f"{name} must be (low, high) with {low} <= low <= high <= {high}, got {bounds}")
    return float(bounds[0]), float(bounds[1])


def _check_probability(name: str, probability: float) -> float:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {probability}")
    return float(probability)


def _stack(name: str, per_sample: Sequence | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-sample camera matrices (a list of (N, k, k) or one (B, N, k, k)) as one float32 (B, N, k, k) tensor."""
    if not isinstance(per_sample, (list, tuple)):
        return _as_float32(per_sample)
    matrices = [_as_float32(sample) for sample in per_sample]
    if len({matrix.shape for matrix in matrices}) > 1:
        raise ValueError(f"{name} must have one shape (N, k, k) for all samples, got "
                         f"{[tuple(matrix.shape) for matrix in matrices]}")
    return torch.stack(matrices)


def _as_float32(values: Sequence | np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values) if isinstance(values, (list, tuple)) else values, dtype=torch.float32)


def _check_cameras(images: Sequence[Sequence[ImageLike]], intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> None:
    """Every sample has as many images as its intrinsics and extrinsics have cameras."""
    if intrinsics.ndim != 4 or intrinsics.shape[2:] != (3, 3):
        raise ValueError(f"camera_intrinsics must have shape (B, N, 3, 3), got {tuple(intrinsics.shape)}")
    if extrinsics.shape != (*intrinsics.shape[:2], 4, 4):
        raise ValueError(f"camera_to_ego must have shape (B, N, 4, 4) = {(*intrinsics.shape[:2], 4, 4)} to match "
                         f"camera_intrinsics, got {tuple(extrinsics.shape)}")
    if len(images) != intrinsics.shape[0]:
        raise ValueError(f"images has {len(images)} samples but camera_intrinsics has {intrinsics.shape[0]}")
    for sample_index, sample_images in enumerate(images):
        if len(sample_images) != intrinsics.shape[1]:
            raise ValueError(f"sample {sample_index} has {len(sample_images)} images but camera_intrinsics has "
                             f"{intrinsics.shape[1]} cameras")


def _load_image(image: ImageLike, name: str) -> Image.Image:
    """A PIL image from a PIL image, an (H, W, 3) uint8 array, a file path, or a ``datasets`` image that was not
    decoded (``{"path": ..., "bytes": ...}``); ``name`` is for the errors. Files are opened, not decoded, so that
    :func:`augment_image` can decode a JPEG at reduced scale."""
    if image is None:
        raise ValueError(f"{name} is missing (None)")
    if isinstance(image, dict) and {"path", "bytes"} >= set(image):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
        if image is None:
            raise ValueError(f"{name} is an undecoded datasets image with neither bytes nor a path")
    if isinstance(image, (str, os.PathLike, io.BytesIO)):
        image = Image.open(image)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a PIL image, an (H, W, 3) uint8 array, a file path or an undecoded datasets "
                        f"image, got {type(image).__name__}")
    return image


__all__ = [
    "CameraAugmentation",
    "GeoMIMImageProcessor",
    "augment_image",
    "nuscenes_resize",
]
