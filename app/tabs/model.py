"""The model tab: the SD 1.5 checkpoint to start from, where and how the trained model is written, and for
method lora the LoRA to start from and the merged model (hidden for the other methods, see training.MethodFields)."""
from __future__ import annotations

from app.tabs.training import MethodTab

GROUPS = [
    ("Base model", ["base_model", "base_config", "load_ema"]),
    ("Output", ["output_path", "output_format", "output_dtype", "embed_preset"]),
    ("LoRA", ["lora_weights", "merged_output_path", "merge_strength"]),
]


class ModelTab(MethodTab):
    title = "model"
    section = "model"
    groups = GROUPS
    columns = 2
