"""Tiny caption models of the real classes, built and saved as real folders (a WD-style ONNX tagger, BLIP), and
folders of coloured test images: shared by tests/test_captioning.py and the window's captioning tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BLUE, RED = (0, 0, 255), (255, 0, 0)
# The tiny tagger's tags: (name, category, bias, weight on the mean blue / red input channel). Its score for a tag
# is sigmoid(bias + weight * mean channel / 25.5): constant for most, driven by the image's colour for two.
TAGS = [("general", 9, 3.0, 0, 0), ("sensitive", 9, 2.0, 0, 0), ("1girl", 0, 2.0, 0, 0), ("solo", 0, 0.0, 0, 0),
        ("long_hair", 0, -1.0, 0, 0), (">_<", 0, 1.5, 0, 0), ("blue_theme", 0, -5.0, 1, 0),
        ("red_theme", 0, -5.0, 0, 1), ("hatsune_miku", 4, 1.0, 0, 0)]
BLUE_TAGS = "blue theme, 1girl, >_<, solo"  # scores .99, .88, .82, .5 pass 0.35; ratings never appear


def build_tagger(folder: Path, size: int = 32) -> Path:
    """A WD-style tagger: NHWC float32 input (batch, size, size, 3), sigmoid scores over TAGS."""
    import onnx
    from onnx import TensorProto, helper
    weights = np.zeros((3, len(TAGS)), np.float32)
    for k, (_, _, _, blue, red) in enumerate(TAGS):
        weights[0, k], weights[2, k] = blue / 25.5, red / 25.5  # channel 0 is blue: the input is BGR
    bias = np.array([t[2] for t in TAGS], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_1:0"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits0"]), helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])], "tiny_wd",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten()),
         helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    rows = [f"{k},{name},{category},{1000 - k}" for k, (name, category, *_) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n" + "\n".join(rows) + "\n")
    return folder

def save_model(model, parts, folder: Path, suppress: list[int], **generation) -> Path:
    """Save a tiny model and its processor parts; its generation config writes at least two tokens and never a
    special one but the end (so a random model's caption is never empty)."""
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(min_new_tokens=2, suppress_tokens=suppress, **generation)
    model.save_pretrained(folder)
    for part in parts:
        part.save_pretrained(folder)
    return folder

def build_blip(folder: Path) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers import BlipImageProcessor
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + "a photo of the cat dog red blue sky".split()
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    config = BlipConfig(text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
                                         bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8), projection_dim=32)
    torch.manual_seed(0)
    return save_model(BlipForConditionalGeneration(config).eval(), [processor], folder, [0, 1, 2, 4, 5])


def image_folder(folder: Path, colours: dict, captions: dict | None = None) -> Path:
    """name.png in each colour (32 px squares), and name.txt for the given captions (str, or raw bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in colours.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
    for name, text in (captions or {}).items():
        path = folder / f"{name}.txt"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return folder
