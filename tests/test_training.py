"""The shared training pieces: the training loop (accumulation, the logged loss, resume, checkpoints, EMA, hooks),
training presets, parameter groups with layer decay, the EMA, resume bookkeeping, cards and the Hub."""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn
from transformers.utils import ModelOutput

from geomim_hf import cli, training


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(2, 3)
        self.norm = nn.LayerNorm(3)
        self.second = nn.Linear(3, 1)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def parse(argv, presets=None, fallback="default"):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config_name", default="default")
    training.add_training_arguments(parser)
    return training.parse_training_args(parser, argv, presets or {"default": {}}, fallback=fallback)


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
    assert training.training_steps(args, batches_per_epoch=8) == (4, 12, 3)
    args.max_train_steps = 10
    assert training.training_steps(args, batches_per_epoch=8) == (4, 10, 3)
    # An epoch that is not whole accumulation groups would have a step straddle two epochs.
    with pytest.raises(ValueError, match="not a whole number of accumulation groups"):
        training.training_steps(args, batches_per_epoch=7)
    accelerator = mock.Mock()
    (tmp_path / "step_5").mkdir()
    args.resume_from_checkpoint = str(tmp_path / "step_5")
    # an epoch is 4 steps of 2 batches, so step 5 is one step (2 batches) into the second epoch
    assert training.resume(accelerator, args, batches_per_epoch=8) == training.ResumeState(5, 1, 2)
    accelerator.load_state.assert_called_once_with(str(tmp_path / "step_5"))
    (tmp_path / "epoch_1").mkdir()
    args.resume_from_checkpoint = "latest"
    assert training.resume(accelerator, args, batches_per_epoch=8) == training.ResumeState(8, 2, 0)
    args.resume_from_checkpoint = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="step_N or epoch_N"):
        training.resume(accelerator, args, batches_per_epoch=8)


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
    with pytest.raises(ValueError, match=r"parser does not have: \['learning_rte'\]"):
        parse(["--output_dir", str(tmp_path)], presets={"default": {"learning_rte": 1.0}})


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


# ----------------------------------------------------------------------------------------------------------------------
# Training presets


PRESETS = {"small": {"learning_rate": 1e-3, "max_grad_norm": 5.0, "per_device_train_batch_size": 4},
           "large": {"learning_rate": 2e-4, "per_device_train_batch_size": 8}}


def preset_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config_name", default="small")
    cli.add_argument(parser, "--old_style_batch", dest="unused", deprecated=("--old-style-batch",), default=None)
    training.add_training_arguments(parser)
    return parser


def test_presets_fill_what_the_command_line_does_not_give(tmp_path):
    base = ["--output_dir", str(tmp_path)]
    args = training.parse_training_args(preset_parser(), base, PRESETS, fallback="small")
    assert (args.learning_rate, args.max_grad_norm, args.per_device_train_batch_size) == (1e-3, 5.0, 4)
    # the preset named by --config_name; an argument the preset does not set keeps its own default
    args = training.parse_training_args(preset_parser(), [*base, "--config_name", "large"], PRESETS, fallback="small")
    assert (args.learning_rate, args.max_grad_norm, args.per_device_train_batch_size) == (2e-4, None, 8)
    # a config that is no preset (a file) trains with the fallback's
    args = training.parse_training_args(preset_parser(), [*base, "--config_name", "my.json"], PRESETS,
                                        fallback="large")
    assert args.learning_rate == 2e-4
    # the command line always wins, also with the value the argument's own default has
    args = training.parse_training_args(preset_parser(), [*base, "--learning_rate", "2e-4", "--max_grad_norm",
                                                          "1", "--per_device_train_batch_size", "1"],
                                        PRESETS, fallback="small")
    assert (args.learning_rate, args.max_grad_norm, args.per_device_train_batch_size) == (2e-4, 1.0, 1)


def test_presets_show_in_the_help_and_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        training.parse_training_args(preset_parser(), ["--help"], PRESETS, fallback="small")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default per --config_name: small: 0.001, large: 0.0002)" in text
    with pytest.raises(ValueError, match="fallback preset 'medium'"):
        training.parse_training_args(preset_parser(), ["--output_dir", str(tmp_path)], PRESETS, fallback="medium")
    with pytest.raises(SystemExit):  # the preset's values are checked like given ones
        training.parse_training_args(preset_parser(), ["--output_dir", str(tmp_path)],
                                     {"small": {"per_device_train_batch_size": 0}}, fallback="small")


# ----------------------------------------------------------------------------------------------------------------------
# The training loop, on a linear model whose losses and gradients are known in closed form


@dataclass
class RegressionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    absolute_loss: torch.Tensor | None = None
    prediction: torch.Tensor | None = None


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> RegressionOutput:
        prediction = self.linear(inputs).squeeze(-1)
        if targets is None:
            return RegressionOutput(prediction=prediction)
        error = prediction - targets
        return RegressionOutput(loss=(error**2).mean(), absolute_loss=error.abs().mean(), prediction=prediction)


def regression_batches(epoch: int, count: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + epoch)
    return [{"inputs": torch.randn(2, 3, generator=generator), "targets": torch.randn(2, generator=generator),
             "sample_ids": [epoch, index]} for index in range(count)]


def loop_args(tmp_path, *extra: str) -> argparse.Namespace:
    return parse(["--output_dir", str(tmp_path), "--lr_scheduler_type", "constant", "--weight_decay", "0", *extra])


def run_loop(args, *, batches=regression_batches, learning_rate=0.1, seed=0, **options):
    """The loop on a fresh seeded model with plain SGD; returns the unwrapped model, the accelerator and the result."""
    accelerator = training.make_accelerator(args, project_name="loop")
    torch.manual_seed(seed)
    model = Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    length = training.training_steps(args, 8)
    scheduler = training.make_scheduler(args, optimizer, length.max_train_steps, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if options.pop("track", False):
        accelerator.log = mock.Mock()
    result = training.train(accelerator, args, model, optimizer, scheduler, batches, 8, **options)
    return accelerator.unwrap_model(model), accelerator, result


def test_the_logged_loss_is_the_mean_batch_loss_of_the_window_before_accumulation(tmp_path):
    """Learning rate 0 keeps the model fixed, so every batch's loss is known: each log holds the plain mean of the
    window's per-batch losses (not divided by the accumulation steps), for every named loss of the output."""
    args = loop_args(tmp_path, "--gradient_accumulation_steps", "2", "--logging_steps", "2", "--with_tracking")
    model, accelerator, result = run_loop(args, learning_rate=0.0, track=True)
    with torch.no_grad():
        losses = [model(**{k: v for k, v in batch.items() if k != "sample_ids"}) for batch in regression_batches(0)]
    logged = [call.args[0] for call in accelerator.log.call_args_list]
    assert [call.kwargs["step"] for call in accelerator.log.call_args_list] == [2, 4]
    for window, logs in zip((losses[:4], losses[4:]), logged):
        assert logs.keys() == {"train/loss", "train/absolute_loss", "train/learning_rate"}
        assert logs["train/loss"] == pytest.approx(sum(output.loss.item() for output in window) / 4, rel=1e-6)
        assert logs["train/absolute_loss"] == pytest.approx(
            sum(output.absolute_loss.item() for output in window) / 4, rel=1e-6)
    assert result.completed_steps == 4 and result.logs == {name.removeprefix("train/"): value
                                                           for name, value in logged[-1].items()}


def test_accumulation_steps_on_the_mean_gradient_of_each_group_within_epochs(tmp_path):
    args = loop_args(tmp_path, "--gradient_accumulation_steps", "4", "--num_train_epochs", "2")
    model, _, result = run_loop(args, learning_rate=0.1)
    torch.manual_seed(0)
    reference = Regression()
    for epoch in range(2):
        batches = regression_batches(epoch)
        for group in range(0, 8, 4):  # 8 batches per epoch, two steps of four
            reference.zero_grad()
            for batch in batches[group:group + 4]:
                (reference(batch["inputs"], batch["targets"]).loss / 4).backward()
            with torch.no_grad():
                for parameter in reference.parameters():
                    parameter -= 0.1 * parameter.grad
    assert result.completed_steps == 4
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name), parameter, msg=name)


def test_a_resumed_loop_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    common = ("--gradient_accumulation_steps", "2", "--num_train_epochs", "2", "--checkpointing_steps", "3")
    straight, _, _ = run_loop(loop_args(tmp_path / "straight", *common))
    # 4 steps per epoch: the latest checkpoint, step 6, is two steps (four batches) into the second epoch, which the
    # resumed run reads and discards
    consumed = []

    def recorded(epoch):
        for batch in regression_batches(epoch):
            consumed.append(tuple(batch["sample_ids"]))
            yield batch

    assert (tmp_path / "straight" / "step_3").is_dir() and (tmp_path / "straight" / "step_6").is_dir()
    resumed, _, result = run_loop(loop_args(tmp_path / "straight", *common, "--resume_from_checkpoint", "latest"),
                                  batches=recorded, seed=1)
    assert result.completed_steps == 8 and consumed == [(1, index) for index in range(8)]
    for name, parameter in straight.named_parameters():
        torch.testing.assert_close(resumed.get_parameter(name), parameter, rtol=0, atol=0, msg=name)


def test_ema_checkpoints_and_the_epoch_hook(tmp_path):
    args = loop_args(tmp_path, "--gradient_accumulation_steps", "2", "--num_train_epochs", "3",
                     "--max_train_steps", "10", "--checkpointing_steps", "epoch")
    ema = training.ExponentialMovingAverage(Regression(), decay=0.5)
    calls = []
    model, _, result = run_loop(args, ema=ema, on_epoch_end=lambda *call: calls.append(call))
    assert result.completed_steps == 10 and ema.updates == 10  # one update per optimiser step
    # 4 steps per epoch: the run stops two steps into the third epoch, which gets neither a checkpoint nor the hook
    assert calls == [(0, 4, False), (1, 8, False)]
    assert sorted(path.name for path in tmp_path.glob("epoch_*")) == ["epoch_0", "epoch_1"]


def test_a_process_that_runs_out_of_batches_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="epoch 0 gave 6 batches on process 0, fewer than the 8"):
        run_loop(loop_args(tmp_path), batches=lambda epoch: regression_batches(epoch, count=6))
    with pytest.raises(ValueError, match="has no loss: pass the training targets"):
        run_loop(loop_args(tmp_path), step=lambda model, batch, epoch: model(batch["inputs"]))


def test_named_losses_are_the_scalar_loss_fields():
    outputs = RegressionOutput(loss=torch.tensor(1.0), absolute_loss=torch.tensor(2.0), prediction=torch.zeros(3))
    assert training.named_losses(outputs).keys() == {"loss", "absolute_loss"}
    assert training.named_losses({"reconstruction_loss": torch.tensor(0.5), "depth_loss": None}).keys() == {
        "reconstruction_loss"}
