"""sv-engine: an optimized inference engine for StableVideo (layered-atlas text-driven video editing).

Subpackages: ``sv_engine.stablevideo`` (reference pipeline), ``sv_engine.kernels`` (CUDA ops),
``sv_engine.engine`` (inference backends), ``sv_engine.export`` (ONNX export specs),
``sv_engine.benchmarks`` (``sv-engine bench``), ``sv_engine.cli`` (the command line, imported by nothing).
"""

from sv_engine.errors import SvEngineError

__version__ = "0.1.0"
__all__ = ["SvEngineError", "__version__"]
