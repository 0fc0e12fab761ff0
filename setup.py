"""Maps the design card's top-level folders into the single import namespace `sv_engine`.

engine/ -> sv_engine.engine, export/ -> sv_engine.export, kernels/ -> sv_engine.kernels,
stablevideo/ -> sv_engine.stablevideo, benchmarks/ -> sv_engine.benchmarks; the applications (CLI,
render service) and the shared utilities (errors, paths, atomic writes, device) live in sv_engine/ itself.
Generic names like `engine` or `kernels` are never installed at top level.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "sv_engine": "sv_engine",
    "sv_engine.stablevideo": "stablevideo",
    "sv_engine.engine": "engine",
    "sv_engine.export": "export",
    "sv_engine.kernels": "kernels",
    "sv_engine.benchmarks": "benchmarks",
}

packages = []
for name, folder in PACKAGE_DIRS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=PACKAGE_DIRS,
    package_data={
        "": ["*.cu", "*.cuh", "*.json", "*.txt.gz", "*.jpg", "*.png", "checkpoint"],
        "sv_engine.service.ui": ["static/*"],
    },
    include_package_data=True,
)
