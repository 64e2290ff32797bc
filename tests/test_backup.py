"""Backups, saves and exact resume; faults (kill, NaN, full disk, unwritable output) lose nothing."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.config import save_preset
from trainer.errors import InputError
from trainer.train import losses
from trainer.train.backup import complete_backups, prune_backups
from trainer.train.intervals import Interval

STEPS = 12
TRAINING = {"max_steps": STEPS, "batch_size": 2, "optimizer": "adamw", "lr_scheduler": "cosine",
            "lr_warmup_steps": 3, "ema": "cpu", "ema_decay": 0.9}


def preset_for(tmp_path, model, concept, **backup):
    return make_preset(tmp_path, model, concept, training=TRAINING,
                       backup={"backup_unit": "never", "rolling_backups": 0, **backup})


run = run_stopping_at


def final_state(preset):
    """(weights, optimizer state, EMA state, LR schedule) of the newest backup of a run."""
    folder = complete_backups(Path(preset.general.workspace_dir) / "backup")[-1]
    state = torch.load(folder / "state.pt", weights_only=True)
    return load_file(str(folder / "unet.safetensors")), state


def assert_same_state(a, b):
    (wa, sa), (wb, sb) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa if isinstance(pa[k], torch.Tensor))
    assert all(torch.equal(x, y) for x, y in zip(sa["ema"]["shadow"], sb["ema"]["shadow"]))
    assert sa["lr_scheduler"]["last_epoch"] == sb["lr_scheduler"]["last_epoch"] == STEPS
    assert sa["lr_scheduler"]["_last_lr"] == sb["lr_scheduler"]["_last_lr"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, color_concept, tmp_path_factory):
    preset = preset_for(tmp_path_factory.mktemp("full"), tiny_model_dir, color_concept)
    finished, events = run(preset)
    assert finished.outcome == "completed"
    return final_state(preset), load_file(finished.output_path)


# ---- intervals, rolling deletion ------------------------------------------------------------------------

def test_intervals_for_each_unit():
    steps = Interval(3, "steps")
    assert [s for s in range(1, 10) if steps.due_after_step(s)] == [3, 6, 9]
    epochs = Interval(2, "epochs")
    assert not any(epochs.due_after_step(s) for s in range(1, 10))
    assert [e for e in range(1, 7) if epochs.due_after_epoch(e)] == [2, 4, 6]
    now = [0.0]
    minutes = Interval(2, "minutes", clock=lambda: now[0])
    due = []
    for step in range(1, 11):
        now[0] += 30  # half a minute per step
        if minutes.due_after_step(step):
            due.append(step)
    assert due == [4, 8]
    never = Interval(1, "never")
    assert not any(never.due_after_step(s) or never.due_after_epoch(s) for s in range(1, 10))


def test_rolling_deletion_keeps_the_newest(tmp_path):
    for step in (5, 10, 15, 20):
        folder = tmp_path / f"step{step:07d}"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"step": step}))
    (tmp_path / ".step0000025.tmp-1").mkdir()  # unfinished: never counted, never picked
    prune_backups(tmp_path, 2)
    assert [p.name for p in complete_backups(tmp_path)] == ["step0000015", "step0000020"]
    prune_backups(tmp_path, 0)
    assert len(complete_backups(tmp_path)) == 2


# ---- exact resume --------------------------------------------------------------------------------------

def test_backup_before_save_on_completion_and_stop(tiny_model_dir, color_concept, tmp_path):
    preset = preset_for(tmp_path, tiny_model_dir, color_concept, backup_unit="steps", backup_every=4,
                        rolling_backups=2)
    finished, events = run(preset, stop_at=6)
    assert finished.outcome == "stopped" and finished.step == 6
    kinds = [(e.kind, e.step) for e in events if isinstance(e, ev.CheckpointWritten)]
    assert kinds == [("backup", 4), ("backup", 6), ("final", 6)]
    names = [p.name for p in complete_backups(tmp_path / "ws" / "backup")]
    assert names == ["step0000004-epoch0001", "step0000006-epoch0002"]
    finished, events = run(preset, resume="latest")
    assert finished.outcome == "completed"
    assert [(e.kind, e.step) for e in events if isinstance(e, ev.CheckpointWritten)] == \
        [("backup", 8), ("backup", 12), ("final", 12)]
    assert len(complete_backups(tmp_path / "ws" / "backup")) == 2  # rolling: the newest two

    # Stopped on a step whose periodic backup was just written: the end does not write it again.
    preset = preset_for(tmp_path / "again", tiny_model_dir, color_concept, backup_unit="steps", backup_every=3)
    finished, events = run(preset, stop_at=6)
    kinds = [(e.kind, e.step) for e in events if isinstance(e, ev.CheckpointWritten)]
    assert finished.step == 6 and kinds == [("backup", 3), ("backup", 6), ("final", 6)]


def test_resume_after_stop_is_exact(tiny_model_dir, color_concept, tmp_path, uninterrupted):
    preset = preset_for(tmp_path, tiny_model_dir, color_concept)
    assert run(preset, stop_at=5)[0].outcome == "stopped"
    finished, events = run(preset, resume="latest")
    assert any("Resumed from" in e.text and "step 5" in e.text for e in events if isinstance(e, ev.Log))
    assert [e.step for e in events if isinstance(e, ev.Progress)] == list(range(6, STEPS + 1))
    assert_same_state(final_state(preset), uninterrupted[0])
    out = load_file(finished.output_path)
    assert all(torch.equal(out[k], uninterrupted[1][k]) for k in out)  # the saved EMA model too


def cli_preset(tmp_path, model, concept, **backup) -> Path:
    path = tmp_path / "preset.json"
    save_preset(preset_for(tmp_path, model, concept, **backup), path)
    return path


def start_cli(preset_path, probe=(), *extra):
    """`python -m trainer train PRESET ...`, or through tests/train_probe.py with its options `probe`."""
    head = [str(Path(__file__).parent / "train_probe.py"), *probe] if probe else ["-m", "trainer"]
    cmd = [sys.executable, *head, "train", str(preset_path), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("moment", ["mid-step", "mid-backup"])
def test_resume_after_sigkill_is_exact(moment, tiny_model_dir, color_concept, tmp_path, uninterrupted):
    preset_path = cli_preset(tmp_path, tiny_model_dir, color_concept, backup_unit="steps", backup_every=3)
    backups = tmp_path / "ws" / "backup"
    probe = ("--slow-backup-files", "1.5") if moment == "mid-backup" else ()
    child = start_cli(preset_path, probe, "--quiet")
    try:
        if moment == "mid-step":
            assert wait_for(lambda: complete_backups(backups)), child.stderr and child.communicate()[1][-2000:]
        else:  # one complete backup, then kill while the next one is being written
            assert wait_for(lambda: complete_backups(backups) and list(backups.glob(".*.tmp-*")))
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    if moment == "mid-backup":
        assert list(backups.glob(".*.tmp-*")) and len(complete_backups(backups)) == 1
    resumed = start_cli(preset_path, (), "--resume", "latest")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "Resumed from" in err
    from trainer.config import load_preset
    assert_same_state(final_state(load_preset(preset_path)), uninterrupted[0])


def test_incompatible_resume_is_refused_and_harmless_change_allowed(tiny_model_dir, color_concept, tmp_path):
    preset = preset_for(tmp_path, tiny_model_dir, color_concept)
    run(preset, stop_at=2)
    preset.training.batch_size = 4
    with pytest.raises(InputError, match=r"training\.batch_size: changed since the backup \(2 -> 4\)"):
        run(preset, resume="latest")
    preset.training.batch_size = 2
    preset.sampling.every = 7
    # a new learning rate and weight decay take effect from the resumed step on (the backup's would come back)
    preset.training.learning_rate, preset.training.weight_decay = 3e-4, 0.05
    finished, events = run(preset, resume="latest")
    assert finished.outcome == "completed"
    said = next(e.text for e in events if isinstance(e, ev.Log) and "harmless" in e.text)
    assert "sampling.every (" in said and "training.learning_rate (0.001 -> 0.0003)" in said
    state = final_state(preset)[1]
    assert state["lr_scheduler"]["base_lrs"] == [3e-4]
    assert [(g["initial_lr"], g["weight_decay"]) for g in state["optimizer"]["param_groups"]] == [(3e-4, 0.05)]
    with pytest.raises(InputError, match="not a complete backup"):
        run(preset, resume=str(tmp_path / "nowhere"))


def test_the_average_may_move_between_cpu_and_gpu_memory_on_resume():
    from trainer.config import Preset
    from trainer.train.backup import compare_presets
    saved, moved, off = Preset(), Preset(), Preset()
    saved.training.ema, moved.training.ema, off.training.ema = "cpu", "gpu", "off"
    assert compare_presets(saved, moved) == ["training.ema ('cpu' -> 'gpu')"]
    with pytest.raises(InputError, match=r"training\.ema: changed since the backup \('cpu' -> 'off'\)"):
        compare_presets(saved, off)


def test_a_resumed_schedule_goes_on_at_the_presets_rates():
    from types import SimpleNamespace

    from trainer.train.backup import TrainingState
    from trainer.train.optim import make_lr_scheduler

    def training_state(lr, weight_decay):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=weight_decay)
        schedule = make_lr_scheduler("cosine", optimizer, 2, 10)
        losses = SimpleNamespace(state_dict=dict, load_state_dict=lambda _state: None)
        return TrainingState(optimizer, schedule, None, None, losses), weight

    before, weight = training_state(1e-3, 0.01)
    for _ in range(4):
        weight.sum().backward()
        before.optimizer.step(), before.lr_scheduler.step(), before.optimizer.zero_grad()
    saved = before.state_dict()
    after, _ = training_state(2e-4, 0.1)
    after.load_state_dict(saved)
    factor = after.lr_scheduler.lr_lambdas[0](4)
    group = after.optimizer.param_groups[0]
    assert 0 < factor < 1 and group["lr"] == pytest.approx(2e-4 * factor) and group["weight_decay"] == 0.1
    assert after.lr_scheduler.get_last_lr() == [group["lr"]] and after.lr_scheduler.last_epoch == 4
    assert after.optimizer.state_dict()["state"][0]["step"] == 4  # the moments are the backup's


# ---- NaN, disk full, unwritable output, interrupted save -----------------------------------------------

def nan_at(monkeypatch, bad_calls: set[int]):
    real, calls = losses.diffusion_loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls[0] in bad_calls else value
    monkeypatch.setattr(losses, "diffusion_loss", loss)


def test_nan_loss_fails_naming_the_step_and_keeps_the_backup(tiny_model_dir, color_concept, tmp_path,
                                                             monkeypatch):
    preset = preset_for(tmp_path, tiny_model_dir, color_concept, backup_unit="steps", backup_every=1)
    nan_at(monkeypatch, {3})
    from trainer.errors import NonFiniteLoss
    with pytest.raises(NonFiniteLoss, match="at step 3; the weights were not updated") as e:
        run(preset)
    assert "learning rate too high" in str(e.value)
    assert [p.name for p in complete_backups(tmp_path / "ws" / "backup")][-1] == "step0000002-epoch0001"


def test_nan_run_failure_through_session(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    from trainer.session import TrainingSession
    preset = preset_for(tmp_path, tiny_model_dir, color_concept, backup_unit="steps", backup_every=1)
    nan_at(monkeypatch, {3})
    session = TrainingSession(preset)
    session.start()
    assert session.join(120)
    finished = list(session.events.queue)[-1]
    assert finished.outcome == "failed" and "step 3" in finished.message and "fp16" in finished.message
    backups = complete_backups(tmp_path / "ws" / "backup")
    assert [p.name for p in backups] == ["step0000001-epoch0001", "step0000002-epoch0001"]
    weights = load_file(str(backups[-1] / "unet.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not Path(preset.model.output_path).exists()  # poisoned weights are never saved


def test_skip_nan_steps_skips_bad_batches(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    preset = preset_for(tmp_path, tiny_model_dir, color_concept)
    preset.training.skip_nan_steps = 2
    nan_at(monkeypatch, {3, 5})
    finished, events = run(preset)
    assert finished.outcome == "completed", finished.message
    assert sum("Skipped step" in e.text for e in events if isinstance(e, ev.Log)) == 2
    assert all(torch.isfinite(w).all() for w in load_file(finished.output_path).values())


def test_disk_full_during_backup_keeps_earlier_files(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    import safetensors.torch
    preset = preset_for(tmp_path, tiny_model_dir, color_concept, backup_unit="steps", backup_every=2)
    real, calls = safetensors.torch.save_file, [0]

    def save_file(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the second backup's weights
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    from trainer.session import TrainingSession
    session = TrainingSession(preset)
    session.start()
    assert session.join(120)
    finished = list(session.events.queue)[-1]
    assert finished.outcome == "failed" and "No space left on device" in finished.message
    backups = tmp_path / "ws" / "backup"
    assert [p.name for p in complete_backups(backups)] == ["step0000002-epoch0001"]
    assert not list(backups.glob(".*"))  # the half-written backup was removed
    assert load_file(str(complete_backups(backups)[0] / "unet.safetensors"))


def test_unwritable_output_exits_2_before_loading(tiny_model_dir, color_concept, tmp_path, capsys):
    from trainer.__main__ import main
    (tmp_path / "a_file").write_text("not a folder")
    preset = preset_for(tmp_path, tiny_model_dir, color_concept)
    preset.model.output_path = str(tmp_path / "a_file" / "model.safetensors")
    save_preset(preset, tmp_path / "p.json")
    assert main(["train", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "model.output_path:" in err and "a_file is a file" in err and "Traceback" not in err
    assert "Loading" not in err


def test_not_enough_disk_exits_2(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    preset = preset_for(tmp_path, tiny_model_dir, color_concept)
    with pytest.raises(InputError, match=r"general.workspace_dir: only 0.0 GiB free"):
        run(preset)


def test_interrupted_save_leaves_the_old_file_readable(tiny_model_dir, tmp_path, monkeypatch):
    from trainer.model import models
    components = models.load_model(str(tiny_model_dir))
    target = tmp_path / "model.safetensors"
    models.save_model(components, target, "single_file", "float16", {"modelspec.title": "old"})
    before = load_file(str(target))

    def no_rename(src, dst):
        raise OSError(errno.EIO, "interrupted before rename")
    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        models.save_model(components, target, "single_file", "float32", {"modelspec.title": "new"})
    monkeypatch.undo()
    after = load_file(str(target))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind


def test_signals_backup_now_and_ctrl_c_stops_cleanly(tiny_model_dir, color_concept, tmp_path):
    preset = preset_for(tmp_path, tiny_model_dir, color_concept)
    preset.training.max_steps = 100000
    preset.training.epochs = 100000
    save_preset(preset, tmp_path / "p.json")
    child = start_cli(tmp_path / "p.json")
    backups = tmp_path / "ws" / "backup"
    try:
        assert wait_for(lambda: (tmp_path / "ws" / "preset.json").exists())
        time.sleep(3)
        child.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: complete_backups(backups), 60)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err[-2000:]
    assert len(complete_backups(backups)) == 2  # the one asked for, and the one on stop
    assert Path(preset.model.output_path).is_file() and "stopped" in err


def test_out_of_memory_fails_with_suggestions(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from trainer.session import TrainingSession

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(UNet2DConditionModel, "forward", oom)
    session = TrainingSession(preset_for(tmp_path, tiny_model_dir, color_concept))
    session.start()
    assert session.join(120)
    finished = list(session.events.queue)[-1]
    assert finished.outcome == "failed" and not finished.bad_input
    for advice in ("Out of GPU memory", "batch size", "gradient checkpointing", "8-bit AdamW", "resolution",
                   "low-VRAM preset"):
        assert advice in finished.message
