"""Benchmark: streamed D x D linear CKA (``midblock analyze``) vs. the N x N Gram formulation.

Part 1 (end to end): a 12-layer, hidden-256 tiny Llama and a perturbed copy, 200 prompts
(GSM8K test questions if the shared data is present, else the built-in prompts), 128
tokens, batch 8. Each variant runs in a fresh subprocess and reports wall time and peak
RSS above the RSS after the models were built and warmed up:

* ``streamed``: forward hooks -> mean-pooled B x D -> D x D accumulators (X^T X, Y^T Y,
  X^T Y and sums) per layer; nothing N-sized is kept;
* ``gram``: the authors' formulation: ``output_hidden_states=True``, keep the pooled
  N x D matrix of every layer of both models, then per layer centred N x N Gram
  matrices K, L and HSIC;
* ``full``: the whole ``midblock analyze`` pair analysis (every metric) for context.

Both CKA variants must agree to 1e-6 on layers 0..L-2 (checked). The last entry of
``output_hidden_states`` is taken after the final norm, while ``midblock analyze`` reads
every layer's own output (the residual stream), so the last layer differs slightly.

Children run with ``--threads`` torch threads (default 1): on a shared CPU the thread
pool's contention made timings swing by several x; one thread keeps the comparison fair.
Memory is the peak of memory allocated through malloc (where CPU tensors live; glibc
``mallinfo2``) above the level after the models were built, sampled every millisecond in
a first run; the sampling thread slows Python-heavy code, so time is measured in further
runs without it (best of two for the CKA variants).

Part 2 (scaling, CKA math only): synthetic pooled states, D = 256, L = 12, for growing N,
streamed in batches of 8 vs. N x N, showing where each formulation's memory grows.

Run: ``python benchmarks/bench_analysis.py`` (about 1-3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


NUM_LAYERS, HIDDEN, NUM_PROMPTS, MAX_LENGTH, BATCH = 12, 256, 200, 128, 8
SCALING_N = (200, 1000, 4000)
REPEATS = 2  # end-to-end CKA variants: the best of two runs is reported (shared CPUs are noisy)


# --------------------------------------------------------------------------- measurement


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _heap_probe():
    """Bytes currently allocated through malloc (glibc ``mallinfo2``: in-use arena chunks +
    mmapped blocks), which is where CPU tensors live; falls back to the RSS."""
    try:
        import ctypes

        class _MallInfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in (
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                )
            ]

        fn = ctypes.CDLL(None).mallinfo2
        fn.restype = _MallInfo2

        def probe() -> int:
            info = fn()
            return info.uordblks + info.hblkhd

        probe()
        return probe, "malloc in use"
    except (AttributeError, OSError):
        return _rss, "RSS"


MEASURE, MEASURE_NAME = _heap_probe()


class PeakMemory:
    """Sample allocated memory every millisecond; ``peak - start`` is what a block of code cost.

    Freed memory is not counted (unlike the RSS, which keeps pages glibc holds on to)."""

    def __enter__(self):
        self.start = self.peak = MEASURE()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, MEASURE())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, MEASURE())
        return False

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# --------------------------------------------------------------------------- part 1: end to end


def _prompts() -> tuple[list[str], str]:
    from midblock_plugin.analysis.prompts import BUILTIN_PROMPTS, gsm8k_prompt
    from midblock_plugin.testing import GSM8K_DIR, gsm8k_rows

    if (GSM8K_DIR / "test.jsonl").exists():
        return [gsm8k_prompt(r) for r in gsm8k_rows("test", n=NUM_PROMPTS)], "gsm8k test"
    return [BUILTIN_PROMPTS[i % len(BUILTIN_PROMPTS)] + f" ({i})" for i in range(NUM_PROMPTS)], "builtin (cycled)"


def _models():
    import torch

    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    base = tiny_model("llama", num_layers=NUM_LAYERS, hidden=HIDDEN, seed=0).eval()
    tuned = tiny_model("llama", num_layers=NUM_LAYERS, hidden=HIDDEN, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "fine-tune" that moved the top quarter of the layers
        for layer in tuned.model.layers[9:]:
            for p in layer.parameters():
                p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    return base, tuned, tiny_tokenizer()


def _batches(tok, texts):
    for i in range(0, len(texts), BATCH):
        yield tok(texts[i : i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")


def _streamed(base, tuned, tok, texts) -> list[float]:
    import torch

    from midblock_plugin.analysis.metrics import CrossStats, MomentStats, cka_from_stats, mean_pool

    mb = [MomentStats(HIDDEN, track_normalized=False) for _ in range(NUM_LAYERS)]
    mt = [MomentStats(HIDDEN, track_normalized=False) for _ in range(NUM_LAYERS)]
    cross = [CrossStats() for _ in range(NUM_LAYERS)]
    state: dict = {}

    def hook_for(which, i):
        def hook(module, args, out):
            pooled = mean_pool(out[0] if isinstance(out, tuple) else out, state["mask"])
            if which == "base":
                mb[i].update(pooled)
                state[i] = pooled
            else:
                mt[i].update(pooled)
                cross[i].update(state[i], pooled, mb[i], mt[i])

        return hook

    handles = [layer.register_forward_hook(hook_for("base", i)) for i, layer in enumerate(base.model.layers)]
    handles += [layer.register_forward_hook(hook_for("tuned", i)) for i, layer in enumerate(tuned.model.layers)]
    with torch.inference_mode():
        for enc in _batches(tok, texts):
            state.clear()
            state["mask"] = enc["attention_mask"]
            base.model(**enc, use_cache=False)
            tuned.model(**enc, use_cache=False)
    for h in handles:
        h.remove()
    return [cka_from_stats(mb[i], mt[i], cross[i]) for i in range(NUM_LAYERS)]


def _gram(base, tuned, tok, texts) -> list[float]:
    import torch

    from midblock_plugin.analysis.metrics import linear_cka_gram, mean_pool

    pooled = {"base": [[] for _ in range(NUM_LAYERS)], "tuned": [[] for _ in range(NUM_LAYERS)]}
    with torch.inference_mode():
        for enc in _batches(tok, texts):
            for name, model in (("base", base), ("tuned", tuned)):
                hs = model(**enc, output_hidden_states=True, use_cache=False).hidden_states
                for i in range(NUM_LAYERS):
                    pooled[name][i].append(mean_pool(hs[i + 1], enc["attention_mask"]))
    out = []
    for i in range(NUM_LAYERS):
        x, y = torch.cat(pooled["base"][i]), torch.cat(pooled["tuned"][i])
        out.append(linear_cka_gram(x, y))
    return out


def _full(base, tuned, tok, texts, workdir) -> list[float]:
    from midblock_plugin.analysis import AnalysisConfig, run_analysis

    path = os.path.join(workdir, "prompts.jsonl")
    with open(path, "w") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    res = run_analysis(
        AnalysisConfig(
            base=os.path.join(workdir, "base"),
            tuned=os.path.join(workdir, "tuned"),
            prompts=path,
            num_prompts=len(texts),
            max_length=MAX_LENGTH,
            batch_size=BATCH,
            progress=False,
        )
    )
    return res.column("cka")


def child_end_to_end(variant: str, workdir: str) -> dict:
    import torch

    torch.manual_seed(0)
    base, tuned, tok = _models()
    texts, source = _prompts()
    if variant == "full":
        base.save_pretrained(os.path.join(workdir, "base"))
        tok.save_pretrained(os.path.join(workdir, "base"))
        tuned.save_pretrained(os.path.join(workdir, "tuned"))
        del base, tuned
    else:
        with torch.inference_mode():  # warm-up so one-off allocations are not charged to the variant
            enc = next(_batches(tok, texts))
            base(**enc)
            tuned(**enc)

    def once():
        if variant == "streamed":
            return _streamed(base, tuned, tok, texts)
        if variant == "gram":
            return _gram(base, tuned, tok, texts)
        return _full(None, None, tok, texts, workdir)

    # memory first (a sampling thread, which slows Python-heavy code), then clean timings
    with PeakMemory() as m:
        cka = once()
    extra = m.extra_mb
    times = []
    for _ in range(1 if variant == "full" else REPEATS):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "seconds": min(times), "extra_mb": extra, "cka": cka, "source": source}


# --------------------------------------------------------------------------- part 2: scaling


def child_scaling(variant: str, n: int) -> dict:
    import torch

    from midblock_plugin.analysis.metrics import CrossStats, MomentStats, cka_from_stats, linear_cka_gram

    g = torch.Generator().manual_seed(n)
    mix = torch.randn(HIDDEN, HIDDEN, generator=g) / HIDDEN**0.5
    batches = [torch.randn(min(BATCH, n - s), HIDDEN, generator=g) for s in range(0, n, BATCH)]

    def once() -> float:
        if variant == "streamed":
            stats = [
                (
                    MomentStats(HIDDEN, track_normalized=False),
                    MomentStats(HIDDEN, track_normalized=False),
                    CrossStats(),
                )
                for _ in range(NUM_LAYERS)
            ]
            for xb in batches:
                yb = torch.tanh(xb @ mix)
                for mx, my, c in stats:
                    mx.update(xb)
                    my.update(yb)
                    c.update(xb, yb, mx, my)
            return [cka_from_stats(*st) for st in stats][0]
        xs = [[] for _ in range(NUM_LAYERS)]
        ys = [[] for _ in range(NUM_LAYERS)]
        for xb in batches:
            yb = torch.tanh(xb @ mix)
            for i in range(NUM_LAYERS):
                xs[i].append(xb.clone())
                ys[i].append(yb.clone())
        return [linear_cka_gram(torch.cat(xs[i]), torch.cat(ys[i])) for i in range(NUM_LAYERS)][0]

    with PeakMemory() as m:
        cka = once()
    t0 = time.perf_counter()
    once()
    return {"variant": variant, "n": n, "seconds": time.perf_counter() - t0, "extra_mb": m.extra_mb, "cka": cka}


# --------------------------------------------------------------------------- parent


THREADS = 1


def _spawn(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args, "--threads", str(THREADS)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--skip-scaling", action="store_true", help="only the end-to-end part")
    parser.add_argument("--skip-full", action="store_true", help="skip the full 'midblock analyze' run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, arg = args.child
        if kind == "e2e":
            print(json.dumps(child_end_to_end(arg, args.workdir)))
        else:
            variant, n = arg.split(":")
            print(json.dumps(child_scaling(variant, int(n))))
        return 0

    load = os.getloadavg()[0]
    print(
        f"end to end: {NUM_LAYERS}-layer hidden-{HIDDEN} tiny llama, base vs tuned, {NUM_PROMPTS} prompts, "
        f"max {MAX_LENGTH} tokens, batch {BATCH}; {os.cpu_count()} CPUs, {THREADS} torch thread(s), "
        f"load average {load:.1f}"
    )
    results = {}
    variants = ("streamed", "gram") if args.skip_full else ("streamed", "gram", "full")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            results[variant] = _spawn(["--child", "e2e", variant, "--workdir", tmp])
    s, g = results["streamed"], results["gram"]
    diff = max(abs(a - b) for a, b in zip(s["cka"][:-1], g["cka"][:-1]))
    print(f"prompts: {s['source']}")
    print(f"{'variant':<40}{'time s':>9}{'peak extra MB':>16}   (memory: {MEASURE_NAME})")
    rows = [("streamed D x D CKA (ours)", s), ("N x N Gram CKA (output_hidden_states)", g)]
    if "full" in results:
        rows.append(("full midblock analyze (all metrics)", results["full"]))
    for name, r in rows:
        print(f"{name:<40}{r['seconds']:>9.2f}{r['extra_mb']:>16.1f}")
    print(
        f"ratio streamed / N x N: time {s['seconds'] / g['seconds']:.2f}x, "
        f"peak extra memory {s['extra_mb'] / max(g['extra_mb'], 1e-9):.2f}x"
    )
    print(
        f"max |CKA streamed - CKA N x N| over layers 0..{NUM_LAYERS - 2} = {diff:.2e} "
        f"(last layer: {s['cka'][-1]:.6f} pre-norm vs {g['cka'][-1]:.6f} post-norm)"
    )
    if "full" in results:
        diff_full = max(abs(a - b) for a, b in zip(s["cka"], results["full"]["cka"]))
        print(f"max |CKA streamed - CKA full analyze| = {diff_full:.2e}")
    print("CKA per layer: " + " ".join(f"{v:.4f}" for v in s["cka"]))
    if diff > 1e-6:
        print("ERROR: the two CKA formulations disagree", file=sys.stderr)
        return 1
    # analytic sizes of what each variant retains (float64 accumulators / float32 pooled states)
    d2 = 3 * NUM_LAYERS * HIDDEN**2 * 8 / 2**20
    nd = 2 * NUM_LAYERS * NUM_PROMPTS * HIDDEN * 4 / 2**20
    print(
        f"retained state: streamed 3 x L x D^2 float64 = {d2:.1f} MB (any N); "
        f"N x N keeps 2 x L x N x D float32 = {nd:.1f} MB + 2 N^2 float64 per layer = "
        f"{2 * NUM_PROMPTS**2 * 8 / 2**20:.2f} MB"
    )

    if args.skip_scaling:
        return 0
    print(f"\nscaling (CKA math only, synthetic pooled states, D={HIDDEN}, L={NUM_LAYERS}, batches of {BATCH})")
    print(f"{'N':>6}{'streamed s':>12}{'N x N s':>10}{'streamed MB':>13}{'N x N MB':>10}{'MB ratio':>10}")
    for n in SCALING_N:
        a = _spawn(["--child", "scale", f"streamed:{n}"])
        b = _spawn(["--child", "scale", f"gram:{n}"])
        assert abs(a["cka"] - b["cka"]) < 1e-6, (a, b)
        print(
            f"{n:>6}{a['seconds']:>12.2f}{b['seconds']:>10.2f}{a['extra_mb']:>13.1f}{b['extra_mb']:>10.1f}"
            f"{a['extra_mb'] / max(b['extra_mb'], 1e-9):>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
