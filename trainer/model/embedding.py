"""Textual-inversion embeddings (Gal et al. 2022, "An Image is Worth One Word"): a new word of N token vectors
trained in CLIP's token-embedding space while everything else stays as it is, and its file in the layout A1111,
ComfyUI and diffusers read. No UI here.

The word is N added tokens, `name`, `name_1`, ..., `name_{N-1}` (diffusers' convention for a multi-vector
embedding, which trainer.data.prompts expands wherever `name` is written). The text encoder's token embedding keeps
its 49,408 rows (its state dict stays SD 1.5's); the N vectors live in their own module and replace the rows
of the added tokens' ids through hooks on the embedding layer.

File: a .safetensors with one tensor, `emb_params` (N, 768), as kohya's train_textual_inversion.py writes it;
A1111 reads it and calls it by the file's name, ComfyUI as `embedding:NAME`, diffusers'
`load_textual_inversion(file, token=NAME)`.
"""
from __future__ import annotations

import torch

from trainer.data.vocab import token_names
from trainer.errors import InputError

class PlaceholderVectors(torch.nn.Module):
    """The trained vectors of one new word: `vectors` (N, D) float32, for token ids first_id .. first_id + N - 1.

    forward(ids (B, T) long, embeds (B, T, D)) -> (B, T, D): `embeds` with the rows of the word's ids replaced by
    its vectors (gradients reach the vectors only)."""

    def __init__(self, init: torch.Tensor, first_id: int):
        super().__init__()
        self.vectors = torch.nn.Parameter(init.detach().float().clone())
        self.first_id = first_id

    def forward(self, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        index = ids - self.first_id
        mine = (index >= 0) & (index < self.vectors.shape[0])
        rows = self.vectors[index.clamp(0, self.vectors.shape[0] - 1)].to(embeds.dtype)
        return torch.where(mine.unsqueeze(-1), rows, embeds)


class Embedding:
    """A new word on a tokenizer and a CLIP text encoder: its tokens added to the tokenizer, its vectors
    (PlaceholderVectors, `module`) put in place of those tokens' embeddings. `call` is what the hook calls
    (the module, or accelerate's wrapper of it under several processes)."""

    def __init__(self, tokenizer, text_encoder, placeholder: str, vectors: int, init_text: str):
        """Raises InputError (field training.embedding_placeholder) when the tokenizer already knows the word,
        (training.embedding_init_text) when the initializing text has no tokens."""
        self.placeholder, self.names = placeholder, token_names(placeholder, vectors)
        vocab = tokenizer.get_vocab()
        known = [name for name in self.names if name in vocab or f"{name}</w>" in vocab]
        if known:
            raise InputError(f"training.embedding_placeholder: {known[0]!r} is already a token of the base model's "
                             "tokenizer: choose a made-up word")
        init_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
        if not init_ids:
            raise InputError(f"training.embedding_init_text: {init_text!r} has no tokens; give a word or phrase")
        table = text_encoder.get_input_embeddings()
        self.base_rows = table.num_embeddings
        tokenizer.add_tokens(self.names)
        ids = tokenizer.convert_tokens_to_ids(self.names)
        if ids != list(range(self.base_rows, self.base_rows + vectors)):
            raise InputError(f"training.embedding_placeholder: the base model's tokenizer has {len(tokenizer)} "
                             f"tokens for a {self.base_rows}-row embedding table; it is not SD 1.5's")
        with torch.no_grad():
            init = table.weight[torch.tensor([init_ids[i % len(init_ids)] for i in range(vectors)])]
        self.module = PlaceholderVectors(init, self.base_rows)
        self.call = self.module
        self._ids = None
        self._hooks = [table.register_forward_pre_hook(self._clamp_ids),
                       table.register_forward_hook(self._put_vectors)]

    def _clamp_ids(self, _table, args):
        (ids,) = args
        self._ids = ids
        return (ids.clamp(max=self.base_rows - 1),)

    def _put_vectors(self, _table, _args, embeds):
        ids, self._ids = self._ids, None
        # in the table's dtype: accelerate's wrapper (`call` under mixed precision) returns float32, which the
        # text encoder's bf16 layer norms refuse on a CPU
        return self.call(ids, embeds).to(embeds.dtype)

    def remove(self) -> None:
        """Take the hooks off the text encoder (the tokenizer keeps the tokens)."""
        for hook in self._hooks:
            hook.remove()


def embedding_file_tensors(vectors: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of an embedding file: {"emb_params": (N, D)} in `dtype`, on the CPU."""
    return {"emb_params": vectors.detach().to("cpu", dtype).contiguous()}


def embedding_metadata(placeholder: str, vectors: int, init_text: str, step: int, resolution: str) -> dict[str, str]:
    """The header of an embedding file: modelspec's (kohya's sai_model_spec.py for a textual inversion of SD v1)
    and SeaChange's own (the word and how it started)."""
    return {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/textual-inversion",
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",  # kohya's, for SD v1 TI
            "modelspec.title": placeholder,
            "modelspec.resolution": f"{resolution}x{resolution}",
            "seachange.placeholder": placeholder, "seachange.vectors": str(vectors),
            "seachange.init_text": init_text, "seachange.step": str(step)}
