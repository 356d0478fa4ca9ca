"""A rank's device: setting it up for NCCL, timing work on it, and keeping it out of replies.

On GPUs every rank owns one device (ctx.device = cuda:r) and every tensor that meets a collective
must live there; what goes back to the parent must not (CPU tensors only). CPU ranks (gloo) run
the same code with ctx.device = cpu, where tests/device_probe.py checks the same rules.
"""
from __future__ import annotations

import torch


def rank_device(backend: str, local_rank: int):
    """This rank's device, and what `init_process_group` needs for it: (device, extra kwargs).

    NCCL: GPU `local_rank`, made current and passed as `device_id`, so the communicator is made
    inside init_process_group (a setup error or a missing peer shows there, under the init
    timeout) and not inside the first collective of a step.
    TF32 off on every rank: with TF32 a float32 matmul keeps ~10 mantissa bits, so router logits
    move by ~1e-3 and a near-tie between two experts can flip, sending the token elsewhere than
    the float32 reference does; the course checks every distributed step against that reference.
    """
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    if backend != "nccl":
        return torch.device("cpu"), {}
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} needs GPU {local_rank}, but {torch.cuda.device_count()} GPU(s) "
                         "are visible: start at most one NCCL rank per GPU on each node")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device, {"device_id": device}


def host_only(value, where="result", depth=0):
    """Refuse a reply that holds a tensor not on the CPU: a CUDA tensor unpickled in the parent
    opens a CUDA context there on that GPU and keeps handles that dangle once the rank stops."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"{where} is on {value.device}: send results back to the parent as CPU tensors "
                             "(.cpu()), not tensors on the rank's device")
    elif depth < 6 and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            host_only(v, f"{where}[{i}]", depth + 1)
    elif depth < 6 and isinstance(value, dict):
        for k, v in value.items():
            host_only(v, f"{where}[{k!r}]", depth + 1)
    elif depth < 6 and hasattr(value, "__dataclass_fields__"):
        for k in value.__dataclass_fields__:
            host_only(getattr(value, k, None), f"{where}.{k}", depth + 1)


def synchronizer(device):
    """sync() waits for the kernels queued on `device` (a no-op on the CPU). CUDA kernels run
    after Python returns, so a clock read without it times the launches, not the work."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
