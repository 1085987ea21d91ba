"""MT30 environments: the 30 DMControl tasks of TD-MPC2 (19 suite tasks + 11 custom ones)."""
import logging

from .gl import import_dm_control


class _DropDeprecatedMassAttribute(logging.Filter):
    """dm_control's own XML uses MuJoCo's deprecated ``settotalmass``; MuJoCo logs it for every env."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "settotalmass" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropDeprecatedMassAttribute())

import_dm_control()  # before anything imports dm_control: a broken GL back-end must not break imports

from .env import ACTION_REPEAT, EPISODE_LENGTH, Env, MultiTaskEnv, make_env  # noqa: E402

__all__ = ["ACTION_REPEAT", "EPISODE_LENGTH", "Env", "MultiTaskEnv", "make_env"]
