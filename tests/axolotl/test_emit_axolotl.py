"""``midblock plan --emit axolotl``: both forms of the fragment pass Axolotl's own config
validation (the merged schema with the plugin registered, as ``load_cfg`` runs it) and keep
the window and rank: the plugin form (``adapter: midblock``) and the native form in its
comments (``adapter: lora`` + ``peft_layers_to_transform`` / ``peft_layers_pattern``, Axolotl's
keys in src/axolotl/utils/schemas/peft.py, passed to ``LoraConfig`` in src/axolotl/loaders/adapter.py)."""

from __future__ import annotations

import pytest
import yaml

from tests.axolotl.helpers import MATCHED_RANK, RANK, WINDOW, axolotl_validate


@pytest.mark.parametrize("budget", ["match", "serve"])
def test_emitted_fragment_passes_axolotls_validation(workspace, budget):
    from midblock_plugin.config import MidBlockConfig
    from midblock_plugin.emit import emit
    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg
    from midblock_plugin.plan import build_plan

    plan = build_plan(
        str(workspace.model_dir),
        MidBlockConfig(segments="01110", rank=RANK, lora_alpha=2 * RANK, alpha_policy="fixed", budget=budget),
    )
    assert plan.layer_rank == (MATCHED_RANK if budget == "match" else 1)  # vLLM sizes at or below 6: 1
    text = emit(plan, "axolotl")
    fragment = yaml.safe_load(text)
    base = workspace.config(f"emit-{budget}", midblock_segments=None, lora_target_modules=None)
    cfg = axolotl_validate(workspace.write({**base, **fragment}, f"emit-{budget}"))
    again = build_plan(str(workspace.model_dir), midblock_config_from_cfg(cfg))
    assert (again.layers, again.layer_rank, again.lora_alpha) == (WINDOW, plan.layer_rank, plan.lora_alpha)

    native = yaml.safe_load(
        "\n".join(
            line[2:]
            for line in text.splitlines()
            if line.startswith("# ") and ":" in line and line.split(":")[0][2:].isidentifier()
        )
    )
    plain = workspace.config(f"emit-native-{budget}", plugins=None, midblock_segments=None, lora_target_modules=None)
    cfg = axolotl_validate(workspace.write({**plain, **native}, f"emit-native-{budget}"))
    assert cfg.adapter == "lora" and cfg.peft_layers_to_transform == WINDOW and cfg.lora_r == plan.layer_rank
    assert cfg.peft_layers_pattern == ["layers"] and cfg.lora_alpha == plan.lora_alpha
