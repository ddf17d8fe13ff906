"""Translation cache (SQLite, content-addressed), the cached engine wrapper, and the CUDA OOM back-off."""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch

from cltx.errors import CltxError
from cltx.mt.tcache import (
    CACHE_FILE,
    CachedEngine,
    OomBackoff,
    TranslationCache,
    cache_namespace,
    is_cuda_oom,
    translate_with_oom_backoff,
)


class CountingEngine:
    """Deterministic fake engine that records every text it is asked to translate."""

    name = "counting"
    max_input_len = 123

    def __init__(self, tag: str = "pt") -> None:
        self.tag = tag
        self.calls: list[list[str]] = []

    def translate(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        return [f"<{self.tag}>{t[::-1]}" for t in texts]

    @property
    def sent(self) -> list[str]:
        return [t for c in self.calls for t in c]


def test_second_run_makes_no_engine_call(tmp_path):
    texts = [f"sentence number {i}" for i in range(50)]
    inner = CountingEngine()
    first = CachedEngine(inner, TranslationCache(tmp_path), engine="counting", src="en", tgt="pt")
    out1 = first.translate(texts)
    assert out1 == [f"<pt>{t[::-1]}" for t in texts]
    assert first.stats.engine_texts == 50 and first.stats.hits == 0

    inner2 = CountingEngine()
    second = CachedEngine(inner2, TranslationCache(tmp_path), engine="counting", src="en", tgt="pt")
    assert second.translate(texts) == out1
    assert inner2.calls == [] and second.stats.engine_calls == 0 and second.stats.hits == 50


def test_edited_text_alone_is_retranslated_and_duplicates_are_sent_once(tmp_path):
    cache = TranslationCache(tmp_path)
    texts = [f"record {i}" for i in range(20)]
    CachedEngine(CountingEngine(), cache, engine="counting", src="en", tgt="pt").translate(texts)
    edited = list(texts)
    edited[7] = "record 7, now edited"
    inner = CountingEngine()
    eng = CachedEngine(inner, cache, engine="counting", src="en", tgt="pt")
    out = eng.translate(edited + [edited[7]])
    assert inner.sent == ["record 7, now edited"]
    assert out[7] == out[-1] == "<pt>" + "record 7, now edited"[::-1]
    assert eng.stats.as_dict() == {"hits": 19, "misses": 2, "engine_calls": 1, "engine_texts": 1, "stored": 1}


def test_key_covers_engine_options_and_languages(tmp_path):
    cache = TranslationCache(tmp_path)
    base = {"engine": "hf:m", "options": {"num_beams": 1}, "src": "en", "tgt": "pt"}
    CachedEngine(CountingEngine(), cache, **base).translate(["hello"])
    for change in ({"options": {"num_beams": 4}}, {"tgt": "de"}, {"src": "fr"}, {"engine": "hf:other"}):
        inner = CountingEngine()
        CachedEngine(inner, cache, **{**base, **change}).translate(["hello"])
        assert inner.sent == ["hello"], change
    # option order does not matter
    assert cache_namespace(engine="e", options={"a": 1, "b": 2}, src="en", tgt="pt") == cache_namespace(
        engine="e", options={"b": 2, "a": 1}, src="en", tgt="pt"
    )


def test_two_datasets_sharing_text_share_translations(tmp_path):
    cache = TranslationCache(tmp_path)
    CachedEngine(CountingEngine(), cache, engine="e", src="en", tgt="pt").translate(["shared", "only in A"])
    inner = CountingEngine()
    CachedEngine(inner, cache, engine="e", src="en", tgt="pt").translate(["only in B", "shared"])
    assert inner.sent == ["only in B"]


def test_wrapper_stands_in_for_the_engine_and_pickles(tmp_path):
    eng = CachedEngine(CountingEngine(), TranslationCache(tmp_path), engine="counting", src="en", tgt="pt")
    assert eng.max_input_len == 123 and eng.name == "counting"
    clone = pickle.loads(pickle.dumps(eng))
    clone.translate(["abc"])
    assert eng.translate(["abc"]) == ["<pt>cba"] and eng.stats.hits == 1


def test_default_location_is_the_cltx_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cc"))
    cache = TranslationCache()
    assert cache.path == tmp_path / "cc" / CACHE_FILE
    assert TranslationCache(tmp_path / "x.sqlite").path == tmp_path / "x.sqlite"
    mode = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_corrupt_cache_file_is_a_clear_error(tmp_path):
    bad = tmp_path / CACHE_FILE
    bad.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CltxError, match="--no-cache"):
        TranslationCache(tmp_path)


def test_engine_failure_stores_nothing(tmp_path):
    cache = TranslationCache(tmp_path)

    class Broken:
        def translate(self, texts):
            raise RuntimeError("engine down")

    with pytest.raises(RuntimeError):
        CachedEngine(Broken(), cache, engine="b", src="en", tgt="pt").translate(["x"])
    assert len(cache) == 0


_WRITER = textwrap.dedent(
    """
    import sys
    from cltx.mt.tcache import CachedEngine, TranslationCache

    class Eng:
        def translate(self, texts):
            return [t.upper() for t in texts]

    path, rank = sys.argv[1], int(sys.argv[2])
    cache = TranslationCache(path, timeout=60)
    eng = CachedEngine(Eng(), cache, engine="upper", src="en", tgt="pt")
    for step in range(40):
        # overlapping ranges: every process writes keys the others write too
        texts = [f"text {(rank * 7 + step * 5 + i) % 400}" for i in range(25)]
        out = eng.translate(texts)
        assert out == [t.upper() for t in texts], "wrong value read back"
    print(eng.stats.hits, eng.stats.stored)
    """
)


def test_concurrent_processes_share_the_cache_safely(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "db"), str(r)], stdout=subprocess.PIPE, text=True)
        for r in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    conn = sqlite3.connect(tmp_path / "db" / CACHE_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict(conn.execute("SELECT key, output FROM translations").fetchall())
    eng = CachedEngine(CountingEngine(), TranslationCache(tmp_path / "db"), engine="upper", src="en", tgt="pt")
    written = {f"text {i}" for r in range(4) for s in range(40) for i in [(r * 7 + s * 5 + j) % 400 for j in range(25)]}
    assert len(rows) == len(written)
    for t in written:
        assert rows[eng.key(t)] == t.upper()
    stored = sum(int(o[0].split()[1]) for o in outs)
    assert stored == len(written)  # each distinct text stored exactly once across all processes


# --------------------------------------------------------------------------------------------- OOM back-off
class FakeOomModel:
    """Raises torch.cuda.OutOfMemoryError for batches larger than ``fits``."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.sizes: list[int] = []

    def __call__(self, batch):
        self.sizes.append(len(batch))
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [f"t({x})" for x in batch]


def test_oom_halves_and_keeps_order():
    fn = FakeOomModel(fits=3)
    items = list(range(13))
    assert translate_with_oom_backoff(fn, items) == [f"t({x})" for x in items]
    # 13 -> 7 + 6; 7 -> 4 + 3; 4 -> 2 + 2; 6 -> 3 + 3 (without state each half is tried as it is)
    assert fn.sizes == [13, 7, 4, 2, 2, 3, 6, 3, 3]


def test_oom_state_caps_later_batches():
    fn = FakeOomModel(fits=4)
    state = OomBackoff()
    translate_with_oom_backoff(fn, list(range(16)), state=state)
    assert state.max_batch == 4 and state.backoffs == 2
    fn.sizes.clear()
    assert translate_with_oom_backoff(fn, list(range(10)), state=state) == [f"t({x})" for x in range(10)]
    assert fn.sizes == [4, 4, 2]  # no failing attempt any more


def test_oom_on_one_item_and_other_errors_propagate():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        translate_with_oom_backoff(FakeOomModel(fits=0), ["a", "b"])

    def broken(batch):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        translate_with_oom_backoff(broken, ["a", "b"])
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))


# --------------------------------------------------------------------------------------------- through cltx mt
_LOGGING_ENGINE = textwrap.dedent(
    """
    import json, os

    def translate(texts, tgt):
        with open(os.environ["CLTX_TEST_CALL_LOG"], "a") as fh:
            for t in texts:
                fh.write(json.dumps(t) + "\\n")
        return [tgt + ":" + t.upper() for t in texts]
    """
)


def _records(n: int) -> list[dict]:
    recs = []
    for i in range(n):
        if i % 2:
            qa = {"question": f"Who wrote letter {i}?", "passage": f"Letter {i} was by Ana.", "answer": "Ana"}
            recs.append({"id": i, **qa})
        else:
            recs.append({"id": i, "instruction": f"Count to {i}.", "input": "", "output": f"One to {i}."})
    return recs


def test_cli_rerun_makes_zero_engine_calls_and_an_edit_only_its_own(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CLTX_TEST_CALL_LOG", str(log))
    (tmp_path / "eng.py").write_text(_LOGGING_ENGINE)
    inp = tmp_path / "in.jsonl"
    recs = _records(9)
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    fields = "instruction,input,output,question,passage,answer"
    args = ["--fields", fields, "--engine", f"python:{tmp_path / 'eng.py'}:translate", "--cache", str(tmp_path / "c")]

    def run(out):
        r = CliRunner().invoke(app, ["mt", str(inp), str(tmp_path / out), *args, "-q"])
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / out).with_suffix(".report.json").read_text())

    def calls():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    first = run("a.jsonl")
    n_first = len(calls())
    assert n_first == 9  # joint mode: one sequence per record
    assert first["cache"]["misses"] == 9 and first["cache"]["engine_calls"] >= 1

    second = run("b.jsonl")
    assert len(calls()) == n_first  # zero engine calls
    assert second["cache"]["engine_calls"] == 0 and second["cache"]["hits"] == 9
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()

    recs[4]["output"] = "One, two, three, four."
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    third = run("c.jsonl")
    new = calls()[n_first:]
    assert len(new) == 1 and "One, two, three, four." in new[0]  # exactly that record's sequence
    assert third["cache"]["hits"] == 8 and third["cache"]["engine_texts"] == 1

    r = CliRunner().invoke(app, ["mt", str(inp), str(tmp_path / "d.jsonl"), *args[:4], "--no-cache", "-q"])
    assert r.exit_code == 0 and len(calls()) == n_first + 1 + 9


@pytest.mark.integration
def test_embedded_engine_rerun_from_cache(tmp_path):
    from cltx.mt import MTConfig, make_engine
    from cltx.mt.runner import run_file
    from cltx.mt.tcache import engine_identity

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in _records(4)))
    cfg = MTConfig(fields=["instruction", "input", "output", "question", "passage", "answer"])
    eid, opts = engine_identity("bergamot", {}, keep_newlines=True)
    engines = []
    for name in ("a", "b"):
        eng = CachedEngine(
            make_engine("bergamot", "en", "pt"), TranslationCache(tmp_path / "c"), engine=eid, options=opts,
            src="en", tgt="pt",
        )  # fmt: skip
        run_file(inp, tmp_path / f"{name}.jsonl", eng, cfg)
        engines.append(eng)
    assert engines[0].stats.engine_texts == 4 and engines[1].stats.engine_calls == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
