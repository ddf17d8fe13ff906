"""`cltx clo` / `cltx eval` across the model families users bring, each built tiny from its config
(hidden 32, 2 layers) with a tokenizer trained in the test that mimics the family's: its chat
template (ChatML with a default system prompt, Gemma's without a system role, Mistral's without a
generation prompt, Phi-3's), whether it has or adds a BOS token, and whether it has a pad token.

Per family, through the library: attention mode trains exactly the attention projections (and
finds them), rewards are exactly zero at step 0 (with dropout configured > 0), LoRA adapts only
attention modules and the merged model reloads with ``AutoModelForCausalLM``, ``cltx eval`` runs
on the saved model, and ``--method sft`` trains. Once through the CLI (clo, then eval)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import transformers
from typer.testing import CliRunner

import cltx.clo.api as clo_api
import cltx.clo.evaluate as clo_eval
from cltx.clo._tiny import EN_WORDS, PT_WORDS, tiny_records
from cltx.clo.api import train_clo
from cltx.clo.data import PromptFormatter
from cltx.clo.model import attention_module_names, set_trainable
from cltx.errors import CltxError

CHATML = (  # Qwen2.5: a default system prompt when the messages have none
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3 = (  # Qwen3 (written for this test): the last answer after the last question gets an (empty) think block;
    # enable_thinking=False puts that empty block into the generation prompt (the non-thinking mode)
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message.role == 'user' %}"
    "{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{%- if loop.last %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
GEMMA = (  # Gemma 1: BOS in the template, no system role (raises), assistant turns are 'model'
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
MISTRAL = (  # Mistral-7B-Instruct v0.1: no generation prompt, no system role, EOS after each answer
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
PHI3 = (  # Phi-3-mini: EOS after the conversation unless a generation prompt is asked for
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class TokSpec:
    """A tokenizer like a family's: its special tokens, chat template and BOS behaviour."""

    eos: str
    bos: str | None = None  # None: the tokenizer has no BOS token (Qwen, Falcon)
    add_bos: bool = False  # the tokenizer puts BOS in front of plain text (Llama, Gemma, Mistral)
    pad: str | None = None  # None: no pad token (cltx pads with EOS)
    template: str | None = None
    markers: tuple[str, ...] = ()  # the template's special tokens
    turn_end: str | None = None  # the special token the template puts after an answer
    turn_end_in_generation_config: bool = False  # the model's generation config stops at it (instruct models)
    added: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>, </think>)


@dataclasses.dataclass(frozen=True)
class Family:
    config: str  # transformers config class
    model: str  # transformers *ForCausalLM class
    attention: frozenset[str]  # the attention projections attention mode must train, per layer
    tok: TokSpec
    extra: dict = dataclasses.field(default_factory=dict)
    dropout: tuple[str, ...] = ("attention_dropout",)
    tie: bool = False


LLAMA_QKVO = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# Qwen2.5 base: EOS is <|endoftext|>, yet the tokenizer ships the ChatML template, whose turns end in <|im_end|>
QWEN_BASE_TOK = TokSpec(eos="<|endoftext|>", pad="<|endoftext|>", template=CHATML, markers=CHATML_MARKERS,
                        turn_end="<|im_end|>")  # fmt: skip
QWEN_INSTRUCT_TOK = TokSpec(eos="<|im_end|>", pad="<|endoftext|>", template=CHATML, markers=CHATML_MARKERS,
                            turn_end="<|im_end|>")  # fmt: skip
QWEN3_TOK = TokSpec(eos="<|im_end|>", pad="<|endoftext|>", template=QWEN3, markers=CHATML_MARKERS,
                    turn_end="<|im_end|>", added=("<think>", "</think>"))  # fmt: skip
FAMILIES: dict[str, Family] = {
    # SmolLM / SmolLM2 are Llamas
    "llama": Family("LlamaConfig", "LlamaForCausalLM", LLAMA_QKVO, TokSpec(eos="</s>", bos="<s>", add_bos=True)),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", LLAMA_QKVO, QWEN_BASE_TOK, tie=True),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", LLAMA_QKVO, QWEN3_TOK, extra={"head_dim": 8}, tie=True),
    "mistral": Family(
        "MistralConfig",
        "MistralForCausalLM",
        LLAMA_QKVO,
        TokSpec(eos="</s>", bos="<s>", add_bos=True, template=MISTRAL, markers=("[INST]", "[/INST]"), turn_end="</s>"),
    ),
    "gemma": Family(
        "GemmaConfig",
        "GemmaForCausalLM",
        LLAMA_QKVO,
        TokSpec(
            eos="<eos>",
            bos="<bos>",
            add_bos=True,
            pad="<pad>",
            template=GEMMA,
            markers=("<start_of_turn>", "<end_of_turn>"),
            turn_end="<end_of_turn>",
            turn_end_in_generation_config=True,
        ),
        extra={"head_dim": 8},
        tie=True,
    ),
    "phi3": Family(
        "Phi3Config",
        "Phi3ForCausalLM",
        frozenset({"qkv_proj", "o_proj"}),
        TokSpec(
            eos="<|endoftext|>",
            bos="<s>",
            add_bos=True,
            pad="<|endoftext|>",
            template=PHI3,
            markers=("<|user|>", "<|assistant|>", "<|system|>", "<|end|>"),
            turn_end="<|end|>",
            turn_end_in_generation_config=True,
        ),
        dropout=("attention_dropout", "resid_pdrop", "embd_pdrop"),
    ),
    "gpt_neox": Family(  # Pythia: BOS = EOS, never added
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        frozenset({"query_key_value", "dense"}),
        TokSpec(eos="<|endoftext|>", bos="<|endoftext|>"),
        dropout=("attention_dropout", "hidden_dropout"),
    ),
    "falcon": Family(
        "FalconConfig",
        "FalconForCausalLM",
        frozenset({"query_key_value", "dense"}),
        TokSpec(eos="<|endoftext|>"),
        dropout=("attention_dropout", "hidden_dropout"),
        tie=True,
    ),
    "olmo2": Family("Olmo2Config", "Olmo2ForCausalLM", LLAMA_QKVO, TokSpec(eos="<|endoftext|>", pad="<|pad|>")),
    "stablelm": Family(
        "StableLmConfig",
        "StableLmForCausalLM",
        LLAMA_QKVO,
        TokSpec(eos="<|endoftext|>", bos="<|endoftext|>"),
        dropout=("attention_dropout", "hidden_dropout"),
    ),
}

CHAT = [name for name, f in FAMILIES.items() if f.tok.template]
TEMPLATE_WORDS = "system user assistant model You are a helpful".split()


def make_tokenizer(spec: TokSpec):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = list(dict.fromkeys(t for t in ("<unk>", spec.pad, spec.bos, spec.eos, *spec.markers) if t))
    words = sorted(set(EN_WORDS + PT_WORDS + TEMPLATE_WORDS))
    vocab = {t: i for i, t in enumerate(special + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if spec.add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B", special_tokens=[(spec.bos, vocab[spec.bos])]
        )
    named = {"unk_token": "<unk>", "eos_token": spec.eos, "bos_token": spec.bos, "pad_token": spec.pad}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **{k: v for k, v in named.items() if v is not None})
    tok.add_special_tokens({"additional_special_tokens": [t for t in special if t not in named.values()]})
    tok.add_tokens(list(spec.added))
    if spec.template:
        tok.chat_template = spec.template
    assert (tok.bos_token is None) == (spec.bos is None) and (tok.pad_token is None) == (spec.pad is None)
    return tok


def make_model(fam: Family, tok, *, seed: int = 0, dropout: float = 0.1):
    cfg_cls, model_cls = getattr(transformers, fam.config), getattr(transformers, fam.model)
    kw = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=fam.tie,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **{name: dropout for name in fam.dropout},
        **fam.extra,
    )
    cfg = cfg_cls(**kw)
    torch.manual_seed(seed)
    model = model_cls(cfg)
    eos = [tok.eos_token_id]
    if fam.tok.turn_end_in_generation_config:
        eos.append(tok.convert_tokens_to_ids(fam.tok.turn_end))
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return model


class Setup:
    """One family's tokenizer, records and the runs the tests share (each run once per module)."""

    def __init__(self, name: str, root):
        self.name, self.fam, self.root = name, FAMILIES[name], root
        self.tok = make_tokenizer(self.fam.tok)
        self.records = tiny_records(6)
        self._runs: dict[str, tuple[dict, dict, torch.nn.Module]] = {}

    def model(self, **kw):
        return make_model(self.fam, self.tok, **kw)

    def run(self, mode: str, method: str = "clo"):
        """``train_clo`` on a fresh model: (report, starting state dict, the trained model object)."""
        key = f"{method}-{mode}"
        if key not in self._runs:
            model = self.model()
            start = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rep = train_clo(
                model,
                self.records,
                self.root / key,
                tokenizer=self.tok,
                train_mode=mode,
                method=method,
                max_steps=2,
                batch_size=2,
                lr=1e-2,
                max_length=96,
                logging_steps=1,
            )
            self._runs[key] = (rep, start, model)
        return self._runs[key]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tmp_path_factory):
    return Setup(request.param, tmp_path_factory.mktemp(request.param))


def _attention_params(model) -> set[str]:
    names = set(attention_module_names(model))
    return {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in names}


def test_attention_mode_trains_exactly_the_attention_projections(fam):
    rep, start, model = fam.run("attention")
    layers = model.config.num_hidden_layers
    found = attention_module_names(model)
    assert sorted({n.rsplit(".", 1)[-1] for n in found}) == sorted(fam.fam.attention)
    assert len(found) == layers * len(fam.fam.attention)
    attn = _attention_params(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == attn
    after = model.state_dict()
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    weights = {n for n in attn if n.endswith(".weight")}
    assert weights <= moved, f"attention weights that did not train: {sorted(weights - moved)}"
    assert moved <= attn, f"non-attention tensors that changed: {sorted(moved - attn)}"


def test_training_is_finite_and_rewards_start_at_exactly_zero(fam):
    rep, _, _ = fam.run("attention")
    logs = [h for h in rep["log_history"] if "loss" in h]
    assert rep["steps"] == 2 and len(logs) == 2
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["nll"]) for h in logs)
    first = rep["first_log"]
    # dropout is configured > 0 in every family: the reference and the policy pass must both run without it
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0 and first["rewards/margins"] == 0.0
    assert first["cl"] == pytest.approx(math.log(2), abs=1e-6)


def test_lora_adapts_only_attention_and_the_merged_model_reloads(fam):
    model = fam.model()
    lora = set_trainable(model, "lora", lora_r=2)
    adapted = {
        n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in lora.named_parameters() if "lora_A" in n
    }
    assert adapted == set(attention_module_names(fam.model()))
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {
        n for n, _ in lora.named_parameters() if "lora_" in n
    }
    rep, start, _ = fam.run("lora")
    assert rep["steps"] == 2 and all(math.isfinite(h["loss"]) for h in rep["log_history"] if "loss" in h)
    assert rep["first_log"]["rewards/margins"] == 0.0
    saved = transformers.AutoModelForCausalLM.from_pretrained(fam.root / "clo-lora")
    assert type(saved).__name__ == fam.fam.model
    state = saved.state_dict()
    assert not any("lora" in k for k in state) and set(state) == set(start)
    attn = _attention_params(saved)
    moved = {k for k in start if not torch.equal(start[k], state[k])}
    assert moved and moved <= attn, sorted(moved - attn)


def test_sft_method_trains(fam):
    rep, _, _ = fam.run("attention", method="sft")
    logs = [h for h in rep["log_history"] if "loss" in h]
    assert rep["steps"] == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["nll"], rel=1e-5) and "rewards/margins" not in logs[0]


def test_eval_runs_on_the_saved_model(fam):
    fam.run("attention")
    res = clo_eval.evaluate_models([str(fam.root / "clo-attention")], tiny_records(3, seed=5), max_new_tokens=3)
    m = res["models"][0]
    for lang in ("en", "tgt"):
        assert m[lang]["prompts"] == 3 and math.isfinite(m[lang]["nll"]) and m[lang]["nll"] > 0


@pytest.mark.parametrize("name", CHAT)
def test_chat_template_is_used_in_training_and_eval(name, monkeypatch, tmp_path):
    spec = FAMILIES[name].tok
    tok = make_tokenizer(spec)
    made: list[PromptFormatter] = []

    class Spy(PromptFormatter):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(clo_api, "PromptFormatter", Spy)
    monkeypatch.setattr(clo_eval, "PromptFormatter", Spy)
    rep = train_clo(make_model(FAMILIES[name], tok), tiny_records(4), tmp_path / "o", tokenizer=tok, max_steps=1)
    assert rep["first_log"]["rewards/margins"] == 0.0
    clo_eval.evaluate_models([str(tmp_path / "o")], tiny_records(2, seed=5), max_new_tokens=2)
    assert len(made) >= 2 and all(f.chat for f in made)  # training, then eval (its prompts and its stop tokens)
    marker = tok.convert_tokens_to_ids(spec.markers[0])
    fmt = made[0]
    prompt = fmt.prompt_ids("o gato")
    assert marker in prompt
    if spec.bos is not None:  # the template's BOS, and never a second one from the tokenizer
        assert prompt.count(tok.bos_token_id) == ("bos_token" in spec.template)
        assert prompt[0] == tok.bos_token_id or "bos_token" not in spec.template
    # an answer ends at EOS and at what the template puts after an answer, never at another marker
    assert tok.convert_tokens_to_ids(spec.turn_end) in fmt.stop_ids()
    assert set(fmt.stop_ids()) <= {tok.eos_token_id, tok.convert_tokens_to_ids(spec.turn_end)}
    response = fmt.response_ids("o gato", "o cao")
    assert (
        response[: len(tok("o cao", add_special_tokens=False)["input_ids"])]
        == tok("o cao", add_special_tokens=False)["input_ids"]
    )


def test_a_system_prompt_replaces_chatml_default_and_a_template_without_system_role_says_so(tmp_path):
    qwen = make_tokenizer(QWEN_INSTRUCT_TOK)
    text = PromptFormatter(qwen, system_prompt="Answer briefly").prompt_text("o gato")
    assert "Answer briefly" in text and "helpful assistant" not in text
    assert "helpful assistant" in PromptFormatter(qwen).prompt_text("o gato")  # the template's own default
    # Gemma and Mistral raise inside their templates on a system message: a named option and a fix,
    # not a jinja2 traceback from the middle of tokenisation (the CLI shows only CltxErrors as one line)
    for name in ("gemma", "mistral"):
        fam = FAMILIES[name]
        tok = make_tokenizer(fam.tok)
        PromptFormatter(tok).prompt_ids("o gato")  # without a system prompt the template works
        with pytest.raises(CltxError, match=r"^system_prompt='Answer briefly': .*no system role.*fix: drop"):
            train_clo(
                make_model(fam, tok), tiny_records(2), tmp_path / name, tokenizer=tok, system_prompt="Answer briefly"
            )
        with pytest.raises(CltxError, match=r"^system_prompt='Answer briefly'"):
            clo_eval.evaluate_models(
                [(name, make_model(fam, tok), tok)], tiny_records(2), system_prompt="Answer briefly"
            )
    assert not (tmp_path / "gemma").exists()  # refused before anything was trained or written


def test_a_tokenizer_that_appends_eos_does_not_end_the_prompt_with_it(tmp_path):
    """A Llama tokenizer with ``add_eos_token=True`` (alpaca-style fine-tuning setups) puts EOS after
    any text it encodes with special tokens: the plain prompt must not end there (the model would
    learn that an answer follows an EOS, and eval would ask it to continue after one)."""
    from tokenizers import processors

    fam = FAMILIES["llama"]
    tok = make_tokenizer(fam.tok)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    assert tok("o gato")["input_ids"][-1] == eos
    fmt = PromptFormatter(tok, use_chat_template=False)
    prompt, response = fmt.prompt_ids("o gato"), fmt.response_ids("o gato", "o cao")
    assert prompt[0] == bos and eos not in prompt and (prompt + response).count(eos) == 1
    rep = train_clo(make_model(fam, tok), tiny_records(4), tmp_path / "o", tokenizer=tok, max_steps=1)
    assert rep["first_log"]["rewards/margins"] == 0.0


def test_qwen3_trains_and_answers_in_non_thinking_mode():
    """Qwen3's template renders the last answer with an empty think block unless the generation prompt
    holds it (enable_thinking=False). Rendered without that flag, every response began with
    an empty ``<think></think>`` (trained and scored as part of the answer), eval prompts asked for
    thinking, and the answers' ``<think>`` text (not special tokens) counted towards their language."""
    tok = make_tokenizer(QWEN3_TOK)
    fmt = PromptFormatter(tok)
    think = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert fmt.prompt_ids("o gato")[-2:] == think  # the prompt closes the (empty) thinking
    response = fmt.response_ids("o gato", "o cao")
    assert not set(think) & set(response)
    assert response == tok("o cao", add_special_tokens=False)["input_ids"] + tok.convert_tokens_to_ids(["<|im_end|>"])


@pytest.mark.parametrize("name", CHAT)
def test_eval_answers_end_at_the_templates_end_of_turn(name):
    """A model that answers with the end-of-turn token at once has answered: ``cltx eval`` must stop
    there, whether the model's generation config lists that token (Gemma, Phi-3 instruct) or not
    (Qwen2.5 base with its ChatML template: its EOS is <|endoftext|>), and not generate past the
    turn into text that then counts towards the answer's language."""
    fam = FAMILIES[name]
    tok = make_tokenizer(fam.tok)
    model = make_model(fam, tok)
    end = tok.convert_tokens_to_ids(fam.tok.turn_end)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[end] = 10.0  # greedy decoding emits the end-of-turn token first
    model.set_output_embeddings(head)
    generated: list[int] = []
    real = model.generate

    def spy(**kw):
        out = real(**kw)
        generated.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    model.generate = spy
    clo_eval.evaluate_models([(name, model, tok)], tiny_records(3, seed=5), max_new_tokens=6)
    assert generated == [1, 1], generated


def test_cli_clo_then_eval_on_a_chat_model_without_bos(tmp_path):
    from cltx.cli.main import app

    fam = FAMILIES["qwen2"]
    tok = make_tokenizer(fam.tok)
    make_model(fam, tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    for file, recs in (("train.jsonl", tiny_records(6)), ("held.jsonl", tiny_records(3, seed=7))):
        (tmp_path / file).write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    args = ["clo", "--model", str(tmp_path / "base"), "--data", str(tmp_path / "train.jsonl")]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out"), "--max-steps", "2", "--train", "lora"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "out" / "clo_report.json").read_text())
    assert rep["train"] == "lora" and rep["steps"] == 2 and rep["first_log"]["rewards/margins"] == 0.0
    assert type(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")).__name__ == fam.model
    args = ["eval", "--model", str(tmp_path / "base"), "--model", str(tmp_path / "out")]
    res = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "held.jsonl"), "--max-new-tokens", "3",
                                   "--json", str(tmp_path / "eval.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert [m["tgt"]["prompts"] for m in ev["models"]] == [3, 3]
    assert ev["models"][0]["tgt"]["nll"] != ev["models"][1]["tgt"]["nll"]  # the trained model is another model


# Attention projections with names outside cltx.clo.model's list (architectures beyond the families above): found
# as the linear children of the attention module (MPT's attn.Wqkv; DeepSeek-V3's multi-head latent attention).
UNLISTED = {
    "mpt": ("MptConfig", "MptForCausalLM", dict(d_model=32, n_heads=4, n_layers=1), {"Wqkv", "out_proj"}),
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(
            hidden_size=32,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            n_routed_experts=4,
            num_experts_per_tok=2,
        ),
        {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"},
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(UNLISTED))
def test_attention_mode_finds_every_attention_projection(name):
    config, model_cls, kw, want = UNLISTED[name]
    model = getattr(transformers, model_cls)(getattr(transformers, config)(vocab_size=50, **kw))
    assert {n.rsplit(".", 1)[-1] for n in attention_module_names(model)} == want
