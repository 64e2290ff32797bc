"""Tests of tests/format_reference.py itself: kohya's module names on SD 1.5's real structure, their A1111 and
ComfyUI mappings against the original LDM state dict, the weight-change formulas on hand-computed cases and against
other implementations of the same formats (diffusers + PEFT, LyCORIS, A1111's separate code path), and the
embedding readers (including diffusers' own load_textual_inversion)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import format_reference as fr

ASSETS = Path(__file__).resolve().parents[1] / "trainer" / "assets" / "sd15"


# --- models ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_sd15():
    """SD 1.5's UNet and CLIP-L text encoder at full size on the meta device (shapes only), from the bundled
    configs."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((ASSETS / "unet" / "config.json").read_text()))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(ASSETS / "text_encoder"))
    return unet, text_encoder


def tiny_models(seed: int = 0):
    """The suite's tiny SD-1.5-shaped UNet and text encoder (the shapes of trainer/tools/demo.py build_tiny_components,
    built here without its VAE): two UNet levels, the first with cross-attention, two CLIP layers."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    return unet, text_encoder


def count_classes(root, name):
    return sum(type(m).__name__ == name for m in root.modules())


# --- 1. kohya module names ----------------------------------------------------------------------------------------

def test_full_sd15_has_kohyas_module_counts(full_sd15):
    """kohya's training log for SD 1.5: "create LoRA for Text Encoder: 72 modules", "create LoRA for U-Net: 192
    modules" (278 with conv_dim). Each of the 16 Transformer2DModels gives 12 (proj_in, proj_out, attn1/attn2
    to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2), each of the 12 CLIP layers 6; conv adds conv1, conv2 and
    time_emb_proj of every resnet, each conv_shortcut, and the down/upsampler convs."""
    unet, te = full_sd15
    rows_u, rows_t = fr.module_table(unet), fr.module_table(te)
    plain = fr.kohya_sd15_lora_module_names(rows_u, rows_t, conv=False)
    locon = fr.kohya_sd15_lora_module_names(rows_u, rows_t, conv=True)
    unet_plain = {n for n in plain if n.startswith("lora_unet_")}
    unet_locon = {n for n in locon if n.startswith("lora_unet_")}
    te_names = {n for n in plain if n.startswith("lora_te_")}
    assert len(unet_plain) == 12 * count_classes(unet, "Transformer2DModel") == 192
    assert len(te_names) == 6 * te.config.num_hidden_layers == 72
    assert te_names == {n for n in locon if n.startswith("lora_te_")}
    resnets = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    extra = (3 * len(resnets) + sum(m.conv_shortcut is not None for m in resnets)
             + count_classes(unet, "Downsample2D") + count_classes(unet, "Upsample2D"))
    assert unet_plain < unet_locon
    assert len(unet_locon) == 192 + extra == 278


def test_names_are_spelled_as_kohya_writes_them(full_sd15):
    unet, te = full_sd15
    modules = fr.kohya_sd15_lora_modules(unet, te, conv=True)
    for name, shape in {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (320, 320, 1, 1),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": (10240, 1280),
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k": (320, 768),
        "lora_unet_down_blocks_0_downsamplers_0_conv": (320, 320, 3, 3),
        "lora_unet_up_blocks_0_upsamplers_0_conv": (1280, 1280, 3, 3),
        "lora_unet_up_blocks_3_resnets_2_conv_shortcut": (320, 640, 1, 1),
        "lora_unet_mid_block_resnets_1_time_emb_proj": (1280, 1280),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te_text_model_encoder_layers_11_mlp_fc2": (768, 3072),
    }.items():
        assert modules[name] == shape, name
    # Never a LoRA on norms, the time embedding, conv_in/conv_out, embeddings or the final layer norm.
    for fragment in ("norm", "time_embedding", "conv_in", "conv_out", "embeddings", "Conv2d_0"):
        assert not [n for n in modules if fragment in n], fragment


def test_kohya_walk_rules_on_a_hand_built_table():
    rows = [
        ("", "Root", None),
        ("block", "Transformer2DModel", None),
        ("block.lin", "Linear", None),
        ("block.pw", "Conv2d", (1, 1)),
        ("block.k3", "Conv2d", (3, 3)),
        ("block.norm", "GroupNorm", None),
        ("block.sub.deep", "Linear", None),
        ("blocker.lin", "Linear", None),  # a sibling whose name starts like the target's: not inside it
        ("res", "ResnetBlock2D", None),
        ("res.conv1", "Conv2d", (3, 3)),
        ("res.time_emb_proj", "Linear", None),
    ]
    assert fr.kohya_lora_names(rows, "p", ["Transformer2DModel"], conv3x3=False) == {
        "p_block_lin": False, "p_block_pw": False, "p_block_sub_deep": False}
    assert fr.kohya_lora_names(rows, "p", ["Transformer2DModel", "ResnetBlock2D"], conv3x3=True) == {
        "p_block_lin": False, "p_block_pw": False, "p_block_k3": True, "p_block_sub_deep": False,
        "p_res_conv1": True, "p_res_time_emb_proj": False}
    with pytest.raises(ValueError, match="duplicated"):
        fr.kohya_lora_names(rows + [("block.sub", "Transformer2DModel", None)], "p", ["Transformer2DModel"], False)


def test_transformers5_text_encoder_gets_kohyas_text_model_spelling(full_sd15):
    _, te = full_sd15
    rows = fr.module_table(te)
    converted = fr.as_transformers4_clip_rows(rows)
    if any(name == "text_model" for name, _, _ in rows):  # transformers 4.x layout: nothing to do
        assert converted == rows
    else:
        assert converted[0] == rows[0]
        assert all(a[0] == "" or b[0] == "text_model." + a[0] for a, b in zip(rows, converted))
    legacy = [("", "CLIPTextModel", None), ("text_model", "CLIPTextTransformer", None),
              ("text_model.encoder.layers.0.self_attn", "CLIPAttention", None),
              ("text_model.encoder.layers.0.self_attn.q_proj", "Linear", None)]
    assert fr.as_transformers4_clip_rows(legacy) == legacy
    assert fr.kohya_sd15_lora_module_names([], legacy, conv=False) == {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"}


def test_suite_tiny_model_names():
    unet, te = tiny_models()
    plain = fr.kohya_sd15_lora_modules(unet, te, conv=False)
    locon = fr.kohya_sd15_lora_modules(unet, te, conv=True)
    assert sum(n.startswith("lora_unet_") for n in plain) == 12 * count_classes(unet, "Transformer2DModel") == 48
    assert sum(n.startswith("lora_te_") for n in plain) == 6 * te.config.num_hidden_layers == 12
    by_name = {"lora_unet_" + path.replace(".", "_"): module for path, module in unet.named_modules()}
    for name, shape in locon.items():
        if name.startswith("lora_unet_"):
            assert tuple(by_name[name].weight.shape) == shape, name
    assert "lora_unet_down_blocks_0_downsamplers_0_conv" in locon and "lora_unet_up_blocks_1_resnets_1_conv2" in locon


def test_kohya_lora_tensor_shapes():
    assert fr.kohya_lora_tensor_shapes((320, 768), 4) == {
        "lora_down.weight": (4, 768), "lora_up.weight": (320, 4), "alpha": ()}
    assert fr.kohya_lora_tensor_shapes((320, 640, 1, 1), 8) == {
        "lora_down.weight": (8, 640, 1, 1), "lora_up.weight": (320, 8, 1, 1), "alpha": ()}
    assert fr.kohya_lora_tensor_shapes((640, 320, 3, 3), 2)["lora_down.weight"] == (2, 320, 3, 3)
    with pytest.raises(ValueError):
        fr.kohya_lora_tensor_shapes((4,), 1)


# --- 2./3. A1111 and ComfyUI name mapping against the original LDM state dict ------------------------------------

def test_ldm_reference_reads_the_shared_listing():
    ref = fr.ldm_reference()
    assert len(ref) == 1143
    assert sum(k.startswith(fr.LDM_UNET_PREFIX) for k in ref) == 686
    assert sum(k.startswith(fr.LDM_TE_PREFIX) for k in ref) == 197
    assert ref["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert ref["betas"] == (1000,)


def test_every_kohya_name_lands_on_an_a1111_layer_of_the_same_shape(full_sd15):
    unet, te = full_sd15
    layers = fr.a1111_layer_weight_shapes()
    for name, shape in fr.kohya_sd15_lora_modules(unet, te, conv=True).items():
        layer = fr.a1111_resolve(name, layers)
        assert layer == fr.a1111_compvis_name(name), name  # the primary conversion, no fallback
        assert layers[layer] == shape, name


def test_every_kohya_name_is_accepted_by_comfyui_with_the_same_shape(full_sd15):
    unet, te = full_sd15
    shapes = fr.comfyui_model_shapes()
    key_map = fr.comfyui_key_map(shapes)
    for name, shape in fr.kohya_sd15_lora_modules(unet, te, conv=True).items():
        target = fr.comfyui_target(name, shapes, key_map)
        assert target is not None, name
        assert shapes[target] == shape, name


def test_a1111_conversion_examples():
    cases = {
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut": "diffusion_model_input_blocks_4_0_skip_connection",
        "lora_unet_down_blocks_2_downsamplers_0_conv": "diffusion_model_input_blocks_9_0_op",
        "lora_unet_mid_block_resnets_1_time_emb_proj": "diffusion_model_middle_block_2_emb_layers_1",
        "lora_unet_mid_block_attentions_0_proj_out": "diffusion_model_middle_block_1_proj_out",
        "lora_unet_up_blocks_0_upsamplers_0_conv": "diffusion_model_output_blocks_2_1_conv",
        "lora_unet_up_blocks_2_upsamplers_0_conv": "diffusion_model_output_blocks_8_2_conv",
        "lora_unet_up_blocks_3_attentions_2_proj_out": "diffusion_model_output_blocks_11_1_proj_out",
        "lora_unet_up_blocks_1_resnets_2_conv1": "diffusion_model_output_blocks_5_0_in_layers_2",
        "lora_unet_time_embedding_linear_2": "diffusion_model_time_embed_2",
        "lora_te_text_model_encoder_layers_3_self_attn_out_proj":
            "transformer_text_model_encoder_layers_3_self_attn_out_proj",
        "something_else": "something_else",
    }
    for kohya, compvis in cases.items():
        assert fr.a1111_compvis_name(kohya) == compvis
    assert fr.a1111_compvis_name("lora_te_text_model_encoder_layers_3_mlp_fc1", is_sd2=True) == \
        "model_transformer_resblocks_3_mlp_c_fc"


def test_names_the_readers_drop_or_take_by_fallback():
    layers = fr.a1111_layer_weight_shapes()
    shapes = fr.comfyui_model_shapes()
    key_map = fr.comfyui_key_map(shapes)
    dropped = [
        "lora_te_encoder_layers_0_mlp_fc1",  # transformers-5 module path without text_model
        "lora_unet_down_blocks_0_downsamplers_0_Conv2d_0",  # diffusers' legacy alias
        "lora_unet_down_blocks_3_downsamplers_0_conv",  # SD 1.5's last level has no downsampler
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out",  # without the .0
    ]
    for name in dropped:
        assert fr.a1111_resolve(name, layers) is None, name
        assert not fr.comfyui_accepts(name, shapes, key_map), name
    # LDM-named files ("lora_unet_input_blocks_...") reach the same layer in both, by A1111's fallback.
    ldm_style = "lora_unet_input_blocks_1_1_proj_in"
    assert fr.a1111_resolve(ldm_style, layers) == "diffusion_model_input_blocks_1_1_proj_in"
    assert fr.comfyui_target(ldm_style, shapes, key_map) == "diffusion_model.input_blocks.1.1.proj_in.weight"
    # ComfyUI takes only the six projections of a CLIP layer under lora_te_ names.
    assert not fr.comfyui_accepts("lora_te_text_model_encoder_layers_0_layer_norm1", shapes, key_map)


def test_comfyui_detects_sd15_and_maps_every_diffusers_weight(full_sd15):
    unet, _ = full_sd15
    shapes = fr.comfyui_model_shapes()
    config = fr.comfyui_detect_unet_config(k[len("diffusion_model."):] for k in shapes
                                           if k.startswith("diffusion_model."))
    assert config["num_res_blocks"] == [unet.config.layers_per_block] * len(unet.config.block_out_channels)
    assert config["transformer_depth"] == [1] * 6 + [0] * 2  # CrossAttnDownBlock2D x3, then DownBlock2D
    assert config["transformer_depth_output"] == [1] * 9 + [0] * 3  # listed from output block 11 to 0
    assert config["transformer_depth_middle"] == 1
    mapping = fr.comfyui_unet_to_diffusers(config)
    for key, tensor in unet.state_dict().items():  # every weight and bias of diffusers' UNet
        assert shapes["diffusion_model." + mapping[key]] == tuple(tensor.shape), key


def test_a1111_sd_version():
    assert fr.a1111_sd_version({"ss_v2": "False", "ss_base_model_version": fr.KOHYA_SD1_BASE_MODEL_VERSION}) == "SD1"
    assert fr.a1111_sd_version({"ss_v2": False}) == "SD1"
    assert fr.a1111_sd_version({"ss_v2": "True"}) == "SD2"
    assert fr.a1111_sd_version({"ss_base_model_version": "sdxl_base_v1-0"}) == "SDXL"
    assert fr.a1111_sd_version({}) == "Unknown"


def test_kohya_metadata_key_lists_are_consistent():
    assert set(fr.KOHYA_SS_CORE_KEYS) <= set(fr.KOHYA_SS_MINIMUM_KEYS)
    assert set(fr.KOHYA_SS_CORE_KEYS) <= set(fr.KOHYA_SS_ALWAYS_KEYS)
    assert len(set(fr.KOHYA_SS_ALWAYS_KEYS)) == len(fr.KOHYA_SS_ALWAYS_KEYS)
    for spec, adapter in ((fr.MODELSPEC_SD1_LORA, "lora"), (fr.MODELSPEC_SD1_TI, "textual-inversion")):
        assert spec["modelspec.architecture"] == f"stable-diffusion-v1/{adapter}"
        assert set(spec) <= set(fr.MODELSPEC_MUST_KEYS)


# --- 4. weight changes ---------------------------------------------------------------------------------------------

def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_lora_linear_by_hand():
    tensors = {"m.lora_up.weight": t([[1.0], [2.0]]), "m.lora_down.weight": t([[3.0, 4.0, 5.0]]),
               "m.alpha": t(0.5)}
    expected = t([[1.5, 2.0, 2.5], [3.0, 4.0, 5.0]])  # (alpha / rank 1) * up @ down
    assert torch.equal(fr.delta_weight(tensors, "m", (2, 3)), expected)
    del tensors["m.alpha"]
    assert torch.equal(fr.delta_weight(tensors, "m", (2, 3)), 2 * expected)  # no alpha: scale 1


def test_lora_rank_two_scale_uses_the_rank():
    up = t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    down = t([[1.0, 2.0], [3.0, 4.0]])
    tensors = {"m.lora_up.weight": up, "m.lora_down.weight": down, "m.alpha": t(1.0)}
    expected = t([[0.5, 1.0], [1.5, 2.0], [2.0, 3.0]])  # 1/2 * [[1,2],[3,4],[4,6]]
    assert torch.equal(fr.delta_weight(tensors, "m", (3, 2)), expected)


def test_lora_conv3x3_by_hand():
    kernel = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    tensors = {"c.lora_down.weight": kernel, "c.lora_up.weight": t([2.0, -1.0]).reshape(2, 1, 1, 1),
               "c.alpha": t(2.0)}
    got = fr.delta_weight(tensors, "c", (2, 1, 3, 3))
    assert torch.equal(got[0, 0], 4 * kernel[0, 0]) and torch.equal(got[1, 0], -2 * kernel[0, 0])


def test_lora_conv1x1_two_and_four_dims_agree():
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    flat = {"c.lora_up.weight": up, "c.lora_down.weight": down, "c.alpha": t(1.0)}
    conv = {"c.lora_up.weight": up[:, :, None, None], "c.lora_down.weight": down[:, :, None, None], "c.alpha": t(1.0)}
    a = fr.delta_weight(flat, "c", (6, 5, 1, 1))
    assert a.shape == (6, 5, 1, 1)
    torch.testing.assert_close(a, (up @ down / 2)[:, :, None, None])
    torch.testing.assert_close(fr.delta_weight(conv, "c", (6, 5, 1, 1)), a)


def test_loha_by_hand():
    tensors = {"h.hada_w1_a": t([[1.0], [2.0]]), "h.hada_w1_b": t([[3.0, 4.0]]),
               "h.hada_w2_a": t([[5.0], [6.0]]), "h.hada_w2_b": t([[7.0, 8.0]]), "h.alpha": t(0.5)}
    # (w1a @ w1b) = [[3,4],[6,8]], (w2a @ w2b) = [[35,40],[42,48]]; Hadamard product, times 0.5 / rank 1
    expected = t([[52.5, 80.0], [126.0, 192.0]])
    assert torch.equal(fr.delta_weight(tensors, "h", (2, 2)), expected)


def test_loha_conv_uses_flat_factors():
    g = torch.Generator().manual_seed(1)
    w = {k: torch.randn(s, generator=g) for k, s in
         (("hada_w1_a", (4, 2)), ("hada_w1_b", (2, 3 * 9)), ("hada_w2_a", (4, 2)), ("hada_w2_b", (2, 3 * 9)))}
    tensors = {f"h.{k}": v for k, v in w.items()} | {"h.alpha": t(1.0)}
    got = fr.delta_weight(tensors, "h", (4, 3, 3, 3))
    expected = ((w["hada_w1_a"] @ w["hada_w1_b"]) * (w["hada_w2_a"] @ w["hada_w2_b"]) / 2).reshape(4, 3, 3, 3)
    torch.testing.assert_close(got, expected)
    tensors["h.hada_w1_b"] = w["hada_w1_b"].reshape(2, 3, 3, 3)
    with pytest.raises(ValueError, match="2-D"):  # ComfyUI's torch.mm takes only matrices
        fr.delta_weight(tensors, "h", (4, 3, 3, 3))


def test_lokr_full_factors_ignore_alpha():
    tensors = {"k.lokr_w1": t([[1.0], [2.0]]), "k.lokr_w2": t([[1.0, 10.0]]), "k.alpha": t(7.0)}
    assert torch.equal(fr.delta_weight(tensors, "k", (2, 2)), t([[1.0, 10.0], [2.0, 20.0]]))


def test_lokr_decomposed_w2_scales_by_its_rank():
    tensors = {"k.lokr_w1": t([[2.0]]), "k.lokr_w2_a": t([[1.0], [3.0]]), "k.lokr_w2_b": t([[1.0, 2.0]]),
               "k.alpha": t(0.5)}
    # kron([[2]], [[1,2],[3,6]]) * 0.5 / 1
    assert torch.equal(fr.delta_weight(tensors, "k", (2, 2)), t([[1.0, 2.0], [3.0, 6.0]]))


def test_lokr_decomposed_w1_only_scales_by_w1_rank():
    tensors = {"k.lokr_w1_a": t([[1.0, 1.0]]), "k.lokr_w1_b": t([[1.0], [2.0]]), "k.lokr_w2": t([[1.0, -1.0]]),
               "k.alpha": t(1.0)}
    # w1 = [[3]], kron = [[3, -3]], scale 1 / rank 2
    assert torch.equal(fr.delta_weight(tensors, "k", (1, 2)), t([[1.5, -1.5]]))


def test_lokr_both_decomposed_uses_w2_rank():
    tensors = {"k.lokr_w1_a": t([[2.0]]), "k.lokr_w1_b": t([[1.0]]),
               "k.lokr_w2_a": t([[1.0, 0.0], [0.0, 1.0]]), "k.lokr_w2_b": t([[1.0, 2.0], [3.0, 4.0]]),
               "k.alpha": t(4.0)}
    # w1 = [[2]], w2 = [[1,2],[3,4]], scale 4 / 2 (w2's rank, not w1's 1)
    assert torch.equal(fr.delta_weight(tensors, "k", (2, 2)), t([[4.0, 8.0], [12.0, 16.0]]))


def test_lokr_conv_kron_layout():
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(2, 3, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    got = fr.delta_weight({"k.lokr_w1": w1, "k.lokr_w2": w2}, "k", (8, 15, 3, 3))
    for i, j, p, q in ((0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 1)):
        torch.testing.assert_close(got[i * 4 + p, j * 5 + q], w1[i, j] * w2[p, q])


def test_alpha_is_read_at_its_stored_precision():
    tensors = {"m.lora_up.weight": t([[1.0]]), "m.lora_down.weight": t([[1.0]]),
               "m.alpha": torch.tensor(0.1, dtype=torch.float16)}
    got = fr.delta_weight(tensors, "m", (1, 1)).item()
    assert got == float(torch.tensor(0.1, dtype=torch.float16)) == 0.0999755859375  # not 0.1


def test_delta_weight_rejects_broken_modules():
    ok = {"m.lora_up.weight": t([[1.0]]), "m.lora_down.weight": t([[1.0]]), "m.alpha": t(1.0)}
    with pytest.raises(KeyError):
        fr.delta_weight(ok, "other", (1, 1))
    with pytest.raises(ValueError, match="cannot be reshaped"):
        fr.delta_weight(ok, "m", (2, 1))
    with pytest.raises(ValueError, match="missing"):
        fr.delta_weight({"m.lora_up.weight": t([[1.0]])}, "m", (1, 1))
    with pytest.raises(ValueError, match="adapter types"):
        fr.delta_weight(ok | {"m.hada_w1_a": t([[1.0]])}, "m", (1, 1))
    with pytest.raises(ValueError, match="outside"):
        fr.delta_weight(ok | {"m.lora_mid.weight": t([[1.0]])}, "m", (1, 1))
    with pytest.raises(ValueError, match="one number"):
        fr.delta_weight(ok | {"m.alpha": t([1.0, 2.0])}, "m", (1, 1))


def random_module_files():
    """Kohya-layout tensors for one module of every kind this reference models, with weight shapes."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    return [
        ({"lora_up.weight": r(6, 3), "lora_down.weight": r(3, 5), "alpha": t(2.0)}, (6, 5)),
        ({"lora_up.weight": r(6, 3, 1, 1), "lora_down.weight": r(3, 5, 1, 1), "alpha": t(1.0)}, (6, 5, 1, 1)),
        ({"lora_up.weight": r(6, 3), "lora_down.weight": r(3, 5)}, (6, 5, 1, 1)),
        ({"lora_up.weight": r(6, 2, 1, 1), "lora_down.weight": r(2, 5, 3, 3), "alpha": t(0.5)}, (6, 5, 3, 3)),
        ({"hada_w1_a": r(6, 2), "hada_w1_b": r(2, 5), "hada_w2_a": r(6, 2), "hada_w2_b": r(2, 5), "alpha": t(3.0)},
         (6, 5)),
        ({"hada_w1_a": r(6, 2), "hada_w1_b": r(2, 45), "hada_w2_a": r(6, 2), "hada_w2_b": r(2, 45)}, (6, 5, 3, 3)),
        ({"lokr_w1": r(2, 1), "lokr_w2_a": r(3, 2), "lokr_w2_b": r(2, 5), "alpha": t(3.0)}, (6, 5)),
        ({"lokr_w1_a": r(2, 1), "lokr_w1_b": r(1, 1), "lokr_w2": r(3, 5), "alpha": t(3.0)}, (6, 5)),
        ({"lokr_w1": r(2, 1), "lokr_w2": r(3, 5), "alpha": t(3.0)}, (6, 5)),
        ({"lokr_w1": r(2, 1), "lokr_w2_a": r(3, 2), "lokr_w2_b": r(2, 45), "alpha": t(1.0)}, (6, 5, 3, 3)),
        ({"lokr_w1": r(2, 1), "lokr_w2": r(3, 5, 3, 3), "alpha": t(1.0)}, (6, 5, 3, 3)),
    ]


@pytest.mark.parametrize("index", range(len(random_module_files())))
def test_comfyui_and_a1111_formulas_agree(index):
    own, shape = random_module_files()[index]
    tensors = {f"mod.{k}": v for k, v in own.items()}
    torch.testing.assert_close(fr.delta_weight(tensors, "mod", shape), fr.delta_weight_a1111(tensors, "mod", shape))


def kohya_file(modules, seed=4, rank=None):
    """Random kohya LoRA tensors for these modules ({name: weight shape}): ranks 1-3 varying per module unless
    given, alpha 2 for Linear/1x1 modules and 1 for 3x3 convs (kohya's network_alpha / conv_alpha)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (name, shape) in enumerate(sorted(modules.items())):
        big_conv = len(shape) == 4 and shape[2:] != (1, 1)
        for part, part_shape in fr.kohya_lora_tensor_shapes(shape, rank or 1 + i % 3).items():
            tensors[f"{name}.{part}"] = (torch.tensor(1.0 if big_conv else 2.0) if part == "alpha"
                                         else torch.randn(part_shape, generator=g))
    return tensors


def diffusers_weight_changes(tensors, unet, te, modules):
    """Load a kohya file with diffusers (StableDiffusionPipeline's kohya -> PEFT path), merge every adapter and
    return {module name: weight change} and the number of PEFT layers made."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    lookup, before = {}, {}
    for prefix, root, rows in (("lora_unet_", unet, fr.module_table(unet)),
                               ("lora_te_", te, fr.as_transformers4_clip_rows(fr.module_table(te)))):
        for (_, module), (kohya_path, _, _) in zip(root.named_modules(), rows):
            name = prefix + kohya_path.replace(".", "_")
            if name in modules:
                lookup[name] = module
                before[name] = module.weight.detach().clone()
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(dict(tensors))
    StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=unet)
    StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, alphas, text_encoder=te)
    tuned = [m for root in (unet, te) for m in root.modules() if isinstance(m, BaseTunerLayer)]
    for m in tuned:
        m.merge()
    return {name: module.weight.detach() - before[name] for name, module in lookup.items()}, len(tuned)


@pytest.mark.filterwarnings("ignore:The following alpha_pattern keys")
def test_diffusers_peft_merge_of_a_kohya_file_matches_delta_weight():
    """diffusers' load_lora_weights path (kohya -> PEFT conversion) is a third implementation of the LoRA format:
    a kohya file with every module of the suite's tiny model (LoCon: 3x3 convs too, ranks varying per module, one
    alpha for Linear/1x1 modules and another for 3x3 convs) must load whole, and merging must change each weight by
    delta_weight."""
    unet, te = tiny_models()
    modules = fr.kohya_sd15_lora_modules(unet, te, conv=True)
    tensors = kohya_file(modules)
    assert fr.diffusers_kohya_lora_problems(tensors, modules) == []
    # Every tensor is one ComfyUI's loader reads (its key map for this model would hold every module name).
    assert fr.comfyui_unloaded_keys(tensors, {name: name for name in modules}) == []
    changes, tuned = diffusers_weight_changes(tensors, unet, te, modules)
    assert tuned == len(modules)
    for name, change in changes.items():
        torch.testing.assert_close(change, fr.delta_weight(tensors, name, modules[name]), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The following alpha_pattern keys")
def test_diffusers_problems_match_what_diffusers_does():
    unet, te = tiny_models()
    modules = fr.kohya_sd15_lora_modules(unet, te, conv=True)
    odd_attention = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    odd_te = "lora_te_text_model_encoder_layers_1_mlp_fc1"
    odd_fine = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2",
                "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_up_blocks_1_resnets_0_time_emb_proj"]
    tensors = kohya_file(modules, rank=2)
    for name in [odd_attention, odd_te, *odd_fine]:
        tensors[f"{name}.alpha"] = torch.tensor(0.5)
    problems = fr.diffusers_kohya_lora_problems(tensors, modules)
    assert [p.split(":")[0] for p in problems] == sorted([odd_attention, odd_te])
    changes, _ = diffusers_weight_changes(tensors, unet, te, modules)
    for name, change in changes.items():
        right = torch.allclose(change, fr.delta_weight(tensors, name, modules[name]), rtol=1e-4, atol=1e-5)
        assert right == (name not in (odd_attention, odd_te)), name

    loha = {"lora_unet_x.hada_w1_a": t([[1.0]]), "lora_unet_x.hada_w1_b": t([[1.0]]),
            "lora_unet_x.hada_w2_a": t([[1.0]]), "lora_unet_x.hada_w2_b": t([[1.0]])}
    assert fr.diffusers_kohya_lora_problems(loha)
    from diffusers import StableDiffusionPipeline
    with pytest.raises(ValueError, match="not been correctly renamed"):
        StableDiffusionPipeline.lora_state_dict(dict(loha))
    proj_in = "lora_unet_down_blocks_0_attentions_0_proj_in"
    flat = {f"{proj_in}.lora_down.weight": torch.randn(2, 32), f"{proj_in}.lora_up.weight": torch.randn(32, 2),
            f"{proj_in}.alpha": t(2.0)}
    assert fr.diffusers_kohya_lora_problems(flat, modules) == [
        f"{proj_in}: ['lora_down.weight', 'lora_up.weight'] must be 4-D for a Conv2d"]
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(dict(flat))
    fresh_unet, _ = tiny_models()
    with pytest.raises(RuntimeError, match="size mismatch"):
        StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=fresh_unet)
    assert "not read as a kohya file" in fr.diffusers_kohya_lora_problems(
        {**flat, "bundle_emb.cat.string_to_param.*": torch.zeros(1, 32)})[0]


def lycoris_cases():
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule
    linear = ("linear", lambda: torch.nn.Linear(64, 48))
    conv = ("conv", lambda: torch.nn.Conv2d(16, 24, 3, padding=1))
    return [
        ("locon", LoConModule, linear, dict(lora_dim=4, alpha=2.0)),
        ("locon", LoConModule, conv, dict(lora_dim=4, alpha=2.0)),
        ("loha", LohaModule, linear, dict(lora_dim=2, alpha=3.0)),
        ("loha", LohaModule, conv, dict(lora_dim=2, alpha=1.0)),
        ("lokr w1 full", LokrModule, linear, dict(lora_dim=2, alpha=3.0, factor=4)),
        ("lokr both decomposed", LokrModule, linear, dict(lora_dim=1, alpha=3.0, factor=8, decompose_both=True)),
        ("lokr both full", LokrModule, linear, dict(lora_dim=8, alpha=3.0, factor=4)),
        ("lokr conv", LokrModule, conv, dict(lora_dim=1, alpha=0.5, factor=4, decompose_both=True)),
        ("lokr conv w2 full", LokrModule, conv, dict(lora_dim=8, alpha=0.5, factor=4)),
    ]


@pytest.mark.parametrize("index", range(len(lycoris_cases())))
def test_lycoris_training_forward_matches_delta_weight_of_its_saved_tensors(index):
    """LyCORIS (the library whose modules define the LoHa/LoKr files) trains with a forward pass; the tensors it
    saves must make readers apply the same change. Checked on random inputs: lycoris(x) == base(x) + op(x, ΔW)."""
    label, cls, (kind, make), kwargs = lycoris_cases()[index]
    torch.manual_seed(index)
    base = make()
    module = cls("lora_unet_x", base, multiplier=1.0, **kwargs)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    tensors = {f"m.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    delta = fr.delta_weight(tensors, "m", base.weight.shape)
    x = torch.randn(3, 64) if kind == "linear" else torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = (F.linear(x, base.weight + delta, base.bias) if kind == "linear"
                    else F.conv2d(x, base.weight + delta, base.bias, padding=1))
        module.apply_to()
        got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=label)


def test_comfyui_unloaded_keys():
    key_map = {"lora_unet_a": "x", "lora_unet_b": "y"}
    tensors = {"lora_unet_a.lora_up.weight": t([[1.0]]), "lora_unet_a.lora_down.weight": t([[1.0]]),
               "lora_unet_a.alpha": t(1.0), "lora_unet_b.hada_w1_a": t([[1.0]]), "lora_unet_b.hada_w2_b": t([[1.0]])}
    assert fr.comfyui_unloaded_keys(tensors, key_map) == []
    extra = tensors | {"lora_unet_c.lora_up.weight": t([[1.0]]), "lora_unet_a.lora_A.weight": t([[1.0]]),
                       "bundle_emb.cat.string_to_param.*": t([[1.0]]), "lora_unet_b.lora_down.weight": t([[1.0]])}
    assert fr.comfyui_unloaded_keys(extra, key_map) == sorted([
        "lora_unet_c.lora_up.weight", "lora_unet_a.lora_A.weight", "bundle_emb.cat.string_to_param.*",
        "lora_unet_b.lora_down.weight"])


# --- 5. embeddings -------------------------------------------------------------------------------------------------

def test_a1111_embedding_reading():
    vectors = torch.randn(3, 768)
    torch.testing.assert_close(fr.embedding_vectors_as_a1111_reads({"emb_params": vectors}), vectors)
    torch.testing.assert_close(fr.embedding_vectors_as_a1111_reads({"anything": vectors.half()}),
                               vectors.half().float())
    assert fr.embedding_vectors_as_a1111_reads({"emb_params": vectors[0]}).shape == (1, 768)
    for bad in ({"a": vectors, "b": vectors}, {"clip_l": vectors, "clip_g": torch.randn(3, 1280)},
                {"emb_params": torch.randn(3, 1024)}, {"emb_params": vectors[None]}):
        with pytest.raises(ValueError):
            fr.embedding_vectors_as_a1111_reads(bad)


def test_comfyui_embedding_reading():
    a, b = torch.randn(2, 768), torch.randn(1, 768)
    torch.testing.assert_close(fr.embedding_vectors_as_comfyui_reads({"emb_params": a}), a)
    torch.testing.assert_close(fr.embedding_vectors_as_comfyui_reads({"zzz": b, "clip_l": a}), a)
    torch.testing.assert_close(fr.embedding_vectors_as_comfyui_reads({"zzz": b, "aaa": a}), a)  # sorted first
    bundled = {"bundle_emb.x.string_to_param.*": a, "bundle_emb.w.string_to_param.*": b, "other": a}
    torch.testing.assert_close(fr.embedding_vectors_as_comfyui_reads(bundled), torch.cat([b, a]))
    assert fr.embedding_vectors_as_comfyui_reads({"emb_params": a[0]}).shape == (1, 768)
    with pytest.raises(ValueError):
        fr.embedding_vectors_as_comfyui_reads({"emb_params": torch.randn(2, 1024)})


def test_diffusers_embedding_tokens_match_load_textual_inversion():
    from diffusers.loaders import TextualInversionLoaderMixin
    from transformers import CLIPTokenizer

    predicted = fr.embedding_tokens_as_diffusers_reads({"emb_params": torch.zeros(3, 32)})
    assert [name for name, _ in predicted] == ["emb_params", "emb_params_1", "emb_params_2"]
    named = fr.embedding_tokens_as_diffusers_reads({"emb_params": torch.zeros(2, 32)}, token="<cat>")
    assert [name for name, _ in named] == ["<cat>", "<cat>_1"]
    assert [name for name, _ in fr.embedding_tokens_as_diffusers_reads({"x": torch.zeros(1, 32)})] == ["x"]
    with pytest.raises(ValueError):
        fr.embedding_tokens_as_diffusers_reads({"a": torch.zeros(32), "b": torch.zeros(32)})

    _, te = tiny_models()
    tokenizer = CLIPTokenizer.from_pretrained(ASSETS / "tokenizer")

    class Holder(TextualInversionLoaderMixin):
        hf_device_map = None

        def __init__(self):
            self.tokenizer, self.text_encoder = tokenizer, te
            self.components = {"tokenizer": tokenizer, "text_encoder": te}

    vectors = torch.randn(3, 32)
    Holder().load_textual_inversion({"emb_params": vectors})
    expected = fr.embedding_tokens_as_diffusers_reads({"emb_params": vectors})
    table = te.get_input_embeddings().weight
    for name, vector in expected:
        assert name in tokenizer.added_tokens_encoder
        torch.testing.assert_close(table[tokenizer.convert_tokens_to_ids(name)], vector)
