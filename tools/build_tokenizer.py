"""Build the bundled SD 1.5 CLIP tokenizer files from OpenAI's BPE merges file (as shipped in open_clip_torch)."""
from __future__ import annotations

import argparse
import gzip
import io
import json
import pathlib
import sys
import zipfile

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "trainer" / "assets" / "sd15" / "tokenizer"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP keeps: 48894 (OpenAI CLIP SimpleTokenizer)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable unicode character table (256 entries, in CLIP's order)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def read_bpe_lines(source: pathlib.Path) -> list[str]:
    """The lines of bpe_simple_vocab_16e6.txt, from the .gz itself or from inside the open_clip wheel."""
    if source.suffix == ".whl" or zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read(BPE_MEMBER)
    else:
        raw = source.read_bytes()
    return gzip.GzipFile(fileobj=io.BytesIO(raw)).read().decode("utf-8").split("\n")


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Byte characters, the same with '</w>', every merge joined, then the two special tokens: 49408 entries."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def special_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def tokenizer_config() -> dict:
    """SD 1.5's tokenizer_config.json (runwayml/stable-diffusion-v1-5), without its local file path."""
    def added(content: str) -> dict:
        return {"__type": "AddedToken", **special_token(content)}
    return {
        "add_prefix_space": False,
        "bos_token": added(BOS),
        "do_lower_case": True,
        "eos_token": added(EOS),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added(EOS),
    }


def special_tokens_map() -> dict:
    return {"bos_token": special_token(BOS), "eos_token": special_token(EOS), "pad_token": EOS,
            "unk_token": special_token(EOS)}


def build(source: pathlib.Path, out_dir: pathlib.Path) -> None:
    lines = read_bpe_lines(source)
    merge_lines = lines[1:NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in merge_lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"{source}: unexpected BPE file ({len(merges)} merges)")
    vocab = build_vocab(merges)
    if len(vocab) != 49408:
        raise SystemExit(f"vocab has {len(vocab)} entries, expected 49408")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    for name, data in (("tokenizer_config.json", tokenizer_config()), ("special_tokens_map.json", special_tokens_map())):
        (out_dir / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_dir} ({len(vocab)} tokens, {len(merges)} merges)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=pathlib.Path, help="open_clip_torch wheel, or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output tokenizer folder")
    args = parser.parse_args(argv)
    build(args.source, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
