"""The end-of-run report: counts from the finished output file, speed from this session, and
(with reference translations) BLEU and chrF per field through sacrebleu.

Counts are read back from the output file, so a resumed run reports on the whole file; speed
(records/s, source characters/s) covers the records translated in this session only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from cltx.errors import CltxError


def _iter_jsonl(path: Path):
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise CltxError(f"{path}:{i}: malformed JSON ({e.msg}); fix: repair the file") from e


def _read_jsonl(path: Path) -> list[dict]:
    return list(_iter_jsonl(path))


def reference_scores(outputs: list[dict], references: str | Path, fields: list[str]) -> dict:
    """BLEU and chrF per field of ``outputs`` against ``references`` (JSONL).

    Alignment: by the ``id`` field when every reference has one (references may then cover a
    subset), otherwise the n-th reference goes with the n-th output record. Failed records and
    records without the field on either side are left out; ``n`` says how many pairs were scored.
    """
    import sacrebleu

    refs = _read_jsonl(Path(references))
    if refs and all("id" in r for r in refs):
        by_id = {str(r["id"]): r for r in refs}
        pairs = [(o, by_id.get(str(o.get("id")))) for o in outputs]
    else:
        if len(refs) != len(outputs):
            raise CltxError(
                f"--references={str(references)!r}: {len(refs)} records for {len(outputs)} outputs and no 'id' "
                f"field to align them; fix: give one reference per record in order, or an 'id' on both"
            )
        pairs = list(zip(outputs, refs, strict=True))
    scores = {}
    for f in fields:
        hyp, ref = [], []
        for o, r in pairs:
            if r is None or o.get("_mt", {}).get("status") == "failed":
                continue
            if isinstance(o.get(f), str) and isinstance(r.get(f), str) and r[f].strip():
                hyp.append(o[f])
                ref.append(r[f])
        if hyp:
            scores[f] = {
                "n": len(hyp),
                "bleu": round(sacrebleu.corpus_bleu(hyp, [ref]).score, 2),
                "chrf": round(sacrebleu.corpus_chrf(hyp, [ref]).score, 2),
            }
    return scores


def build_report(
    output: Path,
    rejects: Path,
    *,
    config,
    engine: str,
    session: dict,
    elapsed: float,
    references: str | Path | None = None,
    world_size: int = 1,
    extra: dict | None = None,
) -> dict:
    """The report dict (also written as JSON beside the output); ``extra`` is merged in (cache counters)."""
    from cltx.mt.quality import FLAG_NAMES

    # one streaming pass: counts only (the records are kept only when references are to be scored)
    status: Counter = Counter()
    reasons: Counter = Counter()
    styles: Counter = Counter()
    n_rows = n_split = n_retried = 0
    flag_counts: Counter = Counter()
    n_flagged = n_protected = n_protect_fb = n_q_retried = n_q_kept = 0
    kept: list[dict] = []
    for r in _iter_jsonl(output) if output.exists() else ():
        mt = r.get("_mt", {})
        n_rows += 1
        status[mt.get("status", "?")] += 1
        reason = mt.get("reason")
        if reason:
            reasons[reason.split(":")[0] if reason.startswith("engine error") else reason] += 1
        if mt.get("it_style"):
            styles[mt["it_style"]] += 1
        n_split += bool(mt.get("split"))
        n_retried += bool(mt.get("style_retries"))
        if mt.get("flags"):
            n_flagged += 1
            for per_field in mt["flags"].values():
                flag_counts.update(per_field.keys())
        n_protected += bool(mt.get("protected"))
        n_protect_fb += bool(mt.get("protect"))
        if mt.get("retry"):
            n_q_retried += 1
            n_q_kept += mt["retry"].get("kept") == "retry"
        if references is not None:
            kept.append({k: v for k, v in r.items() if k in config.fields or k in ("id", "_mt")})
    n_rejects = n_q_rejects = 0
    for rj in _iter_jsonl(rejects) if rejects.exists() else ():
        n_rejects += 1
        if "flags" in rj:
            n_q_rejects += 1
            for per_field in rj["flags"].values():
                flag_counts.update(per_field.keys())
    attempted = status["joint"] + status["fallback"] + (status["failed"] if config.mode == "joint" else 0)
    report = {
        "input_records": n_rows + n_rejects,
        "records": n_rows,
        "rejected": n_rejects,
        "mode": config.mode,
        "engine": engine,
        "src": config.src,
        "tgt": config.tgt,
        "fields": config.fields,
        "status": dict(status),
        "joint_success_rate": round(status["joint"] / attempted, 4) if attempted else None,
        "joint_after_style_retry": n_retried,
        "fallbacks": status["fallback"],
        "failures": status["failed"],
        "fallback_reasons": dict(reasons.most_common(10)),
        "split_records": n_split,
        "it_styles": dict(styles),
        "quality": {
            "checked": bool(getattr(config, "quality", False)),
            "on_flag": getattr(config, "on_flag", "keep"),
            "flagged_records": n_flagged + n_q_rejects,
            "by_flag": {k: flag_counts.get(k, 0) for k in FLAG_NAMES},
            "rejected": n_q_rejects,
            "retried": n_q_retried,
            "retry_kept": n_q_kept,
        },
        "protect": {
            "on": bool(getattr(config, "protect", False)),
            "records_with_spans": n_protected,
            "marker_lost_fallbacks": n_protect_fb,
        },
        "session": {
            "records": session.get("records", 0),
            "seconds": round(elapsed, 3),
            "records_per_s": round(session.get("records", 0) / elapsed, 3) if elapsed > 0 else None,
            "source_chars_per_s": round(session.get("source_chars", 0) / elapsed, 1) if elapsed > 0 else None,
            "world_size": world_size,
        },
        "output": str(output),
        "rejects": str(rejects) if n_rejects else None,
    }
    report.update(extra or {})
    if references is not None:
        report["references"] = str(references)
        report["scores"] = reference_scores(kept, references, config.fields)
    return report


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
