from __future__ import annotations

import json

import click

from fesaug.utils.provenance import package_versions


@click.command("env")
def env_command() -> None:
    """Print versions and devices, for bug reports."""
    info = package_versions()
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cpu_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    click.echo(json.dumps(info, indent=2))
