"""Layout helpers shared by the tabs: grouped sections in balanced columns, and an editable list of items."""
from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Callable, Iterator

import customtkinter as ctk

from app.form import Form, is_scalar, item_type, read, scalar_list_item
from app.widgets import MUTED, Group, Tooltip, bury

GroupSpec = list[tuple[str, list[str]]]


def scroll_area(tab) -> ctk.CTkScrollableFrame:
    area = ctk.CTkScrollableFrame(tab, fg_color="transparent")
    area.pack(fill="both", expand=True)
    return area


class Columns:
    """Side-by-side columns; each new group goes to the column holding the fewest fields so far."""

    def __init__(self, parent, count: int, row: int = 0):
        self.frames, self.load = [], [0] * count
        for i in range(count):
            frame = ctk.CTkFrame(parent, fg_color="transparent", height=1)
            frame.grid(row=row, column=i, sticky="nsew", padx=6, pady=4)
            parent.grid_columnconfigure(i, weight=1, uniform="columns")
            self.frames.append(frame)

    def group(self, title: str, size: int) -> Group:
        i = self.load.index(min(self.load))
        self.load[i] += size + 2
        group = Group(self.frames[i], title)
        group.pack(fill="x", pady=6)
        return group


class Tab:
    """One tab of the window. `steps()` builds it in slices (a generator); `reload()` runs after a preset
    load (the form has already refreshed every bound widget); `field_changed(path)` after any edit."""

    title = ""

    def __init__(self, window, frame):
        self.window, self.form, self.frame = window, window.form, frame
        self.editors: list[ListEditor] = []

    def steps(self) -> Iterator[None]:
        yield

    def reload(self) -> None:
        for editor in self.editors:
            editor.sync()

    def field_changed(self, path: str) -> None:
        pass

    def jobs_changed(self) -> None:
        """A training or a tool started or finished (tabs with a Start button re-check it)."""

    def closing(self) -> None:
        """The window is being destroyed: cancel pending after() calls."""

    def grouped(self, parent, section: str, groups: GroupSpec, columns: int = 2,
                skip: tuple[str, ...] = (), more_title: str = "More", form: Form | None = None) -> Iterator[None]:
        """Lay out every field of a section in titled groups; yields after each group.

        Fields that no group names land in a "More" group, nested dataclasses get a group of their own and
        lists of dataclasses a ListEditor, so fields added to the preset later appear without touching the tab.
        `form` (default: the preset's) and section "" lay out a whole tool spec the same way.
        """
        form = form or self.form
        cls = form.hint_of(section) if section else form.root
        at = f"{section}." if section else ""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls) if f.name not in skip]
        listed = {n for _, group_names in groups for n in group_names}
        plan = [(title, [n for n in group_names if n in names]) for title, group_names in groups]
        leftover = [n for n in names if n not in listed and (is_scalar(hints[n]) or scalar_list_item(hints[n]))]
        if leftover:
            plan.append((more_title, leftover))
        for name in names:
            if name not in listed and is_dataclass(hints[name]):
                sub_hints = typing.get_type_hints(hints[name])
                plan.append((form.meta_of(f"{at}{name}").get("label") or name.capitalize(),
                             [f"{name}.{sub.name}" for sub in fields(hints[name]) if is_scalar(sub_hints[sub.name])]))
        cols = Columns(parent, columns)
        for title, group_names in plan:
            if group_names:
                group = cols.group(title, len(group_names))
                for name in group_names:
                    form.field(group, f"{at}{name}")
                group.pad_bottom()
                yield
        row = 1
        for name in names:
            if name not in listed and item_type(hints[name]) is not None:
                meta = form.meta_of(f"{at}{name}")
                frame = Group(parent, meta.get("label") or name)
                frame.grid(row=row, column=0, columnspan=columns, sticky="ew", padx=6, pady=6)
                editor = ListEditor(frame, form, f"{at}{name}")
                editor.grid(row=1, column=0, columnspan=2, sticky="ew", padx=8, pady=(0, 8))
                self.editors.append(editor)
                row += 1
                yield


class ListRows:
    """What an editor of a preset list (`form`, `list_path`, `item_cls`, one entry of `rows` per item, `rebuild()`)
    does with its items: add one, remove one, rebuild after a preset load. `on_change()` (None: nothing) runs after
    each change, before the form hears of it."""

    on_change: Callable[[], None] | None = None

    def items(self) -> list:
        return read(self.form.preset, self.list_path)

    def sync(self) -> None:
        """After a preset load: rebuild only when the number of items changed (the form refreshes values)."""
        if len(self.rows) != len(self.items()):
            self.rebuild()

    def add(self) -> None:
        self.items().append(self.item_cls())
        self._changed()

    def remove(self, index: int) -> None:
        del self.items()[index]
        self._changed()

    def _changed(self) -> None:
        self.rebuild()
        if self.on_change:
            self.on_change()
        self.form.on_change(self.list_path)


class ListEditor(ListRows, ctk.CTkFrame):
    """Rows of compact widgets for a list of dataclass items, with Add and a remove button per row."""

    WIDTHS = {"prompt": 250, "negative_prompt": 190, "path": 420}

    def __init__(self, master, form: Form, list_path: str, on_change: Callable[[], None] | None = None,
                 add_text: str = "+ Add", **kw):
        super().__init__(master, fg_color="transparent", **kw)
        self.form, self.list_path, self.on_change = form, list_path, on_change
        self.item_cls = item_type(form.hint_of(list_path))
        self.names = [f.name for f in fields(self.item_cls)]
        self.rows: list[list] = []
        self.table = ctk.CTkFrame(self, fg_color="transparent")
        self.table.pack(fill="x")
        for col, name in enumerate(self.names):
            meta = form.meta_of(f"{list_path}.0.{name}")
            label = ctk.CTkLabel(self.table, text=meta.get("label") or name, text_color=MUTED, anchor="w")
            label.grid(row=0, column=col, sticky="w", padx=3)
            Tooltip(label, meta.get("help") or "")
        self.empty = ctk.CTkLabel(self.table, text="Nothing here yet.", text_color=MUTED)
        self.add_button = ctk.CTkButton(self, text=add_text, width=120, command=self.add)
        self.add_button.pack(anchor="w", pady=(6, 0), padx=3)
        self.rebuild()

    def rebuild(self) -> None:
        """Re-create the rows for the preset's list (after add, remove or loading another preset)."""
        for row in self.rows:
            for widget in row:
                widget.destroy()
            bury(row)
        self.rows = []
        self.form.unbind(self.list_path)
        for i in range(len(self.items())):
            row = []
            for col, name in enumerate(self.names):
                binding = self.form.bare(self.table, f"{self.list_path}.{i}.{name}", width=self.WIDTHS.get(name))
                binding.widget.grid(row=i + 1, column=col, sticky="w", padx=3, pady=3)
                row.append(binding.widget)
            remove = ctk.CTkButton(self.table, text="✕", width=30, fg_color="transparent", border_width=1,
                                   command=lambda i=i: self.remove(i))
            remove.grid(row=i + 1, column=len(self.names), padx=(6, 3), pady=3)
            Tooltip(remove, "Remove this row.")
            row.append(remove)
            self.rows.append(row)
        if self.rows:
            self.empty.grid_remove()
        else:
            self.empty.grid(row=1, column=0, columnspan=len(self.names), sticky="w", padx=3, pady=6)


