# dfir.vmcollect - developer entry points. Everything runs as root on Debian 12 / Ubuntu 22.04+.
SHELL := /bin/bash
LAB_DIR ?= /var/tmp/vmcollect-lab
export LAB_DIR
VENV ?= $(CURDIR)/.venv
export VENV
PY := $(VENV)/bin/python

.PHONY: help demo test test-slow test-cores molecule setup sanity lint unit integration build ee docs lab-up lab-down lab-status bench bench-lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

demo:  ## install, bring the lab up, acquire the lab guest (disks + RAM), show the evidence and manifest
	scripts/demo.sh

test:  ## install everything, sanity, lint, build check, lab up, unit + integration tests, lab down
	scripts/test.sh

setup:  ## apt packages + .venv (idempotent)
	scripts/setup.sh

sanity: setup  ## ansible-test sanity
	scripts/sanity.sh

lint: setup  ## ansible-lint on roles and playbooks, shellcheck on scripts
	scripts/lint.sh

unit: setup  ## unit tests (no lab needed)
	$(PY) -m pytest -p no:cacheprovider tests/unit

integration: setup lab-up  ## integration tests on the lab (leaves the lab up)
	VMCOLLECT_REQUIRE_LAB=1 $(PY) -m pytest -p no:cacheprovider tests/integration

test-slow: setup build lab-up  ## the slow integration tests (marked slow, outside the CI run): guests of 4-8 GiB, NUMA, more kill and link faults
	VMCOLLECT_SLOW=1 VMCOLLECT_REQUIRE_LAB=1 $(PY) -m pytest -p no:cacheprovider -m slow tests/integration

test-cores: setup  ## sanity + unit tests on each ansible-core 2.16-2.21, latest patch (slow, not in CI; CORES="2.16 2.21" for some)
	scripts/core-matrix.sh $(CORES)

molecule: setup build  ## every molecule scenario of the roles (extensions/molecule) on the lab; brings it up and down if it was down
	PATH=$(VENV)/bin:$$PATH $(VENV)/bin/molecule test --all

ee: build  ## build the execution environment's image with podman (scripts/ee.sh: a Debian base by debootstrap, no registry)
	scripts/ee.sh

build: setup  ## ansible-galaxy collection build, checked for junk; ansible-doc of every module
	scripts/build.sh

docs:  ## build the documentation site offline (antsibull-docs + sphinx -W)
	scripts/docs.sh

lab-up:  ## bring the lab up (idempotent)
	bash lab/up.sh

lab-down:  ## bring the lab down, nothing left behind
	bash lab/down.sh

lab-status:  ## is the lab up and healthy
	bash lab/status.sh

bench: setup  ## benchmarks (print ratios against baselines; not tests); bench-lab runs the ones that need the lab
	$(PY) bench/hash_bench.py
	$(PY) bench/copy_bench.py --format qcow2
	$(PY) bench/copy_bench.py
	$(PY) bench/e01_bench.py --size-mib 512 --rounds 3
	$(PY) bench/vmdk_bench.py --size-mib 1024 --rounds 3

bench-lab: setup lab-up  ## the benchmarks that need the lab: RAM methods vs virsh dump, iSCSI vs local
	/usr/bin/python3 bench/memory_bench.py --ram-mib 256 1024 --rounds 3
	$(PY) bench/iscsi_bench.py --size-mib 512 --rounds 5 --e2e-rounds 3

clean: lab-down  ## lab down and build outputs removed (venvs kept)
	rm -rf .build tests/output dfir-vmcollect-*.tar.gz
