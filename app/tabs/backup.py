"""The backup tab: built from the backup section's fields as they are (backups, saves, resume)."""
from __future__ import annotations

from app.tabs.common import Tab, scroll_area


class BackupTab(Tab):
    title = "backup"

    def steps(self):
        yield from self.grouped(scroll_area(self.frame), "backup", [], columns=2, more_title="Backups and saves")
