"""An independent reference of the LoRA-family and textual-inversion file formats for Stable Diffusion 1.5, as the
programs that read them do it: kohya sd-scripts (which wrote the format), AUTOMATIC1111's webui, ComfyUI and
diffusers. Written from those programs' loader code (cited per function), not from SeaChange's writer, so tests can
check SeaChange's files against it.

Everything here is a pure function of plain data: dicts of tensors, names, shapes, module tables. The one file read
is the shared state-dict listing of the original SD 1.x LatentDiffusion model (`ldm_reference`).

Sources read (GitHub; the stored versions' commits in brackets):
- kohya-ss/sd-scripts [48d368fa] networks/lora.py (LoRANetwork.create_modules, target classes),
  library/original_unet.py (the UNet kohya trains SD 1.x on), library/sai_model_spec.py, library/train_util.py,
  library/model_util.py, train_network.py, train_textual_inversion.py.
- AUTOMATIC1111/stable-diffusion-webui extensions-builtin/Lora/networks.py [873edba4]
  (convert_diffusers_name_to_compvis, assign_network_names_to_compvis_modules, load_network), network.py [f2844bd0]
  (NetworkModule.calc_scale, finalize_updown, NetworkOnDisk.detect_version), network_lora.py [ea903819],
  network_hada.py [c302b3ab], network_lokr.py [fe89b098], lyco_helpers.py [f8391b8a];
  modules/textual_inversion/textual_inversion.py [22ecb78b] (EmbeddingDatabase.load_from_file).
- comfyanonymous/ComfyUI comfy/lora.py [41444b52] (load_lora, model_lora_keys_unet, model_lora_keys_clip),
  comfy/utils.py [2ba5cc8b] (unet_to_diffusers), comfy/model_detection.py [d415a44f] (detect_unet_config),
  comfy/weight_adapter/lora.py [0323d874], loha.py [17adbb5c], lokr.py [179c2d35] (calculate_weight),
  comfy/sd1_clip.py [b55c2247] (load_embed, SDClipModel.set_up_textual_embeddings).
- KohakuBlueleaf/LyCORIS lycoris/modules/lokr.py [dae2498c] (alpha := lora_dim when both Kronecker factors are
  full matrices).
- diffusers (installed) loaders/lora_pipeline.py (StableDiffusionLoraLoaderMixin.lora_state_dict),
  loaders/lora_conversion_utils.py (_convert_non_diffusers_lora_to_diffusers), loaders/textual_inversion.py.
"""
from __future__ import annotations

import collections
import functools
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

REFERENCE_TSV = Path("/work/shared/reference/sd15_ldm_state_dict.tsv")
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_TE_PREFIX = "cond_stage_model.transformer.text_model."

# ---------------------------------------------------------------------------------------------------------------
# 1. Which modules kohya's networks/lora.py gives a LoRA (SD 1.x)
# ---------------------------------------------------------------------------------------------------------------

# networks/lora.py, class LoRANetwork.
KOHYA_UNET_TARGETS = ("Transformer2DModel",)
KOHYA_UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
KOHYA_TE_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
KOHYA_UNET_PREFIX = "lora_unet"
KOHYA_TE_PREFIX = "lora_te"

# One row per module of a model, as torch's named_modules() yields them: (qualified name, class name, kernel size
# for a Conv2d, else None).
ModuleRow = tuple[str, str, "tuple[int, ...] | None"]


def module_table(root: torch.nn.Module) -> list[ModuleRow]:
    """The rows kohya's walk sees: every module of `root` from `named_modules()` (torch's default, which lists a
    module registered under two names once), as (qualified name, class name, kernel size or None).

    Works on models built on the meta device (nothing is read from the weights)."""
    rows = []
    for name, module in root.named_modules():
        kernel = tuple(module.kernel_size) if isinstance(module, torch.nn.Conv2d) else None
        rows.append((name, type(module).__name__, kernel))
    return rows


def as_transformers4_clip_rows(rows: Iterable[ModuleRow]) -> list[ModuleRow]:
    """A CLIPTextModel's module rows in transformers 4.x layout. kohya's text-encoder names come from transformers
    4.x, where CLIPTextModel keeps its modules under `text_model` (a CLIPTextTransformer): hence
    "lora_te_text_model_encoder_layers_0_..." in every kohya SD 1.x file, and the readers match exactly that
    (A1111 `lora_te_text_model_encoder_layers_(\\d+)_(.+)`, ComfyUI "lora_te_text_model_encoder_layers_{}_{}").
    transformers 5 dropped the wrapper (modules are `encoder.layers.0...`), so rows without a `text_model` module
    get "text_model." put in front of every non-root name; rows that have one come back unchanged."""
    rows = list(rows)
    if any(name == "text_model" for name, _, _ in rows):
        return rows
    return [(f"text_model.{name}" if name else name, cls, kernel) for name, cls, kernel in rows]


def kohya_lora_names(rows: Iterable[ModuleRow], prefix: str, targets: Iterable[str],
                     conv3x3: bool) -> dict[str, bool]:
    """The LoRA module names kohya's LoRANetwork.create_modules makes for one model, with whether each wraps a
    Conv2d whose kernel is not 1x1 (True: it gets a LoRA only when conv_dim is given).

    rows: `module_table(model)`. For each module whose class name is in `targets`, every descendant (and the module
    itself) whose class name is exactly "Linear" or "Conv2d" becomes `prefix + "." + parent + "." + child` with
    every "." replaced by "_" (networks/lora.py: `lora_name = prefix + "." + name + "." + child_name`;
    `lora_name.replace(".", "_")`). Linear and 1x1 Conv2d modules always get a LoRA (dim = network_dim); other
    Conv2d modules only when `conv3x3` (dim = conv_dim; `elif self.conv_lora_dim is not None`).

    Raises ValueError on a duplicate name (kohya asserts "duplicated lora name")."""
    rows = list(rows)
    targets = set(targets)
    out: dict[str, bool] = {}
    for parent, cls, _ in rows:
        if cls not in targets:
            continue
        for name, child_cls, kernel in rows:
            if parent and not (name == parent or name.startswith(parent + ".")):
                continue
            if child_cls not in ("Linear", "Conv2d"):
                continue
            if name == parent:
                child = ""
            else:
                child = name[len(parent) + 1:] if parent else name
            is_big_conv = child_cls == "Conv2d" and kernel != (1, 1)
            if is_big_conv and not conv3x3:
                continue
            lora_name = f"{prefix}.{parent}.{child}".replace(".", "_")
            if lora_name in out:
                raise ValueError(f"duplicated lora name: {lora_name}")
            out[lora_name] = is_big_conv
    return out


def kohya_sd15_lora_module_names(unet_rows: Iterable[ModuleRow], te_rows: Iterable[ModuleRow],
                                 conv: bool) -> set[str]:
    """Every module name (`lora_unet_...`, `lora_te_...`) a kohya networks.lora LoRA for SD 1.x has, without
    (conv=False, plain LoRA) or with (conv=True, "LoCon": network_args conv_dim) 3x3 convolutions.

    unet_rows / te_rows: `module_table(unet)` / `module_table(text_encoder)` of a diffusers UNet2DConditionModel and
    a transformers CLIPTextModel (either transformers 4.x or 5.x layout: text-encoder names always come out in
    kohya's 4.x spelling, see as_transformers4_clip_rows). With conv, kohya widens the UNet targets to
    ResnetBlock2D, Downsample2D and Upsample2D, which also brings in their Linear time_emb_proj and 1x1
    conv_shortcut (networks/lora.py: `if modules_dim is not None or self.conv_lora_dim is not None ...:
    target_modules += ..._CONV2D_3X3`).

    Kohya trains SD 1.x on its own UNet (library/original_unet.py), whose module names are those of diffusers'
    UNet2DConditionModel for every module a LoRA can wrap (Downsample2D's conv is `conv`, the attention output
    `to_out.0`, the feed-forward `ff.net.0.proj` and `ff.net.2`), so walking a diffusers UNet gives kohya's names."""
    unet_targets = KOHYA_UNET_TARGETS + (KOHYA_UNET_CONV_TARGETS if conv else ())
    names = set(kohya_lora_names(unet_rows, KOHYA_UNET_PREFIX, unet_targets, conv3x3=conv))
    te = kohya_lora_names(as_transformers4_clip_rows(te_rows), KOHYA_TE_PREFIX, KOHYA_TE_TARGETS, conv3x3=conv)
    if names & set(te):
        raise ValueError("duplicated lora name between UNet and text encoder")
    return names | set(te)


def kohya_sd15_lora_modules(unet: torch.nn.Module, text_encoder: torch.nn.Module,
                            conv: bool) -> dict[str, tuple[int, ...]]:
    """kohya's LoRA module names for these models (see kohya_sd15_lora_module_names) mapped to the weight shape of
    the module each wraps (Linear: (out, in); Conv2d: (out, in, kh, kw)). Works on meta-device models."""
    out: dict[str, tuple[int, ...]] = {}
    names = kohya_sd15_lora_module_names(module_table(unet), module_table(text_encoder), conv)
    te_names = dict(zip((name for name, _, _ in module_table(text_encoder)),
                        (name for name, _, _ in as_transformers4_clip_rows(module_table(text_encoder)))))
    for prefix, root, rename in ((KOHYA_UNET_PREFIX + "_", unet, {}),
                                 (KOHYA_TE_PREFIX + "_", text_encoder, te_names)):
        for qualified, module in root.named_modules():
            key = prefix + rename.get(qualified, qualified).replace(".", "_")
            if key in names:
                out[key] = tuple(module.weight.shape)
    missing = names - set(out)
    if missing:
        raise ValueError(f"names without a module: {sorted(missing)[:5]}")
    return out


def kohya_lora_tensor_shapes(weight_shape: Iterable[int], rank: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors kohya's LoRAModule saves for a module with this weight shape and rank:
    Linear (out, in): lora_down.weight (rank, in), lora_up.weight (out, rank); Conv2d (out, in, kh, kw):
    lora_down.weight (rank, in, kh, kw) (same kernel, stride and padding as the module), lora_up.weight
    (out, rank, 1, 1); alpha () (networks/lora.py LoRAModule.__init__, `register_buffer("alpha", torch.tensor(...))`).
    Raises ValueError for other weight ranks."""
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) == 2:
        return {"lora_down.weight": (rank, shape[1]), "lora_up.weight": (shape[0], rank), "alpha": ()}
    if len(shape) == 4:
        return {"lora_down.weight": (rank, shape[1], shape[2], shape[3]), "lora_up.weight": (shape[0], rank, 1, 1),
                "alpha": ()}
    raise ValueError(f"not a Linear or Conv2d weight shape: {shape}")


# ---------------------------------------------------------------------------------------------------------------
# 2. AUTOMATIC1111: kohya (diffusers-style) name -> compvis/LDM layer
# ---------------------------------------------------------------------------------------------------------------

_A1111_RESNET_SUFFIX = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                        "conv_shortcut": "skip_connection"}


def _ints(match: re.Match) -> list:
    return [int(g) if re.match(r"\d+", g) else g for g in match.groups()]


def a1111_compvis_name(kohya_name: str, is_sd2: bool = False) -> str:
    """AUTOMATIC1111's convert_diffusers_name_to_compvis (extensions-builtin/Lora/networks.py): the network layer
    name, in the underscore spelling of `a1111_layer_weight_shapes`, for a kohya module name. Names it does not
    recognise come back unchanged (as in A1111). Example:
    lora_unet_down_blocks_0_attentions_0_proj_in -> diffusion_model_input_blocks_1_1_proj_in;
    lora_te_text_model_encoder_layers_0_mlp_fc1 -> transformer_text_model_encoder_layers_0_mlp_fc1."""
    key = kohya_name
    m = re.match(r"lora_unet_conv_in(.*)", key)
    if m:
        return f"diffusion_model_input_blocks_0_0{m.group(1)}"
    m = re.match(r"lora_unet_conv_out(.*)", key)
    if m:
        return f"diffusion_model_out_2{m.group(1)}"
    m = re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key)
    if m:
        g = _ints(m)
        return f"diffusion_model_time_embed_{g[0] * 2 - 2}{g[1]}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        g = _ints(m)
        suffix = _A1111_RESNET_SUFFIX.get(g[3], g[3]) if g[1] == "resnets" else g[3]
        return f"diffusion_model_input_blocks_{1 + g[0] * 3 + g[2]}_{1 if g[1] == 'attentions' else 0}_{suffix}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        g = _ints(m)
        suffix = _A1111_RESNET_SUFFIX.get(g[2], g[2]) if g[0] == "resnets" else g[2]
        return f"diffusion_model_middle_block_{1 if g[0] == 'attentions' else g[1] * 2}_{suffix}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        g = _ints(m)
        suffix = _A1111_RESNET_SUFFIX.get(g[3], g[3]) if g[1] == "resnets" else g[3]
        return f"diffusion_model_output_blocks_{g[0] * 3 + g[2]}_{1 if g[1] == 'attentions' else 0}_{suffix}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key)
    if m:
        return f"diffusion_model_input_blocks_{3 + int(m.group(1)) * 3}_0_op"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key)
    if m:
        i = int(m.group(1))
        return f"diffusion_model_output_blocks_{2 + i * 3}_{2 if i > 0 else 1}_conv"
    m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        if is_sd2:
            if "mlp_fc1" in rest:
                return f"model_transformer_resblocks_{layer}_{rest.replace('mlp_fc1', 'mlp_c_fc')}"
            if "mlp_fc2" in rest:
                return f"model_transformer_resblocks_{layer}_{rest.replace('mlp_fc2', 'mlp_c_proj')}"
            return f"model_transformer_resblocks_{layer}_{rest.replace('self_attn', 'attn')}"
        return f"transformer_text_model_encoder_layers_{layer}_{rest}"
    return key


def ldm_reference(path: str | Path | None = None) -> dict[str, tuple[int, ...]]:
    """The state dict of the original SD 1.x LatentDiffusion model (/work/shared/reference/sd15_ldm_state_dict.tsv:
    name, shape, dtype per line, tab-separated) as {tensor name: shape}. Raises FileNotFoundError without it."""
    return dict(_read_ldm_reference(str(path or REFERENCE_TSV)))


@functools.cache
def _read_ldm_reference(path: str) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        name, shape, _dtype = line.split("\t")
        out[name] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return out


def a1111_layer_weight_shapes(reference: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """The layers A1111 can put a LoRA on in an SD 1.x checkpoint, as {network layer name: weight shape}.

    A1111's assign_network_names_to_compvis_modules names every module of `sd_model.model` (the DiffusionWrapper,
    whose state-dict keys are the checkpoint's `model.*` minus "model.") and of `sd_model.cond_stage_model.wrapped`
    (FrozenCLIPEmbedder: the checkpoint's `cond_stage_model.*` minus "cond_stage_model.") with "." replaced by
    "_"; a LoRA applies only to a layer with a weight (network_apply_weights: `hasattr(self, 'weight')`).
    reference: `ldm_reference()` by default."""
    reference = ldm_reference() if reference is None else reference
    out = {}
    for name, shape in reference.items():
        if not name.endswith(".weight"):
            continue
        module = name[:-len(".weight")]
        if module.startswith("model."):
            out[module[len("model."):].replace(".", "_")] = shape
        elif module.startswith("cond_stage_model."):
            out[module[len("cond_stage_model."):].replace(".", "_")] = shape
    return out


@functools.cache
def _default_a1111_layers() -> dict[str, tuple[int, ...]]:
    return a1111_layer_weight_shapes()


def a1111_resolve(kohya_name: str, layers: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
    """The A1111 layer a module named `kohya_name` lands on for an SD 1.x model, or None when A1111 drops it
    ("Failed to match keys when loading network"). Follows load_network: convert_diffusers_name_to_compvis, then
    the `(.*)_([qkv]_proj)$` fallback, then "lora_unet" -> "diffusion_model" (files with LDM names) and
    "lora_te1_text_model" -> "transformer_text_model". layers: `a1111_layer_weight_shapes()` by default."""
    layers = _default_a1111_layers() if layers is None else layers
    is_sd2 = any(k.startswith("model_transformer_resblocks") for k in layers)
    key = a1111_compvis_name(kohya_name, is_sd2)
    if key in layers:
        return key
    m = re.match(r"(.*)_([qkv]_proj)$", key)
    if m and m.group(1) in layers:
        return m.group(1)
    if "lora_unet" in kohya_name:
        key = kohya_name.replace("lora_unet", "diffusion_model")
        return key if key in layers else None
    if "lora_te1_text_model" in kohya_name:
        for replacement in ("0_transformer_text_model", "transformer_text_model"):
            key = kohya_name.replace("lora_te1_text_model", replacement)
            if key in layers:
                return key
    return None


def a1111_sd_version(metadata: Mapping[str, str]) -> str:
    """The base-model version A1111 shows for a LoRA file from its metadata (network.py NetworkOnDisk.
    detect_version): "SDXL" when ss_base_model_version starts with "sdxl_", "SD2" when ss_v2 == "True", "SD1" when
    there is any metadata, else "Unknown". By default (option lora_show_all off) A1111's Lora page hides networks
    detected as for another version than the loaded model's (ui_extra_networks_lora.py). The same file read
    takes ss_output_name as the network's alias (what `<lora:alias:1>` refers to with the default "Alias from
    file") and sshs_model_hash, when present, as its hash instead of hashing the file."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    if len(metadata):
        return "SD1"
    return "Unknown"


# ---------------------------------------------------------------------------------------------------------------
# 3. ComfyUI: the LoRA key map for an SD 1.x model
# ---------------------------------------------------------------------------------------------------------------

# comfy/utils.py
_COMFY_UNET_MAP_ATTENTIONS = ("proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm.weight",
                              "norm.bias")
_COMFY_TRANSFORMER_BLOCKS = (
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
    "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight", "attn1.to_out.0.bias",
    "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight", "attn2.to_out.0.bias",
    "ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias",
)
_COMFY_UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight", "in_layers.2.bias": "conv1.bias",
    "emb_layers.1.weight": "time_emb_proj.weight", "emb_layers.1.bias": "time_emb_proj.bias",
    "out_layers.3.weight": "conv2.weight", "out_layers.3.bias": "conv2.bias",
    "skip_connection.weight": "conv_shortcut.weight", "skip_connection.bias": "conv_shortcut.bias",
    "in_layers.0.weight": "norm1.weight", "in_layers.0.bias": "norm1.bias",
    "out_layers.0.weight": "norm2.weight", "out_layers.0.bias": "norm2.bias",
}
_COMFY_UNET_MAP_BASIC = (
    ("input_blocks.0.0.weight", "conv_in.weight"), ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"), ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"), ("out.2.bias", "conv_out.bias"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"), ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"), ("time_embed.2.bias", "time_embedding.linear_2.bias"),
)
# comfy/lora.py
COMFY_LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                       "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                       "self_attn.out_proj": "self_attn_out_proj"}


def comfyui_model_shapes(reference: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """The state-dict keys (and shapes) of the UNet and CLIP ComfyUI builds from an SD 1.x checkpoint: the UNet's
    under "diffusion_model." (BaseModel.diffusion_model) and the text encoder's under "clip_l.transformer." (SD1
    ClipModel.clip_l, whose own CLIP implementation keeps the transformers names). reference: `ldm_reference()`."""
    reference = ldm_reference() if reference is None else reference
    out = {}
    for name, shape in reference.items():
        if name.startswith("model.diffusion_model."):
            out[name[len("model."):]] = shape
        elif name.startswith("cond_stage_model.transformer."):
            out["clip_l." + name[len("cond_stage_model."):]] = shape
    return out


def _count_blocks(keys: list[str], template: str) -> int:
    count = 0
    while any(k.startswith(template.format(count)) for k in keys):
        count += 1
    return count


def comfyui_detect_unet_config(unet_keys: Iterable[str]) -> dict:
    """The part of ComfyUI's detect_unet_config (comfy/model_detection.py, SD-UNet branch) that the LoRA key map
    uses, from the UNet's state-dict keys without prefix ("input_blocks.0.0.weight", ...): num_res_blocks,
    channel_mult's length (as num_blocks), transformer_depth (per input res block), transformer_depth_output (per
    output block, listed from the last output block to the first) and transformer_depth_middle."""
    keys = list(unet_keys)
    num_res_blocks, transformer_depth, transformer_depth_output = [], [], []
    last_res_blocks = 0
    n_input = _count_blocks(keys, "input_blocks.{}.")
    for count in range(n_input):
        prefix = f"input_blocks.{count}."
        prefix_output = f"output_blocks.{n_input - count - 1}."
        depth_output = _count_blocks(keys, prefix_output + "1.transformer_blocks.{}")
        if prefix + "0.op.weight" in keys:  # a new level
            num_res_blocks.append(last_res_blocks)
            last_res_blocks = 0
            transformer_depth_output.append(depth_output)
        else:
            if prefix + "0.in_layers.0.weight" in keys:
                last_res_blocks += 1
                transformer_depth.append(_count_blocks(keys, prefix + "1.transformer_blocks.{}"))
            if prefix_output + "0.in_layers.0.weight" in keys:
                transformer_depth_output.append(depth_output)
    num_res_blocks.append(last_res_blocks)
    if "middle_block.1.proj_in.weight" in keys:
        middle = _count_blocks(keys, "middle_block.1.transformer_blocks.{}")
    elif "middle_block.0.in_layers.0.weight" in keys:
        middle = -1
    else:
        middle = -2
    return {"num_res_blocks": num_res_blocks, "num_blocks": len(num_res_blocks),
            "transformer_depth": transformer_depth, "transformer_depth_output": transformer_depth_output,
            "transformer_depth_middle": middle}


def comfyui_unet_to_diffusers(config: Mapping) -> dict[str, str]:
    """ComfyUI's unet_to_diffusers (comfy/utils.py): {diffusers UNet key: LDM UNet key} for a config from
    `comfyui_detect_unet_config`. Like ComfyUI it also lists a downsampler for the last level and an upsampler for
    the last up block, which no SD 1.x UNet has (harmless: nothing maps onto them)."""
    num_res_blocks = list(config["num_res_blocks"])
    num_blocks = config["num_blocks"]
    transformer_depth = list(config["transformer_depth"])
    transformer_depth_output = list(config["transformer_depth_output"])
    out: dict[str, str] = {}
    for x in range(num_blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for ldm, diff in _COMFY_UNET_MAP_RESNET.items():
                out[f"down_blocks.{x}.resnets.{i}.{diff}"] = f"input_blocks.{n}.0.{ldm}"
            depth = transformer_depth.pop(0)
            if depth > 0:
                for b in _COMFY_UNET_MAP_ATTENTIONS:
                    out[f"down_blocks.{x}.attentions.{i}.{b}"] = f"input_blocks.{n}.1.{b}"
                for t in range(depth):
                    for b in _COMFY_TRANSFORMER_BLOCKS:
                        out[f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = \
                            f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
            n += 1
        for k in ("weight", "bias"):
            out[f"down_blocks.{x}.downsamplers.0.conv.{k}"] = f"input_blocks.{n}.0.op.{k}"
    for b in _COMFY_UNET_MAP_ATTENTIONS:
        out[f"mid_block.attentions.0.{b}"] = f"middle_block.1.{b}"
    for t in range(max(config["transformer_depth_middle"], 0)):
        for b in _COMFY_TRANSFORMER_BLOCKS:
            out[f"mid_block.attentions.0.transformer_blocks.{t}.{b}"] = f"middle_block.1.transformer_blocks.{t}.{b}"
    for i, n in enumerate((0, 2)):
        for ldm, diff in _COMFY_UNET_MAP_RESNET.items():
            out[f"mid_block.resnets.{i}.{diff}"] = f"middle_block.{n}.{ldm}"
    num_res_blocks = list(reversed(num_res_blocks))
    for x in range(num_blocks):
        n = (num_res_blocks[x] + 1) * x
        length = num_res_blocks[x] + 1
        for i in range(length):
            c = 0
            for ldm, diff in _COMFY_UNET_MAP_RESNET.items():
                out[f"up_blocks.{x}.resnets.{i}.{diff}"] = f"output_blocks.{n}.0.{ldm}"
            c += 1
            depth = transformer_depth_output.pop()
            if depth > 0:
                c += 1
                for b in _COMFY_UNET_MAP_ATTENTIONS:
                    out[f"up_blocks.{x}.attentions.{i}.{b}"] = f"output_blocks.{n}.1.{b}"
                for t in range(depth):
                    for b in _COMFY_TRANSFORMER_BLOCKS:
                        out[f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = \
                            f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
            if i == length - 1:
                for k in ("weight", "bias"):
                    out[f"up_blocks.{x}.upsamplers.0.conv.{k}"] = f"output_blocks.{n}.{c}.conv.{k}"
            n += 1
    for ldm, diff in _COMFY_UNET_MAP_BASIC:
        out[diff] = ldm
    return out


def comfyui_unet_key_map(model_keys: Iterable[str] | None = None) -> dict[str, str]:
    """ComfyUI's model_lora_keys_unet for an SD 1.x model (comfy/lora.py): {LoRA module name: model weight key}.
    From the model's own keys: "lora_unet_" + LDM name, "lora_prior_unet_" + LDM name and the bare LDM module
    path; from unet_to_diffusers: "lora_unet_" + diffusers name (the kohya names), "lycoris_" + diffusers name, and
    the diffusers attention-processor names with and without "unet.".
    model_keys: the ComfyUI model's state-dict keys (`comfyui_model_shapes()` by default)."""
    model_keys = list(comfyui_model_shapes() if model_keys is None else model_keys)
    key_map: dict[str, str] = {}
    for k in model_keys:
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                lora = k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                key_map[f"lora_unet_{lora}"] = k
                key_map[f"lora_prior_unet_{lora}"] = k
                key_map[k[:-len(".weight")]] = k
            else:
                key_map[k] = k
    unet_keys = [k[len("diffusion_model."):] for k in model_keys if k.startswith("diffusion_model.")]
    for diffusers_key, ldm_key in comfyui_unet_to_diffusers(comfyui_detect_unet_config(unet_keys)).items():
        if not diffusers_key.endswith(".weight"):
            continue
        target = f"diffusion_model.{ldm_key}"
        lora = diffusers_key[:-len(".weight")].replace(".", "_")
        key_map[f"lora_unet_{lora}"] = target
        key_map[f"lycoris_{lora}"] = target
        for p in ("", "unet."):
            diffusers_lora = p + diffusers_key[:-len(".weight")].replace(".to_", ".processor.to_")
            if diffusers_lora.endswith(".to_out.0"):
                diffusers_lora = diffusers_lora[:-2]
            key_map[diffusers_lora] = target
    return key_map


def comfyui_clip_key_map(model_keys: Iterable[str] | None = None) -> dict[str, str]:
    """ComfyUI's model_lora_keys_clip for SD 1.x's CLIP-L (comfy/lora.py): {LoRA module name: model weight key}:
    "text_encoders." + any weight's module path, and for each layer b < 32 and each of the six LORA_CLIP_MAP
    projections present: "lora_te_text_model_encoder_layers_{b}_{proj}", the "lora_te1_" spelling, and the
    diffusers "text_encoder.text_model.encoder.layers.{b}.{proj}". Only these six projections per layer can take a
    LoRA through a lora_te_ name. model_keys: as in comfyui_unet_key_map."""
    model_keys = set(comfyui_model_shapes() if model_keys is None else model_keys)
    key_map: dict[str, str] = {}
    for k in model_keys:
        if k.endswith(".weight"):
            key_map[f"text_encoders.{k[:-len('.weight')]}"] = k
    for b in range(32):
        for c, lora in COMFY_LORA_CLIP_MAP.items():
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in model_keys:
                key_map[f"lora_te_text_model_encoder_layers_{b}_{lora}"] = k
                key_map[f"lora_te1_text_model_encoder_layers_{b}_{lora}"] = k
                key_map[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
    return key_map


def comfyui_key_map(model_shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, str]:
    """Both of ComfyUI's key maps for an SD 1.x checkpoint, as load_lora_for_models builds them (the UNet's, then
    the CLIP's): {LoRA module name: model weight key}. model_shapes: `comfyui_model_shapes()` by default."""
    if model_shapes is None:
        return dict(_default_comfyui()[1])
    return {**comfyui_unet_key_map(model_shapes), **comfyui_clip_key_map(model_shapes)}


@functools.cache
def _default_comfyui() -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    shapes = comfyui_model_shapes()
    return shapes, {**comfyui_unet_key_map(shapes), **comfyui_clip_key_map(shapes)}


def comfyui_target(kohya_name: str, model_shapes: Mapping[str, tuple[int, ...]] | None = None,
                   key_map: Mapping[str, str] | None = None) -> str | None:
    """The ComfyUI model weight key a LoRA module named `kohya_name` patches in an SD 1.x model, or None when
    ComfyUI ignores it (load_lora logs "lora key not loaded"; a key-map target the model lacks is skipped by
    ModelPatcher.add_patches). model_shapes: `comfyui_model_shapes()` by default; key_map: `comfyui_key_map(
    model_shapes)` by default (pass it when resolving many names)."""
    if model_shapes is None:
        model_shapes, default_map = _default_comfyui()
        key_map = default_map if key_map is None else key_map
    elif key_map is None:
        key_map = comfyui_key_map(model_shapes)
    target = key_map.get(kohya_name)
    return target if target in model_shapes else None


def comfyui_accepts(kohya_name: str, model_shapes: Mapping[str, tuple[int, ...]] | None = None,
                    key_map: Mapping[str, str] | None = None) -> bool:
    """Whether ComfyUI applies a LoRA module of this name to an SD 1.x model (see comfyui_target)."""
    return comfyui_target(kohya_name, model_shapes, key_map) is not None


# ---------------------------------------------------------------------------------------------------------------
# 4. The weight change a module's tensors make at strength 1
# ---------------------------------------------------------------------------------------------------------------

_LORA_KEYS = ("lora_up.weight", "lora_down.weight")
_LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_NOT_MODELLED = ("lora_mid.weight", "hada_t1", "hada_t2", "lokr_t2", "dora_scale", "reshape_weight", "scale",
                 "bias", "diff", "diff_b", "w_norm", "b_norm")


def _module_tensors(tensors: Mapping[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    prefix = module + "."
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not own:
        raise KeyError(f"no tensors for module {module}")
    odd = sorted(set(own) & set(_NOT_MODELLED))
    if odd:
        raise ValueError(f"{module}: {odd} are outside what this reference models (Tucker/CP, DoRA, bias, scale)")
    return own


def _alpha(own: Mapping[str, torch.Tensor]) -> float | None:
    alpha = own.get("alpha")
    if alpha is None:
        return None
    if alpha.numel() != 1:
        raise ValueError(f"alpha must hold one number (readers call .item()), got shape {tuple(alpha.shape)}")
    return float(alpha.item())


def module_family(tensors: Mapping[str, torch.Tensor], module: str) -> str:
    """"lora", "loha" or "lokr": which of ComfyUI's adapters (comfy/lora.py load_lora) takes this module's tensors.
    Raises ValueError when none or several do (a broken file: ComfyUI would apply only one of them)."""
    own = _module_tensors(tensors, module)
    found = []
    if "lora_up.weight" in own:
        found.append("lora")
    if "hada_w1_a" in own:
        found.append("loha")
    if any(k in own for k in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
        found.append("lokr")
    if len(found) != 1:
        raise ValueError(f"{module}: tensors {sorted(own)} match {found or 'no'} adapter types")
    return found[0]


_COMFY_CONSUMED = {
    "lora": ("lora_up.weight", "lora_down.weight", "lora_mid.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
}


def comfyui_unloaded_keys(tensors: Mapping[str, torch.Tensor],
                          key_map: Mapping[str, str] | None = None) -> list[str]:
    """The tensor names ComfyUI's load_lora would report as "lora key not loaded" (and ignore) for an SD 1.x model:
    those not of the form `{module}.{part}` with `module` in the key map and `part` one that module's adapter reads
    (alpha, dora_scale, reshape_weight and lokr_* for any module; lora_up/lora_down/lora_mid when lora_up.weight is
    there, hada_* when hada_w1_a is; comfy/lora.py load_lora). key_map: `comfyui_key_map()` by default. Sorted."""
    key_map = comfyui_key_map() if key_map is None else key_map
    by_module: dict[str, list[str]] = {}
    for key in tensors:
        module, _, part = key.partition(".")
        by_module.setdefault(module, []).append(part)
    unloaded = []
    for module, parts in by_module.items():
        if module not in key_map:
            unloaded += [f"{module}.{p}" for p in parts]
            continue
        # load_lora takes LoRA parts only after finding lora_up.weight, LoHa parts after hada_w1_a, but each LoKr
        # part on its own.
        families = [f for f, marker in (("lora", "lora_up.weight"), ("loha", "hada_w1_a")) if marker in parts]
        families.append("lokr")
        consumed = {"alpha", "dora_scale", "reshape_weight"}
        for family in families:
            consumed.update(_COMFY_CONSUMED[family])
        unloaded += [f"{module}.{p}" for p in parts if p not in consumed]
    return sorted(unloaded)


def _need(own: Mapping[str, torch.Tensor], module: str, keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in own]
    if missing:
        raise ValueError(f"{module}: missing {missing}")


def delta_weight(tensors: Mapping[str, torch.Tensor], module: str, weight_shape: Iterable[int]) -> torch.Tensor:
    """The change ComfyUI adds to the weight of `module` at strength 1 from a kohya-layout file's tensors, float32,
    shaped `weight_shape`. Follows ComfyUI's calculate_weight (comfy/weight_adapter/lora.py, loha.py, lokr.py; the
    same formulas as comfy/lora.py before the weight_adapter split), computed in float32 as ComfyUI's
    intermediate_dtype:

    - lora (`{module}.lora_up.weight` U, `.lora_down.weight` D, optional `.alpha` a):
      ΔW = (a / D.shape[0]) · (U.flatten(1) @ D.flatten(1)).reshape(weight_shape); scale 1 without alpha. A Conv2d
      kxk LoRA has D (r, in, k, k) and U (out, r, 1, 1).
    - loha (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, optional alpha):
      ΔW = (a / w1_b.shape[0]) · ((w1_a @ w1_b) * (w2_a @ w2_b)).reshape(weight_shape); the four must be 2-D (ComfyUI
      multiplies them with torch.mm; a conv's w1_b/w2_b are (r, in·kh·kw)).
    - lokr (`lokr_w1` or `lokr_w1_a` @ `lokr_w1_b`; `lokr_w2` or `lokr_w2_a` @ `lokr_w2_b`; optional alpha):
      ΔW = scale · kron(w1, w2).reshape(weight_shape), where w1 gets two trailing unit dims when w2 is 4-D, and
      scale = a / dim with dim the rank of the last decomposed factor (w2_b.shape[0] if w2 is decomposed, else
      w1_b.shape[0]); scale = 1 when neither factor is decomposed or there is no alpha (alpha is then ignored).

    Raises KeyError when the file has no tensors for `module`; ValueError when the tensors are incomplete, of more
    than one type, carry parts this reference does not model (lora_mid, hada_t1/t2, lokr_t2, dora_scale, ...), or
    when the result does not have `weight_shape` elements (ComfyUI logs an error and leaves the weight alone)."""
    shape = tuple(int(s) for s in weight_shape)
    own = _module_tensors(tensors, module)
    family = module_family(tensors, module)
    alpha = _alpha(own)
    f32 = {k: v.to(torch.float32) for k, v in own.items() if k != "alpha"}
    if family == "lora":
        _need(own, module, _LORA_KEYS)
        up, down = f32["lora_up.weight"], f32["lora_down.weight"]
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1))
    elif family == "loha":
        _need(own, module, _LOHA_KEYS)
        if any(f32[k].ndim != 2 for k in _LOHA_KEYS):
            raise ValueError(f"{module}: LoHa factors must be 2-D, got "
                             f"{[tuple(f32[k].shape) for k in _LOHA_KEYS]}")
        scale = alpha / f32["hada_w1_b"].shape[0] if alpha is not None else 1.0
        diff = torch.mm(f32["hada_w1_a"], f32["hada_w1_b"]) * torch.mm(f32["hada_w2_a"], f32["hada_w2_b"])
    else:
        dim = None
        if "lokr_w1" in f32:
            w1 = f32["lokr_w1"]
        else:
            _need(own, module, ("lokr_w1_a", "lokr_w1_b"))
            dim = f32["lokr_w1_b"].shape[0]
            w1 = torch.mm(f32["lokr_w1_a"], f32["lokr_w1_b"])
        if "lokr_w2" in f32:
            w2 = f32["lokr_w2"]
        else:
            _need(own, module, ("lokr_w2_a", "lokr_w2_b"))
            dim = f32["lokr_w2_b"].shape[0]
            w2 = torch.mm(f32["lokr_w2_a"], f32["lokr_w2_b"])
        if w2.ndim == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        diff = torch.kron(w1, w2)
    if diff.numel() != math.prod(shape):
        raise ValueError(f"{module}: {family} gives {tuple(diff.shape)}, which cannot be reshaped to {shape}")
    return (scale * diff).reshape(shape)


def delta_weight_a1111(tensors: Mapping[str, torch.Tensor], module: str,
                       weight_shape: Iterable[int]) -> torch.Tensor:
    """The same weight change as AUTOMATIC1111 computes it (extensions-builtin/Lora: network_lora.py
    NetworkModuleLora.create_module/calc_updown, network_hada.py, network_lokr.py, lyco_helpers.py
    rebuild_conventional/make_kron, network.py calc_scale/finalize_updown), float32, at multiplier 1. The module is
    a Conv2d when `weight_shape` has four entries, else a Linear. Its scale is alpha / dim with dim = lora_down's
    rows (LoRA), hada_w1_b's rows (LoHa), or lokr_w2_b's rows, else lokr_w1_b's (LoKr); 1 without alpha or dim.

    Written separately from `delta_weight` so that tests can check the two readers agree. Raises as delta_weight;
    RuntimeError/ValueError where A1111's own reshapes fail."""
    shape = tuple(int(s) for s in weight_shape)
    is_conv = len(shape) == 4
    own = _module_tensors(tensors, module)
    family = module_family(tensors, module)
    alpha = _alpha(own)
    w = {k: v.to(torch.float32) for k, v in own.items() if k != "alpha"}
    if family == "lora":
        _need(own, module, _LORA_KEYS)
        down, up = w["lora_down.weight"], w["lora_up.weight"]
        dim = down.shape[0]
        # create_module: the module-shaped weights A1111 builds before multiplying them.
        if not is_conv:
            down = down.reshape(down.shape[0], -1)
            up = up.reshape(up.shape[0], -1)
        else:
            if down.ndim == 2:
                down = down.reshape(down.shape[0], -1, 1, 1)
            up = up.reshape(up.shape[0], up.shape[1], 1, 1)
        output_shape = [up.size(0), down.size(1)]
        if down.ndim == 4:
            output_shape += list(down.shape[2:])
        updown = (up.reshape(up.size(0), -1) @ down.reshape(down.size(0), -1)).reshape(output_shape)
    elif family == "loha":
        _need(own, module, _LOHA_KEYS)
        w1a, w1b, w2a, w2b = (w[k] for k in _LOHA_KEYS)
        dim = w1b.shape[0]
        output_shape = [w1a.size(0), w1b.size(1)]
        if w1b.ndim == 4:
            output_shape += list(w1b.shape[2:])
        updown1 = (w1a.reshape(w1a.size(0), -1) @ w1b.reshape(w1b.size(0), -1)).reshape(output_shape)
        updown2 = (w2a.reshape(w2a.size(0), -1) @ w2b.reshape(w2b.size(0), -1)).reshape(output_shape)
        updown = updown1 * updown2
    else:
        dim = None
        if "lokr_w1_b" in w:
            dim = w["lokr_w1_b"].shape[0]
        if "lokr_w2_b" in w:
            dim = w["lokr_w2_b"].shape[0]
        if "lokr_w1" in w:
            w1 = w["lokr_w1"]
        else:
            _need(own, module, ("lokr_w1_a", "lokr_w1_b"))
            w1 = w["lokr_w1_a"] @ w["lokr_w1_b"]
        if "lokr_w2" in w:
            w2 = w["lokr_w2"]
        else:
            _need(own, module, ("lokr_w2_a", "lokr_w2_b"))
            w2 = w["lokr_w2_a"] @ w["lokr_w2_b"]
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if is_conv:
            output_shape = list(shape)
        if w2.ndim == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        updown = torch.kron(w1, w2.contiguous()).reshape(output_shape)
    # finalize_updown
    if len(output_shape) == 4:
        updown = updown.reshape(output_shape)
    if updown.numel() == math.prod(shape):
        updown = updown.reshape(shape)
    else:
        raise ValueError(f"{module}: {family} gives {tuple(updown.shape)}, not {shape}")
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return updown * scale


_DIFFUSERS_KOHYA_PREFIXES = ("lora_te_", "lora_unet_", "lora_te1_", "lora_te2_")
_DIFFUSERS_ALPHA_BLIND = re.compile(r"^lora_te\d?_|_attn[12]_to_(q|k|v|out_0)$")


def diffusers_kohya_lora_problems(tensors: Mapping[str, torch.Tensor],
                                  module_shapes: Mapping[str, Iterable[int]] | None = None) -> list[str]:
    """Why diffusers' StableDiffusionPipeline.load_lora_weights would reject or mis-read a kohya-layout file (empty
    list: it loads it as A1111/ComfyUI do). From loaders/lora_pipeline.py lora_state_dict and
    loaders/lora_conversion_utils.py _convert_non_diffusers_lora_to_diffusers, plus utils/peft_utils.py
    get_peft_kwargs as observed with the installed diffusers:
    - every key must start with lora_unet_, lora_te_, lora_te1_ or lora_te2_, or the file is not converted at all;
    - only `{m}.lora_down.weight`, `{m}.lora_up.weight` and `{m}.alpha` are converted (dora_scale is dropped with a
      warning); anything else, e.g. any LoHa/LoKr tensor, remains and diffusers raises "The following keys have not
      been correctly renamed"; a lora_down without its lora_up raises too;
    - the LoRA of a Conv2d (1x1 included) becomes a PEFT Conv2d LoRA, so both tensors must be 4-D (checked when
      `module_shapes`, {module: weight shape}, is given);
    - diffusers keeps one alpha (the most common) plus an alpha_pattern for the modules that differ, and that
      pattern does not reach attention to_q/to_k/to_v/to_out.0 or text-encoder modules: those must have the most
      common alpha, or diffusers scales them by it instead of their own."""
    problems = []
    foreign = sorted(k for k in tensors if not k.startswith(_DIFFUSERS_KOHYA_PREFIXES))
    if foreign:
        problems.append(f"not read as a kohya file (keys without a lora_unet_/lora_te_ prefix): {foreign[:3]}")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        module, _, part = key.partition(".")
        modules.setdefault(module, {})[part] = value
    alphas = {}
    for module, parts in sorted(modules.items()):
        left = sorted(set(parts) - {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"})
        if left:
            problems.append(f"{module}: {left} would stay unconverted (ValueError)")
        if "lora_down.weight" in parts and "lora_up.weight" not in parts:
            problems.append(f"{module}: lora_down.weight without lora_up.weight")
        if "alpha" in parts and "lora_down.weight" in parts:
            alphas[module] = float(parts["alpha"].item())
        if module_shapes is not None and module in module_shapes and len(tuple(module_shapes[module])) == 4:
            flat = [p for p in ("lora_down.weight", "lora_up.weight") if p in parts and parts[p].ndim != 4]
            if flat:
                problems.append(f"{module}: {flat} must be 4-D for a Conv2d")
    if alphas:
        common = collections.Counter(alphas.values()).most_common()[0][0]
        for module, alpha in sorted(alphas.items()):
            if alpha != common and _DIFFUSERS_ALPHA_BLIND.search(module):
                problems.append(f"{module}: alpha {alpha} differs from the file's most common {common}; diffusers "
                                "would use the latter here")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# 5. Textual-inversion embeddings (.safetensors)
# ---------------------------------------------------------------------------------------------------------------

SD1_EMBEDDING_DIM = 768


def _as_rows(embedding: torch.Tensor, where: str, dim: int) -> torch.Tensor:
    if embedding.ndim == 1:
        embedding = embedding.unsqueeze(0)
    if embedding.ndim != 2:
        raise ValueError(f"{where}: an embedding must be (N, {dim}) or ({dim},), got {tuple(embedding.shape)}")
    if embedding.shape[-1] != dim:
        raise ValueError(f"{where}: vectors of size {embedding.shape[-1]}, the SD 1.x text encoder takes {dim}")
    return embedding.to(torch.float32)


def embedding_vectors_as_a1111_reads(tensors: Mapping[str, torch.Tensor],
                                     expected_dim: int = SD1_EMBEDDING_DIM) -> torch.Tensor:
    """The (N, 768) float32 vectors AUTOMATIC1111 takes from an embedding .safetensors file (EmbeddingDatabase.
    load_from_file, modules/textual_inversion/textual_inversion.py). A safetensors file is a flat {name: tensor}
    dict, so of A1111's three branches only two can apply: "clip_g" and "clip_l" both present is an SDXL
    embedding (ValueError here: not SD 1.x); otherwise the file must hold exactly one tensor ("diffuser concepts":
    A1111 asserts 'embedding file has multiple terms in it'), of shape (N, 768) or (768,) (unsqueezed to (1, 768)),
    whatever its name. A1111 skips an embedding whose vector size differs from the model's (ValueError here).
    The prompt word is the file name without extension, not the tensor name."""
    if "clip_g" in tensors and "clip_l" in tensors:
        raise ValueError("an SDXL embedding (clip_g + clip_l), not SD 1.x")
    if len(tensors) != 1:
        raise ValueError(f"A1111 needs exactly one tensor in the file, got {sorted(tensors)}")
    return _as_rows(next(iter(tensors.values())), "A1111", expected_dim)


def embedding_vectors_as_comfyui_reads(tensors: Mapping[str, torch.Tensor], embedding_key: str = "clip_l",
                                       embedding_size: int = SD1_EMBEDDING_DIM) -> torch.Tensor:
    """The (N, 768) float32 vectors ComfyUI uses from an embedding .safetensors file for SD 1.x (comfy/sd1_clip.py
    load_embed with embed_key "clip_l", then SDTokenizer.tokenize_with_weights and SDClipModel.
    set_up_textual_embeddings). In order: the tensor named "clip_l"; else every "bundle_emb.*.string_to_param.*"
    tensor concatenated; else every "bundle_emb.*.clip_l" tensor concatenated; else the FIRST tensor of the file,
    and safetensors' load_file lists names sorted, so with several tensors that is the alphabetically first (keys
    are taken here in sorted order for that reason). A 1-D result is one vector, a 2-D one N vectors; ComfyUI
    ignores vectors whose size is not 768 (ValueError here)."""
    keys = sorted(tensors)
    if embedding_key in tensors:
        found = tensors[embedding_key]
    else:
        bundled = [tensors[k] for k in keys if k.startswith("bundle_emb.") and k.endswith(".string_to_param.*")]
        if not bundled:
            bundled = [tensors[k] for k in keys if k.startswith("bundle_emb.") and k.endswith(f".{embedding_key}")]
        if bundled:
            found = torch.cat(bundled, dim=0)
        elif keys:
            found = tensors[keys[0]]
        else:
            raise ValueError("no tensors in the embedding file")
    return _as_rows(found, "ComfyUI", embedding_size)


def embedding_tokens_as_diffusers_reads(tensors: Mapping[str, torch.Tensor],
                                        token: str | None = None) -> list[tuple[str, torch.Tensor]]:
    """The (token, vector) pairs diffusers' load_textual_inversion adds from an embedding state dict
    (loaders/textual_inversion.py _retrieve_tokens_and_embeddings and _extend_tokens_and_embeddings): a dict with
    exactly one tensor, whose NAME becomes the token unless `token` is given (so a kohya file's token is
    "emb_params" unless the caller passes token=...). An (N, D) tensor with N > 1 becomes N tokens: token, token_1,
    ..., token_{N-1} (the pipeline expands the word in prompts to all of them); (1, D) or (D,) one token.
    Raises ValueError as diffusers does for a dict with several tensors and no "string_to_param"."""
    if len(tensors) != 1:
        raise ValueError(f"diffusers needs a single-tensor state dict here, got {sorted(tensors)}")
    loaded_token, embedding = next(iter(tensors.items()))
    token = loaded_token if token is None else token
    if embedding.ndim > 1 and embedding.shape[0] > 1:
        names = [token] + [f"{token}_{i}" for i in range(1, embedding.shape[0])]
        return list(zip(names, embedding))
    return [(token, embedding[0] if embedding.ndim > 1 else embedding)]


# ---------------------------------------------------------------------------------------------------------------
# 6. Metadata kohya writes
# ---------------------------------------------------------------------------------------------------------------

# library/sai_model_spec.py: determine_architecture (ARCH_SD_V1 + "/" + ADAPTER_LORA or ADAPTER_TEXTUAL_INVERSION)
# and determine_implementation (LoRA without SDXL -> IMPL_DIFFUSERS; textual inversion -> IMPL_STABILITY_AI).
MODELSPEC_SD1_LORA = {
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "diffusers",
}
MODELSPEC_SD1_TI = {
    "modelspec.architecture": "stable-diffusion-v1/textual-inversion",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
}
# BASE_METADATA's "MUST" keys; kohya's current spec version is "1.0.1" (older files say "1.0.0"); its default
# resolution for SD v1 is "512x512" (determine_resolution) and prediction type "epsilon".
MODELSPEC_MUST_KEYS = ("modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation",
                       "modelspec.title", "modelspec.resolution")
MODELSPEC_SD1_DEFAULTS = {"modelspec.sai_model_spec": "1.0.1", "modelspec.resolution": "512x512",
                          "modelspec.prediction_type": "epsilon"}

# library/train_util.py SS_METADATA_MINIMUM_KEYS: what kohya keeps even with --no_metadata (ss_network_args only
# when network args were given). Values, like every metadata value kohya writes, are strings
# (train_network.py: `metadata = {k: str(v) ...}`): ss_v2 "False", ss_base_model_version "sd_v1"
# (model_util.get_model_version_str_for_sd1_sd2), ss_network_module "networks.lora" (LyCORIS: "lycoris.kohya").
KOHYA_SS_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                         "ss_network_alpha", "ss_network_args")
KOHYA_SS_CORE_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_v2")
KOHYA_SD1_BASE_MODEL_VERSION = "sd_v1"
# train_network.py: the keys of the metadata dict it always builds (values may be "None"), plus the three
# save_model adds at every save.
KOHYA_SS_ALWAYS_KEYS = (
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images",
    "ss_num_batches_per_epoch", "ss_num_epochs", "ss_gradient_checkpointing", "ss_gradient_accumulation_steps",
    "ss_max_train_steps", "ss_lr_warmup_steps", "ss_lr_scheduler", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_dropout", "ss_mixed_precision", "ss_full_fp16", "ss_v2",
    "ss_base_model_version", "ss_clip_skip", "ss_max_token_length", "ss_cache_latents", "ss_seed", "ss_lowram",
    "ss_noise_offset", "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_adaptive_noise_scale",
    "ss_zero_terminal_snr", "ss_training_comment", "ss_sd_scripts_commit_hash", "ss_optimizer", "ss_max_grad_norm",
    "ss_caption_dropout_rate", "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate",
    "ss_face_crop_aug_range", "ss_prior_loss_weight", "ss_min_snr_gamma", "ss_scale_weight_norms",
    "ss_ip_noise_gamma", "ss_debiased_estimation", "ss_noise_offset_random_strength",
    "ss_ip_noise_gamma_random_strength", "ss_loss_type", "ss_huber_schedule", "ss_huber_scale", "ss_huber_c",
    "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed", "ss_validation_split", "ss_max_validation_steps",
    "ss_validate_every_n_epochs", "ss_validate_every_n_steps", "ss_resize_interpolation",
    "ss_training_finished_at", "ss_steps", "ss_epoch",
)
# Written per dataset setup (train_network.py): with a dataset config file ss_datasets, ss_tag_frequency,
# ss_dataset_dirs; without, these. A1111's UI reads ss_tag_frequency, ss_resolution, ss_clip_skip,
# ss_num_train_images, ss_sd_model_name (network.py metadata_tags_order) when present.
KOHYA_SS_DATASET_KEYS = (
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso",
    "ss_max_bucket_reso", "ss_keep_tokens", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info",
)
