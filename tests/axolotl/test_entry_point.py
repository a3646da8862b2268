"""Registration: the ``axolotl.plugins`` entry point, the adapter capability, and hooks
that stay inert for configs that do not use ``adapter: midblock`` (Axolotl 0.21+ loads
every installed plugin for every run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.axolotl.helpers import PLUGIN, ROOT

pytestmark = pytest.mark.axolotl


def test_entry_point_resolves_to_the_plugin_class():
    from importlib.metadata import entry_points

    from axolotl.integrations.base import BasePlugin

    from midblock_plugin.integrations.axolotl import MidBlockPlugin

    (ep,) = [e for e in entry_points(group="axolotl.plugins") if e.name == "midblock"]
    assert ep.load() is MidBlockPlugin and issubclass(MidBlockPlugin, BasePlugin)
    # Axolotl 0.21 normalises "module:Class" to "module.Class": the same name users list under plugins:
    module, _, cls = ep.value.partition(":")
    assert f"{module}.{cls}" == PLUGIN


def test_adapter_capability_registers_the_midblock_name():
    from axolotl.integrations.base import PluginManager

    from midblock_plugin.integrations.axolotl import MidBlockPlugin

    (cap,) = MidBlockPlugin().get_adapter_capabilities()
    assert cap.name == "midblock" and cap.lora_like is False and cap.relora is False
    manager = PluginManager.get_instance()
    manager.register(PLUGIN)
    assert manager.supports_adapter("midblock")
    assert MidBlockPlugin().get_input_args() == "midblock_plugin.integrations.axolotl.args.MidBlockArgs"


def test_hooks_are_inert_for_other_adapters():
    from axolotl.utils.dict import DictDefault

    from midblock_plugin.integrations.axolotl import MidBlockPlugin
    from midblock_plugin.testing import tiny_model

    plugin = MidBlockPlugin()
    cfg = DictDefault({"adapter": "lora", "base_model": "not/a-model", "gradient_checkpointing": True})
    plugin.register(cfg)
    assert cfg.gradient_checkpointing_kwargs is None  # untouched
    plugin.pre_model_load(cfg)  # would fail on the bogus base_model if it did anything
    model = tiny_model("llama", num_layers=5)
    assert plugin.load_adapter(model, cfg) is None
    assert plugin.add_callbacks_pre_trainer(cfg, model) == []
    assert all(p.requires_grad for p in model.parameters())


def test_args_module_imports_without_axolotl():
    code = (
        "import sys; sys.modules['axolotl'] = None\n"
        "from midblock_plugin.integrations.axolotl.args import MidBlockArgs\n"
        "import midblock_plugin.integrations.axolotl as pkg\n"
        "try:\n    pkg.MidBlockPlugin\nexcept ImportError:\n    print('plugin needs axolotl')\n"
        "print(sorted(MidBlockArgs.model_fields)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "midblock_alpha_policy" in out.stdout and "plugin needs axolotl" in out.stdout
