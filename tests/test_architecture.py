"""Model layouts: layer counts from any config, layer stacks, norms, projections, counts."""

import pytest

from midblock_plugin.architecture import ModelLayout, final_norm, find_decoder_layers, num_layers_from_config
from midblock_plugin.window import WindowError


def test_num_layers_from_many_config_shapes():
    assert num_layers_from_config({"num_hidden_layers": 30}) == 30
    assert num_layers_from_config({"n_layer": 12}) == 12
    assert num_layers_from_config({"num_layers": 7}) == 7
    assert num_layers_from_config({"model_type": "x", "text_config": {"num_hidden_layers": 26}}) == 26
    with pytest.raises(WindowError, match="cannot find the number of decoder layers.*--num-layers"):
        num_layers_from_config({"model_type": "mystery"})


def test_num_layers_from_real_multimodal_config():
    from transformers import Gemma3Config

    cfg = Gemma3Config(text_config={"num_hidden_layers": 6})
    assert num_layers_from_config(cfg) == 6


def test_find_decoder_layers_names_and_errors():
    import torch.nn as nn

    from midblock_plugin.testing import tiny_model

    assert find_decoder_layers(tiny_model("gpt2", num_layers=3))[0] == "transformer.h"
    assert find_decoder_layers(tiny_model("gpt_neox", num_layers=3))[0] == "gpt_neox.layers"
    with pytest.raises(WindowError, match="cannot locate the decoder layers of Sequential"):
        find_decoder_layers(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize(
    "arch, norm", [("llama", "model.norm"), ("gpt2", "transformer.ln_f"), ("gpt_neox", "gpt_neox.final_layer_norm")]
)
def test_layout_from_config_equals_layout_from_model(arch, norm):
    from midblock_plugin.testing import tiny_config, tiny_model

    model = tiny_model(arch, num_layers=4)
    from_model, from_config = ModelLayout.from_model(model), ModelLayout.from_config(tiny_config(arch, num_layers=4))
    assert from_model == from_config
    assert from_model.final_norm_name == norm == final_norm(model)[0]
    assert from_model.full_params == sum(p.numel() for p in model.parameters())
    assert sum(from_model.layer_params) == sum(p.numel() for p in find_decoder_layers(model)[1].parameters())


def test_layout_layer_index_and_targets():
    from midblock_plugin.testing import tiny_config

    layout = ModelLayout.from_config(tiny_config("gpt2", num_layers=3))
    assert layout.layer_index("base_model.model.transformer.h.2.attn.c_attn.lora_A.default.weight") == 2
    assert layout.layer_index("transformer.wte.weight") is None
    assert layout.target_modules("attention") == ["attn.c_attn", "attn.c_proj"]
    assert layout.fan_in_fan_out(["attn.c_attn"]) is True
    with pytest.raises(WindowError, match="matches no linear module"):
        layout.target_modules(["q_proj"])
