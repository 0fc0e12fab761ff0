"""``sv-engine fit``: Neural Layered Atlases for the user's own video, in minutes.

Modules: :mod:`video_input` (frames / masks), :mod:`flow` (DIS optical flow, consistency, motion
masks, background homographies), :mod:`losses` (the NLA objective), :mod:`trainer` (the loop,
checkpoint / resume), :mod:`datafolder` (atomic StableVideo data-folder writing), :mod:`report`
(PSNR, ``fit_report.json``, ``fit_preview.png``).
"""

from sv_engine.stablevideo.fit.trainer import FitOptions, FitResult, fit_arrays, fit_video

__all__ = ["FitOptions", "FitResult", "fit_arrays", "fit_video"]
