#!/usr/bin/env bash
# Build the real model (Gemma 3 270M) with ../shared's build.sh under a transformers release that can save it.
# usage: build_real_model.sh BUILD_SH DEST PYTHON   (PYTHON: the project venv's, with torch and accelerate)
#
# The build loads a GGUF file and saves it as safetensors. From 5.17 on, transformers loads GGUF through a
# quantizer that refuses to save ("The model is quantized with gguf and is not serializable"), so the build runs
# in a throwaway venv that holds transformers 5.16.1, the last release that saves it, in front of the project
# venv's packages (torch, accelerate, tokenizers: reached through a .pth file, not installed twice). tfprune
# itself keeps the transformers of its venv.
set -euo pipefail
BUILD=${1:?usage: build_real_model.sh BUILD_SH DEST PYTHON}
DEST=${2:?usage: build_real_model.sh BUILD_SH DEST PYTHON}
PY=${3:?usage: build_real_model.sh BUILD_SH DEST PYTHON}
BUILD_TRANSFORMERS=${BUILD_TRANSFORMERS:-transformers==5.16.1}
[ -f "$DEST/model.safetensors" ] && [ -f "$DEST/tokenizer.json" ] && { echo "already built: $DEST"; exit 0; }
ENV=$(mktemp -d)
trap 'rm -rf "$ENV"' EXIT
"$PY" -m venv "$ENV"
site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
echo "import site; site.addsitedir('$(site "$PY")')" > "$(site "$ENV/bin/python")/project-venv.pth"
"$ENV/bin/python" -m pip install -q --no-warn-conflicts "$BUILD_TRANSFORMERS"
bash "$BUILD" "$DEST" "$ENV/bin/python"
