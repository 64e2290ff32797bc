"""caption: tiny models of the real classes (BLIP, Florence-2, Qwen2-VL, a WD-style ONNX tagger) built here and
saved as real folders; the modes, the tagger's thresholds, resume from the journal, preview, refusals, downloads
(faked: nothing leaves this machine) and the CLI."""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_helpers import BLUE, BLUE_TAGS, RED, TAGS, build_blip, build_tagger, image_folder, save_model
from trainer import events as ev
from trainer.errors import InputError
from trainer.fields import ConfigError
from trainer.specs import CaptionSpec, load_spec, save_spec, spec_from_dict, spec_to_dict
from trainer.tools import captioning
from trainer.tools.caption_models import MODEL_FILES, captioner_problem, pick_tags, read_tag_table, wd_pixels
from trainer.tools.captioning import caption, check_inputs, preview

ROOT = Path(__file__).resolve().parents[1]


# ---- tiny models (the tagger and BLIP: caption_helpers) ----------------------------------------------------

def ascii_vocab(specials: list[str]) -> dict[str, int]:
    """A byte-level BPE vocabulary of the specials, printable ASCII and the space mark (no merges needed)."""
    return {token: i for i, token in enumerate(specials + [chr(c) for c in range(33, 127)] + ["Ġ", "Ġcat"])}


def build_florence(folder: Path) -> Path:
    import torch
    from transformers import (BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)
    vocab = ascii_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>"])
    tokenizer = BartTokenizer(vocab=vocab, merges=[], image_token="<image>")
    # 64 px through strides 4 and 2: 8 x 8 visual tokens and one more (the temporal embedding).
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False,
                                         crop_size={"height": 64, "width": 64}, image_seq_length=65)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    vision = dict(depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                  patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(2, 2), num_groups=(2, 2),
                  window_size=4, projection_dim=32, max_position_embeddings=16)
    text = dict(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(Florence2Config(vision_config=vision, text_config=text,
                                                              image_token_id=vocab["<image>"])).eval()
    return save_model(model, [processor], folder, [0, 1, 3, 4, 5], decoder_start_token_id=2, bos_token_id=0,
                      eos_token_id=2, pad_token_id=1)


def build_qwen(folder: Path) -> Path:
    """Qwen2-VL's tokenizer and image processor saved alone, as its AutoProcessor needs torchvision here."""
    import torch
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tokenizer = Qwen2Tokenizer(vocab=ascii_vocab([]), merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    suppress = [i for name, i in ids.items() if name != "<|im_end|>"]
    return save_model(model, [tokenizer, image_processor], folder, suppress, eos_token_id=ids["<|im_end|>"],
                      pad_token_id=ids["<|endoftext|>"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption_models")
    return {"wd": build_tagger(root / "wd"), "blip": build_blip(root / "blip"),
            "florence2": build_florence(root / "florence2"), "qwen2_vl": build_qwen(root / "qwen2_vl")}


def tag_spec(models, folder, tmp_path, **changes) -> CaptionSpec:
    spec = CaptionSpec(image_dir=str(folder), captioner="none", tagger="wd", tagger_model=str(models["wd"]),
                       device="cpu", workspace_dir=str(tmp_path / "journals"))
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def run(spec, commands=None):
    events = []
    return caption(spec, events.append, commands), events


def text_of(folder: Path, name: str) -> str:
    return (folder / f"{name}.txt").read_text()


# ---- tests -----------------------------------------------------------------------------------------------

def test_spec_file_round_trip_and_refusals(tmp_path):
    spec = CaptionSpec(image_dir="pics", captioner="blip", tagger="wd", prefix="mnstr")
    save_spec(spec, tmp_path / "caption.json")
    data = json.loads((tmp_path / "caption.json").read_text())
    assert data["kind"] == "caption" and data["mode"] == "missing" and data["caption_extension"] == ".txt"
    assert load_spec(tmp_path / "caption.json") == spec and spec_from_dict(spec_to_dict(spec)) == spec
    for changes, reason in [({"captioner": "none", "tagger": "none"}, "captioner: nothing to do"),
                            ({"captioner": "florence2", "prompt": "describe it"}, "prompt: Florence-2 takes a task"),
                            ({"mode": "overwrite"}, "mode: 'overwrite' is not one of"),
                            ({"tag_threshold": 1.5}, "tag_threshold: 1.5 is above the maximum"),
                            ({"image_dir": " "}, "image_dir: choose the folder"),
                            ({"captioner": "llava"}, "captioner: 'llava' is not one of")]:
        with pytest.raises(ConfigError, match=reason):
            spec_from_dict({**data, **changes})


def test_a_model_folder_of_the_wrong_kind_is_refused_naming_the_field(models, tmp_path):
    folder = image_folder(tmp_path / "pics", {"a": BLUE})
    spec = CaptionSpec(image_dir=str(folder), captioner="florence2", captioner_model=str(models["blip"]))
    with pytest.raises(InputError, match=r"^captioner_model: .* holds a 'blip' model, not a florence2 one"):
        check_inputs(spec)
    spec.captioner_model = str(models["wd"])
    with pytest.raises(InputError, match="^captioner_model: .* has no config.json"):
        check_inputs(spec)
    spec = tag_spec(models, folder, tmp_path, tagger_model=str(models["blip"]))
    with pytest.raises(InputError, match="^tagger_model: .* has no model.onnx or selected_tags.csv"):
        caption(spec, lambda e: None)
    spec = tag_spec(models, tmp_path / "nowhere", tmp_path)
    with pytest.raises(InputError, match="^image_dir: .* is not a folder"):
        caption(spec, lambda e: None)
    image_folder(tmp_path / "holder" / "inside", {"a": BLUE})
    spec = tag_spec(models, tmp_path / "holder", tmp_path)
    with pytest.raises(InputError, match="^image_dir: .*holder has no images; to caption those of its subfolders, "
                                         "turn on include_subfolders$"):
        caption(spec, lambda e: None)
    spec.include_subfolders = True
    check_inputs(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="^image_dir: .*empty has no images$"):
        check_inputs(tag_spec(models, tmp_path / "empty", tmp_path))
    legacy = tmp_path / "legacy"  # microsoft/Florence-2-base's own layout: remote code, not transformers' class
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"model_type": "florence2", "auto_map": {},
                                                    "text_config": {"model_type": "florence2_language"}}))
    assert "florence-community/Florence-2-base" in captioner_problem(legacy, "florence2")


def test_wd_input_is_a_white_padded_bgr_square():
    pixels = wd_pixels(Image.new("RGB", (2, 4), (10, 20, 30)), 4)
    assert pixels.shape == (4, 4, 3) and pixels.dtype == np.float32
    assert pixels[:, 0].tolist() == [[255.0] * 3] * 4 and pixels[:, 3].tolist() == [[255.0] * 3] * 4
    assert pixels[0, 1].tolist() == [30.0, 20.0, 10.0]  # blue, green, red
    table = [("a_b", 0), ("^_^", 0), ("rating", 9), ("someone", 4)]
    assert pick_tags([0.5, 0.9, 1.0, 0.5], table, 0.4, 0.6, True) == ["^_^", "a b"]
    assert pick_tags([0.5, 0.9, 1.0, 0.7], table, 0.6, 0.6, False) == ["someone", "^_^"]


def test_the_tagger_thresholds_decide_the_tags(models, tmp_path):
    assert [name for name, _ in read_tag_table(models["wd"] / "selected_tags.csv")] == [t[0] for t in TAGS]
    folder = image_folder(tmp_path / "pics", {"blue": BLUE, "red": RED})
    finished, events = run(tag_spec(models, folder, tmp_path, prefix="mnstr,", suffix="best quality"))
    assert finished.outcome == "completed", finished.message
    assert text_of(folder, "blue") == f"mnstr, {BLUE_TAGS}, best quality\n"
    assert text_of(folder, "red") == f"mnstr, {BLUE_TAGS.replace('blue', 'red')}, best quality\n"
    strict = image_folder(tmp_path / "strict", {"blue": BLUE})
    run(tag_spec(models, strict, tmp_path, tag_threshold=0.6, character_threshold=0.7, replace_underscores=False))
    assert text_of(strict, "blue") == "hatsune_miku, blue_theme, 1girl, >_<\n"
    nothing = image_folder(tmp_path / "none", {"blue": BLUE})
    finished, events = run(tag_spec(models, nothing, tmp_path, tag_threshold=1.0, character_threshold=1.0,
                                    prefix="mnstr"))
    assert not (nothing / "blue.txt").exists()  # no tag passed: a prefix alone is no caption
    assert [e.skipped for e in events if isinstance(e, ev.ImageGenerated)] == [True]
    assert any(isinstance(e, ev.Log) and e.level == "warning" and "no tag passed" in e.text for e in events)


def test_mode_missing_captions_only_images_without_one(models, tmp_path):
    undecodable = b"\xff\xfe\x00\xd8"  # a UTF-16 byte-order mark, then half a surrogate pair
    folder = image_folder(tmp_path / "pics", {n: BLUE for n in "abcde"},
                          {"a": "the artist's own caption\n", "b": "", "e": undecodable})
    kept = (folder / "a.txt").stat().st_mtime_ns
    spec = CaptionSpec(image_dir=str(folder), captioner="blip", captioner_model=str(models["blip"]), tagger="wd",
                       tagger_model=str(models["wd"]), prefix="mnstr", suffix="best quality", batch_size=2,
                       device="cpu", workspace_dir=str(tmp_path / "journals"))
    finished, events = run(spec)
    assert finished.outcome == "completed", finished.message
    assert "3 caption(s) written" in finished.message and "2 image(s) left as they were" in finished.message
    assert text_of(folder, "a") == "the artist's own caption\n" and (folder / "a.txt").stat().st_mtime_ns == kept
    assert (folder / "e.txt").read_bytes() == undecodable
    for name in "bcd":
        text = text_of(folder, name).strip()
        assert text.startswith("mnstr, ") and text.endswith(f", {BLUE_TAGS}, best quality")
        words = text.removeprefix("mnstr, ").removesuffix(f", {BLUE_TAGS}, best quality").split()
        assert words and set(words) <= set("a photo of the cat dog red blue sky".split())
    written = [Path(e.path).stem for e in events if isinstance(e, ev.ImageGenerated)]
    assert written == ["b", "c", "d"]
    logs = " ".join(e.text for e in events if isinstance(e, ev.Log))
    assert "1 image(s) already have a caption" in logs and "1 caption file(s) cannot be decoded" in logs
    assert not (tmp_path / "journals").exists()  # mode missing needs no journal
    finished, events = run(spec)
    assert finished.outcome == "completed" and "nothing to caption" in finished.message


def test_loss_mask_files_are_not_captioned(models, tmp_path):
    folder = image_folder(tmp_path / "pics", {"cat": BLUE, "cat-masklabel": RED, "lone-masklabel": BLUE})
    spec = CaptionSpec(image_dir=str(folder), captioner="none", tagger="wd", tagger_model=str(models["wd"]),
                       device="cpu", workspace_dir=str(tmp_path / "journals"))
    assert [w.image.name for w in captioning.plan(spec, lambda e: None)[0]] == ["cat.png", "lone-masklabel.png"]
    finished, events = run(spec)
    assert finished.outcome == "completed", finished.message
    assert (folder / "cat.txt").exists() and (folder / "lone-masklabel.txt").exists()  # no image "lone" beside it
    assert not (folder / "cat-masklabel.txt").exists()  # the mask of cat.png
    assert any("1 loss mask file(s)" in e.text for e in events if isinstance(e, ev.Log))
    spec.mask_suffix = ""  # every image is an image
    assert len(captioning.plan(spec, lambda e: None)[0]) == 1  # cat-masklabel.png now, the others have captions


def test_journals_do_not_depend_on_the_folder_a_run_starts_from(models, tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "pics", {"a": BLUE}, {"a": "orig\n"})
    spec = CaptionSpec(image_dir=str(folder), mode="append", captioner="none", tagger="wd",
                       tagger_model=str(models["wd"]), device="cpu")  # journals: SeaChange's cache folder
    for start in ("one", "two"):
        (tmp_path / start).mkdir()
        monkeypatch.chdir(tmp_path / start)
        assert run(spec)[0].outcome == "completed"
    assert text_of(folder, "a") == f"orig, {BLUE_TAGS}\n"  # appended once
    assert list(captioning.journal_folder(spec).glob("journal-*.json"))


def test_two_images_sharing_a_caption_file_are_left_alone(models, tmp_path):
    folder = image_folder(tmp_path / "pics", {"a": BLUE, "b": RED}, {"a": "orig\n"})
    Image.new("RGB", (32, 32), RED).save(folder / "a.jpg")
    spec = CaptionSpec(image_dir=str(folder), mode="append", captioner="none", tagger="wd",
                       tagger_model=str(models["wd"]), device="cpu", workspace_dir=str(tmp_path / "journals"))
    finished, events = run(spec)
    assert finished.outcome == "completed" and text_of(folder, "a") == "orig\n" and (folder / "b.txt").exists()
    assert any("a.jpg and a.png share the caption file a.txt" in e.text for e in events if isinstance(e, ev.Log))


def test_a_caption_changed_during_the_run_is_read_again(models, tmp_path):
    folder = image_folder(tmp_path / "pics", {n: BLUE for n in "abc"}, {"c": "before\n"})
    events = []

    def emit(event):  # the artist captions b by hand, and edits c, while a is being captioned
        events.append(event)
        if isinstance(event, ev.ImageGenerated) and event.done == 1:
            (folder / "b.txt").write_text("by hand\n")
            (folder / "c.txt").write_text("edited\n")
    assert caption(tag_spec(models, folder, tmp_path, batch_size=1, tag_threshold=0.95), emit).outcome == "completed"
    assert [text_of(folder, n) for n in "ab"] == ["blue theme\n", "by hand\n"]
    assert any(isinstance(e, ev.Log) and "b.txt changed during the run" in e.text for e in events)
    spec = tag_spec(models, folder, tmp_path, mode="append", batch_size=1, tag_threshold=0.95)
    (folder / "c.txt").write_text("before\n")
    events.clear()
    assert caption(spec, emit).outcome == "completed"
    assert text_of(folder, "c") == "edited, blue theme\n"  # appended to what the file holds when its turn comes


def test_all_prepend_and_append_change_captions_as_asked(models, tmp_path):
    utf16 = "ligne une\r\nligne deux\r\n".encode("utf-16")  # Notepad's "Unicode": BOM, CRLF
    folder = image_folder(tmp_path / "pics", {"a": BLUE, "b": BLUE, "c": RED}, {"a": utf16, "b": "old caption\n"})
    before = sorted(p.name for p in folder.iterdir())
    finished, _ = run(tag_spec(models, folder, tmp_path, mode="prepend", separator=" | ", tag_threshold=0.85))
    assert finished.outcome == "completed"
    assert (folder / "a.txt").read_bytes() == "blue theme, 1girl | ligne une\r\nblue theme, 1girl | ligne deux\r\n" \
        .encode("utf-16")
    assert text_of(folder, "b") == "blue theme, 1girl | old caption\n"
    assert text_of(folder, "c") == "red theme, 1girl\n"  # no caption yet: the text alone
    finished, _ = run(tag_spec(models, folder, tmp_path, mode="append", tag_threshold=0.95))
    assert text_of(folder, "b") == "blue theme, 1girl | old caption, blue theme\n"
    finished, events = run(tag_spec(models, folder, tmp_path, mode="append", tag_threshold=0.95))
    assert finished.outcome == "completed" and "nothing to caption" in finished.message  # never appended twice
    assert text_of(folder, "b") == "blue theme, 1girl | old caption, blue theme\n"
    (folder / "b.txt").write_text("edited by hand\n")  # a caption edited since is the artist's again
    run(tag_spec(models, folder, tmp_path, mode="append", tag_threshold=0.95))
    assert text_of(folder, "b") == "edited by hand, blue theme\n"
    run(tag_spec(models, folder, tmp_path, mode="all"))
    assert text_of(folder, "b") == f"{BLUE_TAGS}\n" and (folder / "a.txt").read_bytes()[:2] == b"\xff\xfe"
    assert sorted(p.name for p in folder.iterdir()) == before + ["c.txt"]  # the journal lives elsewhere
    journals = list((tmp_path / "journals").glob("journal-*.json"))
    assert len(journals) == 1 and json.loads(journals[0].read_text())["folder"] == str(folder.resolve())


def test_a_stopped_or_crashed_append_run_resumes_without_appending_twice(models, tmp_path, monkeypatch):
    names = [f"img{i}" for i in range(5)]
    folder = image_folder(tmp_path / "pics", {n: BLUE for n in names}, {n: f"caption {n}\n" for n in names})
    spec = tag_spec(models, folder, tmp_path, mode="append", batch_size=2, tag_threshold=0.95)
    commands = queue.Queue()

    def emit(event):  # stop as soon as the first batch is under way: checked before the next batch
        if isinstance(event, ev.ImageGenerated):
            commands.put(ev.Command(ev.STOP))
    finished = caption(spec, emit, commands)
    assert finished.outcome == "stopped" and "resume" in finished.message
    assert [text_of(folder, n) for n in names] == [f"caption {n}, blue theme\n" for n in names[:2]] + \
        [f"caption {n}\n" for n in names[2:]]

    real_write, calls = captioning.write_caption_text, []

    def crash_on_second(*args):  # the journal holds the batch; the disk fills after one of its two files
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(*args)
    monkeypatch.setattr(captioning, "write_caption_text", crash_on_second)
    with pytest.raises(OSError):
        run(spec)
    monkeypatch.setattr(captioning, "write_caption_text", real_write)
    finished, events = run(spec)
    assert finished.outcome == "completed", finished.message
    assert [text_of(folder, n) for n in names] == [f"caption {n}, blue theme\n" for n in names]
    assert [Path(e.path).stem for e in events if isinstance(e, ev.ImageGenerated)] == names[3:]


def test_preview_writes_nothing_and_proposes_what_a_run_writes(models, tmp_path):
    from trainer.session import caption_session
    folder = image_folder(tmp_path / "pics", {n: BLUE for n in "abc"}, {"a": "kept\n"})
    spec = CaptionSpec(image_dir=str(folder), captioner="blip", captioner_model=str(models["blip"]), mode="append",
                       device="cpu", workspace_dir=str(tmp_path / "journals"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proposed = preview(spec, 2)
    assert [p.name for p, _ in proposed] == ["a.png", "b.png"] and proposed[0][1].startswith("kept, ")
    session = caption_session(spec, preview_count=1)
    session.start()
    assert session.join(120)
    events = list(session.events.queue)
    assert [(Path(e.path).name, e.caption) for e in events if isinstance(e, ev.ImageGenerated)] == \
        [("a.png", proposed[0][1])]
    assert events[-1].outcome == "completed" and "nothing was written" in events[-1].message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not (tmp_path / "journals").exists()
    assert run(spec)[0].outcome == "completed"
    assert [text_of(folder, n) for n in "ab"] == [text + "\n" for _, text in proposed]


@pytest.mark.parametrize("kind, prompt", [("florence2", "<CAPTION>"), ("qwen2_vl", "Describe the colours.")])
def test_florence2_and_qwen2_vl_caption_every_image(models, tmp_path, kind, prompt):
    folder = tmp_path / "pics"
    folder.mkdir()
    for k, size in enumerate([(32, 32), (90, 40), (40, 120)]):  # Qwen2-VL: a different token count each
        Image.new("RGB", size, (60 * k, 100, 200)).save(folder / f"img{k}.png")
    spec = CaptionSpec(image_dir=str(folder), captioner=kind, captioner_model=str(models[kind]), prompt=prompt,
                       max_new_tokens=6, prefix="mnstr", batch_size=3, device="cpu",
                       workspace_dir=str(tmp_path / "journals"))
    finished, _ = run(spec)
    assert finished.outcome == "completed", finished.message
    for k in range(3):
        text = text_of(folder, f"img{k}").strip()
        assert text.startswith("mnstr, ") and len(text) > len("mnstr, ")
        assert text.isascii() and text.isprintable()


def test_a_repo_id_is_announced_then_downloaded_once(models, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    hub, calls, events = tmp_path / "hub", [], []

    def fake_snapshot(repo_id, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, allow_patterns, local_files_only, len(events)))
        folder = hub / repo_id.replace("/", "--")
        if local_files_only and not folder.exists():
            raise LocalEntryNotFoundError("not in the cache")
        if repo_id == "someone/missing":
            raise OSError("404 Client Error: Repository Not Found")
        if not folder.exists():
            shutil.copytree(models["wd"] if "wd" in repo_id else models["blip"], folder)
        return str(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    pics = image_folder(tmp_path / "pics", {"a": BLUE})
    spec = tag_spec(models, pics, tmp_path, tagger_model="someone/wd-tagger")
    assert caption(spec, events.append).outcome == "completed"
    announced = [i for i, e in enumerate(events) if isinstance(e, ev.Log) and "Downloading someone/wd-tagger" in e.text]
    assert len(announced) == 1 and calls[0][2] and not calls[1][2] and calls[1][3] > announced[0]
    calls.clear()
    (pics / "a.txt").unlink()
    events.clear()
    assert caption(spec, events.append).outcome == "completed" and len(calls) == 1 and calls[0][2]
    assert not any(isinstance(e, ev.Log) and "Downloading" in e.text for e in events)  # the cached copy
    (pics / "a.txt").unlink()
    with pytest.raises(InputError, match="^tagger_model: could not download someone/missing"):
        caption(tag_spec(models, pics, tmp_path, tagger_model="someone/missing"), events.append)
    calls.clear()  # a BLIP repo asked for as Florence-2: refused from its config, before any weights are fetched
    spec = CaptionSpec(image_dir=str(pics), captioner="florence2", captioner_model="someone/blip", device="cpu")
    with pytest.raises(InputError, match="^captioner_model: someone/blip: .* holds a 'blip' model"):
        caption(spec, events.append)
    assert [c[1] for c in calls] == [MODEL_FILES, ["config.json"]]
    events.clear()  # now in the cache: refused at once, nothing announced or fetched
    with pytest.raises(InputError, match="^captioner_model: someone/blip: .* holds a 'blip' model"):
        caption(spec, events.append)
    assert not any(isinstance(e, ev.Log) and "Downloading" in e.text for e in events) and calls[-1][2]


def test_subfolders_are_captioned_when_asked_each_with_its_own_journal(models, tmp_path):
    folder = image_folder(tmp_path / "pics", {"top": BLUE}, {"top": "top\n"})
    image_folder(folder / "sub", {"low": RED}, {"low": "low\n"})
    run(tag_spec(models, folder, tmp_path, mode="append", tag_threshold=0.95))
    assert text_of(folder, "top") == "top, blue theme\n" and (folder / "sub" / "low.txt").read_text() == "low\n"
    run(tag_spec(models, folder, tmp_path, mode="append", tag_threshold=0.95, include_subfolders=True))
    assert text_of(folder, "top") == "top, blue theme\n" and text_of(folder / "sub", "low") == "low, red theme\n"
    journals = {json.loads(p.read_text())["folder"] for p in (tmp_path / "journals").glob("journal-*.json")}
    assert journals == {str(folder.resolve()), str((folder / "sub").resolve())}


def test_the_engine_api_loads_no_torch_until_a_model_loads(tmp_path):
    code = ("import sys; from trainer.tools.captioning import check_inputs, plan, preview; "
            "from trainer.session import caption_session; assert 'torch' not in sys.modules, 'torch'; "
            "assert 'transformers' not in sys.modules and 'onnxruntime' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_cli_previews_captions_and_refuses_a_bad_spec(models, tmp_path):
    folder = image_folder(tmp_path / "pics", {"blue": BLUE})
    save_spec(tag_spec(models, folder, tmp_path), tmp_path / "caption.json")
    cmd = [sys.executable, "-m", "trainer", "caption", str(tmp_path / "caption.json"), "--quiet"]
    shown = subprocess.run(cmd + ["--preview", "3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert f"blue.png\n    {BLUE_TAGS}" in shown.stdout and not (folder / "blue.txt").exists()
    done = subprocess.run(cmd + ["--set", "prefix=mnstr"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert text_of(folder, "blue") == f"mnstr, {BLUE_TAGS}\n"
    bad = subprocess.run(cmd + ["--set", "tagger=none", "--set", "captioner=none"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "captioner: nothing to do" in bad.stderr
    wrong = subprocess.run(cmd + ["--set", f"tagger_model={models['blip']}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2 and "tagger_model:" in wrong.stderr
