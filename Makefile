# Two commands do all the set-up on a fresh machine with Python >= 3.11:
#   make test    create .venv, install rnnscan with its test extras, run the tests
#   make bench   the quick benchmark: parallel vs sequential on this machine (< 2 min on 2 CPU cores)
# What CI adds (.ci/run), each creating what it needs:
#   make test-oldest  the lowest supported versions (.ci/oldest-constraints.txt) in .venv-oldest,
#                     a fast test subset (OLDEST_TESTS)
#   make docs         the documentation site, mkdocs build --strict, into site/
#   make dist         sdist + wheel into dist/, installed in a fresh venv and smoke-tested
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_WORKERS ?= 2

OLDEST_VENV ?= .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_CONSTRAINTS := .ci/oldest-constraints.txt
OLDEST_STAMP := $(OLDEST_VENV)/.installed-$(shell cat pyproject.toml $(OLDEST_CONSTRAINTS) | cksum | cut -d' ' -f1)
# A fast subset (about 3 min on a busy 2-core machine) that touches every pinned
# dependency: the solver and its vmap rule, gradients, a Flax NNX model trained with optax
# (float64 too, and with method: auto), the CLI's training run (with and without
# matplotlib), resume through orbax, a training step stored by jax.export (flatbuffers) and
# loaded by a second process, UEA files through aeon (unequal lengths too), diffrax.
OLDEST_TESTS ?= tests/test_packaging.py tests/test_inputs.py tests/test_scan.py \
	tests/test_layers.py tests/test_train.py tests/test_data.py tests/test_ode.py \
	tests/test_auto.py tests/test_uea_archive.py tests/test_program_store.py
OLDEST_SELECT ?= -k "test_packaging \
	or (test_inputs and not random_pytrees and not integer_inputs) \
	or (matches_lax_scan_float32 and 3000-8-gru) or test_gradients_float32 \
	or vmap_each_sequence or classifier_training_step or resume_after_a_crash \
	or read_uea_matches_aeon or diffeqsolve_matches_diffrax \
	or auto_switches_a_stalling_layer or padding_never_changes_a_prediction \
	or compiled_in_the_background or stored_program_is_reused \
	or second_training_process_loads"
DOCS_CONFIG := docs/config/mkdocs.yml
DIST_VENV ?= .cache/dist-venv

.PHONY: test test-oldest docs docs-serve dist bench lint format install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,data,train,plot,docs]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

# The lower bounds of pyproject.toml, pinned (transitive dependencies: the newest that fit).
$(OLDEST_STAMP): pyproject.toml $(OLDEST_CONSTRAINTS)
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip
	$(OLDEST_PY) -m pip install --quiet -c $(OLDEST_CONSTRAINTS) -e ".[test,data,train,plot]"
	rm -f $(OLDEST_VENV)/.installed-* && touch $@

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_PY) -m pip list --format=freeze | grep -iE '^(jax|jaxlib|flax|optax|equinox|numpy|orbax-checkpoint|aeon)=='
	$(OLDEST_PY) -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS) $(OLDEST_TESTS) $(OLDEST_SELECT)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -f $(DOCS_CONFIG)

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve -f $(DOCS_CONFIG)

# Release artefacts: build both with `python -m build`, then install each into a fresh venv
# (DIST_VENV) and smoke-test it there (.ci/smoke.py). Cheaply: rnnscan itself comes from the
# artefact alone (--no-deps); its dependencies are borrowed from $(VENV) through a .pth file,
# and `pip check` verifies the artefact's declared requirements against them.
DIST_SITE = $$($(DIST_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dist: $(STAMP)
	$(PY) -m pip install --quiet "build>=1"
	rm -rf dist $(DIST_VENV)
	$(PY) -m build --outdir dist .
	$(PYTHON) -m venv $(DIST_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$(DIST_SITE)/rnnscan-deps.pth"
	$(DIST_VENV)/bin/python -m pip install --quiet --no-deps dist/rnnscan-*.whl
	$(DIST_VENV)/bin/python -m pip check
	cd $(DIST_VENV) && bin/python $(CURDIR)/.ci/smoke.py wheel
	$(DIST_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall dist/rnnscan-*.tar.gz
	$(DIST_VENV)/bin/python -m pip check
	cd $(DIST_VENV) && bin/python $(CURDIR)/.ci/smoke.py sdist

bench: $(STAMP)
	$(PY) -m benchmarks --config configs/benchmarks/quick.yaml

lint: $(STAMP)
	$(PY) -m ruff check rnnscan benchmarks experiments tools tests
	$(PY) -m ruff format --check rnnscan benchmarks experiments tools tests

format: $(STAMP)
	$(PY) -m ruff format rnnscan benchmarks experiments tools tests
	$(PY) -m ruff check --fix rnnscan benchmarks experiments tools tests

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(DIST_VENV) .pytest_cache .ruff_cache .hypothesis site dist build
