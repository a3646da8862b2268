"""One owner per trainer ``output_dir`` on the TRL / HF Trainer path, and a resume checked before
anything loads (issue 23, items 1 and 5).

Real tiny Llama, real ``trl.SFTTrainer``, 1-3 steps. The callback takes the lock and status
record of ``midblock run`` (``.midblock.lock``, ``midblock-run.json``): a second concurrent run
fails at once naming the other, a new run whose plan differs from the previous run's is refused
naming both plans unless ``MidBlockCallback(overwrite=True)`` (which removes the old files when
training starts), a resume with the same plan continues, the status ends ``complete`` only when
training ended and ``incomplete`` with the error otherwise. ``trainer.train(resume_from_checkpoint=...)``
with another window or rank stops before the checkpoint is loaded.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from midblock_plugin import MidBlockConfig, io
from midblock_plugin.integrations.trl import MidBlockCallback, build_plan
from midblock_plugin.testing import GSM8K_DIR, tiny_model, tiny_tokenizer
from midblock_plugin.testing.launch import hold_run_directory
from midblock_plugin.training.resume import PlanMismatch
from tests.test_trl import L, _dataset


ROOT = Path(__file__).resolve().parents[1]
RANK = 4  # baseline rank: layer rank floor(4 * 6 / 3) = 8 on the default window, layers 1-3
PLAN_A = "layers 1-3 of 6, lora rank 8 per layer"


class Boom(RuntimeError):
    pass


def _raise_at_first_step():
    from transformers import TrainerCallback

    class RaiseAtFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise Boom("at step 1")

    return RaiseAtFirstStep()


def _trainer(out, config=None, *, overwrite=False, bind=True, callbacks=(), set_args=None, **kw):
    """A bound SFTTrainer with MidBlockCallback on a tiny 6-layer Llama into ``out``."""
    from trl import SFTConfig, SFTTrainer

    model = tiny_model("llama", num_layers=L)
    plan = build_plan(model, config or MidBlockConfig(rank=RANK))
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        max_length=48,
        learning_rate=5e-3,
        seed=0,
        disable_tqdm=True,
        **{"max_steps": 1, "save_strategy": "no", **kw},
    )
    for name, value in (set_args or {}).items():  # attributes this transformers' arguments no longer have
        setattr(args, name, value)
    callback = MidBlockCallback(plan=plan, verbose=False, overwrite=overwrite)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(),
        processing_class=tiny_tokenizer(),
        peft_config=plan.lora_config(),
        callbacks=[*callbacks, callback],
    )
    if bind:
        callback.bind(trainer)
    return trainer


def _train(trainer, **kw):
    """Train, then save the final model into output_dir, as scripts do: a bound run is complete then."""
    trainer.train(**kw)
    trainer.save_model(trainer.args.output_dir)
    return trainer


def _status(out) -> dict:
    return json.loads((Path(out) / io.RUN_STATUS_JSON).read_text())


def _files(out) -> dict[str, bytes]:
    """Every file under ``out`` and its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


def _lock_is_free(out) -> bool:
    fd = os.open(Path(out) / io.RUN_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run on layers 1-3 (rank 8 per layer): checkpoint-1, checkpoint-2, the adapter."""
    out = tmp_path_factory.mktemp("finished") / "run"
    trainer = _trainer(out, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model(str(out))
    return out


def _copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# --------------------------------------------------------------------------- the record


def test_a_finished_run_is_recorded_complete_and_releases_the_directory(finished):
    status = _status(finished)
    assert status["status"] == "complete" and status["kind"] == "training"
    assert status["pid"] == os.getpid() and status["host"] == socket.gethostname()
    assert status["plan"] == PLAN_A and status["started"] <= status["finished"]
    assert _lock_is_free(finished)
    assert json.loads((finished / io.PLAN_JSON).read_text())["layers"] == [1, 2, 3]


def test_a_bound_run_is_complete_once_its_final_model_is_saved(tmp_path):
    """Between the end of training and the saved model the run still holds the directory (a kill
    there leaves 'running' with a dead pid, read as incomplete); the save_model after training
    completes it, and a save that fails records incomplete with its error."""
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.train()
    assert _status(out)["status"] == "running" and not _lock_is_free(out)
    trainer.save_model(str(out))
    assert _status(out)["status"] == "complete" and _lock_is_free(out)

    out = tmp_path / "full-disk"
    trainer = _trainer(out)
    trainer.train()

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    trainer.model.save_pretrained = no_space  # what PEFT's save hits on a full disk
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model(str(out))
    status = _status(out)
    assert status["status"] == "incomplete" and "No space left on device" in status["error"], status
    assert _lock_is_free(out)


def test_a_run_that_saves_no_final_model_is_complete_at_exit(tmp_path):
    """Checkpoints only, no save_model after training: the process's exit records complete."""
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_dir_ownership import _status, _trainer
        _trainer({str(tmp_path / "ckpt")!r}, max_steps=1, save_strategy="steps", save_steps=1).train()
        print(_status({str(tmp_path / "ckpt")!r})["status"])
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "running"  # until the process ends
    assert _status(tmp_path / "ckpt")["status"] == "complete" and (tmp_path / "ckpt" / "checkpoint-1").is_dir()


def test_an_exception_in_training_records_incomplete_with_the_error(tmp_path):
    out = tmp_path / "run"
    trainer = _trainer(out, max_steps=2, callbacks=[_raise_at_first_step()])
    with pytest.raises(Boom):
        trainer.train()
    status = _status(out)
    assert status["status"] == "incomplete" and status["error"] == "Boom: at step 1", status
    assert _lock_is_free(out)
    _train(_trainer(out))  # the same plan again: accepted, and it ends complete
    assert _status(out)["status"] == "complete"


def test_unbound_callback_failure_is_taken_over_in_process_and_recorded_at_exit(tmp_path):
    """Without bind() nothing sees the exception: the status stays ``running`` while this process
    lives, a new trainer in the same process takes the directory over, and a process that exits
    with training unfinished records ``incomplete``."""
    out = tmp_path / "run"
    trainer = _trainer(out, bind=False, max_steps=2, callbacks=[_raise_at_first_step()])
    with pytest.raises(Boom):
        trainer.train()
    assert _status(out)["status"] == "running" and _status(out)["pid"] == os.getpid()
    _trainer(out, bind=False).train()  # not "in use by pid <this process>"
    assert _status(out)["status"] == "complete"

    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_dir_ownership import _raise_at_first_step, _trainer
        _trainer({str(tmp_path / "exits")!r}, bind=False, max_steps=2, callbacks=[_raise_at_first_step()]).train()
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 1 and "Boom: at step 1" in r.stderr, r.stderr[-3000:]
    status = _status(tmp_path / "exits")
    assert status["status"] == "incomplete" and "the process exited before training ended" in status["error"]


# --------------------------------------------------------------------------- one owner


def test_a_second_concurrent_run_fails_at_once_naming_the_other(tmp_path):
    out = tmp_path / "run"
    with hold_run_directory(out) as holder:
        with pytest.raises(io.RunDirectoryError) as info:
            _trainer(out)  # refused at trainer init, before the optimizer or a step
        message = str(info.value)
        assert f"is in use: another midblock run (pid {holder.pid} on {socket.gethostname()})" in message, message
        assert "choose another output_dir" in message
        assert not (out / io.PLAN_JSON).exists()
    # killed: its 'running' record reads as incomplete, and the directory can be trained into
    assert io.run_status(out)["status"] == "incomplete" and io.run_status(out)["stale"]
    _train(_trainer(out))
    assert _status(out)["status"] == "complete" and _status(out)["pid"] == os.getpid()


@pytest.mark.parametrize(
    "config, plan_b",
    [
        (MidBlockConfig(rank=RANK, layers="2-4"), "layers 2-4 of 6, lora rank 8 per layer"),
        (MidBlockConfig(rank=8), "layers 1-3 of 6, lora rank 16 per layer"),
    ],
    ids=["window", "rank"],
)
def test_a_new_run_with_another_plan_is_refused_naming_both_plans(finished, tmp_path, config, plan_b):
    out = _copy(finished, tmp_path)
    before = _files(out)
    with pytest.raises(io.RunDirectoryError) as info:
        _trainer(out, config)
    message = str(info.value)
    assert f"{out} holds a finished midblock run" in message
    assert f"trained on {PLAN_A}; this run's plan is {plan_b}" in message, message
    assert "set MidBlockCallback(overwrite=True)" in message and "choose another output_dir" in message
    assert _files(out) == before  # nothing written, nothing removed


def test_the_same_plan_is_accepted_and_a_resume_continues(finished, tmp_path):
    out = _copy(finished, tmp_path)
    trainer = _train(_trainer(out, max_steps=3), resume_from_checkpoint=True)
    assert trainer.state.global_step == 3  # steps 1-2 came from checkpoint-2
    status = _status(out)
    assert status["status"] == "complete" and status["resumed_from"] == str(out / "checkpoint-2")
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_config.json").is_file()  # nothing removed


def test_overwrite_removes_the_previous_run_when_training_starts(finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "notes.txt").write_text("mine")  # not a run's file: never removed
    trainer = _trainer(out, MidBlockConfig(rank=RANK, layers="2-4"), overwrite=True)
    assert json.loads((out / io.PLAN_JSON).read_text())["layers"] == [1, 2, 3]  # nothing changed at init
    assert (out / "checkpoint-2").is_dir()
    trainer.train()
    assert not list(out.glob("checkpoint-*")) and not (out / "adapter_config.json").exists()
    assert json.loads((out / io.PLAN_JSON).read_text())["layers"] == [2, 3, 4]
    trainer.save_model(str(out))
    assert (out / "notes.txt").read_text() == "mine"
    status = _status(out)
    assert status["status"] == "complete" and status["plan"] == "layers 2-4 of 6, lora rank 8 per layer"
    assert {"checkpoint-1", "checkpoint-2", "adapter_config.json", "midblock"} <= set(status["replaced"]["files"])
    assert status["replaced"]["status"] == "complete"


def test_transformers_overwrite_output_dir_replaces_the_previous_run(finished, tmp_path):
    """transformers 4's TrainingArguments(overwrite_output_dir=True) is the framework's own switch."""
    out = _copy(finished, tmp_path)
    trainer = _train(_trainer(out, MidBlockConfig(rank=RANK, layers="2-4"), set_args={"overwrite_output_dir": True}))
    assert not list(out.glob("checkpoint-*")) and trainer.state.global_step == 1
    assert _status(out)["plan"] == "layers 2-4 of 6, lora rank 8 per layer"


@pytest.mark.parametrize("value", ["no", 1, None, ""])
def test_overwrite_is_true_or_false_only(value):
    with pytest.raises(ValueError, match=r"overwrite=.*: must be True or False"):
        MidBlockCallback(MidBlockConfig(), overwrite=value)


# --------------------------------------------------------------------------- resume through trainer.train


@pytest.mark.parametrize(
    "config, field",
    [
        # another rank: loading would fail on the tensor shapes; another window: it would load
        (MidBlockConfig(rank=8), "this run: layers 1-3 of 6, lora rank 16 per layer): r: checkpoint adapter 8"),
        (
            MidBlockConfig(rank=RANK, layers="2-4"),
            "this run: layers 2-4 of 6, lora rank 8 per layer): layers_to_transform: checkpoint adapter [1, 2, 3]",
        ),
    ],
    ids=["rank", "window"],
)
def test_train_resume_path_with_another_plan_is_refused_before_loading(finished, tmp_path, config, field):
    trainer = _trainer(tmp_path / "new", config, max_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    with pytest.raises(PlanMismatch) as info:
        trainer.train(resume_from_checkpoint=str(finished / "checkpoint-2"))
    message = str(info.value)
    assert f"cannot resume from {finished / 'checkpoint-2'}" in message, message
    assert f"(the checkpoint: {PLAN_A}; {field}" in message, message
    assert "Resume with the MidBlockConfig that checkpoint was trained with" in message
    assert trainer.state.global_step == 0  # the checkpoint's trainer state was not loaded
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert io.run_status(tmp_path / "new") is None  # the run never started


def test_train_resume_true_with_another_plan_is_refused_before_overwrite_removes_anything(finished, tmp_path):
    out = _copy(finished, tmp_path)
    trainer = _trainer(out, MidBlockConfig(rank=8), overwrite=True, max_steps=3)
    before = _files(out)
    with pytest.raises(
        PlanMismatch, match=r"cannot resume from .*checkpoint-2.*r: checkpoint adapter 8 vs the plan's 16"
    ):
        trainer.train(resume_from_checkpoint=True)
    assert _files(out) == before and trainer.state.global_step == 0


# --------------------------------------------------------------------------- several processes


def _torchrun(out, *extra):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(ROOT / "examples" / "trl" / "sft_midblock.py"), "--data", str(GSM8K_DIR / "train.jsonl")]
    cmd += ["--num-examples", "8", "--max-steps", "1", "--batch-size", "2", "--output-dir", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


@pytest.mark.slow
def test_ddp_rank_zero_owns_the_directory_and_a_refusal_stops_every_rank(tmp_path):
    out = tmp_path / "ddp"
    r = _torchrun(out, "--segments", "01110")
    assert r.returncode == 0, r.stderr[-4000:]
    status = _status(out)
    assert status["status"] == "complete" and status["plan"] == "layers 1-5 of 8, lora rank 25 per layer"
    assert _lock_is_free(out)
    r = _torchrun(out, "--segments", "01000")  # another window into the finished run: both ranks stop
    assert r.returncode != 0
    assert "holds a finished midblock run" in r.stderr, r.stderr[-4000:]
    assert "this run's plan is layers 1-2 of 8" in r.stderr
    assert _status(out) == status


# --------------------------------------------------------------------------- checkpoint space


def test_a_checkpoint_that_would_not_fit_is_refused_before_it_is_written(tmp_path, monkeypatch):
    """Free space is checked at train start and before each checkpoint is due, from the model's
    size: a disk too small for checkpoint-2 stops training at step 2 with one line naming it,
    checkpoint-1 stays whole, and the run is recorded incomplete."""
    from midblock_plugin import storage

    out = tmp_path / "run"
    trainer = _trainer(out, max_steps=3, save_strategy="steps", save_steps=1)
    free = {"bytes": 10**12}
    monkeypatch.setattr(storage, "free_bytes", lambda path: free["bytes"])

    from transformers import TrainerCallback

    class DiskFillsAfterStep1(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            free["bytes"] = 1024  # the first checkpoint filled the disk

    trainer.add_callback(DiskFillsAfterStep1())
    with pytest.raises(storage.NotEnoughSpace) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("not enough disk space for checkpoint-2: it needs about"), message
    assert str(out) in message and "1.0 KiB is free" in message, message
    assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file() and not (out / "checkpoint-2").exists()
    assert _status(out)["status"] == "incomplete" and "NotEnoughSpace" in _status(out)["error"]

    out = tmp_path / "never"
    trainer = _trainer(out, max_steps=2, save_strategy="steps", save_steps=1)
    with pytest.raises(storage.NotEnoughSpace, match="checkpoint-1"):
        trainer.train()  # free is still 1 KiB: refused before the first step
    assert trainer.state.global_step == 0 and not list(out.glob("checkpoint-*"))
