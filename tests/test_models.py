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
