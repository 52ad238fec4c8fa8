# The two commands of the README: `make run` (the main job) and `make test` (every test).
# Both set up what is missing: the venv with libtorch (scripts/setup) and the release build.

SDHOST := target/release/sdhost
DEMO_MODEL := models/tiny-sd1.safetensors

.PHONY: setup build run test lint

setup:
	@scripts/setup

build: setup
	cargo build --release

# Until the daemon lands: make the tiny random-weight model and run every network once.
run: build
	@[ -f $(DEMO_MODEL) ] || $(SDHOST) dev make-tiny-model $(DEMO_MODEL)
	$(SDHOST) info $(DEMO_MODEL)
	$(SDHOST) check $(DEMO_MODEL)

test: build lint
	cargo test --release --workspace

lint:
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings
