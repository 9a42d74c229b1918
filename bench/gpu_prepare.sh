#!/usr/bin/env bash
# Builds .gpu/ (git-ignored), what bench/gpu.sh needs on the GPU machine, which has torch and
# transformers but neither our encoder package nor the data, and takes at most 64 MiB along:
# the default encoder's weights stored in fp16 (45 MB instead of 91 MB), its tokenizer files,
# and ml-100k's ratings and items.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/model .gpu/ml-100k
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
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.to(torch.float16) for k, v in weights.items()}, ".gpu/model/model.safetensors")
data = fetch_ml100k()
for name in ("ml-100k.inter", "ml-100k.item"):
    shutil.copy(data / name, Path(".gpu/ml-100k") / name)
PY
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
du -sh .gpu
