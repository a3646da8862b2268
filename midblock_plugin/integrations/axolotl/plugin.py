"""``MidBlockPlugin``: Mid-Block Efficient Tuning as an Axolotl adapter (``adapter: midblock``).

Hooks used (Axolotl calls them in this order; every hook is a no-op unless the config
says ``adapter: midblock``, because Axolotl 0.21+ loads installed plugins for every run):

* ``register`` (the raw config): ``deepspeed: midblock:<name>`` to the shipped JSON, and the
  gradient-checkpointing mode (:func:`_choose_checkpointing_mode`: non-reentrant, but reentrant
  under ZeRO-3 on DeepSpeed < 0.19.3, where an explicit non-reentrant request is refused),
  and for ``load_in_4bit`` / ``load_in_8bit`` (QLoRA) the ``BitsAndBytesConfig`` Axolotl builds
  for ``adapter: qlora`` / ``lora`` only, handed to ``from_pretrained`` through ``model_kwargs``;
* ``get_input_args``: the YAML keys (:class:`~.args.MidBlockArgs`, checked by :mod:`.validate`),
  validated with the rest of the config, before anything is loaded;
* ``get_adapter_capabilities``: registers the adapter name ``midblock``, so Axolotl's
  ``adapter:`` validator accepts it;
* ``pre_model_load``: resolves the plan from the model *config* (no weights), prints it,
  and refuses a checkpoint to resume from, or a ``lora_model_dir`` adapter, that was trained with
  another window, rank or mode (:func:`check_before_training`: the checks of
  :mod:`midblock_plugin.training.resume`, against the checkpoint's own ``midblock/plan.json``),
  and an ``output_dir`` that another run holds or whose previous midblock run has another plan
  (:func:`check_output_dir`; ``midblock_overwrite: true`` replaces that run);
* ``post_model_build``: on a quantized base, PEFT's ``prepare_model_for_kbit_training`` (which
  Axolotl runs for ``lora`` / ``qlora`` only), before Axolotl's dtype pass;
* ``load_adapter``: Axolotl hands ``adapter: midblock`` to the plugin. The plan of the run is
  built here, once, from the loaded model; LoRA mode wraps the model in the plan's plain PEFT
  LoRA (``plan.lora_config()``, or loads ``lora_model_dir``); full mode freezes everything but
  the window (before the optimizer and DeepSpeed exist);
* ``add_callbacks_pre_trainer``: the shared :class:`~midblock_plugin.training.MidBlockCallback`
  with that plan (plan summary and ``plan.json``, backward truncation, drift monitor), the same
  code as the TRL path;
* ``post_trainer_create``: ``callback.bind(trainer)``, so the drift metrics reach the
  reporters (W&B, TensorBoard) and a checkpoint given to ``trainer.train`` is checked before it
  loads; then the run takes ``output_dir`` (lock, ``midblock-run.json``; ``midblock_overwrite``
  removes the previous run's files), before Axolotl pre-saves its configs there;
* ``add_callbacks_post_trainer`` / ``post_train`` / ``post_train_unload`` (``midblock_eval``,
  any adapter): an :class:`~midblock_plugin.evaluation.EvalCallback` (baseline at train start
  if asked) and the final lm-eval evaluation of the model in memory. Axolotl calls
  ``post_train`` twice, right after ``trainer.train()`` and again after the model is saved;
  a single process evaluates at the second call, so a crash in the evaluation cannot lose
  the model. Multi-process runs (DDP, ZeRO-3) evaluate at the first call instead, because
  Axolotl destroys the process group before the second one and partitioned / sharded
  evaluation needs it; the evaluation never raises, so the save still follows. GSM8K that
  cannot be found is refused before training (:func:`~midblock_plugin.evaluation.preflight.preflight`);
  an evaluation that failed anyway is logged and, in ``post_train_unload`` (after the save),
  raised as :class:`~midblock_plugin.evaluation.preflight.EvaluationFailed`: exit status 3.

Saving needs no hook: Axolotl saves a ``PeftModel`` as a standard adapter (which
``python -m axolotl.cli.merge_lora`` merges) and a plain model as a full checkpoint.
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

from axolotl.integrations.base import AdapterCapabilities, BasePlugin
from axolotl.utils.logging import get_logger

from midblock_plugin import io
from midblock_plugin.integrations.axolotl.keys import (
    ADAPTER_NAME,
    EVAL_KEY,
    OVERWRITE_KEY,
    eval_settings_from,
    is_midblock,
    midblock_config_from_cfg,
    settings_diff,
    yaml_error,
)
from midblock_plugin.integrations.axolotl.validate import check_quantized_checkpoint
from midblock_plugin.training.resume import (
    PlanMismatch,
    check_adapter_dir,
    check_resume,
    checkpoint_plan,
    last_checkpoint,
    plan_mismatches,
)


# Axolotl prints INFO only for loggers under "axolotl"; ours would show warnings only.
LOG = get_logger("axolotl.integrations.midblock")

ARGS_PATH = "midblock_plugin.integrations.axolotl.args.MidBlockArgs"
#: ``deepspeed: midblock:zero3`` names a DeepSpeed JSON shipped in midblock_plugin/deepspeed_configs
#: (Axolotl's own deepspeed_configs/ are not in its wheel).
DEEPSPEED_PREFIX = "midblock:"

#: What to change when a checkpoint was trained with another window, rank or mode.
RESUME_FIX = (
    "Restore the midblock_* / lora_* settings of that run, or train into a fresh output_dir without "
    "resume_from_checkpoint / auto_resume_from_checkpoints."
)
#: How the errors name the switch that replaces a previous run in ``output_dir``.
OVERWRITE_HINT = f"{OVERWRITE_KEY}: true"
#: What to change when ``lora_model_dir`` holds an adapter for another window or rank.
ADAPTER_FIX = (
    "Use the midblock_* / lora_r settings it was trained with, or remove lora_model_dir to start a new adapter."
)


class MidBlockPlugin(BasePlugin):
    """Axolotl plugin for Mid-Block Efficient Tuning (Zhao et al., ACL 2026).

    ``plugins: [midblock_plugin.axolotl.MidBlockPlugin]`` (or the full path,
    ``midblock_plugin.integrations.axolotl.MidBlockPlugin``) plus ``adapter: midblock`` in an
    Axolotl YAML; see this package's README.md.
    """

    def __init__(self) -> None:
        super().__init__()
        self.plan = None  # the plan of this run, built once in load_adapter
        self.callback = None  # the MidBlockCallback of this run, bound to the trainer in post_trainer_create
        self.eval_callback = None  # the EvalCallback of this run (midblock_eval)
        self._eval_trainer = None
        self._post_train_calls = 0
        self._eval_state = "off"  # off | armed (post_train not yet seen) | pending (after the save) | done
        self._checked_before_load = False  # the resume / lora_model_dir checks ran in pre_model_load

    # ------------------------------------------------------------------ one instance per run
    def _shadowed(self) -> bool:
        """Whether Axolotl holds another MidBlockPlugin registered before this one: the plugin
        listed twice, e.g. by its short and its full path (or, in Axolotl 0.21+, under
        ``plugins:`` and through the entry point). The first instance does the work; the
        others stay inert, so nothing is applied or registered twice."""
        from axolotl.integrations.base import PluginManager

        ours = [p for p in PluginManager.get_instance().plugins.values() if isinstance(p, MidBlockPlugin)]
        return any(p is self for p in ours) and ours[0] is not self

    def _ours(self, cfg) -> bool:
        return is_midblock(cfg) and not self._shadowed()

    # ------------------------------------------------------------------ config
    def register(self, cfg) -> None:
        """Raw config, before validation (only with ``adapter: midblock``).

        * ``deepspeed: midblock:zero3`` (or ``midblock:zero3_offload``) is replaced by the
          path of that JSON inside this package.
        * With ``gradient_checkpointing: true`` and no ``use_reentrant`` of the user's, the
          plugin chooses it (:func:`midblock_plugin.compat.checkpointing_mode`), where
          Axolotl's own default is reentrant: non-reentrant (transformers' default; backward
          truncation then needs no marker at the window's entry), except under DeepSpeed
          ZeRO-3 on a DeepSpeed older than 0.19.3, whose non-reentrant recompute of frozen
          (PEFT) parameters fails on the first backward; there it is reentrant. An explicit
          ``use_reentrant: false`` in that combination is refused here, when the config is
          loaded, with the fix; any other explicit setting is kept. The choice and its reason
          are logged.
        """
        if not is_midblock(cfg):  # idempotent: harmless if the plugin is listed twice
            return
        deepspeed = cfg.get("deepspeed")
        if isinstance(deepspeed, str) and deepspeed.startswith(DEEPSPEED_PREFIX):
            cfg["deepspeed"] = shipped_deepspeed_config(deepspeed)
        if cfg.get("gradient_checkpointing") is True:
            _choose_checkpointing_mode(cfg)
        _request_quantization(cfg)

    def get_input_args(self) -> str | None:
        # Listed twice, MidBlockArgs would be a base class of Axolotl's config schema twice (a TypeError).
        return None if self._shadowed() else ARGS_PATH

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        # Not lora_like: Axolotl must not build its own uniform LoraConfig for this adapter;
        # load_adapter below builds the windowed one.
        return [AdapterCapabilities(name=ADAPTER_NAME, lora_like=False, relora=False)]

    # ------------------------------------------------------------------ model
    def pre_model_load(self, cfg) -> None:
        self._check_eval_data(cfg)  # midblock_eval with any adapter: GSM8K not found fails before the model loads
        if not self._ours(cfg):
            return
        config = midblock_config_from_cfg(cfg)
        _warn_ignored_lora_keys(cfg, config)
        hf_config = _load_model_config(cfg)
        if hf_config is None:
            return  # e.g. a hub id offline: the plan is built from the loaded model instead
        from midblock_plugin.plan import build_plan

        try:  # a preview from the config (no weights): the window is checked, and a resume too
            plan = build_plan(hf_config, config)
        except ValueError as exc:
            raise yaml_error(exc) from None
        check_quantized_checkpoint(plan.mode, cfg.base_model, getattr(hf_config, "quantization_config", None))
        LOG.info(
            f"midblock: {plan.mode} mode on layers {plan.window} of {plan.num_layers}"
            + (f", rank {plan.layer_rank} per layer" if plan.mode == "lora" else "")
            + " (the full plan is printed when the trainer is built)"
        )
        check_before_training(cfg, plan)
        check_output_dir(cfg, plan)
        self._checked_before_load = True

    def post_model_build(self, cfg, model) -> None:
        """QLoRA: PEFT's ``prepare_model_for_kbit_training`` on a bitsandbytes-quantized model,
        where Axolotl calls it for ``adapter: lora`` / ``qlora`` only, and under the same
        conditions (not under DeepSpeed ZeRO-3 or FSDP, which need one dtype). Here, before
        Axolotl's own dtype pass, so the norms and embeddings it upcasts go back to the training
        dtype as in Axolotl's QLoRA. With gradient checkpointing it may register the
        ``enable_input_require_grads`` hook; backward truncation removes it at train start."""
        if not self._ours(cfg) or model_quantization_of(model) is None:
            return
        if _sharded_training(cfg):
            LOG.info(
                "midblock: quantized base under DeepSpeed ZeRO-3 / FSDP: prepare_model_for_kbit_training "
                "skipped, as Axolotl does"
            )
            return
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(cfg.gradient_checkpointing),
            gradient_checkpointing_kwargs=dict(cfg.gradient_checkpointing_kwargs or {}),
        )
        LOG.info(
            f"midblock: {model_quantization_of(model)} base prepared for LoRA training "
            "(peft.prepare_model_for_kbit_training)"
        )

    def load_adapter(self, model, cfg, inference: bool = False, config_only: bool = False):
        if not self._ours(cfg):
            return None
        from midblock_plugin.adapters import apply_full_mode, verify_trainable
        from midblock_plugin.plan import build_plan

        plan = self.plan = build_plan(model, midblock_config_from_cfg(cfg))
        if not self._checked_before_load:  # pre_model_load could not read the model config
            check_before_training(cfg, plan)
        self._checked_before_load = False  # the next run (same process) checks again

        if plan.mode == "full":
            if not inference:
                trainable = apply_full_mode(model, plan)
                LOG.info(f"midblock full mode: {trainable:,} trainable parameters in layers {plan.window}")
            return (None if config_only else model), None

        peft_config = plan.lora_config()
        if config_only:
            return None, peft_config
        from peft import PeftModel, get_peft_model

        if cfg.lora_model_dir:
            model = PeftModel.from_pretrained(model, cfg.lora_model_dir, is_trainable=not inference)
        else:
            # The initial adapter (LoRA A is random) depends on `seed` only (default 42, the HF
            # Trainer's): without this it would depend on how many random numbers model loading
            # drew, which differs between a plain load and a ZeRO-3 (zero.Init) load.
            with _seeded(cfg.seed if cfg.seed is not None else 42):
                model = get_peft_model(model, peft_config)
        if not inference:
            verify_trainable(model, plan)
            model.print_trainable_parameters()
        return model, peft_config

    # ------------------------------------------------------------------ training
    def add_callbacks_pre_trainer(self, cfg, model) -> list:
        if not self._ours(cfg):
            return []
        from midblock_plugin.training import MidBlockCallback

        # Without load_adapter (no plan yet), the callback builds the plan from the model at trainer init.
        overwrite = {"overwrite": _overwrite(cfg), "overwrite_hint": OVERWRITE_HINT}
        self.callback = (
            MidBlockCallback(plan=self.plan, **overwrite)
            if self.plan is not None
            else MidBlockCallback(midblock_config_from_cfg(cfg), **overwrite)
        )
        return [self.callback]

    def post_trainer_create(self, cfg, trainer) -> None:
        """Move the MidBlockCallback to the front of the trainer's callbacks, so the drift metrics
        it adds to the logs reach the reporters (W&B, TensorBoard), which run before plugin callbacks."""
        if not self._ours(cfg) or self.callback is None:
            return
        try:
            self.callback.bind(trainer)
        except ValueError as exc:  # the trainer was built without our pre-trainer callbacks
            LOG.warning(f"midblock: {exc} The drift metrics reach {io.DRIFT_JSON} and the trainer's logs only.")
        # Training only (Axolotl's evaluate builds a trainer without this hook), and before
        # Axolotl pre-saves the adapter config, tokenizer and model config into output_dir.
        self.callback.claim_output_dir(trainer.args, _resume_checkpoint(cfg))

    # ------------------------------------------------------------------ evaluation (midblock_eval)
    def _check_eval_data(self, cfg) -> None:
        """The GSM8K ``midblock_eval`` will read is found (or refused) before the model loads;
        ``add_callbacks_post_trainer`` checks again (cheap) where it builds the callback."""
        values = cfg.get(EVAL_KEY)
        if values is None or values is False or self._shadowed():
            return
        from midblock_plugin.evaluation.preflight import preflight

        settings = eval_settings_from({} if values is True else values)  # its errors name midblock_eval
        try:
            preflight(settings, needs="the evaluation after training", fix=f"remove {EVAL_KEY}")
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{EVAL_KEY}: {exc}") from None

    def add_callbacks_post_trainer(self, cfg, trainer) -> list:
        """``midblock_eval``: an EvalCallback bound to the trainer (any adapter). Task names are
        checked against lm-eval here, before training starts."""
        values = cfg.get(EVAL_KEY)
        if values is None or values is False or self._shadowed():
            return []
        settings = eval_settings_from({} if values is True else values)
        if not settings.enabled:
            return []
        from midblock_plugin.evaluation.callback import EvalCallback
        from midblock_plugin.evaluation.preflight import preflight

        try:  # GSM8K nowhere to be found (offline, no data_dir) is refused here, before training
            preflight(settings, needs="the evaluation after training", fix=f"remove {EVAL_KEY}")
            callback = EvalCallback(settings, trainer=trainer, final_on_train_end=False)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{EVAL_KEY}: {exc}") from None
        self.eval_callback, self._eval_trainer, self._eval_state = callback, trainer, "armed"
        LOG.info(
            f"midblock: lm-eval {', '.join(settings.tasks)} will evaluate the trained model "
            f"{'in memory' if settings.backend == 'in-memory' else 'after the save with --backend ' + settings.backend} "
            f"(protocol {settings.protocol}) "
            f"(limit {settings.limit}, {'task default' if settings.effective_num_fewshot is None else settings.effective_num_fewshot}-shot"
            f"{', with a baseline at train start' if settings.baseline else ''}) -> "
            f"{Path(trainer.args.output_dir) / settings.output_subdir}"
        )
        return [callback]

    def post_train(self, cfg, model) -> None:
        self._write_model_card(cfg)
        # Axolotl calls post_train after training and again after saving the model (through
        # model.save_pretrained, not trainer.save_model): the run is complete at the second call.
        if self._post_train_calls and self._trained():
            self.callback.finish()
        self._post_train_calls += 1
        if self._eval_state == "armed":
            after_save = self.eval_callback is not None and self.eval_callback.settings.backend != "in-memory"
            if _process_group_active() and not after_save:  # backend hf / vllm: always after the save
                self._evaluate("after training, before the save: multi-process run")
            else:
                self._eval_state = "pending"  # Axolotl calls post_train again once the model is saved
        elif self._eval_state == "pending":
            self._evaluate("after the model was saved")

    def _trained(self) -> bool:
        """This process owns output_dir and training ended normally (the run awaits its final save)."""
        return self.callback is not None and self.callback.awaiting_save

    def _write_model_card(self, cfg) -> None:
        """The midblock section of the saved adapter's README.md (what was trained; the rsLoRA trap)."""
        out = Path(cfg.get("output_dir") or ".")
        if self.plan is not None and self.plan.mode == "lora" and (out / "adapter_config.json").is_file():
            from midblock_plugin.training.model_card import write_model_card

            write_model_card(out, self.plan)

    def post_train_unload(self, cfg) -> None:
        if self._trained():
            self.callback.finish()  # an Axolotl that calls post_train only once: the model is saved by now
        if self._eval_state in ("armed", "pending"):  # an Axolotl that calls post_train only once
            self._evaluate("at unload")
        self._release_eval()
        failed = self.eval_callback.errors.get("final") if self.eval_callback is not None else None
        if failed:  # the last hook: the model is saved by now; the run ends with the documented status
            from midblock_plugin.evaluation.preflight import EVAL_FAILED_EXIT, EvaluationFailed

            message = (
                f"{EVAL_KEY}: the final evaluation failed after training ({failed}); the trained model is saved "
                f"in {cfg.get('output_dir') or '.'}"
            )
            LOG.error(f"midblock: {message}; exit status {EVAL_FAILED_EXIT}")
            raise EvaluationFailed(message)

    def _evaluate(self, when: str) -> None:
        """The final evaluation; never raises (the training run and its saved model are kept)."""
        callback, trainer = self.eval_callback, self._eval_trainer
        self._eval_state = "done"
        out = Path(trainer.args.output_dir) / callback.settings.output_subdir
        if callback.settings.backend != "in-memory":  # midblock_eval: {backend: hf | vllm}: rank 0, own process
            LOG.info(f"midblock: lm-eval final evaluation of the saved model ({callback.settings.backend}, {when})")
            report = callback.run_after_save(trainer.args.output_dir, state=trainer.state)
            if report is not None:
                LOG.info(f"midblock: lm-eval results written to {out}")
            self._release_eval()
            return
        LOG.info(f"midblock: lm-eval final evaluation of the model in memory ({when})")
        try:
            report = callback.run_final(trainer)
        except Exception as exc:  # noqa: BLE001 - run_final already catches; this is a last guard
            report = None
            callback.errors["final"] = f"{type(exc).__name__}: {exc}"
            if getattr(trainer.state, "is_world_process_zero", True):
                from midblock_plugin.evaluation.results import write_error

                with contextlib.suppress(OSError):
                    write_error(out, "final", exc, traceback.format_exc())
        if report is not None:
            files = ", ".join(report.get("files") or []) or str(out)
            LOG.info(f"midblock: lm-eval results written to {files}")
        else:
            LOG.error(
                f"midblock: the lm-eval evaluation failed ({callback.errors.get('final')}); training and the "
                f"saved model are unaffected; details in {out / 'error.json'}"
            )
        self._release_eval()

    def _release_eval(self) -> None:
        # Axolotl deletes its model and trainer before post_train_unload: do not keep them alive.
        self._eval_trainer = None
        if self.eval_callback is not None:
            self.eval_callback.trainer = None


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _seeded(seed: int):
    """Draw from torch's generator seeded with ``seed`` inside the block; the global random
    state is restored afterwards."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _process_group_active() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def uses_zero3(cfg) -> bool:
    """Whether the config's ``deepspeed`` (a JSON path after the ``midblock:`` mapping, or a
    mapping) is ZeRO stage 3. A config that cannot be read counts as not ZeRO-3 here; Axolotl
    and the Trainer report an unreadable DeepSpeed config themselves."""
    from midblock_plugin.deepspeed_configs import zero_stage

    deepspeed = cfg.get("deepspeed")
    if not deepspeed:
        return False
    try:
        return zero_stage(deepspeed if isinstance(deepspeed, dict) else str(deepspeed)) == 3
    except (OSError, ValueError, AttributeError) as exc:  # missing file, bad JSON, not a JSON object
        LOG.warning(
            f"midblock: could not read the DeepSpeed config {deepspeed!r} ({exc}); "
            "gradient checkpointing is chosen as without ZeRO-3."
        )
        return False


def model_quantization_of(model) -> str | None:
    from midblock_plugin.architecture import model_quantization

    return model_quantization(model)


def _sharded_training(cfg) -> bool:
    """DeepSpeed ZeRO-3 or FSDP, where Axolotl skips ``prepare_model_for_kbit_training``."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled() or cfg.fsdp_config or cfg.fsdp)


def _request_quantization(cfg) -> None:
    """``load_in_4bit`` / ``load_in_8bit`` with ``adapter: midblock`` (LoRA mode): Axolotl builds
    its ``BitsAndBytesConfig`` for ``adapter: qlora`` / ``lora`` only, so the plugin hands the
    same settings (:func:`~.axolotl_compat.bnb_quantization_config`) to ``from_pretrained`` through
    Axolotl's ``model_kwargs`` (its overrides of the ``from_pretrained`` arguments). A
    ``quantization_config`` the user put in ``model_kwargs`` is kept."""
    from transformers.utils import is_torch_bf16_gpu_available

    from midblock_plugin.integrations.axolotl.axolotl_compat import bnb_quantization_config

    if cfg.get("load_in_4bit") is not True and cfg.get("load_in_8bit") is not True:
        return
    config = bnb_quantization_config(cfg, bf16_available=bool(is_torch_bf16_gpu_available()))
    if config is None:
        return  # full mode: refused when the config is validated
    key = "overrides_of_model_kwargs" if cfg.get("overrides_of_model_kwargs") is not None else "model_kwargs"
    kwargs = cfg.get(key) or {}
    if not isinstance(kwargs, dict):
        return  # Axolotl's validation reports a model_kwargs that is not a mapping
    if "quantization_config" in kwargs:
        LOG.info(f"midblock: {key}.quantization_config of the config is used for the quantized base")
        return
    cfg[key] = {**kwargs, "quantization_config": config}
    shown = ", ".join(f"{k}={v}" for k, v in config.items() if k.startswith(("load_in", "bnb_4bit")))
    LOG.info(f"midblock: QLoRA base: BitsAndBytesConfig({shown})")


def _choose_checkpointing_mode(cfg) -> None:
    """Set (or check) ``gradient_checkpointing_kwargs.use_reentrant`` of a raw config with
    gradient checkpointing on; raises ``ValueError`` for a combination that would crash."""
    from midblock_plugin.compat import checkpointing_mode

    kwargs = cfg.get("gradient_checkpointing_kwargs")
    requested = kwargs.get("use_reentrant") if isinstance(kwargs, dict) else None
    zero3 = uses_zero3(cfg)
    try:
        use_reentrant, reason = checkpointing_mode(zero3, requested)
    except ValueError as exc:
        raise ValueError(f"adapter: midblock: gradient_checkpointing_kwargs: {exc}") from None
    if requested is None:
        cfg["gradient_checkpointing_kwargs"] = {
            **(kwargs if isinstance(kwargs, dict) else {}),
            "use_reentrant": use_reentrant,
        }
    LOG.info(
        f"midblock: gradient checkpointing use_reentrant: {str(bool(use_reentrant)).lower()}; "
        f"{'DeepSpeed ZeRO-3, ' if zero3 else ''}{reason}"
    )


def shipped_deepspeed_config(value: str) -> str:
    """Path of the DeepSpeed JSON that ``deepspeed: midblock:<name>`` refers to."""
    from midblock_plugin.deepspeed_configs import NAMES, config_path

    name = value[len(DEEPSPEED_PREFIX) :].strip().removesuffix(".json")
    if name not in NAMES:
        raise ValueError(
            f"deepspeed: {value!r} names no DeepSpeed config shipped with midblock; use one of "
            f"{', '.join(DEEPSPEED_PREFIX + n for n in NAMES)}, or a path to your own JSON."
        )
    return config_path(name)


def _warn_ignored_lora_keys(cfg, config) -> None:
    if config.mode != "full":
        return
    ignored = [k for k in ("lora_r", "lora_alpha", "lora_target_modules", "lora_target_linear") if cfg.get(k)]
    if ignored:
        LOG.warning(f"midblock_mode: full trains whole layers; {', '.join(ignored)} are ignored.")


def _load_model_config(cfg):
    """The base model's transformers config, or None if it cannot be had without loading."""
    from transformers import AutoConfig

    path = cfg.base_model_config or cfg.base_model
    try:
        return AutoConfig.from_pretrained(
            path, trust_remote_code=bool(cfg.trust_remote_code), revision=cfg.revision_of_model or None
        )
    except Exception as exc:  # noqa: BLE001 - any failure here only postpones the plan
        LOG.warning(
            f"midblock: could not read the config of {path!r} before loading ({exc}); "
            "the window is resolved after the model is loaded."
        )
        return None


def _resume_checkpoint(cfg) -> str | None:
    """The checkpoint this run will resume from (Axolotl's rules), or None."""
    if cfg.resume_from_checkpoint:
        return str(cfg.resume_from_checkpoint)
    if cfg.auto_resume_from_checkpoints and cfg.output_dir:
        found = last_checkpoint(cfg.output_dir)
        return str(found) if found is not None else None
    return None


def _overwrite(cfg) -> bool:
    """``midblock_overwrite`` (validated as a boolean when the config loaded; absent: false)."""
    return bool(cfg.get(OVERWRITE_KEY))


def check_output_dir(cfg, plan) -> None:
    """Before the model loads, on the main process of a run that trains: refuse an ``output_dir``
    that another run holds (naming its pid and host), or whose previous midblock run was trained
    with another plan, unless ``midblock_overwrite: true``
    (:class:`~midblock_plugin.training.output_dir.TrainingDirectory`; nothing is written)."""
    from midblock_plugin.io import RunDirectoryError
    from midblock_plugin.training.output_dir import TrainingDirectory, main_process

    if cfg.get("inference") or not cfg.get("output_dir") or not main_process():
        return

    guard = TrainingDirectory(
        cfg.output_dir, plan, overwrite=_overwrite(cfg), overwrite_hint=OVERWRITE_HINT, log=LOG.warning
    )
    try:
        guard.check(_resume_checkpoint(cfg))
    except RunDirectoryError as exc:
        raise RunDirectoryError(f"adapter: midblock: output_dir: {exc}") from None


def check_before_training(cfg, plan) -> None:
    """Refuse a ``lora_model_dir`` adapter or a checkpoint to resume from (``resume_from_checkpoint``,
    ``auto_resume_from_checkpoints``) that was trained with another window, rank or mode. A checkpoint
    is compared with its own plan (``<checkpoint>/midblock/plan.json``) and adapter; raises
    :class:`~midblock_plugin.training.resume.PlanMismatch` with the YAML settings to restore."""
    if cfg.lora_model_dir and plan.mode == "lora":
        try:
            check_adapter_dir(cfg.lora_model_dir, plan, fix=ADAPTER_FIX)
        except PlanMismatch as exc:
            raise PlanMismatch(f"adapter: midblock: lora_model_dir {exc}") from None
    checkpoint = _resume_checkpoint(cfg)
    if not checkpoint or not Path(checkpoint).is_dir():
        return  # Axolotl / the Trainer report a missing checkpoint themselves
    saved, where = checkpoint_plan(checkpoint)
    fix = RESUME_FIX
    if saved is not None:
        differences = plan_mismatches(saved, plan)
        settings = settings_diff(saved.get("midblock_config") or {}, plan.config)
        fix = (
            (f"The checkpoint's own plan ({where}) differs in {'; '.join(differences)}. " if differences else "")
            + (f"That run was trained with {', '.join(settings)}. " if settings else "")
            + RESUME_FIX
        )
    try:
        check_resume(checkpoint, plan, fix=fix)
    except PlanMismatch as exc:
        raise PlanMismatch(f"adapter: midblock: {exc}") from None
    if saved is None:
        LOG.warning(
            f"midblock: {checkpoint} carries no {io.PLAN_JSON} (it was saved before midblock wrote the plan into "
            "each checkpoint, or by another adapter): "
            + (
                "only its adapter_config.json was compared with this config."
                if plan.mode == "lora"
                else "nothing records its window; make sure the midblock_* settings are those of that run."
            )
        )
    LOG.info(f"midblock: resuming from {checkpoint} with the same window (layers {plan.window}, mode {plan.mode})")
