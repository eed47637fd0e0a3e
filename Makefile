# Two commands on a fresh Debian 12 / Ubuntu machine:
#   make run   - install, build a small signed sample upstream, sync it, serve it, print the apt line
#   make test  - install what the tests need (system packages included), then run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := gpg gpgv gpg-agent dpkg-dev apt xz-utils zstd curl python3-venv ca-certificates rpm dnf zchunk strace openssl
BENCH_PACKAGES := nginx aptly wrk
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps venv test lint typecheck run bench clean

install: system-deps venv

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check mirror fixtures tests bench

typecheck: venv
	$(VENV)/bin/mypy --strict mirror

test: install lint typecheck
	$(VENV)/bin/pytest -q

run: install
	$(PY) -m fixtures.demo

bench: install
	@for p in $(BENCH_PACKAGES); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$p >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BENCH_PACKAGES); break; }; done
	@dpkg-query -W -f='$${Status}' dnf-plugins-core 2>/dev/null | grep -q "ok installed" || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dnf-plugins-core; }
	$(PY) bench/sync_bench.py
	$(PY) bench/rpm_sync_bench.py
	$(PY) bench/parse_packages.py
	$(PY) bench/parse_primary.py
	$(PY) bench/promote_bench.py
	$(PY) bench/diff_api_bench.py
	$(PY) bench/serve_bench.py
	$(PY) bench/filter_bench.py

clean:
	rm -rf $(VENV) demo var .pytest_cache .mypy_cache .ruff_cache
