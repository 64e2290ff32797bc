"""The model tab: the SD 1.5 checkpoint to start from and where and how the trained model is written."""
from __future__ import annotations

from app.tabs.common import Tab, scroll_area

GROUPS = [
    ("Base model", ["base_model", "base_config", "load_ema"]),
    ("Output", ["output_path", "output_format", "output_dtype", "embed_preset"]),
]


class ModelTab(Tab):
    title = "model"

    def steps(self):
        yield from self.grouped(scroll_area(self.frame), "model", GROUPS, columns=2)
