# Two commands do all the set-up on a fresh machine:
#   make demo   installs the package and runs the main job on the shipped weights
#   make test   installs the package (with test tools) and runs the tests
# Both install Fashion-MNIST from Debian's package dataset-fashion-mnist (needs root or sudo).

VENV ?= .venv
BIN := $(VENV)/bin
DATA := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup dataset demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

dataset: $(DATA)

$(DATA):
	$(SUDO) apt-get install -y dataset-fashion-mnist || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

demo: setup dataset
	$(BIN)/semdir-edit generate --n 64 --seed 0 -o out/samples.png
	$(BIN)/semdir-edit generate --mix --seed 1 -o out/style-mixing.png
	$(BIN)/semdir-edit generate --noise-variation --seed 2 -o out/noise-variation.png
	$(BIN)/semdir-edit invert docs/examples/*.jpg -o out/invert
	$(BIN)/semdir-edit apply out/invert/sneaker.latent.safetensors --direction pca:0 --eps -3:3:7 -o out/sneaker-pca0.png
	$(BIN)/semdir-edit apply out/invert/tshirt.latent.safetensors --direction to:Pullover --eps 0:3:4 -o out/tshirt-to-pullover.png
	@echo "demo outputs in out/"

lint: setup
	$(BIN)/ruff check semdir_edit tests

test: setup dataset lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out
