"""Model loading and saving, offline: every format loads, saves round-trip, errors name the path, SD 1.5 layout."""
import json
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.errors import ModelLoadError
from trainer.model import convert
from trainer.model.models import BUNDLED_SD15, SDComponents, load_model, save_model

PARTS = ("unet", "vae", "text_encoder")
METADATA = {"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": "tiny",
            "modelspec.date": "2025-01-01T00:00:00", "modelspec.resolution": "64",
            "seachange.preset": json.dumps({"version": 1, "training": {"learning_rate": 1e-5}})}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> SDComponents:
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tiny_single_file(tiny, tmp_path_factory):
    return save_model(tiny, tmp_path_factory.mktemp("single") / "tiny.safetensors", "single_file", "float32",
                      METADATA)


def assert_same_weights(a: SDComponents, b: SDComponents) -> None:
    for part in PARTS:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        for key in sa:
            assert torch.equal(sa[key].float(), sb[key].float()), f"{part}.{key}"


def leftovers(folder) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------ loading


def test_load_diffusers_folder_offline(tiny_model_dir, no_network):
    c = load_model(str(tiny_model_dir))
    assert type(c.unet).__name__ == "UNet2DConditionModel" and type(c.vae).__name__ == "AutoencoderKL"
    assert type(c.text_encoder).__name__ == "CLIPTextModel" and type(c.noise_scheduler).__name__ == "DDPMScheduler"
    assert c.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert c.unet.dtype == c.vae.dtype == c.text_encoder.dtype == torch.float32
    assert c.noise_scheduler.config.num_train_timesteps == 1000


def test_load_single_safetensors_offline(tiny, tiny_single_file, tiny_model_dir, no_network):
    loaded = load_model(str(tiny_single_file), str(tiny_model_dir))
    assert_same_weights(tiny, loaded)
    assert loaded.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert loaded.tokenizer("a photo of a cat").input_ids[2] == 1125


def test_load_ckpt_offline(tiny, tiny_single_file, tiny_model_dir, tmp_path, no_network):
    state_dict = load_file(str(tiny_single_file))
    # extra keys real checkpoints carry are ignored
    state_dict["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save({"state_dict": state_dict, "global_step": 10}, tmp_path / "tiny.ckpt")
    assert_same_weights(tiny, load_model(str(tmp_path / "tiny.ckpt"), str(tiny_model_dir)))


def test_home_is_expanded(tiny_single_file, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.safetensors").write_bytes(tiny_single_file.read_bytes())
    (tmp_path / "cfg").symlink_to(tiny_model_dir)
    assert load_model("~/m.safetensors", "~/cfg").unet is not None


# ------------------------------------------------------------------------------------------------ saving


def test_single_file_round_trip_and_metadata(tiny, tiny_single_file, tiny_model_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with safe_open(str(tiny_single_file), "pt") as f:
        header, keys = f.metadata(), list(f.keys())
    assert {k: header[k] for k in METADATA} == METADATA and header["modelspec.sai_model_spec"] == "1.0.0"
    assert json.loads(header["seachange.preset"])["version"] == 1
    prefixes = (convert.UNET_PREFIX, convert.VAE_PREFIX, convert.TEXT_ENCODER_PREFIX)
    assert all(k.startswith(prefixes) for k in keys)
    assert len(keys) == sum(len(getattr(tiny, p).state_dict()) for p in PARTS)
    # diffusers itself reads the file with the tiny configs
    unet = UNet2DConditionModel.from_single_file(str(tiny_single_file), config=str(tiny_model_dir),
                                                 subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_single_file(str(tiny_single_file), config=str(tiny_model_dir), subfolder="vae",
                                         local_files_only=True)
    for ours, theirs in ((tiny.unet, unet), (tiny.vae, vae)):
        for key, value in ours.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[key]), key


def test_diffusers_round_trip(tiny, tmp_path, no_network):
    out = save_model(tiny, tmp_path / "model", "diffusers", "float32", METADATA)
    assert out == tmp_path / "model" and (out / "model_index.json").is_file()
    assert json.loads((out / "seachange_metadata.json").read_text()) == METADATA
    assert_same_weights(tiny, load_model(str(out)))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype, tag", [("float16", "F16"), ("bfloat16", "BF16")])
def test_dtype_respected_and_caller_untouched(tiny, tmp_path, dtype, tag):
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    single = save_model(tiny, tmp_path / "m", "single_file", dtype, METADATA)
    assert single.name == "m.safetensors"
    with safe_open(str(single), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {tag}
    folder = save_model(tiny, tmp_path / "d", "diffusers", dtype, METADATA)
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model")):
        weights = load_file(str(folder / sub / f"{name}.safetensors"))
        assert {v.dtype for v in weights.values()} == {getattr(torch, dtype)}, sub
    assert tiny.unet.dtype == tiny.vae.dtype == tiny.text_encoder.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())


def test_saves_replace_atomically(tiny, tmp_path):
    first = save_model(tiny, tmp_path / "m.safetensors", "single_file", "float16", METADATA)
    second = save_model(tiny, tmp_path / "m.safetensors", "single_file", "float32", METADATA)
    assert first == second and load_file(str(second))[convert.UNET_PREFIX + "input_blocks.0.0.weight"].dtype == torch.float32
    save_model(tiny, tmp_path / "d", "diffusers", "float16", METADATA)
    save_model(tiny, tmp_path / "d", "diffusers", "float32", {"modelspec.title": "second"})
    assert json.loads((tmp_path / "d" / "seachange_metadata.json").read_text()) == {"modelspec.title": "second"}
    assert leftovers(tmp_path) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_model(tiny, tmp_path / "notes", "diffusers", "float16", METADATA)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me" and leftovers(tmp_path) == []


def test_bad_save_arguments(tiny, tmp_path):
    with pytest.raises(ValueError, match="output_dtype"):
        save_model(tiny, tmp_path / "m", "single_file", "float8", METADATA)
    with pytest.raises(ValueError, match="output_format"):
        save_model(tiny, tmp_path / "m", "onnx", "float16", METADATA)
    with pytest.raises(ValueError, match="strings"):
        save_model(tiny, tmp_path / "m", "single_file", "float16", {"step": 3})


# ------------------------------------------------------------------------------------------------ errors


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_load_errors_name_the_path(tmp_path, tiny_single_file, tiny_model_dir):
    cases = {}
    cases["missing"] = (tmp_path / "nope.safetensors", "no such file")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    cases["garbage"] = (tmp_path / "garbage.safetensors", "corrupt")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, tmp_path / "evil.ckpt")
    cases["pickle"] = (tmp_path / "evil.ckpt", "refused")
    (tmp_path / "model.onnx").write_bytes(b"x")
    cases["extension"] = (tmp_path / "model.onnx", "unknown model file type")
    (tmp_path / "empty_dir").mkdir()
    cases["folder"] = (tmp_path / "empty_dir", "not a Stable Diffusion diffusers folder")
    for name, (path, words) in cases.items():
        with pytest.raises(ModelLoadError, match=words) as info:
            load_model(str(path), str(tiny_model_dir))
        assert str(path) in str(info.value), name


def test_wrong_layout_or_shapes_are_refused(tmp_path, tiny_single_file, tiny_model_dir):
    state_dict = load_file(str(tiny_single_file))
    foreign = tmp_path / "foreign.safetensors"  # the tiny weights without the configs SeaChange's files carry
    save_file(state_dict, str(foreign))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion 1.x checkpoint") as info:
        load_model(str(foreign))  # tiny weights against the bundled full-size SD 1.5 configs
    assert str(foreign) in str(info.value)
    key = convert.UNET_PREFIX + "input_blocks.0.0.weight"
    state_dict[key] = torch.zeros(7, 4, 3, 3)
    save_file(state_dict, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match="wrong shape") as info:
        load_model(str(tmp_path / "bad.safetensors"), str(tiny_model_dir))
    assert key in str(info.value) and str(tmp_path / "bad.safetensors") in str(info.value)
    with pytest.raises(ModelLoadError, match="base config"):
        load_model(str(tiny_single_file), str(tmp_path))


# ------------------------------------------------------------------------------------------------ full-size layout


def test_full_size_sd15_layout_matches_diffusers_conversion():
    """Our diffusers → original mapping of the real SD 1.5 shapes (meta tensors, no memory), fed back through
    diffusers' own original → diffusers converters, returns every key with the same shape."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(BUNDLED_SD15 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(BUNDLED_SD15 / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(BUNDLED_SD15 / "text_encoder"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD 1.5's published sizes
    ours = {"unet": unet.state_dict(), "vae": vae.state_dict(), "te": text_encoder.state_dict()}
    original = convert.diffusers_to_original(ours["unet"], ours["vae"], ours["te"], unet.config, vae.config)
    assert len(original) == 1130
    assert original["model.diffusion_model.output_blocks.11.0.skip_connection.weight"].shape == (320, 640, 1, 1)
    assert original["model.diffusion_model.output_blocks.8.2.conv.weight"].shape == (640, 640, 3, 3)
    assert original["first_stage_model.decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    theirs = {"unet": convert_ldm_unet_checkpoint(original, dict(unet.config)),
              "vae": convert_ldm_vae_checkpoint(original, dict(vae.config)),
              "te": {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(original).items()}}
    for part in ours:
        expected = {k.removeprefix("text_model."): tuple(v.shape) for k, v in ours[part].items()}
        assert {k: tuple(v.shape) for k, v in theirs[part].items()} == expected, part
    back = convert.original_to_diffusers(original, ours["unet"], ours["vae"], ours["te"], unet.config, vae.config)
    for part, mapped in zip(ours, back):
        assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours[part].items()}, part
