"""Model sizes, task sets and the derived quantities every other module reads.

Numbers follow the public TD-MPC2 agent (see ``shared/spec/TDMPC2.md``): a model size is
the approximate parameter count in millions, and a task set fixes the task order (which is
the row of the task embedding), the observation/action padding and per-task discounts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# name -> (obs_dim, action_dim); order = task index = task-embedding row = dataset `task` value.
MT30: dict[str, tuple[int, int]] = {
    "walker-stand": (24, 6), "walker-walk": (24, 6), "walker-run": (24, 6),
    "cheetah-run": (17, 6), "reacher-easy": (6, 2), "reacher-hard": (6, 2),
    "acrobot-swingup": (6, 1), "pendulum-swingup": (3, 1), "cartpole-balance": (5, 1),
    "cartpole-balance-sparse": (5, 1), "cartpole-swingup": (5, 1), "cartpole-swingup-sparse": (5, 1),
    "cup-catch": (8, 2), "finger-spin": (9, 2), "finger-turn-easy": (12, 2),
    "finger-turn-hard": (12, 2), "fish-swim": (24, 5), "hopper-stand": (15, 4),
    "hopper-hop": (15, 4), "walker-walk-backwards": (24, 6), "walker-run-backwards": (24, 6),
    "cheetah-run-backwards": (17, 6), "cheetah-run-front": (17, 6), "cheetah-run-back": (17, 6),
    "cheetah-jump": (17, 6), "hopper-hop-backwards": (15, 4), "reacher-three-easy": (8, 3),
    "reacher-three-hard": (8, 3), "cup-spin": (8, 2), "pendulum-spin": (3, 1),
}

# The embedded default task set: small enough to learn on a 2-core CPU; five embodiments,
# obs dims 5/3/6/8/9, action dims 1/1/2/2/2.
MT_MINI: tuple[str, ...] = ("cartpole-balance", "pendulum-spin", "reacher-easy", "cup-catch", "finger-spin")

# size -> (enc_dim, mlp_dim, latent_dim, num_enc_layers, num_q, task_dim for MT30)
MODEL_SIZES: dict[int, tuple[int, int, int, int, int, int]] = {
    1: (256, 384, 128, 2, 2, 96),
    5: (256, 512, 512, 2, 5, 64),
    19: (1024, 1024, 512, 3, 5, 64),
    48: (1792, 1792, 768, 4, 5, 64),
    317: (4096, 4096, 1376, 5, 8, 96),
}


@dataclass(frozen=True)
class TaskSet:
    """An ordered list of tasks with their true obs/action dims and the padding they imply."""

    name: str
    tasks: tuple[str, ...]
    obs_dims: tuple[int, ...]
    action_dims: tuple[int, ...]
    episode_lengths: tuple[int, ...]

    @property
    def obs_pad(self) -> int:
        return max(self.obs_dims)

    @property
    def action_pad(self) -> int:
        return max(self.action_dims)

    def index(self, task: str) -> int:
        """Task index of ``task``; raises a ValueError naming the known tasks otherwise."""
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(
                f"unknown task {task!r} for task set {self.name!r}; known tasks: {', '.join(self.tasks)}"
            ) from None

    def discounts(self) -> list[float]:
        return [discount(length) for length in self.episode_lengths]


def discount(episode_length: int) -> float:
    """TD-MPC2's heuristic discount from the episode length in agent steps (0.99 for 500)."""
    frac = episode_length / 5
    return float(min(max((frac - 1) / frac, 0.95), 0.995))


def task_set(name: str | TaskSet | list[str] | tuple[str, ...]) -> TaskSet:
    """Resolve ``mt30``, ``mt-mini``, or an explicit list of MT30 task names into a TaskSet.

    A custom list keeps its given order (that order is its embedding index).
    """
    if isinstance(name, TaskSet):
        return name
    if isinstance(name, str):
        key = name.lower()
        if key == "mt30":
            tasks: tuple[str, ...] = tuple(MT30)
        elif key in ("mt-mini", "mt_mini", "mtmini"):
            tasks = MT_MINI
        elif key == "mt80":
            raise ValueError("task set 'mt80' needs Meta-World, which this library does not run; "
                             "use 'mt30' or a list of MT30 task names")
        else:
            tasks = tuple(t.strip() for t in name.split(",") if t.strip())
    else:
        tasks = tuple(name)
    if not tasks:
        raise ValueError("empty task set")
    unknown = [t for t in tasks if t not in MT30]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known MT30 tasks: {', '.join(MT30)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task set lists a task twice: {tasks}")
    label = name.lower() if isinstance(name, str) and name.lower() in ("mt30", "mt-mini") else ",".join(tasks)
    return TaskSet(label, tasks, tuple(MT30[t][0] for t in tasks), tuple(MT30[t][1] for t in tasks),
                   tuple(500 for _ in tasks))


@dataclass
class ModelConfig:
    """Architecture of a multi-task TD-MPC2 world model for one task set."""

    tasks: TaskSet
    model_size: int | None = 1
    enc_dim: int = 256
    mlp_dim: int = 384
    latent_dim: int = 128
    num_enc_layers: int = 2
    num_q: int = 2
    task_dim: int = 96
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8
    dropout: float = 0.01
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    extra: dict = field(default_factory=dict)

    @property
    def obs_dim(self) -> int:
        return self.tasks.obs_pad

    @property
    def action_dim(self) -> int:
        return self.tasks.action_pad

    @property
    def num_tasks(self) -> int:
        return len(self.tasks.tasks)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["tasks"] = task_set(list(d["tasks"]) if not isinstance(d["tasks"], str) else d["tasks"])
        return cls(**d)


def model_config(model_size: int | None = 1, tasks: str | TaskSet | list[str] = "mt30", **overrides) -> ModelConfig:
    """Config of a public TD-MPC2 size (1/5/19/48/317) for a task set.

    ``model_size=None`` with ``overrides`` (enc_dim, mlp_dim, latent_dim, ...) describes a custom size.
    """
    ts = task_set(tasks)
    if model_size is not None and model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model_size {model_size}; public sizes are {sorted(MODEL_SIZES)} "
                         "(use model_size=None with enc_dim/mlp_dim/latent_dim/... for a custom size)")
    enc, mlp, latent, layers, num_q, task_dim = MODEL_SIZES[model_size or 1]
    cfg = ModelConfig(ts, model_size, enc, mlp, latent, layers, num_q, task_dim)
    for k, v in overrides.items():
        if k in ("tasks", "model_size") or not hasattr(cfg, k):
            raise ValueError(f"unknown model config field {k!r}")
        setattr(cfg, k, v)
    return cfg
