"""Prompt templates with wildcards: {a|b|c} (nested), __name__ (a line of name.txt). No UI here.

A template parses into a tree of alternatives; `expand_all` lists every expansion in order and `expand_random`
draws one with a random.Random, so a seed gives the same prompts every time.
"""
from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

MAX_EXPANSIONS = 100_000
MAX_DEPTH = 20  # wildcard files that name each other nest at most this deep (catches cycles)
NAME = re.compile(r"__([A-Za-z0-9_\-/]+?)__")


class WildcardError(ValueError):
    """A template that cannot be expanded; the message names the template and the place."""


class Wildcards:
    """Options of __name__ wildcards, read lazily from `folder`/name.txt (or given directly as lists)."""

    def __init__(self, folder: str | Path | None = None, options: dict[str, list[str]] | None = None):
        self.folder = Path(folder).expanduser() if folder else None
        self._options = dict(options or {})

    def options(self, name: str) -> list[str]:
        if name not in self._options:
            path = self.folder / f"{name}.txt" if self.folder else None
            if path is None or not path.is_file():
                where = f"{path}" if path else "no wildcard folder is set"
                raise WildcardError(f"__{name}__: no wildcard file ({where})")
            lines = path.read_text(encoding="utf-8").splitlines()
            self._options[name] = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            if not self._options[name]:
                raise WildcardError(f"__{name}__: {path} has no options")
        return self._options[name]


# A parsed template is a sequence of parts: str (literal), list[sequence] (a choice), or ("file", name).

def parse(template: str) -> list:
    parts, pos = _parse_sequence(template, 0, top=True)
    return parts


def _parse_sequence(text: str, pos: int, top: bool) -> tuple[list, int]:
    """Parse until '|' or '}' (inside braces) or the end; returns the parts and the position reached."""
    parts, literal = [], []
    while pos < len(text):
        ch = text[pos]
        if ch == "{":
            if literal:
                parts.append("".join(literal))
                literal = []
            options, pos = _parse_choice(text, pos + 1)
            parts.append(options)
            continue
        if ch in "|}":
            if top:
                raise WildcardError(f"{text!r}: unexpected {ch!r} at position {pos} (outside braces)")
            break
        match = NAME.match(text, pos)
        if match:
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(("file", match.group(1)))
            pos = match.end()
            continue
        literal.append(ch)
        pos += 1
    if literal:
        parts.append("".join(literal))
    return parts, pos


def _parse_choice(text: str, pos: int) -> tuple[list, int]:
    """Parse the options of '{...}' starting after the brace; returns them and the position after '}'."""
    start, options = pos - 1, []
    while True:
        seq, pos = _parse_sequence(text, pos, top=False)
        options.append(seq)
        if pos >= len(text):
            raise WildcardError(f"{text!r}: the brace at position {start} is never closed")
        if text[pos] == "}":
            return options, pos + 1
        pos += 1  # past '|'


def _tidy(text: str) -> str:
    """Collapse the doubled spaces and stray ', ,' that empty options leave."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip().strip(",").strip()


def _all(parts: list, wildcards: Wildcards, depth: int):
    """Every expansion of a parsed sequence, in order (a generator of strings)."""
    if depth > MAX_DEPTH:
        raise WildcardError(f"wildcards nest deeper than {MAX_DEPTH} levels (a file that names itself?)")
    pools = []
    for part in parts:
        if isinstance(part, str):
            pools.append((part,))
        elif isinstance(part, tuple):
            pools.append(_iter_options([parse(o) for o in wildcards.options(part[1])], wildcards, depth + 1))
        else:
            pools.append(_iter_options(part, wildcards, depth + 1))
    for combo in itertools.product(*[tuple(p) for p in pools]):
        yield "".join(combo)


def _iter_options(options: list, wildcards: Wildcards, depth: int):
    for option in options:
        yield from _all(option, wildcards, depth)


def expand_all(template: str, wildcards: Wildcards | None = None, limit: int = MAX_EXPANSIONS) -> list[str]:
    """Every expansion of `template`, in order (duplicates kept: '{a|a}' gives two)."""
    wildcards = wildcards or Wildcards()
    out = []
    for text in _all(parse(template), wildcards, 0):
        out.append(_tidy(text))
        if len(out) > limit:
            raise WildcardError(f"{template!r}: more than {limit} expansions; use a total image count instead")
    return out


def expand_random(template: str, rng: random.Random, wildcards: Wildcards | None = None) -> str:
    """One expansion of `template`: each choice picks uniformly among its options with `rng`."""
    return _tidy(_pick(parse(template), rng, wildcards or Wildcards(), 0))


def _pick(parts: list, rng: random.Random, wildcards: Wildcards, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise WildcardError(f"wildcards nest deeper than {MAX_DEPTH} levels (a file that names itself?)")
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, tuple):
            out.append(_pick(parse(rng.choice(wildcards.options(part[1]))), rng, wildcards, depth + 1))
        else:
            out.append(_pick(rng.choice(part), rng, wildcards, depth + 1))
    return "".join(out)
