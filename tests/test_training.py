"""The shared training pieces: parameter groups with layer decay, the EMA, resume bookkeeping, cards and the Hub."""

import argparse
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from geomim_hf import training


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(2, 3)
        self.norm = nn.LayerNorm(3)
        self.second = nn.Linear(3, 1)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def parse(argv, defaults=None):
    parser = argparse.ArgumentParser()
    training.add_training_arguments(parser, defaults)
    args = parser.parse_args(argv)
    training.check_training_arguments(parser, args)
    return args


def test_parameter_groups_layer_decay_and_no_decay():
    model = TwoLayers()
    model.norm.weight.requires_grad_(False)
    layer = {"first": 0, "norm": 1, "second": 2}
    groups = training.parameter_groups(model, 1.0, 0.05, layer_id=lambda name: layer[name.split(".")[0]],
                                       num_layers=3, layer_decay=0.5)
    by_name = {name: group for group in groups for name in group["names"]}
    assert "norm.weight" not in by_name  # frozen
    # lr = 0.5 ** (3 - 1 - id); biases and 1-D parameters without decay.
    assert by_name["first.weight"]["lr"] == 0.25 and by_name["first.weight"]["weight_decay"] == 0.05
    assert by_name["first.bias"]["lr"] == 0.25 and by_name["first.bias"]["weight_decay"] == 0.0
    assert by_name["norm.bias"]["lr"] == 0.5 and by_name["norm.bias"]["weight_decay"] == 0.0
    assert by_name["second.weight"]["lr"] == 1.0
    assert sum(len(group["params"]) for group in groups) == 5
    with pytest.raises(ValueError, match="outside"):
        training.parameter_groups(model, 1.0, 0.0, layer_id=lambda name: 3, num_layers=3, layer_decay=0.5)


def test_ema_follows_the_closed_form():
    model = TwoLayers()
    ema = training.ExponentialMovingAverage(model, decay=lambda n: 0.5)
    start = model.second.weight.detach().clone()
    with torch.no_grad():
        model.second.weight.fill_(2.0)
        model.count.fill_(7)
    ema.update(model)
    ema.update(model)
    # two updates towards 2 with decay 0.5: 2 + (w0 - 2) / 4; integer buffers are copied
    torch.testing.assert_close(ema.shadow["second.weight"], 2.0 + (start - 2.0) / 4)
    assert ema.shadow["count"].item() == 7 and ema.updates == 2
    restored = training.ExponentialMovingAverage(TwoLayers())
    restored.load_state_dict(ema.state_dict())
    target = TwoLayers()
    restored.copy_to(target)
    torch.testing.assert_close(target.second.weight, ema.shadow["second.weight"])


def test_megvii_decay():
    assert training.megvii_ema_decay(0) == 0.0
    assert math.isclose(training.megvii_ema_decay(10560), 0.999 * (1 - math.exp(-10560 / 2000)))


def test_training_steps_and_resume_positions(tmp_path):
    args = parse(["--output_dir", str(tmp_path), "--gradient_accumulation_steps", "2", "--num_train_epochs", "3"])
    assert training.training_steps(args, batches_per_epoch=7) == (4, 12, 3)
    args.max_train_steps = 10
    assert training.training_steps(args, batches_per_epoch=7) == (4, 10, 3)
    accelerator = mock.Mock()
    (tmp_path / "step_5").mkdir()
    args.resume_from_checkpoint = str(tmp_path / "step_5")
    # an epoch is 4 steps (the last one of a single batch), so step 5 is one step (2 batches) into the second epoch
    assert training.resume(accelerator, args, batches_per_epoch=7) == training.ResumeState(5, 1, 2)
    accelerator.load_state.assert_called_once_with(str(tmp_path / "step_5"))
    (tmp_path / "epoch_1").mkdir()
    args.resume_from_checkpoint = "latest"
    assert training.resume(accelerator, args, batches_per_epoch=7) == training.ResumeState(8, 2, 0)
    args.resume_from_checkpoint = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="step_N or epoch_N"):
        training.resume(accelerator, args, batches_per_epoch=7)


def test_finished_run_is_not_overwritten(tmp_path):
    args = parse(["--output_dir", str(tmp_path)])
    training.save_metrics(tmp_path, {"mAP": 0.5})
    with pytest.raises(FileExistsError, match="finished run"):
        training.prepare_output_dir(args)
    args.overwrite_output_dir = True
    assert training.prepare_output_dir(args) == tmp_path


def test_argument_errors(tmp_path):
    with pytest.raises(SystemExit):
        parse(["--output_dir", str(tmp_path), "--push_to_hub"])
    with pytest.raises(SystemExit):
        parse(["--output_dir", str(tmp_path), "--checkpointing_steps", "often"])
    with pytest.raises(ValueError, match="unknown arguments"):
        parse(["--output_dir", str(tmp_path)], defaults={"learning_rte": 1.0})


def test_model_card_template_holes_are_errors(tmp_path):
    assert training.fill_template("mAP {{ mAP }} / {{NDS}}", {"mAP": 0.5, "NDS": 0.6}) == "mAP 0.5 / 0.6"
    with pytest.raises(ValueError, match=r"no value for \['NDS'\]"):
        training.fill_template("{{ mAP }} {{ NDS }}", {"mAP": 1})
    with pytest.raises(ValueError, match=r"no placeholder for \['extra'\]"):
        training.fill_template("{{ mAP }}", {"mAP": 1, "extra": 2})


def test_push_uploads_the_folder_without_checkpoints(tmp_path):
    args = parse(["--output_dir", str(tmp_path), "--push_to_hub", "--hub_model_id", "user/model"])
    with mock.patch("huggingface_hub.HfApi") as api_class:
        training.push_output_dir(args, tmp_path, "Add model")
    api = api_class.return_value
    api.create_repo.assert_called_once_with("user/model", exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "user/model" and Path(upload["folder_path"]) == tmp_path
    assert "step_*" in upload["ignore_patterns"] and "epoch_*" in upload["ignore_patterns"]
