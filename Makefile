# Every target sets up what it needs: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv venv-kserve proto demo dist image bench test test-unit test-xla test-tpu test-jax test-e2e test-k8s test-host-requirements host-requirements lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,onnx]'
	touch $@

# The KServe SDK, for the test of its gRPC client: a venv of its own, as kserve needs protobuf<7
# and .venv holds protobuf 7. uv installs the pinned set, from its download cache (~/.cache/uv,
# shared with the XLA and JAX tiers) once warm; an older venv is updated in place.
KSERVE_VENV := .venv-kserve
KSERVE_SET := tests/grpc/requirements-kserve.txt

venv-kserve: $(KSERVE_VENV)/.installed

$(KSERVE_VENV)/.installed: $(KSERVE_SET)
	[[ -x $(KSERVE_VENV)/bin/python ]] || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet uv==0.13.9
	$(KSERVE_VENV)/bin/uv pip install --quiet --python $(KSERVE_VENV)/bin/python -r $(KSERVE_SET)
	touch $@

# The Python modules of appliance/grpc/proto/inference.proto (committed; run after editing it).
proto: venv
	PYTHON=$(PY) appliance/grpc/proto/generate.sh

# make demo PORT=9090, or BIND=HOST:PORT
PORT ?= 8080
BIND ?= 127.0.0.1:$(PORT)
demo: venv
	$(VENV)/bin/aegis demo --bind $(BIND)

# The appliance as a wheel: what the Ansible role installs on each host.
dist: venv
	$(PY) -m pip wheel --quiet --no-deps -w dist .

# The OCI image (root; podman from apt): FLAVOR=cpu (default), tpu or jax, built offline from a
# debootstrap root; written to dist/aegis-VERSION-FLAVOR.oci.tar.
FLAVOR ?= cpu
image: venv
	PY=$(abspath $(PY)) bash image/build.sh $(FLAVOR)

# Side by side with TorchServe, MLServer and LitServe (each in a cached venv under .cache/bench),
# then the artifact sync benchmark; root (taskset, wrk from apt, a network namespace).
bench: venv
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/compare.py --out bench/out/latest
	$(PY) bench/sync_bench.py

lint: venv
	$(VENV)/bin/ruff check appliance tests bench ansible
	$(VENV)/bin/ruff format --check appliance tests bench ansible
	$(VENV)/bin/mypy

test-unit: venv venv-kserve
	$(PY) -m pytest -q tests

# The XLA tier: its own venv with the pinned torch/torch-xla pair, PJRT_DEVICE=CPU.
test-xla: venv
	bash tests/support/run_tier.sh xla

# The XLA tier on a Cloud TPU VM's own chips (PJRT_DEVICE=TPU); exits non-zero without one.
test-tpu: venv
	XLA_TIER_DEVICE=TPU bash tests/support/run_tier.sh xla

# The app's pinned sets for hosts (one per Python: 3.10 for Ubuntu 22.04 TPU VMs ... 3.13) resolve
# with binary wheels and satisfy pyproject.toml; `make host-requirements` regenerates them.
test-host-requirements:
	bash ansible/host_requirements.sh check

host-requirements:
	bash ansible/host_requirements.sh compile

# The JAX tier: its own venv with the pinned jax / torchax / torch set, JAX's CPU backend.
test-jax: venv
	bash tests/support/run_tier.sh jax

# The deploy tier: a booted systemd container, deployed over ssh by ansible-playbook (root).
test-e2e: venv
	bash tests/e2e/run_tier.sh

# The k8s tier: the Helm chart rendered by Helm's engine and validated offline, then its Deployment
# run under podman kube play with the cpu image (root). FLAVOR=jax runs the pod on the jax image,
# which compiles, so its restart is checked against the compile cache (outside `make test`: the
# image is several GB).
test-k8s: venv
	FLAVOR=$(FLAVOR) bash tests/k8s/run_tier.sh

test: lint test-host-requirements test-unit test-xla test-jax test-e2e test-k8s

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .venv-xla .venv-jax .venv-deploy .venv-uv .venv-k8s .cache/e2e .cache/image .cache/k8s dist build
