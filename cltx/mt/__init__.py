"""Multi-field dataset translation with a Catalyst Statement and Indicator Tokens (DESIGN.md §1).

Library use::

    from cltx.mt import MTConfig, make_engine, translate_records, run_file

    engine = make_engine("bergamot", "en", "pt")
    cfg = MTConfig(fields=["question", "passage", "answer"], src="en", tgt="pt")
    out = translate_records([{"question": "...", "passage": "...", "answer": "..."}], engine, cfg)

Modules: :mod:`~cltx.mt.markers` (IT styles, join/split), :mod:`~cltx.mt.catalyst` (CS templates),
:mod:`~cltx.mt.segment` (cutting long texts), :mod:`~cltx.mt.engines` (the ``Engine`` protocol and
engines), :mod:`~cltx.mt.pipeline` (records → translated records), :mod:`~cltx.mt.runner` (files,
resume, sharding), :mod:`~cltx.mt.report`.
"""

from cltx.mt.engines import Engine, EngineWrapper, KeepNewlines, make_engine
from cltx.mt.pipeline import MTConfig, Pipeline, RecordResult, translate_records
from cltx.mt.runner import run_file

__all__ = [
    "Engine",
    "EngineWrapper",
    "KeepNewlines",
    "MTConfig",
    "Pipeline",
    "RecordResult",
    "make_engine",
    "run_file",
    "translate_records",
]
