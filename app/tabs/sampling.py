"""The sampling tab: when to sample, and the sample prompts as cards (a prompt needs room: a wide box of wrapped
lines, with its settings in a row below)."""
from __future__ import annotations

from dataclasses import fields

import customtkinter as ctk

from app.form import Form, item_type
from app.tabs.common import ListRows, Tab, scroll_area
from app.widgets import MUTED, Group, Tooltip, bury

GROUPS = [("Interval", ["every", "unit", "before_training"]),
          ("Validation loss", ["validate_every", "validate_unit"])]  # with a concept of role validation
TEXT_HEIGHTS = {"prompt": 60, "negative_prompt": 40}  # px: the texts of a prompt, wrapped across the card
CARD_COLOUR = ("gray80", "gray24")


class PromptsEditor(ListRows, ctk.CTkFrame):
    """A list of sample prompts, one card each: the prompt and negative prompt as wide multi-line boxes, the
    other fields (seed, CFG scale, steps, size, sampler) in a row below, ✕ to remove it, and an Add button.

    As a ListEditor: `rows[i]` holds card i's widgets with its ✕ button last; `sync()` after a preset load."""

    def __init__(self, master, form: Form, list_path: str, add_text: str = "+ Add"):
        super().__init__(master, fg_color="transparent")
        self.form, self.list_path = form, list_path
        self.item_cls = item_type(form.hint_of(list_path))
        self.names = [f.name for f in fields(self.item_cls)]
        self.rows: list[list] = []
        self.cards: list[ctk.CTkFrame] = []
        self.grid_columnconfigure(0, weight=1)
        self.empty = ctk.CTkLabel(self, text="No sample prompts yet: training samples nothing.", text_color=MUTED)
        self.add_button = ctk.CTkButton(self, text=add_text, width=120, command=self.add)
        self.rebuild()

    def rebuild(self) -> None:
        """Re-create the cards for the preset's list (after add, remove or loading another preset)."""
        for card in self.cards:
            card.destroy()
        bury((self.cards, self.rows))
        self.cards, self.rows = [], []
        self.form.unbind(self.list_path)
        for i in range(len(self.items())):
            self._card(i)
        if self.rows:
            self.empty.grid_remove()
        else:
            self.empty.grid(row=0, column=0, sticky="w", padx=3, pady=6)
        self.add_button.grid(row=len(self.cards) + 1, column=0, sticky="w", padx=3, pady=(2, 0))

    def _card(self, i: int) -> None:
        card = ctk.CTkFrame(self, fg_color=CARD_COLOUR, corner_radius=6)
        card.grid(row=i + 1, column=0, sticky="ew", pady=(0, 8))
        card.grid_columnconfigure(1, weight=1)
        row = []
        for r, (name, height) in enumerate(TEXT_HEIGHTS.items()):
            label = self._label(card, name)
            label.grid(row=r, column=0, sticky="nw", padx=(10, 8), pady=(10 if r == 0 else 6, 0))
            box = self.form.bare(card, f"{self.list_path}.{i}.{name}", multiline=True).widget
            box.configure(height=height)
            box.grid(row=r, column=1, sticky="ew", pady=(8 if r == 0 else 4, 0))
            row += [label, box]
        settings = ctk.CTkFrame(card, fg_color="transparent")
        settings.grid(row=2, column=0, columnspan=3, sticky="w", padx=6, pady=(6, 8))
        for c, name in enumerate(n for n in self.names if n not in TEXT_HEIGHTS):
            label = self._label(settings, name, MUTED)
            label.grid(row=0, column=2 * c, padx=(4 if c == 0 else 14, 6))
            widget = self.form.bare(settings, f"{self.list_path}.{i}.{name}").widget
            widget.grid(row=0, column=2 * c + 1)
            row += [label, widget]
        remove = ctk.CTkButton(card, text="✕", width=30, fg_color="transparent", border_width=1,
                               command=lambda i=i: self.remove(i))
        remove.grid(row=0, column=2, sticky="ne", padx=(6, 8), pady=8)
        Tooltip(remove, "Remove this prompt.")
        self.rows.append(row + [remove])
        self.cards.append(card)

    def _label(self, parent, name: str, colour=None) -> ctk.CTkLabel:
        meta = self.form.meta_of(f"{self.list_path}.0.{name}")
        label = ctk.CTkLabel(parent, text=meta.get("label") or name, anchor="w",
                             **({"text_color": colour} if colour else {}))
        Tooltip(label, meta.get("help") or "")
        return label



class SamplingTab(Tab):
    title = "sampling"

    def steps(self):
        area = scroll_area(self.frame)
        yield from self.grouped(area, "sampling", GROUPS, columns=2, skip=("prompts",))
        group = Group(area, "Sample prompts")
        group.grid(row=1, column=0, columnspan=2, sticky="ew", padx=6, pady=6)
        self.prompts = PromptsEditor(group, self.form, "sampling.prompts", add_text="+ Add prompt")
        self.prompts.grid(row=1, column=0, columnspan=2, sticky="ew", padx=8, pady=(0, 10))
        self.editors.append(self.prompts)
        yield
