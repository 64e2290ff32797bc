"""Data-parallel training under `accelerate launch` with two CPU processes (gloo): shares, lockstep, resume."""
from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tiny_presets import make_preset
from trainer.config import save_preset
from trainer.data.data import EpochPlan, collect_items
from trainer.errors import InputError
from trainer.train.backup import complete_backups

# 6 wide images (bucket 40x24 at 32 px) and 3 square ones (32x32): with batch 2 and two processes an epoch has
# 5 micro-batches, so its last optimizer step holds one, and the second process trains on padding there.
SIZES = [(48, 32)] * 6 + [(32, 32)] * 3
PROBE = Path(__file__).parent / "train_probe.py"
TRAINING = {"epochs": 2, "batch_size": 2, "optimizer": "adamw", "lr_scheduler": "cosine", "lr_warmup_steps": 1}


@pytest.fixture(scope="module")
def two_buckets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_buckets")
    for k, size in enumerate(SIZES):
        Image.new("RGB", size, (25 * k, 200 - 20 * k, 40 + 15 * k)).save(folder / f"img{k}.png")
        (folder / f"img{k}.txt").write_text(f"picture {k}\n")
    return folder


def preset_for(tmp_path, model, concept, **sections):
    return make_preset(tmp_path, model, concept, training={**TRAINING, **sections.pop("training", {})},
                       **sections)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_args(preset_path: Path, dump: Path, *extra) -> dict:
    """Popen arguments of `accelerate launch` with two processes. On a machine without GPUs `--cpu` starts only
    one process (several need mpirun), but `--multi_gpu` starts two through torchrun, and a preset on the CPU
    makes them talk over gloo. Through tests/train_probe.py each process writes dump/rank<N>.json."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(PROBE), "--rank-dump", str(dump), "train", str(preset_path),
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return {"args": cmd, "env": env}


def launch(preset_path: Path, dump: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(**launch_args(preset_path, dump, *extra), capture_output=True, text=True, timeout=240)


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def ranks(dump: Path) -> list[dict]:
    return [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, two_buckets, tmp_path_factory):
    """A two-epoch run on two processes, backups every 2 steps; its final model is kept aside."""
    tmp = tmp_path_factory.mktemp("ddp")
    preset = preset_for(tmp, tiny_model_dir, two_buckets, general={"tensorboard": True},
                        backup={"backup_unit": "steps", "backup_every": 2, "rolling_backups": 0},
                        sampling={"unit": "steps", "every": 3,
                                  "prompts": [{"prompt": "picture 1", "width": 32, "height": 32, "steps": 2}]})
    save_preset(preset, tmp / "preset.json")
    result = launch(tmp / "preset.json", tmp / "dump")
    assert result.returncode == 0, result.stderr[-4000:]
    shutil.copy(preset.model.output_path, tmp / "uninterrupted.safetensors")
    return preset, tmp, result


def test_plan_gives_each_process_a_disjoint_share_and_equal_step_counts(two_buckets, tmp_path):
    preset = preset_for(tmp_path, "unused-model", two_buckets, training={"gradient_accumulation_steps": 2})
    items = collect_items(preset)
    whole = EpochPlan(preset, items)
    for n in (2, 3):
        plans = [EpochPlan(preset, items, r, n) for r in range(n)]
        for epoch in range(3):
            layout = plans[0].layout(epoch)
            assert all(len(step) <= 2 * n for step in layout)  # 2 accumulated micro-batches per process
            assert sum(len(s.positions) for step in layout for s in step) == len(SIZES)
            shares = [p.process_steps(epoch) for p in plans]
            assert len({len(s) for s in shares}) == 1 == len({len(p.layout(epoch)) for p in plans})
            for k in range(len(layout)):
                assert len({len(share[k]) for share in shares}) == 1  # the same micro-batch count: lockstep
                real = [s for share in shares for s in share[k] if not s.padding]
                assert sorted(real, key=lambda s: s.positions) == sorted(layout[k], key=lambda s: s.positions)
                assert all(len(s.positions) == 1 for share in shares for s in share[k] if s.padding)
                assert plans[0].step_samples(epoch, k) == sum(len(s.positions) for s in layout[k])
    # one process: the same steps as before, no padding
    assert whole.process_steps(0) == whole.layout(0)
    sizes = {s.size for step in whole.layout(0) for s in step}
    assert len(sizes) == 2  # two buckets
    padded = EpochPlan(preset, items, 1, 2)
    batch = padded.load(next(s for step in padded.process_steps(0) for s in step if s.padding))
    assert batch.padding and batch.loss_weights == [0.0]


def test_two_processes_split_every_epoch_and_stay_identical(two_process_run, two_buckets):
    preset, tmp, result = two_process_run
    r0, r1 = ranks(tmp / "dump")
    assert (r0["process_index"], r1["process_index"]) == (0, 1) and r0["num_processes"] == 2
    assert r0["unet_sha256"] == r1["unet_sha256"]  # every step stepped both with the same averaged gradient
    plan = EpochPlan(preset, collect_items(preset))
    for epoch in ("0", "1"):
        a, b = set(r0["positions"][epoch]), set(r1["positions"][epoch])
        assert not a & b  # disjoint shares
        assert a | b == set(range(len(SIZES)))  # nothing dropped
        used = {plan.items[i].path.name for step in plan.layout(int(epoch)) for s in step for i in s.items}
        assert used == {f"img{k}.png" for k in range(len(SIZES))}
    assert r1["padding"] == 2 and r0["padding"] == 0  # the last step of each epoch
    # 3 optimizer steps an epoch (5 micro-batches over 2 processes), 6 in all
    out = result.stderr
    assert "completed after 6 steps" in out and out.count("completed:") == 1


def test_only_the_main_process_writes(two_process_run):
    preset, tmp, result = two_process_run
    r0, r1 = ranks(tmp / "dump")
    assert r1["written"] == []
    kinds = [kind for kind, _ in r0["written"]]
    assert kinds == ["backup", "sample", "backup", "sample", "backup", "final"]
    assert [p.name for p in complete_backups(tmp / "ws" / "backup")] == \
        ["step0000002-epoch0001", "step0000004-epoch0002", "step0000006-epoch0002"]
    assert json.loads((tmp / "ws" / "backup" / "step0000002-epoch0001" / "manifest.json").read_text())[
        "num_processes"] == 2
    assert len(list((tmp / "ws" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (tmp / "ws" / "samples").glob("*.png")) == \
        ["step0000003-epoch0001-prompt00-seed0.png", "step0000006-epoch0002-prompt00-seed0.png"]
    out = result.stderr
    assert out.count("final written:") == 1 and out.count("backup written:") == 3


def test_resume_with_two_processes_matches_the_uninterrupted_run(two_process_run):
    preset, tmp, _ = two_process_run
    backup = tmp / "ws" / "backup" / "step0000002-epoch0001"
    result = launch(tmp / "preset.json", tmp / "dump_resumed", "--resume", str(backup), "--quiet")
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = ranks(tmp / "dump_resumed")
    assert r0["unet_sha256"] == r1["unet_sha256"]
    assert sorted(r0["positions"]["0"] + r1["positions"].get("0", [])) == [8]  # the rest of epoch 0
    resumed, full = load_file(preset.model.output_path), load_file(str(tmp / "uninterrupted.safetensors"))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)


def test_resume_with_another_process_count_is_refused(two_process_run):
    from trainer.train.loop import train
    preset, tmp, _ = two_process_run
    backup = tmp / "ws" / "backup" / "step0000002-epoch0001"
    with pytest.raises(InputError, match=r"written by a run on 2 process\(es\) and this run has 1"):
        train(preset, lambda e: None, queue.Queue(), resume=str(backup))


def test_commands_sent_to_one_process_take_effect_on_both(tiny_model_dir, two_buckets, tmp_path):
    """SIGUSR1 (backup now) and then SIGINT (stop) go to the second process alone: both processes act at the
    same step (otherwise one would wait for ever in the next gradient exchange), and the main one writes."""
    import psutil
    preset = preset_for(tmp_path, tiny_model_dir, two_buckets, training={"epochs": 100000},
                        backup={"backup_unit": "never", "rolling_backups": 0})
    save_preset(preset, tmp_path / "preset.json")
    backups = tmp_path / "ws" / "backup"
    with open(tmp_path / "log.txt", "w") as log:  # a file: a full pipe would block the progress output
        launcher = subprocess.Popen(**launch_args(tmp_path / "preset.json", tmp_path / "dump", "--quiet"),
                                    stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: (tmp_path / "ws" / "preset.json").exists(), 120)  # signal handlers are set
        second = next(p for p in psutil.Process(launcher.pid).children(recursive=True)
                      if p.environ().get("RANK") == "1")
        second.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: complete_backups(backups), 120), (tmp_path / "log.txt").read_text()[-3000:]
        second.send_signal(signal.SIGINT)
        launcher.wait(120)
    finally:  # the training processes run in their own sessions: end them too if the test failed
        with contextlib.suppress(psutil.NoSuchProcess):
            workers = psutil.Process(launcher.pid).children(recursive=True) if launcher.poll() is None else []
            for worker in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.kill()
        launcher.kill()
    out = (tmp_path / "log.txt").read_text()
    assert "stopped: stopped after" in out, out[-3000:]
    r0, r1 = ranks(tmp_path / "dump")
    assert r0["unet_sha256"] == r1["unet_sha256"] and r1["written"] == []
    assert [kind for kind, _ in r0["written"]] == ["backup", "backup", "final"]  # asked for, on stop, final
    assert len(complete_backups(backups)) == 2 and Path(preset.model.output_path).is_file()


def test_a_lora_and_a_word_stay_identical_on_two_processes(tiny_model_dir, two_buckets, tmp_path):
    """The adapter's and the new word's gradients are averaged over the processes (DDP), so both processes hold
    the same adapter and word after every step; the files are written once."""
    for k in range(len(SIZES)):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        shutil.copy(two_buckets / f"img{k}.png", tmp_path / "imgs" / f"img{k}.png")
        (tmp_path / "imgs" / f"img{k}.txt").write_text(f"picture {k} in wordxq style\n")
    preset = preset_for(tmp_path, tiny_model_dir, tmp_path / "imgs",
                        training={"method": "lora", "lora_rank": 2, "train_text_encoder": True,
                                  "embedding_placeholder": "wordxq", "gradient_accumulation_steps": 2})
    preset.model.output_path = str(tmp_path / "out" / "lora.safetensors")
    save_preset(preset, tmp_path / "preset.json")
    result = launch(tmp_path / "preset.json", tmp_path / "dump")
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = ranks(tmp_path / "dump")
    assert r0["unet_sha256"] == r1["unet_sha256"] and r0["word_sha256"] == r1["word_sha256"] != ""
    assert load_file(str(tmp_path / "out" / "lora.safetensors")) and \
        load_file(str(tmp_path / "out" / "wordxq.safetensors"))["emb_params"].shape[0] == 1
