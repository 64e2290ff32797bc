"""The concepts tab: the concept list (add, duplicate, remove, enable), an editor, the engine's statistics of the
selected concept (computed in a worker thread) and thumbnails with captions."""
from __future__ import annotations

import copy
import os
import typing
from dataclasses import fields
from pathlib import Path

import customtkinter as ctk

from app.form import hint_of, is_scalar, split_problem
from app.tabs.common import Tab
from app.tabs.concept_stats import StatsPanel, stats_key
from app.widgets import ERROR, MUTED, WARNING, Group, Tooltip, bury, load_thumbnail, reconfigure
from trainer.config import ConceptConfig
from trainer.data.captions import caption_lines

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}  # as trainer.data.images
THUMBS = 8
THUMB_SIZE = 120
STATS_DEBOUNCE_MS = 300
FOLDER_CHECK_MS = 1000  # while the tab is shown: has the selected concept's folder appeared or gone?
STATS_INPUTS = ("training.resolution", "training.aspect_bucketing", "training.max_token_length", "general.cache_dir",
                "general.demo_dir", "model.base_model")  # besides the concept (the tokenizer is the base model's)
LISTED = ("enabled",)  # concept fields the list shows (a switch per row), so the editor does not repeat them
# A concept's role other than train, as the list marks it: (tag, colour, what it means)
ROLE_TAGS = {"regularization": ("REG", "#7d5bbe", "Regularization: its images are mixed into every epoch at the "
                                "concept's rate, weighted by its loss weight (prior preservation)."),
             "validation": ("VAL", "#2e8a57", "Validation: never trained on; the loss on its images is measured "
                            "with fixed noise and drawn in the run tab's chart.")}
ROLE_FIELDS = {"repeats": "train", "regularization_rate": "regularization"}  # editor fields of one role only
MASK_FIELDS = ("mask_suffix", "unmasked_weight", "normalize_masked_area_loss")  # apply with masks on (data/masks.py)


def switches_of(cls) -> dict[str, str]:
    """field -> the on/off field it belongs to, for the fields named after a bool field of `cls`
    (random_flip_probability after random_flip, crop_jitter_strength after crop_jitter): they apply only while
    that switch is on."""
    hints = typing.get_type_hints(cls)
    switches = [f.name for f in fields(cls) if hints[f.name] is bool]
    return {f.name: switch for f in fields(cls) for switch in switches
            if hints[f.name] is not bool and f.name.startswith(switch + "_")}


def set_field_enabled(labelled, enabled: bool) -> None:
    """Grey out a labelled entry (label and text) and make it read-only, or bring it back."""
    theme = ctk.ThemeManager.theme
    labelled.widget.configure(state="normal" if enabled else "disabled",
                              text_color=theme["CTkEntry"]["text_color"] if enabled else MUTED)
    labelled.label.configure(text_color=theme["CTkLabel"]["text_color"] if enabled else MUTED)


def scan_folder(folder: str, mask_suffix: str = "") -> list[Path]:
    """The image files to show as thumbnails, sorted by name (one directory listing; the statistics come from
    the engine); with a mask_suffix (masks from files), the mask files (NAME + suffix + .png) are no images."""
    try:
        names = [e.name for e in os.scandir(Path(folder).expanduser()) if e.is_file() and e.name[:1] != "."]
    except OSError:
        return []
    images = sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                    and not (mask_suffix and n.lower().endswith(".png") and n[:-4].endswith(mask_suffix)))
    return [Path(folder).expanduser() / n for n in images]


def caption_of(image: Path, concept: ConceptConfig) -> tuple[str, str]:
    """The caption training would use, read as the engine reads it (trainer.data.captions: any common text encoding,
    the concept's missing_caption), and how to show it: ("text", "ok"); for several .txt lines the first (others
    are picked at random); ("(skipped: …)", "warning") for an image training leaves out; ("", "error") for an
    empty caption."""
    found = caption_lines(image, concept)
    if found.problem:
        return "(skipped: its caption file cannot be read)", "warning"
    if found.skip:
        return "(skipped: no caption)", "warning"
    lines = [line for line in found.lines if line]
    if not lines:
        return "", "error"
    return lines[0] + (f"  (+{len(lines) - 1} more)" if len(lines) > 1 else ""), "ok"


class ConceptsTab(Tab):
    title = "concepts"

    def __init__(self, window, frame):
        super().__init__(window, frame)
        self.selected: int | None = None
        self.rows: list[tuple[ctk.CTkFrame, object, ctk.CTkButton]] = []
        self.role_tags: list[ctk.CTkLabel] = []  # per row: the role's tag (hidden for role train)
        self.editor_bindings = []
        self._thumb_token = 0
        self._thumb_after: str | None = None
        self._stats_after: str | None = None
        self.thumb_images: list = []
        self.problem_reasons: dict[int, list[str]] = {}  # concept index -> its problems, for the list's tooltips
        self.built = False
        self.caption_editor = None
        self.caption_models = None  # the open "Caption with a model" view
        self._watch_after: str | None = None

    # ---- building ---------------------------------------------------------------------------------

    def steps(self):
        self.frame.grid_columnconfigure(1, weight=1)
        self.frame.grid_rowconfigure(0, weight=1)
        left = ctk.CTkFrame(self.frame, width=280)
        left.grid(row=0, column=0, sticky="ns", padx=(6, 4), pady=6)
        left.grid_propagate(False)
        left.grid_rowconfigure(1, weight=1)
        left.grid_columnconfigure(0, weight=1)
        ctk.CTkLabel(left, text="Concepts", font=ctk.CTkFont(size=14, weight="bold")).grid(
            row=0, column=0, sticky="w", padx=12, pady=(8, 2))
        self.list_frame = ctk.CTkScrollableFrame(left, fg_color="transparent")
        self.list_frame.grid(row=1, column=0, sticky="nsew", padx=4)
        self.list_frame.grid_columnconfigure(1, weight=1)
        buttons = ctk.CTkFrame(left, fg_color="transparent")
        buttons.grid(row=2, column=0, sticky="ew", padx=8, pady=8)
        self.add_button = ctk.CTkButton(buttons, text="Add", width=76, command=self.add)
        self.duplicate_button = ctk.CTkButton(buttons, text="Duplicate", width=86, command=self.duplicate)
        self.remove_button = ctk.CTkButton(buttons, text="Remove", width=76, command=self.remove)
        for i, button in enumerate((self.add_button, self.duplicate_button, self.remove_button)):
            button.grid(row=0, column=i, padx=3)
        Tooltip(self.duplicate_button, "Copy the selected concept (handy for a second folder with the same settings).")
        self.captions_button = ctk.CTkButton(buttons, text="Edit captions…", command=self.open_caption_editor)
        self.captions_button.grid(row=1, column=0, columnspan=3, sticky="ew", padx=3, pady=(6, 0))
        Tooltip(self.captions_button, "Browse the selected concept's images and edit their .txt captions; find "
                                      "and replace a word in all of them.")
        self.caption_models_button = ctk.CTkButton(buttons, text="Caption with a model…",
                                                   command=self.open_caption_models)
        self.caption_models_button.grid(row=2, column=0, columnspan=3, sticky="ew", padx=3, pady=(6, 0))
        Tooltip(self.caption_models_button, "Write captions for the selected concept's images with a captioning "
                                            "model (BLIP, Florence-2, Qwen2-VL) and/or a WD tagger: preview first, "
                                            "keep existing captions unless asked.")
        yield
        right = ctk.CTkScrollableFrame(self.frame, fg_color="transparent")
        right.grid(row=0, column=1, sticky="nsew", padx=(4, 6), pady=6)
        right.grid_columnconfigure(0, weight=1)
        self.placeholder = ctk.CTkLabel(right, text="Add a concept: a folder of images, each with a .txt caption "
                                        "beside it.", text_color=MUTED)
        self.editor = Group(right, "Concept")
        concept_hints = typing.get_type_hints(ConceptConfig)
        for f in fields(hint_of("concepts.0")):
            if is_scalar(concept_hints[f.name]) and f.name not in LISTED:
                self.editor_bindings.append((f.name, self.form.field(self.editor, f"concepts.0.{f.name}")))
        self.switch_of = switches_of(ConceptConfig)
        self.editor.pad_bottom()
        yield
        self.stats_panel = StatsPanel(right, on_rescan=self.rescan)
        self.stats = self.stats_panel.summary
        self.images = Group(right, "Images")
        self.images_note = ctk.CTkLabel(self.images, text="", text_color=MUTED, anchor="w")
        self.images_note.grid(row=1, column=0, columnspan=4, sticky="w", padx=12)
        self.thumb_cards = []
        for k in range(THUMBS):
            image_label = ctk.CTkLabel(self.images, text="", width=THUMB_SIZE, height=THUMB_SIZE)
            caption = ctk.CTkLabel(self.images, text="", wraplength=THUMB_SIZE + 40, font=ctk.CTkFont(size=11),
                                   justify="center")
            self.thumb_cards.append((image_label, caption))
        for col in range(4):
            self.images.grid_columnconfigure(col, weight=1, uniform="thumbs")
        self.stats_row, self.editor_row, self.images_row = 1, 2, 3  # statistics first: seen without scrolling
        self.built = True
        self.reload()
        self._watch_folder()
        yield

    # ---- list -------------------------------------------------------------------------------------

    @property
    def concepts(self) -> list[ConceptConfig]:
        return self.form.preset.concepts

    def rebuild_list(self) -> None:
        self.form.drop([binding for _, binding, _ in self.rows])
        for row, binding, button in self.rows:
            row.destroy()
        bury(self.rows)
        self.rows, self.role_tags = [], []
        for i, concept in enumerate(self.concepts):
            row = ctk.CTkFrame(self.list_frame, fg_color="transparent")
            row.grid(row=i, column=0, columnspan=2, sticky="ew", pady=1)
            row.grid_columnconfigure(1, weight=1)
            binding = self.form.bare(row, f"concepts.{i}.enabled")
            binding.widget.grid(row=0, column=0, padx=(4, 0))
            button = ctk.CTkButton(row, text=concept.name or "(unnamed)", anchor="w", fg_color="transparent",
                                   command=lambda i=i: self.select(i))
            button.grid(row=0, column=1, sticky="ew", padx=(0, 4))
            Tooltip(button, lambda i=i: "\n".join(f"⚠ {r}" for r in self.problem_reasons.get(i, [])))
            tag = ctk.CTkLabel(row, text="", width=34, height=20, corner_radius=4, text_color="white",
                               font=ctk.CTkFont(size=10, weight="bold"))
            Tooltip(tag, lambda i=i: ROLE_TAGS.get(self.concepts[i].role, ("", "", ""))[2])
            self.rows.append((row, binding, button))
            self.role_tags.append(tag)
            self.show_role(i)

    def show_role(self, index: int) -> None:
        """The row's role tag: REG or VAL in its colour, nothing for a concept that trains."""
        tag = self.role_tags[index]
        role = ROLE_TAGS.get(self.concepts[index].role)
        if role is None:
            tag.grid_remove()
            return
        tag.configure(text=role[0], fg_color=role[1])
        tag.grid(row=0, column=2, padx=(0, 6))

    def select(self, index: int | None) -> None:
        """Show concept `index` in the editor (None: no concept)."""
        if index is not None and not 0 <= index < len(self.concepts):
            index = None
        self.selected = index
        for i, (_, _, button) in enumerate(self.rows):
            button.configure(fg_color=ctk.ThemeManager.theme["CTkButton"]["fg_color"] if i == index
                             else "transparent")
        for name, binding in self.editor_bindings:
            self.form.retarget(binding, None if index is None else f"concepts.{index}.{name}")
        self.show_applicable_fields()
        if index is None:
            self.editor.grid_remove(), self.stats_panel.grid_remove(), self.images.grid_remove()
            self.placeholder.grid(row=0, column=0, sticky="w", padx=16, pady=16)
        else:
            self.placeholder.grid_remove()
            self.editor.grid(row=self.editor_row, column=0, sticky="ew", padx=6, pady=6)
            self.stats_panel.grid(row=self.stats_row, column=0, sticky="ew", padx=6, pady=6)
        self.duplicate_button.configure(state="normal" if index is not None else "disabled")
        self.remove_button.configure(state="normal" if index is not None else "disabled")
        self.captions_button.configure(state="normal" if index is not None else "disabled")
        self.caption_models_button.configure(state="normal" if index is not None else "disabled")
        self.refresh_images()
        self.refresh_stats()
        self.window.schedule_validation()

    def add(self) -> None:
        self.concepts.append(ConceptConfig(name=f"concept {len(self.concepts) + 1}"))
        self._list_changed(len(self.concepts) - 1)

    def duplicate(self) -> None:
        if self.selected is None:
            return
        clone = copy.deepcopy(self.concepts[self.selected])
        clone.name = f"{clone.name} copy"
        self.concepts.insert(self.selected + 1, clone)
        self._list_changed(self.selected + 1)

    def remove(self) -> None:
        if self.selected is None:
            return
        del self.concepts[self.selected]
        self._list_changed(min(self.selected, len(self.concepts) - 1) if self.concepts else None)

    def add_concept(self, concept: ConceptConfig) -> None:
        """Append a concept to the preset and select it (the tools tab adds generated folders this way)."""
        self.concepts.append(concept)
        if self.built:
            self._list_changed(len(self.concepts) - 1)
        else:  # the list is drawn from the preset when the tab is built
            self.form.on_change("concepts")

    def open_caption_editor(self):
        """The caption editor for the selected concept's images (one editor at a time); returns it."""
        from app.tabs.caption_editor import CaptionEditor
        if self.selected is None:
            return None
        if self.caption_editor is not None and self.caption_editor.winfo_exists():
            self.caption_editor.close()
        self.caption_editor = CaptionEditor(self.window, self.concepts[self.selected], on_changed=self.rescan)
        return self.caption_editor

    def open_caption_models(self):
        """The "Caption with a model" view of the selected concept (one at a time: one that runs stays, for
        another concept too); returns it."""
        from app.tabs.caption_models_view import CaptionModelsView
        view, concept = self._caption_models_open(), self.concepts[self.selected] if self.selected is not None else None
        if view is not None:
            if view.runner.running or view.concept is concept:
                view.lift()
                return view
            view.close_now()
        if concept is None:
            return None
        self.caption_models = CaptionModelsView(self.window, concept, self.form.preset, on_changed=self.rescan)
        return self.caption_models

    def _caption_models_open(self):
        view = self.caption_models
        return view if view is not None and view.winfo_exists() else None

    def jobs_changed(self) -> None:
        if self._caption_models_open():
            self.caption_models.jobs_changed()

    def closing(self) -> None:
        """The window closes: an open caption editor saves an edited caption first; the folder check stops."""
        if self._watch_after is not None:
            self.frame.after_cancel(self._watch_after)
            self._watch_after = None
        if self.caption_editor is not None and self.caption_editor.winfo_exists():
            self.caption_editor.on_changed = None
            self.caption_editor.close()
        if self._caption_models_open():
            self.caption_models.on_changed = None
            self.caption_models.close_now()

    def _list_changed(self, select: int | None) -> None:
        self.rebuild_list()
        self.select(select)
        self.form.on_change("concepts")

    def reload(self) -> None:
        self.rebuild_list()
        self.select(0 if self.concepts else None)

    def field_changed(self, path: str) -> None:
        if path in STATS_INPUTS:
            self._schedule_stats()
        parts = path.split(".")
        if len(parts) != 3 or parts[0] != "concepts":
            return
        index, name = int(parts[1]), parts[2]
        if name == "name" and index < len(self.rows):
            self.rows[index][2].configure(text=self.concepts[index].name or "(unnamed)")
        if name == "role" and index < len(self.rows):
            self.show_role(index)
        if index == self.selected and (name in ("caption_source", "role", "masks") or name in self.switch_of.values()):
            self.show_applicable_fields()
        if index == self.selected and name in ("path", "caption_source", "caption", "missing_caption", "masks",
                                               "mask_suffix"):
            if self._thumb_after is not None:
                self.frame.after_cancel(self._thumb_after)
            self._thumb_after = self.frame.after(400, self.refresh_images)
        if index == self.selected:
            self._schedule_stats()
        if self._caption_models_open() and name in ("name", "path", "include_subdirectories", "caption_source",
                                                    "masks", "mask_suffix"):
            self.caption_models.concept_edited()

    def show_applicable_fields(self) -> None:
        """'Without a caption' applies to .txt captions only: shown for caption source txt. Repeats are a training
        concept's, the regularization rate a regularization concept's (ROLE_FIELDS). The mask settings are shown
        with masks on, the suffix for masks from files only. A strength or probability is editable only while its
        switch (random flip, crop jitter, …) is on."""
        concept = self.concepts[self.selected] if self.selected is not None else None
        for name, binding in self.editor_bindings:
            if name == "missing_caption":
                binding.labelled.set_visible(concept is not None and concept.caption_source == "txt")
            elif name in ROLE_FIELDS:
                binding.labelled.set_visible(concept is not None and concept.role == ROLE_FIELDS[name])
            elif name in MASK_FIELDS:
                masks = concept.masks if concept is not None else "off"
                binding.labelled.set_visible(masks == "file" if name == "mask_suffix" else masks != "off")
            elif name in self.switch_of:
                set_field_enabled(binding.labelled, concept is not None and getattr(concept, self.switch_of[name]))

    def mark(self, problems: list[str]) -> None:
        """Concepts with a problem show their name in red in the list, the reasons in its tooltip (the editor's
        fields are marked by the form). A concept folder that appeared or vanished since the statistics were
        taken is scanned again (the window validates after edits, on focus and on Rescan)."""
        self.problem_reasons = {}
        for path, reason in map(split_problem, problems):
            parts = path.split(".")
            if len(parts) > 1 and parts[0] == "concepts" and parts[1].isdigit():
                self.problem_reasons.setdefault(int(parts[1]), []).append(reason)
        for i, (_, _, button) in enumerate(self.rows):  # only a name whose colour changes is redrawn
            reconfigure(button, text_color=ERROR if i in self.problem_reasons
                        else ctk.ThemeManager.theme["CTkButton"]["text_color"])
        if self.window.tabview.get() == self.title:  # another tab's: it rescans when shown (_watch_folder);
            self.rescan_if_folder_changed()  # thumbnails laid out unseen would hold up the window (a run's end)

    def rescan_if_folder_changed(self) -> None:
        """Scan again when the selected concept's folder appeared (the demo builds its folder at Start; the
        user made it) or vanished since its statistics were taken."""
        if self.built and self.selected is not None and self.stats_panel.folder_existed is not None:
            path = self.concepts[self.selected].path
            if (bool(path) and Path(path).expanduser().is_dir()) != self.stats_panel.folder_existed:
                self.rescan()

    def _watch_folder(self) -> None:
        """Every FOLDER_CHECK_MS while the tab is shown: one stat of the selected folder, no listing."""
        self._watch_after = self.frame.after(FOLDER_CHECK_MS, self._watch_folder)
        if self.frame.winfo_ismapped():
            self.rescan_if_folder_changed()

    # ---- statistics -------------------------------------------------------------------------------

    def _schedule_stats(self) -> None:
        """After an edit: rescan once the typing pauses, and only when something the statistics read changed."""
        if self._stats_after is not None:
            self.frame.after_cancel(self._stats_after)
        self._stats_after = self.frame.after(STATS_DEBOUNCE_MS, self._stats_if_changed)

    def _stats_if_changed(self) -> None:
        self._stats_after = None
        if self.selected is not None and stats_key(self.form.preset, self.selected) != self.stats_panel.key:
            self.refresh_stats()

    def rescan(self) -> None:
        """The Rescan button: files may have changed on disk (a folder made, so Start may be possible now)."""
        self.refresh_images()
        self.refresh_stats()
        self.window.schedule_validation()

    def refresh_stats(self) -> None:
        """Compute the selected concept's statistics in a worker thread (the panel shows them when they come)."""
        if self._stats_after is not None:
            self.frame.after_cancel(self._stats_after)
            self._stats_after = None
        if self.selected is None:
            self.stats_panel.forget()
        else:
            self.stats_panel.request(self.form.preset, self.selected)

    # ---- images -----------------------------------------------------------------------------------

    def refresh_images(self) -> None:
        """The first few thumbnails of the selected concept, with captions; they load one per tick."""
        self._thumb_after = None
        self._thumb_token += 1
        for image_label, caption in self.thumb_cards:
            image_label.grid_remove(), caption.grid_remove()
        if self.selected is None:
            return
        concept = self.concepts[self.selected]
        suffix = concept.mask_suffix if concept.masks == "file" else ""  # mask files are no images then
        images = scan_folder(concept.path, suffix) if concept.path else []
        if not images:
            self.images.grid_remove()
            return
        self.images.grid(row=self.images_row, column=0, sticky="ew", padx=6, pady=6)
        self.images_note.configure(text=f"The first {THUMBS} of {len(images)} image files."
                                   if len(images) > THUMBS else "")
        self.shown_images = images[:THUMBS]
        self._load_thumb(self._thumb_token, 0)

    def _load_thumb(self, token: int, k: int) -> None:
        if token != self._thumb_token or k >= len(self.shown_images) or self.selected is None:
            return
        path = self.shown_images[k]
        image_label, caption = self.thumb_cards[k]
        image = load_thumbnail(path, THUMB_SIZE, self.frame)
        if k < len(self.thumb_images):
            bury(self.thumb_images[k])
            self.thumb_images[k] = image
        else:
            self.thumb_images.append(image)
        image_label.configure(image=image, text="" if image else "(unreadable)")
        text, level = caption_of(path, self.concepts[self.selected])
        caption.configure(text=(text if len(text) <= 90 else text[:87] + "…") or "(no caption)",
                          text_color={"ok": "#c8c8c8", "warning": WARNING}.get(level, ERROR))
        row, col = divmod(k, 4)
        image_label.grid(row=2 + 2 * row, column=col, padx=6, pady=(8, 0))
        caption.grid(row=3 + 2 * row, column=col, padx=6, pady=(2, 4), sticky="n")
        self.frame.after(1, self._load_thumb, token, k + 1)
