"""AdaDiff benchmark: fixed step counts vs REINFORCE step-selection policies at several beta.

  flock /tmp/adaflow-bench.lock python -m experiments.bench_adadiff --generator runs/quickstart

1. Generator: `--generator` (a flow-matching workdir); trained with the quick start config
   (`--gen_steps`, default 1500) when it has no checkpoint.
2. Training pool: `--pool` inputs (class-balanced labels, fresh noise) sampled at EVERY step
   count of the set (heun + CFG from the generator's config); the quality of each (input, action)
   is measured once (it does not depend on beta): closeness to the 64-step sample and the
   classifier's log p(label | x).
3. Policies: for each quality and beta, REINFORCE (`adaflow.rl.reinforce.reinforce_train`) on the
   pool, reward = quality[i, a] - beta * steps[a] / 64; inputs = the generator's class embedding
   (and, for the `+noise` rows, initial-noise statistics).
4. Evaluation on `--eval` held-out inputs (new noise): every fixed step count, and every policy
   (argmax action per input; its samples are the fixed-step samples of the same noise at the
   chosen counts): average steps, FD and class accuracy (adaflow.eval), per-class step
   distribution. Wall-clock per image: grouped sampling (`StepSelectorObjective.sample_grouped`)
   on a `--time_n` subset, fixed counts and policies interleaved, best of `--reps` repetitions.
Writes experiments/results/adadiff.md and adadiff_curve.png.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adaflow import data as data_lib
from adaflow.eval import evaluate_samples
from adaflow.models import step_selector as sel
from adaflow.rl import rewards as rw
from adaflow.rl.reinforce import reinforce_train
from adaflow.train import checkpoint as ckpt
from adaflow.train.loop import load_trainer_and_params
from adaflow.methods import build_objective
from experiments.common import RESULTS, ROOT, load_config, machine_line, utc_now


def ensure_generator(workdir, steps):
  if os.path.isdir(ckpt.checkpoint_dir(workdir)) and os.listdir(ckpt.checkpoint_dir(workdir)):
    print(f"[bench] reusing generator {workdir}")
    return None
  cmd = ["adaflow", "train", "--config", os.path.join(ROOT, "configs/quickstart.py"), "--workdir", workdir,
         f"--config.train.steps={steps}", "--config.eval.at_end=False"]
  print("[bench] training generator:", " ".join(cmd))
  t0 = time.time()
  subprocess.run(cmd, check=True)
  return time.time() - t0


def generate_table(obj, labels, rng, chunk):
  """All step counts for labels [N] -> images [A, N, H, W, C] (numpy), noise from `rng`."""
  fn = jax.jit(obj.generate_all)
  noise = obj.noise(rng, len(labels))
  out = []
  for s in range(0, len(labels), chunk):
    y = jnp.asarray(labels[s:s + chunk])
    z = noise[s:s + chunk]
    pad = chunk - y.shape[0]
    if pad:
      y = jnp.concatenate([y, jnp.zeros((pad,), jnp.int32)])
      z = jnp.concatenate([z, jnp.zeros((pad,) + z.shape[1:], z.dtype)])
    out.append(np.asarray(fn(y, z))[:, :chunk - pad])
  return np.concatenate(out, axis=1), noise


def quality_tables(obj, images, labels, clf_apply):
  """{'closeness': [N, A], 'classifier': [N, A]} from images [A, N, ...]."""
  y = jnp.asarray(labels)
  imgs = jnp.asarray(images)
  close = np.asarray(rw.all_action_quality(lambda x, r, l: rw.closeness(x, r), imgs, y))
  logits = jnp.stack([clf_apply(imgs[a])[0] for a in range(imgs.shape[0])])
  clf = np.asarray(jax.vmap(lambda lg: rw.class_log_prob(lg, y))(logits)).T
  return {"closeness": close, "classifier": clf}


def main():
  p = argparse.ArgumentParser(prog="python -m experiments.bench_adadiff", description=__doc__.split("\n\n")[0])
  p.add_argument("--generator", default=os.path.join(ROOT, "runs/quickstart"))
  p.add_argument("--gen_steps", type=int, default=1500)
  p.add_argument("--pool", type=int, default=320)
  p.add_argument("--eval", type=int, default=500)
  p.add_argument("--time_n", type=int, default=128)
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--rl_steps", type=int, default=400)
  p.add_argument("--rl_batch", type=int, default=64)
  p.add_argument("--betas", default="0.0002,0.001,0.005,0.02,0.1")
  p.add_argument("--chunk", type=int, default=64)
  p.add_argument("--out", default=os.path.join(RESULTS, "adadiff.md"))
  args = p.parse_args()
  machine = machine_line()
  t_start = time.time()
  gen_train_s = ensure_generator(os.path.abspath(args.generator), args.gen_steps)

  config = load_config("quickstart_adadiff")
  config.selector.generator_workdir = os.path.abspath(args.generator)
  config.selector.quality = "closeness"        # tables for both qualities are computed below
  info = data_lib.get_info(config.data)
  obj = build_objective(config, info, load_run=load_trainer_and_params)
  from adaflow.eval import get_classifier
  from adaflow.eval.classifier import cache_dir
  cache = cache_dir(config, config.selector.generator_workdir)
  # The reward's classifier (selector.classifier_seed) and the evaluation's (eval.classifier_seed)
  # are different networks: a policy trained on one is scored by the other, never by its reward.
  reward_clf = get_classifier(config.data, cache, seed=int(config.selector.classifier_seed),
                              steps=int(config.eval.classifier_steps))
  clf = get_classifier(config.data, cache, seed=int(config.eval.classifier_seed),
                       steps=int(config.eval.classifier_steps))
  clf_apply = jax.jit(rw.classifier_apply_fn(reward_clf))
  S = np.asarray(obj.step_set)
  A, smax, K = len(S), obj.max_steps, obj.num_classes
  print(f"[bench] step set {tuple(S)}, method {obj.method}, cfg {obj.cfg_scale}")

  # ---- pool and its quality tables ----
  t0 = time.time()
  pool_labels = (np.arange(args.pool) % K).astype(np.int32)
  pool_imgs, pool_noise = generate_table(obj, pool_labels, jax.random.PRNGKey(100), args.chunk)
  pool_q = quality_tables(obj, pool_imgs, pool_labels, clf_apply)
  pool_s = time.time() - t0
  print(f"[bench] pool of {args.pool} x {A} actions in {pool_s:.0f}s")

  # ---- held-out fixed-step samples ----
  t0 = time.time()
  ev_labels = (np.arange(args.eval) % K).astype(np.int32)
  ev_key = jax.random.PRNGKey(200)
  ev_imgs, ev_noise = generate_table(obj, ev_labels, ev_key, args.chunk)
  ev_q = quality_tables(obj, ev_imgs, ev_labels, clf_apply)
  eval_gen_s = time.time() - t0
  fixed = []
  for a, s in enumerate(S):
    r = evaluate_samples(clf, ev_imgs[a], ev_labels)
    fixed.append(dict(name=f"fixed {s}", steps=float(s), fd=r["fd"], acc=r["class_acc"],
                      closeness=float(ev_q["closeness"][:, a].mean()), logp=float(ev_q["classifier"][:, a].mean()),
                      actions=np.full(args.eval, a)))
  print(f"[bench] held-out fixed-step samples in {eval_gen_s:.0f}s")

  # ---- policies ----
  gp = obj.generator_params
  feats_cls = np.asarray(sel.policy_features(gp, jnp.asarray(pool_labels), pool_noise, False))
  feats_noise = np.asarray(sel.policy_features(gp, jnp.asarray(pool_labels), pool_noise, True))
  ev_feats_cls = np.asarray(sel.policy_features(gp, jnp.asarray(ev_labels), ev_noise, False))
  ev_feats_noise = np.asarray(sel.policy_features(gp, jnp.asarray(ev_labels), ev_noise, True))
  betas = [float(b) for b in args.betas.split(",")]
  runs = [(q, b, False) for q in ("classifier", "closeness") for b in betas]
  runs += [("closeness", b, True) for b in betas[1:4]]
  policies = []
  t0 = time.time()
  for q, beta, use_noise in runs:
    policy = sel.StepPolicy(num_actions=A, hidden=64, depth=2)
    f_train = feats_noise if use_noise else feats_cls
    params = policy.init(jax.random.PRNGKey(1), jnp.zeros((1, f_train.shape[1])))
    table = jnp.asarray(pool_q[q] - beta * S[None, :] / smax, jnp.float32)

    def reward_fn(idx, actions, key, table=table):
      del key
      return table[idx, actions]

    params, hist = reinforce_train(policy.apply, params, f_train, reward_fn, steps=args.rl_steps,
                                   batch_size=args.rl_batch, rng=jax.random.PRNGKey(2), lr=1e-2,
                                   entropy_coef=0.01, baseline_decay=0.9)
    f_eval = ev_feats_noise if use_noise else ev_feats_cls
    actions = np.asarray(sel.greedy_actions(policy.apply(params, jnp.asarray(f_eval))))
    imgs = ev_imgs[actions, np.arange(args.eval)]
    r = evaluate_samples(clf, imgs, ev_labels)
    idx = np.arange(args.eval)
    oracle = (ev_q[q] - beta * S[None, :] / smax).max(axis=1).mean()
    policies.append(dict(name=f"policy {q}{' +noise' if use_noise else ''} beta={beta:g}", quality=q, beta=beta,
                         noise=use_noise, steps=float(S[actions].mean()), fd=r["fd"], acc=r["class_acc"],
                         closeness=float(ev_q["closeness"][idx, actions].mean()),
                         logp=float(ev_q["classifier"][idx, actions].mean()), actions=actions,
                         reward=float((ev_q[q][idx, actions] - beta * S[actions] / smax).mean()), oracle=float(oracle),
                         final_entropy=hist[-1]["entropy"]))
    print(f"[bench] {policies[-1]['name']}: avg steps {policies[-1]['steps']:.1f}, fd {r['fd']:.3f}, "
          f"acc {r['class_acc']:.3f}, entropy {hist[-1]['entropy']:.3f}")
  rl_s = time.time() - t0

  # ---- wall-clock: grouped sampling, fixed and policies interleaved ----
  tn = min(args.time_n, args.eval)
  t_labels = ev_labels[:tn]
  t_key = jax.random.PRNGKey(300)
  methods = fixed + policies
  for m in methods:   # warm-up: compile every (steps, bucket) shape used
    obj.sample_grouped(None, t_key, t_labels, batch_size=args.chunk, actions=m["actions"][:tn])
  times = {m["name"]: [] for m in methods}
  for _ in range(args.reps):
    for m in methods:
      t0 = time.perf_counter()
      obj.sample_grouped(None, t_key, t_labels, batch_size=args.chunk, actions=m["actions"][:tn])
      times[m["name"]].append(time.perf_counter() - t0)
  for m in methods:
    m["ms_per_image"] = 1000 * min(times[m["name"]]) / tn
    m["time_steps"] = float(S[m["actions"][:tn]].mean())

  write_report(args, obj, fixed, policies, ev_labels, S, K,
               dict(gen_train_s=gen_train_s, pool_s=pool_s, eval_gen_s=eval_gen_s, rl_s=rl_s,
                    total_s=time.time() - t_start), clf, machine, config)


def fmt(x, nd=3):
  return "n/a" if x is None else f"{x:.{nd}f}"


def write_report(args, obj, fixed, policies, ev_labels, S, K, secs, clf, machine, config):
  ref = fixed[-1]
  lines = []
  add = lines.append
  add("# AdaDiff: per-input step counts (REINFORCE) vs fixed step counts\n")
  add(f"Date: {utc_now()}. Machine: {machine}. "
      "Timings are best of repetitions, interleaved.\n")
  add(f"Command: `python -m experiments.bench_adadiff {' '.join(sys.argv[1:])}`\n")
  add(f"Generator: `{args.generator}` (flow-matching DiT, quick start config), sampled with {obj.method} + CFG "
      f"{obj.cfg_scale:g}; step set {tuple(int(s) for s in S)}. Policy: 2-layer MLP (64 wide) over the generator's "
      f"class embedding (`+noise`: plus 6 initial-noise statistics), REINFORCE with a moving-average baseline "
      f"(decay 0.9) and entropy bonus 0.01, {args.rl_steps} Adam steps (lr 1e-2) of {args.rl_batch} on a pool of "
      f"{args.pool} inputs whose quality at every step count was measured once. Held-out: {args.eval} class-balanced "
      f"inputs with new noise; FD/accuracy from `adaflow.eval` (classifier-feature FD, not Inception FID; "
      f"evaluation classifier seed {config.eval.classifier_seed}, held-out accuracy {fmt(clf.heldout_accuracy)}; "
      f"the 'classifier' reward uses a separately trained classifier, seed {config.selector.classifier_seed}). "
      f"ms/image: grouped sampling of {min(args.time_n, args.eval)} "
      f"inputs in chunks of {args.chunk} (padded to powers of two), best of {args.reps}.\n")
  add("Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items() if v is not None) + ".\n")
  add("## Fixed step counts vs policies (held-out)\n")
  add("| method | avg steps | steps saved vs 64 | ms / image | FD | class acc | log p(y|x) | closeness (-MSE to 64) |")
  add("|---|---:|---:|---:|---:|---:|---:|---:|")
  for m in fixed + policies:
    add(f"| {m['name']} | {m['steps']:.1f} | {100 * (1 - m['steps'] / S[-1]):.0f}% | {m['ms_per_image']:.2f} | "
        f"{fmt(m['fd'])} | {fmt(m['acc'])} | {m['logp']:.4f} | {m['closeness']:.5f} |")
  add("")
  add("## Team bar: >= 40% fewer steps than 64 with FD within 5% of the 64-step FD\n")
  add(f"64-step FD {ref['fd']:.3f} (5% band: <= {1.05 * ref['fd']:.3f}), class acc {ref['acc']:.3f}.\n")
  for m in fixed[:-1] + policies:
    ok = m["steps"] <= 0.6 * S[-1] and m["fd"] <= 1.05 * ref["fd"]
    add(f"- {m['name']}: {100 * (1 - m['steps'] / S[-1]):.0f}% fewer steps, FD {m['fd']:.3f} "
        f"({100 * (m['fd'] / ref['fd'] - 1):+.1f}%), time {100 * (1 - m['ms_per_image'] / ref['ms_per_image']):.0f}% less "
        f"-> {'meets' if ok else 'misses'} the bar")
  add("")
  add("## Learned per-class step distribution (held-out, argmax policy)\n")
  add("| policy | " + " | ".join(f"class {k}" for k in range(K)) + " |")
  add("|---|" + "---|" * K)
  for m in policies:
    cells = []
    for k in range(K):
      st = S[m["actions"][ev_labels == k]]
      vals, cnt = np.unique(st, return_counts=True)
      cells.append(" ".join(f"{v}:{c}" for v, c in zip(vals, cnt)))
    add(f"| {m['name']} | " + " | ".join(cells) + " |")
  add("")
  add("## Policy reward vs the per-input oracle (held-out)\n")
  add("| policy | reward | oracle reward (best action per input) | final train entropy |")
  add("|---|---:|---:|---:|")
  for m in policies:
    add(f"| {m['name']} | {m['reward']:.5f} | {m['oracle']:.5f} | {m['final_entropy']:.3f} |")
  add("")
  add("![quality vs average steps](adadiff_curve.png)\n")
  text = "\n".join(lines)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text + "\n")
  print(text)
  plot(fixed, policies, os.path.join(os.path.dirname(args.out), "adadiff_curve.png"))


def plot(fixed, policies, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((axes[0], "fd", "FD (lower is better)"), (axes[1], "closeness", "-MSE to 64-step sample")):
    ax.plot([m["steps"] for m in fixed], [m[key] for m in fixed], "k-o", label="fixed steps")
    for q, noise, style in (("classifier", False, "s"), ("closeness", False, "^"), ("closeness", True, "v")):
      pts = sorted([(m["steps"], m[key]) for m in policies if m["quality"] == q and m["noise"] == noise])
      if pts:
        ax.plot(*zip(*pts), style + "--", label=f"policy ({q}{' +noise' if noise else ''}), beta sweep")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("average sampling steps")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
