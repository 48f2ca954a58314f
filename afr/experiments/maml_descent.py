"""Does second-order MAML descend? Meta-training only (no target images, no test pack), by the health rules.

The committed second-order starts of notebook 04 (``results/maml/maml_maml_seed{0,1,2}``) diverged: their meta-loss
rose and seed 2 ended at the uniform value. This measures the meta-training of the same start (notebook 04's
``maml`` method, its grid's settings: 60 outer steps, 3 inner steps at 1e-3, meta lr 1e-3) with a change fixed in
advance — the meta-gradient clipped to norm 1 (``--meta-grad-clip``) — and reports whether the meta-loss falls
(:func:`afr.meta.maml.divergence`: the mean of the last 5 steps against the first 5, and the uniform value). Only
source-collection episodes are read, so nothing here looks at the held-out target or the test packs.

``python -m afr.experiments.maml_descent --seed 2 --meta-grad-clip 1.0`` writes
``results/analysis/maml_descent/<tag>.json`` (the settings, the history, the verdict; an existing record is kept; under
``analysis/``, so the training-health scan of the grids does not count it as a grid run).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

__all__ = ["main", "per_domain_descent"]


def per_domain_descent(history, window: int = 3) -> dict[str, dict[str, float]]:
    """``{domain: {"first", "last"}}``: the mean meta-loss of each source domain's first and last ``window`` outer
    steps that drew it. A diagnostic beside the health rule (whose 5-step windows mix easy and hard domains in
    unequal shares when the steps alternate between them), not a verdict."""
    by_domain: dict[str, list[float]] = {}
    for step in history:
        for name, value in step.items():
            if name.startswith("meta_loss/") and value is not None:
                by_domain.setdefault(name.split("/", 1)[1], []).append(float(value))
    return {domain: {"first": sum(v[:window]) / len(v[:window]), "last": sum(v[-window:]) / len(v[-window:])}
            for domain, v in sorted(by_domain.items()) if len(v) >= 2 * window}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afr.experiments.maml_descent", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--meta-grad-clip", type=float, default=1.0)
    parser.add_argument("--meta-steps", type=int, default=60)
    parser.add_argument("--method", default="maml", choices=("maml", "fomaml"))
    parser.add_argument("--inner-steps", type=int, default=3, help="inner SGD steps per episode (the grid's: 3)")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="AdamW learning rate of the outer loop (the grid's: 1e-3)")
    args = parser.parse_args(argv)

    from afr.experiments.settings.maml import MamlExperimentSettings
    from afr.experiments.training_setup import evaluation_device
    from afr.io import atomic_write_text
    from afr.meta.data import load_training_chips
    from afr.meta.episodes import EpisodeSampler
    from afr.meta.maml import divergence
    from afr.meta.start import meta_learned_start
    from afr.paths import results_root

    settings = MamlExperimentSettings(method=args.method, seed=args.seed, meta_steps=args.meta_steps,
                                      meta_grad_clip=args.meta_grad_clip, inner_steps=args.inner_steps,
                                      meta_lr=args.meta_lr, progress=False, resume=True)
    path = results_root() / "analysis" / "maml_descent" / f"{settings.tag}.json"
    if path.is_file():
        print(f"{path} is recorded already (kept): {json.loads(path.read_text())['verdict']}")
        return 0
    # notebook 04's data and episodes (its recipe's load_data / episode_sampler, from the library pieces they use):
    # the embedded benchmark's source collections, never the held-out target
    data = load_training_chips(settings.embedded_root, settings.target)
    sources = settings.sources or tuple(dict.fromkeys(c for c in data.collections.tolist() if c != settings.target))
    sampler = EpisodeSampler(data.labels, data.collections, settings.n_way, settings.k_shot, settings.q_query,
                             allowed=sources, seed=settings.seed)
    start = meta_learned_start(settings.backbone, settings.weights, settings.rank, data, sampler,
                               settings.meta_config(), settings.run_dir, seed=settings.seed,
                               device=evaluation_device(settings), resume=True, progress=False)
    summary = {"steps": start.result.steps, "history": start.result.history,
               "seconds_per_step": start.result.seconds_per_step}
    config = settings.meta_config()
    reason = divergence(summary["history"], settings.n_way, config.margin_s, config.margin_m)
    losses = [step["meta_loss"] for step in summary["history"]]
    verdict = reason or (f"descends: mean meta-loss {sum(losses[:5]) / 5:.2f} (first 5 steps) -> "
                         f"{sum(losses[-5:]) / 5:.2f} (last 5)")
    record = {"tag": settings.tag, "method": settings.method, "seed": settings.seed,
              "settings": settings.recorded_settings(), "meta_training": summary, "verdict": verdict,
              "per_domain": per_domain_descent(summary["history"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    print(verdict)
    for domain, means in record["per_domain"].items():
        print(f"  {domain:<12} meta-loss {means['first']:6.2f} (first 3 steps drawing it) -> {means['last']:6.2f} (last 3)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
