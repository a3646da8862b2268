"""ZeRO-3 memory planner, activations: what one GPU keeps for the backward of its micro-batch.

**Activations** (:func:`activation_estimates`). ZeRO-3 partitions model states, not
activations: each GPU keeps the activations of its own micro-batch (``B`` sequences of
``S`` tokens, ``T = B*S``) whatever the number of GPUs. The estimate counts the bytes
autograd *saves for backward* (unique storages: views of one tensor count once), from the
model config (hidden size ``h``, heads ``H`` / kv heads, MLP width ``I`` and activation,
vocab ``V``, dropout rates), the plan's per-layer linear shapes and the dtype (``d`` bytes,
bf16 = 2; ``m`` bytes per dropout-mask element, 1 on CUDA):

    saved  = T * sum_{active i} a_i + T * (n_f + 4*V + 8) + 2*S*rot*d      (no checkpointing)
    saved  = T * d*h * #active      + T * (n_f + 4*V + 8) + 2*S*rot*d      (checkpointing)
    peak   = saved + max(T * max_i a_i  [checkpointing only: one layer re-run in the backward],
                         T * V * (d + 4)  [the logits in dtype and their fp32 upcast / gradient])

``a_i``: bytes per token one decoder layer saves; ``n_f``: the final norm's; ``4*V + 8``:
the fp32 log-softmax and the int64 labels of the loss (they dominate small models);
``2*S*rot*d``: rope's cos/sin. A layer is *active* when its input requires grad or one of
its parameters trains. Below the window nothing trains and (without checkpointing, or with
backward truncation) the input does not require grad: those layers keep nothing (autograd
prunes them). With checkpointing and no truncation, transformers' ``enable_input_require_grads``
makes every layer active. Layers above the window are active (the gradient passes through
them to the window) but keep only what the backward through their inputs needs.

``a_i`` follows the layer's ops; each op keeps what its backward needs for the inputs (or
weight) that require grad. For a Llama layer above the window, in bf16:
``(4h+4) + [2*(H + 2*kv)*hd + 2*H*hd + 4*H] + (4h+4) + 3*2*I`` (the two RMSNorms' fp32 input
and rsqrt; sdpa's q, k, v, output and fp32 log-sum-exp; SiLU's input and both factors of
the gate product). The rules:

* RMSNorm: input upcast to fp32 (``4h``) and ``rsqrt`` (4); with a trained weight also the
  normalised tensor (``d*h``; fp32 in OLMo2). LayerNorm (GPT-2, NeoX): input (``d*h``) and
  fp32 mean and rstd (8). q/k norms (Qwen3 per head, OLMo2 over all heads) alike;
* a linear layer keeps its input when its weight trains; a LoRA target keeps the input of
  ``lora_A`` (one storage shared by targets reading the same tensor; with LoRA dropout, a
  dropout output ``d*in`` and, if the input requires grad, a mask ``m*in`` per target) and
  ``x @ A`` (``d*r``);
* attention (sdpa with a fused flash / memory-efficient kernel, the implementation this
  models): q and k after rope, v, the output and the fp32 log-sum-exp (``4*H``); a fused QKV
  projection (GPT-2, NeoX) keeps its whole ``3h`` output (q, k, v are views of it); no
  ``S x S`` matrix;
* MLP: SiLU/GELU keep their input (GPT-2's tanh-formula ``gelu_new`` 4 tensors of ``I``),
  ``act(gate) * up`` keeps both factors, a residual dropout keeps its mask (``m*h``).

Validated against the bytes ``torch.autograd.graph.saved_tensors_hooks`` sees in one forward
of the real models (``tests/test_memory_activations.py``: Llama, GPT-2, OLMo2, Qwen3, NeoX,
Mistral, Qwen2 tiny models; LoRA mid-block, uniform LoRA, full mid-block, full fine-tuning; with and
without checkpointing and truncation; within 15%, in practice within 2.5%). The recompute
term is checked against a re-run layer in the backward. What is not modelled is listed in
:data:`NOT_MODELLED` and printed with the table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from midblock_plugin.memory.states import zero3_estimates
from midblock_plugin.plan import MidBlockPlan, plan_for_layout


#: bytes of one element per ``--dtype``
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
FP32 = 4
INDEX_BYTES = 8  # int64 labels / token ids

#: What the activation estimate leaves out (printed with the table, kept in the JSON).
NOT_MODELLED = (
    "gradients and kernel workspaces alive during the backward, allocator fragmentation, CUDA context and NCCL buffers",
    "eager attention and sdpa's math fallback (used when no fused kernel takes the inputs): they keep B x H x S x S "
    "probabilities; flash_attention_2 was not measured (its kernel keeps the same q, k, v, output and log-sum-exp)",
    "padding masks: batches are assumed unpadded or packed; with a mask, sdpa gets GQA keys/values repeated to all heads",
    "the KV cache: use_cache=False is assumed (as under checkpointing); with it, GPT-2/NeoX keep other copies of k, v",
    "fp32 LoRA weights under autocast (PEFT's default without DeepSpeed: each target then keeps an fp32 copy of its "
    "input); DeepSpeed's bf16 engine keeps every weight, LoRA included, in the model dtype, as assumed here",
    "measured on CPU: CUDA's bool dropout masks (dropout_mask_bytes=1) and fp32 LayerNorm statistics are assumed",
)

#: activation function -> number of MLP-width tensors it saves (its input; GPT-2's tanh-formula GELU saves 4)
ACTIVATION_SAVES = {"silu": 1, "swish": 1, "gelu": 1, "gelu_pytorch_tanh": 1, "gelu_new": 4, "relu": 1}


@dataclass(frozen=True)
class _Family:
    """How one family of decoder layers computes (what autograd saves follows from it)."""

    roles: dict[str, str]  # role -> module name relative to a decoder layer
    norm: str = "rms"  # "rms" (upcast to fp32, python ops) or "layer" (native LayerNorm)
    post_norm: bool = False  # OLMo2: norms after attention / MLP instead of before
    qk_norm: str | None = None  # "head" (Qwen3: per head) or "full" (OLMo2: over all heads)
    fused_qkv: bool = False  # one projection gives q, k, v (views of one 3h tensor)
    rope: bool = True
    gated: bool = True  # act(gate) * up
    norm_grad_fp32: bool = False  # OLMo2: the weight's gradient input is the fp32 normalised tensor
    rope_fp32: bool = False  # OLMo2: cos/sin stay fp32
    #: NeoX: q comes out of a cat in (B, H, S, D) layout, so is the attention output, and the
    #: reshape before the output projection copies it (elsewhere that reshape is a view)
    attn_out_copy: bool = False


_LLAMA_ROLES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
#: model_type -> family. Other architectures raise (their layers compute differently).
FAMILIES = {
    "llama": _Family(_LLAMA_ROLES),
    "mistral": _Family(_LLAMA_ROLES),
    "qwen2": _Family(_LLAMA_ROLES),
    "qwen3": _Family(_LLAMA_ROLES, qk_norm="head"),
    "olmo2": _Family(_LLAMA_ROLES, post_norm=True, qk_norm="full", norm_grad_fp32=True, rope_fp32=True),
    "gpt2": _Family(
        {"qkv": "attn.c_attn", "o": "attn.c_proj", "fc": "mlp.c_fc", "down": "mlp.c_proj"},
        norm="layer",
        fused_qkv=True,
        rope=False,
        gated=False,
    ),
    "gpt_neox": _Family(
        {
            "qkv": "attention.query_key_value",
            "o": "attention.dense",
            "fc": "mlp.dense_h_to_4h",
            "down": "mlp.dense_4h_to_h",
        },
        norm="layer",
        fused_qkv=True,
        gated=False,
        attn_out_copy=True,
    ),
}


@dataclass(frozen=True)
class ModelDims:
    """What the activation estimate reads from a model config."""

    model_type: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    activation: str
    rotary_dim: int
    resid_dropout: float = 0.0  # dropout on the residual branches (GPT-2 resid_pdrop, NeoX hidden_dropout)
    embed_dropout: float = 0.0
    parallel_residual: bool = False  # NeoX
    tied_embeddings: bool = False


def _cfg(config: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return value
    return default


def model_dims(config: Any) -> ModelDims:
    """Read the shapes the activation estimate needs from a transformers config (object, dict,
    model directory or hub id), for the families in :data:`FAMILIES`; a clear error otherwise."""
    from midblock_plugin.architecture import load_config

    config = load_config(config)
    model_type = _cfg(config, "model_type", default="unknown")
    if model_type not in FAMILIES:
        raise ValueError(
            f"the activation estimate cannot model model_type={model_type!r}: it follows the data flow of "
            f"{', '.join(sorted(FAMILIES))} decoder layers only (their norms, attention and MLP save different "
            "tensors); the model-state table does not depend on this."
        )
    hidden = _cfg(config, "hidden_size", "n_embd", "d_model")
    heads = _cfg(config, "num_attention_heads", "n_head")
    vocab = _cfg(config, "vocab_size")
    act = _cfg(config, "hidden_act", "activation_function")
    missing = [
        n
        for n, v in (
            ("hidden_size", hidden),
            ("num_attention_heads", heads),
            ("vocab_size", vocab),
            ("hidden_act", act),
        )
        if v is None
    ]
    if missing:
        raise ValueError(f"the {model_type} config has no {', '.join(missing)}: the activation estimate needs them.")
    if act not in ACTIVATION_SAVES:
        raise ValueError(
            f"activation {act!r} of this {model_type} config is not modelled; known: {', '.join(sorted(ACTIVATION_SAVES))}."
        )
    head_dim = _cfg(config, "head_dim", default=hidden // heads)
    rope = _cfg(config, "rope_parameters", "rope_scaling", default={}) or {}
    factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    factor = _cfg(config, "partial_rotary_factor", "rotary_pct", default=1.0) if factor is None else factor
    family = FAMILIES[model_type]
    return ModelDims(
        model_type=model_type,
        hidden=int(hidden),
        heads=int(heads),
        kv_heads=int(_cfg(config, "num_key_value_heads", default=heads)),
        head_dim=int(head_dim),
        vocab=int(vocab),
        activation=act,
        rotary_dim=int(head_dim * factor) if family.rope else 0,
        # residual / embedding dropout: GPT-2 and NeoX only (the Llama family has none)
        resid_dropout=float(_cfg(config, "resid_pdrop", "hidden_dropout", default=0.0)) if family.fused_qkv else 0.0,
        embed_dropout=float(_cfg(config, "embd_pdrop", "hidden_dropout", default=0.0)) if family.fused_qkv else 0.0,
        parallel_residual=bool(_cfg(config, "use_parallel_residual", default=False)),
        tied_embeddings=bool(_cfg(config, "tie_word_embeddings", default=False)),
    )


@dataclass(frozen=True)
class _Training:
    """What trains in one method: per layer ``None`` (frozen), ``"full"`` or ``{role: rank}``."""

    layers: tuple[Any, ...]
    lora_dropout: float = 0.0
    final_norm: bool = False
    embeddings: bool = False
    lm_head: bool = False


class _Saved:
    """Bytes per token of the unique storages one layer saves for backward."""

    def __init__(self) -> None:
        self.bytes = 0.0
        self._keys: set[str] = set()

    def add(self, key: str, nbytes: float) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self.bytes += nbytes


def _layer(
    fam: _Family, dims: ModelDims, linears: dict, train: Any, lora_dropout: float, rg: bool, d: int, m: int
) -> tuple[float, bool]:
    """``(bytes per token saved by one decoder layer, whether its output requires grad)``.

    ``rg``: whether the layer input requires grad. Follows the layer's ops; each op saves
    what its backward needs for the inputs (or weight) that require grad. Keys name storages,
    so a tensor read by several ops (the normed input of q, k and v) counts once."""
    s = _Saved()
    full = train == "full"
    ranks = train if isinstance(train, dict) else {}
    h = dims.hidden

    def width(role: str, side: str = "in") -> int:
        lin = linears[fam.roles[role]]
        return lin.in_features if side == "in" else lin.out_features

    def linear(role: str, in_key: str, rg_in: bool) -> bool:
        n_in = width(role)
        if full:
            s.add(in_key, d * n_in)  # weight gradient needs the input
        elif role in ranks:
            if lora_dropout > 0:  # PEFT: one dropout module per target; its mask only if x requires grad
                s.add(f"{role}.lora_dropout", d * n_in)
                if rg_in:
                    s.add(f"{role}.lora_mask", m * n_in)
            else:
                s.add(in_key, d * n_in)  # lora_A's input is the layer's own input tensor
            s.add(f"{role}.xA", d * ranks[role])
        return rg_in or full or role in ranks

    def norm(name: str, in_key: str, n: int, rows: int, rg_in: bool) -> bool:
        if fam.norm == "rms":
            if rg_in:  # x.float() (the input itself in fp32) and rsqrt(mean(x^2)) per row
                s.add(in_key if d == FP32 else f"{in_key}.fp32", FP32 * n)
                s.add(f"{name}.rstd", FP32 * rows)
            if full:  # weight gradient: the normalised tensor
                s.add(f"{name}.normed", (FP32 if fam.norm_grad_fp32 else d) * n)
        elif rg_in or full:  # native layer_norm: input, fp32 mean and rstd
            s.add(in_key, d * n)
            s.add(f"{name}.stats", 2 * FP32 * rows)
        return rg_in or full

    def dropout(name: str, p: float, n: int, rg_in: bool) -> None:
        if p > 0 and rg_in:
            s.add(f"{name}.mask", m * n)

    def attention(q_rg: bool, k_rg: bool, v_rg: bool) -> bool:
        if not (q_rg or k_rg or v_rg):
            return False
        q_n, kv_n = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
        if fam.fused_qkv:  # q, k, v are views of the fused projection's output
            if fam.rope:  # NeoX: rope (partial) builds new q and k; v stays a view
                s.add("q_rot", d * q_n)
                s.add("k_rot", d * kv_n)
            s.add("qkv", d * width("qkv", "out"))
        else:
            s.add("q_rot" if (fam.rope or fam.qk_norm) else "q", d * q_n)
            s.add("k_rot" if (fam.rope or fam.qk_norm) else "k", d * kv_n)
            s.add("v", d * kv_n)
        s.add("attn", d * q_n)  # the output (the o projection reads the same storage, or a copy)
        s.add("lse", FP32 * dims.heads)
        return True

    def mlp(in_key: str, rg_in: bool) -> bool:
        inter = width("down")
        if fam.gated:
            g = linear("gate", in_key, rg_in)
            u = linear("up", in_key, rg_in)
            if g:  # act(gate) keeps gate
                s.add("gate", ACTIVATION_SAVES[dims.activation] * d * inter)
            if g:  # act(gate) * up: d/d act needs up
                s.add("up", d * inter)
            if u:  # d/d up needs act(gate)
                s.add("act", d * inter)
            return linear("down", "prod", g or u)
        f = linear("fc", in_key, rg_in)
        if f:
            s.add("fc", ACTIVATION_SAVES[dims.activation] * d * inter)
        out = linear("down", "act", f)
        dropout("mlp", dims.resid_dropout, h, out)
        return out

    if fam.fused_qkv:  # GPT-2, NeoX: LayerNorm, fused QKV
        n1 = norm("ln1", "x", h, 1, rg)
        qkv = linear("qkv", "ln1", n1)
        o = linear("o", "attn.copy" if fam.attn_out_copy else "attn", attention(qkv, qkv, qkv))
        dropout("attn", dims.resid_dropout, h, o)
        if dims.parallel_residual:  # NeoX: x + attn(ln1(x)) + mlp(ln2(x))
            out = mlp("ln2", norm("ln2", "x", h, 1, rg))
            return s.bytes, rg or o or out
        mid = rg or o
        out = mlp("ln2", norm("ln2", "mid", h, 1, mid))
        return s.bytes, mid or out

    # Llama family
    x_key = "x" if fam.post_norm else "ln1"
    n1 = rg if fam.post_norm else norm("ln1", "x", h, 1, rg)
    q, k, v = (linear(r, x_key, n1) for r in ("q", "k", "v"))
    if fam.qk_norm:
        rows_q, rows_k = (dims.heads, dims.kv_heads) if fam.qk_norm == "head" else (1, 1)
        q = norm("q_norm", "q", width("q", "out"), rows_q, q)
        k = norm("k_norm", "k", width("k", "out"), rows_k, k)
    o = linear("o", "attn", attention(q, k, v))
    if fam.post_norm:
        o = norm("post_attn", "o", h, 1, o)
    mid = rg or o
    if fam.post_norm:
        out = norm("post_mlp", "down", h, 1, mlp("mid", mid))
    else:
        out = mlp("ln2", norm("ln2", "mid", h, 1, mid))
    return s.bytes, mid or out


@dataclass
class ActivationEstimate:
    """Activation memory per GPU of one method (bytes autograd keeps, plus transients)."""

    method: str
    micro_batch: int
    seq_len: int
    dtype_bytes: int
    checkpointing: bool
    #: whether backward truncation applies (checkpointing, window above layer 0, nothing below trains)
    truncation: bool
    #: decoder layers that keep something for backward
    active_layers: int
    #: bytes held from the forward to the backward (what ``saved_tensors_hooks`` counts)
    saved_bytes: int
    layers_gb: float
    head_gb: float
    saved_gb: float
    recompute_gb: float
    logits_gb: float
    peak_gb: float
    #: ZeRO-3 model states per GPU of the same method (when GPUs are given)
    model_states_gb: float | None = None
    total_gb: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _roles(fam: _Family, targets: list[str], model_type: str) -> list[str]:
    by_name = {name: role for role, name in fam.roles.items()}
    unknown = [t for t in targets if t not in by_name]
    if unknown:
        raise ValueError(
            f"the activation estimate knows the {model_type} projections {', '.join(fam.roles.values())}; "
            f"target modules {', '.join(unknown)} are not among them."
        )
    return [by_name[t] for t in targets]


def _activation_methods(
    plan: MidBlockPlan, fam: _Family, dims: ModelDims
) -> list[tuple[str, _Training, MidBlockPlan | None]]:
    """``(method, what trains, plan variant for the model states)`` of the four compared methods."""
    n = plan.num_layers
    cfg = plan.config
    lora = (
        plan
        if plan.mode == "lora"
        else plan_for_layout(
            plan.layout,
            dataclasses.replace(cfg, mode="lora", train_final_norm=False, train_embeddings=False),
            plan.layers,
        )
    )
    full = (
        plan
        if plan.mode == "full"
        else plan_for_layout(plan.layout, dataclasses.replace(cfg, mode="full"), plan.layers)
    )
    roles = _roles(fam, lora.target_modules, dims.model_type)

    def lora_layers(layers: list[int], rank: int) -> tuple:
        return tuple(dict.fromkeys(roles, rank) if i in layers else None for i in range(n))

    window_full = tuple("full" if i in plan.layers else None for i in range(n))
    return [
        (
            f"mid-block LoRA ({plan.window})",
            _Training(lora_layers(plan.layers, lora.layer_rank), cfg.lora_dropout),
            lora,
        ),
        (
            f"mid-block full ({plan.window})",
            _Training(
                window_full,
                final_norm=full.config.train_final_norm,
                embeddings=full.config.train_embeddings,
                lm_head=full.config.train_embeddings and dims.tied_embeddings,
            ),
            full,
        ),
        (
            f"uniform LoRA r={plan.baseline_rank}",
            _Training(lora_layers(list(range(n)), cfg.rank), cfg.lora_dropout),
            None,
        ),
        ("full fine-tuning", _Training(("full",) * n, final_norm=True, embeddings=True, lm_head=True), None),
    ]


def _activations(
    method: str,
    dims: ModelDims,
    fam: _Family,
    layout: Any,
    tr: _Training,
    batch: int,
    seq: int,
    d: int,
    m: int,
    checkpointing: bool,
    truncation: bool,
) -> ActivationEstimate:
    tokens = batch * seq
    gb = 1024**3
    trained = [i for i, t in enumerate(tr.layers) if t is not None]
    first = trained[0] if trained else layout.num_layers
    truncated = checkpointing and truncation and first > 0 and not tr.embeddings
    # the input of layer 0 requires grad if the embeddings train, or under checkpointing
    # (enable_input_require_grads) unless truncation removed that hook
    rg = tr.embeddings or (checkpointing and not truncated)
    embed_rg = rg
    per_layer: list[float] = []
    for i, train in enumerate(tr.layers):
        nbytes, out = _layer(fam, dims, layout.linears[i], train, tr.lora_dropout, rg, d, m)
        if rg or train is not None:
            per_layer.append(nbytes)
        rg = out
    h = dims.hidden
    if checkpointing:  # each checkpointed layer keeps its input; one layer is rebuilt at a time
        layers = len(per_layer) * d * h * tokens
        recompute = max(per_layer, default=0.0) * tokens
    else:
        layers = sum(per_layer) * tokens
        recompute = 0.0
    # final norm (its input requires grad whenever anything trains), LM head, loss
    head = 0.0
    if rg or tr.final_norm:
        if fam.norm == "rms":
            head += (FP32 * h + FP32) if rg else 0
            head += (FP32 if fam.norm_grad_fp32 else d) * h if tr.final_norm else 0
        else:
            head += d * h + 2 * FP32
    if tr.lm_head:
        head += d * h  # the LM head's weight gradient needs its input
    head += FP32 * dims.vocab + INDEX_BYTES  # fp32 log-softmax of the logits, int64 labels
    if tr.embeddings:
        head += INDEX_BYTES  # the embedding's backward keeps the token ids
    if embed_rg and dims.embed_dropout > 0:
        head += m * h
    head *= tokens
    if tr.embeddings and not fam.rope:  # GPT-2's learned positions keep the (1, S) position ids
        head += INDEX_BYTES * seq
    if per_layer and fam.rope:  # cos and sin, (1, S, rotary_dim), shared by all layers
        head += 2 * seq * dims.rotary_dim * (FP32 if fam.rope_fp32 else d)
    saved = layers + head
    logits = float(tokens * dims.vocab * (d + FP32))
    return ActivationEstimate(
        method=method,
        micro_batch=batch,
        seq_len=seq,
        dtype_bytes=d,
        checkpointing=checkpointing,
        truncation=truncated,
        active_layers=len(per_layer),
        saved_bytes=int(round(saved)),
        layers_gb=layers / gb,
        head_gb=head / gb,
        saved_gb=saved / gb,
        recompute_gb=recompute / gb,
        logits_gb=logits / gb,
        peak_gb=(saved + max(recompute, logits)) / gb,
    )


def activation_estimates(
    plan: MidBlockPlan,
    model_config: Any,
    micro_batch: int,
    seq_len: int,
    checkpointing: bool = False,
    dtype_bytes: int = 2,
    *,
    truncation: bool | None = None,
    dropout_mask_bytes: int = 1,
    gpus_per_node: int | None = None,
    nodes: int = 1,
    offload: bool = False,
) -> list[ActivationEstimate]:
    """Activation memory per GPU of mid-block LoRA, mid-block full, uniform LoRA and full
    fine-tuning, for ``micro_batch`` sequences of ``seq_len`` tokens (see the module docstring).

    ``model_config``: the model's transformers config (or its directory / hub id; the plan's
    layout holds shapes, not head counts, vocab or activation). ``truncation``: backward
    truncation under checkpointing (default: the plan's ``truncate_backward``).
    ``dropout_mask_bytes``: 1 on CUDA (``native_dropout`` keeps a bool mask); CPU keeps a
    mask in the model dtype. With ``gpus_per_node``, each row also gets the ZeRO-3 model
    states of the same method and the total.
    """
    for name, v in (
        ("micro_batch", micro_batch),
        ("seq_len", seq_len),
        ("dtype_bytes", dtype_bytes),
        ("dropout_mask_bytes", dropout_mask_bytes),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer (--micro-batch B --seq-len S).")
    if not plan.layout.has_shapes:
        raise ValueError("the activation estimate needs layer shapes: give a model or config, not only --num-layers.")
    dims = model_dims(model_config)
    if dims.model_type != plan.model_type:
        raise ValueError(f"model_config is a {dims.model_type} config but the plan was built for {plan.model_type}.")
    fam = FAMILIES[dims.model_type]
    missing = [n for n in fam.roles.values() if n not in plan.layout.linears[0]]
    if missing:
        raise ValueError(f"this {dims.model_type} model has no {', '.join(missing)}; its layers are not modelled.")
    truncation = plan.config.truncate_backward if truncation is None else truncation
    rows = []
    for method, tr, variant in _activation_methods(plan, fam, dims):
        row = _activations(
            method,
            dims,
            fam,
            plan.layout,
            tr,
            micro_batch,
            seq_len,
            dtype_bytes,
            dropout_mask_bytes,
            checkpointing,
            truncation and method.startswith("mid-block"),
        )
        if gpus_per_node is not None:
            states = zero3_estimates(variant or plan, gpus_per_node, nodes, offload)
            pick = {"uniform": 1, "full fine-tuning": 2}
            key = next((k for k in pick if method.startswith(k)), None)
            row.model_states_gb = states[pick[key] if key else 0].gpu_total_gb
            row.total_gb = row.model_states_gb + row.peak_gb
        rows.append(row)
    return rows


def format_activation_table(rows: list[ActivationEstimate]) -> str:
    """The activation table printed by ``midblock plan --zero3 --micro-batch B --seq-len S``."""
    r0 = rows[0]
    dtype = {2: "bf16/fp16", 4: "fp32"}.get(r0.dtype_bytes, f"{r0.dtype_bytes}-byte")
    ckpt = "gradient checkpointing " + ("on" if r0.checkpointing else "off")
    if r0.checkpointing:
        ckpt += f" (backward truncation {'on' if any(r.truncation for r in rows) else 'off'} for mid-block)"
    states = r0.model_states_gb is not None
    lines = [
        f"Activation memory per GPU: micro-batch {r0.micro_batch} x {r0.seq_len} tokens, {dtype}, sdpa attention, {ckpt}",
        f"{'method':<30}{'layers':>8}{'saved GB':>10}{'recompute':>11}{'logits':>9}{'peak GB':>9}"
        + (f"{'states GB':>11}{'total GB':>10}" if states else ""),
    ]
    for r in rows:
        line = (
            f"{r.method:<30}{r.active_layers:>8}{r.saved_gb:>10.2f}{r.recompute_gb:>11.2f}{r.logits_gb:>9.2f}"
            f"{r.peak_gb:>9.2f}"
        )
        if states:
            line += f"{r.model_states_gb:>11.2f}{r.total_gb:>10.2f}"
        lines.append(line)
    lines.append(
        "layers: decoder layers that keep activations; saved: kept from forward to backward; "
        "peak: saved + max(recompute of one layer, logits transient)"
        + ("; states: ZeRO-3 model states of the method; total = states + peak." if states else ".")
    )
    lines.append("not modelled:")
    lines += [f"  - {item}" for item in NOT_MODELLED]
    return "\n".join(lines)


def activations_to_json(rows: list[ActivationEstimate]) -> dict:
    """The activation estimate as ``midblock plan --zero3 --json`` writes it under ``zero3_memory``."""
    r0 = rows[0]
    return {
        "micro_batch": r0.micro_batch,
        "seq_len": r0.seq_len,
        "dtype_bytes": r0.dtype_bytes,
        "gradient_checkpointing": r0.checkpointing,
        "attention": "sdpa",
        "estimates": [r.to_dict() for r in rows],
        "not_modelled": list(NOT_MODELLED),
    }
