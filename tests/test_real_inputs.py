"""Real inputs (issue 12): images without captions, outputs checked before training and kept after it, earlier runs
never overwritten, resume after the data changed, messages without tracebacks or escape codes."""
from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from tiny_presets import make_preset
from trainer import events as ev
from trainer.__main__ import main as cli_main
from trainer.config import save_preset, validate
from trainer.errors import InputError
from trainer.session import TrainingSession
from trainer.train.loop import train
from trainer.train.runs import EARLIER_DIR, RUN_ID_KEY, earlier_run

QUICK = {"max_steps": 2, "batch_size": 2}


def concept_copy(color_concept, tmp_path) -> Path:
    """A private copy of the eight red/blue images, so a test may change it."""
    folder = tmp_path / "concept"
    shutil.copytree(color_concept, folder)
    return folder


def quick_preset(tmp_path, base, concept, training=None, **sections):
    return make_preset(tmp_path, base, concept, training={**QUICK, **(training or {})},
                       backup={"backup_unit": "never", **sections.pop("backup", {})}, **sections)


def run(preset, **options):
    """Train in this process: (RunFinished, events). An InputError propagates, as the session would report it."""
    events = []
    finished = train(preset, events.append, queue.Queue(), **options)
    return finished, events


def logs(events, level=None) -> str:
    return "\n".join(e.text for e in events if isinstance(e, ev.Log) and (level is None or e.level == level))


def session_run(preset, **options) -> tuple[ev.RunFinished, list]:
    """Through a TrainingSession (as the CLI and the window run it): (RunFinished, every event)."""
    session = TrainingSession(preset, **options)
    session.start()
    events = []
    while not events or not isinstance(events[-1], ev.RunFinished):
        events.append(session.events.get(timeout=300))
    session.join(10)
    return events[-1], events


def cli(preset, tmp_path, capsys, *extra) -> tuple[int, str]:
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    code = cli_main(["train", str(path), "--quiet", *extra])
    return code, capsys.readouterr().err


# ---- 3. images without a caption --------------------------------------------------------------------------

def uncaptioned(color_concept, tmp_path) -> Path:
    folder = concept_copy(color_concept, tmp_path)
    (folder / "red0.txt").unlink()
    (folder / "blue1.txt").write_text("  \n\n")  # empty: no usable caption either
    return folder


def test_images_without_caption_are_reported_at_start_and_trained_as_before(tiny_model_dir, color_concept, tmp_path):
    folder = uncaptioned(color_concept, tmp_path)
    preset = quick_preset(tmp_path, tiny_model_dir, folder)
    finished, events = run(preset)
    assert finished.outcome == "completed"
    started = next(i for i, e in enumerate(events) if isinstance(e, ev.RunStarted))
    warning = next(e.text for e in events[:started] if isinstance(e, ev.Log) and "no caption" in e.text)
    assert "2 image(s)" in warning and "red0.png" in warning and "blue1.png" in warning
    assert "empty caption" in warning


def test_missing_caption_actions(tiny_model_dir, color_concept, tmp_path):
    from trainer.data.data import collect_items
    folder = uncaptioned(color_concept, tmp_path)

    def items(action, caption=""):
        preset = quick_preset(tmp_path, tiny_model_dir, folder)
        preset.concepts[0].missing_caption, preset.concepts[0].caption = action, caption
        return {Path(i.path).name: i.captions for i in collect_items(preset)}
    assert items("concept_caption", "a thing")["red0.png"] == ("a thing",)
    assert items("filename")["blue1.png"] == ("blue1",)
    skipped = items("skip")
    assert "red0.png" not in skipped and "blue1.png" not in skipped and len(skipped) == 6
    with pytest.raises(InputError, match=r"concepts\.0\.missing_caption.*2 image.*red0\.png"):
        items("refuse")


def test_refused_missing_captions_exit_2_before_loading(color_concept, tmp_path, capsys):
    folder = uncaptioned(color_concept, tmp_path)
    preset = quick_preset(tmp_path, tmp_path / "model-never-loaded", folder)
    (tmp_path / "model-never-loaded").mkdir()  # an empty folder: loading it would fail differently
    preset.concepts[0].missing_caption = "refuse"
    code, err = cli(preset, tmp_path, capsys)
    assert code == 2 and "missing_caption" in err and "red0.png" in err and "Traceback" not in err


def test_stats_name_images_without_caption(color_concept, tmp_path, capsys):
    folder = uncaptioned(color_concept, tmp_path)
    preset = quick_preset(tmp_path, "unused", folder)
    path = tmp_path / "p.json"
    save_preset(preset, path)
    assert cli_main(["stats", str(path), "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)
    assert stats["without_caption"] == 2 and stats["missing_caption"] == "concept_caption"
    assert sorted(Path(p).name for p in stats["without_caption_examples"]) == ["blue1.png", "red0.png"]
    preset.concepts[0].missing_caption = "refuse"
    save_preset(preset, path)
    assert cli_main(["stats", str(path)]) == 2  # as `train` would
    assert "training refuses to start" in capsys.readouterr().out


# ---- 1. caption encodings (decoding itself: test_caption_encodings.py) -----------------------------------

def test_captions_in_other_encodings_train_as_written_and_undecodable_ones_are_skipped(tiny_model_dir,
                                                                                       color_concept, tmp_path):
    from trainer.data.data import collect_items
    from trainer.data.stats import concept_stats
    folder = concept_copy(color_concept, tmp_path)
    legacy = "a red square in a café, naïve crème brûlée style, déjà vu, à la carte, façade, garçon"
    (folder / "red0.txt").write_bytes(legacy.encode("cp1252"))
    (folder / "red1.txt").write_bytes("\ufeffa red square, café\r\nnaïve".encode("utf-16-le"))
    (folder / "blue0.txt").write_bytes(bytes(range(256)) * 4)  # not text in any encoding
    preset = quick_preset(tmp_path, tiny_model_dir, folder)
    captions = {Path(i.path).name: i.captions for i in collect_items(preset)}
    assert captions["red0.png"] == (legacy,)
    assert captions["red1.png"] == ("a red square, café", "naïve")
    assert "blue0.png" not in captions
    (stats,) = concept_stats(preset)
    assert [Path(k["path"]).name for k in stats["caption_problems"]] == ["blue0.txt"]
    assert stats["guessed_encodings"] == [{"path": str(folder / "red0.txt"), "encoding": "cp1252"}]
    finished, events = run(preset)
    started = next(i for i, e in enumerate(events) if isinstance(e, ev.RunStarted))
    before = logs(events[:started])
    assert "blue0.png: caption file blue0.txt" in before and "red0.txt (cp1252)" in before


# ---- 2. captions over the token limit (wiring; the encoding itself is in test_long_prompts.py) ------------

def test_long_captions_reported_in_stats_and_log_and_trained_in_chunks(tiny_model_dir, color_concept, tmp_path):
    from trainer.data.stats import concept_stats
    folder = concept_copy(color_concept, tmp_path)
    long = ", ".join(f"word{i}" for i in range(30)) + ", sks trigger"  # 112 CLIP tokens
    (folder / "red1.txt").write_text(long + "\n")
    preset = quick_preset(tmp_path, tiny_model_dir, folder)
    (stats,) = concept_stats(preset)
    assert stats["long_captions"]["count"] == 1 and stats["long_captions"]["limit"] == 75
    assert Path(stats["long_captions"]["examples"][0]["path"]).name == "red1.png"
    assert stats["long_captions"]["examples"][0]["tokens"] > 75
    finished, events = run(preset)
    assert "longer than training.max_token_length = 75" in logs(events, "warning")
    preset = quick_preset(tmp_path / "150", tiny_model_dir, folder, training={"max_token_length": 150})
    assert concept_stats(preset)[0]["long_captions"]["count"] == 0
    finished, events = run(preset)
    assert finished.outcome == "completed" and "max_token_length" not in logs(events, "warning")
    with safe_open(finished.output_path, "pt") as f:
        assert f.metadata()["seachange.max_token_length"] == "150"


def test_max_token_length_is_validated(tiny_model_dir, color_concept, tmp_path):
    from trainer.fields import ConfigError
    with pytest.raises(ConfigError, match="training.max_token_length: must be 75, 150 or 225"):
        quick_preset(tmp_path, tiny_model_dir, color_concept, training={"max_token_length": 100})


def test_long_sample_prompt_warns_by_name(tiny_model_dir, color_concept, tmp_path):
    prompt = "a " + " ".join(f"thing{i}" for i in range(80))
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept,
                          sampling={"unit": "never", "prompts": [{"prompt": "short", "width": 32, "height": 32},
                                                                 {"prompt": prompt, "width": 32, "height": 32}]})
    finished, events = run(preset)
    warnings = logs(events, "warning")
    assert "sampling.prompts.1" in warnings and "sampling.prompts.0" not in warnings


# ---- 4. the base model's objective ------------------------------------------------------------------------

def v_model(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "v_model"
    shutil.copytree(tiny_model_dir, folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "v_prediction"}))
    return folder


def test_auto_objective_follows_the_base_model_and_labels_the_output(tiny_model_dir, color_concept, tmp_path):
    preset = quick_preset(tmp_path, v_model(tiny_model_dir, tmp_path), color_concept)
    assert preset.training.prediction_type == "auto"
    finished, events = run(preset)
    assert "Training objective: v_prediction, the base model's own" in logs(events, "info")
    with safe_open(finished.output_path, "pt") as f:
        assert f.metadata()["seachange.prediction_type"] == "v_prediction"
    # fine-tuned again with the defaults, SeaChange's own v-prediction file stays v-prediction
    again = quick_preset(tmp_path / "again", finished.output_path, color_concept,
                         model={"base_config": str(tiny_model_dir)})
    finished, events = run(again)
    with safe_open(finished.output_path, "pt") as f:
        assert f.metadata()["seachange.prediction_type"] == "v_prediction"


def test_contradicting_objective_is_warned_and_zero_snr_on_epsilon_refused(tiny_model_dir, color_concept, tmp_path):
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept, training={"prediction_type": "v_prediction"})
    finished, events = run(preset)
    assert finished.outcome == "completed" and "epsilon" in logs(events, "warning")
    preset = quick_preset(tmp_path / "z", tiny_model_dir, color_concept, training={"zero_terminal_snr": True})
    with pytest.raises(InputError, match="training.zero_terminal_snr"):
        run(preset)


# ---- 5. outputs checked before training, kept after it ----------------------------------------------------

def test_output_that_is_a_users_folder_is_refused_before_loading(color_concept, tmp_path, capsys):
    mine = tmp_path / "my_things"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not touched")
    preset = quick_preset(tmp_path, tmp_path / "never-loaded", color_concept,
                          model={"output_path": str(mine), "output_format": "diffusers"})
    (tmp_path / "never-loaded").mkdir()
    code, err = cli(preset, tmp_path, capsys)
    assert code == 2 and "model.output_path" in err and "did not write" in err
    assert (mine / "holiday.jpg").read_bytes() == b"not touched"


@pytest.mark.parametrize("fmt, make", [("single_file", "dir"), ("diffusers", "file"), ("single_file", "file")])
def test_output_path_of_the_wrong_kind_or_a_users_file_is_refused(fmt, make, color_concept, tiny_model_dir,
                                                                   tmp_path):
    target = tmp_path / "out.safetensors"
    if make == "dir":
        target.mkdir()
        (target / "x").write_text("x")
    else:
        target.write_bytes(b"a file of the user's")
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept,
                          model={"output_path": str(target), "output_format": fmt})
    with pytest.raises(InputError, match="model.output_path"):
        run(preset)


def test_failed_final_save_keeps_the_training_in_a_backup(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    from trainer.train import outputs
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept, backup={"backup_before_save": False})
    real_save = outputs.save_model

    def failing(components, path, *args, **kwargs):
        if Path(path).expanduser() == Path(preset.model.output_path):
            raise OSError(28, "No space left on device")
        return real_save(components, path, *args, **kwargs)
    monkeypatch.setattr(outputs, "save_model", failing)
    finished, events = session_run(preset)
    assert finished.outcome == "failed" and not finished.bad_input
    assert "No space left on device" in finished.message and "backup" in finished.message
    backup = Path(preset.general.workspace_dir) / "backup" / "step0000002-epoch0001"
    assert str(backup) in finished.message and (backup / "manifest.json").is_file()
    monkeypatch.setattr(outputs, "save_model", real_save)
    finished, events = run(preset, resume=str(backup))  # the fix the message gives: only writes the model
    assert finished.outcome == "completed" and finished.step == 2 and Path(finished.output_path).is_file()


# ---- 6. never overwrite another run ---------------------------------------------------------------------

def sampled_preset(tmp_path, base, concept):
    return quick_preset(tmp_path, base, concept, sampling={"every": 1, "unit": "steps", "prompts": [
        {"prompt": "a red square", "width": 32, "height": 32, "steps": 2}]}, backup={"backup_unit": "steps",
                                                                                     "backup_every": 1})


def test_second_run_in_a_workspace_needs_resume_or_fresh(tiny_model_dir, color_concept, tmp_path, capsys):
    preset = sampled_preset(tmp_path, tiny_model_dir, color_concept)
    assert cli(preset, tmp_path, capsys)[0] == 0
    model = Path(preset.model.output_path)
    first_model, samples = model.read_bytes(), sorted((tmp_path / "ws" / "samples").iterdir())
    with safe_open(str(model), "pt") as f:
        first_id = f.metadata()[RUN_ID_KEY]
    found = earlier_run(preset)
    assert found.backup_step == 2 and found.samples == len(samples) and found.model == model

    code, err = cli(preset, tmp_path, capsys)  # neither --resume nor --fresh
    assert code == 2 and "earlier run" in err and "--resume latest" in err and "--fresh" in err
    assert "Traceback" not in err and model.read_bytes() == first_model

    code, err = cli(preset, tmp_path, capsys, "--fresh")
    assert code == 0
    (archive,) = (tmp_path / "ws" / EARLIER_DIR).iterdir()
    assert sorted(p.name for p in (archive / "samples").iterdir()) == [p.name for p in samples]
    assert (archive / "backup").is_dir()
    kept = next(tmp_path.glob("out.earlier-*.safetensors"))  # the model lies outside the workspace: renamed
    assert kept.read_bytes() == first_model
    with safe_open(str(model), "pt") as f:
        assert f.metadata()[RUN_ID_KEY] != first_id

    code, err = cli(preset, tmp_path, capsys, "--resume", "latest")  # continuing the new run may replace it
    assert code == 0


def test_a_model_of_another_run_is_never_replaced(tiny_model_dir, color_concept, tmp_path):
    first = quick_preset(tmp_path / "a", tiny_model_dir, color_concept,
                         model={"output_path": str(tmp_path / "shared.safetensors")})
    run(first)
    before = (tmp_path / "shared.safetensors").read_bytes()
    second = quick_preset(tmp_path / "b", tiny_model_dir, color_concept,
                          model={"output_path": str(tmp_path / "shared.safetensors")})
    with pytest.raises(InputError) as caught:
        run(second)
    assert caught.value.refusal == "earlier_run" and (tmp_path / "shared.safetensors").read_bytes() == before


def test_a_model_of_another_run_at_the_output_is_named_as_such(tiny_model_dir, color_concept, tmp_path):
    shared = str(tmp_path / "shared.safetensors")
    run(quick_preset(tmp_path / "a", tiny_model_dir, color_concept, model={"output_path": shared}))
    second = quick_preset(tmp_path / "b", tiny_model_dir, color_concept, model={"output_path": shared})
    with pytest.raises(InputError, match=r"^model\.output_path: .*shared\.safetensors holds the model of an "
                                         r"earlier run"):
        run(second)  # the new workspace holds nothing: the message is about the output path
    run(second, fresh=True)  # b now has a run of its own, and the output holds b's model
    third = quick_preset(tmp_path / "a", tiny_model_dir, color_concept, model={"output_path": shared})
    assert "model of another run" in earlier_run(third).summary()  # a's workspace, b's model


def test_window_refusal_is_carried_in_run_finished(tiny_model_dir, color_concept, tmp_path):
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept)
    assert session_run(preset)[0].outcome == "completed"
    finished, events = session_run(preset)
    assert finished.bad_input and finished.refusal == "earlier_run"
    assert not [e for e in events if isinstance(e, ev.Log) and "Traceback" in e.text]


# ---- 7. resume after the data changed -------------------------------------------------------------------

def test_resume_after_the_data_changed_is_refused_unless_allowed(tiny_model_dir, color_concept, tmp_path):
    folder = concept_copy(color_concept, tmp_path)
    preset = quick_preset(tmp_path, tiny_model_dir, folder, training={"max_steps": 4})
    finished, _ = run(preset)
    backup = Path(preset.general.workspace_dir) / "backup" / "step0000004-epoch0001"
    assert json.loads((backup / "dataset.json").read_text())[str(folder / "red0.png")]

    finished, events = run(preset, resume="latest")  # nothing changed: accepted without a word about data
    assert finished.outcome == "completed" and "data" not in logs(events, "warning")

    (folder / "blue3.png").unlink()
    (folder / "red2.txt").write_text("a crimson square\n")
    Image.new("RGB", (40, 32), (0, 200, 0)).save(folder / "green0.png")
    (folder / "green0.txt").write_text("a green square\n")
    with pytest.raises(InputError) as caught:
        run(preset, resume="latest")
    text = str(caught.value)
    assert caught.value.refusal == "data_changed"
    assert "added: 1 (green0.png)" in text and "removed: 1 (blue3.png)" in text
    assert "captions edited: 1 (red2.png)" in text and "--allow-changed-data" in text

    preset.training.max_steps = 6
    finished, events = run(preset, resume="latest", allow_changed_data=True)
    assert finished.outcome == "completed" and finished.step == 6
    assert "data order differs from an uninterrupted run" in logs(events, "warning")


# ---- 9. messages, not tracebacks ------------------------------------------------------------------------

def test_input_errors_carry_no_traceback_and_no_escape_codes(color_concept, tmp_path, capsys):
    import io

    import torch
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": io.BytesIO}, unsafe)
    preset = quick_preset(tmp_path, unsafe, color_concept)
    code, err = cli(preset, tmp_path, capsys)
    assert code == 2 and "unsafe.ckpt" in err
    assert "Traceback" not in err and "\x1b" not in err
    finished, events = session_run(preset)
    assert finished.bad_input and "\x1b" not in finished.message
    assert not [e for e in events if isinstance(e, ev.Log) and ("Traceback" in e.text or "\x1b" in e.text)]


def test_a_bug_still_logs_its_traceback(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    from trainer.model import training_model

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(training_model, "load_model", broken)
    finished, events = session_run(quick_preset(tmp_path, tiny_model_dir, color_concept))
    assert finished.outcome == "failed" and not finished.bad_input
    assert "Traceback" in logs(events, "error")


# ---- 10. a concept folder that does not exist ------------------------------------------------------------

def test_missing_concept_folder_is_a_problem_unless_the_demo_builds_it(tmp_path):
    from trainer.config import preset_from_dict
    data = {"version": 1, "general": {"demo_dir": str(tmp_path / "demo")},
            "model": {"base_model": str(tmp_path / "demo" / "model")},
            "concepts": [{"name": "shapes", "path": str(tmp_path / "demo" / "images")},
                         {"name": "mine", "path": str(tmp_path / "my_photos")}]}
    problems = validate(preset_from_dict(data), check_paths=True)
    assert problems == [f"concepts.1.path: folder {tmp_path / 'my_photos'} of concept 'mine' does not exist"]


# ---- found by trying it as a user -------------------------------------------------------------------------

def test_a_backup_of_another_run_is_not_resumed_into_this_workspace(tiny_model_dir, color_concept, tmp_path,
                                                                    capsys):
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 1})
    assert cli(preset, tmp_path, capsys)[0] == 0
    assert cli(preset, tmp_path, capsys, "--fresh")[0] == 0  # run A moves to earlier/, run B trains here
    (archive,) = (tmp_path / "ws" / EARLIER_DIR).iterdir()
    run_b = sorted((tmp_path / "ws" / "backup").iterdir())
    code, err = cli(preset, tmp_path, capsys, "--resume", str(next((archive / "backup").iterdir())),
                    "--set", f"model.output_path={tmp_path / 'elsewhere.safetensors'}")
    assert code == 2 and "another run" in err and sorted((tmp_path / "ws" / "backup").iterdir()) == run_b


def test_a_workspace_inside_a_concept_folder_is_refused(color_concept, tmp_path):
    folder = concept_copy(color_concept, tmp_path)
    preset = quick_preset(tmp_path, "unused", folder, general={"workspace_dir": str(folder / "run")})
    preset.concepts[0].include_subdirectories = True
    assert any(p.startswith("general.workspace_dir") and "concept 'colors'" in p
               for p in validate(preset, check_paths=True))
    preset.concepts[0].include_subdirectories = False  # its samples would not be found: allowed
    assert not [p for p in validate(preset, check_paths=True) if p.startswith("general.workspace_dir")]


@pytest.mark.parametrize("name", ["notes.txt", "a_folder"])
def test_a_single_file_output_must_be_a_safetensors_name(name, tiny_model_dir, color_concept, tmp_path):
    target = tmp_path / name
    if name == "a_folder":
        target.mkdir()
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept, model={"output_path": str(target)})
    with pytest.raises(InputError, match="ending in .safetensors"):
        run(preset)
    preset.model.output_path = str(tmp_path / "model")  # no suffix and nothing there: .safetensors is added
    finished, _ = run(preset)
    assert finished.output_path == str(tmp_path / "model.safetensors")


def test_a_damaged_backup_is_refused_by_name(tiny_model_dir, color_concept, tmp_path, capsys):
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 1})
    assert cli(preset, tmp_path, capsys)[0] == 0
    (backup,) = (tmp_path / "ws" / "backup").iterdir()
    (backup / "state.pt").write_bytes(b"truncated")
    code, err = cli(preset, tmp_path, capsys, "--resume", "latest")
    assert code == 2 and "state.pt is damaged" in err and "Traceback" not in err


def test_resume_names_each_changed_setting_and_token_length_breaks_it(tiny_model_dir, color_concept, tmp_path):
    from trainer.train.backup import compare_presets
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept)
    changed = quick_preset(tmp_path, tiny_model_dir, color_concept)
    changed.concepts[0].missing_caption = "skip"
    with pytest.raises(InputError, match=r"^concepts\.0\.missing_caption: changed"):
        compare_presets(preset, changed)
    changed = quick_preset(tmp_path, tiny_model_dir, color_concept, training={"max_token_length": 150})
    with pytest.raises(InputError, match=r"^training\.max_token_length: changed"):
        compare_presets(preset, changed)
    changed = quick_preset(tmp_path, tiny_model_dir, color_concept)
    changed.concepts.append(changed.concepts[0])
    with pytest.raises(InputError, match=r"^concepts: added since the backup \(1 concept\(s\) then, 2 now\)"):
        compare_presets(preset, changed)


def test_tensorboard_that_cannot_write_is_turned_off_and_the_run_goes_on(tiny_model_dir, color_concept, tmp_path,
                                                                        monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    preset = quick_preset(tmp_path, tiny_model_dir, color_concept, general={"tensorboard": True})
    finished, events = run(preset)
    assert finished.outcome == "completed" and "TensorBoard turned off" in logs(events, "warning")


def test_known_run_failures_show_no_traceback(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    from trainer.train import outputs

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(outputs, "save_model", full)
    finished, events = session_run(quick_preset(tmp_path, tiny_model_dir, color_concept))
    assert finished.outcome == "failed" and not finished.bad_input and "backup" in finished.message
    assert "Traceback" not in logs(events)
