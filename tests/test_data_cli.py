"""End to end through the CLI: train on mixed sizes and aspect ratios, fill the cache alone, print statistics."""
from __future__ import annotations

import json
import sys

from data_helpers import mixed_folder, write_image
from tiny_presets import make_preset
from trainer.__main__ import main as cli_main
from trainer.config import save_preset


def test_cli_trains_and_samples_on_mixed_sizes(tiny_model_dir, tmp_path, capsys):
    folder = mixed_folder(tmp_path / "imgs")
    (folder / "broken.png").write_text("not a png")
    preset = make_preset(tmp_path, tiny_model_dir, folder,
                         training={"epochs": 2, "batch_size": 2, "resolution": "32,40"},
                         concepts=[{"name": "mixed", "path": str(folder), "random_flip": True,
                                    "crop_jitter": True, "image_variations": 2, "caption_dropout": 0.1}],
                         sampling={"unit": "epochs", "every": 1,
                                   "prompts": [{"prompt": "shape 1", "width": 32, "height": 48, "steps": 2}]})
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    assert cli_main(["cache", str(path), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "latents_encoded=48" in out.out and "broken.png" in out.err  # 6 images x 2 sizes x 2 flips x 2
    assert cli_main(["train", str(path)]) == 0
    err = capsys.readouterr().err
    assert "completed" in err and "Cached latents: 0 encoded, 48 reused" in err and "broken.png" in err
    assert (tmp_path / "out.safetensors").is_file()
    samples = sorted((tmp_path / "ws" / "samples").glob("*.png"))
    assert len(samples) == 2


def test_stats_command_and_function(tmp_path, capsys):
    folder = mixed_folder(tmp_path / "imgs")
    (folder / "img_0.txt").unlink()
    (folder / "img_1.txt").write_text("one two three four five six seven\n")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    write_image(tmp_path / "other" / "x.png", (64, 16))
    preset = make_preset(tmp_path, "unused", folder, training={"resolution": "32"}, concepts=[
        {"name": "mixed", "path": str(folder)}, {"name": "gone", "path": str(tmp_path / "gone")},
        {"name": "other", "path": str(tmp_path / "other"), "enabled": False, "resolution": "32,64"}])
    from trainer.data.stats import concept_stats
    mixed, gone, other = concept_stats(preset)
    assert mixed["image_count"] == 7 and mixed["usable"] == 6 and mixed["without_caption"] == 1
    assert [s["path"].endswith("broken.jpg") for s in mixed["skipped"]] == [True]
    assert mixed["caption_words"] == [0, 7]  # the image without a txt trains with the empty fallback
    assert sum(b["images"] for b in mixed["buckets"]) == 6
    assert {(b["width"], b["height"]) for b in mixed["buckets"]} == {(16, 64), (64, 16), (32, 32)}
    assert "does not exist" in gone["error"]
    assert [(b["resolution"], b["width"], b["height"]) for b in other["buckets"]] == [(32, 64, 16), (64, 128, 32)]
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    # the report is printed whole; the exit code says training would refuse to start (the folder of "gone")
    assert cli_main(["stats", str(path), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)[0]["usable"] == 6
    assert cli_main(["stats", str(path)]) == 2
    text = capsys.readouterr().out
    assert "6 usable, 1 skipped, 1 without a caption" in text and "bucket" in text
    preset.concepts[1].enabled = False
    save_preset(preset, path)
    assert cli_main(["stats", str(path)]) == 0


def test_stats_imports_no_torch():
    import subprocess
    code = ("import sys, trainer.data.stats, trainer.data.data\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
