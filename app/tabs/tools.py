"""The tools tab: build a training set with a model (generate-data), watch the images arrive, add it as a concept."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import customtkinter as ctk

from app.tabs.tool_base import ToolTab
from app.widgets import MUTED, Group, RootImage, Tooltip, bury, load_thumbnail, show_image_window
from trainer import events as ev
from trainer.config import ConceptConfig
from trainer.specs import GenerateDataSpec

GROUPS = [
    ("Model and output", ["base_model", "base_config", "output_dir"]),
    ("Prompts", ["prompts", "wildcard_dir", "negative_prompt", "images_per_prompt", "total_images"]),
    ("Sampling", ["width", "height", "steps", "cfg_scale", "sampler", "seed", "batch_size", "device", "dtype"]),
    ("Captions", ["caption_template", "caption_strip"]),
]
STRIP = 10       # newest images shown
THUMB = 112
STRIP_HEIGHT, STRIP_EMPTY = THUMB + 124, 80  # the strip's pane with images, and before any
STRIP_MS = 40    # the strip redraws at most this often (a resumed run reports hundreds of images at once)


def same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return a == b


class ToolsTab(ToolTab):
    title = "tools"
    spec_cls = GenerateDataSpec
    what = "generate-data"
    tool_name = "Data generation"
    start_text = "Generate"
    prefills = {"base_model": lambda preset: preset.model.base_model}
    start_tip = ("Generate the images with the model as set here (a copy: edits made now apply to the next run). "
                 "Running again into the same folder resumes.")

    def __init__(self, window, frame):
        super().__init__(window, frame)
        self.newest: list[tuple[str, str]] = []  # (image, caption), newest first
        self.cards: list[tuple[ctk.CTkLabel, ctk.CTkLabel]] = []
        self._thumbs: OrderedDict[str, RootImage | None] = OrderedDict()
        self._strip_after: str | None = None
        self._strip_shown = False

    # ---- building ---------------------------------------------------------------------------------

    def steps(self):
        f = self.frame
        f.grid_columnconfigure(0, weight=1)
        f.grid_rowconfigure(1, weight=1)
        self.build_toolbar()
        area = self.build_split(form_height=480)
        ctk.CTkLabel(area, text="Build a training set with a model: every prompt template is expanded ({a|b} "
                                "options, __name__ wildcards), each image is drawn and written with its caption "
                                "as image.png + image.txt.", text_color=MUTED, anchor="w", justify="left",
                     wraplength=1100).grid(row=0, column=0, columnspan=2, sticky="w", padx=8, pady=(2, 0))
        holder = ctk.CTkFrame(area, fg_color="transparent")
        holder.grid(row=1, column=0, columnspan=2, sticky="ew")
        area.grid_columnconfigure(0, weight=1)
        yield from self.grouped(holder, "", GROUPS, form=self.spec_form)  # a field no group names lands in More
        self.spec_form.widget_for("prompts").configure(height=110)
        self._build_strip()
        self.prefill()
        self.validate_now()
        yield

    def _build_strip(self) -> None:
        strip = Group(self.paned, "Newest images")
        self.add_lower(strip, minsize=60, stretch="never", height=STRIP_EMPTY)
        strip.grid_columnconfigure(0, weight=1)
        self.add_button = ctk.CTkButton(strip, text="Add as concept", width=130, command=self.add_as_concept)
        self.add_button.grid(row=0, column=1, sticky="e", padx=10, pady=(8, 2))
        self.add_button.grid_remove()
        Tooltip(self.add_button, "Add the output folder to the preset as a concept (captions from the .txt files).")
        self.strip_body = ctk.CTkScrollableFrame(strip, orientation="horizontal", height=THUMB + 48,
                                                 fg_color="transparent")
        self.strip_empty = ctk.CTkLabel(strip, text="The images appear here as they are generated; click one to "
                                        "see it full size.", text_color=MUTED, anchor="w")
        self.strip_empty.grid(row=1, column=0, columnspan=2, sticky="w", padx=12, pady=(0, 10))

    # ---- running ------------------------------------------------------------------------------------

    def make_session(self, spec):
        from trainer.session import generate_data_session
        return generate_data_session(spec, process=True)  # torch and the model load in a child process

    def path_problems(self, spec: GenerateDataSpec) -> list[str]:
        problems = []
        if not spec.base_model.strip():
            problems.append("base_model: choose the model that draws the images")
        elif not Path(spec.base_model).expanduser().exists():
            problems.append(f"base_model: {spec.base_model} does not exist")
        if spec.base_config and not Path(spec.base_config).expanduser().is_dir():
            problems.append(f"base_config: {spec.base_config} is not a folder")
        if Path(spec.output_dir).expanduser().is_file():
            problems.append(f"output_dir: {spec.output_dir} is a file, not a folder")
        return problems

    def on_start(self) -> None:
        self.newest.clear()
        self.add_button.grid_remove()
        self.render_strip()

    def on_event(self, event) -> None:
        if isinstance(event, ev.ImageGenerated):
            self.show_count(event.done, event.total)
            self.newest.insert(0, (event.path, event.caption))
            del self.newest[STRIP:]
            if self._strip_after is None:
                self._strip_after = self.frame.after(STRIP_MS, self.render_strip)

    def on_finish(self, event: ev.RunFinished) -> None:
        self.render_strip()
        if event.outcome == "completed" and event.output_path:
            self.add_button.configure(state="normal", text="Add as concept")
            self.add_button.grid()

    def closing(self) -> None:
        super().closing()
        if self._strip_after is not None:
            self.frame.after_cancel(self._strip_after)
            self._strip_after = None

    # ---- the strip of newest images -----------------------------------------------------------------

    def render_strip(self) -> None:
        self._strip_after = None
        while len(self.cards) < len(self.newest):
            image_label = ctk.CTkLabel(self.strip_body, text="", width=THUMB, height=THUMB, cursor="hand2")
            caption = ctk.CTkLabel(self.strip_body, text="", wraplength=THUMB + 12, justify="center",
                                   font=ctk.CTkFont(size=11), text_color="#c8c8c8", height=36)
            k = len(self.cards)
            image_label.bind("<Button-1>", lambda _e, k=k: self.open_image(k))
            self.cards.append((image_label, caption))
        for k, (image_label, caption) in enumerate(self.cards):
            if k >= len(self.newest):
                image_label.grid_remove(), caption.grid_remove()
                continue
            path, text = self.newest[k]
            image = self._thumb(path)
            image_label.configure(image=image, text="" if image else "(unreadable)")
            caption.configure(text=text if len(text) <= 60 else text[:57] + "…")
            image_label.grid(row=0, column=k, padx=6, pady=(6, 2))
            caption.grid(row=1, column=k, padx=6, pady=(0, 4), sticky="n")
        if bool(self.newest) != self._strip_shown:  # room for the strip only with images in it
            self._strip_shown = bool(self.newest)
            if self.newest:
                self.strip_empty.grid_remove()
                self.strip_body.grid(row=1, column=0, columnspan=2, sticky="ew", padx=6, pady=(0, 6))
            else:
                self.strip_body.grid_remove()
                self.strip_empty.grid()
            self.fit_panes(lower=STRIP_HEIGHT if self.newest else STRIP_EMPTY)

    def _thumb(self, path: str) -> RootImage | None:
        if path not in self._thumbs:
            self._thumbs[path] = load_thumbnail(path, THUMB, self.frame)
            while len(self._thumbs) > 4 * STRIP:
                old_path, old = self._thumbs.popitem(last=False)
                if any(p == old_path for p, _ in self.newest):
                    self._thumbs[old_path] = old
                    break
                bury(old)
        return self._thumbs[path]

    def open_image(self, k: int):
        if k >= len(self.newest):
            return None
        path, caption = self.newest[k]
        return show_image_window(self.frame, path, Path(path).name, f"{caption}\n{path}")

    # ---- add as concept -----------------------------------------------------------------------------

    def add_as_concept(self) -> bool:
        """Add the last completed run's folder to the preset as a concept (the concepts tab shows it)."""
        event = self.last_finished
        if event is None or event.outcome != "completed" or not event.output_path:
            return False
        folder = event.output_path
        concepts_tab = self.window.tabs["concepts"]
        if any(same_folder(c.path, folder) for c in self.window.preset.concepts):
            self.show_message(f"{folder} is already a concept of this preset.", "info")
            return False
        name = Path(folder).name or "generated"
        concepts_tab.add_concept(ConceptConfig(name=name, path=folder, caption_source="txt"))
        self.add_button.configure(state="disabled", text="Added")
        self.show_message(f"Added concept “{name}” ({folder}) to the preset: see the concepts tab, and save the "
                          "preset to keep it.", "success")
        return True
