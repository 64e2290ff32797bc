"""The training command line with what some tests observe or inject, wrapped around the engine from outside:

    python tests/train_probe.py [--rank-dump DIR] [--slow-backup-files SECONDS] train PRESET [train's options]

--rank-dump DIR: when the run ends each process writes DIR/rank<N>.json: the epoch positions it trained on and
    its padding micro-batches (from the epoch plan's batches), what it wrote (its CheckpointWritten and
    SampleReady events, before the engine keeps only the main process's), how many cache entries it wrote, its
    machine (torchrun's GROUP_RANK) and local rank, its exit code, and a hash of its UNet weights.
--slow-backup-files SECONDS: each weights file of a backup takes this much longer to write, so that a test can
    kill the run while a backup is being written.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def slow_backup_files(seconds: float) -> None:
    import safetensors.torch
    save_file = safetensors.torch.save_file

    def slow(tensors, filename, *args, **kwargs):
        result = save_file(tensors, filename, *args, **kwargs)
        if ".tmp-" in Path(filename).parent.name:  # a backup's folder while it is written (trainer.train.backup)
            time.sleep(seconds)
        return result
    safetensors.torch.save_file = slow


def rank_dump(folder: Path) -> callable:
    """Install the observers; returns the function that writes this process's record."""
    import torch

    from trainer import events as ev
    from trainer.data.cache import TensorCache
    from trainer.data.data import EpochPlan
    from trainer.model.training_model import TrainingModel
    import trainer.train.loop
    record = {"positions": {}, "padding": 0, "written": [], "cache_writes": 0}
    models = []

    iter_epoch = EpochPlan.iter_epoch

    def observed_epoch(self, epoch, *args, **kwargs):
        for micro_batches in iter_epoch(self, epoch, *args, **kwargs):
            for batch in micro_batches:
                if batch.padding:
                    record["padding"] += 1
                else:
                    record["positions"].setdefault(str(epoch), []).extend(batch.positions)
            yield micro_batches
    EpochPlan.iter_epoch = observed_epoch

    main_process_only = trainer.train.loop.main_process_only

    def observed_emit(emit, accelerator):
        reported = main_process_only(emit, accelerator)

        def both(event):
            if isinstance(event, ev.CheckpointWritten):
                record["written"].append([event.kind, event.path])
            elif isinstance(event, ev.SampleReady):
                record["written"].append(["sample", event.path])
            reported(event)
        return both
    trainer.train.loop.main_process_only = observed_emit

    write_entry = TensorCache.write

    def counted_write(self, key, tensors):
        record["cache_writes"] += 1
        return write_entry(self, key, tensors)
    TensorCache.write = counted_write

    load = TrainingModel.load.__func__

    def observed_load(cls, *args, **kwargs):
        models.append(load(cls, *args, **kwargs))
        return models[-1]
    TrainingModel.load = classmethod(observed_load)

    def write(exit_code: int | None) -> None:
        digest = hashlib.sha256()
        unet = models[-1].components.unet if models else None
        unet = getattr(getattr(unet, "_orig_mod", unet), "module", unet)  # torch.compile's and DDP's wrappers
        for name, tensor in sorted(unet.state_dict().items()) if unet is not None else []:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        word = models[-1].embedding if models else None
        word_digest = hashlib.sha256(word.module.vectors.detach().cpu().numpy().tobytes()).hexdigest() if word else ""
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{rank}.json").write_text(json.dumps({**record, "process_index": rank, "num_processes": world,
                                                             "machine": int(os.environ.get("GROUP_RANK", "0")),
                                                             "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                                                             "exit_code": exit_code,
                                                             "unet_sha256": digest.hexdigest(),
                                                             "word_sha256": word_digest}))
    return write


def main(argv: list[str]) -> int:
    write = None
    while argv and argv[0].startswith("--"):
        option, value, argv = argv[0], argv[1], argv[2:]
        if option == "--slow-backup-files":
            slow_backup_files(float(value))
        elif option == "--rank-dump":
            write = rank_dump(Path(value))
        else:
            raise SystemExit(f"unknown option {option}")
    from trainer.__main__ import main as cli
    code = None
    try:
        code = cli(argv)
        return code
    finally:
        if write is not None:
            write(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
