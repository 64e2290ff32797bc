"""How much GPU memory a preset's training step needs, estimated on a CPU in seconds without reading any weights,
and the fastest settings that fit a card. No UI here.

The estimate is of torch.cuda.max_memory_allocated over a training step on a CUDA GPU: what PyTorch's allocator
hands out (not the CUDA context, kernel workspaces or the allocator's cached but free blocks, which nvidia-smi adds).
It has five parts, in bytes:

- weights: every model part that stays on the GPU while steps run (the UNet; the text encoder when it learns or
  captions are not cached; the VAE when latents are not cached: training_model.prepare moves the others to CPU
  memory), in the dtype the trainer keeps it in, plus a LoRA's adapter or a new word's vectors (float32);
- optimizer_state: the state the preset's optimizer keeps, measured by stepping that optimizer (trainer.train.optim,
  the real library) once on one float32 tensor of each distinct trained shape (state_bytes);
- ema: the float32 shadow copy of the trained weights when training.ema is "gpu";
- gradients and activations: one micro-batch's forward and backward pass run on PyTorch's meta device (shapes
  and dtypes, no data) with the UNet (and the text encoder when it learns) as the preset configures them
  (gradient checkpointing, LoRA layers), the allocations counted as they happen (LiveBytes). CUDA's bf16/fp16
  autocast is reproduced on the meta device by AutocastLike (its lower-precision and float32 op lists) and
  attention by FlashLike (what flash / memory-efficient SDPA keeps: no attention matrix). "gradients" is what
  the gradients hold at the step's peak (all of them once accumulated; the fused back pass's one bucket),
  "activations" everything else the pass keeps (saved activations, temporaries, autocast's weight copies).

Torch.compile, several processes (DDP's gradient buckets) and cuDNN workspaces are not modelled; each is said in
the estimate's notes when the preset uses it.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from trainer.config import Preset, parse_resolutions
from trainer.errors import InputError

GIB = 2 ** 30
PARTS = ("weights", "gradients", "optimizer_state", "ema", "activations", "sampling")


@dataclass
class MemoryEstimate:
    """The estimated peak GPU memory of one training step, in bytes, by part (module docstring), for
    `batch_size` images of `resolution`² pixels; `sampling`: what taking samples between steps needs above that
    (sampling_bytes), so that `total` is the run's peak. notes: what the estimate leaves out for this preset."""
    weights: int
    gradients: int
    optimizer_state: int
    ema: int
    activations: int
    batch_size: int
    resolution: int
    notes: list[str] = field(default_factory=list)
    sampling: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, part) for part in PARTS)

    def to_json(self) -> dict:
        """{"total_gib", "parts_gib": {part: GiB}, "parts_bytes", "batch_size", "resolution", "notes"}."""
        return {"total_gib": round(self.total / GIB, 3),
                "parts_gib": {part: round(getattr(self, part) / GIB, 3) for part in PARTS},
                "parts_bytes": {part: getattr(self, part) for part in PARTS},
                "batch_size": self.batch_size, "resolution": self.resolution, "notes": list(self.notes)}


# ------------------------------------------------------------------------------------ CUDA's autocast, on meta


class FlashLike(torch.autograd.Function):
    """Scaled dot-product attention as flash / memory-efficient attention holds memory: the output and a float32
    log-sum-exp per query row, with q, k, v kept for the backward pass; never the (L, S) attention matrix. Inputs
    (B, H, L, E) query, (B, H, S, E) key, (B, H, S, Ev) value; output (B, H, L, Ev). No values are computed: it is
    for meta tensors."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty((*query.shape[:-1], value.shape[-1]))
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _flash_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return FlashLike.apply(query, key, value)


class AutocastLike(TorchFunctionMode):
    """CUDA autocast's dtype rules (torch.amp: matmuls and convolutions in the lower precision, normalisations,
    softmax and losses in float32, everything else promoted as usual) for tensors autocast does not see (meta).
    Like autocast it keeps one lower-precision copy of each trainable weight per forward pass (its cast cache,
    dropped with `clear()`); scaled dot-product attention runs as FlashLike. dtype None: no autocast (float32
    training), attention still FlashLike."""

    LOWER = {F.linear, F.conv2d, F.conv1d, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm, torch.mm,
             torch.Tensor.__matmul__, torch.Tensor.matmul, torch.einsum}
    FLOAT32 = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax,
               F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, torch.exp, torch.pow, torch.Tensor.pow,
               torch.cumsum, torch.norm, torch.sum}

    def __init__(self, dtype: torch.dtype | None, caching: bool = True):
        super().__init__()
        self.dtype, self.cache, self.caching = dtype, {}, caching

    def recomputing(self):
        """torch.utils.checkpoint's context_fn: (the forward's context, the recomputation's): a recomputed segment
        runs under these rules too (a mode is not restored by checkpoint on its own), without a cast cache."""
        return contextlib.nullcontext(), AutocastLike(self.dtype, caching=False)

    def clear(self) -> None:
        self.cache = {}

    def _to(self, value, dtype):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        if value.requires_grad and value.is_leaf:  # a weight: cast once per forward pass, like autocast's cache
            key = id(value)
            if key not in self.cache:
                cast = value.to(dtype)
                if not self.caching:
                    return cast
                self.cache[key] = cast
            return self.cache[key]
        return value.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            if self.dtype is not None:
                args = tuple(self._to(a, self.dtype) for a in args)
            return _flash_like(*args, **kwargs)
        if self.dtype is not None and func in self.LOWER:
            args = tuple(self._to(a, self.dtype) for a in args)
            kwargs = {k: self._to(v, self.dtype) for k, v in kwargs.items()}
        elif self.dtype is not None and func in self.FLOAT32:
            args = tuple(self._to(a, torch.float32) for a in args)
        return func(*args, **kwargs)


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensor storages that ops create while it is active and that are still alive, their peak, and
    how many of the live bytes were gradients at that peak (`gradients` is kept up to date by the caller, from
    gradient hooks). Each storage counts once (views share it) and stops counting when it is freed; one that an
    op first sees as an input was made before (a weight, an input) and does not count. Works on meta
    tensors, whose storages have sizes but no data."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.gradients = self.gradients_at_peak = 0
        self.seen = WeakIdKeyDictionary()

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in tree_leaves((args, kwargs)):  # made before: weights, inputs (their views share them)
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage() not in self.seen:
                self.seen[tensor.untyped_storage()] = 0
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self.seen:
                    size = storage.nbytes()
                    self.seen[storage] = size
                    self.live += size
                    weakref.finalize(storage, self._free, size)
        if self.live > self.peak:
            self.peak, self.gradients_at_peak = self.live, self.gradients
        return out


# ------------------------------------------------------------------------------------ the model, on meta


@dataclass
class MetaModel:
    """The preset's model on the meta device as training_model.TrainingModel.load would set it up: each part in its
    dtype, requires_grad as trained, the LoRA adapter on, gradient checkpointing as set. resident: the parts
    that stay on the GPU during steps; word: a new word's vectors (K, D) float32, or None."""
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    resident: list[torch.nn.Module]
    text_learns: bool
    word: torch.nn.Parameter | None
    weight_dtype: torch.dtype
    autocast: torch.dtype | None

    @property
    def trained(self) -> list[torch.nn.Parameter]:
        found = [p for m in (self.unet, self.text_encoder) for p in m.parameters() if p.requires_grad]
        return found + ([self.word] if self.word is not None else [])


def meta_model(preset: Preset) -> MetaModel:
    """Build the preset's model on the meta device from its configs only (models.empty_models: no weights are
    read), set up as TrainingModel.load sets it up on a GPU; SD 1.5's when no model is chosen yet. Raises
    InputError naming model.base_model when the model cannot be found or read."""
    from trainer.data.captions import captions_vary
    from trainer.errors import ModelLoadError
    from trainer.model import lora
    from trainer.model.models import empty_models
    from trainer.train.checks import quiet_libraries
    training = preset.training
    quiet_libraries()  # diffusers' casting notes
    try:
        unet, vae, text_encoder = _empty_or_demo(preset, empty_models)
    except ModelLoadError as error:
        raise InputError(f"model.base_model: {error}") from error
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training.mixed_precision)
    frozen = autocast or torch.float32  # trainer.data.cache.frozen_dtype on a GPU
    full = training.method == "full"
    weight_dtype = torch.bfloat16 if training.weight_dtype == "bfloat16" else torch.float32
    unet_learns = training.method != "embedding" and training.train_unet
    te_learns = training.method != "embedding" and training.train_text_encoder
    unet.requires_grad_(full and unet_learns).to(weight_dtype if full else frozen).train(unet_learns)
    text_encoder.requires_grad_(full and te_learns).to(weight_dtype if full and te_learns else frozen)
    vae.requires_grad_(False).to(frozen)
    if training.method == "lora":
        for part, on in (("unet", training.train_unet), ("text_encoder", training.train_text_encoder)):
            if on:
                module = {"unet": unet, "text_encoder": text_encoder}[part]
                specs = lora.target_layers(module, part, training.lora_conv_rank, training.lora_rank,
                                           training.lora_alpha, training.lora_conv_alpha)
                lora.add_adapter(module, part, training.lora_type, specs, training.lora_dropout)
    word = None
    if training.method == "embedding" or training.embedding_placeholder:
        width = text_encoder.get_input_embeddings().embedding_dim
        word = torch.nn.Parameter(torch.empty(training.embedding_vectors, width, device="meta"))
    if training.gradient_checkpointing:  # recomputed segments under AutocastLike too
        context = AutocastLike(autocast).recomputing
        unet.enable_gradient_checkpointing(functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False,
                                                             context_fn=context))
        if te_learns:
            text_encoder.gradient_checkpointing_enable({"use_reentrant": False, "context_fn": context})
    text_learns = te_learns or word is not None
    encodes_text = text_learns or any(captions_vary(c) for c in preset.concepts)
    resident = [unet] + ([text_encoder] if encodes_text else []) + ([vae] if not training.cache_latents else [])
    return MetaModel(unet, text_encoder, vae, resident, text_learns, word, weight_dtype if full else torch.float32,
                     autocast)


def _empty_or_demo(preset: Preset, empty_models):
    """The meta-device (UNet, VAE, text encoder) of model.base_model; of the tiny demo model when that is the
    demo's and not built yet (Start builds it); of SD 1.5 (the bundled configs) when no model is chosen yet."""
    from trainer.config import built_by_demo
    from trainer.model.models import BUNDLED_SD15
    path = preset.model.base_model
    if not path.strip():  # no model chosen yet: SD 1.5's own shapes (_notes says so)
        return empty_models(str(BUNDLED_SD15))
    if not Path(path).expanduser().exists() and built_by_demo(preset, path):
        from trainer.tools.demo import build_tiny_components
        tiny = build_tiny_components()
        return tuple(m.to("meta") for m in (tiny.unet, tiny.vae, tiny.text_encoder))
    return empty_models(path, preset.model.base_config or None)


def training_side(preset: Preset) -> int:
    """The largest side, in pixels, of a training image: the training resolution's or a concept's largest (a
    bucket holds about that many pixels, whatever its aspect)."""
    sizes = parse_resolutions(preset.training.resolution)
    for concept in preset.concepts:
        if concept.resolution.strip() and concept.role != "validation":
            sizes += parse_resolutions(concept.resolution)
    return max(sizes)


# ------------------------------------------------------------------------------------ the parts


def tensor_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def weights_bytes(model: MetaModel) -> int:
    """Bytes of every resident part's parameters and buffers, plus the word's vectors."""
    total = sum(tensor_bytes(m.parameters()) + tensor_bytes(m.buffers()) for m in model.resident)
    return total + (tensor_bytes([model.word]) if model.word is not None else 0)


def master_weights(training) -> bool:
    """optim.make_stepper's rule: bf16 weights with stochastic rounding step float32 proxies."""
    return training.weight_dtype == "bfloat16" and training.stochastic_rounding and training.method == "full"


def state_bytes(training, shapes: list[tuple[torch.Size, torch.dtype]]) -> int:
    """Bytes of the optimizer state training.optimizer keeps for trained tensors of these (shape, dtype)s (float32
    proxies' with master weights): the optimizer (trainer.train.optim.make_optimizer, the real library) is stepped once
    over one tensor of each distinct shape, and each tensor's state counts as often as its shape occurs. The step
    runs on the meta device where the optimizer can (no data: instant), else on the CPU with real tensors
    (bitsandbytes' 8-bit AdamW, Prodigy's .item() reads: seconds for SD 1.5). The state's layout is the library's
    on a GPU too (bitsandbytes keeps 8-bit moments and block-wise absmax for tensors of 4096+ elements on
    either). Results are kept for the process (the fit search asks again)."""
    from collections import Counter
    counts = Counter((tuple(shape), torch.float32 if master_weights(training) else dtype) for shape, dtype in shapes)
    if not counts:
        return 0
    from trainer.train.optim import optimizer_settings
    settings = (training.optimizer, training.learning_rate, training.weight_decay,
                tuple(sorted((k, repr(v)) for k, v in optimizer_settings(training).items())))
    missing = [key for key in counts if (settings, key) not in _STATE_BYTES]
    if missing:
        for device in ("meta", "cpu"):
            try:
                _STATE_BYTES.update({(settings, key): size
                                     for key, size in _step_once(training, missing, device).items()})
                break
            except (RuntimeError, ValueError, NotImplementedError):
                if device == "cpu":
                    raise
    return sum(count * _STATE_BYTES[(settings, key)] for key, count in counts.items())


_STATE_BYTES: dict = {}


def _step_once(training, keys: list[tuple[tuple, torch.dtype]], device: str) -> dict:
    """{(shape, dtype): bytes of its optimizer state} after one step of training.optimizer over one tensor each."""
    from trainer.train.optim import make_optimizer, optimizer_settings
    params = {key: torch.nn.Parameter(torch.full(key[0], 0.01, dtype=key[1], device=device)) for key in keys}
    for p in params.values():
        p.grad = torch.full_like(p, 1e-3)
    optimizer = make_optimizer(training.optimizer, [{"params": list(params.values())}], training.learning_rate,
                               weight_decay=training.weight_decay, **optimizer_settings(training))
    optimizer.step()
    inner = getattr(optimizer, "optimizer", optimizer)  # a wrapper's (schedule-free over Prodigy) own state too
    states = [optimizer.state] + ([inner.state] if inner is not optimizer else [])
    found = {}
    for key, p in params.items():
        held = [value for state in states for value in state.get(p, {}).values()]
        found[key] = sum(v.numel() * v.element_size() for v in held if isinstance(v, torch.Tensor))
    return found


def pass_bytes(model: MetaModel, training, batch: int, side: int) -> tuple[int, int]:
    """(gradient bytes, other bytes) at the peak of one micro-batch's forward and backward pass of `batch` images
    of side x side pixels, run on the meta device under LiveBytes as trainer.train.step.micro_batch_loss runs it
    (VAE encoding when latents are not cached, the captions' encoding when the text learns or is not cached, the
    UNet under autocast, a float32 loss). "Other" is everything but the weights and gradients: saved activations,
    temporaries, autocast's weight copies. With gradient accumulation the pass starts with every gradient held
    (the earlier micro-batches'); with the fused back pass each gradient is stepped and freed as it completes
    (the bucket it waits in is added by the caller)."""
    from trainer.data.prompts import chunk_count
    unet, te = model.unet, model.text_encoder
    trained, tracker, autocast = model.trained, LiveBytes(), AutocastLike(model.autocast)
    held = 0  # gradients that exist before the pass: the earlier micro-batches' when accumulating
    if training.fused_backward:  # stepped as soon as complete (optim.Stepper.add_to_bucket), then freed
        hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in trained]
    else:
        counted = set()

        def count(p):
            if id(p) not in counted:
                counted.add(id(p))
                tracker.gradients += p.grad.untyped_storage().nbytes()
        hooks = [p.register_post_accumulate_grad_hook(count) for p in trained]
        if training.gradient_accumulation_steps > 1:
            held = tensor_bytes(trained)
            for p in trained:
                p.grad = torch.empty_like(p)
                counted.add(id(p))
    channels, latent = unet.config.in_channels, side // 8
    tokens = chunk_count(training.max_token_length) * 77
    try:
        with autocast, tracker:
            if model.vae in model.resident:  # latents encoded every step, without gradients
                with torch.no_grad():
                    pixels = torch.empty(batch, 3, side, side, device="meta", dtype=model.vae.dtype)
                    mean = model.vae.encode(pixels).latent_dist.mean.float()
            else:
                mean = torch.empty(batch, channels, latent, latent, device="meta")
            latents, noise = mean * 1.0, torch.empty_like(mean)
            noisy = latents + noise
            ids = torch.zeros(batch * tokens // 77, 77, dtype=torch.long, device="meta")
            if model.text_learns:
                hidden = _encode(te, ids, model.word)
            elif te in model.resident:
                with torch.no_grad():
                    hidden = te(ids)[0]
            else:  # cached embeddings
                hidden = torch.empty(batch * tokens // 77, 77, te.config.hidden_size, device="meta",
                                     dtype=te.dtype)
            hidden = hidden.reshape(batch, tokens, -1)
            timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
            pred = unet(noisy.to(model.weight_dtype), timesteps, hidden.to(model.weight_dtype)).sample
            autocast.clear()
            autocast.caching = False  # autocast's cache ends with its region; recomputation casts anew
            loss = F.mse_loss(pred.float(), noise)
            loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
        for p in trained:
            p.grad = None
    return held + tracker.gradients_at_peak, tracker.peak - tracker.gradients_at_peak


def _encode(text_encoder, ids, word):
    """The text encoder's hidden states with gradients, the word's vectors in the graph (their hook's place)."""
    if word is None:
        return text_encoder(ids)[0]
    table = text_encoder.get_input_embeddings()
    handle = table.register_forward_hook(lambda module, args, out: out + word.sum() * 0)
    try:
        return text_encoder(ids)[0]
    finally:
        handle.remove()


def estimate_memory(preset: Preset, batch_size: int | None = None) -> MemoryEstimate:
    """The peak GPU memory of a training run of `preset` (module docstring): a training step at its batch size
    (or `batch_size`) and largest training side, and the samples taken between steps. Takes seconds on a CPU
    (passes on the meta device, the optimizer stepped on one tensor per distinct shape); the model and passes
    are kept for the process, so the fit search measures each only once. Raises InputError naming the field when
    the model cannot be read or the preset cannot train."""
    from trainer.train.optim import Stepper
    training = preset.training
    batch, side = batch_size or training.batch_size, training_side(preset)
    model = _cached_model(preset)
    trained = model.trained
    grads_all = tensor_bytes(trained)
    state = state_bytes(training, [(p.shape, p.dtype) for p in trained])
    ema = 4 * sum(p.numel() for p in trained) if training.ema == "gpu" else 0
    key = (_model_key(preset), batch, side, training.fused_backward, training.gradient_accumulation_steps > 1,
           training.max_token_length)
    if key not in _PASSES:
        _PASSES[key] = pass_bytes(model, training, batch, side)
    pass_grads, pass_other = _PASSES[key]
    bucket = min(Stepper.BUCKET, sum(p.numel() for p in trained))
    # the optimizer step: every gradient (the fused back pass: one bucket's), and with master weights the float32
    # copies of one bucket's weights and gradients and its rounded bf16 result (optim.Stepper._run: 10 bytes each)
    step_grads = bucket * model.weight_dtype.itemsize if training.fused_backward else grads_all
    step_other = 10 * bucket if master_weights(training) else 0
    if training.fused_backward:  # buckets are stepped during the back pass: while its activations live
        pass_grads += bucket * model.weight_dtype.itemsize  # the bucket that waits to be stepped
        pass_other += step_other
    gradients, other = max((pass_grads, pass_other), (step_grads, step_other), key=sum)
    found = MemoryEstimate(weights_bytes(model), gradients, state, ema, other, batch, side, notes=_notes(preset))
    # samples are taken between steps, when no gradient or activation exists: what they need beyond that
    found.sampling = max(0, sampling_bytes(model, preset) - gradients - other)
    return found


_MODELS: dict = {}
_PASSES: dict = {}


def _model_key(preset: Preset) -> str:
    """What meta_model builds from: the model and the training fields it reads."""
    import json
    t = preset.training
    fields = ("method", "weight_dtype", "mixed_precision", "train_unet", "train_text_encoder", "lora_type",
              "lora_rank", "lora_alpha", "lora_conv_rank", "lora_conv_alpha", "lora_dropout", "embedding_placeholder",
              "embedding_vectors", "gradient_checkpointing", "cache_latents")
    from trainer.data.captions import captions_vary
    return json.dumps([preset.model.base_model, preset.model.base_config, preset.general.demo_dir,
                       [getattr(t, name) for name in fields], any(captions_vary(c) for c in preset.concepts)])


def _cached_model(preset: Preset) -> MetaModel:
    key = _model_key(preset)
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time: SD 1.5 on meta is small, but its modules are many
        _MODELS[key] = meta_model(preset)
    return _MODELS[key]


def sampling_bytes(model: MetaModel, preset: Preset) -> int:
    """Bytes beyond the resident weights, optimizer state and EMA shadow that taking samples between steps needs
    (trainer.train.outputs.RunOutputs._sample): the VAE and text encoder brought back to the GPU when they were parked,
    the raw weights kept aside while EMA weights are swapped in (ema.EMA.swap_in), and the peak of the sampling
    passes for the largest sample prompt (the text encoder, the UNet on a classifier-free-guidance batch of 2, the
    VAE decoding one image; no gradients), measured on the meta device. 0 when the run takes no samples."""
    sampling = preset.sampling
    if not sampling.prompts or sampling.unit == "never":
        return 0
    brought = sum(tensor_bytes(m.parameters()) + tensor_bytes(m.buffers())
                  for m in (model.vae, model.text_encoder) if m not in model.resident)
    swapped = tensor_bytes(model.trained) if preset.training.ema != "off" else 0
    width = max(p.width for p in sampling.prompts)
    height = max(p.height for p in sampling.prompts)
    unet, tracker = model.unet, LiveBytes()
    with AutocastLike(model.autocast), tracker, torch.no_grad():
        hidden = model.text_encoder(torch.zeros(2, 77, dtype=torch.long, device="meta"))[0]
        latents = torch.empty(2, unet.config.in_channels, height // 8, width // 8, device="meta")
        noise = unet(latents.to(unet.dtype), torch.zeros(2, dtype=torch.long, device="meta"),
                     hidden.to(unet.dtype)).sample
        del hidden
        model.vae.decode(noise[:1].to(model.vae.dtype) * 1.0)
    return brought + swapped + tracker.peak


def _notes(preset: Preset) -> list[str]:
    training, notes = preset.training, []
    if not preset.model.base_model.strip():
        notes.append("no base model chosen yet: sized as SD 1.5")
    if training.compile:
        notes.append("torch.compile usually needs less memory for activations than this (eager) estimate")
    if preset.general.device == "cpu":
        notes.append("general.device is cpu: this is what a CUDA GPU would need")
    return notes


def detected_vram_gib() -> float | None:
    """The first CUDA GPU's total memory in GiB, or None without one."""
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
