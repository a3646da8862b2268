"""``midblock plan --emit TOOL``: each fragment, read the way the tool reads it, puts LoRA on exactly
the window's modules at the plan's rank and alpha.

What each tool does with its keys (their current source):

* PEFT ``LoraConfig`` (src/peft/tuners/lora/config.py): the fragment is Python; it is executed.
* LLaMA-Factory: ``self.lora_target = split_arg(self.lora_target)`` (src/llamafactory/hparams/finetuning_args.py)
  and ``peft_kwargs = {"r": finetuning_args.lora_rank, "target_modules": target_modules,
  "lora_alpha": finetuning_args.lora_alpha, ..., "use_rslora": finetuning_args.use_rslora}``
  (src/llamafactory/model/adapter.py, ``_setup_lora_tuning``).
* ms-swift: ``if self.target_regex: self.target_modules = self.target_regex`` (swift/arguments/tuner_args.py),
  then ``'r': args.lora_rank, ..., 'use_rslora': args.use_rslora`` into ``LoraConfig`` (swift/pipelines/train/tuner.py).
* Unsloth: ``FastLanguageModel.get_peft_model`` builds ``arguments = dict(r=r, lora_alpha=lora_alpha,
  target_modules=final_modules, lora_dropout=..., bias=..., layers_to_transform=layers_to_transform,
  use_rslora=use_rslora, ...)`` without ``layers_pattern`` (unsloth/models/llama.py).
* Axolotl: ``LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=lora_target_modules,
  layers_to_transform=cfg.peft_layers_to_transform, layers_pattern=cfg.peft_layers_pattern, ...)``
  (src/axolotl/loaders/adapter.py, ``load_lora``); the plugin form goes through this plugin's key mapping.
  Axolotl's own loader validates the fragment in tests/axolotl/test_emit_axolotl.py.

The tools are one table (``midblock_plugin.emit.TOOLS``): ``midblock plan --emit``'s choices and the
refusals read it, and a tool registered in it alone is emitted end to end.
"""

from __future__ import annotations

import argparse
import ast
import shlex
from pathlib import Path

import pytest
import yaml

from midblock_plugin import emit as emitting
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.emit import EMIT_TOOLS, TOOLS, EmitError, EmitTool, emit
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import tiny_model
from tests.source_scan import string_literals


CASES = [
    ("llama", dict(rank=8), [1, 2, 3]),  # the default 20-80% window
    ("gpt2", dict(rank=4, layers="1,3", target_modules="all-linear"), [1, 3]),  # Conv1D, two c_proj, a gap
]


def _lora_modules(model, lora_config) -> set[str]:
    """Names of the modules PEFT puts LoRA on, relative to the causal-LM model."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config)
    return {
        n.removeprefix("base_model.model.").removesuffix(".lora_A")
        for n, _ in peft_model.named_modules()
        if n.endswith(".lora_A")
    }


def _expected(plan) -> set[str]:
    return {f"{plan.layers_path}.{i}.{t}" for i in plan.layers for t in plan.target_modules}


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request):
    arch, kw, layers = request.param
    model = tiny_model(arch, num_layers=5)
    plan = build_plan(model, MidBlockConfig(alpha_policy="fixed", lora_alpha=16, **kw))
    assert plan.layers == layers
    return arch, model, plan


def test_peft_fragment_builds_the_plans_lora_config(case):
    _, model, plan = case
    ns: dict = {}
    exec(emit(plan, "peft"), ns)  # noqa: S102 - the fragment is Python for the user to paste
    cfg = ns["lora_config"]
    assert cfg.r == plan.layer_rank and cfg.lora_alpha == plan.lora_alpha
    assert _lora_modules(model, cfg) == _expected(plan)


def test_llamafactory_fragment_targets_exactly_the_window(case):
    from peft import LoraConfig

    _, model, plan = case
    y = yaml.safe_load(emit(plan, "llamafactory"))
    assert y["finetuning_type"] == "lora" and set(y) == {
        "finetuning_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "lora_target",
    }
    assert isinstance(y["lora_alpha"], int)
    targets = [t.strip() for t in y["lora_target"].split(",")]  # LLaMA-Factory's split_arg
    cfg = LoraConfig(
        r=y["lora_rank"],
        lora_alpha=y["lora_alpha"],
        lora_dropout=y["lora_dropout"],
        use_rslora=y["use_rslora"],
        target_modules=targets,
    )
    assert y["lora_rank"] == plan.layer_rank and y["lora_alpha"] == plan.lora_alpha
    assert _lora_modules(model, cfg) == _expected(plan)


def test_swift_fragment_targets_exactly_the_window(case):
    from peft import LoraConfig

    _, model, plan = case
    words = shlex.split(emit(plan, "swift").split("\nswift sft", 1)[1].replace("\\\n", " "))
    args = dict(zip(words[::2], words[1::2]))
    assert args["--tuner_type"] == "lora" and int(args["--lora_rank"]) == plan.layer_rank
    cfg = LoraConfig(
        r=int(args["--lora_rank"]),
        lora_alpha=int(args["--lora_alpha"]),
        target_modules=args["--target_regex"],
        use_rslora=args["--use_rslora"] == "true",
    )
    assert _lora_modules(model, cfg) == _expected(plan)


def test_unsloth_fragment_targets_exactly_the_window(case):
    from peft import LoraConfig

    _, model, plan = case
    call = next(
        n
        for n in ast.walk(ast.parse(emit(plan, "unsloth")))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "get_peft_model"
    )
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert set(kw) == {
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "layers_to_transform",
        "use_rslora",
        "bias",
    }
    cfg = LoraConfig(**kw)  # what get_peft_model passes on (no layers_pattern)
    assert _lora_modules(model, cfg) == _expected(plan)


def test_axolotl_fragment_plugin_and_native_forms(case):
    from peft import LoraConfig

    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg

    _, model, plan = case
    text = emit(plan, "axolotl")
    y = yaml.safe_load(text)
    assert y["adapter"] == "midblock" and y["plugins"] == ["midblock_plugin.axolotl.MidBlockPlugin"]
    again = build_plan(model, midblock_config_from_cfg(y))
    assert (again.layers, again.layer_rank, again.lora_alpha, again.target_modules) == (
        plan.layers,
        plan.layer_rank,
        plan.lora_alpha,
        plan.target_modules,
    )
    native = yaml.safe_load(
        "\n".join(
            line[2:]
            for line in text.splitlines()
            if line.startswith("# ")
            and ":" in line
            and not line.startswith("# midblock")
            and not line.startswith("# keys")
            and not line.startswith("# Without")
        )
    )
    assert native["adapter"] == "lora" and native["peft_layers_to_transform"] == plan.layers
    cfg = LoraConfig(
        r=native["lora_r"],
        lora_alpha=native["lora_alpha"],
        target_modules=native["lora_target_modules"],
        layers_to_transform=native["peft_layers_to_transform"],
        layers_pattern=native["peft_layers_pattern"],
    )
    assert _lora_modules(model, cfg) == _expected(plan)


def test_fragments_cite_their_source():
    plan = build_plan(tiny_model("llama", num_layers=5))
    for tool, where in [
        ("peft", "src/peft/tuners/lora/config.py"),
        ("axolotl", "src/axolotl/utils/schemas/peft.py"),
        ("llamafactory", "src/llamafactory/hparams/finetuning_args.py"),
        ("swift", "swift/arguments/tuner_args.py"),
        ("unsloth", "unsloth/models/llama.py"),
    ]:
        assert where in emit(plan, tool).splitlines()[1]


def test_what_a_tool_cannot_express_is_refused():
    model = tiny_model("llama", num_layers=5)
    full = build_plan(model, MidBlockConfig(mode="full"))
    with pytest.raises(EmitError, match="freeze_trainable_layers > 0.*a middle window cannot be expressed"):
        emit(full, "llamafactory")
    for tool in ("peft", "swift", "unsloth"):
        with pytest.raises(EmitError, match="--mode full"):
            emit(full, tool)
    assert "midblock_mode: full" in emit(full, "axolotl")  # the plugin trains full mode itself
    odd = build_plan(model, MidBlockConfig(rank=8, lora_alpha=15))  # ratio policy: alpha 15 * 13/8 = 24.375
    for tool in ("llamafactory", "swift"):
        with pytest.raises(EmitError, match="types lora_alpha as an integer"):
            emit(odd, tool)
    assert "not expressible" in emit(odd, "axolotl")  # the native form only; the plugin form keeps alpha 15
    with pytest.raises(EmitError, match="needs a MODEL"):
        emit(build_plan(num_layers=5), "peft")
    assert set(EMIT_TOOLS) == {"peft", "axolotl", "llamafactory", "swift", "unsloth"}


def test_cli_emit(tmp_path, capsys):
    from midblock_plugin.cli import main
    from midblock_plugin.testing import save_tiny

    save_tiny(tmp_path / "m", "llama", num_layers=5)
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "m"), "--emit", "swift"]) == 0
    assert "--target_regex" in capsys.readouterr().out
    assert main(["plan", "--num-layers", "5", "--emit", "peft"]) == 2
    assert "--emit peft needs a MODEL" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "m"), "--mode", "full", "--emit", "llamafactory"]) == 2
    assert "freeze_trainable_layers" in capsys.readouterr().err


# --------------------------------------------------------------------------- the table of tools


ROOT = Path(__file__).resolve().parents[1]


def _emit_option():
    from midblock_plugin.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices["plan"]._actions if "--emit" in a.option_strings)


def test_the_tool_table_is_the_only_source():
    option = _emit_option()
    assert list(option.choices) == list(TOOLS) == list(EMIT_TOOLS)
    docs = (ROOT / "docs" / "serving.md").read_text()
    plan = build_plan(tiny_model("llama", num_layers=5))
    for name, spec in TOOLS.items():
        assert spec.name == name and spec.display and spec.form and callable(spec.write)
        assert name in option.help
        assert f"| `{name}` |" in docs, f"docs/serving.md's --emit table has no row for {name}"
        assert emit(plan, name).splitlines()[1] == f"# keys as defined in {spec.source}"
    # a tool's name is written in the table only: no other shipped module has it as a string in its code
    names = set(TOOLS) - {"peft", "axolotl"}  # also package names, imported and named everywhere
    for path in sorted((ROOT / "midblock_plugin").rglob("*.py")):
        if path != ROOT / "midblock_plugin" / "emit.py":
            found = names & string_literals(path)
            assert not found, f"{path.relative_to(ROOT)} writes the tool name(s) {found}; read emit.TOOLS"


def test_a_registered_tool_is_emitted_end_to_end(tmp_path, monkeypatch, capsys):
    """Adding a tool is one entry in TOOLS: ``plan --emit`` accepts it, and its capabilities (no full mode,
    an integer alpha) are enforced without code of its own."""
    from midblock_plugin.cli import main
    from midblock_plugin.testing import save_tiny

    def write(plan, spec):
        return "\n".join(
            emitting._header(plan, spec)
            + [
                f"fake_layers: {list(plan.layers)}",
                f"fake_rank: {plan.layer_rank}",
                f"fake_alpha: {int(plan.lora_alpha)}",
            ]
        )

    monkeypatch.setattr(
        emitting,
        "TOOLS",
        {
            **TOOLS,
            "fake": EmitTool(
                "fake",
                "FakeTrainer",
                write,
                "fake/trainer src/args.py (fake_layers, fake_rank, fake_alpha: int)",
                "YAML",
                full_mode="FakeTrainer trains all layers or none",
                integer_alpha=True,
            ),
        },
    )
    assert "fake" in _emit_option().choices
    save_tiny(tmp_path / "m", "llama", num_layers=5)
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "m"), "--rank", "8", "--alpha-policy", "fixed", "--emit", "fake"]) == 0
    out = capsys.readouterr().out
    y = yaml.safe_load(out)
    assert y == {"fake_layers": [1, 2, 3], "fake_rank": 13, "fake_alpha": 16}
    assert "# keys as defined in fake/trainer src/args.py" in out
    assert main(["plan", str(tmp_path / "m"), "--mode", "full", "--emit", "fake"]) == 2
    assert "--emit fake with --mode full: FakeTrainer trains all layers or none" in capsys.readouterr().err
    # rsLoRA, ratio policy: the window's alpha is 16 * sqrt(13 / 8), not an integer
    assert main(["plan", str(tmp_path / "m"), "--rank", "8", "--use-rslora", "--emit", "fake"]) == 2
    assert "FakeTrainer types lora_alpha as an integer" in capsys.readouterr().err
