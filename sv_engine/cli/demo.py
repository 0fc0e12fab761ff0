"""``sv-engine demo``: ``edit`` on the bundled clip with tiny random-weight models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sv_engine.cli.app import app
from sv_engine.cli.edit import run_edit
from sv_engine.cli.options import Device, Force


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for demo.mp4 and its preview/report.")] = Path("demo-out"),
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 20,
    image_resolution: Annotated[
        int,
        typer.Option(help="Short side of the diffusion images (SV: 512; 256 keeps the CPU demo to about a minute)."),
    ] = 256,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Run the whole edit on the bundled demo clip (tiny random models: finishes in minutes on a CPU)."""
    from sv_engine.stablevideo.demo import demo_data_dir

    run_edit(
        demo_data_dir(),
        "a red plush toy",
        "a snowy mountain landscape",
        out / "demo.mp4",
        steps=steps,
        seed=0,
        tiny=True,
        image_resolution=image_resolution,
        device=device,
        force=force,
    )
