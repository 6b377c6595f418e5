# Two commands do all the set-up on a fresh machine:
#   make demo   installs the package and runs the main job on the shipped weights
#   make test   installs the package (with test tools) and runs the tests
# Both install Fashion-MNIST from Debian's package dataset-fashion-mnist (needs root or sudo); `make test` also
# installs Debian's chromium for the browser editor's end-to-end test (Playwright drives /usr/bin/chromium).

VENV ?= .venv
BIN := $(VENV)/bin
DATA := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup dataset chromium demo docs ui-screenshot test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test,ui]'
	touch $@

dataset: $(DATA)

$(DATA):
	$(SUDO) apt-get install -y dataset-fashion-mnist || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

# The browser test's browser: Debian's chromium (Playwright's own browser download is not reachable from CI).
chromium: /usr/bin/chromium

/usr/bin/chromium:
	$(SUDO) apt-get install -y chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

demo: setup dataset
	$(BIN)/semdir-edit generate --n 64 --seed 0 -o out/samples.png
	$(BIN)/semdir-edit generate --mix --seed 1 -o out/style-mixing.png
	$(BIN)/semdir-edit generate --noise-variation --seed 2 -o out/noise-variation.png
	$(BIN)/semdir-edit invert docs/examples/*.jpg -o out/invert
	$(BIN)/semdir-edit apply out/invert/sneaker.latent.safetensors --direction pca:0 --eps -3:3:7 -o out/sneaker-pca0.png
	$(BIN)/semdir-edit apply out/invert/tshirt.latent.safetensors --direction to:Pullover --eps 0:3:4 -o out/tshirt-to-pullover.png
	$(BIN)/semdir-edit apply out/invert/dress.latent.safetensors --direction class:0 --eps -3:3:7 -o out/dress-class0.png
	$(BIN)/semdir-edit directions show --class Sneaker -o out/sneaker-directions.png
	$(BIN)/semdir-edit batch docs/examples out/batch --direction global:0 --eps -3:3:7 --method encoder
	@echo "demo outputs in out/"

# README pictures: samples, style mixing, noise variation, the example photos inverted and edited; one grid per
# class (rows = its K class directions, columns = eps -3..3), the global set on three articles, the baselines.
DOC_CLASSES := T-shirt Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle
docs: setup
	$(BIN)/semdir-edit generate --n 64 --seed 0 -o docs/samples.png
	$(BIN)/semdir-edit generate --mix --seed 1 -o docs/style-mixing.png
	$(BIN)/semdir-edit generate --noise-variation --seed 2 -o docs/noise-variation.png
	$(BIN)/semdir-edit invert docs/examples/*.jpg -o out/docs-invert
	$(BIN)/python -c "import sys; from PIL import Image; ims = [Image.open(p) for p in sys.argv[2:]]; \
	  row = Image.new(ims[0].mode, (sum(i.width for i in ims), max(i.height for i in ims))); \
	  [row.paste(i, (sum(j.width for j in ims[:k]), 0)) for k, i in enumerate(ims)]; row.save(sys.argv[1])" \
	  docs/inversion.png out/docs-invert/boot.side.png out/docs-invert/dress.side.png \
	  out/docs-invert/sneaker.side.png out/docs-invert/tshirt.side.png
	$(BIN)/semdir-edit apply out/docs-invert/sneaker.latent.safetensors --direction to:Ankle --eps 0:3:4 -o docs/sneaker-to-boot.png
	$(BIN)/semdir-edit apply out/docs-invert/tshirt.latent.safetensors --direction to:Pullover --eps 0:3:4 -o docs/tshirt-to-pullover.png
	mkdir -p docs/directions
	for c in $(DOC_CLASSES); do $(BIN)/semdir-edit directions show --class $$c -o docs/directions/class-$$c.png || exit 1; done
	for s in 0 1 2; do $(BIN)/semdir-edit directions show --source global --seed $$s -o docs/directions/global-$$s.png || exit 1; done
	for s in voynov pca sefa random; do $(BIN)/semdir-edit directions show --source $$s -o docs/directions/$$s-0.png || exit 1; done
	for c in Sneaker Dress; do $(BIN)/semdir-edit directions show --source cpca --class $$c -o docs/directions/cpca-$$c.png || exit 1; done

# The README's screenshot of the browser editor (the browser test, saving its screenshot).
ui-screenshot: setup chromium
	SEMDIR_UI_SCREENSHOT=docs/ui.png $(BIN)/pytest -q tests/test_ui_browser.py

lint: setup
	$(BIN)/ruff check semdir_edit tests scripts
	$(BIN)/lint-imports

test: setup dataset chromium lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out
