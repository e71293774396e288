"""The list of sub-commands; each lives in its own module under cli/."""

from __future__ import annotations

from fesaug.cli.audit import audit_command
from fesaug.cli.balance import balance_command
from fesaug.cli.demo import demo_command
from fesaug.cli.demo_data import demo_data_command
from fesaug.cli.env import env_command
from fesaug.cli.evaluate import evaluate_command, evaluate_synthesis_command
from fesaug.cli.export import export_command
from fesaug.cli.ingest import ingest_command
from fesaug.cli.review import review_command
from fesaug.cli.train import train_command

ALL = [
    audit_command,
    balance_command,
    demo_command,
    demo_data_command,
    env_command,
    evaluate_command,
    evaluate_synthesis_command,
    export_command,
    ingest_command,
    review_command,
    train_command,
]
