"""Checkpoint I/O: public TD-MPC2 files (old and new API), TD-MPC-Opt quantized releases, and our own.

Public files are ``torch.save({"model": state_dict})``. Our files add ``"config"`` (the ModelConfig
as a dict) and ``"format"``; every file is read with ``torch.load(weights_only=True)``.
:func:`load_checkpoint` reads them all, and the quantized files and safetensors exports of
:mod:`tdmpc_opt_lib.quantize` (through :mod:`tdmpc_opt_lib.quantize.files`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from .config import MODEL_SIZES, ModelConfig, TaskSet, model_config, task_set as resolve_task_set
from .world_model import WorldModel

FORMAT = "tdmpc_opt/1"
_LN_NAMES = ("weight", "bias", "ln.weight", "ln.bias")


class CheckpointError(ValueError):
    """A file that cannot be read as, or does not fit, the requested world model."""


class SaveError(OSError):
    """A write that failed (disk full, file-size limit, read-only or forbidden folder); the file or folder it
    was to replace is unchanged."""


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e`` (torch reports a failed write as a RuntimeError raised from it)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


@contextlib.contextmanager
def reporting_write(path: str | os.PathLike):
    """Turn an OSError (also one behind a torch error) raised in the block into a :class:`SaveError` naming
    ``path``, its cause and what is left."""
    try:
        yield
    except SaveError:
        raise
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None:
            raise
        path = Path(path)
        left = f"the previous {path.name} is unchanged" if path.exists() else f"{path.name} was not written"
        raise SaveError(cause.errno, f"cannot write {path}: {cause.strerror or cause}; {left}") from e


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """A temporary file in ``path``'s folder, synced and renamed onto ``path`` when the block ends: a kill never
    leaves half a file, and a failed write (:class:`SaveError`) leaves the previous one."""
    path = Path(path)
    with reporting_write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through :func:`atomic_file` (readers never see half of it)."""
    with atomic_file(path, "w") as f:
        f.write(text)


# torch 2.13 warns on every quantized-tensor creation; the paper's recipes and releases need them
QUANTIZED_DEPRECATION = r"(torch\.quantize_per_tensor, torch\.quantize_per_channel and other|TypedStorage is deprecated)"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def content_digest(path: str | os.PathLike | None) -> str | None:
    """Content hash of a checkpoint file or a dataset folder's index (a moved file is the same file); read once
    per (file, size, modification time) in a process."""
    if path is None:
        return None
    path = Path(path)
    target = path / "index.json" if path.is_dir() else path
    st = target.stat()
    key = (str(target.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(target, "sha1").hexdigest()[:12]
    return _DIGESTS[key]


def _hash_file(target: Path, algorithm: str):
    """``hashlib`` object of ``target``'s bytes, read in blocks."""
    with open(target, "rb") as f:
        return hashlib.file_digest(f, algorithm)


def read_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file safely (no pickle code execution); clear errors for non-checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    check_zip(path)
    try:
        with warnings.catch_warnings():  # the paper's int8/mixed files hold torch quantized tensors (deprecated)
            warnings.filterwarnings("ignore", message=QUANTIZED_DEPRECATION)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        hint = "the file looks truncated or corrupted" if zipfile.is_zipfile(path) or "zip" in str(e).lower() \
            else "it is not a torch checkpoint"
        raise CheckpointError(f"cannot read {path}: {hint} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    except Exception as e:  # weights_only refuses arbitrary pickles with UnpicklingError
        raise CheckpointError(f"cannot read {path} safely with weights_only=True: {str(e).splitlines()[0][:200]}") from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": obj}
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a TD-MPC2 checkpoint ({{'model': state_dict}})")


def check_zip(path: Path) -> None:
    """For a zip-based torch file, compare every entry with its stored CRC-32 (torch does not): a flipped
    byte gives a :class:`CheckpointError` instead of silently different weights."""
    key = (str(path.resolve()), *_stamp(path))
    if key in _VERIFIED or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # damaged headers: BadZipFile, zlib.error, ValueError, NotImplementedError, ...
        raise CheckpointError(f"cannot read {path}: the file looks truncated or corrupted "
                              f"({type(e).__name__}: {str(e)[:200]})") from e
    if bad is not None:
        raise CheckpointError(f"cannot read {path}: the file is corrupted (entry {bad} fails its CRC check)")
    _VERIFIED.add(key)          # a file read again unchanged (a teacher per run) is checked once per process


_VERIFIED: set[tuple[str, int, int]] = set()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def safetensors_digest(tensor_file: Path, config: dict) -> str:
    """SHA-256 of a safetensors export: its tensor file's bytes and its config (without the digest)."""
    h = _hash_file(tensor_file, "sha256")
    h.update(json.dumps({k: v for k, v in config.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def read_safetensors(path: str | os.PathLike) -> dict:
    """Read a safetensors export folder (``quantize.export_safetensors``) as :func:`read_file` reads a file:
    ``{"model": tensors, **config.json}``; a digest in config.json (exports of this version) is checked."""
    from safetensors.torch import load_file

    path = Path(path)
    tensors, config_file = path / "model.safetensors", path / "config.json"
    if not config_file.is_file() or not tensors.is_file():
        raise CheckpointError(f"{path} is not a safetensors export (needs config.json and model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file} is malformed: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} is malformed: not a JSON object")
    if "sha256" in config and config["sha256"] != safetensors_digest(tensors, config):
        raise CheckpointError(f"{path} is corrupted: model.safetensors and config.json do not match their digest")
    try:
        model = load_file(tensors)
    except Exception as e:  # safetensors' own error for a damaged header or size
        raise CheckpointError(f"cannot read {tensors}: {type(e).__name__}: {str(e)[:200]}") from e
    return {"model": model, **config}


def detect_format(sd: dict) -> str:
    """``ours``, ``new_api`` (tensordict Q params) or ``old_api`` (``_Qs.params.{k}``)."""
    if any(k.startswith("_Qs.params.") and k.count(".") >= 3 for k in sd) or any(k.startswith("_target_Qs_params.") for k in sd):
        return "new_api"
    if any(re.fullmatch(r"_Qs\.params\.\d+", k) for k in sd):
        return "old_api"
    if any(re.fullmatch(r"_Qs\.\d+\.weight", k) for k in sd):
        return "ours"
    raise CheckpointError("state dict has no Q-ensemble keys (_Qs.params.* or _Qs.N.weight): "
                          f"not a TD-MPC2 world model; first keys: {list(sd)[:6]}")


def dequantize(sd: dict) -> dict[str, torch.Tensor]:
    """Every tensor as float32: quantized tensors are dequantized, fp16/bf16 upcast."""
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        if v.is_quantized:
            v = v.dequantize()
        out[k] = v.float() if v.is_floating_point() else v
    return out


def from_public(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an old- or new-API public state dict to our module names (drops tensordict bookkeeping)."""
    fmt = detect_format(sd)
    out = {}
    for k, v in sd.items():
        if fmt == "old_api" and (m := re.fullmatch(r"_(target_)?Qs\.params\.(\d+)", k)):
            i = int(m.group(2))
            out[f"_{m.group(1) or ''}Qs.{i // 4}.{_LN_NAMES[i % 4]}"] = v
        elif fmt == "new_api" and (m := re.fullmatch(r"_(Qs\.params|target_Qs_params)\.(\d+\..+)", k)):
            out[("_Qs." if m.group(1) == "Qs.params" else "_target_Qs.") + m.group(2)] = v
        elif k.startswith(("_detach_Qs_params.", "_Qs.params.", "_target_Qs_params.")) or "__" in k:
            continue  # detached copy of the Qs, or tensordict metadata (__batch_size, __device)
        elif k in ("_action_masks", "log_std_min", "log_std_dif"):
            continue  # buffers derived from the task set / config
        else:
            out[k] = v
    return out


def to_public(model: WorldModel, api: str = "new") -> dict[str, torch.Tensor]:
    """Our state dict renamed to the public TD-MPC2 layout (``api`` = "new" or "old")."""
    out = {}
    for k, v in model.state_dict().items():
        m = re.fullmatch(r"_(target_)?Qs\.(\d+)\.(.+)", k)
        if m is None:
            out[k] = v
        elif api == "old":
            out[f"_{m.group(1) or ''}Qs.params.{int(m.group(2)) * 4 + _LN_NAMES.index(m.group(3))}"] = v
        else:
            rest = f"{m.group(2)}.{m.group(3)}"
            if m.group(1):
                out[f"_target_Qs_params.{rest}"] = v
            else:
                out[f"_Qs.params.{rest}"] = v
                out[f"_detach_Qs_params.{rest}"] = v
    if api == "new":
        out["_action_masks"] = model._action_masks.clone()
        out["log_std_min"] = torch.tensor(model.cfg.log_std_min)
        out["log_std_dif"] = torch.tensor(model.cfg.log_std_max - model.cfg.log_std_min)
    return out


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"missing tensor {key!r}: not a TD-MPC2 state-based world model")
    return tuple(sd[key].shape)


def infer_architecture(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """Read the architecture (dims, layers, heads, tasks) off the tensor shapes of our-named ``sd``."""
    num_tasks, task_dim = _shape(sd, "_task_emb.weight")
    enc_layers = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"_encoder\.state\.(\d+)\.weight", k))})
    if not enc_layers:
        raise CheckpointError("missing encoder tensors '_encoder.state.N.weight' (pixel encoders are not supported)")
    enc_out, enc_in = _shape(sd, "_encoder.state.0.weight")
    latent_dim = _shape(sd, f"_encoder.state.{enc_layers[-1]}.weight")[0]
    mlp_dim = _shape(sd, "_dynamics.0.weight")[0]
    pi_out = _shape(sd, "_pi.2.weight")[0]
    num_q = _shape(sd, "_Qs.0.weight")[0]
    return {"num_tasks": num_tasks, "task_dim": task_dim, "obs_dim": enc_in - task_dim, "action_dim": pi_out // 2,
            "enc_dim": enc_out, "latent_dim": latent_dim, "num_enc_layers": len(enc_layers), "mlp_dim": mlp_dim,
            "num_q": num_q, "num_bins": _shape(sd, "_reward.2.weight")[0]}


def _size_of(arch: dict[str, int]) -> int | None:
    for size, (enc, mlp, latent, layers, num_q, _) in MODEL_SIZES.items():
        if (enc, mlp, latent, layers, num_q) == (arch["enc_dim"], arch["mlp_dim"], arch["latent_dim"],
                                                 arch["num_enc_layers"], arch["num_q"]):
            return size
    return None


def config_for(arch: dict[str, int], tasks: TaskSet, model_size: int | None, path: Path) -> ModelConfig:
    """Check an inferred architecture against the requested task set / size and build its config."""
    problems = []
    if arch["num_tasks"] != len(tasks.tasks):
        problems.append(f"{arch['num_tasks']} task embeddings, task set {tasks.name!r} has {len(tasks.tasks)} tasks")
    if arch["obs_dim"] != tasks.obs_pad:
        problems.append(f"observation size {arch['obs_dim']}, task set {tasks.name!r} pads to {tasks.obs_pad}")
    if arch["action_dim"] != tasks.action_pad:
        problems.append(f"action size {arch['action_dim']}, task set {tasks.name!r} pads to {tasks.action_pad}")
    found = _size_of(arch)
    if model_size is not None and found != model_size:
        exp = MODEL_SIZES.get(model_size)
        want = dict(zip(("enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q"), exp)) if exp else {}
        diff = ", ".join(f"{k} expected {v} found {arch[k]}" for k, v in want.items() if arch[k] != v)
        problems.append(f"model_size={model_size} requested but the file is "
                        f"{'size ' + str(found) if found else 'a custom size'} ({diff or 'unknown size'})")
    if problems:
        raise CheckpointError(f"{path} does not fit: " + "; ".join(problems))
    dims = {k: arch[k] for k in ("enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q", "task_dim", "num_bins")}
    return model_config(found, tasks, **dims)


def check_state_dict(model: WorldModel, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    shapes = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(sd[k].shape)}"
              for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or extra or shapes:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []) + \
                ([f"mis-shaped {shapes}"] if shapes else [])
        raise CheckpointError(f"{path} does not match the world model: " + "; ".join(parts))


def is_quantized_file(obj: dict) -> bool:
    """Whether a file object (:func:`read_file`) was written by ``quantize.save_quantized``."""
    return str(obj.get("format", "")).startswith("tdmpc_opt/") and bool(obj.get("quantized"))


def load_checkpoint(path: str | os.PathLike, task_set: str | TaskSet | list[str] | None = None,
                    model_size: int | None = None, device: str | torch.device = "cpu") -> WorldModel:
    """Load any supported checkpoint into a :class:`WorldModel` in eval mode.

    Reads public TD-MPC2 files (old and new API), the paper's released fp16 / mixed / int8 files, files of
    :func:`save_checkpoint`, quantized files of :mod:`tdmpc_opt_lib.quantize` and its safetensors export
    folders. Weights are float32 (``int8-dynamic`` files: int8 layers). ``task_set`` defaults to the file's
    own (our files) or ``mt30`` (public files) and is checked; ``model_size`` is inferred from the shapes
    when not given and checked when given.
    """
    path = Path(path)
    obj = read_safetensors(path) if path.is_dir() else read_file(path)
    if is_quantized_file(obj):
        from .quantize.files import model_from_quantized  # imported here: the quantize package imports this module
        model = model_from_quantized(obj, path, task_set, model_size)
    else:
        fmt = detect_format(obj["model"])
        sd = dequantize(obj["model"])
        if fmt != "ours":
            sd = from_public(sd)
        model = build_model(sd, obj.get("config") if fmt == "ours" else None, path, task_set, model_size)
    return model.to(device).eval()


def build_model(sd: dict[str, torch.Tensor], config: dict | None, path: Path,
                task_set: str | TaskSet | list[str] | None = None, model_size: int | None = None) -> WorldModel:
    """A :class:`WorldModel` holding ``sd`` (float, our names). Its config is ``config`` (a file's, checked
    against ``task_set``) or, when None, inferred from the shapes for ``task_set`` (default mt30);
    ``model_size`` is checked either way. ``path`` names the file in errors."""
    arch = infer_architecture(sd)
    if config is not None:
        cfg = ModelConfig.from_dict(config)
        if task_set is not None and (requested := resolve_task_set(task_set)).tasks != cfg.tasks.tasks:
            raise CheckpointError(f"{path} was trained on tasks {list(cfg.tasks.tasks)}, "
                                  f"not on the requested task set {requested.name!r}")
        config_for(arch, cfg.tasks, model_size, path)
    else:
        cfg = config_for(arch, resolve_task_set(task_set or "mt30"), model_size, path)
    model = WorldModel(cfg)
    check_state_dict(model, sd, path)
    model.load_state_dict(sd)
    return model


def save_checkpoint(model: WorldModel, path: str | os.PathLike, **extra) -> None:
    """Write ``{"model", "config", "format", **extra}`` atomically; :func:`load_checkpoint` reads it back exactly."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"model": state, "config": model.cfg.to_dict(), "format": FORMAT, **extra}, path)
