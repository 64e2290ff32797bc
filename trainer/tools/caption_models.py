"""Caption models: find a captioner (BLIP, Florence-2, Qwen2-VL through transformers) or a WD tagger (onnxruntime)
in a folder or a Hugging Face repo (downloaded once into the Hugging Face cache), check it is of the chosen kind,
and run it on batches of PIL images. No UI here; torch, transformers and onnxruntime load only when a model does.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Callable

from trainer import events as ev
from trainer.errors import InputError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the Hugging Face hub spells repos
# config.json's model_type for each captioner, and the transformers class that runs it.
MODEL_TYPES = {"blip": "blip", "florence2": "florence2", "qwen2_vl": "qwen2_vl"}
MODEL_CLASSES = {"blip": "BlipForConditionalGeneration", "florence2": "Florence2ForConditionalGeneration",
                 "qwen2_vl": "Qwen2VLForConditionalGeneration"}
MIN_TRANSFORMERS = {"blip": "4.45", "florence2": "4.56", "qwen2_vl": "4.45"}
# What a download of a transformers model fetches: configs, safetensors weights, tokenizer and chat template files
# (never remote code, never the duplicate PyTorch/TF/Flax weights most repos also hold).
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
TAGGER_FILES = ("model.onnx", "selected_tags.csv")
FLORENCE_DEFAULT_TASK = "<DETAILED_CAPTION>"
QWEN_DEFAULT_PROMPT = ("Describe this image in one or two sentences, as a caption for training an image model. "
                       "Mention the subject, the setting and the style.")
VLM_MAX_PIXELS = 1024 * 1024  # larger images are scaled down first: Qwen2-VL spends a token per 28x28 pixels
# WD tag categories in selected_tags.csv (SmilingWolf's taggers): general, character, rating (never written).
GENERAL, CHARACTER, RATING = 0, 4, 9
# Emoticon tags whose underscores are part of the face, not word breaks (the list SmilingWolf's wd-tagger space,
# app.py, keeps as they are when it writes tags with spaces).
KAOMOJIS = frozenset(("0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                      ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"))


# ---- finding and checking model folders (no torch) ---------------------------------------------------------

def captioner_problem(folder: Path, captioner: str, need_weights: bool = True) -> str | None:
    """Why `folder` is not a model for `captioner` (read from its config.json model_type), or None. A folder of
    Florence-2's original remote-code layout (microsoft/Florence-2-*) is named as such: transformers' own
    Florence2ForConditionalGeneration reads the florence-community conversion. need_weights: also require
    .safetensors weights."""
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{folder} has no config.json: it is not a transformers model folder"
    except (OSError, ValueError) as e:
        return f"cannot read {config}: {e}"
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type != MODEL_TYPES[captioner]:
        return (f"{folder} holds a {model_type!r} model, not a {captioner} one ({MODEL_CLASSES[captioner]} "
                f"reads model_type {MODEL_TYPES[captioner]!r}): choose the captioner that matches it, or another "
                "model")
    text_type = (data.get("text_config") or {}).get("model_type")
    if captioner == "florence2" and (text_type == "florence2_language" or "auto_map" in data):
        return (f"{folder} holds Florence-2 in its original remote-code layout (as microsoft/Florence-2-* ship "
                "it), which SeaChange does not run: use the converted florence-community/Florence-2-base or "
                "florence-community/Florence-2-large")
    if need_weights and not any(folder.glob("*.safetensors")):
        return f"{folder} has no .safetensors weights"
    return None


def tagger_problem(folder: Path) -> str | None:
    """Why `folder` is not a WD tagger (model.onnx beside selected_tags.csv with columns tag_id,name,category,
    count), or None."""
    missing = [name for name in TAGGER_FILES if not (folder / name).is_file()]
    if missing:
        return (f"{folder} has no {' or '.join(missing)}: a WD tagger folder holds model.onnx and "
                "selected_tags.csv (as SmilingWolf's taggers ship)")
    try:
        read_tag_table(folder / "selected_tags.csv")
    except ValueError as e:
        return str(e)
    return None


def read_tag_table(path: Path) -> list[tuple[str, int]]:
    """(name, category) of each row of a WD tagger's selected_tags.csv, in the order of the model's outputs.
    The file has a header row tag_id,name,category,count. Raises ValueError naming the file when it does not."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ValueError(f"{path} is not a WD tag table (expected the columns tag_id,name,category,count)")
    try:
        return [(row["name"], int(row["category"])) for row in rows]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: a category is not a whole number ({e})") from e


def model_folder(name: str, field: str, emit: Callable, problem: Callable[[Path, bool], str | None],
                 patterns: list[str], config_first: bool = False) -> Path:
    """The local folder of the model `name`: a folder as given, or a Hugging Face repo id found in the cache or
    downloaded into it (huggingface_hub's snapshot_download, which shows its own progress bars on stderr; a Log
    line says so first). problem(folder, complete) says why a folder is not the right kind of model (complete:
    or not a whole one, weights and all); with config_first, a repo's config.json alone is fetched and checked
    before the weights. Raises InputError naming `field`."""
    path = Path(name).expanduser()
    if path.is_dir():
        reason = problem(path, True)
        if reason:
            raise InputError(f"{field}: {reason}")
        return path
    if path.exists() or not REPO_ID.match(name):
        raise InputError(f"{field}: {name} is not a folder here, nor a Hugging Face repo id (owner/name)")
    from huggingface_hub import constants, snapshot_download
    try:
        cached = Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: download below
        cached = None
    if cached is not None:
        reason = problem(cached, False)
        if reason and (cached / "config.json").exists():  # the wrong kind of model, already here
            raise InputError(f"{field}: {name}: {reason}")
        if problem(cached, True) is None:
            return cached  # else only part of it is there (an interrupted download): the download completes it
    emit(ev.Log("info", f"Downloading {name} from Hugging Face into {constants.HF_HUB_CACHE} (first use only: "
                        "later runs use this copy)"))
    emit(ev.Status(f"Downloading {name}"))
    try:
        if config_first:  # the kind first: never fetch gigabytes of the wrong model
            reason = problem(Path(snapshot_download(name, allow_patterns=["config.json"])), False)
            if reason:
                raise InputError(f"{field}: {name}: {reason}")
        folder = Path(snapshot_download(name, allow_patterns=patterns))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated repo...: the user's to fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{field}: could not download {name} from Hugging Face ({first}); check the name and "
                         "the network, or give a local folder") from e
    reason = problem(folder, True)
    if reason:
        raise InputError(f"{field}: {name}: {reason}")
    return folder


# ---- captioners (transformers) ---------------------------------------------------------------------------

def _model_class(captioner: str):
    import transformers
    cls = getattr(transformers, MODEL_CLASSES[captioner], None)
    if cls is None:
        raise InputError(f"captioner: {captioner} needs {MODEL_CLASSES[captioner]}, in transformers "
                         f"{MIN_TRANSFORMERS[captioner]} or newer (installed: {transformers.__version__}); "
                         "pip install -U transformers")
    return cls


def _dtype_argument(dtype) -> dict:
    """from_pretrained's precision argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers
    from packaging.version import Version
    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def shrink(image, max_pixels: int = VLM_MAX_PIXELS):
    """The PIL image scaled down (aspect kept) to at most max_pixels pixels; smaller ones are returned as they
    are."""
    from PIL import Image
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = (max_pixels / (w * h)) ** 0.5
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)


def clean_text(text: str) -> str:
    """A model's output as one caption line: whitespace collapsed, undecodable bytes (U+FFFD) dropped."""
    return " ".join(text.replace("\ufffd", " ").split())


class Captioner:
    """A vision-language model on a device: `caption(images)` returns one cleaned caption per PIL RGB image
    (greedy decoding, at most max_new_tokens new tokens each; "" where the model wrote nothing)."""

    def __init__(self, captioner: str, folder: Path, device: str, dtype, prompt: str, max_new_tokens: int):
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
        self.kind, self.device, self.dtype, self.max_new_tokens = captioner, device, dtype, max_new_tokens
        cls = _model_class(captioner)
        self.model = cls.from_pretrained(folder, local_files_only=True, **_dtype_argument(dtype)).to(device).eval()
        if captioner == "qwen2_vl":  # its AutoProcessor needs torchvision for videos: the parts are loaded alone
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, padding_side="left")
            self.image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            self.prompt = prompt or QWEN_DEFAULT_PROMPT
        else:
            self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            self.prompt = prompt or (FLORENCE_DEFAULT_TASK if captioner == "florence2" else "")

    def _to_device(self, inputs: dict) -> dict:
        return {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in inputs.items() if hasattr(v, "to")}

    def caption(self, images: list) -> list[str]:
        import torch
        images = [shrink(im) for im in images]
        with torch.inference_mode():
            if self.kind == "qwen2_vl":
                texts = self._qwen(images)
            else:
                text = [self.prompt] * len(images) if self.prompt else None
                inputs = self._to_device(self.processor(images=images, text=text, return_tensors="pt"))
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          num_beams=1)
                texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [clean_text(t) for t in texts]

    def _qwen(self, images: list) -> list[str]:
        """Qwen2-VL's chat prompt built as its processor does (Qwen2VLProcessor): the image placeholder repeated
        once per merged patch (grid t*h*w / merge_size^2), left padding, and mm_token_type_ids (1 on image tokens)
        where the model takes them (transformers 5)."""
        import inspect
        config = self.model.config
        image_pad, start, end = self.tokenizer.convert_ids_to_tokens(
            [config.image_token_id, config.vision_start_token_id, config.vision_end_token_id])
        vision = self.image_processor(images=images, return_tensors="pt")
        merge = getattr(self.image_processor, "merge_size", 2)
        texts = [f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{start}"
                 f"{image_pad * (int(grid.prod()) // merge ** 2)}{end}{self.prompt}<|im_end|>\n"
                 "<|im_start|>assistant\n" for grid in vision["image_grid_thw"]]
        inputs = dict(self.tokenizer(texts, padding=True, return_tensors="pt"), **vision)
        if "mm_token_type_ids" in inspect.signature(self.model.forward).parameters:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == config.image_token_id).int()
        inputs = self._to_device(inputs)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# ---- the WD tagger (onnxruntime) -------------------------------------------------------------------------

def wd_pixels(image, size: int):
    """A PIL RGB image as a WD tagger's input row, the way SmilingWolf's wd-tagger space (app.py) prepares it:
    padded to a centred white square, resized to size x size (bicubic), float32 0-255 in BGR order, shape
    (size, size, 3)."""
    import numpy as np
    from PIL import Image
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def pick_tags(scores, table: list[tuple[str, int]], tag_threshold: float, character_threshold: float,
              replace_underscores: bool) -> list[str]:
    """The tags of one image from its tagger scores (one per row of the tag table, 0..1): character tags at or
    above character_threshold, then general tags at or above tag_threshold, each group by falling score (then by
    name); ratings and other categories are never written. replace_underscores writes long_hair as 'long hair'
    (KAOMOJIS keep theirs)."""
    chosen = {CHARACTER: [], GENERAL: []}
    limits = {CHARACTER: character_threshold, GENERAL: tag_threshold}
    for (name, category), score in zip(table, scores):
        if category in limits and score >= limits[category]:
            chosen[category].append((-float(score), name))
    names = [name for category in (CHARACTER, GENERAL) for _, name in sorted(chosen[category])]
    return [n.replace("_", " ") if replace_underscores and n not in KAOMOJIS else n for n in names]


class WDTagger:
    """A WD tagger (SmilingWolf's ONNX models: input NHWC float32 BGR 0-255, output one sigmoid score per row of
    selected_tags.csv) in an onnxruntime session. The input size is read from the model; a model with a fixed
    batch of one runs image by image."""

    def __init__(self, folder: Path, device: str, emit: Callable):
        import onnxruntime as ort
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                emit(ev.Log("warning", "onnxruntime here has no CUDA support (that is the onnxruntime-gpu package): "
                                       "the tagger runs on the CPU"))
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=providers)
        self.table = read_tag_table(folder / "selected_tags.csv")
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise InputError(f"tagger_model: {folder / 'model.onnx'} takes input of shape {shape}, not a WD "
                             "tagger's (batch, size, size, 3)")
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.table):
            raise InputError(f"tagger_model: {folder / 'model.onnx'} gives {outputs[-1]} scores but "
                             f"selected_tags.csv has {len(self.table)} tags")
        self.size = shape[1]
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def scores(self, images: list):
        """(len(images), tags) float32 scores, 0..1."""
        import numpy as np
        batch = np.stack([wd_pixels(im, self.size) for im in images])
        name = self.session.get_inputs()[0].name
        step = self.fixed_batch or len(batch)
        return np.concatenate([self.session.run(None, {name: batch[i:i + step]})[0]
                               for i in range(0, len(batch), step)])
