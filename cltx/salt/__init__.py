"""Vocabulary transfer: give an LLM a target-language PLM's tokenizer, each new token's embedding
initialised by Semantic Aware Linear Transfer (SALT) or one of its peers (DESIGN.md §2).

* :func:`transfer_vocabulary` / :class:`SaltConfig` — the whole ``cltx salt`` run.
* :class:`VocabularyTransfer` — the steps (check, load, neighbours, initialize, apply, save, evaluate),
  so several methods share one matching and one neighbour computation.
* :func:`match_vocabularies` — token matching across byte-level BPE, SentencePiece and WordPiece.
"""

from cltx.salt.matching import Matching, TokenForm, match_vocabularies, normalize_token
from cltx.salt.methods import METHODS
from cltx.salt.transfer import SaltConfig, VocabularyTransfer, transfer_vocabulary

__all__ = [
    "METHODS",
    "Matching",
    "SaltConfig",
    "TokenForm",
    "VocabularyTransfer",
    "match_vocabularies",
    "normalize_token",
    "transfer_vocabulary",
]
