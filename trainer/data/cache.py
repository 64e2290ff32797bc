"""On-disk caches of VAE latent distributions and text embeddings: keyed, checksummed, atomic. No UI here.

One safetensors file per entry under cache_dir/latents/ or cache_dir/text/, named by a hash of everything that
changes its content (image bytes, bucket size, crop/flip/colour variant, VAE weights, dtype; or caption text, text
encoder weights, dtype). Each file carries its own key and a checksum of its tensor bytes in the header metadata,
so a half-written, damaged or misplaced file is detected and rebuilt, never used. The entry of an image with a
loss mask (trainer.data.masks) also holds the mask at the latent grid, and its key the mask's content hash. Writes go
to a temporary file that is renamed into place (os.replace), so a crash never leaves a partial file under the
final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.data.loader import map_loader
from trainer.data.masks import load_with_mask, to_latent_grid
from trainer.data.prompts import encode_prompts
from trainer.errors import CacheError
from trainer.fields import umask_mode

CACHE_VERSION = 1


def entry_key(*parts) -> str:
    """A stable hex key for a JSON-able description of an entry."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def module_identity(module: torch.nn.Module, dtype: torch.dtype) -> str:
    """A hash of a module's class, config and every weight (as stored), plus the dtype it runs in."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(items, sort_keys=True, default=str).encode())
    h.update(str(dtype).encode())
    with torch.no_grad():
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()


class TensorCache:
    """A folder of keyed, checksummed safetensors entries."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.written = 0
        self.rebuilt = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def read(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when it is missing, damaged, or not the entry for this key."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception:  # noqa: BLE001 - any unreadable file is treated as absent and rewritten
            return None
        if meta.get("key") != key or meta.get("checksum") != checksum(tensors):
            return None
        return tensors

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """Read an entry that prepare() checked; a failure now means the file changed during training."""
        tensors = self.read(key)
        if tensors is None:
            raise CacheError(f"cache entry {self.path(key)} is missing or damaged (changed during training?); "
                             "run again to rebuild it")
        return tensors

    def write(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write atomically: a temporary file in the same folder, then os.replace over the final name."""
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata={"key": key, "checksum": checksum(tensors)})
            os.chmod(tmp, umask_mode())  # save_file creates 0600 whatever the umask
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.written += 1

    def missing(self, keys: list[str]) -> list[str]:
        """The keys without a valid entry (each existing file is read and its checksum verified; a bad one
        is deleted and counted in `rebuilt`)."""
        def state(key: str) -> str:
            if not self.path(key).exists():
                return "absent"
            if self.read(key) is None:
                self.path(key).unlink(missing_ok=True)
                return "bad"
            return "ok"
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            states = list(pool.map(state, keys))
        self.rebuilt += states.count("bad")
        return [k for k, s in zip(keys, states) if s != "ok"]


# ---- filling the caches ---------------------------------------------------------------------------------

def _load_latent_chunk(chunk):
    loaded = [load_with_mask(job[1], job[2], job[3], job[4] if len(job) > 4 else None) for job in chunk]
    return [job[0] for job in chunk], np.stack([pixels for pixels, _ in loaded]), [mask for _, mask in loaded]


def encode_latents(cache: TensorCache, jobs: list, vae, device, dtype, batch_size: int, workers: int,
                   report) -> None:
    """Encode jobs (key, path, (w, h), Augment[, masks.MaskRef or None]) with the VAE, batched per size;
    report(done, total) after each. An entry holds "mean" and "std" (4, h, w) and, for a job with a mask, "mask"
    (1, h, w) float32 in 0..1: the mask cropped as its image and averaged onto the latent grid."""
    by_size: dict = {}
    for job in jobs:
        by_size.setdefault(job[2], []).append(job)
    chunks = [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
    done = 0
    for keys, pixels, masks in map_loader(_load_latent_chunk, chunks, workers):
        x = torch.as_tensor(pixels).permute(0, 3, 1, 2).contiguous().to(device, dtype)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
        grid = (dist.mean.shape[-1], dist.mean.shape[-2])
        for i, key in enumerate(keys):
            entry = {"mean": dist.mean[i], "std": dist.std[i]}
            if masks[i] is not None:
                entry["mask"] = torch.from_numpy(to_latent_grid(masks[i], grid))[None]
            cache.write(key, entry)
        done += len(keys)
        report(done, len(jobs))


def encode_texts(cache: TensorCache, jobs: list[tuple[str, str]], tokenizer, text_encoder, device,
                 batch_size: int, max_token_length: int, report) -> None:
    """Encode (key, caption) jobs with the frozen text encoder (prompts.encode_prompts: 75-token chunks up to
    max_token_length); report(done, total) after each batch."""
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        with torch.no_grad():
            hidden = encode_prompts(tokenizer, text_encoder, [c for _, c in chunk], max_token_length, device)
        for i, (key, _) in enumerate(chunk):
            cache.write(key, {"hidden": hidden[i]})
        report(start + len(chunk), len(jobs))


def frozen_dtype(mixed_precision: str, device) -> torch.dtype:
    """The dtype the frozen VAE and text encoder run in, as in the loop: that of the mixed precision, except
    float16 on a CPU (float32 there). Cache keys include it, so `cache` and `train` must agree."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    return torch.float32 if torch.device(device).type == "cpu" and dtype == torch.float16 else dtype

