"""The list of sub-commands; each lives in its own module under cli/."""

from __future__ import annotations

from .env import env_command

ALL = [env_command]
