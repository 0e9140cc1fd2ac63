# The two commands of the README:
#   make demo   set everything up (idempotent) and run `diffusion-accel demo` on the bundled model
#   make test   set everything up (idempotent) and run the test suite
VENV ?= .venv
.PHONY: setup demo test

setup:
	scripts/setup.sh

demo: setup
	$(VENV)/bin/diffusion-accel demo

test: setup
	$(VENV)/bin/python -m pytest -n 2 -q
