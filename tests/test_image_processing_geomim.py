"""GeoMIMImageProcessor: each camera's affine is exact for the image it produces, on closed forms and on a synthetic
nuScenes sample; presets, determinism, serialisation, the camera vector and input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pyquaternion import Quaternion
from transformers import AutoImageProcessor
from transformers.image_utils import PILImageResampling

from geomim_hf.data.bev_augmentation import augment_boxes, augment_points
from geomim_hf.data.image_processing_geomim import (
    CameraAugmentation,
    GeoMIMImageProcessor,
    augment_image,
    nuscenes_resize,
)
from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS


def blank_sample(width: int, height: int, cameras: int = len(CAMERA_CHANNELS)) -> tuple[list, np.ndarray, np.ndarray]:
    """``cameras`` grey images of width x height, with identity-like intrinsics and extrinsics."""
    images = [Image.new("RGB", (width, height), (128, 128, 128)) for _ in range(cameras)]
    intrinsics = np.array([[500.0, 0.0, width / 2], [0.0, 500.0, height / 2], [0.0, 0.0, 1.0]])
    return images, np.tile(intrinsics, (cameras, 1, 1)), np.tile(np.eye(4), (cameras, 1, 1))


def step_by_step(u: float, v: float, augmentation: CameraAugmentation, source_size: tuple[int, int],
                 output_size: tuple[int, int]) -> tuple[float, float]:
    """Where BEVDet's ``img_transform`` sends source pixel (u, v): one operation at a time, as PIL performs them."""
    (source_width, source_height), (height, width) = source_size, output_size
    scale = augmentation.resize * width / source_width
    resized_width, resized_height = round(source_width * scale), round(source_height * scale)
    u, v = u * resized_width / source_width, v * resized_height / source_height
    u -= int(augmentation.crop_position * max(0, resized_width - width))
    v -= int((1 - augmentation.bottom_crop) * resized_height) - height
    if augmentation.flip:
        u = width - u
    # PIL's rotate turns the picture counter-clockwise on screen (v points down) about the output centre.
    cos, sin = math.cos(math.radians(augmentation.rotation_deg)), math.sin(math.radians(augmentation.rotation_deg))
    du, dv = u - width / 2, v - height / 2
    return width / 2 + cos * du + sin * dv, height / 2 - sin * du + cos * dv


@pytest.mark.parametrize("source_size", [(1600, 900), (352, 128)])
@pytest.mark.parametrize(
    "augmentation",
    [
        CameraAugmentation(),
        CameraAugmentation(resize=0.9, crop_position=0.0, bottom_crop=0.0, flip=False, rotation_deg=0.0),
        CameraAugmentation(resize=1.2, crop_position=0.7, bottom_crop=0.1, flip=True, rotation_deg=4.0),
        CameraAugmentation(resize=1.1, crop_position=1.0, bottom_crop=0.05, flip=False, rotation_deg=-5.4),
    ],
)
def test_affine_matches_the_step_by_step_augmentation(source_size, augmentation):
    image = Image.new("RGB", source_size)
    output, affine = augment_image(image, augmentation, (256, 704))
    assert output.size == (704, 256)
    for u, v in [(0.0, 0.0), (source_size[0], source_size[1]), (0.3 * source_size[0], 0.8 * source_size[1])]:
        expected = step_by_step(u, v, augmentation, source_size, (256, 704))
        np.testing.assert_allclose(affine @ [u, v, 1.0], [*expected, 1.0], atol=1e-9)


@pytest.mark.parametrize(
    "augmentation",
    [
        CameraAugmentation(resize=1.17, crop_position=0.3, bottom_crop=0.1, flip=True, rotation_deg=5.0),
        CameraAugmentation(resize=0.9, crop_position=0.8, bottom_crop=0.0, flip=True, rotation_deg=-4.0),
    ],
)
def test_warp_moves_a_blob_to_the_sub_pixel_the_affine_says(augmentation):
    """The intensity centroid of a blurred dot follows the affine to a few hundredths of a pixel, which pins down the
    pixel convention (a half-pixel slip would show)."""
    v, u = np.mgrid[0:300, 0:800] + 0.5  # pixel centres
    centre = np.array([400.3, 150.7])
    dot = np.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / (2 * 6.0**2))
    image = Image.fromarray(np.repeat(np.round(255 * dot).astype(np.uint8)[..., None], 3, axis=2))
    output, affine = augment_image(image, augmentation, (128, 352), resample=PILImageResampling.BILINEAR)
    brightness = np.asarray(output)[..., 0].astype(float)
    v_out, u_out = np.mgrid[0:128, 0:352] + 0.5
    centroid = [(brightness * u_out).sum() / brightness.sum(), (brightness * v_out).sum() / brightness.sum()]
    np.testing.assert_allclose(centroid, (affine @ [*centre, 1.0])[:2], atol=0.02)


def test_evaluation_resize_and_crop_hand_computed():
    images, intrinsics, camera_to_ego = blank_sample(1600, 900, cameras=2)
    # BEVDet: 0.44 gives 704 x 396, of which the bottom 256 rows are kept.
    bevdet = GeoMIMImageProcessor.bevdet_finetuning()(images, intrinsics, camera_to_ego)
    torch.testing.assert_close(bevdet["post_rot"][0, :, :2, :2], torch.diag(torch.tensor([0.44, 0.44])).expand(2, 2, 2))
    torch.testing.assert_close(bevdet["post_tran"][0], torch.tensor([[0.0, -140.0, 0.0]] * 2))
    # GeoMIM pretraining: 0.48 gives 768 x 432, cropped 32 columns from the left and 176 rows from the top.
    geomim = GeoMIMImageProcessor.geomim_pretraining()(images, intrinsics, camera_to_ego)
    torch.testing.assert_close(geomim["post_rot"][0, :, :2, :2], torch.diag(torch.tensor([0.48, 0.48])).expand(2, 2, 2))
    torch.testing.assert_close(geomim["post_tran"][0], torch.tensor([[-32.0, -176.0, 0.0]] * 2))
    torch.testing.assert_close(geomim["post_rot"][..., 2, :], torch.tensor([0.0, 0.0, 1.0]).expand(1, 2, 3))
    torch.testing.assert_close(geomim["bev_augmentation"], torch.eye(4)[None])
    assert geomim["pixel_values"].shape == (1, 2, 3, 256, 704)


def test_evaluation_is_deterministic():
    processor = GeoMIMImageProcessor(size={"height": 64, "width": 176})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in CAMERA_CHANNELS]
    _, intrinsics, camera_to_ego = blank_sample(160, 90)
    first = processor(images, intrinsics, camera_to_ego)
    second = processor(images, intrinsics, camera_to_ego)
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0)


def test_seed_reproduces_training_augmentation():
    processor = GeoMIMImageProcessor.bevdet_finetuning(size={"height": 64, "width": 176})
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in CAMERA_CHANNELS] for _ in range(2)]
    _, intrinsics, camera_to_ego = blank_sample(160, 90)
    boxes = [torch.tensor([[5.0, 1.0, 0.0, 2.0, 4.0, 1.5, 0.1, 1.0, 0.0]]), torch.zeros(0, 9)]
    points = [torch.randn(10, 5), torch.randn(3, 4)]

    def run(seed: int):
        return processor(images, [intrinsics] * 2, [camera_to_ego] * 2, boxes, points, augment=True,
                         generator=torch.Generator().manual_seed(seed))

    first, again, other = run(0), run(0), run(1)
    for key in ("pixel_values", "post_rot", "post_tran", "bev_augmentation"):
        torch.testing.assert_close(first[key], again[key], atol=0, rtol=0)
    assert not torch.equal(first["post_rot"], other["post_rot"])
    assert not torch.equal(first["bev_augmentation"], other["bev_augmentation"])
    generator = torch.Generator().manual_seed(0)  # the samples one after the other get the batch's augmentations
    for sample in range(2):
        alone = processor(images[sample], intrinsics, camera_to_ego, augment=True, generator=generator)
        torch.testing.assert_close(alone["pixel_values"][0], first["pixel_values"][sample], atol=0, rtol=0)
        torch.testing.assert_close(alone["bev_augmentation"][0], first["bev_augmentation"][sample], atol=0, rtol=0)
    for sample in range(2):  # boxes and points go where the sample's bda sends them
        bda = first["bev_augmentation"][sample]
        torch.testing.assert_close(first["gt_boxes"][sample], augment_boxes(boxes[sample], bda))
        torch.testing.assert_close(first["points"][sample], augment_points(points[sample], bda))


def test_training_draws_stay_in_their_ranges():
    processor = GeoMIMImageProcessor.bevdet_finetuning(size={"height": 64, "width": 176}, flip_probability=1.0)
    generator = torch.Generator().manual_seed(3)
    draws = [processor.sample_camera_augmentation(generator) for _ in range(200)]
    assert all(draw.flip for draw in draws)
    resize = [draw.resize for draw in draws]
    assert nuscenes_resize(0.38) <= min(resize) < nuscenes_resize(0.40) and nuscenes_resize(0.53) < max(resize) <= 1.25
    rotation = [draw.rotation_deg for draw in draws]
    assert -5.4 <= min(rotation) < -5.0 and 5.0 < max(rotation) <= 5.4


def test_augmented_image_shows_each_object_where_its_projection_moves(nusc):
    """Object centres, projected with the returned intrinsics, extrinsics and affine, show in the augmented image the
    colour they have in the source image."""
    sample = nusc.sample[0]
    images, intrinsics, camera_to_ego, centres_in_camera = [], [], [], []
    for channel in CAMERA_CHANNELS:
        path, boxes, camera_intrinsic = nusc.get_sample_data(sample["data"][channel])
        record = nusc.get("sample_data", sample["data"][channel])
        calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        extrinsics = np.eye(4)
        extrinsics[:3, :3] = Quaternion(calibration["rotation"]).rotation_matrix
        extrinsics[:3, 3] = calibration["translation"]
        images.append(np.asarray(Image.open(path).convert("RGB")))
        intrinsics.append(camera_intrinsic)
        camera_to_ego.append(extrinsics)
        centres_in_camera.append(np.array([box.center for box in boxes]).reshape(-1, 3))
    height, width = images[0].shape[:2]
    processor = GeoMIMImageProcessor(size={"height": height, "width": width})
    out = processor(images, np.stack(intrinsics), np.stack(camera_to_ego), augment=True,
                    generator=torch.Generator().manual_seed(4))
    flipped = out["post_rot"][0, :, 0, 0] < 0
    assert flipped.any() and not flipped.all(), "the seed should flip some cameras and not others"

    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    augmented = ((out["pixel_values"][0] * std[:, None, None] + mean[:, None, None]) * 255).round()
    augmented = augmented.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    compared = []  # camera index per compared object
    for camera, centres in enumerate(centres_in_camera):
        centres_ego = centres @ camera_to_ego[camera][:3, :3].T + camera_to_ego[camera][:3, 3]
        # Project with what the processor returned, as the model's geometry will.
        ego_to_camera = torch.linalg.inv(out["camera_to_ego"][0, camera].double()).numpy()
        in_camera = centres_ego @ ego_to_camera[:3, :3].T + ego_to_camera[:3, 3]
        pixels = in_camera @ out["camera_intrinsics"][0, camera].double().numpy().T
        pixels = pixels[:, :2] / pixels[:, 2:]
        moved = pixels @ out["post_rot"][0, camera, :2, :2].double().numpy().T + out["post_tran"][0, camera, :2].numpy()
        source = images[camera].astype(float)
        for (u, v), (u_aug, v_aug), depth in zip(np.floor(pixels).astype(int), np.floor(moved).astype(int),
                                                 in_camera[:, 2]):
            inside = 3 <= u < width - 3 and 3 <= v < height - 3 and 0 <= u_aug < width and 0 <= v_aug < height
            # Interpolation mixes neighbours: compare only where the source is flat within 3 pixels.
            if depth < 1.0 or not inside or np.abs(source[v - 3:v + 4, u - 3:u + 4] - source[v, u]).max() > 10:
                continue
            np.testing.assert_allclose(augmented[camera, v_aug, u_aug], source[v, u], atol=6,
                                       err_msg=f"camera {CAMERA_CHANNELS[camera]}, source pixel {(u, v)}")
            compared.append(camera)
    assert len(compared) >= 5 and len(set(compared)) >= 3 and flipped[compared].any(), compared


def test_channel_order_reproduces_the_bevdet_bgr_quirk():
    images = [Image.new("RGB", (32, 16), (255, 0, 0))]  # pure red
    intrinsics, camera_to_ego = np.eye(3)[None], np.eye(4)[None]
    rgb = GeoMIMImageProcessor(size={"height": 16, "width": 32})(images, intrinsics, camera_to_ego)["pixel_values"]
    bgr = GeoMIMImageProcessor.bevdet_finetuning(size={"height": 16, "width": 32})(images, intrinsics, camera_to_ego)
    # mmcv.imnormalize(to_rgb=True) on PIL's RGB: channel 0 holds blue, normalised with the red mean and std.
    expected_bgr = torch.tensor([(0 - 123.675) / 58.395, (0 - 116.28) / 57.12, (255 - 103.53) / 57.375])
    expected_rgb = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    torch.testing.assert_close(bgr["pixel_values"][0, 0, :, 8, 16], expected_bgr)
    torch.testing.assert_close(rgb[0, 0, :, 8, 16], expected_rgb)


def test_save_and_load_reproduce_every_setting(tmp_path):
    processor = GeoMIMImageProcessor(
        size={"height": 128, "width": 352}, resize_range=(0.9, 1.1), test_resize=1.05, bottom_crop_range=(0.0, 0.1),
        flip_probability=0.25, rotation_range_deg=(-3.0, 2.0), resample=2, image_mean=(0.5, 0.4, 0.3),
        image_std=(0.2, 0.3, 0.4), channel_order="bgr", bev_rotation_range_deg=(-10.0, 10.0),
        bev_scale_range=(0.9, 1.1), bev_flip_x_probability=0.1, bev_flip_y_probability=0.2,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "GeoMIMImageProcessor" and saved["resize_range"] == [0.9, 1.1]
    loaded = GeoMIMImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.size == processor.size and loaded.resize_range == processor.resize_range
    assert loaded.channel_order == "bgr" and loaded.resample == processor.resample
    assert GeoMIMImageProcessor.from_pretrained(tmp_path, flip_probability=0.75).flip_probability == 0.75


def test_auto_image_processor_finds_the_class(tmp_path):
    import geomim_hf  # noqa: F401  (registers the class with AutoImageProcessor)

    GeoMIMImageProcessor.bevdet_finetuning().save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is GeoMIMImageProcessor and loaded.channel_order == "bgr"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(images=[]), "images is missing"),
        (dict(images=None), "images is missing"),
        (dict(camera_to_ego=None), "camera_to_ego is missing"),
        (dict(camera_intrinsics=[np.eye(3)[None].repeat(6, 0), np.eye(3)[None].repeat(5, 0)]),
         r"camera_intrinsics must have one shape \(N, k, k\) for all samples"),
        (dict(images=[[None] * 6]), r"images\[0\]\[0\] is missing"),
        (dict(images=[[Image.new("RGB", (32, 16))] * 5]), "sample 0 has 5 images but camera_intrinsics has 6 cameras"),
        (dict(images=[[np.zeros((16, 32), np.uint8)] * 6]), r"images\[0\]\[0\] must be an \(H, W, 3\) uint8 array"),
        (dict(images=[[1.5] * 6]), r"images\[0\]\[0\] must be a PIL image"),
        (dict(camera_intrinsics=np.zeros((1, 6, 4, 4))), r"camera_intrinsics must have shape \(B, N, 3, 3\)"),
        (dict(camera_to_ego=np.zeros((1, 5, 4, 4))), r"camera_to_ego must have shape \(B, N, 4, 4\)"),
        (dict(camera_intrinsics=np.zeros((2, 6, 3, 3)), camera_to_ego=np.zeros((2, 6, 4, 4))),
         "images has 1 samples but camera_intrinsics has 2"),
        (dict(gt_boxes=[np.zeros((3, 7))]), r"boxes must have shape \(M, 9\)"),
        (dict(gt_boxes=[np.zeros((3, 9))] * 2), "gt_boxes has 2 samples but images has 1"),
        (dict(points=[np.zeros((3, 2))]), r"points must have shape \(P, C >= 3\)"),
    ],
)
def test_bad_input_raises_a_clear_error(change, message):
    images, intrinsics, camera_to_ego = blank_sample(32, 16)
    inputs = dict(images=[images], camera_intrinsics=intrinsics[None], camera_to_ego=camera_to_ego[None]) | change
    with pytest.raises((ValueError, TypeError), match=message):
        GeoMIMImageProcessor(size={"height": 16, "width": 32})(**inputs)


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(resize_range=(1.2, 0.9)), "resize_range must be"),
        (dict(test_resize=0.0), "must be positive"),
        (dict(flip_probability=1.5), r"flip_probability must be in \[0, 1\]"),
        (dict(channel_order="rbg"), "channel_order must be 'rgb' or 'bgr'"),
        (dict(resample=1), "resample must be one of"),  # LANCZOS: PIL's affine warp cannot use it
        (dict(size={"height": 0, "width": 10}), "size must be"),
    ],
)
def test_bad_settings_raise_a_clear_error(setting, message):
    with pytest.raises(ValueError, match=message):
        GeoMIMImageProcessor(**setting)


def full_resize_then_warp(image: Image.Image, augmentation: CameraAugmentation, output_size, resample):
    """The plain pipeline: resize the whole image, then one affine warp (what augment_image must equal)."""
    height, width = output_size
    _, affine = augment_image(image.copy(), augmentation, output_size, resample)
    scale = augmentation.resize * width / image.width
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    # Rounded, so that float noise (a scale of 1 + 1e-13) does not make PIL interpolate where it should copy.
    warp = np.round(affine @ np.diag([image.width / resized.width, image.height / resized.height, 1.0]), 9)
    return resized.transform((width, height), Image.Transform.AFFINE, tuple(np.linalg.inv(warp)[:2].ravel()),
                             resample)


@pytest.mark.parametrize("augmentation", [
    CameraAugmentation(resize=1.0, crop_position=0.5),
    CameraAugmentation(resize=1.1, crop_position=0.2, bottom_crop=0.05, flip=True),
    CameraAugmentation(resize=0.9, crop_position=0.7, flip=False, rotation_deg=3.0),
    CameraAugmentation(resize=0.5, crop_position=0.0),  # smaller than the output: black borders
])
def test_cropped_resize_equals_the_full_resize_and_warp(augmentation):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (200, 480, 3), dtype=np.uint8)).resize((960, 400))
    fast, _ = augment_image(image, augmentation, (128, 352), PILImageResampling.BILINEAR)
    plain = full_resize_then_warp(image, augmentation, (128, 352), PILImageResampling.BILINEAR)
    difference = np.abs(np.asarray(fast, dtype=int) - np.asarray(plain, dtype=int))
    # PIL rounds to 8 bits between its horizontal and vertical passes; a box moves that rounding here and there.
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())


def test_jpeg_is_decoded_at_reduced_scale_where_the_affine_says(tmp_path):
    """A 1600 x 900 JPEG resized to 704 wide decodes at 800 x 450; the dot still lands where the affine says."""
    v, u = np.mgrid[0:900, 0:1600] + 0.5
    centre = np.array([801.3, 500.6])
    dot = np.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / (2 * 14.0**2))
    path = tmp_path / "dot.jpg"
    Image.fromarray(np.repeat(np.round(255 * dot).astype(np.uint8)[..., None], 3, axis=2)).save(path, quality=98)
    image = Image.open(path)
    augmentation = CameraAugmentation(resize=1.0, crop_position=0.5, bottom_crop=0.1, flip=True, rotation_deg=2.0)
    output, affine = augment_image(image, augmentation, (256, 704), resample=PILImageResampling.BILINEAR)
    assert image.size == (800, 450)  # the draft took effect
    brightness = np.asarray(output)[..., 0].astype(float)
    brightness[brightness < 3] = 0  # JPEG ringing
    v_out, u_out = np.mgrid[0:256, 0:704] + 0.5
    centroid = [(brightness * u_out).sum() / brightness.sum(), (brightness * v_out).sum() / brightness.sum()]
    np.testing.assert_allclose(centroid, (affine @ [*centre, 1.0])[:2], atol=0.05)
