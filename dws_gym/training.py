"""Training utilities shared by the scripts: atomic checkpoints, LR schedule, torchrun/DDP setup, seeding, logging."""

from __future__ import annotations

import datetime
import gc
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "training_state.pt"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ``deterministic`` makes cuDNN pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


def pick_device(cuda: bool = True) -> torch.device:
    """``cuda`` when asked for and available (this rank's GPU under torchrun), else the CPU."""
    if cuda and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def lr_at(step: int, *, base_lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * base_lr`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress)))


@dataclass
class DistInfo:
    """Where this process stands in a torchrun job (``world_size == 1`` when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise ``torch.distributed`` when launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        # Rank 0 alone trains the reward head, evaluates, saves and uploads at the end while the others wait.
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=3)
        )
    return DistInfo(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=world)


def cleanup_distributed(info: DistInfo) -> None:
    """Wait for every rank, then free the process group (callers drop their DDP wrappers first: they hold it)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # DDP's reference cycles would otherwise keep the group's threads alive until exit


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, optimizer states, RNG states, plain data) to ``folder/training_state.pt`` atomically.

    The file is written beside the target and renamed over it, so a crash never leaves a half-written checkpoint and
    the previous one survives until the new one is complete. (Training state holds optimizer and RNG objects, so it
    uses torch's format; released weights are always safetensors.)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".training_state.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder / CHECKPOINT_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / CHECKPOINT_NAME


def load_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (only from a folder you wrote: it unpickles)."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume found no {CHECKPOINT_NAME} in {folder}; run without --resume to start fresh, or point "
            "--output-dir at the run to continue."
        )
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state(generator: torch.Generator, np_rng: np.random.Generator) -> dict[str, Any]:
    """Everything needed to continue the random streams of a run exactly."""
    return {"torch_generator": generator.get_state(), "numpy": np_rng.bit_generator.state}


def restore_rng(state: dict[str, Any], generator: torch.Generator, np_rng: np.random.Generator) -> None:
    generator.set_state(state["torch_generator"])
    np_rng.bit_generator.state = state["numpy"]


def global_rng_states() -> dict[str, Any]:
    """The global python, numpy and torch (and CUDA) random states, for a checkpoint that resumes exactly."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng_states(state: dict[str, Any]) -> None:
    """Undo :func:`global_rng_states`: the global streams continue where the checkpoint left them."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
