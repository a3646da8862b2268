"""``EvalCallback``: lm-eval evaluation of the model in memory at the end of training.

Works with any ``transformers.Trainer`` (TRL's ``SFTTrainer`` included) and with Axolotl
(its plugin adds the callback). At ``on_train_end`` the trained model, still in memory,
is evaluated with lm-eval's own task (GSM8K by default); with ``baseline=True`` the
untrained model is evaluated at ``on_train_begin`` too and the final report shows the
change. Results go to ``<output_dir>/eval/<task>.json`` (main process only), to the
trainer's log (``lm_eval/<task>/<filter>/<metric>``) and to a printed table.

A failing evaluation never fails the training run: the exception is logged with its
traceback, written to ``<output_dir>/eval/error.json`` and added to the log history
(``lm_eval/error``); training continues to its end and the model is saved as usual. The
caller then reads :attr:`EvalCallback.errors` and ends with
:data:`~midblock_plugin.evaluation.preflight.EVAL_FAILED_EXIT` (the TRL example does; the
Axolotl plugin raises :class:`~midblock_plugin.evaluation.preflight.EvaluationFailed` after the save).

Distributed: see :mod:`midblock_plugin.evaluation.distributed` (DDP ranks score disjoint
shards; ZeRO-3 / FSDP ranks run in lockstep; rank 0 writes).

>>> from trl import SFTTrainer, SFTConfig  # doctest: +SKIP
>>> trainer = SFTTrainer(model=..., args=SFTConfig(...), train_dataset=...)  # doctest: +SKIP
>>> trainer.add_callback(EvalCallback(EvalSettings(limit=250), trainer=trainer))  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from midblock_plugin.evaluation.preflight import preflight
from midblock_plugin.evaluation.results import error_file_name, flat_metrics, log_prefix, write_error
from midblock_plugin.evaluation.runner import evaluate_model
from midblock_plugin.evaluation.settings import EvalSettings
from midblock_plugin.evaluation.tasks import plan_tasks


logger = logging.getLogger(__name__)


class EvalCallback(TrainerCallback):
    """Evaluate with lm-eval at train end (and, optionally, at train start).

    Args:
        settings: :class:`EvalSettings` (default: GSM8K, lm-eval's defaults).
        trainer: the trainer, if at hand; metrics are then logged through ``trainer.log``
            and so reach every reporter (W&B, TensorBoard, ...). Without it they are only
            appended to ``state.log_history``. :meth:`bind` sets it later.
        output_dir: where ``eval/`` goes; default: the training arguments' ``output_dir``.
        check: validate the task names against lm-eval's index now (a few seconds), and that
            GSM8K can be found (:func:`~midblock_plugin.evaluation.preflight.preflight`), so a
            typo or a missing dataset fails before training rather than after it.
        final_on_train_end: run the final evaluation at ``on_train_end`` (default). An
            integration that prefers to evaluate after the model is saved (Axolotl's
            ``post_train`` hook) sets ``False`` and calls :meth:`run_final` itself.

    Attributes:
        reports: ``{"baseline": report, "final": report}`` as returned by :func:`evaluate_model`.
        errors: ``{label: "ErrorType: message"}`` for evaluations that failed.
    """

    def __init__(
        self,
        settings: EvalSettings | None = None,
        trainer: Any = None,
        output_dir: str | None = None,
        check: bool = True,
        final_on_train_end: bool = True,
    ) -> None:
        self.settings = settings if settings is not None else EvalSettings()
        if not isinstance(self.settings, EvalSettings):
            raise ValueError(
                f"settings must be an EvalSettings, got {type(self.settings).__name__}; use EvalSettings.from_dict(...)."
            )
        self.trainer = trainer
        self.output_dir = output_dir
        self.final_on_train_end = final_on_train_end
        self.reports: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        if self.settings.enabled and check:
            preflight(self.settings)  # GSM8K nowhere (offline, no local copy): fail now, not after training
            plan_tasks(self.settings)  # unknown task / bad data dir: fail now too
            if self.settings.backend != "in-memory":
                from midblock_plugin.evaluation.saved import check_backend

                check_backend(self.settings.backend, self.settings)  # vLLM missing: fail before training

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, **kwargs):
        if not (self.settings.enabled and self.settings.baseline) or "baseline" in self.reports:
            return
        if state.global_step > 0:
            logger.warning(
                "lm-eval baseline skipped: training resumes at step %d, so the model is not the untrained one.",
                state.global_step,
            )
            return
        self.run("baseline", args, state, kwargs.get("model"), _tokenizer(kwargs))

    def on_train_end(self, args, state, control, **kwargs):
        if self.settings.backend != "in-memory":
            return  # evaluated after the save, in its own process: run_after_save(model_dir)
        if self.settings.enabled and self.final_on_train_end:
            self.run("final", args, state, kwargs.get("model"), _tokenizer(kwargs))

    def run_final(self, trainer: Any) -> dict[str, Any] | None:
        """Run the final evaluation now on ``trainer``'s model (e.g. after it was saved).

        Call it on every rank (under DDP / ZeRO-3 the ranks cooperate). Never raises.
        """
        if not self.settings.enabled:
            return None
        if self.trainer is None:
            self.trainer = trainer
        tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
        return self.run("final", trainer.args, trainer.state, trainer.model, tokenizer)

    def run_after_save(
        self, model_dir: str | Path, output_dir: str | Path | None = None, state: Any = None
    ) -> dict[str, Any] | None:
        """The final evaluation of the *saved* model in its own process (``settings.backend``
        ``"hf"`` or ``"vllm"``: :func:`~midblock_plugin.evaluation.saved.evaluate_after_save`).

        Call it on every rank once the model is saved; rank 0 runs ``midblock eval`` and gets
        the report, other ranks return ``None``. Never raises (failures are recorded in
        ``errors`` and ``<output_dir>/eval/error.json``).
        """
        from midblock_plugin.evaluation.saved import _rank, evaluate_after_save

        if not self.settings.enabled:
            return None
        out_dir = Path(output_dir or self.output_dir or model_dir)
        state = state if state is not None else getattr(self.trainer, "state", None)
        try:
            report = evaluate_after_save(model_dir, self.settings, output_dir=out_dir)
        except Exception as exc:  # noqa: BLE001 - an evaluation must never fail the training run
            self.errors["final"] = f"{type(exc).__name__}: {exc}"
            if _rank() == 0:
                with contextlib.suppress(OSError):
                    write_error(out_dir / self.settings.output_subdir, "final", exc, traceback.format_exc())
                logger.error(
                    "lm-eval evaluation after the save failed; the saved model is kept.\n%s", traceback.format_exc()
                )
                print(f"lm-eval final evaluation (after the save) FAILED: {self.errors['final']}", flush=True)
            return None
        if report is None:
            return None
        self.reports["final"] = report
        self.errors.pop("final", None)
        (out_dir / self.settings.output_subdir / error_file_name("final")).unlink(missing_ok=True)
        if state is not None:
            logs = {
                f"{log_prefix('final')}/{report['task']}/{filt}/{metric}": float(value)
                for filt, metrics in report.get("metrics", {}).items()
                for metric, value in metrics.items()
                if value is not None and "task" in report
            }
            self._log(logs, state)
        return report

    # ------------------------------------------------------------------ work
    def run(self, label: str, args, state, model, tokenizer) -> dict[str, Any] | None:
        """Evaluate now under ``label``; never raises (failures are reported and recorded).

        Integrations that want the evaluation at another point (e.g. after the model is
        saved) can call this directly with the trainer's ``args``, ``state``, model and tokenizer.
        """
        out_dir = self.output_dir or getattr(args, "output_dir", None)
        main = bool(getattr(state, "is_world_process_zero", True))
        try:
            if model is None:
                raise ValueError("the trainer passed no model to the callback")
            report = evaluate_model(
                model,
                tokenizer,
                self.settings,
                output_dir=out_dir,
                label=label,
                is_main_process=main,
                baseline=self.reports.get("baseline") if label == "final" else None,
                engine=_deepspeed_engine(self.trainer),
            )
        except Exception as exc:  # noqa: BLE001 - an evaluation must never fail the training run
            tb = traceback.format_exc()
            message = f"{type(exc).__name__}: {exc}"
            self.errors[label] = message
            where = ""
            if main and out_dir:
                try:
                    where = f"; details in {write_error(Path(out_dir) / self.settings.output_subdir, label, exc, tb)}"
                except OSError as write_exc:  # pragma: no cover - disk full, read-only, ...
                    where = f"; could not write error file ({write_exc})"
            logger.error(
                "lm-eval %s evaluation failed; training itself is unaffected and the model is kept%s.\n%s",
                label,
                where,
                tb,
            )
            if main:
                print(f"lm-eval {label} evaluation FAILED: {message}{where}", flush=True)
            self._log({f"{log_prefix(label)}/error": message}, state)
            return None
        self.reports[label] = report
        self.errors.pop(label, None)
        if main and out_dir:
            stale = Path(out_dir) / self.settings.output_subdir / error_file_name(label)
            stale.unlink(missing_ok=True)
        self._log(flat_metrics(report), state)
        return report

    def _log(self, logs: dict[str, Any], state) -> None:
        if self.trainer is not None and hasattr(self.trainer, "log"):
            self.trainer.log(dict(logs))  # appends to state.log_history and calls every reporter's on_log
        else:
            state.log_history.append({**logs, "step": state.global_step})
        logger.info("lm-eval: %s", logs)


def _deepspeed_engine(trainer: Any) -> Any:
    wrapped = getattr(trainer, "model_wrapped", None)
    return wrapped if hasattr(wrapped, "empty_partition_cache") else None


def _tokenizer(kwargs: dict[str, Any]) -> Any:
    return kwargs.get("processing_class") or kwargs.get("tokenizer")
