# The two commands of the README: `make run` (the main job) and `make test` (every test).
# Both set up what is missing: `make run` only what the daemon needs at run time (libtorch in
# the user cache, scripts/setup), `make test` the reference packages in .venv on top
# (scripts/setup-test), then the release build.

SDHOST := target/release/sdhost
DEMO_MODEL := models/tiny-sd1.safetensors
DEMO_IMAGE := host/assets/sample-init.png

.PHONY: setup setup-test build build-all run demo test lint bench bench-gpu soak fuzz fuzz-smoke screenshots install-gimp-plugin install uninstall install-service

setup:
	@scripts/setup

setup-test: setup
	@scripts/setup-test

# What the daemon needs: sdhost and its built-in sampler plugin (not the example plugin or the
# test fixtures, which `make test` builds).
build: setup
	cargo build --release -p sdhost -p sdhost-samplers

build-all: setup
	cargo build --release --workspace

# The main job: the daemon on its default socket. With no model configured it makes a tiny
# random-weight demo model and says so; pass your own with
# `target/release/sdhost serve --models-dir ~/stable-diffusion-webui/models`.
run: build
	$(SDHOST) serve

# The command-line demo: img2img and inpainting of the bundled picture with the demo model.
demo: build
	@[ -f $(DEMO_MODEL) ] || $(SDHOST) dev make-tiny-model $(DEMO_MODEL)
	$(SDHOST) img2img --model $(DEMO_MODEL) --init-image $(DEMO_IMAGE) \
		--prompt "a cottage on a green hill, (golden hour:1.2)" --negative-prompt "blurry" \
		--sampler-name "DPM++ 2M" --scheduler Karras --steps 20 --denoising-strength 0.6 \
		--seed 1234 --batch-size 2
	$(SDHOST) img2img --model $(DEMO_MODEL) --init-image $(DEMO_IMAGE) --mask host/assets/sample-mask.png \
		--prompt "a stone tower" --inpaint-full-res --inpainting-fill fill --seed 1234 --patch-out

test: setup-test build-all lint
	cargo test --release --workspace
	.venv/bin/python -m pytest -q gimp-bridge/tests
	.venv/bin/python -m pytest -q tests/api
	.venv/bin/python -m pytest -q tests/soak
	.venv/bin/python -m pytest -q tests/install
	.venv/bin/python -m pytest -q tests/setup
	.venv/bin/python -m pytest -q tests/gpu_bench
	tests/gimp/run_e2e.sh
	scripts/fuzz smoke 60

# The GIMP dialogs' screenshots in docs/images/: the real GIMP on Xvfb in the trixie chroot,
# against the daemon with tiny models (tests/gimp/screenshots.sh; needs root, about 1 minute).
screenshots: setup-test build
	tests/gimp/screenshots.sh

# The soak of docs/reliability.md: 8 clients (socket and HTTP) x 50 jobs with cancels and
# disconnects against one daemon; `make test` runs 8 x 5 (tests/soak/test_soak.py).
soak: setup-test build
	.venv/bin/python tests/soak/soak.py --clients 8 --jobs 50

# The fuzz campaign of docs/reliability.md: every target to 10 million executions (about
# three hours on 2 cores); `scripts/fuzz campaign N TARGET…` for fewer.
fuzz: build-all
	scripts/fuzz campaign

# What `make test` runs: every fuzz target, 60 seconds in all, from the kept corpus.
fuzz-smoke: build-all
	scripts/fuzz smoke 60

# sdhost against diffusers, side by side (docs/performance.md); a few minutes on 2 cores.
bench: setup-test build
	$(SDHOST) bench

# The side-by-side cases on a CUDA GPU (fp16), written into docs/performance.md as
# "## DATE, GPU: <device>": its own CUDA build in target-cuda/, the CPU build untouched.
bench-gpu:
	scripts/gpu-bench

# The GIMP 3 plug-in into ~/.config/GIMP/3.0/plug-ins (see README, "Use it from GIMP").
install-gimp-plugin:
	gimp-bridge/install.sh

# sdhost, its sampler plugin and a copy of its libtorch into PREFIX (default ~/.local), runnable
# without the clone, plus the GIMP plug-in (see README, "Install"). PREFIX=/opt/sdhost works too.
install: build
	scripts/install

uninstall:
	scripts/install --uninstall

# The same, plus the systemd user service (enabled and started where a user systemd runs).
install-service: build
	scripts/install --systemd

lint:
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings
