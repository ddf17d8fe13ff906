"""File-level driver: input file → output JSONL, incremental, resumable, shardable.

Crash safety. Output records are appended batch by batch and flushed; every output record carries
its input position in ``_mt.line``, and every reject its ``line``. ``--resume`` reads both files
(dropping a torn last line), skips the positions already there and appends the rest. Because
records are written in input order and rejects are written before the batch they belong to, the
finished file is byte-for-byte the file an uninterrupted run writes. A small sidecar
(``OUTPUT.run.json``) holds the settings so a resume with different settings (or an edited input:
its size and content hash are among them) is refused; it is removed when the run completes. The
report keeps them (``resume_settings``), so ``--resume`` of a completed run is checked the same way,
and when nothing is left to translate it is a no-op that says so and rewrites nothing.

Sharding (several GPUs or processes). With ``WORLD_SIZE`` > 1 (set by ``torchrun`` and
``accelerate launch``, or by hand with ``RANK``), rank r translates the records at positions
r, r + W, r + 2W … of the valid input into ``OUTPUT.shard-r-of-W`` (and its own rejects), then
drops a ``.done`` marker. Rank 0 waits for every marker and merges the shards in input order into
OUTPUT (same bytes as a one-process run), writes the report and removes the shards. Each rank
removes its own stale ``.done`` marker when it starts; a sharded run that crashed leaves shard
files and maybe markers behind — rerun all ranks together (with ``--resume`` to keep their work).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cltx.errors import CltxError, bad_arg
from cltx.mt.chat import flat_texts
from cltx.mt.engines import Engine, engine_name
from cltx.mt.pipeline import MTConfig, Pipeline, RecordHook
from cltx.mt.records import InputItem, read_items
from cltx.progress import Progress, ensure_progress

logger = logging.getLogger(__name__)

#: Seconds rank 0 waits for the other shards before it says so (a rank that died never finishes).
WAIT_WARNING_S = 30.0


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


def default_rejects(output: Path) -> Path:
    return output.with_name(output.stem + ".rejects.jsonl")


def report_path(output: Path) -> Path:
    return output.with_name(output.stem + ".report.json")


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from ``RANK``/``WORLD_SIZE`` (torchrun, accelerate), default ``(0, 1)``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    except ValueError as e:
        raise CltxError(f"RANK/WORLD_SIZE must be integers ({e}); fix: check the launcher's environment") from e
    if world < 1 or not 0 <= rank < world:
        unset = "" if "WORLD_SIZE" in os.environ else " (WORLD_SIZE is not set: 1 assumed)"
        raise CltxError(
            f"RANK={rank} WORLD_SIZE={world}{unset}: need 0 <= RANK < WORLD_SIZE; fix: set both for every process "
            "(RANK=0 … WORLD_SIZE-1, the same WORLD_SIZE), or start them with torchrun / accelerate launch"
        )
    return rank, world


def _input_identity(path: Path) -> str:
    """Size and SHA-256 of the input: output positions are input line numbers, so a resume over an
    edited input would mix records of two files."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{path.stat().st_size}:{h.hexdigest()[:16]}"


def _read_done(path: Path, key) -> set[int]:
    """Positions already written to ``path``; a torn (unterminated) last line is cut off."""
    done: set[int] = set()
    if not path.exists():
        return done
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning("%s: dropping a torn last line (%d bytes) before resuming", path, len(data) - end)
            fh.truncate(end)
    # split on b"\n" only: str.splitlines() also cuts at U+2028/U+2029/U+0085, which
    # json.dumps(ensure_ascii=False) leaves raw inside strings
    for i, bline in enumerate(data[:end].split(b"\n")[:-1], start=1):
        line = bline.decode("utf-8")
        if not line.strip():
            continue
        try:
            done.add(int(key(json.loads(line))))
        except (ValueError, KeyError, TypeError) as e:
            raise CltxError(
                f"{path}:{i}: not a cltx mt output line ({e}); fix: resume only files cltx mt wrote, "
                f"or start again without --resume"
            ) from e
    return done


#: The report key that keeps a completed run's settings (the sidecar's content), for a later ``--resume``.
SETTINGS_KEY = "resume_settings"


def refuse_other_settings(saved: dict, now: dict, out: Path, inp: Path, *, completed: bool) -> None:
    """Raise if a ``--resume`` of ``out`` comes with other settings than the run it continues.

    Args:
        saved: the settings the earlier run saved (the sidecar, or a completed run's report).
        now: this run's settings (:func:`run_file`'s fingerprint).
        completed: the earlier run finished (its settings come from the report); the process count
            is not compared then: a finished output is the same bytes for any ``WORLD_SIZE``.
    """
    now = json.loads(json.dumps(now))  # tuples → lists, as saved
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if completed:
        diff.pop("world_size", None)
    if not diff:
        return
    how = "completed" if completed else "started"
    again = "pass --overwrite instead of --resume to translate it again"
    if "input_size_sha256" in diff:  # the input's size:sha256 (see _input_identity)
        raise CltxError(
            f"--resume: INPUT={str(inp)!r} changed since OUTPUT {str(out)!r} was {how} from it: other settings "
            f"{diff} (saved, now); output lines are input positions, so resuming would mix two files; "
            f"fix: restore the input, or {again}"
        )
    raise CltxError(
        f"--resume: {out} was {how} with other settings {diff} (saved, now); "
        f"fix: rerun with the same settings, or {again}"
    )


class _Writer:
    """Appends output records and rejects; knows what is already done (for ``--resume``)."""

    def __init__(
        self, out: Path, rejects: Path, *, resume: bool, overwrite: bool, fingerprint: dict, inp: Path
    ) -> None:
        self.out, self.rejects = out, rejects
        self.state = out.with_name(out.name + ".run.json")
        exists = out.exists() and out.stat().st_size > 0
        if exists and not resume and not overwrite:
            raise bad_arg("OUTPUT", str(out), "exists; pass --resume to continue it or --overwrite to replace it")
        if rejects.exists() and rejects.stat().st_size > 0 and not resume and not overwrite:
            raise bad_arg(
                "--rejects", str(rejects), "exists; pass --resume to continue it, --overwrite to replace it, "
                "or name another file with --rejects",
            )  # fmt: skip
        if resume and self.state.exists():
            refuse_other_settings(json.loads(self.state.read_text()), fingerprint, out, inp, completed=False)
        if not resume:
            for p in (out, rejects):
                if p.exists():
                    p.unlink()
        self.done = _read_done(out, lambda r: r["_mt"]["line"]) if resume else set()
        self.done |= _read_done(rejects, lambda r: r["line"]) if resume else set()
        out.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(json.dumps(fingerprint))
        self._out = open(out, "a", encoding="utf-8")
        self._rej = None

    def reject(self, item: InputItem) -> None:
        if self._rej is None:
            self._rej = open(self.rejects, "a", encoding="utf-8")
        self._rej.write(dumps({"line": item.line, "error": item.error, "raw": item.raw}) + "\n")
        self._rej.flush()

    def reject_result(self, res) -> None:
        """A translated record the quality gate rejected (``--on-flag reject``): the record as it
        would have been written, its flags and the reason."""
        if self._rej is None:
            self._rej = open(self.rejects, "a", encoding="utf-8")
        flags = res.meta.get("flags", {})
        why = "; ".join(f"{f}: {', '.join(v)}" for f, v in flags.items())
        row = {"line": res.line, "error": f"quality flags ({why})", "flags": flags, "record": res.output()}
        self._rej.write(dumps(row) + "\n")
        self._rej.flush()

    def write(self, records: list[dict]) -> None:
        if records:
            self._out.write("".join(dumps(r) + "\n" for r in records))
            self._out.flush()
            os.fsync(self._out.fileno())

    def close(self, complete: bool) -> None:
        self._out.close()
        if self._rej is not None:
            self._rej.close()
        if complete and self.state.exists():
            self.state.unlink()


def _merge(parts: list[Path], dest: Path, key) -> None:
    """Merge shard files (each sorted by ``key``) into ``dest`` in ``key`` order."""
    import heapq

    def rows(p: Path):
        if not p.exists():
            return
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield key(json.loads(line)), line if line.endswith("\n") else line + "\n"

    tmp = dest.with_name(dest.name + ".merging")
    with open(tmp, "w", encoding="utf-8") as fh:
        for _, line in heapq.merge(*(rows(p) for p in parts), key=lambda kv: kv[0]):
            fh.write(line)
    if tmp.stat().st_size or any(p.exists() for p in parts):
        tmp.replace(dest)
    else:
        tmp.unlink()


def _completed_report(inp: Path, out: Path, rejects: Path, fingerprint: dict, positions: list[int]) -> dict | None:
    """For ``--resume`` without a sidecar: the report of the completed run into ``out``, or ``None``.

    A completed run removed its sidecar, but its report keeps the settings: a resume with other
    settings or an edited input is refused as it is during a run. When every input position is in the
    output or the rejects file there is nothing to do: the files are left as they are and the saved
    report comes back (``already_complete``, nothing translated this session). ``None``: no such
    report (none yet, or one written before the settings were kept), or positions are missing (the
    resume goes on and translates them).
    """
    rp = report_path(out)
    try:
        saved = json.loads(rp.read_text(encoding="utf-8")) if rp.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get(SETTINGS_KEY), dict):
        return None
    refuse_other_settings(saved[SETTINGS_KEY], fingerprint, out, inp, completed=True)
    done = _read_done(out, lambda r: r["_mt"]["line"]) | _read_done(rejects, lambda r: r["line"])
    if not done.issuperset(positions):
        return None
    logger.warning(
        "%s is already complete (all %d input records are in it or its rejects file): nothing to translate, "
        "nothing rewritten; pass --overwrite instead of --resume to translate it again", out, len(positions),
    )  # fmt: skip
    saved["already_complete"] = True
    saved["session"] = {
        **saved.get("session", {}), "records": 0, "seconds": 0.0, "records_per_s": None, "source_chars_per_s": None,
    }  # fmt: skip
    return saved


def run_file(
    input_path: str | Path,
    output_path: str | Path,
    engine: Engine,
    config: MTConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
    hooks: Sequence[RecordHook] = (),
    progress: Progress | None = None,
    references: str | Path | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    merge_timeout: float | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict | None:
    """Translate ``input_path`` into ``output_path``; return the report (rank 0) or ``None``.

    Args:
        resume: continue an interrupted run (see the module docstring).
        overwrite: replace an existing output.
        skip_invalid: write invalid input items to the rejects file instead of stopping.
        rejects_path: defaults to ``OUTPUT-stem.rejects.jsonl`` beside the output.
        hooks: per-record callables (cltx.mt.pipeline.RecordHook).
        references: reference translations (JSONL) for BLEU/chrF in the report.
        rank / world_size: sharding; default from the environment (:func:`dist_env`).
        merge_timeout: seconds rank 0 waits for the other shards (``None``: no limit).
        settings: more of what a ``resume`` must match (JSON-able), e.g. the engine's options; the
            engine's name and the input file's size and content hash are always checked.
    """
    from cltx.mt.report import build_report, write_report

    progress = ensure_progress(progress)
    inp, out = Path(input_path), Path(output_path)
    if inp.resolve() == out.resolve():
        raise bad_arg("OUTPUT", str(out), "is the input file; write to another path")
    if out.is_dir():
        raise bad_arg("OUTPUT", str(out), "is a folder; give a file path, e.g. OUTPUT/translated.jsonl")
    if resume and overwrite:
        raise bad_arg("--resume/--overwrite", True, "--resume continues OUTPUT, --overwrite replaces it; drop one")
    if rank is None or world_size is None:
        rank, world_size = dist_env()
    final_rejects = Path(rejects_path) if rejects_path else default_rejects(out)
    if report_path(out).resolve() == inp.resolve():
        raise bad_arg("OUTPUT", str(out), f"its report {report_path(out)} would replace the input; rename OUTPUT")
    if final_rejects.is_dir():
        raise bad_arg("--rejects", str(final_rejects), "is a folder; give a file path, e.g. rejects.jsonl")
    for name, other in (("INPUT", inp), ("OUTPUT", out), ("report", report_path(out))):
        if final_rejects.resolve() == other.resolve():  # a new run would delete it first / the report replace it
            raise bad_arg("--rejects", str(final_rejects), f"is the {name} file; name another file")
    if references is not None and not Path(references).is_file():
        raise bad_arg("--references", str(references), "is not a file; give the reference JSONL file")
    if world_size > 1:
        shard_out = out.with_name(f"{out.name}.shard-{rank}-of-{world_size}")
        shard_rej = final_rejects.with_name(f"{final_rejects.name}.shard-{rank}-of-{world_size}")
        done_marker = shard_out.with_name(shard_out.name + ".done")
        if done_marker.exists():
            done_marker.unlink()
        # every rank, not rank 0 only: another rank would translate its whole share into a shard beside an
        # OUTPUT that rank 0 refuses to replace, and leave the shard behind
        if out.exists() and not (resume or overwrite):
            raise bad_arg("OUTPUT", str(out), "exists; pass --resume to continue it or --overwrite to replace it")
    else:
        shard_out, shard_rej = out, final_rejects

    # Pass 1: parse and check everything before any engine time is spent.
    n_valid = n_invalid = 0
    first_error = None
    positions: list[int] = []  # every item's position (--resume of a completed run checks them)
    valid_positions: list[int] = []  # the valid ones': references without 'id' align with them
    for item in read_items(inp, config.fields, require_all=config.require_all):
        positions.append(item.line)
        if item.error is None:
            valid_positions.append(item.line)
            n_valid += 1
        else:
            n_invalid += 1
            first_error = first_error or item.error
    if n_valid + n_invalid == 0:
        # Almost always a wrong path or an upstream step that wrote nothing; an empty output with
        # exit 0 would pass that on silently. Checked before the output is created or truncated.
        raise bad_arg(
            "INPUT", str(inp), "holds no records (an empty file, only blank lines, or an empty JSON array); "
            "fix: check the path, or the step that wrote it",
        )  # fmt: skip
    if n_invalid and not skip_invalid:
        more = f" [{n_invalid - 1} more invalid item(s) in the file]" if n_invalid > 1 else ""
        raise CltxError(f"{first_error}{more}; or pass --skip-invalid to write invalid items to a rejects file")
    if references is not None:  # what the report would refuse after hours of translation, refused now
        from cltx.mt.report import check_references

        # one per valid input record, also when --on-flag reject takes some out of the output: the
        # report pairs them by input position (each output's _mt.line)
        check_references(references, n_valid, "outputs" if config.on_flag != "reject" else "valid input records")

    fingerprint = {
        **config.fingerprint(), "world_size": world_size, "engine": engine_name(engine),
        **dict(settings or {}), "input_size_sha256": _input_identity(inp),
    }  # fmt: skip
    if resume and not shard_out.with_name(shard_out.name + ".run.json").exists():
        finished = _completed_report(inp, out, final_rejects, fingerprint, positions)
        if finished is not None:
            return finished if rank == 0 else None
    writer = _Writer(
        shard_out, shard_rej, resume=resume, overwrite=overwrite or world_size > 1 and resume is False,
        fingerprint=fingerprint, inp=inp,
    )  # fmt: skip
    pipe = Pipeline(engine, config, hooks)
    mine = sum(1 for k in range(n_valid) if k % world_size == rank)
    progress.start("mt", total=mine + (n_invalid if rank == 0 else 0), description=f"mt {config.mode}")
    t0 = time.perf_counter()
    stats = {"records": 0, "source_chars": 0, "joint": 0, "fallback": 0, "separate": 0, "failed": 0, "empty": 0}
    complete = False
    try:
        batch: list[tuple[int, dict]] = []
        valid_k = -1

        def flush() -> None:
            if not batch:
                return
            results = pipe.translate_batch(batch)
            for r in results:  # rejects before the batch they belong to (see the module docstring)
                if r.rejected:
                    writer.reject_result(r)
            writer.write([r.output() for r in results if not r.rejected])
            for r in results:
                stats["quality_rejected"] = stats.get("quality_rejected", 0) + r.rejected
                stats["records"] += 1
                stats[r.status] = stats.get(r.status, 0) + 1
                stats["source_chars"] += sum(len(v) for v in flat_texts(r.source).values())
            progress.advance("mt", len(batch), joint=stats["joint"], fallback=stats["fallback"], failed=stats["failed"])
            batch.clear()

        done = writer.done
        if world_size > 1 and resume:  # a finished earlier merge counts as done too
            done |= _read_done(out, lambda r: r["_mt"]["line"]) | _read_done(final_rejects, lambda r: r["line"])
        for item in read_items(inp, config.fields, require_all=config.require_all):
            if item.error is not None:
                if rank == 0 and item.line not in done:
                    writer.reject(item)
                if rank == 0:
                    progress.advance("mt", 1)
                continue
            valid_k += 1
            if valid_k % world_size != rank:
                continue
            if item.line in done:
                progress.advance("mt", 1)
                continue
            batch.append((item.line, item.record))  # type: ignore[arg-type]
            if len(batch) >= config.batch_records:
                flush()
        flush()
        complete = True
    finally:
        writer.close(complete)
    elapsed = time.perf_counter() - t0
    progress.finish("mt")

    if world_size > 1:
        done_marker.write_text(json.dumps(stats))
        if rank != 0:
            return None
        markers = [out.with_name(f"{out.name}.shard-{r}-of-{world_size}.done") for r in range(world_size)]
        waited = time.perf_counter()
        warned = False
        while not all(m.exists() for m in markers):
            if not warned and time.perf_counter() - waited >= WAIT_WARNING_S:
                # Without this a rank that died left rank 0 waiting silently for ever.
                late = [r for r, m in enumerate(markers) if not m.exists()]
                logger.warning(
                    "rank 0: done with its shard, waiting for rank(s) %s of %d to finish before merging into %s; "
                    "if one of them died, rerun it (same command, same RANK/WORLD_SIZE) with --resume: this "
                    "rank merges as soon as it is done", ", ".join(map(str, late)), world_size, out,
                )  # fmt: skip
                warned = True
            if merge_timeout is not None and time.perf_counter() - waited > merge_timeout:
                missing = [str(m) for m in markers if not m.exists()]
                raise CltxError(f"rank 0 waited {merge_timeout:.0f}s for shards {missing}; fix: rerun the ranks")
            time.sleep(0.2)
        shards = [out.with_name(f"{out.name}.shard-{r}-of-{world_size}") for r in range(world_size)]
        rej_shards = [
            final_rejects.with_name(f"{final_rejects.name}.shard-{r}-of-{world_size}") for r in range(world_size)
        ]
        earlier = [out] if resume and out.exists() else []
        earlier_rej = [final_rejects] if resume and final_rejects.exists() else []
        _merge([*earlier, *shards], out, lambda r: r["_mt"]["line"])
        _merge([*earlier_rej, *rej_shards], final_rejects, lambda r: r["line"])
        for m in markers:
            shard_stats = json.loads(m.read_text())
            if m != markers[0]:
                for k, v in shard_stats.items():
                    stats[k] = stats.get(k, 0) + v
        for p in [*shards, *rej_shards, *markers]:
            if p.exists():
                p.unlink()
        elapsed = time.perf_counter() - t0

    from cltx.mt.tcache import CachedEngine

    extra: dict[str, Any] = {SETTINGS_KEY: fingerprint}
    if isinstance(engine, CachedEngine):
        extra["cache"] = {"path": str(engine.cache.path), **engine.stats.as_dict()}
        if world_size > 1:
            extra["cache"]["note"] = "rank 0 only"
    report = build_report(
        out, final_rejects, config=config, engine=engine_name(engine), session=stats, elapsed=elapsed,
        references=references, world_size=world_size, extra=extra, positions=valid_positions,
    )  # fmt: skip
    write_report(report, report_path(out))
    return report
