"""Caption editing: atomic writes, whole-word find/replace across a concept, phrase stripping."""
from __future__ import annotations

from PIL import Image

from trainer.data.captions import (find_replace_captions, read_txt_lines, replace_in_caption, strip_phrases,
                                   write_caption)


def test_replace_whole_words_case_insensitive_and_tidy():
    assert replace_in_caption("a Cat and a cathedral", "cat", "dog") == "a dog and a cathedral"
    assert replace_in_caption("a cat and a cathedral", "cat", "dog", whole_word=False) == "a dog and a doghedral"
    assert replace_in_caption("mnstr, ink style, a golem", "ink style", "") == "mnstr, a golem"
    assert replace_in_caption("a golem", "", "x") == "a golem"
    assert strip_phrases("mnstr, a red dragon, ink style", "ink style, red") == "mnstr, a dragon"


def test_find_replace_across_a_concept(tmp_path):
    images = []
    for i, text in enumerate(["a red dragon\nred scales", "a blue slime", "a Red golem"]):
        image = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8)).save(image)
        write_caption(image, text)
        images.append(image)
    Image.new("RGB", (8, 8)).save(tmp_path / "nocaption.png")
    images.append(tmp_path / "nocaption.png")
    before = {p: p.with_suffix(".txt").read_text() for p in images[:3]}
    assert find_replace_captions(images, "red", "crimson", dry_run=True) == [images[0], images[2]]
    assert {p: p.with_suffix(".txt").read_text() for p in images[:3]} == before  # a dry run changes nothing
    assert find_replace_captions(images, "red", "crimson") == [images[0], images[2]]
    assert read_txt_lines(images[0]) == ["a crimson dragon", "crimson scales"]
    assert read_txt_lines(images[2]) == ["a crimson golem"]
    assert images[1].with_suffix(".txt").read_text() == before[images[1]]
    assert not (tmp_path / "nocaption.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
