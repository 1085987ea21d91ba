"""tdmpc_opt_lib: TD-MPC2 world models, MPPI planning, reward distillation and quantization (TD-MPC-Opt)."""
from .config import ModelConfig, TaskSet, model_config, task_set
from .world_model import WorldModel

__all__ = ["ModelConfig", "TaskSet", "WorldModel", "model_config", "task_set"]
__version__ = "0.1.0"
