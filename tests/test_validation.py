"""The validation loss (concepts of role validation): its images never reach the optimizer, unchanged weights
measure the same number, the points arrive as events, in the run's record and in TensorBoard, continue after a
resume, and the intervals make it due as asked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.config import save_preset
from trainer.data.data import EpochPlan, collect_items
from trainer.event_log import read_event_log
from trainer.train.intervals import Actions, Boundaries
from trainer.train.validation import validation_timesteps

HELD_OUT = "a green square held out"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Four green 32 px images whose caption no training image has."""
    folder = tmp_path_factory.mktemp("held_out")
    for i in range(4):
        Image.new("RGB", (40, 32), (20, 200 + 10 * i, 40)).save(folder / f"green{i}.png")
        (folder / f"green{i}.txt").write_text(HELD_OUT + "\n")
    return folder


def preset_with(tmp_path, model, colors, held_out=None, sampling=None, **sections):
    """color_concept trained on (8 images, batch 2: 4 steps an epoch), and held_out as a validation concept."""
    concepts = [{"name": "colors", "path": str(colors)}]
    if held_out is not None:
        concepts.append({"name": "held out", "path": str(held_out), "role": "validation"})
    return make_preset(tmp_path, model, colors, concepts=concepts,
                       sampling={"unit": "never", **(sampling or {})},
                       backup={"backup_unit": "never", "rolling_backups": 0, **sections.pop("backup", {})},
                       **sections)


def points(events) -> list[tuple[int, float]]:
    return [(e.step, e.loss) for e in events if isinstance(e, ev.ValidationLoss)]


def test_timesteps_are_spread_evenly_inside_the_training_range():
    """kohya's np.linspace(min, max, 6)[1:-1]: 200, 400, 600, 800 of 1000; inside a narrowed range too."""
    assert validation_timesteps(0, 1000) == [200, 400, 600, 800]
    inside = validation_timesteps(100, 501)
    assert inside == [180, 260, 340, 420] and all(100 <= t < 501 for t in inside)
    assert validation_timesteps(0, 3) == [0, 1, 1, 2]  # a range narrower than the count: still inside


def test_validation_images_never_enter_the_training_plan(tiny_model_dir, color_concept, held_out, tmp_path):
    """The epoch plan holds the training images alone, epoch after epoch; the validation plan the validation
    images alone, each once."""
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, held_out, training={"epochs": 3})
    items = collect_items(preset)
    assert sum(1 for i in items if i.path.parent == held_out) == 4
    plan = EpochPlan(preset, items)
    for epoch in range(3):
        used = {plan.items[i].path.parent for step in plan.layout(epoch) for s in step for i in s.items}
        assert used == {color_concept}
    held = EpochPlan(preset, items, validation=True)
    uses = sorted(held.items[i].path.name for step in held.layout(0) for s in step for i in s.items)
    assert uses == [f"green{i}.png" for i in range(4)]


def test_validation_images_never_reach_the_optimizer(tiny_model_dir, color_concept, held_out, tmp_path,
                                                     monkeypatch):
    """A run with a validation concept: no micro-batch the training loss is computed on holds its caption, the
    weights end bit for bit as those of the same run without it, and the loss is measured before the first
    step, after each epoch and at the end."""
    import trainer.train.step
    captions = []
    micro_batch_loss = trainer.train.step.micro_batch_loss

    def observed(batch, *args, **kwargs):
        captions.extend(batch.captions)
        return micro_batch_loss(batch, *args, **kwargs)
    monkeypatch.setattr(trainer.train.step, "micro_batch_loss", observed)
    training = {"epochs": 2, "learning_rate": 1e-3}
    with_held_out = preset_with(tmp_path / "with", tiny_model_dir, color_concept, held_out, training=training)
    finished, events = run_stopping_at(with_held_out)
    assert finished.outcome == "completed" and finished.step == 8
    assert captions and HELD_OUT not in captions and len(captions) == 16
    assert [step for step, _ in points(events)] == [0, 4, 8]
    assert [(e.epoch, e.images) for e in events if isinstance(e, ev.ValidationLoss)] == [(0, 4), (1, 4), (2, 4)]
    losses = [loss for _, loss in points(events)]
    assert losses[0] != losses[-1]  # the weights moved, and so did the loss on images never trained on

    captions.clear()
    without = preset_with(tmp_path / "without", tiny_model_dir, color_concept, training=training)
    finished_without, events_without = run_stopping_at(without)
    assert points(events_without) == [] and len(captions) == 16
    a, b = load_file(finished.output_path), load_file(finished_without.output_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unchanged_weights_measure_the_same_number(tiny_model_dir, color_concept, held_out, tmp_path):
    """Learning rate 0 (the weights never change): every measurement of the run gives exactly the same loss,
    with random flips and crops of the validation images and offset noise on (all drawn the same each time)."""
    preset = make_preset(tmp_path, tiny_model_dir, color_concept,
                         concepts=[{"name": "colors", "path": str(color_concept)},
                                   {"name": "held out", "path": str(held_out), "role": "validation",
                                    "random_flip": True, "crop_jitter": True}],
                         training={"learning_rate": 0.0, "epochs": 3, "noise_offset": 0.1},
                         sampling={"unit": "never", "validate_every": 2, "validate_unit": "steps"},
                         backup={"backup_unit": "never"})
    _, events = run_stopping_at(preset)
    losses = [loss for _, loss in points(events)]
    assert len(losses) == 7 and len(set(losses)) == 1  # steps 0, 2, ..., 12
    assert losses[0] > 0


def test_points_are_recorded_and_written_to_tensorboard(tiny_model_dir, color_concept, held_out, tmp_path):
    """Every point is in the run's record (events.jsonl, which the window replays) and TensorBoard's
    loss/validation at its step; one line each in the log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trainer.event_log import EventRecorder
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, held_out, general={"tensorboard": True},
                         sampling={"validate_every": 3, "validate_unit": "steps"}, training={"epochs": 2})
    from trainer.train.loop import train
    events = []
    train(preset, EventRecorder(events.append))
    assert [step for step, _ in points(events)] == [0, 3, 6, 8]
    recorded = read_event_log(preset.general.workspace_dir)
    assert points(recorded) == points(events)
    assert sum("Validation loss at step" in getattr(e, "text", "") for e in events) == 4
    board = EventAccumulator(str(Path(preset.general.workspace_dir) / "tensorboard"))
    board.Reload()
    scalars = [(s.step, s.value) for s in board.Scalars("loss/validation")]
    assert scalars == [(step, pytest.approx(loss, rel=1e-6)) for step, loss in points(events)]


def test_a_resumed_run_continues_the_series(tiny_model_dir, color_concept, held_out, tmp_path):
    """Stopped at step 3 and resumed: the resumed run first sends the points its backup kept, then measures on;
    together they are the uninterrupted run's points, number for number (the validation never touches the
    training's random state, so the resumed weights are the same)."""
    sections = {"sampling": {"validate_every": 2, "validate_unit": "steps"}}
    whole = preset_with(tmp_path / "whole", tiny_model_dir, color_concept, held_out, **sections)
    _, whole_events = run_stopping_at(whole)
    assert [step for step, _ in points(whole_events)] == [0, 2, 4]

    parted = preset_with(tmp_path / "parted", tiny_model_dir, color_concept, held_out, **sections)
    stopped, first = run_stopping_at(parted, stop_at=3)
    assert stopped.outcome == "stopped" and [step for step, _ in points(first)] == [0, 2]
    finished, second = run_stopping_at(parted, resume="latest")
    assert finished.outcome == "completed"
    assert points(second) == points(whole_events)


def test_boundaries_make_validation_due_only_with_a_validation_concept(tiny_model_dir, color_concept, held_out,
                                                                        tmp_path):
    """validate_every/unit as the other intervals; nothing is due without an enabled validation concept."""
    steps = preset_with(tmp_path, tiny_model_dir, color_concept, held_out,
                        sampling={"validate_every": 2, "validate_unit": "steps"})
    due = Boundaries(steps, total_steps=8)
    assert [due.after_step(s).validate for s in range(1, 7)] == [False, True, False, True, False, True]
    assert due.after_step(2) == Actions(validate=True) and due.after_step(2).any()
    assert due.with_commands(Actions(validate=True), {ev.SAMPLE_NOW}, 2) == Actions(sample=True, validate=True)
    epochs = preset_with(tmp_path, tiny_model_dir, color_concept, held_out)  # the default: every epoch
    assert Boundaries(epochs, total_steps=8).after_epoch(1, step=4) == Actions(validate=True)
    assert Boundaries(epochs, total_steps=8).after_epoch(2, step=8) == Actions()  # the end measures its own
    epochs.concepts[1].enabled = False
    assert Boundaries(epochs, total_steps=8).after_epoch(1, step=4) == Actions()
    never = preset_with(tmp_path, tiny_model_dir, color_concept, sampling={"validate_every": 1,
                                                                           "validate_unit": "steps"})
    assert not Boundaries(never, total_steps=8).after_step(1).validate


def test_validate_unit_never_measures_nothing_and_says_so(tiny_model_dir, color_concept, held_out, tmp_path):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, held_out, sampling={"validate_unit": "never"})
    finished, events = run_stopping_at(preset)
    assert finished.outcome == "completed" and points(events) == []
    assert any(isinstance(e, ev.Log) and e.level == "warning" and "never trained on" in e.text for e in events)


def test_backups_keep_the_history(tiny_model_dir, color_concept, held_out, tmp_path):
    """A backup's state holds the points measured so far, as plain numbers."""
    from trainer.train.backup import load_backup
    from trainer.train.runs import complete_backups
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, held_out,
                         sampling={"validate_every": 1, "validate_unit": "steps"},
                         backup={"backup_unit": "steps", "backup_every": 2, "backup_before_save": False})
    _, events = run_stopping_at(preset)
    backup = complete_backups(Path(preset.general.workspace_dir) / "backup")[0]
    assert backup.name.startswith("step0000002")
    _, state = load_backup(backup)
    assert [tuple(p) for p in state["validation"]["history"]] == [
        (e.step, e.epoch, e.loss) for e in events if isinstance(e, ev.ValidationLoss) and e.step <= 2]


def test_two_processes_measure_on_the_main_one(tiny_model_dir, color_concept, held_out, tmp_path):
    """Under `accelerate launch` with two processes the main one measures (the other goes on to the next step's
    gradient exchange and waits there): the run completes, both copies of the model stay identical, and the
    points are reported once each."""
    import json

    from test_multiprocess import launch
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, held_out, training={"epochs": 2})
    save_preset(preset, tmp_path / "preset.json")
    result = launch(tmp_path / "preset.json", tmp_path / "dump")
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / "dump" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["unet_sha256"] == r1["unet_sha256"]
    recorded = read_event_log(preset.general.workspace_dir)
    assert [step for step, _ in points(recorded)] == [0, 2, 4]  # 2 optimizer steps an epoch on 2 processes
    assert result.stderr.count("Validation loss at step") == 3



def test_a_schedule_free_optimizer_is_measured_at_its_evaluation_weights(tiny_model_dir, color_concept, held_out,
                                                                         tmp_path):
    """adamw_schedulefree trains y but is evaluated and saved at its average x (optim.Stepper.evaluation_weights):
    the run's last point is the loss of the model it wrote, measured again from that file before any step."""
    preset = preset_with(tmp_path / "first", tiny_model_dir, color_concept, held_out,
                         training={"optimizer": "adamw_schedulefree", "learning_rate": 1e-2})
    finished, events = run_stopping_at(preset)
    last = points(events)[-1]
    assert last[0] == finished.step == 4
    again = preset_with(tmp_path / "again", finished.output_path, color_concept, held_out,
                        training={"learning_rate": 0.0, "max_steps": 1})
    _, events_again = run_stopping_at(again)
    assert points(events_again)[0] == (0, last[1])
