# The two commands of the README: `make run` (the main job) and `make test` (every test).
# Both set up what is missing: the venv with libtorch (scripts/setup) and the release build.

SDHOST := target/release/sdhost
DEMO_MODEL := models/tiny-sd1.safetensors
DEMO_IMAGE := host/assets/sample-init.png

.PHONY: setup build run test lint

setup:
	@scripts/setup

build: setup
	cargo build --release

# Until the daemon lands: make the tiny random-weight model, run img2img on the bundled sample
# image and inpaint its house (only masked, with the patch for editors); the PNGs land in
# outputs/img2img-images with their infotext.
run: build
	@[ -f $(DEMO_MODEL) ] || $(SDHOST) dev make-tiny-model $(DEMO_MODEL)
	$(SDHOST) img2img --model $(DEMO_MODEL) --init-image $(DEMO_IMAGE) \
		--prompt "a cottage on a green hill, (golden hour:1.2)" --negative-prompt "blurry" \
		--sampler "DPM++ 2M" --scheduler Karras --steps 20 --denoising-strength 0.6 \
		--seed 1234 --batch-size 2
	$(SDHOST) img2img --model $(DEMO_MODEL) --init-image $(DEMO_IMAGE) --mask host/assets/sample-mask.png \
		--prompt "a stone tower" --inpaint-full-res --inpainting-fill fill --seed 1234 --patch-out
	$(SDHOST) png-info "$$(ls -t outputs/img2img-images/*.png | head -1)"

test: build lint
	cargo test --release --workspace

lint:
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings
