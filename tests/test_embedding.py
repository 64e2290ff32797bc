"""Textual-inversion embeddings (training.method "embedding", or a word beside a LoRA): only the word trains, its
file is the emb_params layout diffusers and A1111 read, samples use it, resume is exact, bad words are refused."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.config import validate
from trainer.data.prompts import encode_prompts
from trainer.errors import InputError
from trainer.model.models import load_model
from trainer.train.loop import train

WORD = "mystylexq"
STEPS = 6


@pytest.fixture(scope="module")
def word_concept(color_concept, tmp_path_factory):
    """The colour images, captioned with the new word: 'a red mystylexq square'."""
    folder = tmp_path_factory.mktemp("word")
    for image in color_concept.glob("*.png"):
        shutil.copy(image, folder / image.name)
        (folder / f"{image.stem}.txt").write_text(f"a {image.stem.rstrip('0123456789')} {WORD} square\n")
    return folder


def word_preset(tmp_path, model, concept, training=None, **sections):
    return make_preset(tmp_path, model, concept,
                       training={"method": "embedding", "embedding_placeholder": WORD, "embedding_vectors": 3,
                                 "embedding_init_text": "square", "embedding_learning_rate": 0.05,
                                 "max_steps": STEPS, **(training or {})},
                       model={"output_path": str(tmp_path / f"{WORD}.safetensors")},
                       backup={"backup_unit": "never", "rolling_backups": 0}, **sections)


run = run_stopping_at


def test_the_word_trains_and_samples_use_it(tiny_model_dir, word_concept, tmp_path):
    prompt = {"prompt": f"a {WORD} square", "steps": 2, "width": 32, "height": 32, "cfg_scale": 1.0}
    preset = word_preset(tmp_path, tiny_model_dir, word_concept,
                         sampling={"unit": "steps", "every": 3, "before_training": True, "prompts": [prompt]})
    finished, events = run(preset)
    with safe_open(finished.output_path, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        vectors = f.get_tensor("emb_params")
    base = load_model(str(tiny_model_dir))
    table = base.text_encoder.get_input_embeddings().weight
    square = base.tokenizer("square", add_special_tokens=False)["input_ids"][0]
    assert keys == ["emb_params"] and vectors.shape == (3, table.shape[1])
    assert not torch.allclose(vectors, table[square].expand(3, -1))  # moved from where it started
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    samples = [e.path for e in events if isinstance(e, ev.SampleReady)]
    from PIL import Image
    import numpy as np
    first, last = (np.asarray(Image.open(p), dtype=float) for p in (samples[0], samples[-1]))
    assert len(samples) == 3 and abs(first - last).mean() > 0.5  # only the word changed, and the image with it


def test_the_word_trains_in_bf16_mixed_precision_on_a_cpu(tiny_model_dir, word_concept, tmp_path):
    """The built-in embedding preset's precision: the frozen text encoder in bf16, the word's vectors in float32."""
    preset = word_preset(tmp_path, tiny_model_dir, word_concept, training={"mixed_precision": "bf16", "max_steps": 2})
    finished, _ = run(preset)
    assert finished.outcome == "completed", finished.message
    with safe_open(finished.output_path, "pt") as f:
        assert torch.isfinite(f.get_tensor("emb_params")).all()


def test_nothing_but_the_word_is_trained(tiny_model_dir, word_concept, tmp_path):
    from trainer.data.data import collect_items
    from trainer.model.training_model import TrainingModel
    preset = word_preset(tmp_path, tiny_model_dir, word_concept)
    model = TrainingModel.load(preset, collect_items(preset), torch.device("cpu"), lambda e: None)
    groups = model.parameter_groups(preset.training)
    assert [len(g["params"]) for g in groups] == [1] and groups[0]["params"][0] is model.embedding.module.vectors
    assert groups[0]["weight_decay"] == 0.0
    assert not any(p.requires_grad for part in (model.components.unet, model.components.text_encoder)
                   for p in part.parameters())
    assert model.text_learns  # captions are encoded every step (never from the cache)


def test_diffusers_loads_the_file_and_encodes_the_word_as_training_did(tiny_model_dir, word_concept, tmp_path):
    from diffusers import StableDiffusionPipeline
    finished, _ = run(word_preset(tmp_path, tiny_model_dir, word_concept))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.load_textual_inversion(finished.output_path, token=WORD)
    text = f"a {WORD} square"
    theirs = pipe.encode_prompt(text, "cpu", 1, False)[0]  # it expands the word to its 3 tokens itself

    from trainer.model.embedding import Embedding
    base = load_model(str(tiny_model_dir))
    word = Embedding(base.tokenizer, base.text_encoder, WORD, 3, "square")
    word.module.vectors.data = load_file(finished.output_path)["emb_params"]
    with torch.no_grad():
        ours = encode_prompts(base.tokenizer, base.text_encoder, [text], 75, "cpu")
        plain = encode_prompts(base.tokenizer, base.text_encoder, ["a square"], 75, "cpu")
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_resume_of_an_embedding_run_is_exact(tiny_model_dir, word_concept, tmp_path):
    whole = word_preset(tmp_path / "whole", tiny_model_dir, word_concept)
    run(whole)
    parted = word_preset(tmp_path / "parted", tiny_model_dir, word_concept)
    assert run(parted, stop_at=2)[0].outcome == "stopped"
    finished, _ = run(parted, resume="latest")
    assert torch.equal(load_file(finished.output_path)["emb_params"],
                       load_file(str(tmp_path / "whole" / f"{WORD}.safetensors"))["emb_params"])


@pytest.mark.parametrize("method, output", [("lora", "lora.safetensors"), ("full", "model.safetensors")])
def test_a_word_trains_beside_a_lora_or_a_full_fine_tune(method, output, tiny_model_dir, word_concept, tmp_path):
    """The word is written as WORD.safetensors next to the output, and during the run beside each save; the model
    itself keeps SD 1.5's 49,408-row token table (no added rows in the checkpoint)."""
    preset = make_preset(tmp_path, tiny_model_dir, word_concept,
                         training={"method": method, "lora_rank": 2, "embedding_placeholder": WORD,
                                   "max_steps": 3, "train_text_encoder": True},
                         model={"output_path": str(tmp_path / "out" / output)},
                         backup={"save_unit": "steps", "save_every": 2})
    finished, events = run(preset)
    assert finished.outcome == "completed" and (tmp_path / "out" / output).is_file()
    word = load_file(str(tmp_path / "out" / f"{WORD}.safetensors"))["emb_params"]
    assert word.shape[0] == 1
    saves = sorted((tmp_path / "ws" / "save").glob("*.safetensors"))
    assert [p.name for p in saves] == [f"step0000002-epoch0001-{WORD}.safetensors", "step0000002-epoch0001.safetensors"]
    if method == "full":
        rows = load_model(str(tmp_path / "out" / output)).text_encoder.get_input_embeddings().num_embeddings
        assert rows == load_model(str(tiny_model_dir)).text_encoder.get_input_embeddings().num_embeddings


@pytest.mark.parametrize("word, said", [("cat", "already a token"), ("My Style", "lowercase letters"),
                                        ("", "no placeholder")])
def test_a_bad_word_is_refused_naming_it(word, said, tiny_model_dir, word_concept, tmp_path):
    preset = word_preset(tmp_path, tiny_model_dir, word_concept)
    preset.training.embedding_placeholder = word
    problems = validate(preset)
    assert any(p.startswith("training.embedding_placeholder:") and said in p for p in problems), problems
    with pytest.raises(InputError, match="training.embedding_placeholder"):
        train(preset, lambda e: None)


def test_a_word_no_caption_uses_is_refused_before_loading(tiny_model_dir, color_concept, tmp_path):
    events = []
    with pytest.raises(InputError, match=f"no caption uses '{WORD}'"):
        train(word_preset(tmp_path, tiny_model_dir, color_concept), events.append)
    assert not any(isinstance(e, ev.Status) and e.text.startswith("Loading") for e in events)


def test_the_base_tokenizer_knowing_the_word_is_refused(tiny_model_dir):
    from trainer.model.embedding import Embedding
    base = load_model(str(tiny_model_dir))
    base.tokenizer.add_tokens([WORD])
    with pytest.raises(InputError, match=f"'{WORD}' is already a token of the base model's tokenizer"):
        Embedding(base.tokenizer, base.text_encoder, WORD, 1, "square")
