# Two entry points on a fresh Debian 12 machine (run as root):
#   make demo   - the main job
#   make test   - every test tier: unit, host, and vm (inside the bpfkit VM kernel)
# Each installs what it needs (apt packages, the venv, libbpf, the VM kernel)
# idempotently; with everything cached they start at once.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
BPFKIT := $(VENV)/bin/bpfkit
PYTEST := $(VENV)/bin/pytest
# The VM tier boots one guest for all vm tests; this bounds it (CI has 90 min in all).
VM_TEST_TIMEOUT ?= 4200
APT_PACKAGES := clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev dwarves flex bison bc libssl-dev \
	cpio rsync kmod xz-utils make gcc linux-source-6.12 qemu-system-x86 udev busybox-static mptcpize \
	iproute2 ethtool procps iputils-ping python3-venv

.PHONY: all demo test setup apt venv libbpf kernel test-unit test-host test-vm clean-cache
all: test

setup: apt venv libbpf kernel

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

libbpf: venv
	@$(VENV)/bin/python -c 'from bpfkit import libbpf; print("bpfkit uses", libbpf.dist().describe())'

kernel: venv
	$(BPFKIT) vm kernel

# The bench boots the VM once, loads the four BPF schedulers and compares them with
# the default; each run replaces the previous results (table, bench.png, bench.json).
DEMO_OUT ?= results/bench-schedulers
demo: setup
	$(BPFKIT) doctor
	$(BPFKIT) bench schedulers --out $(DEMO_OUT)

test: setup test-unit test-host test-vm

test-unit test-host: venv
	BPFKIT_REQUIRE_ALL=1 $(PYTEST) -m "$(subst test-,,$@)"

test-vm: setup
	@# Compiling in the guest runs clang under emulation; prebuild for the VM kernel instead.
	$(BPFKIT) build --kernel vm $(filter-out tests/bpf/broken.bpf.c tests/bpf/tcp_ca.bpf.c,$(wildcard bpf/*.bpf.c bpf/*/*.bpf.c tests/bpf/*.bpf.c)) || true
	$(BPFKIT) vm run --timeout $(VM_TEST_TIMEOUT) -- env BPFKIT_REQUIRE_ALL=1 $(PYTEST) -m vm --durations=25
