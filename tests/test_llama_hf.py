"""LLaMA import/export against transformers' `LlamaForCausalLM`, and jitted generation.

Two tiny random checkpoints, made once per module: `untied` (default RoPE, attention and MLP
biases, multi-head attention, one safetensors file) and `tied` (llama3 RoPE scaling with a short
original context so the scaling matters, grouped-query attention, sharded into an index + shards).
"""

import copy
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cu_jax.models import generation, hf_llama  # noqa: E402
from cu_jax.models.lora import add_lora, lora_deltas, merge_lora  # noqa: E402
from cu_jax.utils.errors import UserError  # noqa: E402

VOCAB, EOS, PAD = 96, 2, 0
CONFIGS = {
    "untied": dict(num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    "tied": dict(num_key_value_heads=2, tie_word_embeddings=True,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16}),
}


def _hf_config(**kw):
  # A large init scale makes the random model's next-token distributions peaked and varied, so
  # greedy decoding neither repeats one token nor hits near-ties.
  return transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      max_position_embeddings=64, initializer_range=0.3, bos_token_id=1, eos_token_id=EOS,
      pad_token_id=PAD, **kw)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (folder, HF model in float32 eval mode)."""
  root = tmp_path_factory.mktemp("llama")
  out = {}
  for i, (name, kw) in enumerate(CONFIGS.items()):
    torch.manual_seed(i)
    model = transformers.LlamaForCausalLM(_hf_config(**kw)).eval()
    shard = {"max_shard_size": "20KB"} if name == "tied" else {}
    model.save_pretrained(root / name, **shard)
    out[name] = (root / name, model)
  assert (root / "tied" / hf_llama.INDEX_FILE).is_file() and (root / "untied" / hf_llama.SINGLE_FILE).is_file()
  return out


@pytest.fixture(scope="module")
def ours(checkpoints):
  return {name: hf_llama.load_hf_llama(folder) for name, (folder, _) in checkpoints.items()}


def _prompts():
  """Two left-padded prompts (B=2, L=10): row 1 has 4 padding slots."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB, (2, 10)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[1, :4] = 0
  tokens[1, :4] = PAD
  return tokens, mask


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_hf(checkpoints, ours, name):
  _, hf = checkpoints[name]
  tokens, mask = _prompts()
  logits, _ = ours[name](jnp.asarray(tokens), jnp.asarray(mask))
  logits = np.asarray(logits)
  for row in range(2):  # each row alone, unpadded, on the HF side
    real = mask[row].astype(bool)
    ref = _hf_logits(hf, tokens[row:row + 1, real])[0]
    np.testing.assert_allclose(logits[row, real], ref, atol=1e-4, rtol=0)
  # And HF itself with the padded batch, an attention mask and the matching positions.
  with torch.no_grad():
    ref = hf(torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(mask),
             position_ids=torch.as_tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))).logits.numpy()
  np.testing.assert_allclose(logits[mask.astype(bool)], ref[mask.astype(bool)], atol=1e-4, rtol=0)


def test_config_roundtrip_and_variants(checkpoints, ours):
  cfg = ours["tied"].cfg
  assert (cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_len, cfg.num_kv_heads) == ("llama3", 8.0, 16, 2)
  assert cfg.tie_embeddings and not ours["untied"].cfg.tie_embeddings and ours["untied"].cfg.attention_bias
  exported = hf_llama.llama_config_to_hf(cfg)
  assert hf_llama.llama_config_from_hf(exported) == cfg
  again = transformers.LlamaConfig(**{k: v for k, v in exported.items() if k not in ("architectures", "model_type")})
  assert again.rope_parameters["rope_type"] == "llama3" and again.num_key_value_heads == 2
  # transformers 4.x layout: top-level rope_theta + rope_scaling; eos as a list; fp16 -> bf16.
  old = dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
             num_attention_heads=2, rope_theta=1e6, rope_scaling={"type": "linear", "factor": 2.0},
             eos_token_id=[7, 5], torch_dtype="float16")
  c = hf_llama.llama_config_from_hf(old)
  assert (c.rope_theta, c.rope_type, c.rope_factor, c.eos_token_id, c.pad_token_id, c.param_dtype) == (
      1e6, "linear", 2.0, 7, 7, "bfloat16")
  assert hf_llama.llama_config_from_hf(old, param_dtype="float32").param_dtype == "float32"
  with pytest.raises(UserError, match="rope_type 'yarn' is not supported; supported: default, linear, llama3"):
    hf_llama.llama_config_from_hf({**old, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(UserError, match="hidden_act 'gelu'"):
    hf_llama.llama_config_from_hf({**old, "hidden_act": "gelu"})
  with pytest.raises(UserError, match=r"model_type 'gpt2' \(GPT2LMHeadModel\) is not supported; supported: "
                                      r"model_type 'llama' \(LlamaForCausalLM\)"):
    hf_llama.llama_config_from_hf({**old, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


def test_greedy_generation_matches_hf(checkpoints, ours):
  tokens, mask = _prompts()
  for name in CONFIGS:
    _, hf = checkpoints[name]
    got = np.asarray(generation.generate(ours[name], tokens, mask, max_new_tokens=20, eos_token_id=EOS,
                                         pad_token_id=PAD))
    with torch.no_grad():
      ref = hf.generate(torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                        do_sample=False, max_new_tokens=20, eos_token_id=EOS, pad_token_id=PAD).numpy()
    ref = ref[:, tokens.shape[1]:]
    ref = np.pad(ref, ((0, 0), (0, 20 - ref.shape[1])), constant_values=PAD)  # HF stops when all rows did
    np.testing.assert_array_equal(got, ref, err_msg=name)
    assert len(set(got[0].tolist())) > 3, got  # a non-degenerate continuation


def test_cache_and_sampling(ours):
  model = ours["tied"]
  tokens, mask = _prompts()
  gen = lambda **kw: np.asarray(generation.generate(model, tokens, mask, max_new_tokens=20, eos_token_id=[],
                                                    **kw))
  greedy = gen()
  np.testing.assert_array_equal(gen(use_cache=False), greedy)
  sampled = gen(temperature=1.0, seed=3)
  np.testing.assert_array_equal(gen(temperature=1.0, seed=3), sampled)
  np.testing.assert_array_equal(gen(temperature=1.0, seed=3, use_cache=False), sampled)
  assert not np.array_equal(gen(temperature=1.0, seed=4), sampled)
  np.testing.assert_array_equal(gen(temperature=1.0, top_p=1e-6, seed=5), greedy)
  # Rows stop at EOS: choose the first greedy token of row 0 as EOS; the rest of the row is pad.
  stop = np.asarray(generation.generate(model, tokens, mask, max_new_tokens=20, eos_token_id=int(greedy[0, 0]),
                                        pad_token_id=PAD))
  assert stop[0, 0] == greedy[0, 0] and (stop[0, 1:] == PAD).all()


def test_nucleus_keeps_smallest_set():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  sample = jax.jit(jax.vmap(lambda k, p: generation.sample_token(logits, k, jnp.float32(1.0), p), (0, None)))
  draws = lambda p: set(np.asarray(sample(keys, jnp.float32(p))).ravel().tolist())
  assert draws(0.45) == {0}  # the most likely token alone reaches 0.45
  assert draws(0.7) == {0, 1}
  assert draws(0.85) == {0, 1, 2}
  assert draws(0.97) == draws(1.0) == {0, 1, 2, 3}


def test_generate_errors(ours):
  tokens, mask = _prompts()
  with pytest.raises(UserError, match="prompt of 10 tokens \\+ 60 new tokens exceeds the model's context of 64"):
    generation.generate(ours["tied"], tokens, mask, max_new_tokens=60)
  with pytest.raises(UserError, match="left-padded"):
    generation.generate(ours["tied"], tokens, mask[:, ::-1], max_new_tokens=4)
  with pytest.raises(UserError, match="top_p"):
    generation.generate(ours["tied"], tokens, mask, max_new_tokens=4, temperature=1.0, top_p=0.0)


def _tokenizer_dir(folder):
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"<pad>": PAD, "<s>": 1, "</s>": EOS, **{f"w{i}": i for i in range(3, VOCAB)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                              eos_token="</s>")
  fast.save_pretrained(folder)
  return folder


def test_export_roundtrip_with_merged_lora(checkpoints, tmp_path):
  folder, _ = checkpoints["untied"]
  model = hf_llama.load_hf_llama(folder)
  tokens, mask = _prompts()
  add_lora(model, ["q_proj", "v_proj", "down_proj"], rank=4, alpha=8)
  rng = np.random.default_rng(1)
  for _, m in nnx.iter_graph(model):
    if getattr(m, "lora", None) is not None:
      m.lora.b[...] = jnp.asarray(rng.normal(0, 0.3, m.lora.b.shape), jnp.float32)
  unmerged, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
  base, _ = hf_llama.load_hf_llama(folder)(jnp.asarray(tokens), jnp.asarray(mask))
  assert np.abs(np.asarray(unmerged) - np.asarray(base)).max() > 1e-2  # the adapters do something
  with pytest.raises(UserError, match="LoRA adapters .*merge_lora"):
    hf_llama.save_hf_llama(model, tmp_path / "refused")
  assert not (tmp_path / "refused").exists()
  assert merge_lora(model) == 6
  merged, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
  merged = np.asarray(merged)
  np.testing.assert_allclose(merged, np.asarray(unmerged), atol=1e-4, rtol=0)

  (tmp_path / "export").mkdir()  # an existing empty folder is fine
  out = hf_llama.save_hf_llama(model, tmp_path / "export", tokenizer_dir=_tokenizer_dir(tmp_path / "tok"))
  assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.tmp")]
  real = mask.astype(bool)
  hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  for row in range(2):
    np.testing.assert_allclose(merged[row, real[row]], _hf_logits(hf, tokens[row:row + 1, real[row]])[0],
                               atol=1e-4, rtol=0)
  again, _ = hf_llama.load_hf_llama(out)(jnp.asarray(tokens), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(again), merged, atol=1e-6, rtol=0)
  assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id == EOS


def test_merged_export_keeps_the_base_folder_outside_the_adapted_weights(checkpoints, tmp_path):
  """An unlearned model is written as its base folder plus the LoRA updates: a float16, sharded
  base stays float16, every tensor outside q/v is bit-identical, q/v are the float32
  sum rounded once, and transformers' logits match our model with the adapters."""
  folder, hf = checkpoints["tied"]
  fp16 = tmp_path / "fp16"
  copy.deepcopy(hf).to(torch.float16).save_pretrained(fp16, max_shard_size="20KB")  # the fixture stays float32
  model = hf_llama.load_hf_llama(fp16, param_dtype="float32")
  add_lora(model, ["q_proj", "v_proj"], rank=4, alpha=8)
  rng = np.random.default_rng(2)
  for _, m in nnx.iter_graph(model):
    if getattr(m, "lora", None) is not None:
      m.lora.b[...] = jnp.asarray(rng.normal(0, 0.3, m.lora.b.shape), jnp.float32)
  deltas = {k: np.asarray(v) for k, v in lora_deltas(model).items()}
  assert len(deltas) == 4
  out = hf_llama.save_merged_hf_llama(fp16, deltas, tmp_path / "merged", tokenizer_dir=_tokenizer_dir(tmp_path / "tok"),
                                      max_shard_bytes=20_000)
  assert (out / hf_llama.INDEX_FILE).is_file() and (out / "tokenizer.json").is_file()
  assert json.loads((out / "config.json").read_text()) == json.loads((fp16 / "config.json").read_text())
  before = transformers.LlamaForCausalLM.from_pretrained(fp16).state_dict()
  after_model = transformers.LlamaForCausalLM.from_pretrained(out)
  after = after_model.state_dict()
  for name, value in after.items():
    assert value.dtype == torch.float16, name
    key = tuple(int(p) if p.isdigit() else p for p in name.removeprefix("model.").split(".")[:-1])
    if key in deltas:
      want = (before[name].float() + torch.from_numpy(deltas[key].T.copy())).half()
      assert torch.equal(value, want) and not torch.equal(value, before[name]), name
    else:
      assert torch.equal(value, before[name]), name
  tokens, mask = _prompts()
  ours_logits = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask))[0])
  real = mask.astype(bool)
  for row in range(2):  # float16 rounding of the merged weights only
    np.testing.assert_allclose(ours_logits[row, real[row]],
                               _hf_logits(after_model.float(), tokens[row:row + 1, real[row]])[0], atol=2e-2, rtol=0)
  with pytest.raises(UserError, match="already exists and is not empty"):
    hf_llama.save_merged_hf_llama(fp16, deltas, out)
  wrong = {("layers", 0, "mlp", "down_proj"): deltas[next(iter(deltas))]}
  with pytest.raises(UserError, match="no tensor model.layers.0.mlp.down_proj.weight of shape"):
    hf_llama.save_merged_hf_llama(fp16, wrong, tmp_path / "wrong")
  assert not (tmp_path / "wrong").exists()


def test_bfloat16_sharded_export_and_import(checkpoints, tmp_path):
  folder, hf = checkpoints["tied"]
  model = hf_llama.load_hf_llama(folder, param_dtype="bfloat16")
  assert model.embed_tokens[...].dtype == jnp.bfloat16 and model.cfg.dtype == "bfloat16"
  out = hf_llama.save_hf_llama(model, tmp_path / "bf16", max_shard_bytes=8_000)
  index = json.loads((out / hf_llama.INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 1 and "lm_head.weight" not in index["weight_map"]
  back = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
  emb = back.model.embed_tokens.weight
  assert emb.dtype == torch.bfloat16
  np.testing.assert_array_equal(emb.detach().float().numpy(), np.asarray(model.embed_tokens[...], np.float32))
  q = back.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(q, np.asarray(model.layers[1].self_attn.q_proj.kernel[...], np.float32).T)
  # A bf16 checkpoint written by transformers imports bit-exactly (safetensors.numpy cannot read bf16).
  hf_bf16 = tmp_path / "hf_bf16"
  transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(hf_bf16)
  mine = hf_llama.load_hf_llama(hf_bf16)
  assert mine.cfg.param_dtype == "bfloat16"
  np.testing.assert_array_equal(np.asarray(mine.layers[0].mlp.up_proj.kernel[...], np.float32),
                                hf.model.layers[0].mlp.up_proj.weight.detach().to(torch.bfloat16).float().numpy().T)


def test_bad_folders(checkpoints, tmp_path):
  with pytest.raises(UserError, match="not a Hugging Face model folder \\(no config.json\\)"):
    hf_llama.load_hf_llama(tmp_path)
  folder, _ = checkpoints["tied"]
  gpt2 = tmp_path / "gpt2"
  gpt2.mkdir()
  (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(UserError, match="'gpt2'.*supported: model_type 'llama' \\(LlamaForCausalLM\\)"):
    hf_llama.load_hf_llama(gpt2)

  def edited(name, **changes):
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **changes}))
    return dst

  with pytest.raises(UserError, match="has no tensor lm_head.weight"):
    hf_llama.load_hf_llama(edited("untied_cfg", tie_word_embeddings=False))
  with pytest.raises(UserError, match="tensor model.layers.0.mlp.down_proj.weight has shape \\(32, 64\\) but "
                                      "config.json implies \\(32, 48\\)"):
    hf_llama.load_hf_llama(edited("wide", intermediate_size=48))
  no_weights = edited("no_weights")
  for p in no_weights.glob("*.safetensors*"):
    p.unlink()
  with pytest.raises(UserError, match="has no model.safetensors"):
    hf_llama.load_hf_llama(no_weights)
  (no_weights / "pytorch_model.bin").write_bytes(b"\x80\x02 not unpickled")
  with pytest.raises(UserError, match=r"holds pytorch_model.bin \(PyTorch pickles, which cu_jax does not unpickle\).*"
                                      r"from_pretrained\('.*no_weights', torch_dtype='auto'\)"
                                      r"\.save_pretrained\('.*no_weights-safetensors', safe_serialization=True\)"):
    hf_llama.load_hf_llama(no_weights)

  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("mine")
  with pytest.raises(UserError, match="already exists and is not empty"):
    hf_llama.save_hf_llama(hf_llama.load_hf_llama(folder), taken)
  assert [p.name for p in taken.iterdir()] == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
  assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
