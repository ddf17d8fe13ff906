"""cltx: a cross-lingual transfer toolkit for large language models.

Three methods, one package:

* :mod:`cltx.mt` — multi-field dataset translation with a Catalyst Statement and Indicator Tokens.
* :mod:`cltx.salt` — Semantic Aware Linear Transfer of a target-language PLM's vocabulary into an LLM.
* :mod:`cltx.clo` — Cross-Lingual Optimization training.

Heavy dependencies (torch, transformers) are imported by the submodules that need them, so
``import cltx`` stays cheap; ``cltx`` never imports typer or rich (those belong to ``cltx.cli``).
"""

from cltx._version import __version__
from cltx.errors import CltxError

__all__ = ["__version__", "CltxError"]
