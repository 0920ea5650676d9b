# kuma-vm: `make packages` builds the kuma-cp and kuma-dp packages (.deb and .rpm) into dist/
# (packaging/README.md). RELEASE=2 builds the next package revision of the same version.
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
RELEASE ?= 1

.PHONY: packages packages-clean

packages:
	$(PYTHON) packaging/build.py --out dist --release $(RELEASE)

packages-clean:
	rm -rf dist
