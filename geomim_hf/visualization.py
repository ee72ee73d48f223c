"""Pictures of datasets and predictions as people inspect them.

nuScenes: the six cameras in rig order with projected 3D boxes beside a bird's-eye view of the LiDAR key frame, drawn
with the devkit (`get_sample_data`, `Box.render`); ground truth solid, predictions, when given, dashed with their
scores. ScanNet: one frame's RGB, depth (colour-mapped) and semantic labels. [`render_preview`] draws one sample of
either dataset from what its files on disk say.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

from .data.nuscenes_constants import CAMERA_CHANNELS, CATEGORY_TO_DETECTION_CLASS, DETECTION_CLASSES, LIDAR_CHANNEL
from .data.scannet_format import LABEL_FOLDERS, detect_layout

CLASS_COLORS = dict(zip(DETECTION_CLASSES, (
    "#e41a1c", "#377eb8", "#ffd92f", "#4daf4a", "#a65628", "#999999", "#984ea3", "#17becf", "#f781bf", "#ff7f00",
)))
EGO_SIZE = (1.73, 4.08)  # width, length of the nuScenes car (Renault Zoe), metres


def global_to_sensor(box, nusc, sample_data_token: str):
    """A copy of a global-frame devkit `Box` in the frame of a sensor at the time of `sample_data_token` (what
    `NuScenes.get_sample_data` does to the annotations)."""
    record = nusc.get("sample_data", sample_data_token)
    pose = nusc.get("ego_pose", record["ego_pose_token"])
    calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    box = box.copy()
    box.translate(-np.array(pose["translation"]))
    box.rotate(Quaternion(pose["rotation"]).inverse)
    box.translate(-np.array(calibration["translation"]))
    box.rotate(Quaternion(calibration["rotation"]).inverse)
    return box


def draw_nuscenes_sample(nusc, sample_token: str, out: Path, predictions: Sequence | None = None,
                         title: str | None = None) -> Path:
    """Writes a PNG of one sample: six cameras in rig order and the LiDAR key frame from above, with the ground-truth
    detection boxes (solid) and `predictions` (devkit `Box`es in the global frame with `name` and `score`, dashed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import BoxVisibility, box_in_image, view_points
    from PIL import Image

    sample = nusc.get("sample", sample_token)
    predictions = list(predictions or [])
    figure = plt.figure(figsize=(24, 8), dpi=80)
    grid = figure.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1.1])

    def render(axis, boxes, view, normalize, dashed, image_size=None):
        for box in boxes:
            name = CATEGORY_TO_DETECTION_CLASS.get(box.name, box.name)
            color = CLASS_COLORS.get(name, "#ffffff" if image_size else "#000000")
            if image_size and not box_in_image(box, view, image_size, vis_level=BoxVisibility.ANY):
                continue
            corners = view_points(box.corners(), view, normalize=normalize)[:2]  # (2, 8): 0-3 front, 4-7 rear
            style = {"color": color, "linewidth": 1.0 if dashed else 1.4, "linestyle": "--" if dashed else "-"}
            for face in ([0, 1, 2, 3, 0], [4, 5, 6, 7, 4]):
                axis.plot(corners[0, face], corners[1, face], **style)
            for edge in range(4):
                axis.plot(corners[0, [edge, edge + 4]], corners[1, [edge, edge + 4]], **style)
            front = corners[:, :4].mean(axis=1)
            axis.plot([corners[0].mean(), front[0]], [corners[1].mean(), front[1]], **style)  # heading
            if dashed:
                axis.text(*front, f"{box.score:.2f}", color=color, fontsize=7, clip_on=True)

    for index, channel in enumerate(CAMERA_CHANNELS):
        axis = figure.add_subplot(grid[index // 3, index % 3])
        path, boxes, intrinsics = nusc.get_sample_data(sample["data"][channel])
        image = Image.open(path)
        axis.imshow(image)
        render(axis, boxes, intrinsics, True, False, image.size)
        in_camera = [global_to_sensor(box, nusc, sample["data"][channel]) for box in predictions]
        render(axis, [box for box in in_camera if box.center[2] > 0.1], intrinsics, True, True, image.size)
        axis.set_xlim(0, image.width)
        axis.set_ylim(image.height, 0)
        axis.set_title(channel)
        axis.axis("off")

    axis = figure.add_subplot(grid[:, 3])
    lidar_token = sample["data"][LIDAR_CHANNEL]
    lidar_path, boxes, _ = nusc.get_sample_data(lidar_token)
    points = LidarPointCloud.from_file(lidar_path).points
    axis.scatter(points[0], points[1], c=np.minimum(np.hypot(points[0], points[1]), 50.0), s=0.3, cmap="viridis")
    render(axis, boxes, np.eye(4), False, False)
    render(axis, [global_to_sensor(box, nusc, lidar_token) for box in predictions], np.eye(4), False, True)
    calibration = nusc.get("calibrated_sensor", nusc.get("sample_data", lidar_token)["calibrated_sensor_token"])
    ego_in_lidar = Quaternion(calibration["rotation"]).inverse.rotate(-np.array(calibration["translation"]))
    forward = Quaternion(calibration["rotation"]).inverse.rotate([1.0, 0.0, 0.0])
    heading = np.degrees(np.arctan2(forward[1], forward[0]))
    ego = matplotlib.patches.Rectangle((ego_in_lidar[0] - EGO_SIZE[1] / 2, ego_in_lidar[1] - EGO_SIZE[0] / 2),
                                       EGO_SIZE[1], EGO_SIZE[0], angle=heading, rotation_point="center",
                                       color="red", alpha=0.7, label="ego")
    axis.add_patch(ego)
    axis.set_xlim(-55, 55)
    axis.set_ylim(-55, 55)
    axis.set_aspect("equal")
    legend = "ground truth solid" + (f", {len(predictions)} predictions dashed" if predictions else "")
    axis.set_title(f"{LIDAR_CHANNEL} frame, {points.shape[1]} points\n{legend}")
    scene_name = nusc.get("scene", sample["scene_token"])["name"]
    figure.suptitle(title or f"{scene_name} / sample {sample_token[:8]}")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def find_nuscenes_version(dataroot: Path) -> str | None:
    """The version folder (e.g. ``v1.0-mini``) of a nuScenes dataroot, or None if ``dataroot`` holds none."""
    versions = sorted(p.name for p in dataroot.glob("v1.0-*") if (p / "sample.json").is_file())
    return versions[0] if versions else None


def preview_nuscenes(dataroot: Path, out: Path, sample_index: int = 0) -> Path:
    from nuscenes import NuScenes

    version = find_nuscenes_version(dataroot)
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    if not 0 <= sample_index < len(nusc.sample):
        raise IndexError(f"sample index {sample_index} out of range: {dataroot} has {len(nusc.sample)} samples")
    sample = nusc.sample[sample_index]
    scene_name = nusc.get("scene", sample["scene_token"])["name"]
    return draw_nuscenes_sample(nusc, sample["token"], out,
                                title=f"{dataroot.name} / {version} / {scene_name} / sample {sample['token'][:8]}")


def preview_scannet(root: Path, out: Path, frame_index: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    colors = sorted(root.glob("scene*/color/*.jpg"), key=lambda p: (p.parts[-3], int(p.stem)))
    if not colors:
        raise FileNotFoundError(f"{root} holds no ScanNet frames (expected sceneXXXX_XX/color/*.jpg)")
    if not 0 <= frame_index < len(colors):
        raise IndexError(f"frame index {frame_index} out of range: {root} has {len(colors)} frames")
    color_path = colors[frame_index]
    scene_dir = color_path.parent.parent
    depth = np.asarray(Image.open(scene_dir / "depth" / f"{color_path.stem}.png")).astype(np.float32) / 1000.0
    label_path = scene_dir / LABEL_FOLDERS[detect_layout(scene_dir)] / f"{color_path.stem}.png"

    figure, axes = plt.subplots(1, 3, figsize=(18, 5), dpi=80)
    axes[0].imshow(Image.open(color_path))
    axes[0].set_title(f"RGB {color_path.relative_to(root)}")
    shown = axes[1].imshow(np.where(depth > 0, depth, np.nan), cmap="turbo")
    figure.colorbar(shown, ax=axes[1], label="depth (m)")
    axes[1].set_title("depth")
    axes[2].imshow(np.asarray(Image.open(label_path)), cmap="tab20", interpolation="nearest")
    axes[2].set_title(f"labels ({label_path.parent.name})")
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def render_preview(root: str | Path, out: str | Path, index: int = 0) -> Path:
    """Preview sample/frame ``index`` of the nuScenes dataroot or ScanNet folder ``root`` as the PNG ``out``."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if find_nuscenes_version(root) is not None:
        return preview_nuscenes(root, out, index)
    return preview_scannet(root, out, index)


__all__ = ["CLASS_COLORS", "draw_nuscenes_sample", "global_to_sensor", "render_preview"]
