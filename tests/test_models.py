"""The embedded default models load offline and produce sensible output."""

import os

import pytest
import torch

from cltx.errors import CltxError
from cltx.models import load_causal_lm, load_encoder, resolve_model


@pytest.mark.integration
def test_smollm2_loads_and_knows_paris():
    model, tok = load_causal_lm("smollm2-135m")
    assert model.config.model_type == "llama"
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :])
    assert "Paris" in text
    # The cached folder is a plain safetensors folder that AutoModelForCausalLM loads.
    path = resolve_model("smollm2-135m")
    import os

    assert os.path.exists(os.path.join(path, "model.safetensors"))


@pytest.mark.integration
def test_minilm_loads_and_embeds_meaningfully():
    model, tok = load_encoder("minilm-l6")
    assert model.config.hidden_size == 384 and len(tok) == 30522

    def emb(s):
        b = tok(s, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state[0].mean(0)
        return torch.nn.functional.normalize(h, dim=0)

    cat, kitten, tax = emb("a cat sleeps on the sofa"), emb("a kitten naps on the couch"), emb("quarterly tax report")
    assert (cat @ kitten) > (cat @ tax) + 0.2


def test_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(CltxError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CltxError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_unreachable_hub_id_fails_at_once_with_the_fix(monkeypatch):
    """An unknown hub id on a machine without the hub fails before transformers' retries (~45 s)."""
    import time

    import cltx.models as models

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(CltxError) as e:
        resolve_model("someone/no-such-model", argument="llm")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "llm='someone/no-such-model'" in msg and "cannot be reached" in msg and "smollm2-135m" in msg


def test_hub_id_passes_through_when_reachable_cached_or_offline(monkeypatch, tmp_path):
    import cltx.models as models

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # Reachable hub: the id is handed to from_pretrained unchanged.
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)
    assert resolve_model("someone/model") == "someone/model"
    # Unreachable, but in the local Hugging Face cache: also unchanged (from_pretrained reads the cache).
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    snap = tmp_path / "models--someone--cached" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached" / "refs").mkdir()
    (tmp_path / "models--someone--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert resolve_model("someone/cached") == "someone/cached"
    with pytest.raises(CltxError):
        resolve_model("someone/not-cached")
    # Offline mode set by the user: no probe, transformers' own (fast) cache-only lookup decides.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someone/not-cached") == "someone/not-cached"


def test_hub_probe_reports_a_closed_endpoint(monkeypatch):
    """The real probe (no network needed): a local port nobody listens on is 'unreachable', fast."""
    import socket

    import cltx.models as models

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(models, "_HUB_PROBE", {})
    assert models._hub_reachable(timeout=1.0) is False
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        assert models._hub_reachable(timeout=1.0) is True
    finally:
        srv.close()


# ------------------------------------------------------------------ the cache: corrupt, killed, unwritable
def _fake_gguf_loaders(monkeypatch):
    """from_pretrained(..., gguf_file=...) returns a tiny Llama and tokenizer: the conversion's own
    code (checks, temporary folder, save, rename) runs for real, in a second instead of thirty."""
    import transformers

    from cltx.clo._tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model(path, *a, gguf_file=None, **k):
        return tiny_llama(tok) if gguf_file else real_model(path, *a, **k)

    def tokenizer(path, *a, gguf_file=None, **k):
        return tok if gguf_file else real_tok(path, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from cltx import models

    models.check_embedded("smollm2-135m")
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    _fake_gguf_loaders(monkeypatch)
    return tmp_path / "cache" / "models"


def test_safetensors_completeness_check(tmp_path):
    from safetensors.torch import save_file

    from cltx.models import _safetensors_complete

    p = tmp_path / "m.safetensors"
    save_file({"a": torch.randn(7, 5), "b": torch.randn(3)}, str(p))
    assert _safetensors_complete(p)
    data = p.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 9, 0):
        p.write_bytes(data[:cut])
        assert not _safetensors_complete(p), cut
    p.write_bytes(data + b"x")
    assert not _safetensors_complete(p)


def test_a_truncated_converted_model_and_stale_temporary_folders_are_rebuilt(fresh_cache, caplog):
    # A cut-off model.safetensors passed the old check (config.json and model.safetensors exist), so
    # `cltx models --prepare` said all was well and every later command died in safetensors with a
    # traceback; the temporary folder of a killed conversion (a whole model's size) was never removed.
    from cltx.models import _materialize_smollm2, prepared_path

    assert prepared_path("smollm2-135m") is None
    target = _materialize_smollm2()
    good = (target / "model.safetensors").read_bytes()
    assert prepared_path("smollm2-135m") == target
    # a plain folder's mode (mkdtemp's 0700 made it unreadable to the other users of a shared CLTX_CACHE)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    (target / "model.safetensors").write_bytes(good[: len(good) // 2])
    (fresh_cache / ".smollm2-killed").mkdir()
    (fresh_cache / ".smollm2-killed" / "model.safetensors").write_bytes(b"\0" * 1000)
    assert prepared_path("smollm2-135m") is None
    with caplog.at_level("WARNING", logger="cltx.models"):
        assert _materialize_smollm2() == target
    assert "incomplete" in caplog.text
    assert (target / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in fresh_cache.iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]
    load_causal_lm("smollm2-135m")  # loads


def test_an_interrupted_conversion_leaves_no_temporary_folder(fresh_cache, monkeypatch):
    import os

    from cltx.models import _materialize_smollm2

    real_replace = os.replace

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _materialize_smollm2()
    assert sorted(p.name for p in fresh_cache.iterdir()) == [".smollm2-135m.lock"]
    monkeypatch.setattr(os, "replace", real_replace)
    assert (_materialize_smollm2() / "model.safetensors").is_file()


def test_an_unusable_cache_is_one_clear_error(tmp_path, monkeypatch):
    import tempfile

    from typer.testing import CliRunner

    from cltx.cli.main import app
    from cltx.models import _materialize_smollm2
    from cltx.paths import cache_dir

    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):  # a file; a path through a file
        monkeypatch.setenv("CLTX_CACHE", str(bad))
        with pytest.raises(CltxError, match=r"CLTX_CACHE=.*: cannot create the cache folder.*fix: set CLTX_CACHE"):
            cache_dir()
        r = CliRunner().invoke(app, ["models", "--prepare"])
        assert r.exit_code == 1 and "CLTX_CACHE=" in r.output and "Traceback" not in r.output, r.output
    # a cache folder that exists but cannot be written (read-only file system, no permission)
    pytest.importorskip("gguf")
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "ro"))
    _fake_gguf_loaders(monkeypatch)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(CltxError, match=r"CLTX_CACHE=.*cannot write the converted model.*Permission denied.*fix:"):
        _materialize_smollm2()


def test_cltx_models_lists_the_cache_and_what_is_ready(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    assert f"cache: {tmp_path / 'c'}" in r.output and "(run with --prepare)" in r.output
    assert not (tmp_path / "c").exists()  # listing creates nothing
