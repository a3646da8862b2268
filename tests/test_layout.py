"""The architecture rules of the package, checked on its source (imports read with ``ast``).

* the core never imports an integration, the CLI or the experiments;
* ``midblock_plugin.testing`` (tiny models for tests) is imported by no shipped module;
* the package knows nothing of a ``../shared`` folder (GSM8K comes from --data-dir,
  ``$MIDBLOCK_GSM8K_DIR`` or the hub);
* ``window.py`` is pure arithmetic: it imports no torch and no transformers;
* private APIs of transformers / DeepSpeed / lm-eval are touched in ``compat.py`` only;
* a subcommand module that fails to import stops ``midblock`` loudly.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest


PKG = Path(__file__).resolve().parents[1] / "midblock_plugin"
CORE = (
    "choices",
    "window",
    "architecture",
    "config",
    "plan",
    "adapters",
    "io",
    "storage",
    "figures",
    "rules",
    "compat",
    "memory",
    "training",
    "data",
)
UPPER = (
    "midblock_plugin.integrations",
    "midblock_plugin.axolotl",
    "midblock_plugin.cli",
    "midblock_plugin.experiments",
)


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _is_core(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and parts[1] in CORE


@pytest.mark.parametrize("name, path", [(n, p) for n, p in _modules() if _is_core(n)], ids=lambda x: str(x))
def test_core_never_imports_an_integration_the_cli_or_the_experiments(name, path):
    bad = sorted(i for i in _imports(path) if i.startswith(UPPER))
    assert not bad, f"{name} (core) imports {bad}"


def test_testing_helpers_are_not_imported_by_shipped_modules():
    offenders = [
        n
        for n, p in _modules()
        if not n.startswith("midblock_plugin.testing")
        and any(i.startswith("midblock_plugin.testing") for i in _imports(p))
    ]
    assert not offenders


def test_the_package_knows_no_shared_folder():
    offenders = [
        str(p) for _, p in _modules() if re.search(r"\.\./shared|\"shared\"|'shared'", p.read_text(encoding="utf-8"))
    ]
    assert not offenders


def test_private_api_touches_live_in_compat():
    pattern = re.compile(
        r"_model_mapping|_gradient_checkpointing_func|_forward_hooks|_getframe|__closure__|_invalidate_trace"
        # lm-eval internals: its helper modules, its registry, HFLM's private generate
        r"|lm_eval\.models\.utils|lm_eval\.utils|lm_eval\.api\.registry|_model_generate"
    )
    offenders = [
        n for n, p in _modules() if n != "midblock_plugin.compat" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert not offenders


def test_window_is_pure_arithmetic():
    code = (
        "import sys, midblock_plugin.window; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_experiments_import_nothing_from_the_cli():
    offenders = sorted(
        n
        for n, p in _modules()
        if n.startswith("midblock_plugin.experiments")
        and any(i.startswith("midblock_plugin.cli") for i in _imports(p))
    )
    assert not offenders


def test_a_subcommand_that_fails_to_import_fails_loudly(monkeypatch):
    from midblock_plugin import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", (*cli.SUBCOMMAND_MODULES, "midblock_plugin.cli.no_such_command"))
    with pytest.raises(ImportError, match=r"midblock_plugin\.cli\.no_such_command.*fails to import"):
        cli.build_parser()
