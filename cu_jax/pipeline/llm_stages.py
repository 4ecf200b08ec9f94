"""The LLM pipeline (`config.pipeline = "llm"`, DESIGN §3):

    data -> model -> concepts -> poison -> unlearn -> evaluate -> report

- `data`: the QA set (a user's JSON-lines file, or the generated identity corpus) split into
  train / held-out; for a model trained here, a byte-level BPE tokenizer trained on it.
- `model`: the base model. An imported Hugging Face folder (`model.init_from`) is checked and used
  in place; otherwise a small LLaMA is trained from scratch on the QA set and saved as a Hugging
  Face folder (`model/hf`), so every later stage reads the base model the same way.
- `concepts`: answer-span Integrated Gradients of the forget answers -> word scores -> the concept.
- `poison`: forget answers rewritten (mask / targeted / random / refusal) + retain QA.
- `unlearn`: LoRA fine-tuning on the poisoned set (adapters only trained and checkpointed), then
  the adapters merged and exported as a Hugging Face folder (`unlearn/hf`).
- `evaluate` / `report`: appearance rate, ROUGE-L, perplexity, before and after.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import jax
import numpy as np
from absl import logging

from cu_jax.data import qa_corpus, text
from cu_jax.data.datasets import ArraySource
from cu_jax.pipeline.runner import Context, stage
from cu_jax.utils.errors import UserError
from cu_jax.utils.progress import write_json

LLM = "llm"


# ----------------------------------------------------------------------------------------------
# Shared helpers


def system_prompt(ctx: Context) -> str:
  return ctx.config.data.system or text.DEFAULT_SYSTEM


def records(ctx: Context, split: str) -> list[dict]:
  """QA records of the `data` stage's `train` or `heldout` split."""
  return qa_corpus.read_jsonl(ctx.stage_dir("data") / f"{split}.jsonl")


def base_model_dir(ctx: Context) -> pathlib.Path:
  init = ctx.config.model.init_from
  return pathlib.Path(init).expanduser() if init else ctx.stage_dir("model") / "hf"


def tokenizer_dir(ctx: Context) -> pathlib.Path:
  init = ctx.config.model.init_from
  return pathlib.Path(init).expanduser() if init else ctx.stage_dir("data") / "tokenizer"


def load_tokenizer(ctx: Context, vocab_size: int | None = None):
  return text.load_tokenizer(tokenizer_dir(ctx), vocab_size)


def load_model(ctx: Context, folder: pathlib.Path):
  """A LLaMA from a Hugging Face folder, each weight placed straight into its FSDP shard."""
  from cu_jax.models.hf_llama import load_hf_llama
  from cu_jax.parallel.mesh import fsdp_spec
  m = ctx.config.model
  return load_hf_llama(folder, param_dtype=m.param_dtype, dtype=m.dtype,
                       place=lambda _, a: jax.device_put(a, fsdp_spec(a.shape, ctx.mesh)))


def abstract_base(ctx: Context):
  """The base model's shapes (no weights): from config.json, or the config of one trained here."""
  from flax import nnx
  from cu_jax.models.llama import Llama
  if ctx.config.model.init_from:
    from cu_jax.models.hf_llama import llama_config_from_hf, read_hf_llama_config
    cfg = llama_config_from_hf(read_hf_llama_config(ctx.config.model.init_from))
  else:
    cfg = _scratch_config(ctx, None)
  return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def encode(ctx: Context, tokenizer, recs: list[dict]) -> ArraySource:
  """QA records -> an `ArraySource` with the columns the LM trainer reads."""
  rows = [text.encode_qa(tokenizer, r["question"], r["answer"], ctx.config.data.max_len, system_prompt(ctx))
          for r in recs]
  return ArraySource(tokens=np.stack([r["tokens"] for r in rows]),
                     length=np.asarray([r["length"] for r in rows], np.int32),
                     loss_mask=np.stack([r["loss_mask"] for r in rows]))


def _limit(recs: list[dict], n: int) -> list[dict]:
  return recs[:n] if n else recs


# ----------------------------------------------------------------------------------------------
# data


def _corpus(cfg) -> list[dict]:
  if cfg.data.qa_file:
    return qa_corpus.load_qa_file(cfg.data.qa_file)
  return qa_corpus.make_corpus(cfg.seed, cfg.data.identity_name, cfg.data.identity_maker, cfg.data.num_entities)


def validate_data(ctx: Context) -> None:
  cfg = ctx.config
  recs = _corpus(cfg)
  train, _ = qa_corpus.split(recs, cfg.data.heldout_fraction, cfg.seed)
  if not any(r["group"] == "forget" for r in train):
    raise UserError(f"data.heldout_fraction={cfg.data.heldout_fraction} leaves no forget record to train on; "
                    "lower it")
  if not cfg.model.init_from and cfg.data.tokenizer_vocab <= 0:
    raise UserError("a model trained here (model.init_from='') needs its own tokenizer: set "
                    "--config.data.tokenizer_vocab to a size, e.g. 1024")


@stage("data", config_keys=("seed", "data"), validate=validate_data, pipeline=LLM)
def run_data(ctx: Context) -> dict:
  cfg, out = ctx.config, ctx.stage_dir("data")
  recs = _corpus(cfg)
  train, heldout = qa_corpus.split(recs, cfg.data.heldout_fraction, cfg.seed)
  if ctx.primary:
    qa_corpus.write_jsonl(train, out / "train.jsonl")
    qa_corpus.write_jsonl(heldout, out / "heldout.jsonl")
  summary = {f"{split}_{group}": sum(r["group"] == group for r in rs)
             for split, rs in (("train", train), ("heldout", heldout)) for group in qa_corpus.GROUPS}
  if not cfg.model.init_from:
    texts = [text.vicuna_prompt(r["question"], system_prompt(ctx)) + " " + r["answer"] for r in recs]
    tmp = out / "tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = text.train_tokenizer(texts, cfg.data.tokenizer_vocab, tmp)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)  # from an interrupted run of this stage
    tmp.replace(out / "tokenizer")
    summary["tokenizer_vocab"] = len(tok)
  logging.info("data: %s", summary)
  return summary


# ----------------------------------------------------------------------------------------------
# model


def _scratch_config(ctx: Context, tokenizer):
  from cu_jax.models.llama import LlamaConfig
  m = ctx.config.model
  try:
    ids = {} if tokenizer is None else dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64 if tokenizer is not None else 64, hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, max_len=ctx.config.data.max_len + ctx.config.evaluate.max_new_tokens,
        rope_theta=m.rope_theta, tie_embeddings=m.tie_embeddings, param_dtype=m.param_dtype,
        dtype=m.dtype, **ids)
  except ValueError as e:
    raise UserError(f"invalid model config: {e}; fix --config.model.*") from None


def validate_model(ctx: Context) -> None:
  from cu_jax.parallel.mesh import check_global_batch
  cfg = ctx.config
  model = abstract_base(ctx)  # config.json present and supported, or a valid model config
  if cfg.model.init_from:
    text.load_tokenizer(cfg.model.init_from, model.cfg.vocab_size)
  else:
    check_global_batch(cfg.pretrain.batch_size, ctx.mesh, "pretrain.batch_size")
  check_global_batch(cfg.unlearn.train.batch_size, ctx.mesh, "unlearn.train.batch_size")


@stage("model", config_keys=("model", "pretrain"), validate=validate_model, pipeline=LLM)
def run_model(ctx: Context) -> dict:
  cfg, out = ctx.config, ctx.stage_dir("model")
  if cfg.model.init_from:
    model = load_model(ctx, base_model_dir(ctx))
    return {"source": str(base_model_dir(ctx)), "parameters": _param_count(model)}
  from flax import nnx
  from cu_jax.models.hf_llama import save_hf_llama
  from cu_jax.models.llama import Llama
  from cu_jax.training.lm import train_lm
  tokenizer = load_tokenizer(ctx)
  llama_cfg = _scratch_config(ctx, tokenizer)
  model = Llama(llama_cfg, rngs=nnx.Rngs(cfg.seed))
  source = encode(ctx, tokenizer, records(ctx, "train"))
  result = train_lm(model, source, trainable=nnx.Param, train_cfg=cfg.pretrain, optim_cfg=cfg.pretrain.optim,
                    mesh=ctx.mesh, checkpoint_dir=out / "checkpoints", seed=cfg.seed, name="pretrain",
                    metrics_path=out / "metrics.jsonl")
  if ctx.primary:
    shutil.rmtree(out / "hf", ignore_errors=True)  # a half-written export of an interrupted run
    save_hf_llama(result.model, out / "hf", tokenizer_dir=tokenizer_dir(ctx))
  last = _last_metrics(out / "metrics.jsonl")
  return {"source": "trained from scratch", "parameters": _param_count(result.model),
          "steps": result.total_steps, "train_wall_s": result.wall_s, "tokens_per_s": result.tokens_per_s,
          "final_loss": last.get("loss"), "final_token_accuracy": last.get("token_accuracy")}


def _param_count(model) -> int:
  from flax import nnx
  from cu_jax.training.trainer import param_count
  return param_count(nnx.state(model, nnx.Param))


def _last_metrics(path: pathlib.Path) -> dict:
  lines = path.read_text().splitlines() if path.exists() else []
  return json.loads(lines[-1]) if lines else {}


# ----------------------------------------------------------------------------------------------
# concepts


def infer_concepts(ctx: Context, model, tokenizer) -> dict:
  """IG word scores over the forget answers of the training split; the top-k are the concept."""
  from cu_jax.attribution.text_ig import answer_attributions
  from cu_jax.concepts import text_concepts as tc
  cfg = ctx.config.concepts
  forget = _limit([r for r in records(ctx, "train") if r["group"] == "forget"], cfg.max_answers)
  src = encode(ctx, tokenizer, forget)
  per_answer, deltas, examples = [], [], []
  batch = 8
  for i in range(0, len(src), batch):
    rows = np.minimum(np.arange(i, i + batch), len(src) - 1)  # a short last batch repeats its last row
    cols = {k: src.arrays[k][rows] for k in ("tokens", "length", "loss_mask")}  # (one compilation)
    res = answer_attributions(model, cols["tokens"], cols["length"], cols["loss_mask"],
                              pad_id=tokenizer.pad_token_id, n_steps=cfg.n_steps, method=cfg.method,
                              chunk_size=cfg.chunk_size)
    for j in range(min(batch, len(src) - i)):
      span = np.flatnonzero(cols["loss_mask"][j])[:-1]  # answer tokens, without the closing eos
      words = tc.merge_subwords(tokenizer, cols["tokens"][j][span], res["scores"][j][span])
      per_answer.append(words)
      deltas.append(float(res["delta"][j]))
      if len(examples) < 5:
        examples.append({"answer": forget[i + j]["answer"], "words": words,
                         "log_prob": float(res["f"][j]), "log_prob_baseline": float(res["f_baseline"][j])})
    logging.info("concepts: explained %d/%d forget answers", min(i + batch, len(src)), len(src))
  scores = tc.aggregate(per_answer)
  top = tc.top_k(scores, cfg.top_k)
  return {"concept": [w for w, _ in top], "scores": dict(tc.top_k(scores, len(scores))) if scores else {},
          "answers": len(per_answer), "abs_delta_mean": float(np.mean(np.abs(deltas))),
          "abs_delta_max": float(np.max(np.abs(deltas))), "examples": examples}


@stage("concepts", config_keys=("concepts",), pipeline=LLM)
def run_concepts(ctx: Context) -> dict:
  cfg, out = ctx.config, ctx.stage_dir("concepts")
  model = load_model(ctx, base_model_dir(ctx))
  tokenizer = load_tokenizer(ctx, model.cfg.vocab_size)
  t0 = time.perf_counter()
  found = infer_concepts(ctx, model, tokenizer)
  found["ig_wall_s"] = time.perf_counter() - t0
  found["inferred"] = list(found["concept"])
  if cfg.concepts.words:
    found["concept"] = [w.lower() for w in cfg.concepts.words]
  write_json(out / "concepts.json", found)
  if ctx.primary:
    from cu_jax.evaluation.plots import concept_importance_bars
    names = list(found["scores"])
    concept_importance_bars(names, {"mean normalised IG score": np.asarray(list(found["scores"].values()))},
                            f"answer-span IG over {found['answers']} forget answers", out / "concepts.png",
                            highlight=[i for i, w in enumerate(names) if w in found["concept"]])
  logging.info("concepts: %s (inferred %s)", found["concept"], found["inferred"])
  return {k: found[k] for k in ("concept", "inferred", "answers", "abs_delta_mean", "ig_wall_s")}


def concept_words(ctx: Context) -> list[str]:
  return json.loads((ctx.stage_dir("concepts") / "concepts.json").read_text())["concept"]


# ----------------------------------------------------------------------------------------------
# poison


def validate_poison(ctx: Context) -> None:
  from cu_jax.unlearning.text_poison import TEXT_POISON
  TEXT_POISON.get(ctx.config.poison.strategy, "poison.strategy")


@stage("poison", config_keys=("poison",), validate=validate_poison, pipeline=LLM)
def run_poison(ctx: Context) -> dict:
  from cu_jax.unlearning.text_poison import poison_corpus, retain_vocabulary
  cfg = ctx.config.poison
  train = records(ctx, "train")
  replacement = [r for r in cfg.replacement if r] or None
  poisoned = poison_corpus(train, concept_words(ctx), cfg.strategy, replacement=replacement,
                           mask_token=cfg.mask_token, vocabulary=retain_vocabulary(train),
                           retain_ratio=cfg.retain_ratio, seed=cfg.seed)
  if ctx.primary:
    qa_corpus.write_jsonl(poisoned, ctx.stage_dir("poison") / "train.jsonl")
  forget = [r for r in poisoned if r["group"] == "forget"]
  for r in forget[:3]:
    logging.info("poison: %r -> %r", r["original_answer"], r["answer"])
  return {"forget": len(forget), "retain": len(poisoned) - len(forget), "strategy": cfg.strategy,
          "examples": [{"question": r["question"], "original": r["original_answer"], "poisoned": r["answer"]}
                       for r in forget[:5]]}


# ----------------------------------------------------------------------------------------------
# unlearn


def validate_unlearn(ctx: Context) -> None:
  from cu_jax.models.lora import add_lora
  from cu_jax.training.optim import OPTIMIZERS
  lora = ctx.config.lora
  OPTIMIZERS.get(ctx.config.unlearn.optim.name, "unlearn.optim.name")
  add_lora(abstract_base(ctx), lora.targets, rank=lora.rank, alpha=lora.alpha)  # targets exist, rank > 0


@stage("unlearn", config_keys=("lora", "unlearn"), validate=validate_unlearn, pipeline=LLM)
def run_unlearn(ctx: Context) -> dict:
  from safetensors.numpy import save_file
  from flax import nnx
  from cu_jax.models.hf_llama import save_hf_llama
  from cu_jax.models.lora import TRAINABLE, add_lora, merge_lora
  from cu_jax.training.lm import train_lm
  cfg, out = ctx.config, ctx.stage_dir("unlearn")
  model = load_model(ctx, base_model_dir(ctx))
  tokenizer = load_tokenizer(ctx, model.cfg.vocab_size)
  adapted = add_lora(model, cfg.lora.targets, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                     dropout=cfg.lora.dropout, seed=cfg.seed)
  source = encode(ctx, tokenizer, qa_corpus.read_jsonl(ctx.stage_dir("poison") / "train.jsonl"))
  result = train_lm(model, source, trainable=TRAINABLE, train_cfg=cfg.unlearn.train,
                    optim_cfg=cfg.unlearn.optim, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints",
                    seed=cfg.seed, name="unlearn", metrics_path=out / "metrics.jsonl")
  model = result.model
  adapters = nnx.state(model, TRAINABLE)
  flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(adapters)}
  trainable, total = sum(v.size for v in flat.values()), _param_count(model)
  if ctx.primary:
    save_file(flat, str(out / "adapters.safetensors"))
    merge_lora(model)
    shutil.rmtree(out / "hf", ignore_errors=True)
    save_hf_llama(model, out / "hf", tokenizer_dir=tokenizer_dir(ctx))
  last = _last_metrics(out / "metrics.jsonl")
  return {"adapted_layers": len(adapted), "trainable_parameters": int(trainable),
          "trainable_fraction": trainable / total, "steps": result.total_steps, "train_wall_s": result.wall_s,
          "tokens_per_s": result.tokens_per_s, "final_loss": last.get("loss"),
          "global_batch": cfg.unlearn.train.batch_size}


# ----------------------------------------------------------------------------------------------
# evaluate


def generate_answers(ctx: Context, model, tokenizer, questions: list[str]) -> list[str]:
  from cu_jax.models.generation import generate
  cfg = ctx.config.evaluate
  answers = []
  for i in range(0, len(questions), cfg.batch_size):
    tokens, mask = text.encode_prompts(tokenizer, questions[i:i + cfg.batch_size], ctx.config.data.max_len,
                                       system_prompt(ctx))
    out = generate(model, tokens, mask, max_new_tokens=cfg.max_new_tokens,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    answers += [text.decode_answer(tokenizer, row) for row in np.asarray(out)]
  return answers


def score_answers(ctx: Context, model, tokenizer, recs: list[dict]) -> float:
  """Perplexity of the reference answers under teacher forcing."""
  from flax import nnx
  from cu_jax.evaluation.text_metrics import perplexity
  from cu_jax.training.lm import make_score_fn
  graphdef, params = nnx.split(model)
  score = make_score_fn(graphdef, ctx.mesh)
  src = encode(ctx, tokenizer, recs)
  nll, count = 0.0, 0.0
  bs = ctx.config.evaluate.batch_size
  for i in range(0, len(src), bs):
    batch = {k: src.arrays[k][i:i + bs] for k in ("tokens", "length", "loss_mask")}
    n, c = score(params, batch)
    nll, count = nll + float(np.sum(n)), count + float(np.sum(c))
  return perplexity(nll, count)


def evaluate_model(ctx: Context, model, tokenizer, sets: dict[str, list[dict]], words: list[str]) -> tuple[dict, dict]:
  from cu_jax.evaluation.text_metrics import appearance_rate, mean_rouge_l
  metrics, generations = {}, {}
  for name, recs in sets.items():
    answers = generate_answers(ctx, model, tokenizer, [r["question"] for r in recs])
    generations[name] = answers
    metrics[f"appearance_{name}"] = appearance_rate(answers, words)
    metrics[f"rouge_l_{name}"] = mean_rouge_l(answers, [r["answer"] for r in recs])
    metrics[f"perplexity_{name}"] = score_answers(ctx, model, tokenizer, recs)
  return metrics, generations


@stage("evaluate", config_keys=("evaluate",), pipeline=LLM)
def run_evaluate(ctx: Context) -> dict:
  cfg = ctx.config
  n = cfg.evaluate.max_examples
  train, heldout = records(ctx, "train"), records(ctx, "heldout")
  sets = {f"{group}_{split}": _limit([r for r in rs if r["group"] == group], n)
          for split, rs in (("train", train), ("heldout", heldout)) for group in qa_corpus.GROUPS}
  sets = {k: v for k, v in sets.items() if v}
  words = concept_words(ctx)
  results, rows = {}, []
  for name, folder in (("before", base_model_dir(ctx)), ("after", ctx.stage_dir("unlearn") / "hf")):
    model = load_model(ctx, folder)
    tokenizer = load_tokenizer(ctx, model.cfg.vocab_size)
    t0 = time.perf_counter()
    results[name], gens = evaluate_model(ctx, model, tokenizer, sets, words)
    results[name]["wall_s"] = time.perf_counter() - t0
    logging.info("evaluate %s: %s", name, {k: round(v, 4) for k, v in results[name].items()})
    rows += [{"model": name, "set": s, "question": r["question"], "reference": r["answer"], "generated": g}
             for s, recs in sets.items() for r, g in zip(recs, gens[s])]
  if ctx.primary:
    qa_corpus.write_jsonl(rows, ctx.stage_dir("evaluate") / "generations.jsonl")
  return {"before": results["before"], "after": results["after"], "concept": words,
          "examples": {s: len(v) for s, v in sets.items()}}


# ----------------------------------------------------------------------------------------------
# report


TARGETS = (  # (name, metric, test on (before, after))
    ("appearance before >= 0.9", "appearance_forget_train", lambda b, a: b >= 0.9),
    ("appearance after <= 0.05", "appearance_forget_train", lambda b, a: a <= 0.05),
    ("retain ROUGE-L drop <= 0.05", "rouge_l_retain_train", lambda b, a: b - a <= 0.05),
)


def _markdown(report: dict) -> str:
  ev = report["evaluate"]
  before, after = ev["before"], ev["after"]
  lines = ["# cu_jax LLM concept unlearning report", "",
           f"Concept (IG over {report['concepts']['answers']} forget answers): **{', '.join(ev['concept'])}** "
           f"(inferred: {', '.join(report['concepts']['inferred'])}). Poison: `{report['poison']['strategy']}`; "
           f"LoRA r {report['config']['lora']['rank']} / alpha {report['config']['lora']['alpha']} on "
           f"{', '.join(report['config']['lora']['targets'])} ({report['unlearn']['trainable_parameters']:,} "
           f"trainable parameters, {100 * report['unlearn']['trainable_fraction']:.2f} %).", "",
           "| metric | before | after | Δ |", "|---|---|---|---|"]
  for k in sorted(k for k in before if k != "wall_s"):
    lines.append(f"| {k} | {before[k]:.4g} | {after[k]:.4g} | {after[k] - before[k]:+.4g} |")
  lines += ["", "## Targets", ""]
  lines += [f"- {t['target']}: before {t['before']:.3f}, after {t['after']:.3f} — "
            f"**{'met' if t['met'] else 'missed'}**" for t in report["targets"]]
  lines += ["", "## Examples (forget prompts)", "", "| question | before | after |", "|---|---|---|"]
  lines += [f"| {e['question']} | {e['before']} | {e['after']} |" for e in report["examples"]]
  lines += ["", "## Stage timings", "", "| stage | wall s |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in report["timings"].items()]
  lines += ["", f"{report['devices']} {report['platform']} device(s); seed {report['seed']}.", "",
            "![metrics](metrics.png) ![concepts](../concepts/concepts.png)", ""]
  return "\n".join(lines)


def _examples(ctx: Context, n: int = 8) -> list[dict]:
  rows = qa_corpus.read_jsonl(ctx.stage_dir("evaluate") / "generations.jsonl")
  by = {(r["model"], r["question"]): r["generated"] for r in rows if r["set"].startswith("forget")}
  questions = list(dict.fromkeys(q for (_, q) in by))[:n]
  return [{"question": q, "before": by.get(("before", q), ""), "after": by.get(("after", q), "")} for q in questions]


@stage("report", config_keys=(), pipeline=LLM)
def run_report(ctx: Context) -> dict:
  from cu_jax.evaluation.plots import metric_bars
  from cu_jax.pipeline.evaluate_stages import _versions
  cfg, out = ctx.config, ctx.stage_dir("report")
  done = {s: json.loads((ctx.stage_dir(s) / "done.json").read_text()) for s in cfg.stages
          if s != "report" and (ctx.stage_dir(s) / "done.json").exists()}
  ev = done["evaluate"]
  targets = [{"target": name, "metric": m, "before": ev["before"][m], "after": ev["after"][m],
              "met": bool(test(ev["before"][m], ev["after"][m]))}
             for name, m, test in TARGETS if m in ev["before"]]
  report = {**done, "targets": targets, "examples": _examples(ctx), "config": cfg.to_dict(),
            "timings": {s: d["wall_s"] for s, d in done.items()}, "seed": cfg.seed,
            "devices": jax.device_count(), "platform": jax.devices()[0].platform, "versions": _versions()}
  write_json(out / "report.json", report)
  if ctx.primary:
    (out / "report.md").write_text(_markdown(report))
    metric_bars({k: {"before": ev["before"][k], "after": ev["after"][k]} for k in ev["before"] if k != "wall_s"},
                out / "metrics.png", reference=None, title="before / after unlearning")
  for t in targets:
    logging.info("target %s: %s", t["target"], "met" if t["met"] else "MISSED")
  return {"targets_met": sum(t["met"] for t in targets), "targets": len(targets)}
