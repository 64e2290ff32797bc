"""The engine end to end on the tiny model: CLI, events, optimizers, accumulation, text encoder, EMA, learning."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_presets import make_preset
from trainer import events as ev
from trainer.__main__ import main as cli_main
from trainer.config import save_preset
from trainer.config import LR_SCHEDULERS, OPTIMIZERS
from trainer.session import TrainingSession
from trainer.train.loop import train

ROOT = Path(__file__).parents[1]


def run_train(preset):
    """Train in this process; returns (RunFinished, list of events)."""
    events = []
    finished = train(preset, events.append, queue.Queue())
    return finished, events


def unet_weights(path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}


def te_weights(path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("cond_stage_model.")}


@pytest.fixture(scope="module")
def initial(tiny_model_dir, tmp_path_factory):
    """The tiny model as a float32 single file, the reference for 'weights changed'."""
    from trainer.model.models import load_model, save_model
    return save_model(load_model(str(tiny_model_dir)), tmp_path_factory.mktemp("init") / "init.safetensors",
                      "single_file", "float32", {})


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_cli_demo_run_writes_model_samples_and_tensorboard(tmp_path):
    cmd = [sys.executable, "-m", "trainer", "train", str(ROOT / "presets" / "demo.json"), "--quiet",
           "--set", "training.max_steps=4", "--set", "sampling.every=2", "--set", "general.tensorboard=true"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "workspace" / "demo" / "model.safetensors"
    from trainer.model.models import load_model
    trained = load_model(str(out), base_config=str(tmp_path / "demo" / "model"))
    base = load_model(str(tmp_path / "demo" / "model"))
    assert any(not torch.equal(a, b) for a, b in zip(trained.unet.state_dict().values(),
                                                       base.unet.state_dict().values()))
    samples = sorted(p.name for p in (tmp_path / "workspace" / "demo" / "samples").glob("*.png"))
    # before training: epoch 0; steps 2 and 4 of the first epoch: epoch 1 (backup.Position.epoch_number)
    assert samples == [f"step{s:07d}-epoch{min(s, 1):04d}-prompt{i:02d}-seed{i + 1}.png" for s in (0, 2, 4)
                       for i in (0, 1)]
    assert list((tmp_path / "workspace" / "demo" / "tensorboard").glob("events.out.tfevents.*"))
    resolved = json.loads((tmp_path / "workspace" / "demo" / "preset.json").read_text())
    assert resolved["training"]["max_steps"] == 4 and resolved["version"] == 1


def test_session_events_in_order_and_one_finish(tiny_model_dir, color_concept, tmp_path):
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 3},
                         sampling={"unit": "steps", "every": 2,
                                   "prompts": [{"prompt": "a red square", "width": 32, "height": 32, "steps": 2}]})
    session = TrainingSession(preset)
    session.start()
    assert session.join(120)
    events = []
    while not session.events.empty():
        events.append(session.events.get())
    kinds = [type(e) for e in events]
    assert kinds.count(ev.RunFinished) == 1 and kinds[-1] is ev.RunFinished
    assert events[-1].outcome == "completed", events[-1].message
    assert kinds.index(ev.RunStarted) < kinds.index(ev.Progress)
    assert [e.step for e in events if isinstance(e, ev.Progress)] == [1, 2, 3]
    samples = [e for e in events if isinstance(e, ev.SampleReady)]
    assert [s.step for s in samples] == [2, 3] and all(Path(s.path).is_file() for s in samples)
    assert [e.kind for e in events if isinstance(e, ev.CheckpointWritten)] == ["backup", "final"]


def test_session_failure_still_ends_with_one_finish(tiny_model_dir, color_concept, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a model at all")
    preset = make_preset(tmp_path, bad, color_concept)
    session = TrainingSession(preset)
    session.start()
    assert session.join(60)
    events = list(session.events.queue)
    assert [type(e) for e in events].count(ev.RunFinished) == 1
    assert events[-1].outcome == "failed" and events[-1].bad_input and "broken.safetensors" in events[-1].message


def test_stop_command_ends_stopped_and_saves(tiny_model_dir, color_concept, tmp_path):
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"epochs": 50})
    commands = queue.Queue()
    commands.put(ev.Command(ev.STOP))
    events = []
    finished = train(preset, events.append, commands)
    assert finished.outcome == "stopped" and finished.step == 1
    assert Path(finished.output_path).is_file()


@pytest.mark.parametrize("optimizer, schedule", list(zip(OPTIMIZERS, LR_SCHEDULERS)))
def test_each_optimizer_and_schedule_trains(optimizer, schedule, tiny_model_dir, color_concept, tmp_path, initial):
    lr = 1.0 if optimizer == "prodigy" else 1e-3
    preset = make_preset(tmp_path, tiny_model_dir, color_concept,
                         training={"max_steps": 3, "optimizer": optimizer, "lr_scheduler": schedule,
                                   "learning_rate": lr, "lr_warmup_steps": 1})
    finished, events = run_train(preset)
    assert finished.outcome == "completed", finished.message
    assert differs(unet_weights(initial), unet_weights(finished.output_path))
    lrs = [e.lr for e in events if isinstance(e, ev.Progress)]
    assert len(lrs) == 3 and all(x >= 0 for x in lrs)


def test_loss_falls_on_a_fixed_image(tiny_model_dir, tmp_path):
    from PIL import Image
    (tmp_path / "one").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "one" / "a.png")
    preset = make_preset(tmp_path, tiny_model_dir, tmp_path / "one", training={"epochs": 40, "batch_size": 1},
                         concepts=[{"path": str(tmp_path / "one"), "caption_source": "single", "caption": "red"}])
    finished, events = run_train(preset)
    losses = [e.loss for e in events if isinstance(e, ev.Progress)]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10, losses


def test_gradient_accumulation_matches_larger_batch(tiny_model_dir, color_concept, tmp_path, initial):
    common = {"max_steps": 1, "optimizer": "sgd", "max_grad_norm": 0.0, "learning_rate": 0.5}
    big = run_train(make_preset(tmp_path / "a", tiny_model_dir, color_concept,
                                training={**common, "batch_size": 2}))[0]
    acc = run_train(make_preset(tmp_path / "b", tiny_model_dir, color_concept,
                                training={**common, "batch_size": 1, "gradient_accumulation_steps": 2}))[0]
    one = run_train(make_preset(tmp_path / "c", tiny_model_dir, color_concept,
                                training={**common, "batch_size": 1}))[0]
    w0 = unet_weights(initial)
    a, b, c = unet_weights(big.output_path), unet_weights(acc.output_path), unet_weights(one.output_path)

    def gap(x, y):  # distance between two updates, relative to the size of the update
        return (sum((x[k] - y[k]).norm() ** 2 for k in w0) / sum((x[k] - w0[k]).norm() ** 2 for k in w0)).sqrt()
    assert gap(a, b) < 1e-3  # float32 rounding differs between batch shapes
    assert gap(a, c) > 0.05  # one sample alone gives another update: the test can tell them apart


def test_text_encoder_trains_then_freezes_after_stop_epoch(tiny_model_dir, color_concept, tmp_path, initial):
    training = {"train_text_encoder": True, "text_encoder_learning_rate": 1e-3, "text_encoder_stop_epoch": 1}
    one = run_train(make_preset(tmp_path / "a", tiny_model_dir, color_concept, training={**training, "epochs": 1}))
    three = run_train(make_preset(tmp_path / "b", tiny_model_dir, color_concept, training={**training, "epochs": 3}))
    assert differs(te_weights(initial), te_weights(one[0].output_path))  # it learned during epoch 0
    te1, te3 = te_weights(one[0].output_path), te_weights(three[0].output_path)
    assert not differs(te1, te3)  # and did not move after its stop epoch
    assert differs(unet_weights(one[0].output_path), unet_weights(three[0].output_path))
    assert any("Text encoder frozen from epoch 1" in e.text for e in three[1] if isinstance(e, ev.Log))


def test_text_encoder_untouched_when_not_trained(tiny_model_dir, color_concept, tmp_path, initial):
    finished = run_train(make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 2}))[0]
    assert not differs(te_weights(initial), te_weights(finished.output_path))


def test_ema_is_saved_and_differs_from_raw(tiny_model_dir, color_concept, tmp_path, initial):
    training = {"epochs": 3, "optimizer": "sgd", "learning_rate": 0.05}
    raw = run_train(make_preset(tmp_path / "a", tiny_model_dir, color_concept, training=training))[0]
    ema = run_train(make_preset(tmp_path / "b", tiny_model_dir, color_concept,
                                training={**training, "ema": "cpu", "ema_decay": 0.5}))[0]
    w0, wr, we = unet_weights(initial), unet_weights(raw.output_path), unet_weights(ema.output_path)
    assert differs(wr, we) and differs(w0, we)
    moved_raw = sum((wr[k] - w0[k]).norm() for k in w0)
    moved_ema = sum((we[k] - w0[k]).norm() for k in w0)
    assert 0 < moved_ema < moved_raw  # the average lags behind the raw weights


@pytest.mark.parametrize("training", [
    {"min_snr_gamma": 5.0, "noise_offset": 0.1},
    {"prediction_type": "v_prediction", "zero_terminal_snr": True},
    {"mixed_precision": "bf16", "gradient_checkpointing": True},
])
def test_training_options_run(training, tiny_model_dir, color_concept, tmp_path, initial):
    finished, events = run_train(make_preset(tmp_path, tiny_model_dir, color_concept,
                                             training={"max_steps": 2, **training}))
    assert finished.outcome == "completed", finished.message
    assert differs(unet_weights(initial), unet_weights(finished.output_path))
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in events if isinstance(e, ev.Progress))


# ---- bad input: exit 2 with a message naming the problem ------------------------------------------------

def cli(preset, tmp_path, capsys, *extra) -> tuple[int, str]:
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    code = cli_main(["train", str(path), "--quiet", *extra])
    return code, capsys.readouterr().err


def test_missing_base_model_exits_2(color_concept, tmp_path, capsys):
    code, err = cli(make_preset(tmp_path, tmp_path / "nowhere", color_concept), tmp_path, capsys)
    assert code == 2 and "model.base_model" in err and "nowhere" in err


def test_unreadable_model_file_exits_2(color_concept, tmp_path, capsys):
    (tmp_path / "junk.ckpt").write_bytes(b"\x00garbage")
    code, err = cli(make_preset(tmp_path, tmp_path / "junk.ckpt", color_concept), tmp_path, capsys)
    assert code == 2 and "junk.ckpt" in err


def test_empty_concept_folder_exits_2(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = cli(make_preset(tmp_path, tiny_model_dir, tmp_path / "empty"), tmp_path, capsys)
    assert code == 2 and "no images" in err and "empty" in err
    assert "error: " in err and "failed: " not in err  # a refusal of the input, as the checks before a run say it


def test_bad_preset_exits_2(tmp_path, capsys):
    (tmp_path / "p.json").write_text('{"version": 1, "training": {"lerning_rate": 1}}')
    assert cli_main(["train", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert f"training.lerning_rate: unknown key; did you mean learning_rate? (in {tmp_path / 'p.json'})" in err
    (tmp_path / "image.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))  # an image, not a preset
    assert cli_main(["train", str(tmp_path / "image.json")]) == 2
    err = capsys.readouterr().err
    assert f"preset: {tmp_path / 'image.json'} is not a text file (an image or other binary file?); choose the " \
           "preset's .json file" in err
    assert "Traceback" not in err


def test_bad_override_exits_2(tiny_model_dir, color_concept, tmp_path, capsys):
    code, err = cli(make_preset(tmp_path, tiny_model_dir, color_concept), tmp_path, capsys,
                    "--set", "training.batch_size=0")
    assert code == 2 and "training.batch_size" in err


def test_cpu_threads_hold_for_the_run_and_are_given_back(tiny_model_dir, color_concept, tmp_path):
    """general.cpu_threads sets torch's threads while a CPU run trains (the demo uses 1: on a busy 2-core machine
    two threads stall); the count the process had comes back afterwards."""
    from trainer import events as ev
    from trainer.train.loop import train
    before = torch.get_num_threads()
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 2},
                         general={"cpu_threads": 1 if before != 1 else 2})
    during = []
    finished = train(preset, lambda e: during.append(torch.get_num_threads()) if isinstance(e, ev.Progress) else None,
                     queue.Queue())
    assert finished.outcome == "completed", finished.message
    assert during and set(during) == {preset.general.cpu_threads}
    assert torch.get_num_threads() == before
