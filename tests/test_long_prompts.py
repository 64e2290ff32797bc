"""Captions and sample prompts longer than 77 CLIP tokens: 75-token chunks, encoded one by one (A1111 / kohya)."""
import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trainer.config import SamplePrompt
from trainer.data.prompts import chunk_count, chunked_ids, encode_prompts, over_limit, token_count
from trainer.tools.demo import TOKENIZER_DIR
from trainer.train.sampling import generate, make_pipeline, sample_embeds, sample_prompt_warnings

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def pipe():
    from trainer.tools.demo import build_tiny_components
    c = build_tiny_components(seed=0)
    return make_pipeline(c.unet, c.vae, c.text_encoder, c.tokenizer, c.noise_scheduler.config, "euler_a")


def words(n: int, word: str = "photo") -> str:
    return " ".join([word] * n)


def trigger_id(tokenizer, word="sks") -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1
    return ids[0]


def todays_ids(tokenizer, texts):
    return torch.tensor(tokenizer(texts, padding="max_length", max_length=77, truncation=True).input_ids)


TEXTS = ["", "a photo of a cat", "A Café, naïve: 3 red squares (blurry) !!", words(74), words(75), words(76),
         words(200), words(60, "mnstr")]


def test_ids_at_75_equal_todays_tokenizer_call(tokenizer):
    assert torch.equal(chunked_ids(tokenizer, TEXTS, 75), todays_ids(tokenizer, TEXTS))


def test_a_104_token_caption_keeps_its_trigger_word_in_the_second_chunk_at_150(tokenizer):
    caption = words(103) + " sks"
    assert token_count(tokenizer, caption) == 104
    sks = trigger_id(tokenizer)
    assert sks not in chunked_ids(tokenizer, [caption], 75)[0].tolist()
    ids = chunked_ids(tokenizer, [caption], 150)[0].tolist()
    first, second = ids[:77], ids[77:]
    assert first[0] == BOS and first[-1] == EOS and sks not in first
    assert second[0] == BOS and second.index(sks) == 1 + 28  # tokens 75..103 of the caption: sks is the 29th
    assert set(second[second.index(sks) + 1:]) == {EOS}  # EOS closes the text and pads the chunk (SD 1.x)


@pytest.mark.parametrize("limit", [75, 150, 225])
def test_shapes_are_77_154_and_231(tokenizer, text_encoder, limit):
    texts = ["a photo of a cat", words(250)]
    assert chunked_ids(tokenizer, texts, limit).shape == (2, limit // 75 * 77)
    with torch.no_grad():
        hidden = encode_prompts(tokenizer, text_encoder, texts, limit, "cpu")
    assert hidden.shape == (2, limit // 75 * 77, 32) and hidden.dtype == text_encoder.dtype


def test_each_chunk_is_encoded_on_its_own(tokenizer, text_encoder):
    texts = [words(170) + " sks", "a short one"]
    ids = chunked_ids(tokenizer, texts, 225)
    assert ids[0, 2 * 77 + 1 + 20].item() == trigger_id(tokenizer)  # token 170 opens chunk 3 after 20 others
    assert ids[1, 77:].tolist() == ([BOS] + [EOS] * 76) * 2  # chunks past the text's end are empty
    with torch.no_grad():
        hidden = encode_prompts(tokenizer, text_encoder, texts, 225, "cpu")
        for j in range(3):
            alone = text_encoder(ids[:, j * 77:(j + 1) * 77])[0]
            torch.testing.assert_close(hidden[:, j * 77:(j + 1) * 77], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hidden[0, :77], hidden[0, 154:])  # the third chunk holds other tokens


def test_encoding_at_75_equals_todays(tokenizer, text_encoder):
    with torch.no_grad():
        today = text_encoder(todays_ids(tokenizer, TEXTS))[0]
        assert torch.equal(encode_prompts(tokenizer, text_encoder, TEXTS, 75, "cpu"), today)


def test_gradients_reach_the_text_encoder(tokenizer, text_encoder):
    text_encoder.zero_grad()
    encode_prompts(tokenizer, text_encoder, [words(100) + " sks"], 150, "cpu").square().mean().backward()
    weight = text_encoder.get_input_embeddings().weight
    assert weight.grad is not None and weight.grad[trigger_id(tokenizer)].abs().sum() > 0
    text_encoder.zero_grad()


def test_token_count_and_over_limit(tokenizer):
    texts = [words(10), words(75), words(76), words(150), words(151), ""]
    assert [token_count(tokenizer, t) for t in texts] == [10, 75, 76, 150, 151, 0]
    assert token_count(tokenizer, "a photo of a cat") == 5
    assert over_limit(tokenizer, texts, 75) == [(2, 76), (3, 150), (4, 151)]
    assert over_limit(tokenizer, texts, 150) == [(4, 151)]
    assert over_limit(tokenizer, texts, 225) == []


@pytest.mark.parametrize("bad", [0, 77, 100, 300, 150.0, True])
def test_other_lengths_are_refused_naming_the_field(tokenizer, text_encoder, bad):
    for call in (lambda: chunk_count(bad), lambda: chunked_ids(tokenizer, ["a"], bad),
                 lambda: over_limit(tokenizer, ["a"], bad), lambda: sample_prompt_warnings(tokenizer, [], bad),
                 lambda: encode_prompts(tokenizer, text_encoder, ["a"], bad, "cpu")):
        with pytest.raises(ValueError, match=r"training\.max_token_length"):
            call()


def sample(pipe, prompt, limit=75):
    return generate(pipe, prompt, "cpu", output_type="np", max_token_length=limit)


def sample_from_strings(pipe, prompt):
    """What generate did before long prompts: the strings straight to diffusers, which cuts them at 77."""
    with torch.no_grad():
        return pipe(prompt=prompt.prompt, negative_prompt=prompt.negative_prompt or None, width=prompt.width,
                    height=prompt.height, num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale,
                    generator=torch.Generator("cpu").manual_seed(prompt.seed), output_type="np").images[0]


def tiny_prompt(text, negative="", cfg=7.0):
    return SamplePrompt(prompt=text, negative_prompt=negative, seed=3, steps=2, width=32, height=32, cfg_scale=cfg)


@pytest.mark.parametrize("negative,cfg", [("", 7.0), ("blurry, dark", 5.0), ("", 1.0)])
def test_a_sample_at_75_is_the_image_diffusers_makes_from_the_strings(pipe, negative, cfg):
    for text in ("a red square", words(90) + " sks"):
        prompt = tiny_prompt(text, negative, cfg)
        assert np.array_equal(sample(pipe, prompt), sample_from_strings(pipe, prompt))


def test_a_trigger_word_past_token_77_is_used_at_150(pipe):
    sks, cat = tiny_prompt(words(80) + " sks"), tiny_prompt(words(80) + " cat")
    assert np.array_equal(sample(pipe, sks, 75), sample(pipe, cat, 75))  # both cut before the last word
    assert not np.array_equal(sample(pipe, sks, 150), sample(pipe, cat, 150))
    assert not np.array_equal(sample(pipe, sks, 150), sample(pipe, sks, 75))


def test_short_prompts_sample_alike_at_every_limit_and_pad_to_the_longer_text(pipe):
    short = tiny_prompt("a red square")
    assert np.array_equal(sample(pipe, short, 75), sample(pipe, short, 225))
    cond, uncond = sample_embeds(pipe, tiny_prompt("a red square", words(160)), "cpu", 225)
    assert cond.shape == uncond.shape == (1, 231, 32)
    cond, uncond = sample_embeds(pipe, tiny_prompt(words(100), cfg=1.0), "cpu", 225)
    assert cond.shape == (1, 154, 32) and uncond is None


def test_sampling_under_autocast(pipe):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = generate(pipe, tiny_prompt(words(100) + " sks"), "cpu", max_token_length=150)
    assert image.size == (32, 32)


def test_sample_prompt_warnings_name_each_prompt_over_the_limit(tokenizer):
    prompts = [SamplePrompt(prompt="a red square"), SamplePrompt(prompt=words(103) + " sks"),
               SamplePrompt(prompt="a blue circle", negative_prompt=words(240, "blurry"))]
    warnings = sample_prompt_warnings(tokenizer, prompts, 75)
    assert len(warnings) == 2 and not any("prompts.0" in w for w in warnings)
    long, negative = warnings
    assert "sampling.prompts.1" in long and '"photo photo photo photo photo photo ..."' in long
    assert "104" in long and "75" in long and "ignored" in long and "training.max_token_length to 150" in long
    assert "sampling.prompts.2" in negative and "negative prompt" in negative and "240" in negative
    assert "shorten" in negative
    assert sample_prompt_warnings(tokenizer, prompts, 150) == [warnings[1].replace("limit of 75", "limit of 150")
                                                              .replace("past token 75", "past token 150")]
    assert sample_prompt_warnings(tokenizer, prompts[:1], 75) == []
