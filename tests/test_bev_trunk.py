"""The BEV trunk (`GeoMIMBEVModel`) under the detector: frames, seams, any backbone, the batch's class order, and
checkpoints written before the trunk existed."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_modeling_bevdet import random_inputs, tiny_config, tiny_trunk
from transformers import AutoModel, ResNetConfig

from geomim_hf import GeoMIMBEVConfig, GeoMIMBEVDetectionConfig, GeoMIMBEVModel, GeoMIMConfig, GeoMIMForBEVDetection
from geomim_hf.data import GeoMIMImageProcessor, NuScenesCollator, load_nuscenes
from geomim_hf.models.bevdet.configuration_bevdet import SIX_TASKS
from geomim_hf.models.inputs import model_inputs

OLD_LAYOUT = "data/bevdet4d_layout_73980e5.json"
# How the layout before the trunk named today's modules (new prefix -> old prefix), written out independently of the
# renaming the model applies on load.
NEW_TO_OLD_PREFIXES = (
    ("bev_model.encoder.geomim.", "geomim."),
    ("bev_model.image_neck.", "image_neck."),
    ("bev_model.view_transform.", "view_transformer."),
    ("bev_model.pre_process.", "pre_process."),
    ("bev_model.bev_encoder.backbone.", "bev_encoder."),
    ("bev_model.bev_encoder.neck.", "bev_neck."),
    ("head.", "head."),
)


def old_name(key: str) -> str:
    for new, old in NEW_TO_OLD_PREFIXES:
        if key.startswith(new):
            return old + key.removeprefix(new)
    raise AssertionError(f"{key} has no name in the old layout")


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic moved off its initial value, so that a swapped tensor shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.rand(tensor.shape, generator=generator) * (0.5 if "running_var" in name else 0.1))
    return model.eval()


def test_a_checkpoint_written_before_the_trunk_existed_loads_and_resaves_in_the_new_layout(tmp_path):
    record = json.loads((Path(__file__).parent / OLD_LAYOUT).read_text())
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(record["config"]))  # the flat config of that layout
    config = GeoMIMBEVDetectionConfig.from_pretrained(folder)
    assert config.bev_config.num_previous_frames == 1 and config.tasks == [list(task) for task in SIX_TASKS]
    reference = randomised(GeoMIMForBEVDetection(config))
    old_state = {old_name(key): value for key, value in reference.state_dict().items()}
    assert {key: [list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in old_state.items()} \
        == record["tensors"]  # exactly the key set and shapes that the old code wrote
    save_file({key: value.contiguous() for key, value in old_state.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})

    loaded, info = GeoMIMForBEVDetection.from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert isinstance(AutoModel.from_pretrained(folder), GeoMIMForBEVDetection)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    inputs = random_inputs(config)
    with torch.no_grad():  # the same weights on the same inputs in one process: the same kernels, bitwise
        torch.testing.assert_close(loaded.eval()(**inputs).head_outputs[0]["heatmap"],
                                   reference(**inputs).head_outputs[0]["heatmap"], rtol=0, atol=0)

    loaded.save_pretrained(tmp_path / "resaved")
    resaved = load_file(tmp_path / "resaved" / "model.safetensors")
    assert resaved.keys() == reference.state_dict().keys()
    assert "bev_config" in json.loads((tmp_path / "resaved" / "config.json").read_text())


def test_a_trunk_loads_into_a_detector_and_a_detectors_trunk_loads_alone(tmp_path):
    torch.manual_seed(0)
    trunk = randomised(GeoMIMBEVModel(tiny_trunk()))
    trunk.save_pretrained(tmp_path / "trunk")
    config = tiny_config(tiny_trunk())
    detector, info = GeoMIMForBEVDetection.from_pretrained(tmp_path / "trunk", config=config,
                                                           output_loading_info=True)
    assert not info["unexpected_keys"] and all(key.startswith("head.") for key in info["missing_keys"])
    for key, value in trunk.state_dict().items():
        assert torch.equal(detector.bev_model.state_dict()[key], value), key
    inputs = random_inputs(config)
    with torch.no_grad():  # the detector runs this trunk's weights through the same code: bitwise
        torch.testing.assert_close(detector.eval()(**inputs).bev_features, trunk(**inputs).bev_features,
                                   rtol=0, atol=0)

    randomised(detector).save_pretrained(tmp_path / "detector")
    alone, info = GeoMIMBEVModel.from_pretrained(tmp_path / "detector", output_loading_info=True)
    assert not info["missing_keys"] and all(key.startswith("head.") for key in info["unexpected_keys"])
    assert alone.config.image_size == config.bev_config.image_size and alone.config.num_previous_frames == 1
    for key, value in detector.bev_model.state_dict().items():
        assert torch.equal(alone.state_dict()[key], value), key


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_the_key_frame_is_its_own_previous_frame_by_default():
    torch.manual_seed(0)
    model = randomised(GeoMIMBEVModel(tiny_trunk()))
    inputs = random_inputs(tiny_config())
    shifted = inputs["camera_to_ego"].clone()
    shifted[..., 0, 3] += 2.0
    with torch.no_grad():
        default = model(**inputs)
        explicit = model(**inputs, previous_pixel_values=inputs["pixel_values"],
                         previous_camera_to_ego=inputs["camera_to_ego"])
        zeroed = model(**inputs, zero_previous_frame=True)
        moved = model(**inputs, previous_pixel_values=inputs["pixel_values"], previous_camera_to_ego=shifted)
    torch.testing.assert_close(default.bev_features, explicit.bev_features)
    assert relative_difference(zeroed.bev_features, default.bev_features) > 1e-2
    assert relative_difference(moved.bev_features, default.bev_features) > 1e-2


def test_previous_frames_are_taken_with_or_without_their_frame_axis():
    torch.manual_seed(0)
    model = randomised(GeoMIMBEVModel(tiny_trunk()))
    inputs = random_inputs(tiny_config())
    previous = {"previous_pixel_values": torch.randn_like(inputs["pixel_values"]),
                "previous_camera_to_ego": inputs["camera_to_ego"].flip(1)}
    with torch.no_grad():
        without_axis = model(**inputs, **previous)
        with_axis = model(**inputs, **{name: value.unsqueeze(1) for name, value in previous.items()})
    # The frame axis is only unsqueezed: the same tensors go through the same kernels.
    torch.testing.assert_close(with_axis.bev_features, without_axis.bev_features, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"previous_pixel_values must have shape \(1, 1, 6, 3, 64, 192\)"):
        model(**inputs, previous_pixel_values=previous["previous_pixel_values"][:, None].repeat(1, 2, 1, 1, 1, 1),
              previous_camera_to_ego=previous["previous_camera_to_ego"][:, None].repeat(1, 2, 1, 1, 1))


def test_a_single_frame_trunk_has_no_pre_process_and_refuses_a_previous_frame():
    model = GeoMIMBEVModel(tiny_trunk(num_previous_frames=0))
    assert model.pre_process is None
    assert model.bev_encoder.backbone.stages[0][0].conv1.in_channels == 8
    inputs = random_inputs(tiny_config())
    with pytest.raises(ValueError, match="single-frame"):
        model(**inputs, previous_pixel_values=inputs["pixel_values"], previous_camera_to_ego=inputs["camera_to_ego"])


def test_any_backbone_with_maps_at_strides_16_and_32_is_an_encoder():
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                          layer_type="basic", out_features=["stage3", "stage4"])
    config = tiny_config(tiny_trunk(encoder_config=resnet))
    model = GeoMIMForBEVDetection(config).eval()
    assert type(model.bev_model.encoder).__name__ == "ResNetBackbone"
    assert model.bev_model.image_neck.fuse1.conv.in_channels == 24 + 32
    with torch.no_grad():
        outputs = model(**random_inputs(config))
    grid = config.bev_config.grid
    assert outputs.head_outputs[0]["heatmap"].shape == (1, 10, grid.num_y, grid.num_x)
    assert torch.isfinite(outputs.bev_features).all()
    resnet_8_and_32 = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                   layer_type="basic", out_features=["stage2", "stage4"])
    wrong_strides = tiny_config(tiny_trunk(encoder_config=resnet_8_and_32))
    with pytest.raises(ValueError, match=r"out_features must name the maps at strides 16 and 32"):
        GeoMIMForBEVDetection(wrong_strides)(**random_inputs(config))


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="multiples of 2 x feature_stride"):
        tiny_trunk(image_size=[64, 176])
    with pytest.raises(ValueError, match="num_previous_frames"):
        tiny_trunk(num_previous_frames=2)
    with pytest.raises(ValueError, match=r"view_transform_type must be one of \('lss',\)"):
        tiny_trunk(view_transform_type="stereo-ish")
    with pytest.raises(ValueError, match=r"bev_encoder_type must be one of \('resnet',\)"):
        tiny_trunk(bev_encoder_type="resnet4d")
    with pytest.raises(ValueError, match="fuses two encoder maps"):
        tiny_trunk(encoder_config=GeoMIMConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                               out_features=["stage4"]))
    with pytest.raises(ValueError, match="unknown BEV preset"):
        GeoMIMBEVConfig.from_preset("bevdet-huge")


# Tasks that list the classes in another order than the devkit's DETECTION_CLASSES.
REORDERED_TASKS = [["pedestrian", "traffic_cone"], ["car"], ["barrier", "bus", "trailer"],
                   ["motorcycle", "bicycle", "truck", "construction_vehicle"]]


@pytest.fixture(scope="module")
def reordered_model():
    config = tiny_config(tiny_trunk(image_size=[128, 352]), tasks=REORDERED_TASKS, nms_types=["rotate"] * 4,
                         nms_thresholds=[0.2] * 4, nms_rescale_factors=[1.0] * 10)
    return GeoMIMForBEVDetection(config)


@pytest.fixture(scope="module")
def examples(nuscenes_root, nuscenes_spec):
    return list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1))[:2]


def processor():
    return GeoMIMImageProcessor(size={"height": 128, "width": 352}, test_resize=1.0)


def test_a_batch_labelled_in_another_class_order_than_the_model_is_refused(reordered_model, examples):
    batch = NuScenesCollator(processor(), depth_downsample=None)(examples)  # labels in the devkit's order
    with pytest.raises(ValueError, match="build the collator with class_names=model.config.class_names"):
        model_inputs(reordered_model, batch)


def test_a_reordered_task_config_trains_on_the_right_labels(reordered_model, examples):
    config = reordered_model.config
    collate = NuScenesCollator(processor(), depth_downsample=None, class_names=config.class_names)
    batch = collate(examples)
    for index, example in enumerate(examples):
        hit = [lidar + radar > 0 for lidar, radar in zip(example["gt_num_lidar_pts"], example["gt_num_radar_pts"])]
        expected = [name for name, kept in zip(example["gt_names"], hit) if kept]
        labels = batch["gt_labels"][index]
        assert [config.class_names[label] for label in labels[labels >= 0].tolist()] == expected
    assert {name for example in examples for name in example["gt_names"]} >= {"car", "pedestrian", "truck"}
    outputs = reordered_model(**model_inputs(reordered_model, batch))
    assert torch.isfinite(outputs.loss)
