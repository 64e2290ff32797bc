"""The backup tab: built from the backup section's fields as they are (backups, saves, resume)."""
from __future__ import annotations

from dataclasses import fields

import customtkinter as ctk

from app.form import hint_of
from app.widgets import MUTED
from app.tabs.common import Tab, scroll_area


class BackupTab(Tab):
    title = "backup"

    def steps(self):
        area = scroll_area(self.frame)
        if not fields(hint_of("backup")):
            ctk.CTkLabel(area, text="No backup settings in this version yet.", text_color=MUTED).grid(
                row=0, column=0, padx=16, pady=16, sticky="w")
            return
        yield from self.grouped(area, "backup", [], columns=2, more_title="Backups and saves")
