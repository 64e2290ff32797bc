"""What a run writes: samples, model saves, backups and TensorBoard scalars, at step and epoch boundaries and at
the end. No UI here.

Under `accelerate launch` only the main process writes; the others return at once.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer import events as ev
from trainer.config import Preset, portable_preset, preset_to_json
from trainer.errors import FinalSaveFailed, plain_text
from trainer.fields import atomic_write_text
from trainer.model import lora
from trainer.model.embedding import embedding_file_tensors, embedding_metadata
from trainer.model.models import save_model, write_safetensors
from trainer.model.training_model import TrainingModel
from trainer.train.backup import Position, TrainingState, prune_backups, write_backup
from trainer.train.intervals import Actions
from trainer.train.runs import RUN_ID_KEY, backup_root
from trainer.train.sampling import generate, make_pipeline, sample_path


MODELSPEC_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v"}  # as kohya's sai_model_spec.py spells them


class RunOutputs:
    """What the run writes and where: samples, model saves and backups (the weights and `state`, a
    backup.TrainingState, whose EMA is swapped in for samples and saves), in the preset's workspace; on the main
    process only."""

    def __init__(self, preset: Preset, emit: Callable, accelerator, model: TrainingModel, state: TrainingState,
                 tensorboard: "TensorBoard", run_id: str = "", dataset: dict | None = None,
                 evaluation_weights: Callable = contextlib.nullcontext):
        """run_id: this run's id (trainer.train.runs), written into every model and backup; dataset: the images trained
        on (inputs.dataset_record), written into every backup; evaluation_weights: a context manager that puts
        the weights to sample and save with in the model (optim.Stepper.evaluation_weights: a schedule-free
        optimizer's average) and the trained ones back after; backups never use it."""
        self.evaluation_weights = evaluation_weights
        self.preset, self.emit, self.accelerator, self.model, self.state = preset, emit, accelerator, model, state
        self.tensorboard, self.ema, self.run_id, self.dataset = tensorboard, state.ema, run_id, dataset
        self.prediction_type = model.prediction_type  # written into every model's metadata
        self.workspace = Path(preset.general.workspace_dir).expanduser()
        self.samples_dir = self.workspace / "samples"
        self.backed_up: Position | None = None  # the position of the last backup written
        self.backed_up_path: Path | None = None

    def at_boundary(self, due: Actions, position: Position) -> None:
        """Write what is due after a step or an epoch (intervals.Boundaries) at `position`: samples, a backup,
        a save."""
        if due.sample:
            self.sample(position.step, position.epoch_number)
        if due.backup:
            self.backup(position)
        if due.save:
            self.save(self.save_now_path(position), "save", position.step)

    def finish(self, completed: bool, position: Position) -> Path:
        """The end of a run, completed or stopped: the last samples (when completed and not just sampled), a
        backup to continue from (backup.backup_before_save), the final model. Returns where it was written."""
        sampling = self.preset.sampling
        sampled_now = sampling.unit == "steps" and position.step % sampling.every == 0
        if completed and sampling.unit != "never" and not sampled_now:
            self.sample(position.step, position.epoch_number)
        if self.preset.backup.backup_before_save:
            self.backup(position)
        output = self.save_final(position)
        if self.model.method == "lora" and self.preset.model.merged_output_path and self.accelerator.is_main_process:
            with self.evaluation_weights():
                self.save_merged(position.step)
        return output

    def sample(self, step: int, epoch: int) -> None:
        """Render every sample prompt from the modules in memory (the evaluation weights, or EMA weights swapped
        in when EMA is on), named and reported with `step` and `epoch` (Position.epoch_number)."""
        if not self.preset.sampling.prompts or not self.accelerator.is_main_process:
            return
        with self.evaluation_weights():
            self._sample(step, epoch)

    def _sample(self, step: int, epoch: int) -> None:
        self.emit(ev.Status(f"Sampling at step {step}"))
        unwrapped = self.model.unwrapped(self.accelerator)
        was_training = unwrapped.unet.training, unwrapped.text_encoder.training
        unwrapped.unet.eval(); unwrapped.text_encoder.eval()
        parked = [module for module in (unwrapped.vae, unwrapped.text_encoder)
                  if module.device.type == "cpu" and self.accelerator.device.type != "cpu"]
        for module in parked:  # the VAE and a frozen text encoder wait in CPU memory between samples
            module.to(self.accelerator.device)
        if self.ema:
            self.ema.swap_in()
        try:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            for index, prompt in enumerate(self.preset.sampling.prompts):
                pipe = make_pipeline(unwrapped.unet, unwrapped.vae, unwrapped.text_encoder, unwrapped.tokenizer,
                                     unwrapped.noise_scheduler.config, prompt.sampler)
                with self.accelerator.autocast():
                    image = generate(pipe, prompt, self.accelerator.device,
                                     max_token_length=self.preset.training.max_token_length)
                path = sample_path(self.samples_dir, step, epoch, index, prompt.seed)
                image.save(path)
                self.tensorboard.write(lambda w: w.add_image(f"samples/{index}", np.asarray(image), step,
                                                             dataformats="HWC"))
                self.emit(ev.SampleReady(str(path), index, prompt.prompt, step, epoch))
        finally:
            if self.ema:
                self.ema.swap_out()
            for module in parked:
                module.to("cpu")
            unwrapped.unet.train(was_training[0]); unwrapped.text_encoder.train(was_training[1])
        self.emit(ev.Status("Training"))

    def save(self, path: Path, kind: str, step: int) -> Path:
        """Write what the run trains (EMA weights when on): the model in the preset's output format and dtype, a
        LoRA in kohya's layout, or an embedding; a word trained beside a model or LoRA goes next to it (see
        embedding_path). Returns the file or folder written."""
        if not self.accelerator.is_main_process:
            return path
        self.emit(ev.Status(f"Saving {path}"))
        if self.ema:
            self.ema.swap_in()
        try:
            with self.evaluation_weights():
                written = self._write(path, step, during_run=kind == "save")
        finally:
            if self.ema:
                self.ema.swap_out()
        self.emit(ev.CheckpointWritten(kind, str(written), step))
        return written

    def _write(self, path: Path, step: int, during_run: bool) -> Path:
        model, training, dtype = self.model, self.preset.training, getattr(torch, self.preset.model.output_dtype)
        metadata, size = self.metadata(path, step), self.preset.training.resolution.split(",")[0].strip()
        word = model.embedding
        if word is not None:
            vectors = word.module.vectors
            word_meta = {**metadata, **embedding_metadata(word.placeholder, len(vectors), training.embedding_init_text,
                                                          step, size)}
            beside = path if model.method == "embedding" else embedding_path(path, word.placeholder, during_run)
            written = write_safetensors(suffixed(beside), embedding_file_tensors(vectors, dtype), word_meta)
            if model.method == "embedding":
                return written
        unwrapped = model.unwrapped(self.accelerator)
        if model.method == "lora":
            tensors = {key: value if key.endswith(".alpha") else value.to(dtype)  # alpha float32: 0.1 stays 0.1
                       for part in ("unet", "text_encoder")
                       for key, value in lora.kohya_tensors(getattr(unwrapped, part), part).items()}
            header = {**metadata, **lora.lora_metadata(
                training, training.lora_type, title=path.stem, resolution=size,
                prediction=MODELSPEC_PREDICTION[self.prediction_type], step=step,
                base_model=self.preset.model.base_model, text_encoder=model.text_encoder_trains)}
            return write_safetensors(suffixed(path), tensors, header)
        written = save_model(unwrapped, path, self.preset.model.output_format, self.preset.model.output_dtype,
                             metadata)
        if self.preset.model.output_format == "single_file" and not write_a1111_config(written, self.prediction_type) \
                and self.prediction_type == "v_prediction":
            self.emit(ev.Log("warning", f"{written.with_suffix('.yaml')} is not SeaChange's, so it was left as it is: "
                                        "A1111 reads that config for this v-prediction model"))
        return written

    def save_merged(self, step: int) -> Path:
        """The end of a LoRA run with model.merged_output_path: the base model with the LoRA merged in at
        model.merge_strength, written in the output format and dtype. The adapters leave the model (it is the
        last thing the run does)."""
        target = Path(self.preset.model.merged_output_path).expanduser()
        self.emit(ev.Status(f"Merging the LoRA into {target}"))
        unwrapped = self.model.unwrapped(self.accelerator)
        if self.ema:
            self.ema.swap_in()
        for part in ("unet", "text_encoder"):
            lora.merge_adapter(getattr(unwrapped, part), self.preset.model.merge_strength)
        written = save_model(unwrapped, target, self.preset.model.output_format, self.preset.model.output_dtype,
                             {**self.metadata(target, step),
                              "seachange.merged_lora": str(Path(self.preset.model.output_path).name),
                              "seachange.merge_strength": str(self.preset.model.merge_strength)})
        if self.preset.model.output_format == "single_file":
            write_a1111_config(written, self.prediction_type)
        self.emit(ev.CheckpointWritten("merged", str(written), step))
        return written

    def metadata(self, path: Path, step: int) -> dict[str, str]:
        """The header every file written carries: modelspec's title, date, resolution and prediction type,
        SeaChange's step, objective, token length, run id and (model.embed_preset) the preset."""
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
        return metadata

    def save_final(self, position: Position) -> Path:
        """Write the final model to model.output_path. If that fails (disk full, a folder that appeared there,
        permissions), the trained state is not lost: it is written to a backup whatever backup_before_save says
        (or, if even that fails, the model alone to an emergency file in the workspace), and FinalSaveFailed
        says where it is and how to write the model from there."""
        target = Path(self.preset.model.output_path).expanduser()
        try:
            return self.save(target, "final", position.step)
        except Exception as error:  # noqa: BLE001 - any failure of the save is answered the same way
            if not self.accelerator.is_main_process:
                raise
            reason = plain_text(str(error).splitlines()[0] if str(error) else type(error).__name__)
            try:
                folder = self.backup(position) or self.backed_up_path
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

    def save_now_path(self, position: Position) -> Path:
        """WORKSPACE/save/PREFIXstep0000012-epoch0003[.safetensors]: a save during the run (Position.epoch_number)."""
        suffix = ".safetensors" if self.preset.model.output_format == "single_file" or self.model.method != "full" \
            else ""
        name = f"{self.preset.backup.prefix}step{position.step:07d}-epoch{position.epoch_number:04d}{suffix}"
        return self.workspace / "save" / name

    def backup(self, position: Position) -> Path | None:
        """Write the full training state (see backup.py) and prune old backups; on the main process only, and
        once per position. Returns the folder written, or None."""
        if not self.accelerator.is_main_process or position == self.backed_up:  # that state is written already
            return None
        self.emit(ev.Status(f"Writing backup at step {position.step}"))
        settings = self.preset.backup
        name = f"{settings.prefix}step{position.step:07d}-epoch{position.epoch_number:04d}"
        weights = self.model.trained_weights(self.accelerator, self.preset.training)
        folder = write_backup(backup_root(self.preset), name, weights, self.state.state_dict(), self.preset, position,
                              num_processes=self.accelerator.num_processes, run_id=self.run_id, dataset=self.dataset)
        for old in prune_backups(backup_root(self.preset), settings.rolling_backups):
            self.emit(ev.Log("info", f"Deleted old backup {old}"))
        self.backed_up, self.backed_up_path = position, folder
        self.emit(ev.CheckpointWritten("backup", str(folder), position.step))
        self.emit(ev.Status("Training"))
        return folder


class TensorBoard:
    """The run's TensorBoard events in WORKSPACE/tensorboard (when general.tensorboard is on, on the main
    process). TensorBoard is a view of the run, not the run: if writing fails (a full disk, a folder gone) it is
    turned off with a warning and the training goes on."""

    def __init__(self, preset: Preset, accelerator, emit: Callable):
        self.emit, self.writer = emit, None
        self.folder = Path(preset.general.workspace_dir).expanduser() / "tensorboard"
        if preset.general.tensorboard and accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.folder))

    def log_scalars(self, step: int, loss: float, smooth: float, lr: float) -> None:
        """loss/raw, loss/smoothed and lr at optimizer step `step`."""
        def write(w):
            w.add_scalar("loss/raw", loss, step)
            w.add_scalar("loss/smoothed", smooth, step)
            w.add_scalar("lr", lr, step)
        self.write(write)

    def write(self, write: Callable) -> None:
        """write(writer) with the SummaryWriter, when TensorBoard is on."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as error:  # noqa: BLE001 - the writer's thread re-raises any I/O error of its own
            writer, self.writer = self.writer, None
            self.emit(ev.Log("warning", f"TensorBoard turned off for this run: cannot write to {self.folder} "
                                        f"({plain_text(str(error))}); the training goes on"))
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - it failed already
                pass

    def close(self) -> None:
        """Flush and close the event files (TensorBoard stays off afterwards)."""
        self.write(lambda w: w.close())
        self.writer = None


A1111_CONFIG = Path(__file__).parents[1] / "assets" / "sd15" / "v1-inference.yaml"  # the original v1-inference.yaml
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


def sampling_hint(prediction_type: str, zero_terminal_snr: bool) -> str:
    """What the final message adds for a v-prediction model: ComfyUI reads no objective from an SD 1.5 file."""
    if prediction_type != "v_prediction":
        return ""
    return (". It predicts v: in ComfyUI load it through a ModelSamplingDiscrete node set to v_prediction"
            f"{' with zsnr on' if zero_terminal_snr else ''} (A1111 reads the .yaml beside a single file, diffusers "
            "the scheduler config)")


def suffixed(path: Path) -> Path:
    """`path` ending in .safetensors (the suffix added when it has another one or none)."""
    return path if path.suffix.lower() == ".safetensors" else path.with_name(path.name + ".safetensors")


def embedding_path(model_path: Path, placeholder: str, during_run: bool) -> Path:
    """Where a word trained beside a model or LoRA is written: PLACEHOLDER.safetensors next to the final output
    (A1111 calls an embedding by its file name), STEM-PLACEHOLDER.safetensors beside a save during the run."""
    if during_run:
        return model_path.with_name(f"{model_path.name.removesuffix('.safetensors')}-{placeholder}.safetensors")
    return model_path.parent / f"{placeholder}.safetensors"
