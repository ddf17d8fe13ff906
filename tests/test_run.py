"""cltx run: config validation before heavy work, stage reuse / rerun / resume, and the report."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

from cltx.errors import CltxError
from cltx.paths import data_file
from cltx.run import MARKER, STOP_ENV, RunStopped, build_stages, load_config, run_pipeline

# ------------------------------------------------------------------------------ validation


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_configs_validate_and_quick_is_smaller():
    full, quick = load_config("default"), load_config("quick")
    assert quick.quick and not full.quick
    assert quick.pretrain.max_steps < full.pretrain.max_steps
    assert quick.clo.max_steps < full.clo.max_steps
    assert load_config("default", quick=True).clo.max_steps == quick.clo.max_steps
    assert Path(full.mt.input) == data_file("sample_en.jsonl")
    names = [s.name for s in build_stages(full)]
    assert names[:3] == ["mt", "mt-separate", "salt"]
    assert {"pretrain-salt", "pretrain-focus", "pretrain-random", "clo", "sft", "clo-half", "eval"} <= set(names)


def test_per_device_values(tmp_path):
    p = _write(tmp_path, "[clo]\nmax_steps = { cpu = 3, gpu = 300 }\n")
    assert load_config(p, device="cpu").clo.max_steps == 3
    assert load_config(p, device="cuda").clo.max_steps == 300
    bad = _write(tmp_path, "[clo]\nmax_steps = { gpu = 300 }\n", "b.toml")
    with pytest.raises(CltxError, match="no value for cpu"):
        load_config(bad, device="cpu")


def test_default_config_lists_every_option():
    # The README sends users to run_default.toml "for every option with a comment": set or commented out.
    import dataclasses
    import re

    from cltx.paths import data_file
    from cltx.run import SECTIONS

    text = data_file("run_default.toml").read_text(encoding="utf-8")
    missing = []
    for section, cls in SECTIONS.items():
        body = re.search(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M).group(1)
        keys = set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", body, re.M))
        missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in keys]
    assert not missing


def test_extends_a_shipped_config_by_its_file_name(tmp_path):
    # The README's rule for relative paths: a bare name not beside the config is a shipped data file.
    p = _write(tmp_path, 'extends = "run_default.toml"\n[eval]\nprompts = 2\n')
    cfg = load_config(p, device="cpu")
    assert cfg.eval.prompts == 2
    assert cfg.salt.methods == load_config("default", device="cpu").salt.methods


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[mtt]\nlimit = 2\n", "unknown stage/section 'mtt'"),
        ("[quick.clo_x]\nmax_steps = 1\n", "unknown section 'quick.clo_x'"),
        ("[clo]\nstepz = 3\n", "section 'clo' has no option 'stepz'"),
        ("[clo]\nmax_steps = 'ten'\n", "clo.max_steps='ten' should be int"),
        ("[clo]\ntrain = 'everything'\n", "clo.train='everything'"),
        ("[clo]\nmodel = './no/such/model'\n", "clo.model=.*no such folder"),
        ("[salt]\nllm = '/nowhere/llm'\n", "salt.llm=.*no such folder"),
        ("[mt]\ninput = 'missing.jsonl'\n", "mt.input=.*no such file"),
        ("[mt]\nengine = 'google'\n", "mt.engine='google'"),
        ("[mt]\nengine = 'python:no_such_module_xyz:f'\n", "cannot find module"),
        ("[pretrain]\ninits = ['salt', 'wechsel']\n[salt]\nmethods = ['salt']\n", "needs \\['wechsel'\\]"),
        ("[clo]\nmodel = 'pretrain:mean'\n", "no such pretrain stage"),
        ("[salt]\nenabled = false\n", "needs the salt stage"),
        ("extends = 'nope.toml'\n", "extends='nope.toml' does not exist"),
        ("[clo\n", "not valid TOML"),
        # held-out text would silently be training records, and eval would start with no prompt
        ("[mt]\nheld_out = 0\n", "mt.held_out=0: salt .*eval read"),
        ("[mt]\nlimit = 4\nheld_out = 3\n", "mt.held_out=3: with mt.limit=4"),  # was cut to 2 silently
        ("[mt]\nheld_out = 0\n[salt]\nenabled = false\n[pretrain]\nenabled = false\n[eval]\nenabled = false\n"
         "[clo]\neval_heldout = true\n", r"mt.held_out=0: clo \(eval_heldout\) read"),
        ("[clo]\neval_steps = 3\n", "clo.eval_steps=3: held-out scores are off.*fix: set eval_heldout = true"),
        ("[run]\ntgt = 'de'\n", "mt.engine='bergamot' translates only en-pt and pt-en"),  # failed in stage mt
        ("[mt]\ninput = '.'\n", "mt.input=.*a folder, not a file"),
        ("[mt]\nengine = 'openai:m'\nengine_options = { concurrency = 0 }\n", "mt.engine='openai:m'.*concurrency"),
        ("[mt]\nengine_options = { a = [1] }\n", "mt.engine_options.a=\\[1\\]"),
        ("[mt]\nengine_options = 'x'\n", "mt.engine_options='x' should be dict"),
    ],
)
def test_bad_config_fails_before_any_stage(tmp_path, monkeypatch, text, match):
    import cltx.run as run_mod

    def boom(*a, **k):  # any stage starting would be heavy work
        raise AssertionError("a stage ran before validation finished")

    for name in ("_stage_mt", "_stage_salt", "_stage_pretrain", "_stage_clo", "_stage_eval"):
        monkeypatch.setattr(run_mod, name, boom)
    p = _write(tmp_path, text)
    with pytest.raises(CltxError, match=match):
        run_pipeline(p, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_bad_config_is_one_red_line(tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    p = _write(tmp_path, "[clo]\nmodel = './missing-model'\n")
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "clo.model=" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["run", "no-such-config"])
    assert res.exit_code == 1 and "no such file" in res.output


def test_force_names_unknown_stage(tmp_path):
    p = _write(
        tmp_path,
        "[salt]\nenabled = false\n[pretrain]\nenabled = false\n[clo]\nenabled = false\n[eval]\nenabled = false\n",
    )
    with pytest.raises(CltxError, match="--force='clo'"):
        run_pipeline(p, out=tmp_path / "o", force=["clo"])


# ------------------------------------------------------------------------------ resume / reuse

ENGINE = """
CALLS = []
def translate(texts, src, tgt):
    return [t.upper() for t in texts]
"""


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.test_pretrain import _tiny_llama

    return _tiny_llama(tmp_path_factory.mktemp("tiny-run-llama"))


def _small_config(tmp_path: Path, model: Path, *, steps: int = 3, limit: int = 10) -> Path:
    eng = tmp_path / "upper_engine.py"
    eng.write_text(ENGINE)
    return _write(
        tmp_path,
        f"""
        [run]
        out = "{tmp_path / "out"}"
        [mt]
        input = "{data_file("sample_en.jsonl")}"
        engine = "python:{eng}:translate"
        limit = {limit}
        held_out = 3
        [salt]
        enabled = false
        [pretrain]
        inits = ["base"]
        model = "{model}"
        text = "target"
        max_steps = {steps}
        block_size = 16
        batch_size = 2
        [clo]
        enabled = false
        [eval]
        enabled = false
        """,
    )


def _mtime(run: Path, stage: str) -> float:
    return (run / stage / MARKER).stat().st_mtime_ns


def test_interrupted_run_resumes_and_edits_rerun_downstream(tmp_path, tiny_llama, monkeypatch):
    cfg = _small_config(tmp_path, tiny_llama)
    run = tmp_path / "out"
    monkeypatch.setenv(STOP_ENV, "mt-separate")
    with pytest.raises(RunStopped):
        run_pipeline(cfg)
    assert (run / "mt" / MARKER).exists() and (run / "mt-separate" / MARKER).exists()
    assert not (run / "pretrain-base").exists() and not (run / "report.json").exists()
    t_mt, t_sep = _mtime(run, "mt"), _mtime(run, "mt-separate")

    # A crash inside the next stage leaves no marker: a half-written folder is not "finished".
    (run / "pretrain-base").mkdir()
    (run / "pretrain-base" / "junk.bin").write_bytes(b"partial")
    monkeypatch.delenv(STOP_ENV)
    rep = run_pipeline(cfg)
    assert rep["stages"]["mt"]["reused"] and rep["stages"]["mt-separate"]["reused"]
    assert not rep["stages"]["pretrain-base"]["reused"]
    assert not (run / "pretrain-base" / "junk.bin").exists()
    assert (_mtime(run, "mt"), _mtime(run, "mt-separate")) == (t_mt, t_sep)
    t_pre = _mtime(run, "pretrain-base")
    assert (run / "pretrain-base" / "model" / "model.safetensors").exists()
    assert rep["mt"]["joint"]["records"] == 10

    # Nothing changed: everything reused.
    rep = run_pipeline(cfg)
    assert all(s["reused"] for s in rep["stages"].values())
    assert _mtime(run, "pretrain-base") == t_pre

    # Edit a downstream stage's option: only it reruns.
    cfg = _small_config(tmp_path, tiny_llama, steps=4)
    rep = run_pipeline(cfg)
    assert rep["stages"]["mt"]["reused"] and not rep["stages"]["pretrain-base"]["reused"]
    assert json.loads((run / "pretrain-base" / MARKER).read_text())["result"]["steps"] == 4

    # Edit an upstream stage: it and everything downstream rerun.
    cfg = _small_config(tmp_path, tiny_llama, steps=4, limit=12)
    rep = run_pipeline(cfg)
    assert not any(s["reused"] for s in rep["stages"].values())
    assert rep["mt"]["joint"]["records"] == 12

    # --force a stage: it and its downstream rerun, the rest is reused.
    rep = run_pipeline(cfg, force=["mt-separate"])
    assert rep["stages"]["mt"]["reused"] and not rep["stages"]["mt-separate"]["reused"]
    assert rep["stages"]["pretrain-base"]["reused"]


def _finite_numbers(obj, path="") -> list[str]:
    """Paths of numbers that are not finite."""
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad += _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
    return bad


def test_tiny_pipeline_wires_clo_sft_eval_and_report(tmp_path, tiny_llama):
    """Every stage but salt on a tiny Llama: the report's CLO section and plots come from real runs."""
    base = _small_config(tmp_path, tiny_llama, steps=2, limit=14).read_text()
    cfg = base.replace("[clo]\nenabled = false", "").replace("[eval]\nenabled = false", "")
    cfg += textwrap.dedent(
        """
        [clo]
        model = "pretrain:base"
        max_steps = 3
        batch_size = 1
        lr = 1e-3
        max_length = 96
        train = "full"
        eval_heldout = true
        eval_steps = 2
        [eval]
        prompts = 2
        max_new_tokens = 3
        """
    )
    p = tmp_path / "tiny.toml"
    p.write_text(cfg)
    rep = run_pipeline(p)
    run = tmp_path / "out"
    clo = rep["clo"]
    assert set(clo["models"]) == {"base", "clo", "sft", "clo-half"}
    for m in clo["models"].values():
        assert 0.0 <= m["target_prompt_share"] <= 1.0 and math.isfinite(m["nll_target"])
    tr = clo["training"]
    assert [c["step"] for c in tr["clo"]["curve"]] == [1, 2, 3]
    assert tr["clo-half"]["input_records"] == tr["clo"]["input_records"] // 2 == 5
    assert all(c["margin"] is not None for c in tr["clo"]["curve"])
    assert all(c["margin"] is None for c in tr["sft"]["curve"])
    # clo.eval_heldout: the 3 held-out records scored before the first step, at step 2 and after the last
    for name in ("clo", "sft", "clo-half"):
        held = tr[name]["heldout_curve"]
        assert [h["step"] for h in held] == [0, 2, 3] and tr[name]["heldout_records"] == 3, name
        assert all(math.isfinite(h["loss"]) for h in held) and held[-1]["loss"] != held[0]["loss"], name
    assert tr["clo"]["heldout_curve"][0]["margin"] == 0.0 and tr["clo"]["heldout_curve"][-1]["margin"] != 0.0
    assert tr["sft"]["heldout_curve"][0]["margin"] is None and tr["sft"]["heldout_last_accuracy"] is None
    assert tr["sft"]["heldout_curve"][0]["loss"] == tr["sft"]["heldout_curve"][0]["nll"]
    checks = {c["check"] for c in rep["claims"]}
    assert {"clo > sft", "clo < sft", "clo-half > sft", "joint > separate"} <= checks
    assert (run / "clo_vs_sft.png").stat().st_size > 1000 and (run / "pretrain_loss.png").exists()
    assert "## CLO vs SFT" in (run / "report.md").read_text()
    assert "heldout_first_loss" in (run / "report.md").read_text()
    assert not _finite_numbers(json.loads((run / "report.json").read_text()))
    # off (the library default): the clo stages' options, hence the keys of earlier runs' stages, are as before
    off = tmp_path / "off.toml"
    off.write_text(cfg.replace("eval_heldout = true\n", "").replace("eval_steps = 2\n", ""))
    opts = {s.name: s.options for s in build_stages(load_config(off))}
    assert not {"eval_heldout", "eval_steps"} & set(opts["clo"])
    assert {s.name: s.options for s in build_stages(load_config(p))}["clo"]["eval_steps"] == 2


# ------------------------------------------------------------------------------ end to end


@pytest.mark.integration
def test_quick_run_end_to_end(tmp_path):
    rep = run_pipeline("quick", out=tmp_path / "quick")
    run = tmp_path / "quick"
    data = json.loads((run / "report.json").read_text())
    assert data["claims"] == rep["claims"]
    for section in ("mt", "salt", "clo", "environment", "stages"):
        assert data[section], f"report section {section} is empty"
    assert not _finite_numbers(data)
    mt = data["mt"]
    for mode in ("joint", "separate"):
        for key in ("records", "records_per_s", "qa_records", "qa_answer_in_passage_share"):
            assert isinstance(mt[mode][key], (int, float)), (mode, key)
    assert isinstance(mt["joint"]["decomposition_success_rate"], float)
    salt = data["salt"]
    assert set(salt["bits_per_byte_after_init"]) >= {"salt", "focus", "random"}
    assert all(isinstance(v, float) for v in salt["bits_per_byte_after_init"].values())
    runs = salt["continued_training"]
    assert set(runs) == {"salt", "focus", "random"} and salt["same_token_budget"]
    for r in runs.values():
        assert r["curve"] and all(isinstance(r[k], float) for k in ("first_loss", "last_loss", "heldout_bpb_after"))
    clo = data["clo"]
    assert set(clo["models"]) >= {"base", "clo", "sft", "clo-half"}
    for name, m in clo["models"].items():
        for key in ("target_prompt_share", "english_prompt_share", "nll_target", "nll_english"):
            assert isinstance(m[key], (int, float)), (name, key)
    for name in ("clo", "sft", "clo-half"):
        assert clo["training"][name]["curve"], name
        assert [h["step"] for h in clo["training"][name]["heldout_curve"]] == [0, 3], name  # eval_steps 0
    assert any(c.get("margin") is not None for c in clo["training"]["clo"]["curve"])
    assert {c["verdict"] for c in data["claims"]} <= {"reproduced", "not reproduced", "inconclusive"}
    assert len(data["claims"]) >= 8
    for stage, t in data["stages"].items():
        assert t["wall_s"] >= 0, stage
    for plot in ("pretrain_loss.png", "clo_vs_sft.png", "salt_bits_per_byte.png"):
        assert (run / plot).stat().st_size > 1000, plot
    md = (run / "report.md").read_text()
    assert "English vocabulary swap" in md and "## CLO vs SFT" in md


def test_engine_options_reach_the_engine_and_keep_stage_keys(tmp_path, tiny_llama, monkeypatch):
    """[mt] engine_options = {...} is `cltx mt --engine-option` for the run; without it the stage keys (and so the
    reuse of earlier runs) are what they were before the option existed."""
    from cltx.run import build_stages, load_config

    cfg = _small_config(tmp_path, tiny_llama)
    text = cfg.read_text().replace("[mt]\n", '[mt]\nengine_options = { suffix = "!" }\n', 1)
    eng = tmp_path / "upper_engine.py"
    eng.write_text(
        ENGINE.replace(
            "def translate(texts, src, tgt):\n    return [t.upper() for t in texts]",
            "def translate(texts, src, tgt, suffix=''):\n    return [t.upper() + suffix for t in texts]",
        )
    )
    cfg.write_text(text)
    monkeypatch.setenv(STOP_ENV, "mt")
    with pytest.raises(RunStopped):
        run_pipeline(cfg)
    rows = [json.loads(x) for x in (tmp_path / "out" / "mt" / "data.jsonl").read_text().splitlines()]
    bangs = sum(r[f].count("!") - r["_source"][f].count("!") for r in rows for f in r["_source"])
    assert rows and bangs >= len(rows)  # every engine call ended its text with the option's suffix
    (tmp_path / "b").mkdir()
    plain = {s.name: s.options for s in build_stages(load_config(_small_config(tmp_path / "b", tiny_llama)))}
    assert "engine_options" not in plain["mt"]
    with_opts = {s.name: s.options for s in build_stages(load_config(cfg))}
    assert with_opts["mt"]["engine_options"] == {"suffix": "!"}
