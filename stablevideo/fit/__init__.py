"""``sv-engine fit``: Neural Layered Atlases for the user's own video, in minutes.

Modules: :mod:`video_input` (frames / masks), :mod:`flow` (DIS optical flow, consistency, motion
masks, background homographies), :mod:`losses` (the NLA objective), :mod:`trainer` (the loop,
checkpoint / resume; the networks are :mod:`sv_engine.stablevideo.nla`'s or :mod:`sv_engine.stablevideo.hash_nla`'s),
:mod:`distill` (hash grids -> NLA MLPs), :mod:`datafolder` (atomic StableVideo data-folder writing), :mod:`report`
(PSNR, ``fit_report.json``, ``fit_preview.png``).
"""

from sv_engine.stablevideo.fit.trainer import FitOptions, FitResult, fit_arrays, fit_video

__all__ = ["FitOptions", "FitResult", "fit_arrays", "fit_video"]
