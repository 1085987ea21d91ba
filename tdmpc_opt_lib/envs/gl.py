"""Import dm_control whatever the GL set-up: rendering is optional for the MT30 environments.

dm_control picks its OpenGL back-end when ``dm_control.mujoco`` is first imported and raises
there if the back-end named by ``MUJOCO_GL`` (or the last automatic candidate, OSMesa) is
broken. Physics does not need GL, so on such a failure we retry with ``MUJOCO_GL=disable``;
``Env.render`` then returns None with a warning that carries the reason kept here.
"""
from __future__ import annotations

import os
import sys

FALLBACK_REASON: str | None = None
"""Why rendering was disabled at import time (None when dm_control imported normally)."""


def import_dm_control() -> None:
    """Import ``dm_control.mujoco``, falling back to ``MUJOCO_GL=disable`` if its GL back-end fails."""
    global FALLBACK_REASON
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless Linux: GLFW needs a display, EGL does not
    try:
        import dm_control.mujoco  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any back-end failure; a non-GL error re-raises below
        FALLBACK_REASON = (f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '<unset>')} failed to load "
                           f"({type(error).__name__}: {error})")
        for name in [m for m in sys.modules if m == "dm_control" or m.startswith("dm_control.")]:
            del sys.modules[name]
        os.environ["MUJOCO_GL"] = "disable"
        import dm_control.mujoco  # noqa: F401
