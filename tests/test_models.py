"""The embedded default models load offline and produce sensible output."""

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
