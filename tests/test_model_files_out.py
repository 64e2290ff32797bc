"""What SeaChange writes, checked against the formats' own definitions (issue 13): the single-file layout against the
original LDM state dict (tests/reference/sd15_ldm_state_dict.tsv: name, shape and dtype of every tensor of SD 1.x's
LatentDiffusion built from v1-inference.yaml with the original code A1111 runs), and a diffusers folder's text
encoder under the names every reader accepts."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from safetensors import safe_open

from trainer.model import convert
from trainer.model.models import BUNDLED_SD15, _empty_models, load_model, save_model

REFERENCE = Path(__file__).resolve().parent / "reference" / "sd15_ldm_state_dict.tsv"
# The noise-schedule buffers of LatentDiffusion (rebuilt from the config by every loader) and CLIP's position_ids
# buffer (transformers 4.30 stored it; later ones rebuild it) are in the reference but not in a checkpoint we write.
NOT_WRITTEN = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
               "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
               "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
               "posterior_mean_coef1", "posterior_mean_coef2",
               "cond_stage_model.transformer.text_model.embeddings.position_ids"}


def reference_layout() -> dict[str, list[int]]:
    with open(REFERENCE, newline="") as fh:
        return {name: [int(n) for n in shape.strip("[]").split(",") if n.strip()]
                for name, shape, _dtype in csv.reader(fh, delimiter="\t")}


def test_single_file_layout_is_the_original_ldm_state_dict():
    """Full SD 1.5 shapes on the meta device (no memory): names and shapes exactly as the original model's."""
    reference = reference_layout()
    assert len(reference) == 1143
    unet, vae, text_encoder = _empty_models(BUNDLED_SD15)
    written = convert.diffusers_to_original(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(),
                                            unet.config, vae.config)
    assert {name: list(t.shape) for name, t in written.items()} == \
        {name: shape for name, shape in reference.items() if name not in NOT_WRITTEN}


def test_diffusers_folder_text_encoder_uses_text_model_names(tiny_model_dir, tmp_path):
    from transformers import CLIPTextModel
    original = load_model(str(tiny_model_dir))
    folder = save_model(original, tmp_path / "out", "diffusers", "float32", {})
    files = sorted((folder / "text_encoder").glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            assert all(key.startswith("text_model.") for key in f.keys()), file
    for reloaded in (CLIPTextModel.from_pretrained(folder / "text_encoder"), load_model(str(folder)).text_encoder):
        want, got = original.text_encoder.state_dict(), reloaded.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_single_file_seachange_wrote_loads_back_without_base_config(tiny_model_dir, tmp_path):
    """The tiny model's shapes are not SD 1.5's: its file carries its configs (seachange.configs), so it loads
    with no extra setting, weights identical (issue 13, point 4)."""
    original = load_model(str(tiny_model_dir))
    path = save_model(original, tmp_path / "tiny.safetensors", "single_file", "float32", {})
    reloaded = load_model(str(path))
    for part in ("unet", "vae", "text_encoder"):
        want, got = getattr(original, part).state_dict(), getattr(reloaded, part).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), part
    assert reloaded.unet.config.block_out_channels == original.unet.config.block_out_channels

