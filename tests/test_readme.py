"""Every command the README prints runs as printed.

A fenced block is *runnable* when the line right before its fence is ``<!-- runnable -->`` (an HTML
comment: invisible on the rendered page). The runnable blocks run in README order in a scratch
checkout laid out as a fresh clone with ``../shared`` beside it (links to this checkout's
``examples/``, ``scripts/``, ``benchmarks/`` and ``.venv``; ``../shared/data/gsm8k`` is the GSM8K
copy the tests read), so what one block writes (``runs/tiny-llama``) the next one reads: shell
blocks under ``bash -e``, Python blocks saved to a file and run with ``.venv/bin/python``.

The other shell blocks are too heavy to run here (the main job, the test command, Axolotl, vLLM) or
hold placeholders (``BASE``, ``config.yml``); each of their commands must still parse: a script
exists and passes ``bash -n``, ``midblock`` arguments parse with midblock's own parser (also
those ``scripts/run.sh`` passes on), a Python script's or module's arguments with its own
``argparse`` parser (run up to its ``parse_args`` only), an ``axolotl`` line names an Axolotl
command and an existing config, and ``pip install`` lines are left to
``tests/test_install_lines.py``. A command of any other program fails the test until a check for
it is added here. The Python blocks that are not runnable (fragments) must compile and their
imports must resolve.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from midblock_plugin.testing import GSM8K_DIR


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
#: What the scratch checkout links to (the README's commands read these).
LINKED = ("examples", "scripts", "benchmarks")
#: Axolotl's own subcommands (``axolotl --help``, 0.19 and 0.21).
AXOLOTL_COMMANDS = {
    "train",
    "preprocess",
    "merge-lora",
    "merge-sharded-fsdp-weights",
    "evaluate",
    "inference",
    "quantize",
}
#: Run a Python script or module up to its ``parse_args``: parsing succeeds -> prints the token, exit 0.
PARSE_ONLY = r"""
import argparse, os, runpy, sys
_parse = argparse.ArgumentParser.parse_args
def parse_only(self, args=None, namespace=None):
    _parse(self, args, namespace)
    print("README-ARGS-PARSED", flush=True)
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_only
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python script.py` does
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass
class Block:
    lang: str
    code: str
    runnable: bool
    line: int  # of the opening fence, 1-based


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        runnable = i > 0 and lines[i - 1].strip() == MARKER
        blocks.append(Block(m.group(1), "\n".join(lines[i + 1 : end]) + "\n", runnable, i + 1))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at
    ``&&`` / ``;``, leading ``VAR=value`` assignments removed."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";"):
                while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


# --------------------------------------------------------------------------- the runnable blocks


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A scratch checkout with ``../shared/data/gsm8k`` beside it."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "midblock"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    (work / ".venv").symlink_to(Path(sys.prefix))
    (root / "shared" / "data").mkdir(parents=True)
    (root / "shared" / "data" / "gsm8k").symlink_to(GSM8K_DIR.resolve())
    return work


def test_the_readme_marks_its_runnable_blocks():
    runnable = [b for b in BLOCKS if b.runnable]
    assert README.read_text(encoding="utf-8").count(MARKER) == len(runnable)  # every marker sits on a fence
    code = "".join(b.code for b in runnable)
    assert "-m midblock_plugin.testing runs/tiny-llama" in code  # the tiny model
    assert "SFTTrainer(" in code and "trainer.train()" in code  # the TRL program
    assert "examples/trl/sft_midblock.py" in code  # the example's command line


def test_runnable_blocks_run_as_printed(checkout):
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(checkout.parent / "hf-datasets"),
        "TOKENIZERS_PARALLELISM": "false",
        # one torch thread: on a small shared CPU a thread pool contending with other processes ran
        # these tiny steps 10x slower (tests/axolotl/helpers.py measured the same)
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MIDBLOCK_GSM8K_DIR", None)  # the blocks name their data themselves
    for n, block in enumerate(b for b in BLOCKS if b.runnable):
        if block.lang == "bash":
            cmd = ["bash", "-e", "-c", block.code]
        else:
            assert block.lang == "python", f"README line {block.line}: a runnable block must be bash or python"
            script = checkout / f"readme_block_{n}.py"
            script.write_text(block.code, encoding="utf-8")
            cmd = [str(checkout / ".venv" / "bin" / "python"), script.name]
        r = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (
            f"README line {block.line} failed:\n{block.code}\n{r.stdout[-2000:]}{r.stderr[-4000:]}"
        )
    # what they made: the tiny model, the TRL program's adapter (01110 of 5 layers), the example's (of 8)
    assert json.loads((checkout / "runs" / "tiny-llama" / "config.json").read_text())["num_hidden_layers"] == 5
    program = json.loads((checkout / "runs" / "trl-midblock" / "adapter_config.json").read_text())
    assert program["layers_to_transform"] == [1, 2, 3]
    assert json.loads((checkout / "runs" / "trl-midblock" / "midblock" / "plan.json").read_text())["layers"] == [
        1,
        2,
        3,
    ]
    example = json.loads((checkout / "runs" / "tiny-midblock" / "adapter_config.json").read_text())
    assert example["layers_to_transform"] == [1, 2, 3, 4, 5]


def test_the_example_command_is_the_one_in_its_docstring():
    """The README prints the TRL example's command line exactly as the script's own header does."""
    (block,) = [b for b in BLOCKS if b.runnable and "examples/trl/sft_midblock.py" in b.code]
    doc = (ROOT / "examples" / "trl" / "sft_midblock.py").read_text(encoding="utf-8")
    assert shell_commands(block.code)[0] in [shell_commands(line)[0] for line in _docstring_commands(doc)]


def _docstring_commands(doc: str) -> list[str]:
    text = doc.split('"""')[1].replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if "sft_midblock.py" in line]


# --------------------------------------------------------------------------- the other blocks: they parse


def _other_shell_commands() -> list[tuple[int, list[str]]]:
    return [(b.line, c) for b in BLOCKS if b.lang == "bash" and not b.runnable for c in shell_commands(b.code)]


def test_every_other_shell_command_parses():
    from midblock_plugin.cli import build_parser
    from midblock_plugin.cli.options import join_dash_values

    parser = build_parser()
    checked = []
    for line, words in _other_shell_commands():
        where = f"README line {line}: {shlex.join(words)}"
        prog, args = words[0], words[1:]
        if prog == "pip":
            continue  # tests/test_install_lines.py
        if prog in (".", "source"):  # activating an environment a set-up script creates
            venv = args[0].split("/bin/activate")[0]
            assert args[0].endswith("/bin/activate") and any(
                venv in p.read_text() for p in [*(ROOT / "scripts").glob("*.sh"), *(ROOT / ".ci").glob("*")]
            ), where
        elif prog == "bash":
            script = ROOT / args[0]
            assert script.is_file(), where
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, where
            if args[0] == "scripts/run.sh":  # exec .venv/bin/midblock run "$@"
                _parse_midblock(parser, join_dash_values(["run", *args[1:]]), where)
            else:
                assert not args[1:], f"{where}: arguments to a set-up script"
        elif prog in ("midblock", ".venv/bin/midblock"):
            _parse_midblock(parser, join_dash_values(args), where)
        elif prog == "axolotl":
            assert args[0] in AXOLOTL_COMMANDS, where
            assert args[1] == "config.yml" or (ROOT / args[1]).is_file(), where
        elif re.match(r"^(\.venv[\w-]*/bin/)?python3?$", prog):
            if args[:2] == ["-m", "pytest"]:
                assert all((ROOT / a).exists() for a in args[2:] if not a.startswith("-")), where
            else:
                r = subprocess.run(
                    [sys.executable, "-c", PARSE_ONLY, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
                )
                assert r.returncode == 0 and "README-ARGS-PARSED" in r.stdout, f"{where}\n{r.stderr[-3000:]}"
        else:
            pytest.fail(f"{where}: no check for {prog!r}; add one to tests/test_readme.py")
        checked.append(prog)
    assert {"bash", ".venv/bin/midblock", "axolotl"} <= set(checked)


def _parse_midblock(parser, argv: list[str], where: str) -> None:
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: midblock's parser refuses these arguments")
    assert getattr(args, "func", None), where


def test_python_fragments_compile_and_their_imports_resolve():
    import ast
    import importlib

    fragments = [b for b in BLOCKS if b.lang == "python" and not b.runnable]
    assert fragments  # the evaluation callback's two lines
    for block in fragments:
        tree = ast.parse(block.code, filename=f"README.md:{block.line}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README line {block.line}: {node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


# --------------------------------------------------------------------------- README and examples agree


def test_first_screen_is_the_two_commands():
    text = README.read_text(encoding="utf-8")
    first = [b for b in BLOCKS if b.lang == "bash"][:2]
    assert [b.code.strip() for b in first] == [
        "bash scripts/setup.sh && bash scripts/run.sh --output-dir runs/main",
        "bash scripts/test.sh",
    ]
    assert text.index("## The two commands") < text.index("bash scripts/setup.sh")
    assert first[1].line < 40  # nothing pushed above them


def test_axolotl_plugin_path_and_launcher_match_the_tiny_example():
    """The README's plugin path is the one tiny-cpu.yml lists, and the README's commands for the tiny
    example are the ones its header prints (the same launcher, ``axolotl train``)."""
    import yaml

    yml = (ROOT / "examples" / "axolotl" / "tiny-cpu.yml").read_text(encoding="utf-8")
    (plugin_block,) = [b for b in BLOCKS if b.lang == "yaml" and "plugins:" in b.code]
    assert yaml.safe_load(plugin_block.code)["plugins"] == yaml.safe_load(yml)["plugins"]
    header = "\n".join(line[1:].strip() for line in yml.splitlines() if line.startswith("#"))
    header_commands = shell_commands(header.split("\n\n")[1])
    readme = [c for b in BLOCKS if "examples/axolotl/tiny-cpu.yml" in b.code for c in shell_commands(b.code)]
    assert readme and all(c in header_commands for c in readme), (readme, header_commands)
    assert ["axolotl", "train", "examples/axolotl/tiny-cpu.yml"] in header_commands
    assert not re.search(r"python -m axolotl\.cli|save_tiny\(", yml)  # one launcher; no hidden Python step
