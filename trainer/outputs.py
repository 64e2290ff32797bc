"""What a run writes: samples, model saves, backups and TensorBoard scalars. No UI here.

Under `accelerate launch` only the main process writes; the others return at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer import events as ev
from trainer.backup import Position, prune_backups, rng_state, write_backup
from trainer.config import Preset, portable_preset, preset_to_json
from trainer.fields import atomic_write_text
from trainer.ema import EMA
from trainer.errors import RunFailure, plain_text
from trainer.models import SDComponents, save_model
from trainer.runs import RUN_ID_KEY, backup_root
from trainer.sampling import generate, make_pipeline, sample_path


MODELSPEC_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v"}  # as kohya's sai_model_spec.py spells them


class Run:
    """Per-run helpers around the loop: events, samples, saves, TensorBoard. The loop itself is `train`."""

    def __init__(self, preset: Preset, emit: Callable, accelerator, components: SDComponents, run_id: str = "",
                 dataset: dict | None = None, prediction_type: str = "epsilon"):
        """run_id: this run's id (trainer.runs), written into every model and backup; dataset: the images trained
        on (data.dataset_record), written into every backup; prediction_type: the objective trained (the
        preset's choice resolved against the base model), written into every model's metadata."""
        self.preset, self.emit, self.acc, self.c = preset, emit, accelerator, components
        self.run_id, self.dataset, self.prediction_type = run_id, dataset, prediction_type
        self.workspace = Path(preset.general.workspace_dir).expanduser()
        self.samples_dir = self.workspace / "samples"
        self.writer = None
        self.ema: EMA | None = None
        if preset.general.tensorboard and accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.workspace / "tensorboard"))
        # Test hook: with SEACHANGE_TEST_RANK_DUMP=DIR each process writes DIR/rank<N>.json when the run ends: the
        # epoch positions it trained on, what it wrote, and a hash of its UNet weights (tests/test_multiprocess.py).
        self.dump_dir = os.environ.get("SEACHANGE_TEST_RANK_DUMP")
        self.dump = {"positions": {}, "padding": 0, "written": []} if self.dump_dir else None
        self.backed_up: Position | None = None  # the position of the last backup written
        self.backed_up_path: Path | None = None

    def unwrapped(self) -> SDComponents:
        c = self.c
        # Without the torch.compile wrapper: its state_dict keys carry a prefix no other program reads.
        return SDComponents(self.acc.unwrap_model(c.unet, keep_torch_compile=False), c.vae,
                            self.acc.unwrap_model(c.text_encoder),
                            c.tokenizer, c.noise_scheduler)

    def sample(self, step: int, epoch: int) -> None:
        """Render every sample prompt from the modules in memory (EMA weights swapped in when EMA is on)."""
        if not self.preset.sampling.prompts or not self.acc.is_main_process:
            return
        self.emit(ev.Status(f"Sampling at step {step}"))
        m = self.unwrapped()
        training = m.unet.training, m.text_encoder.training
        m.unet.eval(); m.text_encoder.eval()
        parked = [module for module in (m.vae, m.text_encoder)
                  if module.device.type == "cpu" and self.acc.device.type != "cpu"]
        for module in parked:  # the VAE and a frozen text encoder wait in CPU memory between samples
            module.to(self.acc.device)
        if self.ema:
            self.ema.swap_in()
        try:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            for index, prompt in enumerate(self.preset.sampling.prompts):
                pipe = make_pipeline(m.unet, m.vae, m.text_encoder, m.tokenizer, m.noise_scheduler.config,
                                     prompt.sampler)
                with self.acc.autocast():
                    image = generate(pipe, prompt, self.acc.device,
                                     max_token_length=self.preset.training.max_token_length)
                path = sample_path(self.samples_dir, step, epoch, index, prompt.seed)
                image.save(path)
                self._note_written("sample", path)
                self._tensorboard(lambda w: w.add_image(f"samples/{index}", np.asarray(image), step,
                                                        dataformats="HWC"))
                self.emit(ev.SampleReady(str(path), index, prompt.prompt, step, epoch))
        finally:
            if self.ema:
                self.ema.swap_out()
            for module in parked:
                module.to("cpu")
            m.unet.train(training[0]); m.text_encoder.train(training[1])
        self.emit(ev.Status("Training"))

    def save(self, path: Path, kind: str, step: int) -> Path:
        """Write the model (EMA weights when on) in the preset's output format and dtype."""
        if not self.acc.is_main_process:
            return path
        self.emit(ev.Status(f"Saving {path}"))
        size = self.preset.training.resolution.split(",")[0].strip()
        metadata = {
            "seachange.step": str(step),
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.implementation": "https://github.com/CompVis/stable-diffusion",
            "modelspec.title": path.stem, "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "modelspec.resolution": f"{size}x{size}",  # kohya's sai_model_spec: "WxH"
            "modelspec.prediction_type": MODELSPEC_PREDICTION[self.prediction_type],  # kohya's "epsilon" / "v"
            "seachange.prediction_type": self.prediction_type,
            "seachange.max_token_length": str(self.preset.training.max_token_length),
            RUN_ID_KEY: self.run_id,
        }
        if self.preset.model.embed_preset:  # paths relative to the workspace or their last part only
            metadata["seachange.preset"] = preset_to_json(portable_preset(self.preset))
        if self.ema:
            self.ema.swap_in()
        try:
            written = save_model(self.unwrapped(), path, self.preset.model.output_format,
                                 self.preset.model.output_dtype, metadata)
        finally:
            if self.ema:
                self.ema.swap_out()
        if self.preset.model.output_format == "single_file" and not write_a1111_config(written, self.prediction_type) \
                and self.prediction_type == "v_prediction":
            self.emit(ev.Log("warning", f"{written.with_suffix('.yaml')} is not SeaChange's, so it was left as it is: "
                                        "A1111 reads that config for this v-prediction model"))
        self._note_written(kind, written)
        self.emit(ev.CheckpointWritten(kind, str(written), step))
        return written

    def save_final(self, position: Position, optimizer, lr_scheduler, extra: dict) -> Path:
        """Write the final model to model.output_path. If that fails (disk full, a folder that appeared there,
        permissions), the trained state is not lost: it is written to a backup whatever backup_before_save says
        (or, if even that fails, the model alone to an emergency file in the workspace), and FinalSaveFailed
        says where it is and how to write the model from there."""
        target = Path(self.preset.model.output_path).expanduser()
        try:
            return self.save(target, "final", position.step)
        except Exception as error:  # noqa: BLE001 - any failure of the save is answered the same way
            if not self.acc.is_main_process:
                raise
            reason = plain_text(str(error).splitlines()[0] if str(error) else type(error).__name__)
            try:
                folder = self.backup(position, optimizer, lr_scheduler, extra) or self.backed_up_path
                kept = (f"The trained state is safe in the backup {folder}. Fix the problem (or set "
                        f"model.output_path elsewhere), then run `python -m trainer train PRESET --resume {folder}`"
                        " (or Continue in the window): it trains no further and writes the model")
            except Exception as backup_error:  # noqa: BLE001 - last resort: the weights alone, in the workspace
                suffix = ".safetensors" if self.preset.model.output_format == "single_file" else ""
                emergency = self.workspace / f"emergency-step{position.step:07d}{suffix}"
                try:
                    self.save(emergency, "save", position.step)
                    kept = (f"No backup could be written either ({backup_error}); the trained model was saved to "
                            f"{emergency} instead")
                except Exception as last:  # noqa: BLE001
                    kept = f"No backup ({backup_error}) or emergency save ({last}) could be written either"
            raise FinalSaveFailed(f"The final model could not be written to {target}: {reason}. {kept}.") from error

    def save_now_path(self, step: int, epoch: int) -> Path:
        suffix = ".safetensors" if self.preset.model.output_format == "single_file" else ""
        name = f"{self.preset.backup.prefix}step{step:07d}-epoch{epoch:04d}{suffix}"
        return self.workspace / "save" / name

    def backup(self, position: Position, optimizer, lr_scheduler, extra: dict) -> Path | None:
        """Write the full training state (see backup.py) and prune old backups; rank 0 only."""
        if not self.acc.is_main_process or position == self.backed_up:  # that state is written already
            return None
        self.emit(ev.Status(f"Writing backup at step {position.step}"))
        c, b = self.unwrapped(), self.preset.backup
        modules = {}
        if self.preset.training.train_unet:
            modules["unet"] = c.unet
        if self.preset.training.train_text_encoder:
            modules["text_encoder"] = c.text_encoder
        state = {
            "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema else None, "rng": rng_state(), **extra,
        }
        name = f"{b.prefix}step{position.step:07d}-epoch{position.epoch:04d}"
        pause = float(os.environ.get("SEACHANGE_TEST_BACKUP_PAUSE", "0"))  # fault-injection hook for tests
        folder = write_backup(backup_root(self.preset), name, modules, state, self.preset, position, pause,
                              num_processes=self.acc.num_processes, run_id=self.run_id, dataset=self.dataset)
        self._note_written("backup", folder)
        for old in prune_backups(backup_root(self.preset), b.rolling_backups):
            self.emit(ev.Log("info", f"Deleted old backup {old}"))
        self.backed_up, self.backed_up_path = position, folder
        self.emit(ev.CheckpointWritten("backup", str(folder), position.step))
        self.emit(ev.Status("Training"))
        return folder

    def log_scalars(self, step: int, loss: float, smooth: float, lr: float) -> None:
        def write(w):
            w.add_scalar("loss/raw", loss, step)
            w.add_scalar("loss/smoothed", smooth, step)
            w.add_scalar("lr", lr, step)
        self._tensorboard(write)

    def _tensorboard(self, write: Callable) -> None:
        """write(writer) when TensorBoard is on. TensorBoard is a view of the run, not the run: if writing fails
        (a full disk, a folder gone) it is turned off with a warning and the training goes on."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as error:  # noqa: BLE001 - the writer's thread re-raises any I/O error of its own
            writer, self.writer = self.writer, None
            self.emit(ev.Log("warning", f"TensorBoard turned off for this run: cannot write to "
                                        f"{self.workspace / 'tensorboard'} ({plain_text(str(error))}); the training "
                                        "goes on"))
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - it failed already
                pass

    def note_batch(self, epoch: int, batch) -> None:
        """Remember the epoch positions this process trains on (only for the test hook)."""
        if self.dump is None:
            return
        if batch.padding:
            self.dump["padding"] += 1
        else:
            self.dump["positions"].setdefault(str(epoch), []).extend(batch.positions)

    def _note_written(self, kind: str, path) -> None:
        if self.dump is not None:
            self.dump["written"].append([kind, str(path)])

    def close(self) -> None:
        self._tensorboard(lambda w: w.close())
        if self.dump is not None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.unwrapped().unet.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            record = {**self.dump, "process_index": self.acc.process_index,
                      "num_processes": self.acc.num_processes, "unet_sha256": digest.hexdigest()}
            folder = Path(self.dump_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"rank{self.acc.process_index}.json").write_text(json.dumps(record))


class FinalSaveFailed(RunFailure):
    """The final model could not be written; the message says where the trained state was kept instead."""


A1111_CONFIG = Path(__file__).parent / "assets" / "sd15" / "v1-inference.yaml"  # the original v1-inference.yaml
A1111_MARK = "# Written by SeaChange beside its model: "


def write_a1111_config(model: Path, prediction_type: str) -> Path | None:
    """The A1111 config beside a single-file model, NAME.yaml: A1111 reads no objective from an SD 1.x file and
    builds it from this file when it is there (modules/sd_models_config.py). For v-prediction: the v1 inference
    config with `parameterization: "v"`; for epsilon none is needed, and one SeaChange wrote earlier is removed.
    A .yaml there that SeaChange did not write is left alone. Returns the file written, or None."""
    sidecar = model.with_suffix(".yaml")
    ours = sidecar.is_file() and sidecar.read_text(encoding="utf-8", errors="replace").startswith(A1111_MARK)
    if sidecar.exists() and not ours:
        return None
    if prediction_type != "v_prediction":
        if ours:
            sidecar.unlink()
        return None
    text = A1111_CONFIG.read_text(encoding="utf-8").replace(
        "    use_ema: False\n", '    use_ema: False\n    parameterization: "v"\n', 1)
    atomic_write_text(sidecar, f"{A1111_MARK}{model.name} predicts v (v-prediction).\n{text}")
    return sidecar