"""Root pytest configuration (applies to tests/ and to the notebooks run by --nbval-lax)."""
import os

# Notebook kernels inherit this: the parameters cell then resolves to the smoke profile.
os.environ.setdefault("TDMPC_OPT_PROFILE", "smoke")
