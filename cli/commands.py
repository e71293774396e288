"""The list of sub-commands; each lives in its own module under cli/."""

from __future__ import annotations

from .audit import audit_command
from .balance import balance_command
from .demo import demo_command
from .demo_data import demo_data_command
from .env import env_command
from .evaluate import evaluate_command, evaluate_synthesis_command
from .export import export_command
from .ingest import ingest_command
from .train import train_command

ALL = [audit_command, balance_command, demo_command, demo_data_command, env_command, evaluate_command, evaluate_synthesis_command, export_command, ingest_command, train_command]
