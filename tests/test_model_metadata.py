"""What a saved model says about itself (issue 13, point 7): modelspec keys as kohya's sai_model_spec writes them,
and an embedded preset that carries no home folder or image folder (or none at all)."""
from __future__ import annotations

import json
import queue
from pathlib import Path

from safetensors import safe_open

from tiny_presets import make_preset
from trainer.config import portable_preset, preset_to_json
from trainer.train.loop import train


def metadata_of(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_portable_preset_keeps_no_absolute_path(tmp_path):
    home = Path.home()
    preset = make_preset(tmp_path, home / "models" / "base.safetensors", home / "images" / "cats")
    preset.model.output_path = str(tmp_path / "ws" / "out" / "model.safetensors")
    preset.model.base_config = "configs/sd15"  # relative: kept as written
    shared = portable_preset(preset)
    assert shared.model.base_model == "base.safetensors" and shared.concepts[0].path == "cats"
    assert shared.model.output_path == str(Path("out") / "model.safetensors")  # inside the workspace
    assert shared.general.workspace_dir == "ws" and shared.model.base_config == "configs/sd15"
    assert preset.model.base_model == str(home / "models" / "base.safetensors")  # the run's own copy untouched
    text = preset_to_json(shared)
    assert str(tmp_path) not in text and str(home) not in text


def test_saved_model_metadata_follows_modelspec_and_embeds_a_portable_preset(tiny_model_dir, color_concept,
                                                                              tmp_path):
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 1, "resolution": "32",
                                                                            "prediction_type": "v_prediction"})
    finished = train(preset, lambda e: None, queue.Queue())
    meta = metadata_of(finished.output_path)
    assert meta["modelspec.resolution"] == "32x32" and meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.title"] == "out"
    embedded = meta["seachange.preset"]
    assert str(tmp_path) not in embedded and json.loads(embedded)["concepts"][0]["path"] == color_concept.name

    preset = make_preset(tmp_path / "b", tiny_model_dir, color_concept, training={"max_steps": 1},
                         model={"embed_preset": False})
    meta = metadata_of(train(preset, lambda e: None, queue.Queue()).output_path)
    assert "seachange.preset" not in meta and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["seachange.run_id"]  # the run is still known: its model is only replaced by that run


def test_v_prediction_single_files_get_an_a1111_config_and_say_how_to_sample(tiny_model_dir, color_concept,
                                                                               tmp_path):
    import yaml
    from trainer.train.objective import from_yaml
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={
        "max_steps": 1, "prediction_type": "v_prediction", "zero_terminal_snr": True})
    finished = train(preset, lambda e: None, queue.Queue())
    sidecar = Path(finished.output_path).with_suffix(".yaml")
    config = yaml.safe_load(sidecar.read_text())  # what A1111 reads: the v1 inference config, v-parameterised
    assert config["model"]["params"]["parameterization"] == "v"
    assert config["model"]["params"]["unet_config"]["params"]["context_dim"] == 768
    assert from_yaml(sidecar)[0] == "v_prediction"
    assert "ModelSamplingDiscrete" in finished.message and "zsnr on" in finished.message

    # an epsilon model needs none, and the earlier run's one is not left to mislead A1111
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 1})
    finished = train(preset, lambda e: None, queue.Queue(), fresh=True)
    assert not Path(finished.output_path).with_suffix(".yaml").exists()
    assert "ModelSamplingDiscrete" not in finished.message


def test_convert_titles_the_file_and_keeps_a_v_models_markers(tiny_model_dir, tmp_path, capsys):
    import shutil

    import yaml
    from trainer.__main__ import main as cli_main
    v_model = tmp_path / "v_model"
    shutil.copytree(tiny_model_dir, v_model)
    config = v_model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "v_prediction"}))
    assert cli_main(["convert", str(v_model), str(tmp_path / "mine.safetensors"), "--dtype", "float32"]) == 0
    meta = metadata_of(tmp_path / "mine.safetensors")
    assert meta["modelspec.title"] == "mine" and meta["modelspec.prediction_type"] == "v"
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["model"]["params"]["parameterization"] == "v"
    assert cli_main(["convert", str(tiny_model_dir), str(tmp_path / "eps.safetensors")]) == 0
    assert metadata_of(tmp_path / "eps.safetensors")["modelspec.prediction_type"] == "epsilon"
    assert not (tmp_path / "eps.yaml").exists()


def test_a_v_prediction_diffusers_folder_states_it_in_its_scheduler_config(tiny_model_dir, color_concept, tmp_path):
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={
        "max_steps": 1, "prediction_type": "v_prediction", "zero_terminal_snr": True},
        model={"output_path": str(tmp_path / "folder"), "output_format": "diffusers"})
    finished = train(preset, lambda e: None, queue.Queue())
    config = json.loads((Path(finished.output_path) / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction" and config["rescale_betas_zero_snr"] is True
    from trainer.model.models import load_model
    reloaded = load_model(finished.output_path)
    assert reloaded.prediction_type == "v_prediction" and reloaded.zero_terminal_snr
