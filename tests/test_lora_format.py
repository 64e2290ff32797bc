"""SeaChange's LoRA and embedding files against the formats as A1111, ComfyUI, kohya and diffusers define them
(tests/format_reference.py, written from those programs' loaders, not from SeaChange's writer)."""
from __future__ import annotations

import queue

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import format_reference as ref
from tiny_presets import make_preset
from trainer.model import lora
from trainer.model.models import load_model
from trainer.train.loop import train


def full_size_sd15():
    """SD 1.5's UNet and CLIP text encoder at full size on the meta device (no memory), from the bundled configs."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from trainer.model.models import BUNDLED_SD15
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(BUNDLED_SD15 / "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(BUNDLED_SD15 / "text_encoder"))
    return unet, text_encoder


@pytest.mark.parametrize("conv", [False, True])
def test_the_adapted_layers_are_kohyas_and_every_reader_finds_them(conv):
    """On full-size SD 1.5: the module names SeaChange adapts are the ones kohya's networks/lora.py makes (with
    conv: LoCon), each lands on an A1111 layer of the original checkpoint (the reference state dict) and on a
    ComfyUI key, with the weight shape of the layer adapted."""
    unet, text_encoder = full_size_sd15()
    ours = {}
    for part, model in (("unet", unet), ("text_encoder", text_encoder)):
        for spec in lora.target_layers(model, part, 8 if conv else 0, 16, 8.0, 1.0):
            ours[lora.kohya_name(part, spec.name)] = tuple(model.get_submodule(spec.name).weight.shape)
    expected = ref.kohya_sd15_lora_modules(unet, text_encoder, conv)
    assert ours == expected
    assert len([n for n in ours if n.startswith("lora_unet_")]) == (278 if conv else 192)
    layers = ref.a1111_layer_weight_shapes()
    for name, shape in ours.items():
        found = ref.a1111_resolve(name, layers)
        assert found is not None and tuple(layers[found]) == shape, name
        assert ref.comfyui_accepts(name), name


@pytest.fixture(scope="module")
def trained(tiny_model_dir, color_concept, tmp_path_factory):
    """A LoRA of each kind (LoCon, text encoder on) trained 3 steps on the tiny model, with the model merged at
    strength 1 beside it: {kind: (file tensors, metadata, merged components)}."""
    out = {}
    for kind in ("lora", "loha", "lokr"):
        tmp = tmp_path_factory.mktemp(kind)
        preset = make_preset(tmp, tiny_model_dir, color_concept,
                             training={"method": "lora", "lora_type": kind, "lora_rank": 4, "lora_alpha": 3.0,
                                       "lora_conv_rank": 2, "lora_conv_alpha": 1.5, "train_text_encoder": True,
                                       "max_steps": 3, "learning_rate": 1e-2},
                             model={"output_path": str(tmp / "lora.safetensors"), "output_dtype": "float32",
                                    "merged_output_path": str(tmp / "merged"), "output_format": "diffusers"})
        assert train(preset, lambda e: None, queue.Queue()).outcome == "completed"
        with safe_open(str(tmp / "lora.safetensors"), "pt") as f:
            meta = f.metadata()
        out[kind] = load_file(str(tmp / "lora.safetensors")), meta, load_model(str(tmp / "merged"))
    return out


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_each_kind_means_what_comfyui_and_a1111_compute(kind, trained, tiny_model_dir):
    """For every module of the file, the weight change ComfyUI's and A1111's formulas compute from its tensors is
    the change SeaChange trained (the merged model minus the base); ComfyUI loads every key; the file's kind is
    the one asked for."""
    tensors, _, merged = trained[kind]
    base = load_model(str(tiny_model_dir))
    modules = {key.partition(".")[0] for key in tensors}
    assert {ref.module_family(tensors, m) for m in modules} == {kind}
    seen = set()
    for part, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        trained_state, base_state = getattr(merged, part).state_dict(), getattr(base, part).state_dict()
        for key, weight in base_state.items():
            path = key.removesuffix(".weight")
            name = lora.kohya_name(part, path)
            if not key.endswith(".weight") or name not in modules:
                continue
            change = trained_state[key] - weight
            assert torch.allclose(ref.delta_weight(tensors, name, weight.shape), change, atol=1e-5), name
            assert torch.allclose(ref.delta_weight_a1111(tensors, name, weight.shape), change, atol=1e-5), name
            seen.add(name)
    assert seen == modules and any("resnets" in m for m in seen) and any(m.startswith("lora_te_") for m in seen)
    key_map = ref.comfyui_key_map(ref.comfyui_model_shapes())
    tiny_names = {k for k in key_map if k.startswith("lora_te_")} | {
        m for m in modules if m.startswith("lora_unet_")}  # the tiny UNet has fewer blocks than SD 1.5
    assert ref.comfyui_unloaded_keys({k: v for k, v in tensors.items() if k.partition(".")[0] in tiny_names},
                                     key_map | {m: m for m in tiny_names}) == []


def test_diffusers_reads_a_lora_as_a1111_does(trained):
    tensors, _, merged = trained["lora"]
    shapes = {lora.kohya_name(part, name.removesuffix(".weight")): tuple(t.shape)
              for part in ("unet", "text_encoder") for name, t in getattr(merged, part).state_dict().items()
              if name.endswith(".weight")}
    assert ref.diffusers_kohya_lora_problems(tensors, shapes) == []
    assert all(tensors[k].dtype == torch.float32 and tensors[k].dim() == 0 for k in tensors if k.endswith(".alpha"))


@pytest.mark.parametrize("kind, module", [("lora", "networks.lora"), ("loha", "lycoris.kohya"),
                                          ("lokr", "lycoris.kohya")])
def test_the_header_is_what_kohya_writes(kind, module, trained):
    _, meta, _ = trained[kind]
    assert set(ref.KOHYA_SS_CORE_KEYS) <= set(meta) and meta["ss_network_module"] == module
    assert meta["ss_base_model_version"] == ref.KOHYA_SD1_BASE_MODEL_VERSION and meta["ss_v2"] == "False"
    assert ref.a1111_sd_version(meta) == ref.a1111_sd_version({"ss_base_model_version": "sd_v1", "ss_v2": "False"})
    for key, value in ref.MODELSPEC_SD1_LORA.items():
        assert meta[key] == value
    assert set(ref.MODELSPEC_MUST_KEYS) <= set(meta) and all(isinstance(v, str) for v in meta.values())


def test_an_embedding_file_is_what_a1111_comfyui_and_diffusers_read(tiny_model_dir, color_concept, tmp_path):
    import shutil
    folder = tmp_path / "imgs"
    folder.mkdir()
    for image in color_concept.glob("*.png"):
        shutil.copy(image, folder / image.name)
        (folder / f"{image.stem}.txt").write_text("a wordxq square\n")
    preset = make_preset(tmp_path, tiny_model_dir, folder,
                         training={"method": "embedding", "embedding_placeholder": "wordxq",
                                   "embedding_vectors": 2, "max_steps": 2},
                         model={"output_path": str(tmp_path / "wordxq.safetensors")})
    train(preset, lambda e: None, queue.Queue())
    tensors = load_file(str(tmp_path / "wordxq.safetensors"))
    dim = tensors["emb_params"].shape[1]  # the tiny text encoder's width (768 in SD 1.5)
    assert torch.equal(ref.embedding_vectors_as_a1111_reads(tensors, expected_dim=dim), tensors["emb_params"])
    assert torch.equal(ref.embedding_vectors_as_comfyui_reads(tensors, embedding_size=dim), tensors["emb_params"])
    with safe_open(str(tmp_path / "wordxq.safetensors"), "pt") as f:
        meta = f.metadata()
    for key, value in ref.MODELSPEC_SD1_TI.items():
        assert meta[key] == value
