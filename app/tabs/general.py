"""The general tab: workspace, cache, seed, device, logging and the demo folder."""
from __future__ import annotations

from app.tabs.common import Tab, scroll_area

GROUPS = [
    ("Run", ["workspace_dir", "cache_dir", "seed", "device"]),
    ("Logging", ["tensorboard"]),
    ("Demo", ["demo_dir"]),
]


class GeneralTab(Tab):
    title = "general"

    def steps(self):
        yield from self.grouped(scroll_area(self.frame), "general", GROUPS, columns=2)
