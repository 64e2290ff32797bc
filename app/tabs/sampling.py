"""The sampling tab: when to sample, and the editable list of sample prompts."""
from __future__ import annotations

from app.tabs.common import ListEditor, Tab, scroll_area
from app.widgets import Group

GROUPS = [("Interval", ["every", "unit", "before_training"])]


class SamplingTab(Tab):
    title = "sampling"

    def steps(self):
        area = scroll_area(self.frame)
        yield from self.grouped(area, "sampling", GROUPS, columns=2, skip=("prompts",))
        group = Group(area, "Sample prompts")
        group.grid(row=1, column=0, columnspan=2, sticky="ew", padx=6, pady=6)
        self.prompts = ListEditor(group, self.form, "sampling.prompts", add_text="+ Add prompt")
        self.prompts.grid(row=1, column=0, columnspan=2, sticky="ew", padx=8, pady=(0, 10))
        self.editors.append(self.prompts)
        yield
