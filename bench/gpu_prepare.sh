#!/usr/bin/env bash
# Builds .gpu/ (git-ignored), what bench/gpu.sh needs on the GPU machine, which has torch and
# transformers but neither our encoder package nor the data, and takes at most 64 MiB along:
# the default encoder's weights stored in fp16 (45 MB instead of 91 MB), its tokenizer and
# sentence-transformers files, ml-100k's ratings and items, and the sentence-transformers wheel
# (without its dependencies: scipy alone would not fit; bench/encoder.py stands in for scipy and
# scikit-learn, which encode() never calls) that bench/encoder.py compares against.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/model .gpu/ml-100k .gpu/wheels
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from consumer.datasets import fetch_ml100k
from learner.encoder import default_model_dir

src = default_model_dir()
for f in src.iterdir():
    if f.is_file() and f.suffix in {".json", ".txt"}:
        shutil.copy(f, Path(".gpu/model") / f.name)
for f in src.glob("*_*/*.json"):  # sentence-transformers' modules, e.g. 1_Pooling/config.json
    (Path(".gpu/model") / f.parent.name).mkdir(exist_ok=True)
    shutil.copy(f, Path(".gpu/model") / f.parent.name / f.name)
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.to(torch.float16) for k, v in weights.items()}, ".gpu/model/model.safetensors")
data = fetch_ml100k()
for name in ("ml-100k.inter", "ml-100k.item"):
    shutil.copy(data / name, Path(".gpu/ml-100k") / name)
PY
st_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("sentence-transformers"))')
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
    "sentence-transformers==$st_version" -d .gpu/wheels
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
du -sh .gpu
