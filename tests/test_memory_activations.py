"""Activation estimate of the memory planner against the bytes autograd actually saves.

Counting: one forward of the real model (PEFT-wrapped for LoRA, ``apply_full_mode`` for
mid-block full, ``gradient_checkpointing_enable`` + ``enable_input_require_grads`` as the
Trainer does for the checkpointed cases, ``BackwardTruncation`` for truncation) under
``torch.autograd.graph.saved_tensors_hooks``. The pack hook sees every tensor autograd
saves; we count each *storage* once (by ``untyped_storage().data_ptr()``, its full
``nbytes``: q, k, v views of one fused projection are one storage), skip parameters and
buffers (model states, not activations), and keep only storages still referenced when the
forward returns (weak references): a checkpoint frame below the window that nothing needs
is freed by then, and so is its saved input. Attention is ``sdpa`` (CPU's fused flash
kernel, like CUDA's: no S x S matrix), ``use_cache=False`` as in training. Under
checkpointing the estimate also counts rope's cos/sin, which the checkpoint holds in its
closure rather than through saved_tensors_hooks (6 KB here). Dropout masks: CPU keeps them
in the input dtype, CUDA as bool; the tests pass ``dropout_mask_bytes`` accordingly.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import pytest
import torch

from midblock_plugin import MidBlockConfig
from midblock_plugin.memory import (
    NOT_MODELLED,
    activation_estimates,
    activations_to_json,
    format_activation_table,
    model_dims,
    zero3_estimates,
)
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import tiny_config, tiny_model
from midblock_plugin.training import BackwardTruncation


TOLERANCE = 0.15
METHODS = ("mid-block LoRA", "mid-block full", "uniform LoRA", "full fine-tuning")
LAYERS, HIDDEN, BATCH, SEQ = 6, 64, 2, 48


def count_saved_bytes(model, input_ids) -> int:
    """Bytes of the unique non-parameter storages autograd holds for backward after one forward."""
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    packed: list[tuple[int, int, weakref.ref]] = []

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            packed.append((ptr, t.untyped_storage().nbytes(), weakref.ref(t)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    gc.collect()
    # a storage freed during the forward can hand its address to a later one: deduplicate
    # among the live tensors only (a live tensor keeps its storage, so one address = one storage)
    live = {ptr: nbytes for ptr, nbytes, ref in packed if ref() is not None}
    del loss
    return sum(live.values())


def _overrides(arch):
    # attention dropout runs inside CUDA's flash kernel (nothing saved); CPU would fall back to math
    return {"attn_pdrop": 0.0} if arch == "gpt2" else {}


def build(
    arch,
    method,
    dtype=torch.float32,
    checkpointing=False,
    truncation=True,
    lora_dropout=0.0,
    target_modules="attention",
):
    """The tiny model trained as ``method`` (one of METHODS), and its plan."""
    from peft import get_peft_model

    from midblock_plugin.adapters import apply_full_mode

    over = _overrides(arch)
    model = tiny_model(arch, num_layers=LAYERS, hidden=HIDDEN, attn_implementation="sdpa", **over)
    mb = MidBlockConfig(
        segments="01110",
        rank=4,
        lora_dropout=lora_dropout,
        truncate_backward=truncation,
        target_modules=target_modules,
    )
    plan = build_plan(tiny_config(arch, num_layers=LAYERS, hidden=HIDDEN, **over), mb)
    if method == "mid-block LoRA":
        model = get_peft_model(model, plan.lora_config())
    elif method == "uniform LoRA":  # rank r on every layer
        model = get_peft_model(model, plan.lora_config(r=mb.rank, layers_to_transform=None, layers_pattern=None))
    elif method == "mid-block full":
        apply_full_mode(model, build_plan(model, MidBlockConfig(segments="01110", mode="full")))
    else:
        model.requires_grad_(True)
    model = model.to(dtype)  # every weight, LoRA included, in the model dtype (DeepSpeed's bf16 engine)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        if truncation and method.startswith("mid-block"):
            assert BackwardTruncation(plan.layers[0], reentrant=False).install(model)
    return model, plan


def measure(
    arch,
    method,
    dtype=torch.float32,
    checkpointing=False,
    truncation=True,
    lora_dropout=0.0,
    target_modules="attention",
):
    torch.manual_seed(0)
    model, plan = build(arch, method, dtype, checkpointing, truncation, lora_dropout, target_modules)
    ids = torch.randint(0, 512, (BATCH, SEQ))
    counted = count_saved_bytes(model, ids)
    d = torch.finfo(dtype).bits // 8
    rows = activation_estimates(
        plan,
        tiny_config(arch, num_layers=LAYERS, hidden=HIDDEN, **_overrides(arch)),
        BATCH,
        SEQ,
        checkpointing,
        d,
        truncation=truncation,
        dropout_mask_bytes=d,  # CPU dropout keeps its mask in the input dtype
    )
    row = next(r for r in rows if r.method.startswith(method))
    return row, counted


def _ratio(arch, method, **kw):
    row, counted = measure(arch, method, **kw)
    return row, counted, row.saved_bytes / counted


# ----------------------------------------------------------------------------- estimate vs autograd

GRID = (
    [(m, False, True) for m in METHODS]
    + [(m, True, True) for m in METHODS]
    + [
        ("mid-block LoRA", True, False),
        ("mid-block full", True, False),
    ]
)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method, checkpointing, truncation", GRID)
def test_estimate_matches_saved_tensors_fp32(arch, method, checkpointing, truncation):
    row, counted, ratio = _ratio(arch, method, checkpointing=checkpointing, truncation=truncation)
    assert abs(ratio - 1) <= TOLERANCE, (row.saved_bytes, counted)
    assert row.truncation == (checkpointing and truncation and method.startswith("mid-block"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method, checkpointing", [(m, False) for m in METHODS] + [("mid-block LoRA", True)])
def test_estimate_matches_saved_tensors_bf16(arch, method, checkpointing):
    """bf16: RMSNorm's fp32 upcast, the fp32 log-sum-exp and log-softmax are counted at 4 bytes."""
    row, counted, ratio = _ratio(arch, method, dtype=torch.bfloat16, checkpointing=checkpointing)
    assert abs(ratio - 1) <= TOLERANCE, (row.saved_bytes, counted)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["mid-block LoRA", "uniform LoRA"])
def test_estimate_with_lora_dropout(arch, method):
    """Each LoRA target keeps its own dropout output and (when its input requires grad) mask."""
    row, counted, ratio = _ratio(arch, method, lora_dropout=0.1)
    assert abs(ratio - 1) <= TOLERANCE, (row.saved_bytes, counted)
    no_drop, _ = measure(arch, method)
    assert row.saved_bytes > no_drop.saved_bytes


@pytest.mark.parametrize("arch, targets", [("llama", ["q_proj", "v_proj"]), ("llama", "all-linear"), ("gpt2", "mlp")])
@pytest.mark.parametrize("method, lora_dropout", [("mid-block LoRA", 0.0), ("uniform LoRA", 0.1)])
def test_estimate_with_other_target_modules(arch, targets, method, lora_dropout):
    """What a layer keeps depends on which projections train (k untrained: its output needs no grad)."""
    row, counted, ratio = _ratio(arch, method, dtype=torch.bfloat16, lora_dropout=lora_dropout, target_modules=targets)
    assert abs(ratio - 1) <= TOLERANCE, (row.saved_bytes, counted)


@pytest.mark.parametrize("arch", ["olmo2", "qwen3", "gpt_neox", "mistral", "qwen2"])
@pytest.mark.parametrize("method, checkpointing", [(m, False) for m in METHODS] + [("mid-block LoRA", True)])
def test_estimate_other_families(arch, method, checkpointing):
    """OLMo2 (post-norms, q/k norm over all heads, fp32 rope), Qwen3 (per-head q/k norm), NeoX
    (parallel residual, partial rope, fused QKV); Mistral and Qwen2 compute like Llama."""
    row, counted, ratio = _ratio(arch, method, dtype=torch.bfloat16, checkpointing=checkpointing)
    assert abs(ratio - 1) <= TOLERANCE, (row.saved_bytes, counted)


def test_below_the_window_nothing_is_kept_and_truncation_drops_checkpoint_inputs():
    plain, counted_plain = measure("llama", "mid-block LoRA")
    assert plain.active_layers == LAYERS - 1  # the window starts at layer 1: layer 0 keeps nothing
    trunc, counted_trunc = measure("llama", "mid-block LoRA", checkpointing=True, truncation=True)
    full, counted_full = measure("llama", "mid-block LoRA", checkpointing=True, truncation=False)
    assert (trunc.active_layers, full.active_layers) == (LAYERS - 1, LAYERS)
    # one checkpointed layer input fewer (B x S x hidden fp32), in the estimate and in autograd
    one_input = BATCH * SEQ * HIDDEN * 4
    assert full.saved_bytes - trunc.saved_bytes == one_input
    assert counted_full - counted_trunc == one_input
    assert counted_trunc < counted_plain / 3  # checkpointing keeps layer inputs only


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # layer 0, below the window
@pytest.mark.parametrize("arch, method", [("llama", "mid-block LoRA"), ("gpt2", "full fine-tuning")])
def test_recompute_term_matches_one_layer_rebuilt_in_backward(arch, method):
    """The recompute term against what autograd saves while re-running each checkpointed layer
    in the backward (reentrant checkpointing: the re-run forward goes through the outer hooks)."""
    from midblock_plugin.architecture import decoder_layers
    from midblock_plugin.compat import wrap_checkpoint_function

    torch.manual_seed(0)
    model, plan = build(arch, method)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    if method.startswith("mid-block"):
        assert BackwardTruncation(plan.layers[0], reentrant=True).install(model)
    current = [None]

    def tagging(index):
        def wrapper(original):
            def wrapped(function, *args, **kwargs):
                def tagged(*a, **k):
                    current[0] = index
                    return function(*a, **k)

                return original(tagged, *args, **kwargs)

            return wrapped

        return wrapper

    for i, layer in enumerate(decoder_layers(model)):
        assert wrap_checkpoint_function(layer, tagging(i)) is not None
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    rebuilt: dict[int, dict[int, int]] = {}
    in_backward = [False]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if in_backward[0] and ptr not in skip:
            rebuilt.setdefault(current[0], {})[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 512, (BATCH, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        in_backward[0] = True
        loss.backward()
    per_layer = {i: sum(v.values()) for i, v in rebuilt.items()}
    assert sorted(per_layer) == list(range(plan.layers[0] if method.startswith("mid-block") else 0, LAYERS))
    row, _ = measure(arch, method, checkpointing=True)
    assert abs(row.recompute_gb * 1024**3 / max(per_layer.values()) - 1) <= TOLERANCE


# ----------------------------------------------------------------------------- API, table, JSON


def test_rows_table_and_json_shape():
    config = tiny_config("llama", num_layers=16, hidden=128)
    plan = build_plan(config, MidBlockConfig(segments="01110", rank=16))
    rows = activation_estimates(plan, config, 1, 4096, checkpointing=True, gpus_per_node=8, nodes=2)
    assert [r.method.split(" (")[0] for r in rows] == [
        "mid-block LoRA",
        "mid-block full",
        "uniform LoRA r=16",
        "full fine-tuning",
    ]
    assert [r.truncation for r in rows] == [True, True, False, False]
    states = zero3_estimates(plan, 8, 2)
    assert rows[0].model_states_gb == states[0].gpu_total_gb  # the plan is LoRA: its own row
    assert (rows[2].model_states_gb, rows[3].model_states_gb) == (states[1].gpu_total_gb, states[2].gpu_total_gb)
    for r in rows:
        assert r.total_gb == pytest.approx(r.model_states_gb + r.peak_gb)
        assert r.peak_gb == pytest.approx(r.saved_gb + max(r.recompute_gb, r.logits_gb))
        assert r.saved_gb == pytest.approx(r.layers_gb + r.head_gb)
    table = format_activation_table(rows)
    assert table.splitlines()[0].startswith("Activation memory per GPU: micro-batch 1 x 4096 tokens, bf16/fp16")
    assert "backward truncation on for mid-block" in table and "states GB" in table
    assert all(item in table for item in NOT_MODELLED)
    out = json.loads(json.dumps(activations_to_json(rows)))
    assert out["micro_batch"] == 1 and out["seq_len"] == 4096 and out["gradient_checkpointing"] is True
    assert out["not_modelled"] == list(NOT_MODELLED) and len(out["estimates"]) == 4
    assert {
        "method",
        "saved_gb",
        "recompute_gb",
        "logits_gb",
        "peak_gb",
        "model_states_gb",
        "total_gb",
        "saved_bytes",
        "active_layers",
        "truncation",
    } <= set(out["estimates"][0])
    # without GPUs: activations only
    bare = activation_estimates(plan, config, 1, 4096)
    assert bare[0].model_states_gb is None and "states GB" not in format_activation_table(bare)


def test_activations_scale_and_order():
    config = tiny_config("llama", num_layers=16, hidden=128)
    plan = build_plan(config, MidBlockConfig(segments="01110", rank=16, lora_dropout=0.0))
    one = activation_estimates(plan, config, 1, 512)
    two = activation_estimates(plan, config, 2, 512)
    for a, b in zip(one, two):  # linear in the micro-batch, apart from rope's (1, S) cos/sin
        assert b.saved_bytes == pytest.approx(2 * a.saved_bytes, rel=1e-3)
    mid, mid_full, uniform, full = one
    assert mid.saved_bytes < uniform.saved_bytes < full.saved_bytes
    assert mid_full.saved_bytes < full.saved_bytes
    ckpt = activation_estimates(plan, config, 1, 512, checkpointing=True)
    assert all(c.saved_bytes < p.saved_bytes for c, p in zip(ckpt, one))
    assert all(c.recompute_gb > 0 for c in ckpt) and all(p.recompute_gb == 0 for p in one)
    fp32 = activation_estimates(plan, config, 1, 512, dtype_bytes=4)
    assert all(f.saved_bytes > p.saved_bytes for f, p in zip(fp32, one))


def test_configs_it_cannot_model_are_refused():
    with pytest.raises(ValueError, match="cannot model model_type='gemma2'"):
        model_dims(tiny_config("gemma2"))
    with pytest.raises(ValueError, match="activation 'tanh' .* is not modelled"):
        model_dims(tiny_config("llama", hidden_act="tanh"))
    assert model_dims(tiny_config("gpt2", hidden=64)).activation == "gelu_new"
    bare = build_plan(None, MidBlockConfig(), num_layers=16)
    with pytest.raises(ValueError, match="needs layer shapes"):
        activation_estimates(bare, tiny_config("llama", num_layers=16), 1, 128)
    plan = build_plan(tiny_config("llama"), MidBlockConfig())
    with pytest.raises(ValueError, match="gpt2 config but the plan was built for llama"):
        activation_estimates(plan, tiny_config("gpt2"), 1, 128)
    with pytest.raises(ValueError, match="micro_batch=0"):
        activation_estimates(plan, tiny_config("llama"), 0, 128)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "midblock_plugin.cli", "plan", *args], capture_output=True, text=True, timeout=180
    )


def test_cli_activation_table_and_json(tmp_path):
    if "--micro-batch" not in _cli("--help").stdout:
        pytest.skip("midblock plan has no --micro-batch yet (the CLI wiring is applied separately)")
    tiny_config("olmo2", num_layers=16, hidden=128).save_pretrained(tmp_path)
    base = [str(tmp_path), "--zero3", "--gpus-per-node", "8", "--nodes", "4", "--micro-batch", "1", "--seq-len", "256"]
    r = _cli(*base, "--gradient-checkpointing", "--json")
    assert r.returncode == 0, r.stderr
    act = json.loads(r.stdout)["zero3_memory"]["activations"]
    assert act["micro_batch"] == 1 and act["seq_len"] == 256 and act["gradient_checkpointing"] is True
    assert [e["method"].split(" ")[0] for e in act["estimates"]] == ["mid-block", "mid-block", "uniform", "full"]
    assert act["estimates"][0]["truncation"] is True and act["not_modelled"] == list(NOT_MODELLED)
    r = _cli(*base)
    assert r.returncode == 0, r.stderr
    assert "ZeRO-3 model-state memory per GPU" in r.stdout
    assert (
        "Activation memory per GPU: micro-batch 1 x 256 tokens, bf16/fp16, sdpa attention, gradient checkpointing off"
        in r.stdout
    )
    r = _cli(str(tmp_path), "--zero3", "--micro-batch", "1")
    assert r.returncode != 0 and "--seq-len" in r.stderr
