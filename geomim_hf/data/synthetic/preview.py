"""Pictures of a dataset as people inspect nuScenes and ScanNet: what the files on disk say, drawn by the devkit.

For nuScenes the six cameras are shown in rig order with the ground-truth boxes projected by the devkit
(``get_sample_data`` + ``Box.render``), beside a bird's-eye view of the LiDAR key frame with the same boxes. For
ScanNet one frame's RGB, depth (colour-mapped) and semantic labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..scannet_format import LABEL_FOLDERS, detect_layout



def find_nuscenes_version(dataroot: Path) -> str | None:
    """The version folder (e.g. ``v1.0-mini``) of a nuScenes dataroot, or None if ``dataroot`` holds none."""
    versions = sorted(p.name for p in dataroot.glob("v1.0-*") if (p / "sample.json").is_file())
    return versions[0] if versions else None


def preview_nuscenes(dataroot: Path, out: Path, sample_index: int = 0) -> Path:
    from nuscenes import NuScenes

    from ...visualization import draw_nuscenes_sample

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
