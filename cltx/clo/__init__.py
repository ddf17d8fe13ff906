"""Cross-Lingual Optimization (CLO, ACL 2025, arXiv 2505.14297) on the Hugging Face Trainer.

* :func:`train_clo` — the whole ``cltx clo`` run (data → reference log-probs → training → save).
* :class:`CLOConfig`, :class:`CLOTrainer` — the ``TrainingArguments`` / ``Trainer`` subclasses.
* :class:`DataSpec` — where prompt, response and the two languages live in a record.
* :func:`evaluate_models` — ``cltx eval``: answer-language share and held-out NLL per language.

Attributes load lazily so ``import cltx.clo`` does not import torch or transformers.
"""

from __future__ import annotations

import importlib

__all__ = ["CLOConfig", "CLOTrainer", "DataSpec", "train_clo", "evaluate_models"]

_LAZY = {
    "CLOConfig": "cltx.clo.trainer",
    "CLOTrainer": "cltx.clo.trainer",
    "DataSpec": "cltx.clo.data",
    "train_clo": "cltx.clo.api",
    "evaluate_models": "cltx.clo.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltx.clo' has no attribute {name!r}")
