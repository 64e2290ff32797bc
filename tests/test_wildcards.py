"""Prompt templates: inline choices, nesting, wildcard files, seeded random expansion, exact counts."""
from __future__ import annotations

import random

import pytest

from trainer.data.wildcards import Wildcards, WildcardError, expand_all, expand_random


def test_inline_choices_expand_to_every_combination_in_order():
    out = expand_all("a {red|green|purple} {dragon|slime|golem}, {watercolor|ink} style")
    assert len(out) == 18 and len(set(out)) == 18
    assert out[:3] == ["a red dragon, watercolor style", "a red dragon, ink style", "a red slime, watercolor style"]
    assert out[-1] == "a purple golem, ink style"


def test_nested_choices_and_empty_options():
    assert expand_all("a {big {red|blue}|small} cat") == ["a big red cat", "a big blue cat", "a small cat"]
    assert expand_all("a cat{|, ink style}") == ["a cat", "a cat, ink style"]
    assert expand_all("{a|{b|{c|d}}}") == ["a", "b", "c", "d"]


def test_wildcard_files_one_option_per_line(tmp_path):
    (tmp_path / "monster.txt").write_text("dragon\n# a comment\n\n  slime  \n{fire|ice} golem\n")
    (tmp_path / "style.txt").write_text("watercolor\n__medium__\n")
    (tmp_path / "medium.txt").write_text("ink\n")
    wildcards = Wildcards(tmp_path)
    out = expand_all("a __monster__, __style__", wildcards)
    assert out == ["a dragon, watercolor", "a dragon, ink", "a slime, watercolor", "a slime, ink",
                   "a fire golem, watercolor", "a fire golem, ink", "a ice golem, watercolor", "a ice golem, ink"]


def test_random_expansion_is_seeded_and_covers_the_options(tmp_path):
    (tmp_path / "monster.txt").write_text("dragon\nslime\ngolem\n")
    template = "a {red|green} __monster__"
    first = [expand_random(template, random.Random(7), Wildcards(tmp_path)) for _ in range(1)]
    rng_a, rng_b = random.Random(7), random.Random(7)
    a = [expand_random(template, rng_a, Wildcards(tmp_path)) for _ in range(60)]
    b = [expand_random(template, rng_b, Wildcards(tmp_path)) for _ in range(60)]
    assert a == b and a[0] == first[0]
    assert set(a) == set(expand_all(template, Wildcards(tmp_path)))  # 60 draws reach all 6
    c = [expand_random(template, random.Random(8), Wildcards(tmp_path)) for _ in range(60)]
    assert c != a


@pytest.mark.parametrize("template, reason", [
    ("a {red|blue", "never closed"), ("a red} cat", "unexpected '}'"), ("a | b", "unexpected '|'"),
    ("a __nothing__", "no wildcard file")])
def test_bad_templates_say_what_is_wrong(template, reason, tmp_path):
    with pytest.raises(WildcardError, match=reason):
        expand_all(template, Wildcards(tmp_path))


def test_self_referencing_wildcard_file_is_caught(tmp_path):
    (tmp_path / "loop.txt").write_text("x __loop__\n")
    with pytest.raises(WildcardError, match="nest deeper"):
        expand_random("__loop__", random.Random(0), Wildcards(tmp_path))


def test_too_many_expansions_is_refused():
    with pytest.raises(WildcardError, match="more than 100"):
        expand_all("{a|b|c|d|e}{a|b|c|d|e}{a|b|c|d|e}", limit=100)
