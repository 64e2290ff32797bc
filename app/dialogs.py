"""The questions the window asks the user (file dialogs, confirmations); tests pass a stub with the same methods."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path

PRESET_TYPES = [("SeaChange presets", "*.json"), ("All files", "*")]
SPEC_TYPES = [("SeaChange tool specs", "*.json"), ("All files", "*")]


class Dialogs:
    """Every question the window asks the user. Tests pass their own object with the same methods."""

    def __init__(self, parent: tk.Misc):
        self.parent = parent

    def confirm(self, title: str, message: str) -> bool:
        from tkinter import messagebox
        return bool(messagebox.askyesno(title, message, parent=self.parent))

    def ask_open_preset(self) -> str | None:
        from tkinter import filedialog
        return filedialog.askopenfilename(parent=self.parent, title="Load preset", filetypes=PRESET_TYPES) or None

    def ask_save_preset(self) -> str | None:
        from tkinter import filedialog
        return filedialog.asksaveasfilename(parent=self.parent, title="Save preset as", defaultextension=".json",
                                            filetypes=PRESET_TYPES) or None

    def browse(self, kind: str, name: str, current: str) -> str | None:
        """A path picker's Browse…: a folder, a file, or (kind "path") a model file or diffusers folder."""
        from tkinter import filedialog
        start = Path(current).expanduser() if current else Path.cwd()
        folder = str(start if start.is_dir() else start.parent if start.parent.is_dir() else Path.cwd())
        if kind == "dir":
            return filedialog.askdirectory(parent=self.parent, initialdir=folder, mustexist=False) or None
        if name == "output_png":
            return filedialog.asksaveasfilename(parent=self.parent, initialdir=folder, title="Export the grid to",
                                                defaultextension=".png", filetypes=[("PNG", "*.png")]) or None
        if name.startswith("output"):
            return filedialog.asksaveasfilename(parent=self.parent, initialdir=folder, title="Write the model to",
                                                filetypes=[("Single file", "*.safetensors"), ("All", "*")]) or None
        types = [("Models", "*.safetensors *.ckpt model_index.json"), ("All files", "*")] if kind == "path" \
            else [("All files", "*")]
        chosen = filedialog.askopenfilename(parent=self.parent, initialdir=folder, filetypes=types,
                                            title="Choose a .safetensors or .ckpt file, or the model_index.json "
                                                  "of a diffusers folder" if kind == "path" else "Choose a file")
        if chosen and Path(chosen).name == "model_index.json":
            return str(Path(chosen).parent)
        return chosen or None

    def ask_open_spec(self, what: str) -> str | None:
        """A tool spec file to load; `what` names the tool ("generate-data", "compare")."""
        from tkinter import filedialog
        return filedialog.askopenfilename(parent=self.parent, title=f"Load {what} spec", filetypes=SPEC_TYPES) \
            or None

    def ask_save_spec(self, what: str) -> str | None:
        from tkinter import filedialog
        return filedialog.asksaveasfilename(parent=self.parent, title=f"Save {what} spec as",
                                            defaultextension=".json", filetypes=SPEC_TYPES) or None
