"""CLO on models that transform their logits after the LM head: Gemma-2 (final logit softcapping), Cohere / Aya
(logit_scale), Granite (÷ logits_scaling). The fused loss gets the transform as keywords; the log-probs it
scores must be the model's own (log_softmax of ``model(...).logits``), else every reward and NLL is wrong."""

from __future__ import annotations

import math

import pytest
import torch

import cltx.clo.model as clo_model
from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
from cltx.clo.model import CLOModel, check_logits_path, logit_transform
from cltx.clo.trainer import CLOConfig, CLOTrainer, step_zero_metrics
from cltx.errors import CltxError
from cltx.kernels.reference_clo import transform_logits


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def _real_kernel():
    assert clo_model._LOSS_OVERRIDE is None  # the real cltx.kernels.clo_loss


def _common(tok) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


# (family, build, the transform cltx must read from the config). The values are far from 1 so that the
# transform changes every log-prob well beyond the tolerance (checked below).
def _gemma2(tok):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**_common(tok), head_dim=8, final_logit_softcapping=0.3))


def _cohere(tok):
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(CohereConfig(**_common(tok), logit_scale=4.0))


def _granite(tok):
    from transformers import GraniteConfig, GraniteForCausalLM

    return GraniteForCausalLM(GraniteConfig(**_common(tok), logits_scaling=0.2))


FAMILIES = {
    "gemma2": (_gemma2, {"logit_softcap": 0.3}),
    "cohere": (_cohere, {"logit_scale": 4.0}),
    "granite": (_granite, {"logit_scale": 5.0}),
}


def _model(family, tok):
    torch.manual_seed(0)
    with torch.no_grad():
        model = FAMILIES[family][0](tok)
        for p in model.parameters():  # larger-than-default weights: logits of a few units, bent by the cap
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def _bins(tok, n=6, batch=3):
    ex, rep = build_examples(tiny_records(n, seed=1))
    tex = tokenize_examples(ex, PromptFormatter(tok), 48, rep)
    return make_bins(tex, batch, "clo", tok.pad_token_id, seed=0)


def _own_logps(model, b, transform=None):
    """Per-row summed log-probs from the model's own logits (or from hidden·Wᵀ with ``transform``)."""
    with torch.no_grad():
        if transform is None:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        else:
            hid = clo_model.body_of(model)(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            logits = transform_logits(
                hid @ model.get_output_embeddings().weight.t(),
                transform.get("logit_scale", 1.0),
                transform.get("logit_softcap"),
            )
    logp = torch.log_softmax(logits.double(), -1)
    lab = b["labels"]
    tok_lp = logp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (lab != -100)
    return tok_lp.sum(-1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transform_is_read_from_the_config(family, tok):
    assert logit_transform(_model(family, tok)) == pytest.approx(FAMILIES[family][1])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scored_logps_are_the_models_own(family, tok):
    model = _model(family, tok)
    b = _bins(tok)[0]
    wrapper = CLOModel(model)  # the probe passes: the transform explains the model's logits
    with torch.no_grad():
        _, m = wrapper(**{k: v for k, v in b.items() if k != "record_index"})
    own = _own_logps(model, b)
    P = own.shape[0] // 2
    got = torch.cat([m["chosen_logps"], m["rejected_logps"]]).double()
    assert torch.allclose(got, own, rtol=1e-5, atol=1e-4), (got, own)
    # the transform matters here: plain hidden·Wᵀ log-probs are far off
    plain = _own_logps(model, b, transform={})
    assert (plain - own).abs().max() > 0.05 * own.abs().max(), (plain, own)
    assert P >= 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_steps_from_zero_rewards(family, tok, tmp_path):
    model = _model(family, tok).train()
    args = CLOConfig(
        output_dir=str(tmp_path / "ck"),
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        learning_rate=3e-3,
        max_steps=3,
        lr_scheduler_type="constant",
    )
    tr = CLOTrainer(model, args, _bins(tok, n=8, batch=2), processing_class=tok)
    m = step_zero_metrics(tr)
    assert torch.count_nonzero(m["margins"]) == 0
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_config_naming_a_transform_the_model_does_not_apply_is_refused(tok):
    """Llama's code ignores ``logit_scale``: reading it from the config would score the wrong log-probs, so the
    probe against the model's own logits refuses the model instead."""
    model = tiny_llama(tok)
    model.config.logit_scale = 3.0
    with pytest.raises(CltxError, match=r"under the transform its config names"):
        check_logits_path(model)
