"""Captions and prompts longer than CLIP's 77-token window: 75-token chunks, encoded one by one. No UI here.

The convention is A1111's and kohya's for SD 1.x (A1111 modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWords,
kohya sd-scripts library/train_util.py get_input_ids): the text's tokens, without BOS/EOS, are cut into chunks of
75; each chunk becomes BOS + its tokens + EOS padding up to 75 + a closing EOS, 77 ids (SD 1.x pads with EOS, so a
short chunk is BOS, tokens, then EOS to the end, and a chunk past the end of the text is BOS + 76 EOS). Each chunk
goes through the text encoder on its own and the last hidden states are concatenated along the sequence, as A1111
does: 77, 154 or 231 positions (kohya's SD 1.x training keeps only the first BOS and the last EOS state: 227).
Cuts are plain, at 75 tokens, as kohya makes them (A1111 with "comma padding backtrack" 0); tokens past
max_token_length are dropped. At 75 the ids equal `tokenizer(text, padding="max_length", max_length=77,
truncation=True)` exactly, so 75 is what SD 1.5 training always did.

torch is imported inside the functions that need it: token_count and over_limit run in torch-free processes.
"""
from __future__ import annotations

from trainer.config import MAX_TOKEN_LENGTHS

CHUNK = 75          # text tokens per chunk
WINDOW = CHUNK + 2  # ids per chunk with BOS and EOS: CLIP's 77 positions


def chunk_count(max_token_length: int) -> int:
    """Chunks for a max_token_length of 75, 150 or 225 (1, 2 or 3); ValueError naming the field otherwise."""
    if type(max_token_length) is not int or max_token_length not in MAX_TOKEN_LENGTHS:
        raise ValueError(f"training.max_token_length: must be 75, 150 or 225 (CLIP reads 75-token chunks), not "
                         f"{max_token_length!r}")
    return max_token_length // CHUNK


def _text_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids without BOS/EOS, uncut (verbose=False: no "longer than 77" warning); the id of a
    multi-vector embedding's word stands for all its vectors' ids (trainer.model.embedding)."""
    if not texts:
        return []
    rows = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    words = multi_vector_words(tokenizer)
    return [[t for i in row for t in words.get(i, (i,))] for row in rows] if words else rows


def multi_vector_words(tokenizer) -> dict[int, tuple[int, ...]]:
    """{id of `name`: ids of name, name_1, ..., name_{N-1}} for each added word that has an added `name_1`:
    diffusers' convention for a textual-inversion embedding of N vectors (its maybe_convert_prompt)."""
    added = tokenizer.added_tokens_encoder
    words = {}
    for name in [name for name in added if f"{name}_1" in added]:
        count = 1
        while f"{name}_{count}" in added:
            count += 1
        words[name] = [added[f"{name}_{i}"] for i in range(1, count)]
    inner = {i for ids in words.values() for i in ids}  # "w_1" of a word "w" is no word itself
    return {added[name]: (added[name], *ids) for name, ids in words.items() if added[name] not in inner}


def token_count(tokenizer, text: str) -> int:
    """CLIP tokens of the text without BOS/EOS, uncut (what A1111 shows as "n/75")."""
    return len(_text_ids(tokenizer, [text])[0])


def over_limit(tokenizer, texts: list[str], max_token_length: int) -> list[tuple[int, int]]:
    """(index, token count) of each text with more than max_token_length tokens, in order; those are cut."""
    chunk_count(max_token_length)
    return [(i, len(ids)) for i, ids in enumerate(_text_ids(tokenizer, texts)) if len(ids) > max_token_length]


def chunks_needed(tokenizer, texts: list[str], max_token_length: int) -> int:
    """The fewest chunks that hold the longest of the texts, at least 1 and at most max_token_length / 75."""
    limit = chunk_count(max_token_length)
    longest = max((len(ids) for ids in _text_ids(tokenizer, texts)), default=0)
    return min(limit, max(1, -(-longest // CHUNK)))


def _chunk(bos: int, eos: int, tokens: list[int]) -> list[int]:
    return [bos] + tokens + [eos] * (CHUNK - len(tokens)) + [eos]


def chunked_ids(tokenizer, texts: list[str], max_token_length: int):
    """Token ids of each text as k = max_token_length / 75 chunks of 77: a LongTensor (B, k * 77).

    Chunk j holds text tokens 75j .. 75j + 74 (see the module docstring for BOS/EOS and padding); a text always
    gets all k chunks, so batches and cached embeddings stack. Raises ValueError for another max_token_length.
    """
    import torch
    k = chunk_count(max_token_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = []
    for ids in _text_ids(tokenizer, texts):
        ids = ids[:k * CHUNK]
        rows.append([t for j in range(k) for t in _chunk(bos, eos, ids[j * CHUNK:(j + 1) * CHUNK])])
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), k * WINDOW)


def encode_prompts(tokenizer, text_encoder, texts: list[str], max_token_length: int, device):
    """The text encoder's last hidden states (output [0]) of each 77-id chunk, concatenated: (B, k * 77, D).

    k = max_token_length / 75. All chunks of the batch go through the encoder as one (B * k, 77) batch, in the
    encoder's dtype (under the caller's autocast, if any); no torch.no_grad here, so gradients reach a text encoder
    that is being trained when the caller enables them. Raises ValueError for another max_token_length.
    """
    k = chunk_count(max_token_length)
    ids = chunked_ids(tokenizer, texts, max_token_length).to(device)
    hidden = text_encoder(ids.reshape(len(texts) * k, WINDOW))[0]
    return hidden.reshape(len(texts), k * WINDOW, hidden.shape[-1])


def first_words(text: str, words: int = 6) -> str:
    """The text's first few words, with "..." when there are more: a short name for a caption or prompt."""
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")

