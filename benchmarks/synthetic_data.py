"""Speed of the synthetic nuScenes generator: the issue's target is 2 scenes x 10 samples at 704x256 in under 60 s on
2 cores. Also the speed-up of the renderer's per-box pixel windows against casting every pixel against every box,
measured in the same process.

    python benchmarks/synthetic_data.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from geomim_hf.data.synthetic import NuScenesSpec, generate_nuscenes
from geomim_hf.data.synthetic.nuscenes_writer import street_scene
from geomim_hf.data.synthetic.raycast import cast_rays
from geomim_hf.data.synthetic.rig import CAMERA_MOUNTS, camera_intrinsics, camera_rotation
from geomim_hf.data.synthetic.street import render_camera, sensor_to_global

TARGET_SECONDS = 60.0


def time_generation(spec: NuScenesSpec) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        generate_nuscenes(Path(folder) / "nuscenes", progress=False, **spec.__dict__)
        return time.perf_counter() - start


def time_cameras(spec: NuScenesSpec, windowed: bool) -> float:
    scene = street_scene(spec, 0)
    width, height = spec.image_size
    start = time.perf_counter()
    for channel in CAMERA_CHANNELS:
        if windowed:
            render_camera(scene, channel, 1.0, spec.image_size)
            continue
        mount = CAMERA_MOUNTS[channel]
        rotation, origin = sensor_to_global(scene, 1.0, mount.translation, camera_rotation(mount.yaw_deg))
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(camera_intrinsics(mount, spec.image_size)).T
        cast_rays(origin, rays @ rotation.T, scene.boxes(1.0))
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    parse_args(argv)
    spec = NuScenesSpec(scenes=2, samples_per_scene=10, sweeps=9, image_size=(704, 256))
    seconds = time_generation(spec)
    print(f"config=nuscenes_2x10_704x256_9sweeps seconds={seconds:.1f} target_s={TARGET_SECONDS:.0f} "
          f"ratio_vs_target={TARGET_SECONDS / seconds:.2f}")
    naive = min(time_cameras(spec, windowed=False) for _ in range(3))
    windowed = min(time_cameras(spec, windowed=True) for _ in range(3))
    print(f"config=six_cameras_704x256 seconds={windowed:.3f} baseline_all_pixels_all_boxes={naive:.3f} "
          f"speedup_vs_baseline={naive / windowed:.2f} (baseline casts rays only, without shading)")


if __name__ == "__main__":
    main()
