"""Registration: the ``axolotl.plugins`` entry point, the short plugin path
``midblock_plugin.axolotl.MidBlockPlugin``, the adapter capability, and hooks that stay
inert for configs that do not use ``adapter: midblock`` (Axolotl 0.21+ loads every
installed plugin for every run)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.axolotl.helpers import PLUGIN, ROOT, SHORT_PLUGIN, WINDOW


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


# --------------------------------------------------------------------------- the short path


def test_short_plugin_path_loads_through_axolotls_plugin_loader():
    """Axolotl imports the module part of a plugin name and gets the class from it."""
    from axolotl.integrations.base import PluginManager, load_plugin

    import midblock_plugin.axolotl
    import midblock_plugin.integrations.axolotl
    from midblock_plugin.integrations.axolotl.plugin import MidBlockPlugin

    assert (
        midblock_plugin.axolotl.MidBlockPlugin is midblock_plugin.integrations.axolotl.MidBlockPlugin is MidBlockPlugin
    )
    assert type(load_plugin(SHORT_PLUGIN)) is MidBlockPlugin
    manager = PluginManager.get_instance()
    try:
        manager.register(SHORT_PLUGIN)
        assert type(manager.plugins[SHORT_PLUGIN]) is MidBlockPlugin and manager.supports_adapter("midblock")
    finally:
        manager.plugins.pop(SHORT_PLUGIN, None)  # the manager is a process-wide singleton


def test_plugin_listed_by_both_names_acts_once():
    """Both names in one process (a config listing both; Axolotl 0.21+ adding the entry point's
    name): the first instance does the work, the other stays inert, and Axolotl's merged config
    schema gets MidBlockArgs once (twice would be a duplicate base class)."""
    from axolotl.integrations.base import PluginManager
    from axolotl.integrations.config import merge_input_args
    from axolotl.utils.dict import DictDefault

    from midblock_plugin.testing import tiny_model

    manager = PluginManager.get_instance()
    had_long = PLUGIN in manager.plugins
    try:
        manager.register(PLUGIN)
        manager.register(SHORT_PLUGIN)
        first, second = manager.plugins[PLUGIN], manager.plugins[SHORT_PLUGIN]
        assert manager.get_input_args().count(first.get_input_args()) == 1 and second.get_input_args() is None
        merge_input_args()  # no TypeError
        cfg = DictDefault(
            {
                "adapter": "midblock",
                "midblock_segments": "01110",
                "lora_r": 4,
                "lora_target_modules": ["q_proj", "v_proj"],
                "seed": 42,
            }
        )
        model = tiny_model("llama", num_layers=5)
        assert second.load_adapter(model, cfg) is None and second.add_callbacks_pre_trainer(cfg, model) == []
        assert second.add_callbacks_post_trainer(DictDefault({**cfg, "midblock_eval": True}), trainer=None) == []
        loaded, peft_config = first.load_adapter(model, cfg)
        assert peft_config.layers_to_transform == WINDOW and [
            type(cb).__name__ for cb in first.add_callbacks_pre_trainer(cfg, loaded)
        ] == ["MidBlockCallback"]
    finally:
        manager.plugins.pop(SHORT_PLUGIN, None)
        if not had_long:
            manager.plugins.pop(PLUGIN, None)


def test_short_path_module_imports_without_axolotl():
    code = (
        "import sys; sys.modules['axolotl'] = None\n"
        "import midblock_plugin.axolotl as short\n"
        "try:\n    short.MidBlockPlugin\nexcept ImportError:\n    print('plugin needs axolotl')\n"
        "print(short.__all__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plugin needs axolotl" in out.stdout and "['MidBlockPlugin']" in out.stdout


def test_short_plugin_path_trains_through_axolotl_cli(lora_gc_run):
    """A real ``python -m axolotl.cli.train`` run that lists the plugin by its short path
    (the shared ``lora_gc_run``: its other assertions are in test_lora.py)."""
    cfg = yaml.safe_load((lora_gc_run.output_dir.parent / "lora-gc.yml").read_text())
    assert cfg["plugins"][0] == SHORT_PLUGIN
    assert f"Plugin loaded successfully: {SHORT_PLUGIN}" in lora_gc_run.output
    by_hook = {h["hook"]: h for h in lora_gc_run.hooks}
    assert by_hook["post_lora_load"]["lora_layers"] == WINDOW  # our load_adapter ran
    assert by_hook["post_train"]["plan_json"] is True  # and our callback
