"""Captions: where they come from (txt, file name, single) and their augmentations. No torch, no UI here."""
from __future__ import annotations

import codecs
import locale
import os
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

TXT_SOURCES = ("txt", "txt_or_filename")


# ---- reading caption files: every common text encoding ---------------------------------------------------

# How a caption file's bytes become text (read_caption_file), in this order:
#  1. a byte-order mark says it: UTF-8, UTF-16 LE/BE, UTF-32 LE/BE (Notepad's "Unicode" is UTF-16 LE + BOM);
#  2. valid UTF-8 is UTF-8 (plain ASCII included) unless it holds control characters (UTF-16 without a BOM is
#     valid UTF-8 full of NULs);
#  3. otherwise charset-normalizer proposes readings (legacy code pages: cp1252, cp1251, shift_jis, gb18030...)
#     and the confidence rule below picks one or refuses. Code pages no captioning tool writes (EBCDIC, DOS,
#     classic Mac OS, UTF-7: _NOT_CAPTIONS) are not proposed: their readings of short accented text tie with
#     the real one ("a café" is also "a cafķ" in DOS Baltic) and would make good files ambiguous.
# Confidence rule, on charset-normalizer's own measures: `chaos` (share of the text that looks like mojibake,
# 0..1) and `coherence` (how well the letters fit a known language, 0..1; 0 when the text is too short to tell).
#  - a reading is dropped when its chaos is over MAX_CHAOS, when it holds control characters, or when it is
#    UTF-16/32 without a BOM and neither recognised as a language (coherence >= MIN_WIDE_COHERENCE) nor the
#    only reading charset-normalizer has;
#  - when charset-normalizer ranks an East Asian multi-byte code page first (Shift-JIS, GB18030, Big5...), its
#    reading is taken: the rules below are for the single-byte code pages, and they would prefer a one-block
#    Hangul misreading of Japanese text over kanji and kana;
#  - a reading is also dropped when a word in it mixes alphabets (Latin, Greek, Cyrillic, Hebrew...: "cafй")
#    while another reading does not;
#  - then, in this order, the readings that use the fewest Unicode blocks ("café, naïve, déjà vu" is Basic
#    Latin + Latin-1 Supplement in cp1252, and adds Latin Extended-A as "naļve, déją" in cp1257), the least
#    chaos and the most coherence (each within charset-normalizer's own tie margins: chaos 0.005, coherence
#    0.02), and last one in this computer's own ANSI code page (LOCAL_CODE_PAGE, e.g. cp1252 on a Western
#    Windows). Blocks come first because chaos and coherence cannot tell the Latin code pages apart on a
#    caption ("lumière" scores less coherent than "lumičre"); the price is that Central European and Turkish
#    text can read as cp1252 ("Győr" as "Gyõr") when it makes sense there too;
#  - if the candidates left still read as different texts and all of them are Latin script, Windows-1252 (the
#    code page Western Windows and its Notepad write) wins when it is one of them: "café, naïve" is read as
#    written, not refused;
#  - otherwise, if they still read as different texts, the file is ambiguous: refused, naming two readings
#    (a few words of Cyrillic or Greek in a code page other than this computer's, say). Guessing a legacy code
#    page is never certain: CaptionFile.encoding says which one was used, and the statistics and the run log
#    list every caption read that way. UTF-16/32 without a BOM counts only when charset-normalizer recognises
#    a language in it (random bytes often decode as UTF-16).
# Code pages that read the bytes as the same text are one reading: it is reported (and rewritten) as this
# computer's code page, else cp1252, when that is one of them, else as charset-normalizer names it.
MAX_CHAOS = 0.1
MIN_WIDE_COHERENCE = 0.2
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),  # before UTF-16: FF FE 00 00
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0/C1 controls but tab, LF, CR
UTF8_ADVICE = "save it as UTF-8 in a text editor"
_NOT_CAPTIONS = ["cp037", "cp273", "cp424", "cp500", "cp875", "cp1026", "cp1140",  # EBCDIC
                 "cp437", "cp720", "cp737", "cp775", "cp850", "cp852", "cp855", "cp856", "cp857", "cp858",
                 "cp860", "cp861", "cp862", "cp863", "cp864", "cp865", "cp866", "cp869", "cp1006", "cp1125",
                 "mac_cyrillic", "mac_greek", "mac_iceland", "mac_latin2", "mac_roman", "mac_turkish",
                 "hp_roman8", "utf_7"]


def _local_code_page() -> str | None:
    """This computer's legacy ("ANSI") code page, e.g. cp1252 or cp1251 on Windows; None where it is UTF-8."""
    name = codecs.lookup(locale.getpreferredencoding(False) or "utf-8").name
    return None if name in ("utf-8", "ascii") else name


LOCAL_CODE_PAGE = _local_code_page()


@dataclass(frozen=True)
class CaptionFile:
    """What one caption .txt holds.

    exists: the file is there. lines: its non-empty stripped lines, in order; () when missing, empty or
    undecodable. encoding: the Python codec its text was read with (after the BOM: "utf-8", "utf-16-le",
    "cp1252", ...), None when missing or undecodable. problem: why it cannot be used ("cannot read: ...",
    "cannot tell its text encoding (...)"), None when fine. bom: the byte-order mark it starts with (b"" for
    none); newline: its line end ("\\r\\n", "\\r" or "\\n"); text: its whole decoded text (BOM removed)."""
    exists: bool
    lines: tuple[str, ...]
    encoding: str | None
    problem: str | None
    bom: bytes = b""
    newline: str = "\n"
    text: str = ""


def caption_file_for(image: Path) -> Path:
    """The caption file of an image: the same name with .txt (photo.jpg -> photo.txt)."""
    return Path(image).with_suffix(".txt")


def _control_problem(text: str, encoding: str) -> str | None:
    bad = _CONTROL.search(text)
    if bad is None:
        return None
    return (f"cannot tell its text encoding (read as {encoding} it holds the control character "
            f"U+{ord(bad.group()):04X}: not a text file?); {UTF8_ADVICE}")


def _is_wide(encoding: str) -> bool:
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


ALPHABETS = ("LATIN", "GREEK", "CYRILLIC", "HEBREW", "ARABIC", "THAI", "ARMENIAN", "GEORGIAN")


def _script(ch: str) -> str | None:
    """The alphabet of a letter (LATIN, CYRILLIC ...), None for others (CJK, kana: they mix with Latin in real
    captions, as in "Tシャツ")."""
    script = unicodedata.name(ch, "").split(" ")[0]
    return script if script in ALPHABETS else None


def _mixed_script_words(text: str) -> bool:
    """Whether a word mixes alphabets ("cafй", "naпve", "cafי"): the mark of a wrong code page."""
    for word in re.findall(r"\w+", text):
        scripts = {_script(ch) for ch in word if ch.isalpha()} - {None}
        if len(scripts) > 1:
            return True
    return False


def _latin(text: str) -> bool:
    """Whether every letter of `text` is a Latin one (Basic Latin to Latin Extended-B): readings that differ only
    in accented Latin letters are the Western code pages' usual ambiguity."""
    return all(ord(ch) < 0x250 or not ch.isalpha() for ch in text)


def _blocks(match) -> int:
    """How many Unicode blocks a reading's text uses (Basic Latin, Latin-1 Supplement, Cyrillic...)."""
    return len([name for name in match.alphabets if name != "Control character"])  # CR, LF: in every reading


def _legacy_reading(data: bytes) -> tuple[str, str]:
    """(text, codec) of bytes that are not UTF-8, by charset-normalizer and the confidence rule above;
    raises ValueError with the problem when no reading is confident."""
    from charset_normalizer import from_bytes
    from charset_normalizer.utils import is_multi_byte_encoding
    matches = list(from_bytes(data, cp_exclusion=_NOT_CAPTIONS))
    readings = [m for m in matches if m.chaos <= MAX_CHAOS and not _CONTROL.search(str(m))
                and (not _is_wide(m.encoding) or m.coherence >= MIN_WIDE_COHERENCE)]
    if readings and is_multi_byte_encoding(readings[0].encoding) and not _is_wide(readings[0].encoding):
        return str(readings[0]), codecs.lookup(readings[0].encoding).name  # East Asian: charset-normalizer's best
    readings = [m for m in readings if not is_multi_byte_encoding(m.encoding) or _is_wide(m.encoding)]
    plain = [m for m in readings if not _mixed_script_words(str(m))]
    readings = plain or readings
    if not readings:
        raise ValueError(f"cannot tell its text encoding (it is not UTF-8 and no code page reads it as "
                         f"text); {UTF8_ADVICE}")
    fewest = min(_blocks(m) for m in readings)
    tied = [m for m in readings if _blocks(m) == fewest]
    least_chaos = min(m.chaos for m in tied)
    tied = [m for m in tied if m.chaos < least_chaos + 0.005]  # charset-normalizer's own tie margins
    most_coherent = max(m.coherence for m in tied)
    tied = [m for m in tied if m.coherence >= most_coherent - 0.02]
    local = [m for m in tied if LOCAL_CODE_PAGE in (codecs.lookup(c).name for c in m.could_be_from_charset)]
    tied = local or tied
    texts = {}
    for m in tied:
        texts.setdefault(str(m), m.encoding)
    western = [m for m in tied if "cp1252" in (codecs.lookup(c).name for c in (m.encoding, *m.could_be_from_charset))]
    if len(texts) > 1 and western and all(_latin(text) for text in texts):
        tied, texts = western[:1], {str(western[0]): western[0].encoding}  # Latin-script readings: Windows' own
    if len(texts) > 1:
        two = " or ".join(f"“{t[:40]}” ({enc})" for t, enc in list(texts.items())[:2])
        raise ValueError(f"cannot tell its text encoding (it reads as {two}); {UTF8_ADVICE}")
    same_text = [codecs.lookup(c).name for c in (tied[0].encoding, *tied[0].could_be_from_charset)]
    codec = next((c for c in (LOCAL_CODE_PAGE, "cp1252") if c in same_text), same_text[0])
    return str(tied[0]), codec


def decode_caption_bytes(data: bytes) -> tuple[str, str, bytes]:
    """(text, codec, bom) of a caption file's bytes: BOM first, then strict UTF-8, then legacy code pages
    (see the rule above). Raises ValueError naming the problem when no decoding is confident."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(codec)
            except UnicodeDecodeError as e:
                raise ValueError(f"cannot tell its text encoding (it starts with a {codec} byte-order mark but "
                                 f"is not {codec} text: {e.reason} at byte {e.start + len(bom)}); "
                                 f"{UTF8_ADVICE}") from None
            problem = _control_problem(text, codec)
            if problem:
                raise ValueError(problem)
            return text, codec, bom
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        utf8_problem = None
    else:
        utf8_problem = _control_problem(text, "UTF-8")
        if utf8_problem is None:
            return text, "utf-8", b""
    try:
        text, codec = _legacy_reading(data)
    except ValueError:
        if utf8_problem:  # valid UTF-8 but for its control characters: say that, not "not UTF-8"
            raise ValueError(utf8_problem) from None
        raise
    return text, codec, b""


def read_caption_file(txt: Path) -> CaptionFile:
    """What the caption file `txt` holds, decoded as its author wrote it (decode_caption_bytes); CRLF, CR and
    LF line ends all work. Never raises for a missing, unreadable or undecodable file: see `problem`."""
    try:
        data = Path(txt).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return CaptionFile(False, (), None, None)
    except OSError as e:
        return CaptionFile(True, (), None, f"cannot read: {e.strerror or e}")
    try:
        text, codec, bom = decode_caption_bytes(data)
    except ValueError as e:
        return CaptionFile(True, (), None, str(e))
    newline = "\r\n" if "\r\n" in text else "\r" if "\r" in text else "\n"
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    return CaptionFile(True, lines, codec, None, bom, newline, text)


def read_txt_lines(image: Path) -> list[str] | None:
    """The non-empty lines of image.txt beside the image (read_caption_file); None when there is no such file,
    it is empty, or it cannot be read or decoded (read_caption_file says why)."""
    return list(read_caption_file(caption_file_for(image)).lines) or None


def filename_caption(image: Path) -> str:
    return " ".join(image.stem.replace("_", " ").split())


@dataclass(frozen=True)
class ImageCaptions:
    """The captions one image trains with, before augmentation, and how they were found.

    lines: every caption it can get (one is picked per use); has_txt: they came from its own .txt;
    missing: the concept reads .txt captions and this image has none (no file, or an empty one), so
    `concept.missing_caption` decided the lines; problem: its .txt exists but cannot be decoded (the reason);
    skip: the image is left out of training (problem set, or missing with missing_caption "skip")."""
    lines: tuple[str, ...]
    has_txt: bool = False
    missing: bool = False
    problem: str | None = None
    skip: bool = False
    guessed_encoding: str | None = None  # its .txt has no BOM and is not UTF-8: its encoding was detected

    @property
    def guessed(self) -> bool:
        """Whether the caption's encoding was detected (no BOM, not UTF-8), so a misreading is possible."""
        return self.guessed_encoding is not None


def caption_lines(image: Path, concept) -> ImageCaptions:
    """The captions of `image` under the concept's caption_source and missing_caption settings.

    txt: the .txt beside the image (read_caption_file: any common text encoding); without a usable one,
    missing_caption says what to do: concept_caption (the concept's caption, possibly empty), filename,
    skip, or refuse (the lines are the concept's caption and data.collect_items refuses to start).
    txt_or_filename: the .txt, else the file name. filename / single: the file name / the concept's caption.
    A .txt that cannot be decoded is never trained on: `problem` says why and `skip` is set."""
    source = concept.caption_source
    if source == "single":
        return ImageCaptions((concept.caption.strip(),))
    if source == "filename":
        return ImageCaptions((filename_caption(image),))
    found = read_caption_file(image.with_suffix(".txt"))
    if found.problem:
        return ImageCaptions((), problem=found.problem, skip=True)
    if found.lines:
        guess = found.encoding if found.encoding != "utf-8" and not found.bom else None  # a detected encoding
        return ImageCaptions(tuple(found.lines), has_txt=True, guessed_encoding=guess)
    if source == "txt_or_filename":
        return ImageCaptions((filename_caption(image),))
    action = concept.missing_caption
    if action == "filename":
        return ImageCaptions((filename_caption(image),), missing=True)
    return ImageCaptions((concept.caption.strip(),), missing=True, skip=action == "skip")


def captions_vary(concept) -> bool:
    """True when augmentations make caption text unpredictable (so embeddings cannot all be cached up front)."""
    return concept.shuffle_tags or concept.tag_dropout > 0


def augment_caption(text: str, concept, rng: random.Random) -> str:
    """Tag shuffle (the first keep_tags stay in place), tag dropout (never the kept ones), caption dropout.
    The rng draws happen in a fixed order whatever the settings, so turning one on does not reshuffle others."""
    drop_all = rng.random()
    if concept.shuffle_tags or concept.tag_dropout > 0:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        keep, rest = tags[:concept.keep_tags], tags[concept.keep_tags:]
        if concept.shuffle_tags:
            rng.shuffle(rest)
        if concept.tag_dropout > 0:
            rest = [t for t in rest if rng.random() >= concept.tag_dropout]
        text = ", ".join(keep + rest)
    if drop_all < concept.caption_dropout:
        return ""
    return text


def pick_caption(lines: tuple[str, ...], concept, rng: random.Random) -> str:
    """One use's caption: a random line, then the caption augmentations."""
    line = lines[0] if len(lines) == 1 else lines[rng.randrange(len(lines))]
    return augment_caption(line, concept, rng)


def fixed_captions(lines: tuple[str, ...], concept) -> set[str]:
    """Every caption an image can be trained with when the caption text does not vary (see captions_vary)."""
    out = set(lines)
    if concept.caption_dropout > 0:
        out.add("")
    return out


# ---- editing captions (the window's caption editor, generate-data) --------------------------------------

def _write_through_link(path: Path, data: bytes) -> None:
    """fields.atomic_write_bytes where a symlinked caption points (the link itself stays a link)."""
    from trainer.fields import atomic_write_bytes
    atomic_write_bytes(Path(os.path.realpath(path)), data)


def encode_caption(old: CaptionFile, text: str) -> tuple[bytes, str | None]:
    """`text` (stripped, one caption per line) as the bytes of a caption file that was `old`: the same
    encoding, BOM and line ends, so editing a word does not re-encode the user's file (a new file: UTF-8, LF).
    When that encoding cannot hold the text (a cp1252 file given "→"), the bytes are UTF-8 and the note
    says so; otherwise the note is None. Refuses (InputError) a file that cannot be decoded."""
    if old.problem:
        from trainer.errors import InputError
        raise InputError(f"{old.problem}; it is left as it is")
    body = old.newline.join(text.strip().splitlines()) + old.newline
    codec = old.encoding or "utf-8"
    try:
        return old.bom + body.encode(codec), None
    except UnicodeEncodeError as e:
        return body.encode("utf-8"), (f"written as UTF-8: its {codec} encoding cannot hold "
                                      f"“{e.object[e.start:e.end]}”")


def save_caption(image: Path, text: str) -> tuple[Path, str | None]:
    """Write the caption file of `image` atomically (a crash leaves the old caption or the new one), keeping
    the file's own encoding, BOM and line ends (encode_caption). Returns the file and encode_caption's note.
    Raises InputError, naming the file, when the file there cannot be read or decoded (it is never
    replaced), and OSError when it cannot be written."""
    txt = caption_file_for(image)
    old = read_caption_file(txt)
    try:
        data, note = encode_caption(old, text)
    except ValueError as e:
        raise type(e)(f"{txt}: {e}") from None
    _write_through_link(txt, data)
    return txt, note


def write_caption(image: Path, text: str) -> Path:
    """Write image.txt beside the image atomically, in the file's own encoding (see save_caption)."""
    return save_caption(image, text)[0]


def replace_in_caption(text: str, find: str, replace: str, whole_word: bool = True) -> str:
    """`find` replaced by `replace` (case-insensitive; whole words only unless whole_word is False); the
    doubled spaces and empty comma tags a removal leaves are tidied away."""
    import re
    if not find.strip():
        return text
    pattern = re.escape(find.strip())
    if whole_word:
        pattern = rf"(?<!\w){pattern}(?!\w)"
    out = re.sub(pattern, lambda _: replace, text, flags=re.IGNORECASE)
    if out == text:
        return text
    out = re.sub(r"[ \t]+", " ", out)
    out = re.sub(r"\s+,", ",", out)
    out = re.sub(r",(\s*,)+", ",", out)
    return out.strip().strip(",").strip()


class CaptionChanges(list):
    """find_replace_captions' result: the images whose caption changed (or would, in a dry run). `skipped`
    holds (txt, reason) of caption files left alone because they cannot be read or decoded; `notes` holds
    (txt, note) of files written as UTF-8 because their own encoding cannot hold the new text."""
    skipped: list
    notes: list


def find_replace_captions(images: list[Path], find: str, replace: str, whole_word: bool = True,
                          dry_run: bool = False) -> CaptionChanges:
    """Replace `find` in the txt captions of `images` (each line); returns the images whose caption changed
    (a list, with `skipped` and `notes`: see CaptionChanges). Files are read with read_caption_file; each
    changed file is rewritten atomically in its own encoding, BOM and line ends; a file that cannot be read
    or decoded is never rewritten. dry_run only reports what would change."""
    changed = CaptionChanges()
    changed.skipped, changed.notes = [], []
    for image in images:
        txt = caption_file_for(image)
        old = read_caption_file(txt)
        if old.problem:
            changed.skipped.append((txt, old.problem))
        if not old.exists or old.problem:
            continue
        lines = old.text.strip().splitlines()
        new = [replace_in_caption(line, find, replace, whole_word) for line in lines]
        if new == lines:
            continue
        changed.append(Path(image))
        data, note = encode_caption(old, "\n".join(new))
        if note:
            changed.notes.append((txt, note))
        if not dry_run:
            _write_through_link(txt, data)
    return changed


def strip_phrases(caption: str, phrases: str) -> str:
    """`caption` with each comma-separated phrase of `phrases` removed (whole words, case-insensitive)."""
    for phrase in phrases.split(","):
        caption = replace_in_caption(caption, phrase, "")
    return caption
