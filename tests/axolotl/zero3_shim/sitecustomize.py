"""Test-only shim (never shipped with the package): Axolotl's DeepSpeed path on CPU with gloo.

``tests/axolotl/test_zero3.py`` puts this directory on ``PYTHONPATH`` (Python imports
``sitecustomize`` at start-up) and sets ``MIDBLOCK_CPU_GLOO_SHIM=1`` and ``DS_ACCELERATOR=cpu``.
Nothing here is needed on GPUs, where NCCL exists and accelerate picks it itself.

* A CUDA build of torch without a GPU (Axolotl 0.21 on Python 3.12): see the end of the file.

* Axolotl 0.19 starts DeepSpeed's process group with a hard-coded ``dist_backend="nccl"``
  when it runs as a single process (``axolotl/utils/trainer.py: setup_deepspeed_env``);
  NCCL needs a GPU, so every ``init_process_group(backend="nccl")`` becomes ``gloo``.
* Under a launcher (``LOCAL_RANK`` set) with ``ACCELERATE_USE_DEEPSPEED=true`` and no GPU,
  accelerate's ``PartialState()`` finds no backend: DeepSpeed then starts gloo by itself,
  but accelerate records one process, the HF batch arithmetic assumes world size 1 and
  ``deepspeed.initialize`` fails ("train_batch_size is not equal to micro_batch_per_gpu *
  gradient_acc_step * world_size 1 != 1 * 1 * 2"). The shim passes ``backend="gloo"`` to
  the first ``PartialState``, as a CPU TRL script does itself (see docs: DeepSpeed on CPU).
"""

import os


if os.environ.get("MIDBLOCK_CPU_GLOO_SHIM") == "1":
    import torch
    import torch.distributed as _dist

    _NCCL = ("nccl", "cuda:nccl,cpu:gloo", "cpu:gloo,cuda:nccl")
    _original_init_process_group = _dist.init_process_group

    def _init_process_group(*args, **kwargs):
        if kwargs.get("backend") in _NCCL:
            kwargs["backend"] = "gloo"
        elif args and args[0] in _NCCL:
            args = ("gloo",) + tuple(args[1:])
        return _original_init_process_group(*args, **kwargs)

    _dist.init_process_group = _init_process_group

    if not torch.cuda.is_available():
        from accelerate import state as _state

        _original_partial_init = _state.PartialState.__init__

        def _partial_state_init(self, cpu: bool = False, **kwargs):
            if (
                not _state.PartialState._shared_state  # first construction only
                and kwargs.get("backend") is None
                and os.environ.get("LOCAL_RANK") is not None
            ):
                kwargs["backend"] = "gloo"
            return _original_partial_init(self, cpu=cpu, **kwargs)

        _state.PartialState.__init__ = _partial_state_init

    if not torch.cuda.is_available():
        # PyPI's torch for Python 3.12 (the Axolotl 0.21 environment) is a CUDA build: on a machine
        # without a GPU its torch.cuda.can_device_access_peer raises RuntimeError ("Found no NVIDIA
        # driver"), which Axolotl's multi-process check_cuda_p2p_support does not catch; a CPU build
        # raises the AssertionError it does catch ("assume p2p is fine"). Raise that one here too.
        def _no_peer_access(device, peer_device):
            raise AssertionError("no CUDA device: peer access not checked (midblock CPU test shim)")

        torch.cuda.can_device_access_peer = _no_peer_access
