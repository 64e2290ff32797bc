"""The caption editor: a concept's images one by one with their .txt caption to edit and save, and find/replace
of a word across all of the concept's captions."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path
from typing import Callable

import customtkinter as ctk

from app.widgets import ERROR, GROUP_COLOUR, MUTED, SUCCESS, WARNING, Group, SwitchField, Tooltip, bury, \
    close_on_escape, load_thumbnail
from trainer.config import ConceptConfig
from trainer.data.captions import TXT_SOURCES, caption_file_for, find_replace_captions, read_caption_file, save_caption
from trainer.errors import InputError

PREVIEW = 420
LIST_BG, LIST_FG, LIST_SELECT = "#2b2b2b", "#dcdcdc", "#1f6aa5"
MARKS = {"ok": ("✓", LIST_FG), "none": ("○", WARNING), "problem": ("⚠", ERROR)}  # caption state -> list mark
LEGEND = "✓ has a caption   ○ none yet   ⚠ cannot be read"


def caption_state(found) -> str:
    """What a caption file (trainer.data.captions.read_caption_file) holds for the list's mark: "ok" (a caption),
    "none" (no file, or an empty one) or "problem" (it cannot be read or decoded)."""
    return "problem" if found.problem else "ok" if found.lines else "none"


def few_files(pairs: list[tuple[Path, str]], limit: int = 3) -> str:
    """'a.txt (reason); b.txt (reason)' for the first few (file, reason) pairs, '…' when there are more."""
    text = "; ".join(f"{path.name} ({reason})" for path, reason in pairs[:limit])
    return text + ("; …" if len(pairs) > limit else "")


class CaptionEditor(ctk.CTkToplevel):
    """One concept's images: a list of files, the selected image with its caption (Save, or switch image: an
    edited caption is saved first), and Find / Replace in all captions. `on_changed()` runs after the editor
    wrote files and closes (the concepts tab rescans)."""

    def __init__(self, window, concept: ConceptConfig, on_changed: Callable[[], None] | None = None):
        super().__init__(window)
        self.window, self.on_changed = window, on_changed
        self.name, self.folder = concept.name, Path(concept.path).expanduser()
        self.images = self._list_images(concept)
        self.index: int | None = None
        self.shown_text = ""
        self.wrote = False
        self._image = None
        self.title(f"Captions — {concept.name or self.folder.name}")
        self.geometry(f"{min(1040, self.winfo_screenwidth() - 60)}x{min(700, self.winfo_screenheight() - 80)}")
        self.grid_columnconfigure(1, weight=1)
        self.grid_rowconfigure(1, weight=1)
        head = f"{len(self.images)} images in {self.folder}"
        if concept.caption_source not in TXT_SOURCES:
            head += (f".  This concept takes its captions from “{concept.caption_source}”: the .txt files edited "
                     "here are used when its caption source is txt.")
        ctk.CTkLabel(self, text=head, anchor="w", justify="left", wraplength=980,
                     text_color=WARNING if concept.caption_source not in TXT_SOURCES else MUTED).grid(
            row=0, column=0, columnspan=2, sticky="w", padx=12, pady=(10, 4))
        self._build_list()
        self._build_editor()
        self._build_replace()
        close_on_escape(self, self.close)
        self.bind("<Control-s>", lambda _e: self.save())
        if self.images:
            self.select(0)
        self.after(150, self.lift)

    @staticmethod
    def _list_images(concept: ConceptConfig) -> list[Path]:
        from trainer.data.images import list_image_files  # the engine's own listing (no torch)
        from trainer.data.masks import separate_mask_files  # mask files are no images to caption
        folder = Path(concept.path).expanduser()
        try:
            listed = list_image_files(folder, concept.include_subdirectories) if folder.is_dir() else []
        except OSError:
            return []
        return separate_mask_files(listed, concept)[0]

    # ---- layout -------------------------------------------------------------------------------------

    def _build_list(self) -> None:
        box = ctk.CTkFrame(self, width=260)
        box.grid(row=1, column=0, sticky="ns", padx=(10, 4), pady=4)
        box.grid_rowconfigure(0, weight=1)
        font = ctk.CTkFont().create_scaled_tuple(ctk.ScalingTracker.get_widget_scaling(self))  # the app's font
        self.listbox = tk.Listbox(box, width=30, activestyle="none", exportselection=False, bg=LIST_BG,
                                  fg=LIST_FG, selectbackground=LIST_SELECT, highlightthickness=0, borderwidth=0,
                                  font=font)
        scrollbar = ctk.CTkScrollbar(box, command=self.listbox.yview)
        self.listbox.configure(yscrollcommand=scrollbar.set)
        self.listbox.grid(row=0, column=0, sticky="ns", padx=(6, 0), pady=(6, 0))
        scrollbar.grid(row=0, column=1, sticky="ns", pady=(6, 0))
        ctk.CTkLabel(box, text=LEGEND, text_color=MUTED, font=ctk.CTkFont(size=11), anchor="w").grid(
            row=1, column=0, columnspan=2, sticky="w", padx=8, pady=(2, 4))
        for k, image in enumerate(self.images):
            self.listbox.insert("end", "")
            self.mark(k, caption_state(read_caption_file(caption_file_for(image))))
        self.listbox.bind("<<ListboxSelect>>", self._list_clicked)

    def mark(self, k: int, state: str) -> None:
        """Show image k in the list with the mark of its caption state (caption_state)."""
        symbol, colour = MARKS[state]
        selected = k in self.listbox.curselection()
        self.listbox.delete(k)
        self.listbox.insert(k, f"{symbol}  {self.images[k].relative_to(self.folder)}")
        self.listbox.itemconfigure(k, fg=colour, selectforeground=colour if state != "ok" else "white")
        if selected:
            self.listbox.selection_set(k)

    def _build_editor(self) -> None:
        right = ctk.CTkFrame(self, fg_color="transparent")
        right.grid(row=1, column=1, sticky="nsew", padx=(4, 10), pady=4)
        right.grid_columnconfigure(0, weight=1)
        right.grid_rowconfigure(0, weight=1)
        self.preview = ctk.CTkLabel(right, text="No images in this folder." if not self.images else "",
                                    fg_color=GROUP_COLOUR, corner_radius=6, height=PREVIEW)
        self.preview.grid(row=0, column=0, sticky="nsew")
        self.file_label = ctk.CTkLabel(right, text="", anchor="w", text_color=MUTED)
        self.file_label.grid(row=1, column=0, sticky="ew", pady=(6, 2))
        self.caption = ctk.CTkTextbox(right, height=90, wrap="word", border_width=2)
        self.caption.grid(row=2, column=0, sticky="ew")
        self.caption.bind("<KeyRelease>", lambda _e: self._show_state())
        buttons = ctk.CTkFrame(right, fg_color="transparent")
        buttons.grid(row=3, column=0, sticky="ew", pady=(6, 0))
        buttons.grid_columnconfigure(3, weight=1)
        self.prev_button = ctk.CTkButton(buttons, text="◀ Previous", width=100, command=self.previous)
        self.next_button = ctk.CTkButton(buttons, text="Next ▶", width=100, command=self.next)
        self.save_button = ctk.CTkButton(buttons, text="Save", width=90, command=self.save)
        self.prev_button.grid(row=0, column=0, padx=(0, 6))
        self.next_button.grid(row=0, column=1, padx=(0, 6))
        self.save_button.grid(row=0, column=2, padx=(0, 10))
        Tooltip(self.save_button, "Write the caption to the image's .txt file (Ctrl+S). Switching to another "
                                  "image saves an edited caption too.")
        self.state_label = ctk.CTkLabel(buttons, text="", anchor="w", justify="left", wraplength=560)
        self.state_label.grid(row=1, column=0, columnspan=4, sticky="w", pady=(4, 0))  # a row of its own: long
        # reasons (an undecodable caption, a save that changed the encoding) wrap instead of running off

    def _build_replace(self) -> None:
        group = Group(self, "Find and replace in all captions")
        group.grid(row=2, column=0, columnspan=2, sticky="ew", padx=10, pady=(6, 10))
        row = ctk.CTkFrame(group, fg_color="transparent")
        row.grid(row=1, column=0, columnspan=2, sticky="ew", padx=12, pady=(0, 10))
        ctk.CTkLabel(row, text="Find").grid(row=0, column=0, padx=(0, 6))
        self.find_entry = ctk.CTkEntry(row, width=200, placeholder_text="a word or phrase")
        self.find_entry.grid(row=0, column=1, padx=(0, 12))
        ctk.CTkLabel(row, text="Replace with").grid(row=0, column=2, padx=(0, 6))
        self.replace_entry = ctk.CTkEntry(row, width=200, placeholder_text="empty removes it")
        self.replace_entry.grid(row=0, column=3, padx=(0, 12))
        self.whole_word = SwitchField(row)
        self.whole_word.show(True)
        self.whole_word.grid(row=0, column=4)
        whole = ctk.CTkLabel(row, text="Whole words")
        whole.grid(row=0, column=5, padx=(0, 12))
        Tooltip(whole, "On: 'cat' does not match inside 'category'. Case is ignored either way.")
        self.replace_button = ctk.CTkButton(row, text="Replace in all", width=120, command=self.replace_all)
        self.replace_button.grid(row=0, column=6, padx=(0, 12))
        self.replace_result = ctk.CTkLabel(row, text="", anchor="w")
        self.replace_result.grid(row=0, column=7, sticky="w")
        self.replace_details = ctk.CTkLabel(row, text="", anchor="w", justify="left", wraplength=900,
                                            text_color=WARNING)  # files left alone or saved as UTF-8
        self.replace_details.grid(row=1, column=0, columnspan=8, sticky="w", pady=(6, 0))
        self.replace_details.grid_remove()

    # ---- browsing and saving ------------------------------------------------------------------------

    def text(self) -> str:
        return self.caption.get("1.0", "end-1c")

    def set_text(self, text: str) -> None:
        """Put text in the caption box as if typed (tests use this)."""
        self.caption.delete("1.0", "end")
        self.caption.insert("1.0", text)
        self._show_state()

    @property
    def edited(self) -> bool:
        return self.index is not None and self.text().strip() != self.shown_text

    def select(self, index: int) -> None:
        """Show image `index` and its caption (an edited caption of the current image is saved first)."""
        if not self.images:
            return
        index = max(0, min(index, len(self.images) - 1))
        if self.edited:
            self.save()
        self.index = index
        image = self.images[index]
        old, self._image = self._image, load_thumbnail(image, PREVIEW, self)
        self.preview.configure(image=self._image, text="" if self._image else "(this image cannot be read)")
        bury(old)
        self.listbox.selection_clear(0, "end")
        self.listbox.selection_set(index)
        self.listbox.see(index)
        self.file_label.configure(text=f"{index + 1} / {len(self.images)}   {image.name}")
        found = read_caption_file(caption_file_for(image))  # the reader training uses: any common encoding
        self.mark(index, caption_state(found))
        self.shown_text = "\n".join(found.text.strip().splitlines())
        self.caption.configure(state="normal")
        self.caption.delete("1.0", "end")
        self.caption.insert("1.0", self.shown_text)
        self.prev_button.configure(state="normal" if index > 0 else "disabled")
        self.next_button.configure(state="normal" if index < len(self.images) - 1 else "disabled")
        if found.problem:  # shown, never rewritten: the user fixes the file (or deletes it) outside
            self.caption.configure(state="disabled")
            self._show_state(f"{caption_file_for(image).name}: {found.problem}", ERROR)
        else:
            self._show_state("" if found.exists else "no caption file yet", WARNING)

    def _list_clicked(self, _event=None) -> None:
        chosen = self.listbox.curselection()
        if chosen and chosen[0] != self.index:
            self.select(chosen[0])

    def next(self) -> None:
        if self.index is not None:
            self.select(self.index + 1)

    def previous(self) -> None:
        if self.index is not None:
            self.select(self.index - 1)

    def save(self) -> bool:
        """Write the caption box to the current image's .txt (atomic); False when it could not."""
        if self.index is None:
            return False
        image = self.images[self.index]
        try:  # in the file's own encoding, BOM and line ends; a file that cannot be decoded is refused
            txt, note = save_caption(image, self.text())
        except OSError as e:
            self._show_state(f"Could not save: {e.strerror or e}", ERROR)
            return False
        except InputError as e:
            self._show_state(f"Not saved: {e}", ERROR)
            return False
        self.shown_text = self.text().strip()
        self.wrote = True
        self.mark(self.index, "ok" if self.shown_text else "none")
        self._show_state(f"Saved {txt.name}" + (f" ({note})" if note else ""), WARNING if note else SUCCESS)
        return True

    def _show_state(self, text: str = "", colour: str = MUTED) -> None:
        if self.edited:
            text, colour = "● edited, not saved", WARNING
        self.state_label.configure(text=text, text_color=colour)

    # ---- find and replace ---------------------------------------------------------------------------

    def replace_all(self) -> int:
        """Replace the Find text in every caption of the concept (after a confirmation); returns the number of
        files changed and shows it."""
        find, replace = self.find_entry.get(), self.replace_entry.get()
        self._show_details("")
        if not find.strip():
            self.replace_result.configure(text="Type what to find first.", text_color=WARNING)
            return 0
        if self.edited:
            self.save()
        whole = self.whole_word.get_raw()
        changing = find_replace_captions(self.images, find, replace, whole_word=whole, dry_run=True)
        left_alone = f"Left alone (cannot be read): {few_files(changing.skipped)}." if changing.skipped else ""
        if not changing:
            self.replace_result.configure(text=f"No caption contains “{find.strip()}”.", text_color=MUTED)
            self._show_details(left_alone)
            return 0
        into = f"“{replace.strip()}”" if replace.strip() else "nothing (remove it)"
        if not self.window.dialogs.confirm("Replace in captions", f"Replace “{find.strip()}” with {into} in "
                                           f"{len(changing)} caption files of {self.folder}?"):
            return 0
        changed = find_replace_captions(self.images, find, replace, whole_word=whole)
        self.wrote = self.wrote or bool(changed)
        for k, image in enumerate(self.images):  # a caption may be empty now
            self.mark(k, caption_state(read_caption_file(caption_file_for(image))))
        notes = f"{few_files(changed.notes)}." if changed.notes else ""
        self.replace_result.configure(text=f"Changed {len(changed)} of {len(self.images)} caption files.",
                                      text_color=SUCCESS)
        self._show_details(" ".join(filter(None, (notes, left_alone))))
        if self.index is not None:  # show the current caption as it is now on disk
            self.shown_text = ""
            current, self.index = self.index, None
            self.select(current)
        return len(changed)

    def _show_details(self, text: str) -> None:
        """The line under Find / Replace naming caption files left alone or saved as UTF-8 (hidden if none)."""
        self.replace_details.configure(text=text)
        if text:
            self.replace_details.grid()
        else:
            self.replace_details.grid_remove()

    def close(self) -> None:
        """Close the editor; an edited caption is saved first."""
        if self.edited:
            self.save()
        wrote = self.wrote
        self.destroy()
        bury((self, self._image))
        if wrote and self.on_changed is not None:
            self.on_changed()
