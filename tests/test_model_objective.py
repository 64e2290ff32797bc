"""The base model's own objective (scheduler config, file metadata, A1111 .yaml) and the refusal of UNets that
training cannot feed (inpainting, edit models), on tiny models the tests build."""
import json
import shutil
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

from trainer.config import Preset, preset_to_json
from trainer.errors import ModelLoadError
from trainer.model.models import FIRST_CONV, SDComponents, load_model, save_model
from trainer.train.objective import resolve_prediction_type


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> SDComponents:
    return load_model(str(tiny_model_dir))


def folder_copy(tiny_model_dir, tmp_path, scheduler=None, unet=None, vae=None, name="model"):
    """A copy of the tiny diffusers folder with keys of its scheduler, unet and vae configs replaced (a value
    None removes the key)."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / name)
    for sub, changes in (("scheduler", scheduler), ("unet", unet), ("vae", vae)):
        path = folder / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")
        config = json.loads(path.read_text())
        for key, value in (changes or {}).items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        path.write_text(json.dumps(config))
    return folder


def single_file(tiny, tmp_path, metadata=None, name="m.safetensors"):
    return save_model(tiny, tmp_path / name, "single_file", "float32", metadata or {})


def forbid(monkeypatch, *targets):
    """Loading any weights through these (owner, attribute) pairs fails the test: the refusal must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("weights were loaded before the model was refused")
    for owner, attribute in targets:
        monkeypatch.setattr(owner, attribute, boom)


# ------------------------------------------------------------------------------------------------ diffusers folders


def test_folder_objective_comes_from_its_scheduler_config(tiny_model_dir, tmp_path):
    c = load_model(str(tiny_model_dir))
    assert (c.prediction_type, c.zero_terminal_snr) == ("epsilon", False)
    assert c.prediction_source == f"scheduler config in {tiny_model_dir}"

    v_folder = folder_copy(tiny_model_dir, tmp_path, scheduler={"prediction_type": "v_prediction",
                                                                "rescale_betas_zero_snr": True})
    v = load_model(str(v_folder))
    assert (v.prediction_type, v.zero_terminal_snr) == ("v_prediction", True)
    assert str(v_folder) in v.prediction_source
    assert v.noise_scheduler.config.prediction_type == "v_prediction"  # samplers made from it predict v too
    assert v.noise_scheduler.config.rescale_betas_zero_snr is True

    plain = load_model(str(folder_copy(tiny_model_dir, tmp_path, scheduler={"prediction_type": None}, name="plain")))
    assert plain.prediction_type == "epsilon" and "diffusers' default" in plain.prediction_source


def test_folder_with_an_objective_seachange_cannot_train_is_refused(tiny_model_dir, tmp_path):
    folder = folder_copy(tiny_model_dir, tmp_path, scheduler={"prediction_type": "sample"})
    with pytest.raises(ModelLoadError, match="'sample'.*epsilon or v-prediction") as info:
        load_model(str(folder))
    assert str(folder) in str(info.value) and "prediction_type" in str(info.value)


# ------------------------------------------------------------------------------------------------ single files


SEACHANGE_V_PRESET = Preset()
SEACHANGE_V_PRESET.training.prediction_type = "v_prediction"


@pytest.mark.parametrize("metadata, key", [
    ({"modelspec.prediction_type": "v"}, "modelspec.prediction_type"),  # ModelSpec / kohya's spelling
    ({"modelspec.prediction_type": "v_prediction"}, "modelspec.prediction_type"),  # what SeaChange wrote
    ({"seachange.preset": preset_to_json(SEACHANGE_V_PRESET)}, "seachange.preset"),
    ({"modelspec.prediction_type": "auto", "seachange.preset": preset_to_json(SEACHANGE_V_PRESET)},
     "seachange.preset"),
    ({"ss_v_parameterization": "True"}, "ss_v_parameterization"),
    ({"ss_base_model_version": "sd_v1_v"}, "ss_base_model_version"),
])
def test_single_file_metadata_states_v_prediction(tiny, tiny_model_dir, tmp_path, metadata, key):
    c = load_model(str(single_file(tiny, tmp_path, metadata)), str(tiny_model_dir))
    assert c.prediction_type == "v_prediction" and c.noise_scheduler.config.prediction_type == "v_prediction"
    assert c.prediction_source == f"metadata of m.safetensors ({key})"


@pytest.fixture(scope="module")
def v_config(tiny_model_dir, tmp_path_factory):
    """The tiny folder with a v-prediction scheduler config: a base config that says v."""
    return folder_copy(tiny_model_dir, tmp_path_factory.mktemp("vcfg"), scheduler={"prediction_type": "v_prediction"})


@pytest.mark.parametrize("metadata", [{"modelspec.prediction_type": "epsilon"}, {"ss_v_parameterization": "false"},
                                      {"ss_base_model_version": "sd_v1"}])
def test_single_file_metadata_wins_over_the_base_config(tiny, tmp_path, v_config, metadata):
    c = load_model(str(single_file(tiny, tmp_path, metadata)), str(v_config))
    assert c.prediction_type == "epsilon" and c.noise_scheduler.config.prediction_type == "epsilon"
    assert c.prediction_source == f"metadata of m.safetensors ({next(iter(metadata))})"


def test_single_file_without_markers_follows_its_base_config(tiny, tiny_model_dir, tmp_path, v_config):
    path = single_file(tiny, tmp_path, {"seachange.preset": json.dumps({"training": {"prediction_type": "auto"}})})
    v = load_model(str(path), str(v_config))
    assert v.prediction_type == "v_prediction" and v.prediction_source == f"scheduler config in base config {v_config}"
    eps = load_model(str(path), str(tiny_model_dir))
    assert eps.prediction_type == "epsilon" and str(tiny_model_dir) in eps.prediction_source
    unmarked = folder_copy(tiny_model_dir, tmp_path, scheduler={"prediction_type": None}, name="unmarked")
    default = load_model(str(path), str(unmarked))
    assert (default.prediction_type, default.prediction_source) == ("epsilon", "default for SD 1.x: no marker found")


def test_comfyui_v_pred_tensor_marks_v_prediction(tiny, tiny_model_dir, tmp_path):
    state_dict = load_file(str(single_file(tiny, tmp_path)))
    state_dict["v_pred"] = torch.tensor([])
    save_file(state_dict, str(tmp_path / "noob.safetensors"))
    c = load_model(str(tmp_path / "noob.safetensors"), str(tiny_model_dir))
    assert c.prediction_type == "v_prediction" and "v_pred" in c.prediction_source


def test_single_file_objective_seachange_cannot_train_is_refused(tiny, tiny_model_dir, tmp_path, monkeypatch):
    path = single_file(tiny, tmp_path, {"modelspec.prediction_type": "flow"})
    forbid(monkeypatch, (safetensors.torch, "load_file"))
    with pytest.raises(ModelLoadError, match="'flow'") as info:
        load_model(str(path), str(tiny_model_dir))
    assert str(path) in str(info.value) and "modelspec.prediction_type" in str(info.value)


def test_seachange_v_model_fine_tuned_with_auto_stays_v(tiny, tiny_model_dir, tmp_path):
    """Issue 12.4: a SeaChange file trained with v-prediction, trained again with defaults, must train v."""
    metadata = {"modelspec.prediction_type": "v_prediction", "seachange.preset": preset_to_json(SEACHANGE_V_PRESET)}
    c = load_model(str(single_file(tiny, tmp_path, metadata)), str(tiny_model_dir))
    assert resolve_prediction_type(Preset().training.prediction_type, c) == ("v_prediction", None)


# ------------------------------------------------------------------------------------------------ A1111 .yaml


def ldm_yaml(parameterization=None) -> str:
    line = f"    parameterization: {parameterization}\n" if parameterization else ""
    return ("model:\n  base_learning_rate: 1.0e-04\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
            f"  params:\n{line}    linear_start: 0.00085\n    linear_end: 0.0120\n")


@pytest.mark.parametrize("parameterization, metadata, expected", [
    ('"v"', {"modelspec.prediction_type": "epsilon"}, "v_prediction"),
    ("eps", {"modelspec.prediction_type": "v"}, "epsilon"),
    (None, {"modelspec.prediction_type": "v"}, "epsilon"),  # LDM's default is eps
])
def test_yaml_beside_a_single_file_wins_over_metadata(tiny, tiny_model_dir, tmp_path, parameterization, metadata,
                                                      expected):
    path = single_file(tiny, tmp_path, metadata, name="my.model.safetensors")
    (tmp_path / "my.model.yaml").write_text(ldm_yaml(parameterization))  # A1111: splitext(name)[0] + ".yaml"
    c = load_model(str(path), str(tiny_model_dir))
    assert (c.prediction_type, c.prediction_source) == (expected, "my.model.yaml beside the model")
    assert c.noise_scheduler.config.prediction_type == expected


def test_yaml_beside_a_ckpt(tiny, tiny_model_dir, tmp_path):
    state_dict = load_file(str(single_file(tiny, tmp_path)))
    torch.save({"state_dict": state_dict}, tmp_path / "old.ckpt")
    plain = load_model(str(tmp_path / "old.ckpt"), str(tiny_model_dir))
    assert plain.prediction_type == "epsilon"
    (tmp_path / "old.yaml").write_text(ldm_yaml("v"))
    c = load_model(str(tmp_path / "old.ckpt"), str(tiny_model_dir))
    assert (c.prediction_type, c.prediction_source) == ("v_prediction", "old.yaml beside the model")


@pytest.mark.parametrize("text, words", [
    ("model:\n  params: [unclosed\n", "cannot be read at line"),
    ("just some notes\n", "no model.params"),
    (ldm_yaml("x0"), "'x0'"),
])
def test_unusable_yaml_is_refused_by_name(tiny, tiny_model_dir, tmp_path, monkeypatch, text, words):
    path = single_file(tiny, tmp_path)
    (tmp_path / "m.yaml").write_text(text)
    forbid(monkeypatch, (safetensors.torch, "load_file"))
    with pytest.raises(ModelLoadError, match=words) as info:
        load_model(str(path), str(tiny_model_dir))
    assert str(tmp_path / "m.yaml") in str(info.value)


# ------------------------------------------------------------------------------------------------ input channels


def unet_with_inputs(tiny_model_dir, tmp_path, in_channels):
    """The tiny folder with a UNet (new weights) taking `in_channels` inputs, as inpainting and edit models do."""
    from diffusers import UNet2DConditionModel

    folder = shutil.copytree(tiny_model_dir, tmp_path / f"unet{in_channels}")
    config = UNet2DConditionModel.load_config(folder / "unet")
    UNet2DConditionModel.from_config({**config, "in_channels": in_channels}).save_pretrained(folder / "unet")
    return folder


@pytest.mark.parametrize("in_channels, words", [
    (9, "is an inpainting model \\(9 input channels"),
    (8, "is an instruct-pix2pix / image-editing model \\(8 input channels"),
    (5, "is a model whose UNet takes 5 input channels"),
])
def test_folder_unet_that_cannot_be_fed_is_refused_before_loading(tiny_model_dir, tmp_path, monkeypatch,
                                                                  in_channels, words):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = unet_with_inputs(tiny_model_dir, tmp_path, in_channels)
    forbid(monkeypatch, (UNet2DConditionModel, "from_pretrained"), (AutoencoderKL, "from_pretrained"),
           (CLIPTextModel, "from_pretrained"))
    with pytest.raises(ModelLoadError, match=words) as info:
        load_model(str(folder))
    message = str(info.value)
    assert message.startswith(f"{folder}: ") and "SeaChange trains text-to-image models with 4" in message
    assert "Use a text-to-image SD 1.5 model" in message


def test_vae_latents_must_match_the_unet_inputs(tiny_model_dir, tmp_path):
    folder = folder_copy(tiny_model_dir, tmp_path, vae={"latent_channels": 8})
    with pytest.raises(ModelLoadError, match="takes 4 input channels but whose VAE makes 8"):
        load_model(str(folder))


def test_single_file_inpainting_model_is_refused_from_its_header(tiny, tiny_model_dir, tmp_path, monkeypatch):
    state_dict = load_file(str(single_file(tiny, tmp_path)))
    first = state_dict[FIRST_CONV]
    state_dict[FIRST_CONV] = torch.cat([first, torch.zeros(first.shape[0], 5, *first.shape[2:])], dim=1)
    save_file(state_dict, str(tmp_path / "inpaint.safetensors"))
    torch.save({"state_dict": state_dict}, tmp_path / "inpaint.ckpt")
    with monkeypatch.context() as patched:
        forbid(patched, (safetensors.torch, "load_file"))
        for base_config in (None, str(tiny_model_dir)):  # refused before the configs' shapes are compared
            with pytest.raises(ModelLoadError, match="is an inpainting model \\(9 input channels") as info:
                load_model(str(tmp_path / "inpaint.safetensors"), base_config)
            assert str(tmp_path / "inpaint.safetensors") in str(info.value)
    with pytest.raises(ModelLoadError, match="is an inpainting model") as info:
        load_model(str(tmp_path / "inpaint.ckpt"), str(tiny_model_dir))
    assert str(tmp_path / "inpaint.ckpt") in str(info.value)


def test_base_config_with_an_inpainting_unet_is_refused(tiny, tiny_model_dir, tmp_path):
    path = single_file(tiny, tmp_path)
    config = folder_copy(tiny_model_dir, tmp_path, unet={"in_channels": 9}, name="inpaint_config")
    with pytest.raises(ModelLoadError, match="is an inpainting model") as info:
        load_model(str(path), str(config))
    assert str(info.value).startswith(f"{config}: ")


# ------------------------------------------------------------------------------------------------ resolving


def model_with(prediction_type):
    return SimpleNamespace(prediction_type=prediction_type, prediction_source="scheduler config in /m")


@pytest.mark.parametrize("own", ["epsilon", "v_prediction"])
def test_resolve_auto_and_agreeing_choices(own):
    assert resolve_prediction_type("auto", model_with(own)) == (own, None)
    assert resolve_prediction_type(own, model_with(own)) == (own, None)


@pytest.mark.parametrize("requested, own", [("v_prediction", "epsilon"), ("epsilon", "v_prediction")])
def test_resolve_contradicting_choice_is_kept_with_a_warning(requested, own):
    chosen, warning = resolve_prediction_type(requested, model_with(own))
    assert chosen == requested
    assert f"is {requested}, but the base model predicts {own} (scheduler config in /m)" in warning
    assert f"the result predicts {requested}, not {own}, and must be sampled that way" in warning


def test_resolve_refuses_unknown_choices():
    with pytest.raises(ValueError, match="auto, epsilon or v_prediction"):
        resolve_prediction_type("sample", model_with("epsilon"))
