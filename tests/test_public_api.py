"""The public API is one import, and importing it stays cheap."""

import subprocess
import sys


def test_one_import_gives_the_public_api_and_the_old_paths_still_work():
    from midblock_plugin import EvalSettings, MidBlockCallback, MidBlockConfig, MidBlockPlan, build_plan
    from midblock_plugin.config import MidBlockConfig as Config
    from midblock_plugin.evaluation import EvalSettings as Settings
    from midblock_plugin.integrations.trl import MidBlockCallback as Callback
    from midblock_plugin.integrations.trl import build_plan as build
    from midblock_plugin.plan import MidBlockPlan as Plan

    assert (MidBlockConfig, EvalSettings, MidBlockCallback, build_plan, MidBlockPlan) == (
        Config,
        Settings,
        Callback,
        build,
        Plan,
    )
    plan = build_plan(None, MidBlockConfig(segments="01110", rank=16), num_layers=16)
    assert isinstance(plan, MidBlockPlan) and plan.layers == list(range(3, 12))


def test_importing_the_package_does_not_import_torch():
    code = "import sys, midblock_plugin; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_an_unknown_name_is_an_attribute_error():
    import midblock_plugin

    try:
        midblock_plugin.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
