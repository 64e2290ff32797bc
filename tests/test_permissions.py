"""Files SeaChange creates get the mode the user's umask gives a new file (0644 with 022, 0600 with 077), even
where a library creates them 0600 (safetensors' save_file); a file the user made keeps its own mode."""
from __future__ import annotations

import os
import queue
import stat
from pathlib import Path

import pytest
import torch

from tiny_presets import make_preset

MASKS = ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700))


@pytest.fixture
def umask():
    """Set the process umask for one test (returns a setter); the old one is restored after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` (a file) or of every file and folder under it, by relative path."""
    root = Path(root)
    if root.is_file():
        return {root.name: stat.S_IMODE(root.stat().st_mode)}
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*"))}


def assert_modes(root: Path, file_mode: int, dir_mode: int) -> None:
    found = modes(root)
    assert found, f"nothing written under {root}"
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (dir_mode if (Path(root) / name).is_dir() and Path(root).is_dir() else file_mode)}
    assert not wrong, f"expected {oct(file_mode)} files, {oct(dir_mode)} folders under {root}; got {wrong}"


def test_umask_mode_follows_the_mask(umask):
    from trainer.fields import process_umask, umask_mode
    for mask, file_mode, dir_mode in MASKS:
        umask(mask)
        assert process_umask() == mask
        assert umask_mode() == file_mode and umask_mode(directory=True) == dir_mode


@pytest.mark.parametrize("output_format", ["single_file", "diffusers"])
def test_saved_model_follows_the_umask(tmp_path, tiny_model_dir, umask, output_format):
    from trainer.model.models import load_model, save_model
    components = load_model(str(tiny_model_dir))
    for mask, file_mode, dir_mode in MASKS:
        umask(mask)
        out = save_model(components, tmp_path / f"m{mask:o}" / "model", output_format, "float32", {"k": "v"})
        assert_modes(out, file_mode, dir_mode)
        if output_format == "diffusers":
            assert stat.S_IMODE(out.stat().st_mode) == dir_mode
            assert any(p.suffix == ".safetensors" for p in out.rglob("*"))


def test_backup_follows_the_umask(tmp_path, tiny_model_dir, color_concept, umask):
    from trainer.train.backup import Position, write_backup
    preset = make_preset(tmp_path, tiny_model_dir, color_concept)
    for mask, file_mode, dir_mode in MASKS:
        umask(mask)
        folder = write_backup(tmp_path / f"b{mask:o}", "step1", {"unet": torch.nn.Linear(2, 2).state_dict()},
                              {"step": 1}, preset, Position(1, 0, 1), dataset={"images": []})
        assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
        assert_modes(folder, file_mode, dir_mode)


def test_cache_entry_follows_the_umask(tmp_path, umask):
    from trainer.data.cache import TensorCache
    cache = TensorCache(tmp_path / "cache")
    for mask, file_mode, _ in MASKS:
        umask(mask)
        key = f"{mask:03o}" + "ab" * 20
        cache.write(key, {"latents": torch.ones(2, 2)})
        assert stat.S_IMODE(cache.path(key).stat().st_mode) == file_mode
        assert torch.equal(cache.read(key)["latents"], torch.ones(2, 2))


def test_atomic_write_text_new_file_follows_umask_and_an_existing_one_keeps_its_mode(tmp_path, umask):
    from trainer.fields import atomic_write_text
    for mask, file_mode, _ in MASKS:
        umask(mask)
        path = tmp_path / f"{mask:o}" / "preset.json"
        atomic_write_text(path, "{}\n")
        assert stat.S_IMODE(path.stat().st_mode) == file_mode and path.read_text() == "{}\n"
    umask(0o022)
    mine = tmp_path / "mine.json"
    mine.write_text("old")
    mine.chmod(0o640)
    atomic_write_text(mine, "new")
    assert mine.read_text() == "new" and stat.S_IMODE(mine.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["22", "77", "mine.json"]  # no temporary left


def test_training_run_files_are_readable_by_others_under_umask_022(tmp_path, tiny_model_dir, color_concept,
                                                                   umask):
    from trainer.train.loop import train
    umask(0o022)
    preset = make_preset(
        tmp_path, tiny_model_dir, color_concept, training={"max_steps": 1},
        sampling={"unit": "steps", "every": 1,
                  "prompts": [{"prompt": "a red square", "width": 32, "height": 32, "steps": 2}]},
        backup={"backup_unit": "never", "backup_before_save": True})
    finished = train(preset, lambda e: None, queue.Queue())
    assert finished.outcome == "completed", finished.message
    workspace = Path(preset.general.workspace_dir)
    written = modes(workspace)
    assert any(name.endswith(".png") for name in written), written  # a sample
    assert any(name.endswith(".safetensors") for name in written), written  # the backup's weights
    assert_modes(workspace, 0o644, 0o755)
    assert_modes(Path(finished.output_path), 0o644, 0o755)
    assert_modes(Path(preset.general.cache_dir), 0o644, 0o755)
