"""A LoRA file for the tiny test model (tests/conftest.py's tiny_model_dir), for the tests that apply one."""
from __future__ import annotations

from pathlib import Path


def write_tiny_lora(model_dir, path: Path, std: float = 0.2, seed: int = 0) -> Path:
    """Write a kohya-layout LoRA for the tiny model at `model_dir` to `path`: rank 4, alpha 4 (so a module's weight
    change is up @ down) on every attention and feed-forward layer of its UNet (trainer.model.lora.target_layers), the
    up matrices drawn from N(0, std^2) with `seed` (std 0.2: a change its 32 px images show). Returns `path`."""
    import torch
    from safetensors.torch import save_file

    from trainer.model import lora
    from trainer.model.models import load_model
    model = load_model(str(model_dir))
    lora.add_adapter(model.unet, "unet", "lora", lora.target_layers(model.unet, "unet", 0, 4, 4.0, 1.0), 0.0)
    generator = torch.Generator().manual_seed(seed)
    for _, layer in lora.tuner_layers(model.unet):
        up = layer.lora_B[lora.ADAPTER].weight
        with torch.no_grad():
            up.copy_(torch.randn(up.shape, generator=generator) * std)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora.kohya_tensors(model.unet, "unet"), str(path))
    return path
