"""The one device setting: ``"auto"`` (CUDA when available, else the CPU) or a torch device name."""
from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(spec: str | torch.device | None = AUTO) -> torch.device:
    """``spec`` as a torch device: ``"auto"``/None → ``cuda`` when available, else ``cpu``; a CUDA device that
    this machine lacks is refused with a clear error."""
    if spec is None or spec == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested, but CUDA is not available here (torch {torch.__version__}); "
                         "use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def is_device_spec(v: object) -> bool:
    """Whether ``v`` names a device :func:`resolve_device` could accept somewhere (not checked against this
    machine, so that parameters can name a GPU the report machine has)."""
    if not isinstance(v, str):
        return False
    if v == AUTO:
        return True
    try:
        torch.device(v)
    except RuntimeError:
        return False
    return True
