# Quick start (fresh CPU-only machine):  make demo   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, on its own: the Linux torch on PyPI is the CUDA build (~5 GB with its libraries).
# The default takes torch==2.13.0 from pip's configured sources: where a local CPU wheel of it is on pip's
# find-links (as on this project's machines), that CPU build; elsewhere name the build's index:
#   CPU build:  make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   CUDA build: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu130   (the index of your CUDA version)
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Every installed wheel, kept for tests/test_install.py (a fresh venv installed offline from pyproject.toml).
WHEELS ?= .wheels

TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
WHEELS_TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: setup demo lint test browser studio

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_FROM) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,serve]'
	touch $@

# The wheels of exactly what setup installed (only `make test` needs them).
$(WHEELS)/.complete: $(VENV)/.installed
	$(PY) -m pip freeze --exclude-editable > $(VENV)/installed.txt
	$(PY) -m pip wheel -q $(WHEELS_TORCH_FROM) -c $(VENV)/installed.txt -w $(WHEELS) '.[dev,serve]' 'setuptools>=68' wheel
	touch $@

demo: setup
	$(VENV)/bin/sv-engine demo --out demo-out --force

# ruff (configured in pyproject.toml) for lint and format; test runs it first.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The editing studio on the bundled clip with tiny random models: open http://127.0.0.1:8000/ui
studio: setup
	mkdir -p studio-data
	[ -d studio-data/skicat ] || cp -r "$$($(PY) -c 'from sv_engine.stablevideo.demo import demo_data_dir; print(demo_data_dir())')" studio-data/
	$(VENV)/bin/sv-engine serve --tiny --data-root studio-data --out-root studio-jobs

# Debian's headless Chromium + ChromeDriver for the studio's browser test (root installs them; CI runs as root).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "browser test: sudo apt-get install chromium chromium-driver (it skips without them, fails with CI=true)"; fi; fi

test: lint browser $(WHEELS)/.complete
	SV_ENGINE_WHEELS=$(abspath $(WHEELS)) $(VENV)/bin/python -P -m pytest -q tests
