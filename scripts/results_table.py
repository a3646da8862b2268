"""Render the tables of ``docs/results.md`` from a sweep's ``results.json``, and apply the page's decision
rule to it mechanically.

    python scripts/results_table.py runs/evidence/results.json > /tmp/tables.md

Reads only the JSON (no torch, no midblock import). The decision rule (written in ``docs/results.md``
before any number was measured):

* a window **beats uniform on the task** only if its held-out answer loss at its chosen rate is lower
  than uniform's with the Holm-corrected comparison significant (``vs_uniform.significant`` and
  ``mean_diff < 0``);
* a window **forgets less** only if its KL at uniform's task gain is lower than uniform's KL in every
  seed (``forgetting.kl_at_uniform_gain.lower_in_every_seed``), with no seed missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _num(x, digits=4, sign=False):
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(d, key="mean", digits=4, sign=False):
    if not d or d.get(key) is None:
        return "–"
    text = _num(d[key], digits, sign)
    if d.get("ci95"):
        lo, hi = d["ci95"]
        text += f" [{_num(lo, digits, sign)}, {_num(hi, digits, sign)}]"
    return text


def _p(x):
    return "–" if x is None else (f"{x:.3g}" if x >= 1e-3 else f"{x:.1e}")


def decide(v: dict) -> tuple[str, str]:
    """(task verdict, forgetting verdict) of one non-uniform variant under the page's rule."""
    d = v.get("vs_uniform") or {}
    if d.get("reference"):
        return "(reference)", "(reference)"
    if d.get("p_holm") is None:
        task = "undecided (no test: fewer than 3 seeds)"
    elif d["significant"] and d["mean_diff"] < 0:
        task = "beats uniform"
    elif d["significant"]:
        task = "worse than uniform"
    else:
        task = "not shown to differ"
    at = (v.get("forgetting") or {}).get("kl_at_uniform_gain")
    if not at:
        forget = "undecided (" + ((v.get("forgetting") or {}).get("kl_at_uniform_gain_note") or "not measured") + ")"
    elif at.get("missing"):
        forget = f"undecided ({at['missing']} seed(s) never reached uniform's gain on the grid)"
    else:
        forget = "forgets less" if at["lower_in_every_seed"] else "not shown to forget less"
    return task, forget


def render(res: dict) -> str:
    variants = res["variants"]
    base = res["base"]
    seeds = variants[0]["seeds"]
    lines = [
        f"Base (no tuning): held-out answer loss {base['heldout_loss']:.4f} on {res.get('heldout_rows')} test rows; "
        f"rates {', '.join(f'{x:g}' for x in res.get('lrs') or [])} chosen on {res.get('validation_rows')} "
        f"validation rows; {seeds} seeds ({', '.join(map(str, variants[0]['seed_values']))}).",
        "",
        "| variant | layers | rank | chosen lr | held-out loss [95% CI] | minus uniform [95% CI] | Holm p | "
        "KL at chosen lr [95% CI] | KL at uniform's gain [95% CI] | KL at gain minus uniform's, per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        f = v.get("forgetting") or {}
        at = f.get("kl_at_uniform_gain") or {}
        per = (at.get("vs_uniform") or {}).get("per_seed") or []
        lines.append(
            f"| `{v['mask']}` | {v['window']} | {v['rank']} | {v['best_lr']:g} | {_ci(v['heldout_loss'])} | "
            f"{_ci(v['vs_uniform'], 'mean_diff', sign=True)} | {_p((v['vs_uniform'] or {}).get('p_holm'))} | "
            f"{_ci(f.get('kl'), digits=5)} | {_ci(at, digits=5)} | "
            f"{', '.join(_num(x, 5, True) for x in per) or '–'} |"
        )
    lines += ["", "| variant | lr | validation loss | held-out loss | task gain | KL |", "|---|---|---|---|---|---|"]
    for v in variants:
        for b in v["by_lr"]:
            mark = " (chosen)" if b["lr"] == v["best_lr"] else ""
            lines.append(
                f"| `{v['mask']}` | {b['lr']:g}{mark} | {_num(b['validation_loss'])} | {_num(b['heldout_loss'])} | "
                f"{_num(b['task_gain'])} | {_num(b['kl'], 5)} |"
            )
    lines += ["", "Decision (the rule above, applied by `scripts/results_table.py`):", ""]
    for v in variants:
        if v["mask"] == "11111":
            continue
        task, forget = decide(v)
        lines.append(f"- `{v['mask']}`: task: **{task}**; forgetting: **{forget}**.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a sweep's results.json")
    args = p.parse_args(argv)
    sys.stdout.write(render(json.loads(Path(args.results).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
