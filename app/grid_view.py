"""The comparison grid view: row and column labels, cells that fill in as they arrive, scrolling both ways."""
from __future__ import annotations

import tkinter as tk
from typing import Callable

import customtkinter as ctk

from app.run_widgets import AXIS_TEXT, CHART_BG, GRID
from app.sample_viewer import ImageViewer, ViewerItem, load_image, sample_details, shorten
from app.widgets import MUTED, bury

LABEL_WIDTH = 190
HEADER = 46
GAP = 6
SIZES = ("96", "128", "192", "256")
CHROME = 64  # px around the canvas: the title row above it, the scroll bar below


class GridView(ctk.CTkFrame):
    """A grid of images on a canvas: `layout(rows, columns)` draws the labels and empty cells, `set_cell()` fills
    one (its image fitted into `cell` px, the "Thumbnail size"); click a cell to open the viewer. The canvas
    scrolls both ways (wheel, Shift+wheel) so big grids stay usable. `on_layout()` runs after each layout (the
    grid's wanted height changed)."""

    def __init__(self, master, cell: int = 128, on_layout: Callable[[], None] = lambda: None, **kw):
        super().__init__(master, **kw)
        self.cell, self.on_layout = cell, on_layout
        self.viewer: ImageViewer | None = None
        self.row_labels: list[str] = []
        self.column_labels: list[str] = []
        self.paths: dict[tuple[int, int], str] = {}
        self.photos: dict[tuple[int, int], object] = {}
        head = ctk.CTkFrame(self, fg_color="transparent")
        head.grid(row=0, column=0, columnspan=2, sticky="ew", padx=10, pady=(6, 2))
        self.title = ctk.CTkLabel(head, text="Grid", font=ctk.CTkFont(size=14, weight="bold"))
        self.title.pack(side="left")
        self.size_menu = ctk.CTkOptionMenu(head, values=list(SIZES), width=80, command=self.set_cell_size)
        self.size_menu.set(str(cell))
        self.size_menu.pack(side="right")
        ctk.CTkLabel(head, text="Thumbnail size", text_color=MUTED).pack(side="right", padx=6)
        self.canvas = tk.Canvas(self, bg=CHART_BG, highlightthickness=0)
        self.canvas.grid(row=1, column=0, sticky="nsew", padx=(6, 0), pady=(0, 0))
        ybar = ctk.CTkScrollbar(self, orientation="vertical", command=self.canvas.yview)
        xbar = ctk.CTkScrollbar(self, orientation="horizontal", command=self.canvas.xview)
        ybar.grid(row=1, column=1, sticky="ns")
        xbar.grid(row=2, column=0, sticky="ew", padx=(6, 0), pady=(0, 6))
        self.canvas.configure(xscrollcommand=xbar.set, yscrollcommand=ybar.set)
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)
        for sequence, units, axis in (("<Button-4>", -3, "y"), ("<Button-5>", 3, "y"),
                                      ("<Shift-Button-4>", -3, "x"), ("<Shift-Button-5>", 3, "x")):
            self.canvas.bind(sequence, lambda _e, u=units, a=axis: self._scroll(a, u))
        self.canvas.bind("<MouseWheel>", lambda e: self._scroll("y", -3 if e.delta > 0 else 3))
        self.canvas.bind("<Shift-MouseWheel>", lambda e: self._scroll("x", -3 if e.delta > 0 else 3))
        self.canvas.bind("<Configure>", lambda _e: self._empty_text() if not self.row_labels else None)
        self._empty_text()

    def _scroll(self, axis: str, units: int) -> None:
        (self.canvas.yview_scroll if axis == "y" else self.canvas.xview_scroll)(units, "units")

    def _empty_text(self) -> None:
        self.canvas.delete("empty")
        self.canvas.create_text(max(200, self.canvas.winfo_width() // 2), 60, tags="empty", fill=MUTED,
                                text="Run a comparison: the grid fills in here, cell by cell.")

    # ---- geometry -----------------------------------------------------------------------------------

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x = LABEL_WIDTH + GAP + column * (self.cell + GAP)
        y = HEADER + GAP + row * (self.cell + GAP)
        return x, y, x + self.cell, y + self.cell

    def wanted_height(self) -> int:
        """The height in px that shows every row (the title row and scroll bar included)."""
        return self.cell_box(len(self.row_labels), 0)[1] + CHROME

    # ---- content ------------------------------------------------------------------------------------

    def clear(self) -> None:
        self.canvas.delete("all")
        bury(list(self.photos.values()))
        self.photos.clear()
        self.paths.clear()
        self.row_labels, self.column_labels = [], []
        self.title.configure(text="Grid")
        self.canvas.configure(scrollregion=(0, 0, 0, 0))
        self._empty_text()

    def layout(self, row_labels, column_labels) -> None:
        """Draw the labels and an empty box per cell (a GridStarted)."""
        paths = dict(self.paths) if (list(row_labels), list(column_labels)) == \
            (self.row_labels, self.column_labels) else {}
        self.clear()
        self.canvas.delete("empty")
        self.row_labels, self.column_labels = list(row_labels), list(column_labels)
        self.title.configure(text=f"Grid: {len(self.row_labels)} rows × {len(self.column_labels)} columns")
        c = self.canvas
        for col, label in enumerate(self.column_labels):
            x0, _, x1, _ = self.cell_box(0, col)
            c.create_text((x0 + x1) / 2, HEADER - 4, text=shorten(label, 60), anchor="s", fill=AXIS_TEXT,
                          width=self.cell - 4, justify="center", font=("TkDefaultFont", 9))
        for row, label in enumerate(self.row_labels):
            _, y0, _, y1 = self.cell_box(row, 0)
            c.create_text(LABEL_WIDTH - 6, (y0 + y1) / 2, text=shorten(label, 140), anchor="e", fill=AXIS_TEXT,
                          width=LABEL_WIDTH - 14, justify="right", font=("TkDefaultFont", 9))
            for col in range(len(self.column_labels)):
                x0, y0, x1, y1 = self.cell_box(row, col)
                c.create_rectangle(x0, y0, x1, y1, outline=GRID, tags=f"empty{row}_{col}")
                c.create_text((x0 + x1) / 2, (y0 + y1) / 2, text="…", fill=MUTED, tags=f"empty{row}_{col}")
        x1 = self.cell_box(0, len(self.column_labels))[0]
        y1 = self.cell_box(len(self.row_labels), 0)[1]
        c.configure(scrollregion=(0, 0, x1, y1))
        c.xview_moveto(0), c.yview_moveto(0)
        for (row, col), path in paths.items():
            self.set_cell(row, col, path)
        self.on_layout()

    def set_cell(self, row: int, column: int, path: str) -> None:
        """Fill a cell with its image (a GridCell)."""
        if not (0 <= row < len(self.row_labels) and 0 <= column < len(self.column_labels)):
            return
        from PIL import ImageTk
        self.paths[(row, column)] = path
        tag = f"cell{row}_{column}"
        self.canvas.delete(tag)
        im = load_image(path, self.cell, self.cell)
        if im is None:
            x0, y0, x1, y1 = self.cell_box(row, column)
            self.canvas.create_text((x0 + x1) / 2, (y0 + y1) / 2, text="(unreadable)", fill=MUTED, tags=tag)
            return
        photo = ImageTk.PhotoImage(im, master=self.canvas)
        if (row, column) in self.photos:
            bury(self.photos[(row, column)])
        self.photos[(row, column)] = photo
        self.canvas.delete(f"empty{row}_{column}")
        x0, y0, x1, y1 = self.cell_box(row, column)
        item = self.canvas.create_image((x0 + x1) / 2, (y0 + y1) / 2, image=photo, tags=tag)
        self.canvas.tag_bind(item, "<Button-1>", lambda _e, r=row, col=column: self.open_cell(r, col))
        self.canvas.tag_bind(item, "<Enter>", lambda _e: self.canvas.configure(cursor="hand2"))
        self.canvas.tag_bind(item, "<Leave>", lambda _e: self.canvas.configure(cursor=""))

    def set_cell_size(self, size: int | str) -> None:
        """The "Thumbnail size": each image fitted into `size` px (enlarged too: see sample_viewer.scaled)."""
        self.cell = int(size)
        self.size_menu.set(str(self.cell))
        if self.row_labels:
            self.layout(self.row_labels, self.column_labels)

    def viewer_items(self) -> list[ViewerItem]:
        """The filled cells for the viewer: the row's label as heading; a sample's seed, step and epoch from its
        file name, else the column's label."""
        return [ViewerItem(path, row, column, self.row_labels[row], sample_details(path) or
                           self.column_labels[column]) for (row, column), path in sorted(self.paths.items())]

    def open_cell(self, row: int, column: int) -> ImageViewer | None:
        """Open the viewer (one for the grid) on a filled cell; None for an empty one."""
        item = next((i for i in self.viewer_items() if (i.row, i.column) == (row, column)), None)
        if item is not None:
            self.viewer = ImageViewer.reuse(self.viewer, self, self.viewer_items, item)
            return self.viewer
        return None
