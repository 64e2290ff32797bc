"""generate-data: the plan (counts, seeds, captions), files and manifest, resume, stop, refusals, the CLI, and the
output folder used as a training concept."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_presets import make_preset
from trainer import events as ev
from trainer.errors import InputError
from trainer.fields import ConfigError
from trainer.specs import GenerateDataSpec, load_spec, save_spec, spec_from_dict
from trainer.tools.generate_data import generate_data, plan_images

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(model_dir, out, **changes) -> GenerateDataSpec:
    spec = GenerateDataSpec(base_model=str(model_dir), output_dir=str(out), prompts=["a {red|blue} square"],
                            images_per_prompt=2, width=32, height=32, steps=2, sampler="ddim", seed=5,
                            caption_template="mnstr, {prompt}", device="cpu")
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def run(spec, commands=None):
    events = []
    finished = generate_data(spec, events.append, commands)
    return finished, events


def test_plan_counts_seeds_and_captions(tmp_path):
    (tmp_path / "monster.txt").write_text("dragon\nslime\ngolem\n")
    spec = GenerateDataSpec(prompts=["a {red|green} __monster__, {ink|watercolor} style", "", "a tree"],
                            wildcard_dir=str(tmp_path), images_per_prompt=3, seed=100,
                            caption_template="mnstr, {prompt}", caption_strip="ink style, watercolor style")
    plan = plan_images(spec)
    assert len(plan) == (2 * 3 * 2 + 1) * 3
    assert [p.seed for p in plan] == list(range(100, 100 + len(plan)))
    assert len({p.name for p in plan}) == len(plan)
    assert plan[0].prompt == plan[1].prompt == plan[2].prompt == "a red dragon, ink style"
    assert plan[0].caption == "mnstr, a red dragon"
    assert plan[-1].prompt == "a tree" and plan[-1].caption == "mnstr, a tree"

    spec.total_images = 37
    random_plan = plan_images(spec)
    assert len(random_plan) == 37 and random_plan == plan_images(spec)  # exact and reproducible
    assert len({p.prompt for p in random_plan}) > 5
    spec.seed = 101
    assert [p.prompt for p in plan_images(spec)] != [p.prompt for p in random_plan]


def test_generates_pairs_and_manifest_then_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "monsters"
    spec = tiny_spec(tiny_model_dir, out, batch_size=3)
    finished, events = run(spec)
    assert finished.outcome == "completed", finished.message
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"00000{i}.png" for i in range(4)]
    captions = [p.with_suffix(".txt").read_text().strip() for p in pngs]
    assert captions == ["mnstr, a red square"] * 2 + ["mnstr, a blue square"] * 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["kind"] == "generate_data"
    entries = [manifest["images"][p.stem] for p in pngs]
    assert [e["seed"] for e in entries] == [5, 6, 7, 8]
    assert all(e["done"] and e["steps"] == 2 and e["sampler"] == "ddim" for e in entries)
    assert entries[2]["prompt"] == "a blue square"
    generated = [e for e in events if isinstance(e, ev.ImageGenerated)]
    assert [e.done for e in generated] == [1, 2, 3, 4] and not any(e.skipped for e in generated)
    images = [np.asarray(Image.open(p)) for p in pngs]
    assert images[0].shape == (32, 32, 3)
    assert not np.array_equal(images[0], images[1])  # different seeds

    # Resume: everything is there, nothing is redrawn.
    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    finished, events = run(spec)
    assert finished.outcome == "completed" and "already" in finished.message
    assert all(e.skipped for e in events if isinstance(e, ev.ImageGenerated))
    assert stamps == {p: p.stat().st_mtime_ns for p in pngs}

    # A lost image (an interrupted run) is drawn again, the same as before; the others are kept.
    pngs[1].unlink()
    finished, events = run(spec)
    assert finished.outcome == "completed"
    drawn = [e for e in events if isinstance(e, ev.ImageGenerated) and not e.skipped]
    assert [Path(e.path).name for e in drawn] == ["000001.png"]
    # The same seed draws the same image; alone rather than in a batch of 3, CPU kernels may round differently.
    redrawn = np.asarray(Image.open(pngs[1])).astype(int)
    assert np.abs(redrawn - images[1]).mean() < 1.0 and np.abs(redrawn - images[1]).max() <= 16
    assert {p: p.stat().st_mtime_ns for p in pngs if p != pngs[1]} == {p: s for p, s in stamps.items() if p != pngs[1]}


def test_stop_between_images_then_resume_completes(tiny_model_dir, tmp_path):
    spec = tiny_spec(tiny_model_dir, tmp_path / "out")
    commands = queue.Queue()
    commands.put(ev.Command(ev.STOP))
    finished, _ = run(spec, commands)
    assert finished.outcome == "stopped" and "resume" in finished.message
    assert not list((tmp_path / "out").glob("*.png"))
    finished, _ = run(spec)
    assert finished.outcome == "completed" and len(list((tmp_path / "out").glob("*.png"))) == 4


def test_refuses_folders_it_did_not_write(tiny_model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "000000.png")  # the artist's own file
    with pytest.raises(InputError, match="not written by generate-data"):
        run(tiny_spec(tiny_model_dir, out))
    assert Image.open(out / "000000.png").size == (8, 8)

    other = tmp_path / "other"
    assert run(tiny_spec(tiny_model_dir, other, images_per_prompt=1))[0].outcome == "completed"
    with pytest.raises(InputError, match="other settings"):
        run(tiny_spec(tiny_model_dir, other, images_per_prompt=1, prompts=["a green circle"]))


def test_output_folder_trains_as_a_concept(tiny_model_dir, tmp_path):
    from trainer.data.stats import concept_stats
    from trainer.train.loop import train
    out = tmp_path / "generated"
    assert run(tiny_spec(tiny_model_dir, out))[0].outcome == "completed"
    preset = make_preset(tmp_path, tiny_model_dir, out, training={"epochs": 1, "batch_size": 2})
    stats = concept_stats(preset)[0]
    assert stats["usable"] == 4 and stats["without_caption"] == 0 and not stats["skipped"]
    events = []
    finished = train(preset, events.append, queue.Queue())
    assert finished.outcome == "completed", finished.message
    assert sum(isinstance(e, ev.Progress) for e in events) == 2


def test_spec_files_are_versioned_and_validated(tmp_path):
    spec = GenerateDataSpec(prompts=["a cat"], output_dir="x")
    save_spec(spec, tmp_path / "spec.json")
    data = json.loads((tmp_path / "spec.json").read_text())
    assert data["version"] == 1 and data["kind"] == "generate_data"
    assert load_spec(tmp_path / "spec.json") == spec
    for bad, reason in [({**data, "version": 99}, "newer"), ({**data, "kind": "train"}, "kind"),
                        ({**data, "promts": []}, "promts: unknown key"), ({**data, "width": 30}, "width"),
                        ({**data, "steps": "many"}, "steps: expected a whole number"),
                        ({**data, "prompts": ["  "]}, "no prompt template"),
                        ({**data, "caption_template": "mnstr"}, "{prompt}")]:
        with pytest.raises(ConfigError, match=reason):
            spec_from_dict(bad)
    from trainer.specs import CompareSpec
    with pytest.raises(ConfigError, match="needs 'compare'"):
        load_spec(tmp_path / "spec.json", CompareSpec)


def test_cli_generates_and_reports_bad_specs(tiny_model_dir, tmp_path):
    spec = tiny_spec(tiny_model_dir, tmp_path / "cli", images_per_prompt=1)
    save_spec(spec, tmp_path / "gen.json")
    cmd = [sys.executable, "-m", "trainer", "generate-data", str(tmp_path / "gen.json"), "--quiet"]
    done = subprocess.run(cmd + ["--set", "seed=9"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["images"]["000001"]["seed"] == 10
    bad = subprocess.run(cmd + ["--set", "steps=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "steps: 0 is below the minimum" in bad.stderr


def test_prompts_longer_than_clips_window_are_named(tiny_model_dir, tmp_path):
    long = "a {red|blue} square, " + ", ".join(f"detail{i}" for i in range(40))
    spec = tiny_spec(tiny_model_dir, tmp_path / "long", prompts=[long], images_per_prompt=1)
    finished, events = run(spec)
    warnings = [e.text for e in events if isinstance(e, ev.Log) and e.level == "warning"]
    assert finished.outcome == "completed" and len(warnings) == 1
    assert warnings[0].startswith("2 prompt(s) are longer than CLIP's 75 tokens") and "a red square" in warnings[0]
    finished, events = run(tiny_spec(tiny_model_dir, tmp_path / "short"))
    assert not [e for e in events if isinstance(e, ev.Log) and e.level == "warning"]
