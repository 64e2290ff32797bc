"""Caption files in the encodings people have: UTF-8 (BOM or not, CRLF), UTF-16 with a BOM, legacy code pages;
undecodable files are named and never rewritten; editing keeps a file's own encoding, BOM and line ends."""
from __future__ import annotations

import codecs

import numpy as np
import pytest
from PIL import Image

from trainer.data import captions
from trainer.data.captions import (caption_file_for, find_replace_captions, read_caption_file, read_txt_lines,
                                   save_caption, write_caption)
from trainer.errors import InputError

ACCENTS = "café, naïve"
THREE_LINES = f"{ACCENTS}, a portrait\r\n\r\n  second line, soft light  \nthird line"
WANT = ("café, naïve, a portrait", "second line, soft light", "third line")
CP1252 = "café, naïve, crème brûlée"
CP1251 = "портрет женщины в красном платье, мягкий свет, масляная живопись"


def txt_file(tmp_path, data: bytes, name="img.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, encoding, bom", [
    (THREE_LINES.encode("utf-8"), "utf-8", b""),
    (codecs.BOM_UTF8 + THREE_LINES.encode("utf-8"), "utf-8", codecs.BOM_UTF8),
    (codecs.BOM_UTF16_LE + THREE_LINES.encode("utf-16-le"), "utf-16-le", codecs.BOM_UTF16_LE),
    (codecs.BOM_UTF16_BE + THREE_LINES.encode("utf-16-be"), "utf-16-be", codecs.BOM_UTF16_BE),
    (codecs.BOM_UTF32_LE + THREE_LINES.encode("utf-32-le"), "utf-32-le", codecs.BOM_UTF32_LE),
], ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf32le-bom"])
def test_unicode_files_read_as_written(tmp_path, data, encoding, bom):
    found = read_caption_file(txt_file(tmp_path, data))
    assert found.exists and found.problem is None
    assert found.lines == WANT  # no U+FFFD, no NUL, no BOM character, blank lines dropped, lines stripped
    assert (found.encoding, found.bom) == (encoding, bom)
    assert not any("\x00" in line or "\ufeff" in line or "\ufffd" in line for line in found.lines)


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_every_line_end_works(tmp_path, newline):
    found = read_caption_file(txt_file(tmp_path, newline.join(["one", "two", ""]).encode()))
    assert found.lines == ("one", "two") and found.newline == newline


def test_windows_1252_caption(tmp_path):
    found = read_caption_file(txt_file(tmp_path, CP1252.encode("cp1252")))
    assert found.problem is None and found.lines == (CP1252,) and found.encoding == "cp1252"
    long = f"{CP1252}, a red hat, déjà vu\nune femme élégante assise dans un café parisien, lumière douce, été"
    found = read_caption_file(txt_file(tmp_path, long.encode("cp1252").replace(b"\n", b"\r\n")))
    assert "\n".join(found.lines) == long and found.encoding == "cp1252" and found.newline == "\r\n"
    found = read_caption_file(txt_file(tmp_path, "a woman in a café, soft light, 35mm".encode("cp1252")))
    assert found.lines == ("a woman in a café, soft light, 35mm",)  # not "cafй" (cp1251): less chaos


def test_short_western_captions_read_as_windows_1252_on_any_computer(tmp_path, monkeypatch):
    """"café" and "naïve" in cp1252 are a few bytes that other code pages read as text too: "cafй" (cp1251) and
    "cafי" (cp1255) mix alphabets in a word and are dropped; the Latin readings left resolve to Windows-1252."""
    monkeypatch.setattr(captions, "LOCAL_CODE_PAGE", None)  # e.g. Linux, macOS: UTF-8
    for word in ("café", "naïve", "crème brûlée"):
        found = read_caption_file(txt_file(tmp_path, word.encode("cp1252"), f"{len(word)}.txt"))
        assert found.problem is None and found.lines == (word,) and found.encoding == "cp1252", word


def test_a_short_caption_in_another_alphabet_is_ambiguous_unless_it_is_this_computers_code_page(tmp_path,
                                                                                                 monkeypatch):
    """"кошка" in cp1251 also reads as "êîøêà" in cp1252: refused, naming both, unless cp1251 is this computer's."""
    path = txt_file(tmp_path, "кошка".encode("cp1251"))
    monkeypatch.setattr(captions, "LOCAL_CODE_PAGE", None)
    found = read_caption_file(path)
    assert found.exists and found.lines == () and found.encoding is None
    assert "cannot tell its text encoding" in found.problem and "кошка" in found.problem
    assert "UTF-8" in found.problem  # what to do
    monkeypatch.setattr(captions, "LOCAL_CODE_PAGE", "cp1251")  # Windows in Russian
    found = read_caption_file(path)
    assert found.problem is None and found.lines == ("кошка",) and found.encoding == "cp1251"


def test_east_asian_code_pages_read_as_charset_normalizer_ranks_them(tmp_path):
    text = "東京の夜景、ネオンサイン、雨上がりの街"
    for codec, want in (("shift_jis", "cp932"), ("euc_jp", "euc_jis_2004"), ("gb18030", "gb18030")):
        found = read_caption_file(txt_file(tmp_path, text.encode(codec), f"{codec}.txt"))
        assert found.lines == (text,) and found.encoding == want, codec


def test_random_bytes_are_not_read_as_utf16_without_a_bom(tmp_path):
    found = read_caption_file(txt_file(tmp_path, bytes.fromhex("5a4d767706f85d86")))
    assert found.problem and not found.lines


def test_cp1251_cyrillic_caption(tmp_path, monkeypatch):
    monkeypatch.setattr(captions, "LOCAL_CODE_PAGE", None)
    found = read_caption_file(txt_file(tmp_path, f"{CP1251}\nвторая строка".encode("cp1251")))
    assert found.problem is None and found.lines == (CP1251, "вторая строка") and found.encoding == "cp1251"
    short = txt_file(tmp_path, "кошка на диване".encode("cp1251"), "short.txt")
    assert "cannot tell its text encoding" in read_caption_file(short).problem
    monkeypatch.setattr(captions, "LOCAL_CODE_PAGE", "cp1251")  # Windows in Russian
    assert read_caption_file(short).lines == ("кошка на диване",)


def test_utf16_without_bom_only_when_charset_normalizer_is_sure(tmp_path):
    text = "a photo of a woman in a red dress, soft light, café\nsecond line of the caption"
    found = read_caption_file(txt_file(tmp_path, text.encode("utf-16-le")))
    assert found.lines == tuple(text.splitlines()) and (found.encoding, found.bom) == ("utf-16-le", b"")
    found = read_caption_file(txt_file(tmp_path, "a cat".encode("utf-16-le"), "short.txt"))  # a\0 \0c\0a\0t\0
    assert found.lines == () and "U+0000" in found.problem


@pytest.mark.parametrize("kind", ["random", "png", "nul"])
def test_undecodable_files_are_named_not_read(tmp_path, kind):
    if kind == "random":
        data = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    elif kind == "png":  # an image saved (or renamed) as .txt
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)).save(tmp_path / "x.png")
        data = (tmp_path / "x.png").read_bytes()
    else:
        data = b"a red dragon\x00\x00\x00"
    found = read_caption_file(txt_file(tmp_path, data))
    assert found.exists and found.lines == () and found.encoding is None
    assert found.problem.startswith("cannot tell its text encoding")
    image = tmp_path / "img.png"
    assert read_txt_lines(image) is None


def test_empty_missing_and_unreadable_files(tmp_path):
    empty = read_caption_file(txt_file(tmp_path, b""))
    assert empty == captions.CaptionFile(True, (), "utf-8", None)
    assert read_txt_lines(tmp_path / "img.png") is None
    assert read_caption_file(txt_file(tmp_path, b"  \r\n\n", "blank.txt")).lines == ()
    missing = read_caption_file(tmp_path / "nothing.txt")
    assert missing == captions.CaptionFile(False, (), None, None)
    (tmp_path / "folder.txt").mkdir()
    unreadable = read_caption_file(tmp_path / "folder.txt")
    assert unreadable.exists and unreadable.lines == () and unreadable.problem.startswith("cannot read:")
    assert caption_file_for(tmp_path / "photo.final.jpg") == tmp_path / "photo.final.txt"


def test_read_txt_lines_keeps_its_contract(tmp_path):
    image = tmp_path / "img.png"
    txt_file(tmp_path, codecs.BOM_UTF16_LE + THREE_LINES.encode("utf-16-le"))
    assert read_txt_lines(image) == list(WANT)


# ---- rewriting ---------------------------------------------------------------------------------------------

def captioned(tmp_path, name: str, data: bytes):
    image = tmp_path / f"{name}.png"
    Image.new("RGB", (8, 8)).save(image)
    caption_file_for(image).write_bytes(data)
    return image


def test_find_replace_keeps_each_files_encoding_bom_and_line_ends(tmp_path):
    legacy = captioned(tmp_path, "legacy", f"{CP1252}, red hat\r\nred scarf\r\n".encode("cp1252"))
    wide = captioned(tmp_path, "wide", codecs.BOM_UTF16_BE + f"{ACCENTS}, red hat\nline two\n".encode("utf-16-be"))
    notepad = captioned(tmp_path, "notepad", codecs.BOM_UTF16_LE + "red hat, café\r\n".encode("utf-16-le"))
    broken = captioned(tmp_path, "broken", b"red\x00\x00\xff\xfe hat")
    before = {p: caption_file_for(p).read_bytes() for p in (legacy, wide, notepad, broken)}
    images = [legacy, wide, notepad, broken, tmp_path / "uncaptioned.png"]

    dry = find_replace_captions(images, "red", "crimson", dry_run=True)
    assert dry == [legacy, wide, notepad] and [t.name for t, _ in dry.skipped] == ["broken.txt"]
    assert {p: caption_file_for(p).read_bytes() for p in before} == before  # a dry run writes nothing

    done = find_replace_captions(images, "red", "crimson")
    assert done == [legacy, wide, notepad] and not done.notes
    assert caption_file_for(legacy).read_bytes() == f"{CP1252}, crimson hat\r\ncrimson scarf\r\n".encode("cp1252")
    assert caption_file_for(wide).read_bytes() == (codecs.BOM_UTF16_BE
                                                   + f"{ACCENTS}, crimson hat\nline two\n".encode("utf-16-be"))
    assert caption_file_for(notepad).read_bytes() == (codecs.BOM_UTF16_LE
                                                      + "crimson hat, café\r\n".encode("utf-16-le"))
    ((skipped, reason),) = done.skipped
    assert skipped == caption_file_for(broken) and "cannot tell its text encoding" in reason
    assert caption_file_for(broken).read_bytes() == before[broken]  # never rewritten
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_replacement_the_code_page_cannot_hold_is_saved_as_utf8_and_said(tmp_path):
    legacy = captioned(tmp_path, "legacy", f"{CP1252}, a red hat".encode("cp1252"))
    done = find_replace_captions([legacy], "red", "赤い")
    ((txt, note),) = done.notes
    assert txt == caption_file_for(legacy) and "UTF-8" in note and "cp1252" in note
    assert caption_file_for(legacy).read_bytes() == f"{CP1252}, a 赤い hat\n".encode("utf-8")


def test_saving_a_caption_keeps_the_encoding_and_refuses_an_undecodable_file(tmp_path):
    wide = captioned(tmp_path, "wide", codecs.BOM_UTF16_LE + "old caption\r\n".encode("utf-16-le"))
    txt, note = save_caption(wide, f"{ACCENTS}\nsecond line")
    assert note is None
    assert txt.read_bytes() == codecs.BOM_UTF16_LE + f"{ACCENTS}\r\nsecond line\r\n".encode("utf-16-le")
    legacy = captioned(tmp_path, "legacy", CP1252.encode("cp1252"))
    write_caption(legacy, f"{CP1252}, déjà vu")
    assert caption_file_for(legacy).read_bytes() == f"{CP1252}, déjà vu\n".encode("cp1252")
    fresh = tmp_path / "fresh.png"
    assert write_caption(fresh, "  new → caption  ").read_bytes() == "new → caption\n".encode("utf-8")
    broken = captioned(tmp_path, "broken", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(InputError, match="broken.txt.*cannot tell its text encoding.*left as it is"):
        save_caption(broken, "a new caption")
    assert caption_file_for(broken).read_bytes() == b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
