"""The bundled demo clip "skicat": 30 frames of 384×216 built from scikit-image photos, with an NLA
checkpoint fitted to analytic maps (see :mod:`.scene` for the ground truth, :mod:`.build_demo` for the fit).

    from sv_engine.stablevideo.demo import demo_data_dir
    from sv_engine.stablevideo.data import load_video_data
    video = load_video_data(demo_data_dir())
"""

from __future__ import annotations

from pathlib import Path

DEMO_NAME = "skicat"


def demo_data_dir() -> Path:
    """The packaged data folder (config.json, checkpoint, skicat/00000.jpg…)."""
    return Path(__file__).resolve().parent / "data" / DEMO_NAME


def demo_fit_report_path() -> Path:
    """The JSON report of the committed fit (achieved errors, timings) beside the data folder."""
    return Path(__file__).resolve().parent / "data" / f"{DEMO_NAME}.fit.json"


def __getattr__(name: str):
    # Lazy re-exports of the analytic ground truth (keeps `import sv_engine.stablevideo.demo` light).
    if name in {"analytic_maps", "analytic_textures", "analytic_fields", "render_frame", "AnalyticMaps"}:
        from sv_engine.stablevideo.demo import scene

        return getattr(scene, name)
    raise AttributeError(name)
