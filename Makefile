# farmhand: the two README commands are `./bootstrap.py` and `make test`.
PY      := .venv/bin/python
FH      := $(PY) -m supervisor
STAMP   := .venv/.farmhand-dev

.PHONY: deploy test test-fast up down status destroy lint bench bench-faults venv

$(STAMP): pyproject.toml
	FARMHAND_DEV=1 python3 bootstrap.py --bootstrap-only
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Every test, the real end-to-end ones included (builds llama-server once per checkout).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=30 tests

# Everything except the real llama-server build and the long fault repetitions.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e" tests

# apply, plus a systemd unit on systemd hosts (detached supervisor otherwise). ARGS go to apply
# (make deploy ARGS="--project-dir /srv/app --overrides site.yaml").
deploy: $(STAMP)
	$(FH) apply --yes $(ARGS)
	$(PY) -m supervisor.deploy

up: $(STAMP)
	$(FH) up
down: $(STAMP)
	$(FH) down
status: $(STAMP)
	$(FH) status
destroy: $(STAMP)
	$(FH) destroy --yes

lint: $(STAMP)
	$(PY) -m ruff check supervisor tests bench bootstrap.py

bench: $(STAMP)
	$(PY) bench/run.py

bench-faults: $(STAMP)
	FARMHAND_FAULT_REPEAT=200 $(PY) -m pytest -q -p no:cacheprovider tests/test_faults.py tests/test_faults_apply.py
