"""Our Llama-family model and loaders against Hugging Face transformers as the oracle.

Every comparison runs a ragged batch through a real paged KV cache (block size 4, shuffled
block ids) and checks each sequence's logits against HF's unpadded forward of that sequence.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch

from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.models.cache import build_once
from shunter.replica.models.config import ModelConfig
from shunter.replica.models.kv_layout import allocate_kv_caches, kv_bytes_per_block
from shunter.replica.models.loader import LoadedModel, ensure_hf_folder, load_model
from shunter.replica.models.random_shapes import random_config

BLOCK_SIZE = 4


# ---------------------------------------------------------------- paged batch helper


@dataclass
class Seq:
    """One sequence's tokens and the (shuffled) cache blocks it owns."""

    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    computed: int = 0


class Pager:
    """Hands out shuffled block ids and packs ragged steps (a test-local twin of the engine's packing)."""

    def __init__(self, num_blocks: int = 96, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def step(self, work: list[tuple[Seq, int]]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Pack `num_new` tokens of each sequence, continuing where its cache ends."""
        ids, pos, slots, cu, ctx = [], [], [], [0], []
        for seq, n in work:
            end = seq.computed + n
            while len(seq.blocks) * BLOCK_SIZE < end:
                seq.blocks.append(self.free.pop())
            for p in range(seq.computed, end):
                ids.append(seq.tokens[p])
                pos.append(p)
                slots.append(seq.blocks[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE)
            seq.computed = end
            cu.append(len(ids))
            ctx.append(end)
        width = max(len(s.blocks) for s, _ in work)
        tables = [s.blocks + [0] * (width - len(s.blocks)) for s, _ in work]
        attn = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
            context_lens=torch.tensor(ctx, dtype=torch.int32),
            max_query_len=max(n for _, n in work),
        )
        return torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long), attn


def run_step(loaded: LoadedModel, caches, pager: Pager, work: list[tuple[Seq, int]]) -> list[torch.Tensor]:
    """Logits `[num_new, vocab]` of each sequence in `work`."""
    ids, pos, attn = pager.step(work)
    with torch.inference_mode():
        logits = loaded.model.compute_logits(loaded.model(ids, pos, caches, attn))
    cu = attn.cu_seqlens_q.tolist()
    return [logits[cu[i] : cu[i + 1]] for i in range(len(work))]


def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([tokens])).logits[0].float()


# ---------------------------------------------------------------- tiny HF checkpoints

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


def _hf_config(kind: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    if kind == "llama3-untied":
        return LlamaConfig(**SHAPE, rope_theta=10000.0, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=False)
    if kind == "llama-tied-bias-headdim":
        return LlamaConfig(**SHAPE, head_dim=32, attention_bias=True, tie_word_embeddings=True)
    if kind == "mistral-linear-rope":
        return MistralConfig(**SHAPE, rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window=None,
                             tie_word_embeddings=False)
    if kind == "qwen2-tied":
        return Qwen2Config(**SHAPE, tie_word_embeddings=True)
    raise AssertionError(kind)


KINDS = ["llama3-untied", "llama-tied-bias-headdim", "mistral-linear-rope", "qwen2-tied"]


@pytest.fixture(scope="module", params=KINDS)
def tiny_pair(request, tmp_path_factory):
    """(our LoadedModel, HF model) on the same random weights, via a saved HF folder."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(KINDS.index(request.param))
    hf = AutoModelForCausalLM.from_config(_hf_config(request.param)).eval()
    with torch.no_grad():  # HF inits biases to zero and norms to one: randomize everything
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.7, 1.3)
            else:
                p.normal_(0.0, 0.15 if p.dim() == 2 else 0.1)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return load_model(str(folder)), hf


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (7, 13, 2)]


def test_ragged_prefill_matches_hf(tiny_pair):
    ours, hf = tiny_pair
    assert ours.config.tie_word_embeddings == hf.config.tie_word_embeddings
    prompts = _prompts(ours.config.vocab_size)
    caches = allocate_kv_caches(ours.config, 96, BLOCK_SIZE, torch.float32, "cpu")
    seqs = [Seq(p) for p in prompts]
    got = run_step(ours, caches, Pager(), [(s, len(s.tokens)) for s in seqs])
    for p, logits in zip(prompts, got):
        torch.testing.assert_close(logits, hf_logits(hf, p), atol=1e-4, rtol=1e-4)


def test_chunked_prefill_then_decode_matches_hf(tiny_pair):
    """Step 1: part of A. Step 2: rest of A (a chunk) + all of B + one token of C.
    Step 3: decode-only (one token each). Every row equals HF's full forward at that position."""
    ours, hf = tiny_pair
    a, b, c = _prompts(ours.config.vocab_size)
    full = {"a": a + [5], "b": b + [6], "c": c + [9]}
    seqs = {k: Seq(v) for k, v in full.items()}
    ref = {k: hf_logits(hf, v) for k, v in full.items()}
    caches = allocate_kv_caches(ours.config, 96, BLOCK_SIZE, torch.float32, "cpu")
    pager = Pager(seed=3)
    check = lambda k, got, start: torch.testing.assert_close(  # noqa: E731
        got, ref[k][start : start + len(got)], atol=1e-4, rtol=1e-4)

    (a1,) = run_step(ours, caches, pager, [(seqs["a"], 5)])
    check("a", a1, 0)
    a2, b2, c2 = run_step(ours, caches, pager, [(seqs["a"], len(a) - 5), (seqs["b"], len(b)), (seqs["c"], 1)])
    check("a", a2, 5), check("b", b2, 0), check("c", c2, 0)
    c3, a3, b3 = run_step(ours, caches, pager, [(seqs["c"], 1), (seqs["a"], 1), (seqs["b"], 1)])
    check("c", c3, 1), check("a", a3, len(a)), check("b", b3, len(b))
    (c4,) = run_step(ours, caches, pager, [(seqs["c"], 1)])  # a lone decode
    check("c", c4, 2)


# ---------------------------------------------------------------- config and layout


def test_config_reads_old_and_new_rope_styles():
    base = dict(vocab_size=10, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                model_type="llama", architectures=["LlamaForCausalLM"])
    old = ModelConfig.from_hf_config({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = ModelConfig.from_hf_config({**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}})
    assert old.rope_theta == new.rope_theta == 5e5
    assert old.rope_scaling == new.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert old.head_dim == 16 and old.num_kv_heads == 4 and old.eos_token_ids == []
    plain = ModelConfig.from_hf_config({**base, "rope_scaling": {"rope_type": "default"}, "eos_token_id": [3, 4]})
    assert plain.rope_scaling is None and plain.eos_token_ids == [3, 4]
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_hf_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="GPT2"):
        ModelConfig.from_hf_config({**base, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    qwen = ModelConfig.from_hf_config({**base, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                       "max_position_embeddings": 32768, "sliding_window": 4096,
                                       "use_sliding_window": False})
    assert qwen.attention_bias and not qwen.o_proj_bias and qwen.max_position_embeddings == 32768
    mistral = ModelConfig.from_hf_config({**base, "model_type": "mistral", "architectures": ["MistralForCausalLM"],
                                          "max_position_embeddings": 32768, "sliding_window": 4096})
    assert mistral.max_position_embeddings == 4096  # full attention equals the window only up to it


def test_real_shapes_and_kv_layout():
    assert random_config("llama-3-8b").num_parameters() == 8_030_261_248
    one_b = random_config("llama-3.2-1b")
    assert one_b.num_parameters() == 1_235_814_400
    assert one_b.tie_word_embeddings and one_b.rope_scaling["rope_type"] == "llama3"
    # Llama 3.2 1B in bf16: 16 layers x 8 kv heads x 64 dims x K,V x 2 bytes = 32 KiB per token
    assert kv_bytes_per_block(one_b, 16, torch.bfloat16) == 16 * 32 * 1024
    tiny = random_config("tiny")
    caches = allocate_kv_caches(tiny, 5, 16, torch.float32, "cpu")
    assert len(caches) == tiny.num_layers and caches[0][0].shape == (5, 16, tiny.num_kv_heads, tiny.head_dim)
    with pytest.raises(ValueError, match="llama-7"):
        load_model("random:llama-7")
    with pytest.raises(ValueError, match="no-such-model"):
        load_model("no-such-model")


def test_random_tiny_is_seeded_sane_and_matches_its_hf_folder(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SHUNTER_CACHE_DIR", str(tmp_path))
    first, second = load_model("random:tiny"), load_model("random:tiny")
    assert first.tokenizer is None and first.config.eos_token_ids == [2]
    for (name, p), q in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(p, q), name
    prompt = _prompts(first.config.vocab_size)[1]
    caches = allocate_kv_caches(first.config, 96, BLOCK_SIZE, torch.float32, "cpu")
    (logits,) = run_step(first, caches, Pager(), [(Seq(prompt), len(prompt))])
    assert torch.isfinite(logits).all() and 1.0 < logits.std() < 20.0
    hf = AutoModelForCausalLM.from_pretrained(ensure_hf_folder("random:tiny")).eval()
    torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-4, rtol=1e-4)


def test_bfloat16_random_model_runs():
    loaded = load_model("random:tiny", dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    caches = allocate_kv_caches(loaded.config, 16, BLOCK_SIZE, torch.bfloat16, "cpu")
    (logits,) = run_step(loaded, caches, Pager(16), [(Seq([5, 6, 7, 8, 9]), 5)])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_build_once_builds_once_across_threads(tmp_path):
    builds = []

    def build(tmp):
        builds.append(tmp)
        time.sleep(0.2)
        (tmp / "x").write_text("done")

    threads = [threading.Thread(target=build_once, args=(tmp_path / "f", "src", build)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and (tmp_path / "f" / "x").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".f.tmp")] == []
    build_once(tmp_path / "f", "other-source", build)  # a new source rebuilds
    assert len(builds) == 2


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_smollm2_loads_from_cache_and_greedy_matches_hf(smollm2_folder, smollm2_model):
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    again = load_model("smollm2-135m-instruct")
    reload_s = time.perf_counter() - start
    assert reload_s < 5.0, f"second load took {reload_s:.1f} s"
    assert again.config == smollm2_model.config
    assert smollm2_model.config.eos_token_ids[0] == 2  # <|im_end|>
    assert smollm2_model.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"

    prompt = list(smollm2_model.tokenizer("The capital of France is").input_ids)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    caches = allocate_kv_caches(smollm2_model.config, 32, BLOCK_SIZE, torch.float32, "cpu")
    pager, seq = Pager(32), Seq(list(prompt))
    (logits,) = run_step(smollm2_model, caches, pager, [(seq, len(prompt))])
    torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-3, rtol=1e-3)
    for _ in range(6):  # greedy decode through the paged cache; HF re-runs the whole sequence
        token = int(logits[-1].argmax())
        assert token == int(hf_logits(hf, seq.tokens)[-1].argmax())
        seq.tokens.append(token)
        (logits,) = run_step(smollm2_model, caches, pager, [(seq, 1)])
