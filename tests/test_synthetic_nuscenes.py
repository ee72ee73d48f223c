"""The synthetic nuScenes set, checked with the real devkit: it loads, evaluates, and its files agree with its geometry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as Polygon
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, view_points
from scipy.spatial import ConvexHull

from geomim_hf.data.nuscenes_constants import (
    CAMERA_CHANNELS,
    CATEGORY_TO_DETECTION_CLASS,
    DETECTION_CLASSES,
    LIDAR_CHANNEL,
)
from geomim_hf.data.synthetic import OutputExistsError, generate_nuscenes
from geomim_hf.data.synthetic.__main__ import main as synthetic_cli
from geomim_hf.data.synthetic.nuscenes_writer import street_scene, synthetic_token
from geomim_hf.data.synthetic.rig import CAMERA_MOUNTS, camera_trigger_offset_s
from geomim_hf.data.synthetic.street import lidar_ray_directions, render_camera, render_lidar


def _split_samples(nusc, split: str) -> list[dict]:
    from nuscenes.utils.splits import get_scenes_of_split

    scenes = set(get_scenes_of_split(split, nusc))
    return [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]


def _ground_truth_submission(nusc, split: str, shift_x: float = 0.0) -> dict:
    """A detection submission that copies the ground truth (velocity from the devkit's box_velocity)."""
    results = {}
    for sample in _split_samples(nusc, split):
        boxes = []
        for annotation_token in sample["anns"]:
            annotation = nusc.get("sample_annotation", annotation_token)
            name = CATEGORY_TO_DETECTION_CLASS.get(annotation["category_name"])
            if name is None:
                continue
            attributes = [nusc.get("attribute", t)["name"] for t in annotation["attribute_tokens"]]
            x, y, z = annotation["translation"]
            boxes.append({
                "sample_token": sample["token"], "translation": [x + shift_x, y, z], "size": annotation["size"],
                "rotation": annotation["rotation"],
                "velocity": nusc.box_velocity(annotation_token)[:2].tolist(),
                "detection_name": name, "detection_score": 0.9,
                "attribute_name": attributes[0] if attributes else "",
            })
        results[sample["token"]] = boxes
    meta = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def _evaluate(nusc, submission: dict, split: str, folder: Path) -> dict:
    folder.mkdir()
    result_path = folder / "results.json"
    result_path.write_text(json.dumps(submission))
    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result_path), split, str(folder),
                               verbose=False)
    return evaluation.main(plot_examples=0, render_curves=False)


def test_devkit_loads_a_complete_dataset(nusc, nuscenes_root, nuscenes_spec):
    assert len(nusc.scene) == nuscenes_spec.scenes
    assert len(nusc.sample) == nuscenes_spec.scenes * nuscenes_spec.samples_per_scene
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERA_CHANNELS, LIDAR_CHANNEL}
        for channel in CAMERA_CHANNELS:
            record = nusc.get("sample_data", sample["data"][channel])
            from PIL import Image

            with Image.open(nuscenes_root / record["filename"]) as image:
                assert image.size == (record["width"], record["height"]) == nuscenes_spec.image_size
        lidar = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        assert (nuscenes_root / lidar["filename"]).stat().st_size % (5 * 4) == 0
    for record in nusc.sample_data:  # one ego pose per sample_data, sharing its token
        assert nusc.get("ego_pose", record["ego_pose_token"])["token"] == record["token"]
    sweeps = [r for r in nusc.sample_data if not r["is_key_frame"]]
    assert len(sweeps) == nuscenes_spec.scenes * (nuscenes_spec.samples_per_scene - 1) * nuscenes_spec.sweeps
    assert all(a["num_lidar_pts"] > 0 for a in nusc.sample_annotation)
    assert all(i["nbr_annotations"] >= 2 for i in nusc.instance)
    for split in ("mini_train", "mini_val"):
        names = {CATEGORY_TO_DETECTION_CLASS.get(nusc.get("sample_annotation", a)["category_name"])
                 for s in _split_samples(nusc, split) for a in s["anns"]}
        assert set(DETECTION_CLASSES) <= names, f"{split} misses classes"


def test_multisweep_loading_follows_the_sweep_chain(nusc, nuscenes_spec):
    sample = nusc.sample[-1]
    points, times = LidarPointCloud.from_file_multisweep(
        nusc, sample, LIDAR_CHANNEL, LIDAR_CHANNEL, nsweeps=nuscenes_spec.sweeps + 1
    )
    lags = np.unique(np.round(times[0], 3))
    np.testing.assert_allclose(lags, 0.05 * np.arange(nuscenes_spec.sweeps + 1), atol=1e-3)


def test_detection_eval_scores_ground_truth_perfectly_and_shifted_boxes_lower(nusc, tmp_path):
    perfect = _evaluate(nusc, _ground_truth_submission(nusc, "mini_val"), "mini_val", tmp_path / "perfect")
    assert perfect["mean_ap"] == pytest.approx(1.0)
    assert perfect["nd_score"] == pytest.approx(1.0)

    # The same split through the dataset's own splits.json.
    custom = _evaluate(nusc, _ground_truth_submission(nusc, "synthetic_val"), "synthetic_val", tmp_path / "custom")
    assert custom["mean_ap"] == pytest.approx(1.0)

    # 1.5 m off: matched only at the 2 m and 4 m thresholds (AP 0.5), translation error 1.5 m.
    shifted = _evaluate(nusc, _ground_truth_submission(nusc, "mini_val", 1.5), "mini_val", tmp_path / "shifted")
    assert shifted["mean_ap"] == pytest.approx(0.5)
    assert shifted["nd_score"] == pytest.approx(0.65)


def _object_index(nusc, spec, annotation_token: str) -> int:
    annotation = nusc.get("sample_annotation", annotation_token)
    scene_index = next(i for i, s in enumerate(nusc.scene)
                       if s["token"] == nusc.get("sample", annotation["sample_token"])["scene_token"])
    for index in range(1000):
        if synthetic_token(spec.seed, "instance", scene_index, index) == annotation["instance_token"]:
            return index
    raise AssertionError("instance token not produced by the generator")


def test_projected_boxes_cover_the_rendered_objects(nusc, nuscenes_spec):
    """The stored calibration, ego poses and annotations, read by the devkit, put each box on its object's pixels."""
    checked = 0
    for scene_index, scene_record in enumerate(nusc.scene):
        scene = street_scene(nuscenes_spec, scene_index)
        sample = nusc.get("sample", scene_record["first_sample_token"])
        for channel in CAMERA_CHANNELS:
            time = camera_trigger_offset_s(CAMERA_MOUNTS[channel])
            frame = render_camera(scene, channel, time, nuscenes_spec.image_size)
            _, boxes, intrinsics = nusc.get_sample_data(sample["data"][channel])
            height, width = frame.instance.shape
            pixel_centers = np.stack(np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5), -1).reshape(-1, 2)
            for box in boxes:
                index = _object_index(nusc, nuscenes_spec, box.token)
                if scene.objects[index].is_moving:  # annotations are at LiDAR time, the camera fires up to 25 ms off
                    continue
                mask = (frame.instance == index).reshape(-1)
                if mask.sum() < 20:
                    continue
                corners = view_points(box.corners(), intrinsics, normalize=True)[:2].T
                hull = Polygon(corners[ConvexHull(corners).vertices])
                inside = hull.contains_points(pixel_centers, radius=1.0) | hull.contains_points(pixel_centers,
                                                                                                 radius=-1.0)
                assert inside[mask].mean() > 0.995, f"{channel}: object {index} is drawn outside its box"
                if frame.visible[index] == frame.footprint[index]:  # unoccluded: the box is the object's silhouette
                    in_image = hull.contains_points(pixel_centers)
                    iou = (in_image & mask).sum() / (in_image | mask).sum()
                    assert iou > 0.9, f"{channel}: object {index} silhouette IoU {iou:.3f}"
                checked += 1
    assert checked >= 10


def test_lidar_points_inside_a_box_carry_its_instance(nusc, nuscenes_root, nuscenes_spec):
    directions = lidar_ray_directions(nuscenes_spec.lidar_azimuth_steps)
    for scene_index, scene_record in enumerate(nusc.scene):
        scene = street_scene(nuscenes_spec, scene_index)
        sample = nusc.get("sample", scene_record["last_sample_token"])
        lidar_path, boxes, _ = nusc.get_sample_data(sample["data"][LIDAR_CHANNEL])
        points = LidarPointCloud.from_file(lidar_path).points[:3]
        time = (nuscenes_spec.samples_per_scene - 1) * 0.5
        sweep = render_lidar(scene, time, directions)
        np.testing.assert_array_equal(points.T, sweep.points[:, :3])
        above_ground = sweep.points[:, 2] > -1.84023 + 0.05  # ground is 1.84 m below the sensor
        for box in boxes:
            index = _object_index(nusc, nuscenes_spec, box.token)
            inside = points_in_box(box, points, wlh_factor=1.0) & above_ground
            assert np.all(sweep.instance[inside] == index)
            carried = sweep.instance == index
            assert np.all(points_in_box(box, points[:, carried], wlh_factor=1.01))
            annotation = nusc.get("sample_annotation", box.token)
            assert annotation["num_lidar_pts"] == carried.sum()


def test_generation_is_deterministic(tmp_path, nuscenes_spec):
    spec = dataclasses.asdict(dataclasses.replace(nuscenes_spec, scenes=1, samples_per_scene=2, sweeps=1))
    first = generate_nuscenes(tmp_path / "a", progress=False, **spec)
    second = generate_nuscenes(tmp_path / "b", progress=False, **spec)
    other = generate_nuscenes(tmp_path / "c", progress=False, **{**spec, "seed": spec["seed"] + 1})
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    table = Path(spec["version"]) / "sample_annotation.json"
    assert (first / table).read_bytes() != (other / table).read_bytes()


def test_existing_output_is_never_overwritten_by_accident(tmp_path, nuscenes_spec, capsys):
    foreign = tmp_path / "my_nuscenes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    tiny = ["--scenes", "1", "--samples_per_scene", "2", "--sweeps", "0", "--image_size", "64", "32"]
    assert synthetic_cli(["nuscenes", "--output_dir", str(foreign), "--overwrite_output_dir", *tiny]) == 2
    assert "not written by the geomim_hf synthetic generator" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1

    ours = tmp_path / "synthetic"
    assert synthetic_cli(["nuscenes", "--output_dir", str(ours), *tiny]) == 0
    before = (ours / "v1.0-mini" / "scene.json").read_bytes()
    assert synthetic_cli(["nuscenes", "--output_dir", str(ours), *tiny, "--seed", "3"]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert (ours / "v1.0-mini" / "scene.json").read_bytes() == before
    with pytest.raises(OutputExistsError):
        generate_nuscenes(ours, progress=False, scenes=1, samples_per_scene=2)
    assert synthetic_cli(["nuscenes", "--output_dir", str(ours), *tiny, "--seed", "3",
                          "--overwrite_output_dir"]) == 0
    assert (ours / "v1.0-mini" / "scene.json").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_bad_specs_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="sweeps"):
        generate_nuscenes("unused", sweeps=12)
    with pytest.raises(ValueError, match="version"):
        generate_nuscenes("unused", version="v2.0")
    with pytest.raises(ValueError, match="v1.0-trainval"):
        generate_nuscenes("unused", scenes=11)


def test_preview_draws_the_six_cameras_and_the_bird_eye_view(nuscenes_root, tmp_path):
    from PIL import Image

    out = tmp_path / "preview.png"
    assert synthetic_cli(["preview", str(nuscenes_root), "--output_dir", str(tmp_path)]) == 0
    with Image.open(out) as image:
        assert image.width > 1000 and image.height > 400
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # images were drawn, not an empty canvas
