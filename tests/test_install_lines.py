"""Every install line in the README, ``docs/*.md`` and the examples' headers works as printed.

midblock is not on PyPI, so a line may install it only from the checkout (``pip install -e ".[x]"``
or a set-up script such as ``bash scripts/setup-axolotl.sh``) or from its repository as a pip
direct reference (``pip install "midblock-plugin[x] @ git+URL"``); a bare ``midblock-plugin``
requirement fails on every machine ("No matching distribution") and is an error here.

For each ``pip install`` line (in Markdown: an inline code span or a line of a fenced block; in an
example: a header line):

* every extra it names exists in ``pyproject.toml``'s ``[project.optional-dependencies]``;
* a checkout line resolves: ``pip install --dry-run --ignore-installed --report`` from the
  checkout, against the package index as CI reaches it (nothing is installed), and the report
  holds midblock and the packages of every extra named (the checkout's build is checked once with
  pip's build isolation, each line's resolution then without it, to build only once);
* a direct reference has pip's requirement form, names ``midblock-plugin`` and the URL of
  ``[project.urls] Repository``. It is not resolved: that needs the repository, which this
  machine cannot reach (cloning it is the check a networked CI could add);
* any other requirement (a third-party package) resolves with ``--dry-run --no-deps``;
* a set-up script exists and passes ``bash -n``; ``scripts/setup-axolotl.sh`` hands its
  environment to ``.ci/axolotl-setup.sh``, the script CI runs.

The install line that error messages print (``midblock_plugin.rules.INSTALL_EXTRA``) is held to
the same rules.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
REPOSITORY = PYPROJECT["project"]["urls"]["Repository"]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.*"))]
SCRIPT_RE = re.compile(r"bash ((?:scripts|\.ci)/[\w.-]+\.sh)")


def install_lines() -> list[tuple[str, str]]:
    """``(where, the words after "pip install")`` for every install line of the sources."""
    found = []
    for path in SOURCES:
        fenced = False
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
                continue
            if "pip install" not in line:
                continue
            if path.suffix == ".md" and not fenced:
                spans = [s for s in re.findall(r"`([^`]*)`", line) if "pip install" in s]
                assert spans, f"{path.name}:{n}: an install line in prose must be an inline code span: {line!r}"
            else:
                spans = [line]
            for span in spans:
                found.append((f"{path.relative_to(ROOT)}:{n}", span))
    return found


def pip_args(text: str) -> list[str]:
    """The arguments of the ``pip install`` in ``text`` (up to ``&&``, ``;`` or a comment)."""
    words = shlex.split(text[text.index("pip install") :], comments=True)[2:]
    for i, word in enumerate(words):
        if word in ("&&", ";", "||"):
            return words[:i]
    return words


def classify(args: list[str]) -> list[tuple[str, object]]:
    """``[(kind, what)]``: ("checkout", extras), ("direct", Requirement), ("other", requirement);
    options other than ``-e`` pass unexamined."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("-e", "--editable"):
            i += 1
            arg = args[i]
            m = re.fullmatch(r"\.(?:\[([\w,-]*)\])?", arg)
            assert m, f"-e {arg!r}: expected the checkout, '.' or '.[extras]'"
            out.append(("checkout", [e for e in (m.group(1) or "").split(",") if e]))
        elif re.fullmatch(r"\.(\[[\w,-]*\])?", arg):
            out.append(("checkout", [e for e in (arg[2:-1] if "[" in arg else "").split(",") if e]))
        elif arg.startswith("-"):
            pass
        else:
            req = Requirement(arg)
            out.append(("direct" if canonicalize_name(req.name) == "midblock-plugin" else "other", req))
        i += 1
    return out


LINES = install_lines()


def _hint_lines() -> list[str]:
    from midblock_plugin.rules import INSTALL_EXTRA

    return re.findall(r"pip install [^,(]+'", INSTALL_EXTRA.format(extra="trl"))


# --------------------------------------------------------------------------- the form of every line


def test_install_lines_are_found():
    texts = " ".join(t for _, t in LINES)
    assert '-e ".[axolotl,deepspeed]"' in texts and "@ git+" in texts  # the Axolotl routes, README and docs
    assert len(_hint_lines()) == 2  # the error messages' line: checkout and direct reference


@pytest.mark.parametrize("where, text", [*LINES, *(("rules.INSTALL_EXTRA", h) for h in _hint_lines())])
def test_every_install_line_names_a_route_that_exists(where, text):
    args = pip_args(text)
    kinds = classify(args)
    assert kinds, f"{where}: nothing to install in {text!r}"
    for kind, what in kinds:
        if kind == "checkout":
            assert set(what) <= set(EXTRAS), (
                f"{where}: extras {sorted(set(what) - set(EXTRAS))} are not in pyproject.toml"
            )
        elif kind == "direct":
            assert what.url, (
                f"{where}: {text!r}: midblock-plugin is not on PyPI; install it from the checkout "
                f'(pip install -e ".[extras]") or from {REPOSITORY} ("midblock-plugin[extras] @ git+{REPOSITORY}")'
            )
            assert what.url.split("@")[0] in (f"git+{REPOSITORY}", f"git+{REPOSITORY}.git"), f"{where}: {what.url}"
            assert what.extras <= set(EXTRAS), (
                f"{where}: extras {sorted(what.extras - set(EXTRAS))} are not in pyproject"
            )


def test_the_repository_url_is_a_github_https_url():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPOSITORY)
    from midblock_plugin.rules import INSTALL_EXTRA

    assert f"@ git+{REPOSITORY}'" in INSTALL_EXTRA  # the error messages print the same repository


def test_the_readme_lists_every_extra():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = text[text.index("\nExtras") :].split("\n\n")[0]
    assert set(re.findall(r"`([a-z]+)`", paragraph)) == set(EXTRAS)


# --------------------------------------------------------------------------- resolution


def _dry_run(args: list[str], tmp: Path, name: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    report = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report)]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r, (json.loads(report.read_text()) if r.returncode == 0 and report.exists() else None)


def test_checkout_and_third_party_lines_resolve(tmp_path):
    """Each distinct checkout line, resolved by pip from the checkout against the index (in parallel)."""
    jobs: dict[str, tuple[list[str], list[str], list[str]]] = {}  # key -> (pip args, extras, where)
    for where, text in [*LINES, *(("rules.INSTALL_EXTRA", h) for h in _hint_lines())]:
        for kind, what in classify(pip_args(text)):
            if kind == "checkout":  # the build is checked once, below, with pip's build isolation
                spec = ".[" + ",".join(sorted(what)) + "]" if what else "."
                jobs.setdefault(spec, (["--no-build-isolation", "-e", spec], sorted(what), []))[2].append(where)
            elif kind == "other":
                jobs.setdefault(str(what), (["--no-deps", str(what)], [], []))[2].append(where)
    assert any(k.startswith(".[") and "axolotl" in k for k in jobs)
    jobs["build"] = (["--no-deps", "-e", "."], [], ["the checkout, built as pip builds it (isolated)"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(jobs, pool.map(lambda k: _dry_run(jobs[k][0], tmp_path, f"job{list(jobs).index(k)}"), jobs))
        )
    for key, (args, extras, where) in jobs.items():
        r, report = results[key]
        assert r.returncode == 0 and report, (
            f"{where}: pip install {shlex.join(args)} does not resolve:\n{r.stderr[-3000:]}"
        )
        names = {canonicalize_name(item["metadata"]["name"]) for item in report["install"]}
        if key.startswith(".") or key == "build":
            assert "midblock-plugin" in names
            for extra in extras:
                wanted = {canonicalize_name(Requirement(spec).name) for spec in EXTRAS[extra]}
                assert wanted <= names, f"{where}: extra {extra!r} resolved without {sorted(wanted - names)}"


# --------------------------------------------------------------------------- set-up scripts


def test_every_setup_script_named_exists_and_parses():
    named = {m for path in SOURCES for m in SCRIPT_RE.findall(path.read_text(encoding="utf-8"))}
    assert {"scripts/setup.sh", "scripts/setup-axolotl.sh"} <= named
    for script in sorted(named):
        assert (ROOT / script).is_file(), script
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0, script


def test_setup_axolotl_hands_its_environment_to_the_ci_script(tmp_path):
    """``scripts/setup-axolotl.sh`` runs ``.ci/axolotl-setup.sh`` with the caller's variables: with
    an interpreter that does not exist it gets as far as creating the environment named by
    AXOLOTL_VENV from that interpreter, and stops there (no install, nothing outside tmp_path)."""
    venv = tmp_path / "venv"
    env = {**os.environ, "AXOLOTL_VENV": str(venv), "PYTHON": str(tmp_path / "no-python")}
    r = subprocess.run(
        ["bash", "scripts/setup-axolotl.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert f"axolotl-setup: creating {venv} from {tmp_path / 'no-python'}" in r.stdout + r.stderr
    assert not venv.exists()
