"""Tiny offline building blocks for tests and demos: a word-level tokenizer trained on the spot,
a small Llama from a config, and bilingual records in the ``cltx mt`` output layout."""

from __future__ import annotations

import random

EN_WORDS = "the cat sat on a mat and dog ran to house red blue green big small tree water sun moon".split()
PT_WORDS = (
    "o gato sentou em um tapete e cao correu para casa vermelho azul verde grande pequeno arvore agua sol lua"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_records(n: int, *, seed: int = 0, qa_every: int = 4) -> list[dict]:
    """``n`` records as ``cltx mt`` writes them: target (pt) text in the fields, English in ``_source``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(2, 5)
        idx = [rng.randrange(len(EN_WORDS)) for _ in range(k)]
        ridx = [rng.randrange(len(EN_WORDS)) for _ in range(rng.randint(2, 6))]
        en_p, pt_p = " ".join(EN_WORDS[j] for j in idx), " ".join(PT_WORDS[j] for j in idx)
        en_r, pt_r = " ".join(EN_WORDS[j] for j in ridx), " ".join(PT_WORDS[j] for j in ridx)
        if qa_every and i % qa_every == qa_every - 1:
            rec = {"question": pt_p, "passage": pt_r + " " + pt_p, "answer": pt_r}
            rec["_source"] = {"question": en_p, "passage": en_r + " " + en_p, "answer": en_r}
        else:
            rec = {"instruction": pt_p, "input": "", "output": pt_r}
            rec["_source"] = {"instruction": en_p, "input": "", "output": en_r}
        rec["_mt"] = {"status": "joint", "tgt": "pt"}
        out.append(rec)
    return out


def tiny_chat_records(n: int, *, seed: int = 0) -> list[dict]:
    """``n`` chat records as ``cltx mt`` writes them (``messages``, English list in ``_source``): two
    exchanges each, built from :func:`tiny_records`' instruction records — the instruction answered by
    the output, then the output answered by the instruction."""

    def turns(view: dict) -> list[dict]:
        said = [("user", view["instruction"]), ("assistant", view["output"]), ("user", view["output"])]
        return [{"role": role, "content": text} for role, text in [*said, ("assistant", view["instruction"])]]

    return [
        {"messages": turns(r), "_source": {"messages": turns(r["_source"])}, "_mt": r["_mt"]}
        for r in tiny_records(n, seed=seed, qa_every=0)
    ]


def tiny_tokenizer(*, chat_template: bool = True):
    """A word-level tokenizer over the tiny vocabularies (+ chat markers), built without a download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    words = sorted(set(EN_WORDS + PT_WORDS + ["\n", "Ċ"]))
    vocab = {t: i for i, t in enumerate(special + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tok.add_special_tokens({"additional_special_tokens": special[4:]})
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(tokenizer, *, seed: int = 0, hidden: int = 32, layers: int = 2, tie: bool = False):
    """A 2-layer Llama sized to ``tokenizer`` (fp32, random init from ``seed``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
