"""DataLoader plumbing for the data: a function mapped over a list in torch DataLoader worker processes, in order
and prefetching ahead, its numpy arrays passed back through shared memory. Used for training batches
(data.EpochPlan.iter_epoch) and the images of the latent cache (cache.encode_latents). No UI here."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch


def _identity(x):
    return x


class _SharedArray:
    """A numpy array on its way from a worker: pickled as a torch tensor, i.e. through shared memory rather
    than copied through the worker's pipe (a 512 px float batch is 12 MB)."""

    def __init__(self, array: np.ndarray):
        self.tensor = torch.from_numpy(array)


def _pack(obj):
    if isinstance(obj, np.ndarray):
        return _SharedArray(obj)
    if isinstance(obj, tuple):
        return tuple(_pack(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _pack(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if isinstance(getattr(obj, f.name), np.ndarray)})
    return obj


def _unpack(obj):
    if isinstance(obj, _SharedArray):
        return obj.tensor.numpy()
    if isinstance(obj, tuple):
        return tuple(_unpack(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _unpack(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if isinstance(getattr(obj, f.name), _SharedArray)})
    return obj


class _MapDataset(torch.utils.data.Dataset):
    def __init__(self, fn, items):
        self.fn, self.items = fn, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return _pack(self.fn(self.items[i]))


def map_loader(fn, items: list, workers: int, pin_memory: bool = False):
    """fn over items in order: in DataLoader worker processes (prefetching ahead) when workers > 0, else here."""
    if workers <= 0 or len(items) <= 1:
        return (fn(x) for x in items)
    loader = torch.utils.data.DataLoader(_MapDataset(fn, items), batch_size=None, shuffle=False,
                                         num_workers=min(workers, len(items)), collate_fn=_identity,
                                         pin_memory=pin_memory, prefetch_factor=4)
    return (_unpack(x) for x in loader)
