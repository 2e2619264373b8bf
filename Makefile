# nnwatch developer commands. Every target sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned to the CPU build available offline on our machines; an unpinned torch pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test venv system-deps bench generate clean

$(VENV)/.installed: pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e . -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

## demo: a short training run on scikit-learn's digits, watched by the agent, with a planted silent failure;
## records ./nnwatch-demo/history.sqlite and ends by printing the path of its HTML report
demo: venv
	$(PY) -m agent.cli demo $(DEMO_ARGS)

## system-deps: Prometheus, Alertmanager, Pushgateway, promtool, amtool, VictoriaMetrics (the fleet benchmark's
## remote_write store), g++ for the native CPU kernels, and Chromium (headless) for the report's screenshot test
## (Debian packages; needs root)
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null || ! command -v prometheus-pushgateway >/dev/null || ! command -v victoria-metrics >/dev/null || ! command -v c++ >/dev/null || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager prometheus-pushgateway victoria-metrics g++ chromium >/dev/null; \
	  else echo "install Debian packages prometheus prometheus-alertmanager prometheus-pushgateway victoria-metrics g++ chromium (sudo apt-get install ...)"; exit 1; fi; \
	fi

## test: the whole suite (unit, scenario and end-to-end tests with real Prometheus/Alertmanager)
test: venv system-deps
	$(PY) -m pytest -n auto -q $(PYTEST_ARGS)

## bench: overhead benchmarks against a plain loop and peers (writes docs/benchmarks.md)
bench: venv
	$(PIP) install -q -r benchmarks/requirements.txt "$(TORCH)"
	$(PY) -m benchmarks.run $(BENCH_ARGS)

## generate: regenerate committed artefacts (alert rules, dashboards, chart copies)
generate: venv
	$(PY) -m agent.cli generate

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
