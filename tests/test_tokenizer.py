"""The bundled SD 1.5 CLIP tokenizer: built from OpenAI's BPE merges, it encodes like the real one."""
import json
import pathlib
import subprocess
import sys

import pytest
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).parents[1]
TOKENIZER_DIR = ROOT / "trainer" / "assets" / "sd15" / "tokenizer"
OPEN_CLIP_WHEEL = pathlib.Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


def test_encodes_like_sd15(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.vocab_size == 49408


def test_special_tokens_and_padding_like_sd15(tokenizer):
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", 49406)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 49407)
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.model_max_length == 77
    ids = tokenizer("A Photo of a CAT", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and set(ids[7:]) == {49407}
    long_ids = tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long_ids) == 77 and long_ids[0] == 49406 and long_ids[-1] == 49407


def test_config_files_match_sd15():
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "CLIPTokenizer" and config["model_max_length"] == 77
    assert config["pad_token"] == "<|endoftext|>" and config["do_lower_case"] is True
    special = json.loads((TOKENIZER_DIR / "special_tokens_map.json").read_text())
    assert special["bos_token"]["content"] == "<|startoftext|>" and special["unk_token"]["content"] == "<|endoftext|>"
    assert (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


@pytest.mark.skipif(not OPEN_CLIP_WHEEL.exists(), reason="the open_clip_torch wheel is not on this machine")
def test_build_script_reproduces_the_bundled_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_tokenizer.py"), str(OPEN_CLIP_WHEEL),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
