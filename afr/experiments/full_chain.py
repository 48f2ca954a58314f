"""``make full``: the users' one command on a GPU box — the notebooks 02 → 07 and the paper on their own data.

Inputs (all local, checked before any work): CASIA-WebFace as InsightFace ships it (``--data``:
train.rec/.idx/property), the folder of the five verification packs (``--bins``), a Hugging Face checkpoint folder
(``--weights``) and, for notebook 05, a folder of thermal face crops (``--thermal``, one sub-folder per identity).

The chain, each step a notebook run by papermill into ``--notebooks-out`` (default ``results/notebooks/``) with
the same settings a user would type, so every record, table row and figure lands where the embedded ones do:

1. the domain of every CASIA-WebFace image (``python -m afr label-domains``; written once to ``--domain-labels``,
   reused when present): DA-LoRA's experts;
2. notebook 02 per seed: zero-shot and LoRA + CosFace on the five packs;
3. notebook 03: LoRA, the parameter-matched LoRA and DA-LoRA (learned and uniform gating) on the labelled domains;
4. with ``--thermal``: notebook 04 (MAML, first-order MAML and pooled LoRA starts meta-trained over CASIA-WebFace's
   labelled domains, adapted to the thermal folder with k labelled images per identity) and notebook 05
   (CASIA-WebFace → thermal with k labelled images per identity, forgetting on the five packs);
5. notebook 06: the component table and the sensitivity sweeps (:func:`ablation_grid`) on the labelled domains;
6. notebook 07 (figures; where ``figures/`` holds figures already, into ``build/07_figures/``) and
   ``python -m afr.paper``: the paper's numbers from the records.

Defaults follow FRoundation's recipe where it states one (CosFace s = 64, m = 0.35; LoRA on the attention's q and v;
a 1,000-identity CASIA-WebFace subset; rank 16); the rest are this project's defaults, fixed in advance, not tuned.
``--gpus N`` (N > 1) runs the recipes that train data-parallel (their settings' ``DATA_PARALLEL``: 02 to 06) as
``torchrun --nproc_per_node N -m afr <command>`` with the same settings (``--batch`` is then the global batch), and
07 and the paper read every record.
``--smoke`` runs the whole chain in miniature on CPU: one seed, one epoch, the smallest budgets, 4 validation
identities; its numbers only show that the chain runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afr.paths import PROJECT_ROOT, MissingResourceError

__all__ = ["ChainSettings", "chain_steps", "main"]

#: notebook 03's rows on the full profile (oracle gating needs domains the benchmark packs do not carry)
FULL_DALORA_METHODS = ("lora", "lora-matched", "dalora-classifier", "dalora-uniform")


@dataclass
class ChainSettings:
    """Every setting of ``make full`` (the Makefile's variables of the same names, upper case)."""

    data: str
    bins: str
    weights: str
    thermal: str | None = None
    domain_labels: str = "data/processed/casia_domain_labels"
    backbone: str = "dinov2-vits14"
    identities: int | None = 1000
    val_identities: int = 100
    rank: int = 16
    batch: int = 128
    lr: float = 3e-4
    epochs: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    shots: tuple[int, ...] = (10, 50, 100)
    meta_steps: int = 200
    adapt_steps: int = 50
    adapt_batch: int = 128
    tasks: int = 2
    workers: int = 8
    device: str = "auto"
    gpus: int = 1
    notebooks_out: str = "results/notebooks"
    smoke: bool = False
    methods: tuple[str, ...] = field(default=FULL_DALORA_METHODS)

    def __post_init__(self) -> None:
        if self.smoke:  # the chain in miniature: every step runs, nothing here is a result
            self.seeds, self.epochs, self.identities, self.val_identities = (self.seeds[0],), 1, None, 4
            self.batch, self.shots, self.meta_steps, self.adapt_steps, self.adapt_batch = 16, (1,), 2, 2, 8
            self.tasks = 2
            self.workers, self.methods, self.gpus = 0, ("lora", "dalora-classifier"), 1

    def check_inputs(self) -> None:
        """One :class:`~afr.paths.MissingResourceError` naming every missing input, before any work."""
        data = Path(self.data)
        missing = [str(path) for path in (data / "train.rec", data / "train.idx", data / "property")
                   if not path.is_file()]
        missing += [f"{self.bins}/{name}.bin" for name in _benchmarks() if not (Path(self.bins) / f"{name}.bin").is_file()]
        missing += [path for path in (self.weights, self.thermal) if path and not Path(path).is_dir()]
        if missing:
            raise MissingResourceError("make full: not found: " + ", ".join(missing))
        if self.gpus > 1 and (self.tasks % self.gpus or self.batch % self.gpus):
            raise ValueError(f"make full: GPUS={self.gpus} splits each outer step's TASKS ({self.tasks}) and each "
                             f"batch (BATCH={self.batch}) over the GPUs: both must be multiples of {self.gpus}")

    def full_data(self) -> dict[str, Any]:
        """The data and model settings every full-profile notebook is given."""
        return {"data_profile": "full", "backbone": self.backbone, "weights": _absolute(self.weights),
                "train_rec": _absolute(self.data), "bins_dir": _absolute(self.bins),
                "num_identities": self.identities}


def _benchmarks() -> tuple[str, ...]:
    from afr.data.benchmarks import FULL_BENCHMARKS

    return tuple(FULL_BENCHMARKS)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


@dataclass
class Step:
    """One step of the chain: a command line (a notebook run by papermill, or an ``afr`` command)."""

    name: str
    command: list[str]
    skip_if: Path | None = None  # the step's output exists already (the domain labels): reused

    def describe(self) -> str:
        return f"== {self.name}"


def _papermill(notebook: str, out: Path, parameters: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "papermill", "--cwd", str(PROJECT_ROOT / "notebooks"), "--log-level", "WARNING",
            "-y", json.dumps(parameters), str(PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb"),
            str(out / f"{notebook}_full_{{backbone}}.ipynb")]


#: the command of each training notebook (``python -m afr <command>`` takes the same settings as options)
COMMANDS = {"02_baseline": "baseline", "03_dalora": "dalora", "04_maml": "maml", "05_crossdomain": "crossdomain",
            "06_ablations": "ablations"}


def data_parallel(notebook: str) -> bool:
    """Whether the notebook's recipe trains data-parallel under torchrun (its settings' ``DATA_PARALLEL``)."""
    import importlib

    from afr.cli import GRID_EXPERIMENTS

    command = COMMANDS[notebook]
    if command == "baseline":
        from afr.experiments.settings.baseline import BaselineSettings as settings_class
    else:
        settings_class = getattr(importlib.import_module(f"afr.experiments.settings.{command}"),
                                 GRID_EXPERIMENTS[command][1])
    return bool(settings_class.DATA_PARALLEL)


def command_options(parameters: dict[str, Any]) -> list[str]:
    """The command-line options of notebook parameters: ``--name value``, lists as several values, booleans as
    ``--name`` / ``--no-name``, None left out (the option's default)."""
    options: list[str] = []
    for name, value in parameters.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            options += [flag, *map(str, value)]
        elif value is not None:
            options += [flag, str(value)]
    return options


def _training_step(name: str, notebook: str, out: Path, parameters: dict[str, Any], settings: ChainSettings) -> Step:
    """A training notebook run by papermill; with ``gpus`` > 1 and a data-parallel recipe, its command under
    ``torchrun`` instead (one process per GPU; the same settings as options, the executed notebook not written)."""
    if settings.gpus > 1 and data_parallel(notebook):
        return Step(f"{name} (python -m afr {COMMANDS[notebook]} on {settings.gpus} GPUs)", [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(settings.gpus),
            "-m", "afr", COMMANDS[notebook], *command_options(parameters)])
    return Step(name, _papermill(notebook, out, parameters))


def chain_steps(settings: ChainSettings) -> list[Step]:
    """The chain's steps in order (see the module docstring)."""
    out = Path(settings.notebooks_out)
    common = {"progress": False, "device": settings.device}
    labels = Path(settings.domain_labels)
    steps = [Step("domain labels of CASIA-WebFace (python -m afr label-domains)",
                  [sys.executable, "-m", "afr", "label-domains", "--train-rec", settings.data, "--out", str(labels),
                   *(["--identities", str(settings.identities)] if settings.identities else []), "--no-progress"]
                  + (["--synthetic-low-quality", "0.3"] if settings.smoke else []), skip_if=labels / "domains.json")]
    training = {"rank": settings.rank, "batch_size": settings.batch, "lr": settings.lr, "epochs": settings.epochs,
                "val_identities": settings.val_identities, "num_workers": settings.workers}
    for seed in settings.seeds:
        step = _training_step(f"notebook 02, seed {seed}", "02_baseline", out, {
            **settings.full_data(), **training, **common, "seed": seed}, settings)
        step.command[-1] = step.command[-1].replace(".ipynb", f"_seed{seed}.ipynb")
        steps.append(step)
    steps.append(_training_step("notebook 03", "03_dalora", out, {
        **settings.full_data(), **training, **common, "seeds": list(settings.seeds),
        "methods": list(settings.methods), "domain_labels": _absolute(str(labels))}, settings))
    if settings.thermal:
        casia = {key: value for key, value in settings.full_data().items() if key != "bins_dir"}
        steps.append(_training_step("notebook 04", "04_maml", out, {
            **casia, **common, "target_dir": _absolute(settings.thermal), "rank": settings.rank,
            "domain_labels": _absolute(str(labels)), "seeds": list(settings.seeds), "shots": list(settings.shots),
            "meta_steps": settings.meta_steps, "tasks_per_step": settings.tasks,
            "steps": sorted({0, 1, 5, settings.adapt_steps})}, settings))
        steps.append(_training_step("notebook 05", "05_crossdomain", out, {
            **settings.full_data(), **common, "target_dir": _absolute(settings.thermal), "rank": settings.rank,
            "seeds": list(settings.seeds), "shots": list(settings.shots), "meta_steps": settings.meta_steps,
            "tasks_per_step": settings.tasks, "adapt_steps": settings.adapt_steps,
            "adapt_batch": settings.adapt_batch}, settings))
    steps.append(_training_step("notebook 06", "06_ablations", out, {
        **settings.full_data(), **training, **common, "domain_labels": _absolute(str(labels)),
        "seeds": list(settings.seeds), "meta_steps": settings.meta_steps, **ablation_grid(settings)}, settings))
    steps.append(Step("notebook 07", _papermill("07_figures", out, {"progress": False})))
    steps.append(Step("the paper's numbers (python -m afr.paper)", [sys.executable, "-m", "afr.paper"]))
    for step in steps:
        step.command = [part.replace("{backbone}", settings.backbone) for part in step.command]
    return steps


def ablation_grid(settings: ChainSettings) -> dict[str, Any]:
    """Notebook 06's grid on the full profile: every component row; K over the labelled domains (1, 2, 3: the
    embedded collections' 4 and 5 do not exist there); rank, λ1, λ2 and MAML inner steps around the chain's defaults
    (the chain's rank among the ranks, so the full model is a cell of the rank sweep). In miniature: two rows, K = 2."""
    if settings.smoke:
        return {"groups": ["component", "experts"], "components": ["lora", "dalora+maml"], "expert_counts": [2],
                "ranks": [settings.rank]}
    return {"components": ["lora", "lora+router", "dalora", "dalora+maml", "dalora+contrastive", "full"],
            "expert_counts": [1, 2, 3], "ranks": sorted({4, 8, settings.rank, 32}),
            "lambda_contrastive_values": [0.01, 0.05, 0.1, 0.5], "lambda_domain_values": [0.01, 0.05, 0.1, 0.5],
            "inner_steps_values": [1, 3, 5, 10]}


def run_chain(settings: ChainSettings, report=print) -> list[dict[str, Any]]:
    """Run every step (inputs checked first); stop at the first failing step with its command line."""
    settings.check_inputs()
    Path(settings.notebooks_out).mkdir(parents=True, exist_ok=True)
    done = []
    if not settings.thermal:
        report("make full: notebooks 04 and 05 skipped (set THERMAL=<folder of thermal face crops, one sub-folder per "
               "identity>)")
    for step in chain_steps(settings):
        if step.skip_if is not None and step.skip_if.exists():
            report(f"{step.describe()}: reusing {step.skip_if.parent}")
            continue
        report(step.describe())
        started = time.time()
        result = subprocess.run(step.command, cwd=PROJECT_ROOT)
        if result.returncode:
            raise RuntimeError(f"make full: step '{step.name}' failed (exit {result.returncode}): "
                               + " ".join(step.command))
        done.append({"step": step.name, "seconds": round(time.time() - started, 1)})
        report(f"   {step.name}: {done[-1]['seconds']:.0f} s")
    return done


def _parse(argv: Sequence[str] | None) -> ChainSettings:
    defaults = {name: value.default for name, value in ChainSettings.__dataclass_fields__.items()}
    parser = argparse.ArgumentParser(prog="python -m afr.experiments.full_chain", description=__doc__.splitlines()[0])
    for name in ("data", "bins", "weights"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--thermal", default=None)
    parser.add_argument("--domain-labels", default=defaults["domain_labels"])
    parser.add_argument("--backbone", default=defaults["backbone"], choices=("dinov2-vits14", "clip-vitb16"))
    parser.add_argument("--identities", default="1000", help="CASIA-WebFace identity subset; 'all' for every one")
    for name in ("val_identities", "rank", "batch", "epochs", "meta_steps", "adapt_steps", "adapt_batch", "workers",
                 "gpus", "tasks"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=defaults[name])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults["seeds"]))
    parser.add_argument("--shots", type=int, nargs="+", default=list(defaults["shots"]))
    parser.add_argument("--device", default=defaults["device"])
    parser.add_argument("--notebooks-out", default=defaults["notebooks_out"])
    parser.add_argument("--smoke", action="store_true", help="the chain in miniature on CPU (not a result)")
    args = vars(parser.parse_args(argv))
    identities = args.pop("identities")
    args.update(seeds=tuple(args["seeds"]), shots=tuple(args["shots"]),
                identities=None if identities in ("all", "", "null", "None") else int(identities))
    return ChainSettings(**args)


def main(argv: Sequence[str] | None = None) -> int:
    settings = _parse(argv)
    try:
        done = run_chain(settings)
    except (MissingResourceError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"settings": asdict(settings), "steps": done}, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
