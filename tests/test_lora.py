"""LoRA training (training.method "lora"): the adapter trains and the base does not, the file is kohya's layout that
diffusers loads, merges, continuing a file, exact resume, and files for other models refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.errors import InputError
from trainer.model.models import load_model
from trainer.train.loop import train

STEPS = 6


def lora_preset(tmp_path, model, concept, training=None, model_section=None, **sections):
    return make_preset(tmp_path, model, concept,
                       training={"method": "lora", "max_steps": STEPS, "lora_rank": 4, "lora_alpha": 2.0,
                                 "learning_rate": 1e-2, **(training or {})},
                       model={"output_path": str(tmp_path / "lora.safetensors"), **(model_section or {})},
                       backup={"backup_unit": "never", "rolling_backups": 0}, **sections)


run = run_stopping_at


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_each_kind_trains_the_adapter_and_never_the_base(kind, tiny_model_dir, color_concept, tmp_path):
    """The LoRA file holds moved adapter weights; the model merged at strength 0 is the base, bit for bit (the
    base weights never moved); merged at 1 it differs from the base in the adapted layers only."""
    preset = lora_preset(tmp_path, tiny_model_dir, color_concept,
                         training={"lora_type": kind, "lora_conv_rank": 2, "train_text_encoder": True},
                         model_section={"merged_output_path": str(tmp_path / "merged0.safetensors"),
                                        "merge_strength": 0.0, "output_dtype": "float32"})
    finished, _ = run(preset)
    assert finished.outcome == "completed" and finished.output_path == str(tmp_path / "lora.safetensors")
    tensors = load_file(finished.output_path)
    assert any(k.startswith("lora_unet_") for k in tensors) and any(k.startswith("lora_te_") for k in tensors)
    moved = {"lora": "lora_up.weight", "loha": "hada_w2_a", "lokr": "lokr_w1"}[kind]
    assert any(k.endswith(moved) and t.abs().max() > 0 for k, t in tensors.items())

    base = load_model(str(tiny_model_dir))
    merged0 = load_model(str(tmp_path / "merged0.safetensors"))
    for part in ("unet", "text_encoder"):
        a, b = getattr(base, part).state_dict(), getattr(merged0, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_merged_model_is_the_base_plus_each_layers_change(tiny_model_dir, color_concept, tmp_path):
    """Merging at strength 1 adds lora_up @ lora_down * alpha / rank (kohya's definition) to each adapted weight,
    and leaves every other weight as it was."""
    preset = lora_preset(tmp_path, tiny_model_dir, color_concept, training={"lora_conv_rank": 2},
                         model_section={"merged_output_path": str(tmp_path / "merged"), "merge_strength": 1.0,
                                        "output_format": "diffusers", "output_dtype": "float32"})
    run(preset)
    file, base = load_file(str(tmp_path / "lora.safetensors")), load_model(str(tiny_model_dir)).unet.state_dict()
    merged = load_model(str(tmp_path / "merged")).unet.state_dict()
    changed = set()
    for key, weight in base.items():
        module = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
        if key.endswith(".weight") and f"{module}.lora_down.weight" in file:
            down, up = file[f"{module}.lora_down.weight"], file[f"{module}.lora_up.weight"]
            scale = float(file[f"{module}.alpha"]) / down.shape[0]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scale
            assert torch.allclose(merged[key], weight + delta, atol=1e-6), key
            changed.add(key)
        else:
            assert torch.equal(merged[key], weight), key
    assert any("resnets" in k and "conv1" in k for k in changed) and any("attn2.to_k" in k for k in changed)


def test_diffusers_loads_the_lora_and_its_images_change(tiny_model_dir, color_concept, tmp_path):
    """diffusers' load_lora_weights reads the file (kohya's layout), and the pipeline's image with it differs from
    the base's, and equals the image of the model merged by SeaChange."""
    from diffusers import StableDiffusionPipeline
    preset = lora_preset(tmp_path, tiny_model_dir, color_concept, training={"train_text_encoder": True},
                         model_section={"merged_output_path": str(tmp_path / "merged"), "merge_strength": 1.0,
                                        "output_format": "diffusers", "output_dtype": "float32"})
    run(preset)

    def image(pipe):
        return pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    plain = image(pipe)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    with_lora = image(pipe)
    merged = StableDiffusionPipeline.from_pretrained(str(tmp_path / "merged"), safety_checker=None)
    merged.set_progress_bar_config(disable=True)
    assert abs(with_lora - plain).mean() > 1e-3
    assert abs(with_lora - image(merged)).max() < 1e-3


def test_resume_of_a_lora_run_is_exact(tiny_model_dir, color_concept, tmp_path):
    training = {"lora_type": "loha", "train_text_encoder": True, "lora_dropout": 0.1, "ema": "cpu"}
    whole = lora_preset(tmp_path / "whole", tiny_model_dir, color_concept, training=training)
    run(whole)
    parted = lora_preset(tmp_path / "parted", tiny_model_dir, color_concept, training=training)
    assert run(parted, stop_at=3)[0].outcome == "stopped"
    finished, events = run(parted, resume="latest")
    assert any("Resumed from" in e.text for e in events if isinstance(e, ev.Log))
    a, b = load_file(str(tmp_path / "whole" / "lora.safetensors")), load_file(finished.output_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_continuing_a_lora_file_starts_from_its_weights(tiny_model_dir, color_concept, tmp_path):
    first = lora_preset(tmp_path / "first", tiny_model_dir, color_concept, training={"lora_conv_rank": 2})
    run(first)
    start = tmp_path / "first" / "lora.safetensors"
    again = lora_preset(tmp_path / "again", tiny_model_dir, color_concept,
                        training={"lora_conv_rank": 2, "learning_rate": 0.0}, model_section={"lora_weights": str(start)})
    finished, events = run(again)
    assert any("LoRA started from" in e.text for e in events if isinstance(e, ev.Log))
    a, b = load_file(str(start)), load_file(finished.output_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # learning rate 0: as it came


def test_the_file_header_is_kohyas(tiny_model_dir, color_concept, tmp_path):
    preset = lora_preset(tmp_path, tiny_model_dir, color_concept, model_section={"output_dtype": "float16"})
    run(preset)
    with safe_open(str(tmp_path / "lora.safetensors"), "pt") as f:
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if not k.endswith(".alpha")}
        alphas = {f.get_tensor(k).dtype for k in f.keys() if k.endswith(".alpha")}
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert dtypes == {torch.float16} and alphas == {torch.float32}  # alpha exact: fp16 would make 0.1 0.09998


def _write(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("keys, said", [
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768)}, "SDXL"),
    ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640)}, "SDXL"),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 1024),
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)},
     "SD 2.x"),
    ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 320)}, "diffusers"),
])
def test_a_lora_for_another_model_is_refused_before_loading(keys, said, tiny_model_dir, color_concept, tmp_path):
    start = _write(tmp_path / "other.safetensors", keys)
    preset = lora_preset(tmp_path, tiny_model_dir, color_concept, model_section={"lora_weights": str(start)})
    events = []
    with pytest.raises(InputError, match=said) as error:
        train(preset, events.append)
    assert str(error.value).startswith("model.lora_weights:")
    assert not any(isinstance(e, ev.Status) and e.text.startswith("Loading") for e in events)  # before the model


def test_a_lora_of_other_shapes_is_refused_naming_the_setting(tiny_model_dir, color_concept, tmp_path):
    first = lora_preset(tmp_path / "first", tiny_model_dir, color_concept)
    run(first)
    again = lora_preset(tmp_path / "again", tiny_model_dir, color_concept, training={"lora_rank": 8},
                        model_section={"lora_weights": str(tmp_path / "first" / "lora.safetensors")})
    with pytest.raises(InputError, match="training.lora_rank"):
        train(again, lambda e: None)
    again = lora_preset(tmp_path / "kind", tiny_model_dir, color_concept, training={"lora_type": "loha"},
                        model_section={"lora_weights": str(tmp_path / "first" / "lora.safetensors")})
    with pytest.raises(InputError, match="lora_type to lora"):
        train(again, lambda e: None)


def test_samples_show_the_base_with_the_lora_applied(tiny_model_dir, color_concept, tmp_path):
    """The run's last sample is the merged model's image (same prompt, seed, sampler), and differs from the sample
    before training (the base's)."""
    import numpy as np
    from PIL import Image
    from trainer.config import SamplePrompt
    from trainer.train.sampling import generate, make_pipeline
    prompt = {"prompt": "a red square", "steps": 2, "width": 32, "height": 32, "sampler": "ddim", "seed": 3}
    preset = lora_preset(tmp_path, tiny_model_dir, color_concept, training={"train_text_encoder": True},
                         model_section={"merged_output_path": str(tmp_path / "merged"), "output_format": "diffusers",
                                        "output_dtype": "float32"},
                         sampling={"unit": "steps", "every": STEPS, "before_training": True, "prompts": [prompt]})
    _, events = run(preset)
    samples = [e.path for e in events if isinstance(e, ev.SampleReady)]
    first, last = (np.asarray(Image.open(path), dtype=float) for path in (samples[0], samples[-1]))
    merged = load_model(str(tmp_path / "merged"))
    pipe = make_pipeline(merged.unet, merged.vae, merged.text_encoder, merged.tokenizer,
                         merged.noise_scheduler.config, "ddim")
    expected = np.asarray(generate(pipe, SamplePrompt(**prompt), "cpu"), dtype=float)
    assert abs(last - expected).max() <= 1 and abs(first - last).mean() > 0.5


def test_the_merged_model_and_a_word_never_replace_what_is_not_this_runs(tiny_model_dir, color_concept, tmp_path):
    """model.merged_output_path and the file of a word trained beside get output_path's protection: another run's
    file or a file SeaChange did not write is refused by name before anything loads."""
    first = lora_preset(tmp_path / "first", tiny_model_dir, color_concept)
    run(first)
    theirs = tmp_path / "first" / "lora.safetensors"
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"the user's own file")
    for merged, said in ((theirs, "holds the model of another run"), (mine, "SeaChange did not write")):
        again = lora_preset(tmp_path / f"again-{merged.stem}", tiny_model_dir, color_concept,
                            model_section={"merged_output_path": str(merged)})
        with pytest.raises(InputError, match=f"model.merged_output_path: .*{said}"):
            train(again, lambda e: None)
    (tmp_path / "word").mkdir()
    (tmp_path / "word" / "wordxq.safetensors").write_bytes(b"the user's own file")
    beside = lora_preset(tmp_path / "beside", tiny_model_dir, color_concept, training={"embedding_placeholder": "wordxq"},
                         model_section={"output_path": str(tmp_path / "word" / "lora.safetensors")})
    with pytest.raises(InputError, match="training.embedding_placeholder: .*SeaChange did not write"):
        train(beside, lambda e: None)
    assert theirs.stat().st_size > 100 and mine.read_bytes() == b"the user's own file"
