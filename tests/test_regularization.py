"""Regularization (prior-preservation) concepts: mixed into every epoch at their own rate against the training
image uses (kohya's balance), every image of a large set taking its turn, their loss weighted by the concept's loss
weight (kohya's prior loss weight), and what training sees of them."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from data_helpers import plan_for, use_counts
from tiny_presets import make_preset, run_stopping_at
from trainer.config import ConfigError, validate
from trainer.errors import InputError

TRAIN_CAPTION, REG_CAPTION = "a red square", "a photo of a square"


def folder_of(path: Path, count: int, caption: str, rgb=(230, 20, 20)) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (32, 32), (rgb[0], (rgb[1] + 9 * i) % 256, rgb[2])).save(path / f"img{i}.png")
        (path / f"img{i}.txt").write_text(caption + "\n")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    return (folder_of(root / "train", 4, TRAIN_CAPTION), folder_of(root / "reg", 10, REG_CAPTION, (20, 200, 40)))


def reg_preset(tmp_path, folders, model="unused-model", train=None, reg=None, **sections):
    train_dir, reg_dir = folders
    concepts = [{"name": "subject", "path": str(train_dir), **(train or {})},
                {"name": "class", "path": str(reg_dir), "role": "regularization", **(reg or {})}]
    return make_preset(tmp_path, model, train_dir, concepts=concepts, **sections)


def role_uses(plan, epoch: int) -> Counter:
    """Uses per concept role in one epoch of the plan."""
    return Counter(plan.preset.concepts[plan.items[idx].concept_index].role
                   for idx, n in use_counts(plan, epoch).items() for _ in range(n))


@pytest.mark.parametrize("repeats, rate, per_epoch", [(1, 1.0, 4), (2, 1.0, 8), (1, 0.5, 2), (3, 1.5, 18)])
def test_each_epoch_mixes_in_rate_times_the_training_uses(repeats, rate, per_epoch, folders, tmp_path):
    """4 training images at `repeats`: each epoch holds rate x the training uses of regularization images
    (rate 1: as many as the training images, kohya's balance), whatever the regularization set's size (10)."""
    plan = plan_for(reg_preset(tmp_path, folders, train={"repeats": repeats},
                               reg={"regularization_rate": rate}))
    for epoch in range(4):
        assert role_uses(plan, epoch) == {"train": 4 * repeats, "regularization": per_epoch}


def test_every_regularization_image_takes_its_turn(folders, tmp_path):
    """10 regularization images, 4 mixed in per epoch: over 5 epochs (20 uses) each is used exactly twice, never
    twice in one epoch (kohya only ever uses its first reg images when it has more than it needs)."""
    plan = plan_for(reg_preset(tmp_path, folders))
    reg = [i for i, item in enumerate(plan.items) if plan.preset.concepts[item.concept_index].role == "regularization"]
    total = Counter()
    for epoch in range(5):
        counts = use_counts(plan, epoch)
        assert all(counts.get(i, 0) <= 1 for i in reg)
        total.update({i: counts.get(i, 0) for i in reg})
    assert sorted(total.values()) == [2] * 10


def test_regularization_batches_carry_the_prior_loss_weight(folders, tmp_path):
    """Every loaded micro-batch weights a regularization image by the concept's loss weight (kohya's
    prior_loss_weight) and a training image by its own."""
    plan = plan_for(reg_preset(tmp_path, folders, train={"loss_weight": 1.0}, reg={"loss_weight": 0.25},
                               training={"cache_latents": False}))
    seen = Counter()
    for step in plan.layout(0):
        for planned in step:
            batch = plan.load(planned)
            for caption, weight in zip(batch.captions, batch.loss_weights):
                seen[(caption, weight)] += 1
    assert seen == {(TRAIN_CAPTION, 1.0): 4, (REG_CAPTION, 0.25): 4}


def test_a_regularization_concept_needs_a_training_concept(folders, tmp_path):
    """Regularization images accompany training: without an enabled concept of role train the preset is
    refused, naming the field."""
    with pytest.raises(ConfigError, match=r"concepts\.0\.role"):
        reg_preset(tmp_path, folders, train={"role": "regularization"})
    preset = reg_preset(tmp_path, folders)
    preset.concepts[0].enabled = False
    assert any(p.startswith("concepts.1.role:") for p in validate(preset))
    preset.concepts[0].enabled = True
    assert validate(preset) == []


def test_collect_items_refuses_without_training_images(folders, tmp_path):
    """The data's own check, for a preset changed after validation: only regularization and validation images
    leave nothing to train on."""
    from trainer.data.data import collect_items
    preset = reg_preset(tmp_path, folders)
    preset.concepts[0].role = "validation"
    with pytest.raises(InputError, match="role train"):
        collect_items(preset)


def test_training_sees_regularization_images_at_their_weight(folders, tiny_model_dir, tmp_path, monkeypatch):
    """A tiny run: the micro-batches the loss is computed on hold the regularization images as often as the
    training images, at the prior loss weight, and the epoch is as long as both together."""
    import trainer.train.step
    seen = Counter()
    micro_batch_loss = trainer.train.step.micro_batch_loss

    def observed(batch, *args, **kwargs):
        for caption, weight in zip(batch.captions, batch.loss_weights):
            seen[(caption, weight)] += 1
        return micro_batch_loss(batch, *args, **kwargs)
    monkeypatch.setattr(trainer.train.step, "micro_batch_loss", observed)
    preset = reg_preset(tmp_path, folders, tiny_model_dir, reg={"loss_weight": 0.5},
                        training={"epochs": 2, "batch_size": 2}, backup={"backup_unit": "never"})
    finished, events = run_stopping_at(preset)
    assert finished.outcome == "completed" and finished.step == 8  # 2 epochs of (4 + 4) images in batches of 2
    assert seen == {(TRAIN_CAPTION, 1.0): 8, (REG_CAPTION, 0.5): 8}
    assert any("Regularization concept 'class'" in getattr(e, "text", "") for e in events)
