# Two entry points for a fresh Linux machine with Python 3.10-3.12:
#   make demo   set up .venv and run the main job (a short simulated run)
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
# Software rendering would otherwise spread one env over every core.
export LP_NUM_THREADS ?= 1

.PHONY: demo test test-slow setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all]"
	touch $@

demo: setup
	$(VENV)/bin/vlarl demo

test: setup
	$(PY) -m pytest -q -m "not slow"

# The learning tests (a policy trained to a success threshold): CI runs them after make test.
test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
