"""OT-Attention Lab: the one training entry point.

    python train.py task=cifar10 attention=esp                         # one process: CUDA, MPS or CPU
    python train.py task=modelnet40 attention=lotformer trainer.epochs=50 model.depth=4
    python train.py experiment=modelnet_set_transformer attention=sinkhorn
    python train.py --print-config task=cifar10 attention=luna        # show the resolved config, exit
    torchrun --standalone --nproc_per_node=2 train.py task=cifar10    # data parallel (gloo/NCCL); make train NPROC=2

Groups: task=, attention=, pooling=, model= (the backbone), experiment= (a paper preset); any other
key as section.key=value (see configs/train.yaml). Bad keys, names or types exit with code 2 and one
line naming the valid choices, before anything is written.

Each run is tracked in MLflow (experiment = task; run = <task>-<attention>[-<model>][-<pooling>]
[-<experiment>]-s<seed>, naming only the non-default choices; `make ui`) and checkpointed to
runs/<run>/<time>/{last,best}.pt. Ctrl-C or SIGTERM saves and exits; running the same command again
resumes (resume=auto), including the MLflow run. A NaN/inf loss or gradient norm stops the run before the
update; no checkpoint ever holds a non-finite number. The tracking store is checked to answer before any
data is loaded. The final test metrics come from the best validation checkpoint.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

from attention.distill import fit_to_softmax
from attention.multihead import check_head_split
from attention.pooling.base import POOLINGS
from attention.registry import ATTENTIONS
from backbones import BACKBONES
from backbones.pretrained import InitReport, load_initial_weights
from lab import config
from lab.checkpoint import (CHECKPOINT_KEYS, find_resumable, load_checkpoint, new_run_dir, nonfinite_tensors,
                            save_checkpoint)
from lab.config import ComponentGroup, Config
from lab.data import EpochBatchSampler, batches_per_epoch, make_loader, to_device
from lab.diagnostics import probe_model
from lab.download import DataError, require_folder
from lab.evaluate import evaluate_split, evaluate_test_split
from lab.hooks import AuxiliaryGradients, collect_auxiliary_losses, run_after_step_hooks
from lab.optim import build_optimizer, lr_at, set_lr
from lab.registry import ConfigError
from lab.runtime import (Distributed, StopSignal, autocast_context, process_rank, rng_state, seed_everything,
                         select_device, set_rng_state, step_seed)
from lab.tracking import Tracker, check_store, flatten, git_commit, resolve_tracking_uri
from tasks import TASKS, build_task

# The component table: each row is a config group chosen by name (`attention=esp`) from a registry, whose
# options are the keyword parameters of the registered constructor (`attention.eps=0.5`). The `task` row's
# YAML files also name the task's default choice for the other rows. A new kind of component = one row.
COMPONENTS = (
    ComponentGroup("task", TASKS, always_named=True),
    ComponentGroup("model", BACKBONES),  # the backbone
    ComponentGroup("attention", ATTENTIONS, always_named=True),
    ComponentGroup("pooling", POOLINGS, required=False),  # unset: the backbone's own default pooling
)


def load_config(args: list[str]) -> Config:
    """The validated config for command-line `args` (`python train.py ARGS`)."""
    cfg = config.load_config(args, COMPONENTS)
    # every backbone splits `dim` into `num_heads`; its attention layers check that only when built, after the
    # task has prepared its data (a download, or minutes of ListOps generation), so it is checked here first
    options = cfg.model.options
    if isinstance(options.get("dim"), int) and isinstance(options.get("num_heads"), int):
        check_head_split(options["dim"], options["num_heads"], options.get("head_dim"), where="model.")
    return cfg


# keys that may change between an interrupted run and its continuation (labels and logging, not the training)
RESUMABLE_CHANGES = {"resume", "device", "trainer.max_steps", "trainer.num_workers", "trainer.log_every",
                     "tracking.uri", "tracking.system_metrics", "tracking.log_checkpoint", "tracking.sweep",
                     "tracking.diagnostics_every", "run_name", "experiment"}


def fingerprint(cfg: Config) -> str:
    flat = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_task_and_model(cfg: Config, device: torch.device):
    """The task (data loaded) and its model on `device`, with the run's seeded initial weights."""
    task = build_task(cfg.task.name, data_root=Path(cfg.data.root), download=cfg.data.download, **cfg.task.options)
    task.setup()
    seed_everything(cfg.seed)  # identical initial weights on every rank
    return task, task.build_model(cfg.model, cfg.attention, cfg.pooling).to(device)


def pooling_in_use(model: torch.nn.Module) -> str:
    """The registered pooling(s) a model holds (`max_mean`, `pma`...): what `pooling` means when left unset."""
    classes = {POOLINGS.get(name): name for name in POOLINGS.names()}
    return "+".join(sorted({classes[type(m)] for m in model.modules() if type(m) in classes})) or "none"


def preflight(cfg: Config) -> None:
    """The run's surroundings, checked before any data is loaded and before anything is written: the folders
    it will write to can be folders, and the tracking store answers (rank 0 talks to it; at most seconds)."""
    require_folder(Path(cfg.data.root), "data.root")
    require_folder(Path(cfg.output_dir), "output_dir")
    if process_rank() == 0:
        check_store(resolve_tracking_uri(cfg.tracking.uri))


class Diverged(Exception):
    """A non-finite loss, gradient or weight: training stops, and no such state is ever saved."""


def describe_mismatch(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> str:
    """How a saved state dict differs from `model`'s, in a few words."""
    own = model.state_dict()
    missing = [key for key in own if key not in saved]
    unexpected = [key for key in saved if key not in own]
    reshaped = [key for key in own if key in saved and saved[key].shape != own[key].shape]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "differently shaped")) if keys]
    return ", ".join(parts) or "same tensors"


class Trainer:
    """Builds everything from a validated Config (errors here happen before MLflow is touched)."""

    def __init__(self, cfg: Config):
        self.cfg, tc = cfg, cfg.trainer
        self.device = select_device(cfg.device)
        self.dist = Distributed(self.device)
        self.task, self.model = build_task_and_model(cfg, self.device)
        self.optimizer = build_optimizer(self.model, tc)
        self.auxiliary_gradients = AuxiliaryGradients(self.model)
        self.splits = self.task.datasets()
        self.batches_per_epoch = batches_per_epoch(len(self.splits["train"]), tc.batch_size, self.dist.world_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / tc.accumulate)
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.planned_steps = min(self.total_steps, tc.max_steps) if tc.max_steps else self.total_steps
        self.fingerprint = fingerprint(cfg)
        self.step = self.epoch = self.batch_in_epoch = self.step_start = 0  # step_start: the step's first batch
        self.best_metric = -math.inf
        self.validations = 0
        self.train_seconds = 0.0  # training time over all sessions of this run (resumes included)
        self.session_start = time.perf_counter()
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self._maybe_resume()
        self.init_report: InitReport | None = None
        if cfg.init and self.run_dir is None:  # a resumed run continues from its own checkpoint instead
            self._load_init()
        elif tc.stage1_steps and self.run_dir is None:
            raise ConfigError("trainer.stage1_steps fits the tensors a new attention adds to trained weights: "
                              "it needs init=<checkpoint or torchvision:vit_b_16>")
        self.train_model = self.model

    # -- checkpoints ----------------------------------------------------------------------------
    def _maybe_resume(self) -> None:
        resume = self.cfg.resume
        if resume in (None, "", "none", "null"):
            return
        if resume == "auto":  # rank 0 picks, every rank loads the same file
            path = self.dist.broadcast(find_resumable(Path(self.cfg.output_dir), self.cfg.run_name, self.fingerprint,
                                                      self.planned_steps) if self.dist.is_main else None)
            if path is None:
                return
        else:
            path = Path(resume)
        state = load_checkpoint(path, CHECKPOINT_KEYS)
        if state["fingerprint"] != self.fingerprint:
            self._print(f"warning: {path} was written with a different config; resuming it anyway")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            written = state["config"]
            names = " ".join(f"{key}={written.get(key, {}).get('name')}" for key in ("task", "model", "attention"))
            mismatch = describe_mismatch(self.model, state["model"]) if isinstance(error, RuntimeError) else \
                "its optimizer state does not match these parameters"
            raise ConfigError(f"resume={path} does not fit this model ({mismatch}); it was written by {names} with "
                              "its own options: resume it with that config, or pass resume=null") from None
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_metric, self.run_id = state["best_metric"], state["mlflow_run_id"]
        self.validations, self.train_seconds = state.get("validations", 0), state.get("train_seconds", 0.0)
        self.run_dir = path.parent
        set_rng_state(state["rng"])
        self._print(f"resuming {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _save(self, name: str) -> None:
        """Rank 0 writes `<run dir>/<name>.pt`. A state holding a non-finite number is never written (Diverged
        instead); with several ranks, their models are first checked to be identical."""
        model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        broken = nonfinite_tensors({"model": model, "optimizer": optimizer["state"]})
        if broken:
            raise Diverged(f"non-finite values in {len(broken)} tensors after step {self.step} (e.g. {broken[0]})")
        self.state_digest = self.dist.check_identical(model)
        if self.dist.is_main:
            save_checkpoint({"model": model, "optimizer": optimizer, "step": self.step, "epoch": self.epoch,
                             "batch_in_epoch": self.batch_in_epoch, "best_metric": self.best_metric,
                             "rng": rng_state(), "config": self.cfg.to_dict(), "fingerprint": self.fingerprint,
                             "mlflow_run_id": self.run_id,
                             "validations": self.validations, "train_seconds": self.elapsed_seconds()},
                            self.run_dir / f"{name}.pt")

    def _stop_after_divergence(self, error: Diverged, tracker: Tracker) -> None:
        """Report the divergence and keep the last good state: the state before the failing step when it is
        finite (written as last.pt), else the last checkpoint written."""
        tracker.set_tags({"failure": str(error)})
        last = self.run_dir / "last.pt"
        self.batch_in_epoch = self.step_start  # the failing step's batches are not part of the kept state
        try:
            self._save("last")
            kept = f"the state before it (step {self.step}) is kept in {last}; continue from it with other " \
                   f"settings (e.g. a smaller trainer.lr) by adding resume={last}"
        except Diverged:
            kept = f"the last good checkpoint is {last}" if last.exists() else \
                "no checkpoint was written before it (validation writes them: see trainer.eval_every)"
        if self.dist.is_main:
            print(f"error: {error}; training stopped: {kept}", file=sys.stderr, flush=True)

    # -- evaluation -----------------------------------------------------------------------------
    def elapsed_seconds(self) -> float:
        return self.train_seconds + time.perf_counter() - self.session_start

    def _evaluation_options(self) -> dict:
        tc = self.cfg.trainer
        return {"batch_size": tc.batch_size, "num_workers": tc.num_workers, "device": self.device,
                "precision": tc.precision, "dist": self.dist}

    def evaluate(self, split: str):
        return evaluate_split(self.task, self.model, self.splits[split], split, **self._evaluation_options())

    def _validate(self, tracker: Tracker) -> None:
        evaluation = self.evaluate("val")
        self.validations += 1
        metrics = {f"val/{k}": v for k, v in evaluation.metrics.items()}
        if self.dist.is_main:  # attention diagnostics on the first validation examples
            probe = probe_model(self.task, self.model, self.splits["val"], self.device)
            metrics.update(probe.metrics())
            every = self.cfg.tracking.diagnostics_every
            if every and self.validations % every == 0:
                for name, draw in probe.figures().items():
                    tracker.log_figure(draw(), f"diagnostics/{name}_step{self.step:07d}.png")
        tracker.log_metrics(metrics, self.step)
        score = evaluation.metrics[self.task.monitor]
        summary = " ".join(f"{k} {v:.4f}" for k, v in evaluation.metrics.items())
        epoch = self.epoch + self.batch_in_epoch / self.batches_per_epoch
        self._print(f"step {self.step} (epoch {epoch:.2f}) val: {summary}")
        if score > self.best_metric:
            self.best_metric = score
            self._save("best")
        self._save("last")

    # -- training -------------------------------------------------------------------------------
    def _print(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def _optimizer_step(self) -> dict[str, float]:
        tc = self.cfg.trainer
        lr = lr_at(self.step, self.total_steps, tc)
        set_lr(self.optimizer, lr)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in parameters]))  # identical on every rank
        if not math.isfinite(norm):
            raise Diverged(f"non-finite gradient norm ({norm}) at step {self.step + 1}")
        if tc.grad_clip > 0:  # the task loss's gradients only: auxiliary ones are added after clipping
            torch.nn.utils.clip_grads_with_norm_(parameters, tc.grad_clip, torch.tensor(norm))
        stats = {"train/lr": lr, "train/grad_norm": norm}
        auxiliary_norm = self.auxiliary_gradients.add_to_gradients()
        if auxiliary_norm is not None:
            if not math.isfinite(auxiliary_norm):
                raise Diverged(f"non-finite auxiliary gradient norm ({auxiliary_norm}) at step {self.step + 1}")
            stats["train/aux_grad_norm"] = auxiliary_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats.update(run_after_step_hooks(self.model))
        self.step += 1
        return stats

    def _train(self, tracker: Tracker, stop: StopSignal) -> str:
        """Train until the planned step count; returns "done" or "stopped"; raises Diverged."""
        cfg, tc = self.cfg, self.cfg.trainer
        train_set = self.splits["train"]
        window = {"loss": 0.0, "count": 0, "samples": 0, "start": time.perf_counter()}
        self.train_model.train()
        self.step_start = self.batch_in_epoch  # the batch the current optimizer step began with
        stopping = False
        while self.epoch < tc.epochs and self.step < self.planned_steps:
            sampler = EpochBatchSampler(len(train_set), tc.batch_size, shuffle=True, seed=cfg.seed, epoch=self.epoch,
                                        start=self.batch_in_epoch, rank=self.dist.rank,
                                        world_size=self.dist.world_size)
            if hasattr(train_set, "set_epoch"):  # per-example augmentation in the loader (tasks/image_files.py)
                train_set.set_epoch(self.epoch, cfg.seed)
            loader = make_loader(train_set, sampler, self.task.collate, tc.num_workers, self.device)
            progress = self._progress_bar()
            for batch in loader:
                generator = torch.Generator().manual_seed(step_seed(cfg.seed, self.epoch, self.batch_in_epoch))
                batch = to_device(batch, self.device)
                with autocast_context(self.device, tc.precision):
                    loss = self.task.training_loss(self.train_model, batch, generator)
                    auxiliary = collect_auxiliary_losses(self.model)
                total = loss + sum(auxiliary.values()) if auxiliary else loss
                if self.dist.any(not bool(torch.isfinite(total))):
                    raise Diverged(f"non-finite loss ({float(total.detach())}) at step {self.step + 1}")
                self.auxiliary_gradients.backward(loss, auxiliary, 1 / tc.accumulate)
                self.batch_in_epoch += 1
                window["loss"] += float(loss.detach())
                window["count"] += 1
                window["samples"] += len(batch["labels"]) if "labels" in batch else tc.batch_size
                if progress is not None:
                    progress.update(1)
                if self.batch_in_epoch % tc.accumulate and self.batch_in_epoch < self.batches_per_epoch:
                    continue
                stats = self._optimizer_step()
                self.step_start = self.batch_in_epoch
                if self.step % tc.log_every == 0 or self.step == self.planned_steps:
                    self._log_train(tracker, window, stats, auxiliary, progress)
                if tc.eval_every and self.step % tc.eval_every == 0:
                    self._validate(tracker)
                stopping = self.dist.any(stop.received is not None)  # every rank stops after the same step
                if self.step >= self.planned_steps or stopping:
                    break
            if progress is not None:
                progress.close()
            if self.batch_in_epoch >= self.batches_per_epoch:
                self.epoch += 1
                self.batch_in_epoch = self.step_start = 0
                if not tc.eval_every:
                    self._validate(tracker)
            if stopping:
                self._save("last")
                return "stopped"
        if tc.eval_every and self.step % tc.eval_every:  # the final steps since the last validation count too
            self._validate(tracker)
        self._save("last")
        return "done"

    def _progress_bar(self):
        if not (self.dist.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.batches_per_epoch, initial=self.batch_in_epoch, leave=False, dynamic_ncols=True,
                    desc=f"epoch {self.epoch + 1}/{self.cfg.trainer.epochs}")

    def _log_train(self, tracker, window, stats, auxiliary, progress) -> None:
        elapsed = time.perf_counter() - window["start"]
        loss, count, samples = self.dist.sum([window["loss"], window["count"], window["samples"]])  # all ranks
        metrics = {"train/loss": loss / max(1, count), "train/samples_per_s": samples / max(elapsed, 1e-9),
                   "train/epoch": self.epoch + self.batch_in_epoch / self.batches_per_epoch,
                   "train/wall_seconds": self.elapsed_seconds(), **stats,
                   **{f"aux/{k}": float(v.detach()) for k, v in auxiliary.items()}}
        tracker.log_metrics(metrics, self.step)
        line = (f"loss {metrics['train/loss']:.4f} lr {stats['train/lr']:.2e} "
                f"{metrics['train/samples_per_s']:.0f} samples/s")
        if progress is not None:
            progress.set_postfix_str(line)
        else:
            self._print(f"step {self.step}/{self.planned_steps} (epoch {self.epoch + 1}) {line}")
        window.update(loss=0.0, count=0, samples=0, start=time.perf_counter())

    def _test(self, tracker: Tracker) -> dict[str, float]:
        best = self.run_dir / "best.pt"
        self.dist.barrier()  # rank 0 has finished writing best.pt
        if best.exists():
            self.model.load_state_dict(load_checkpoint(best)["model"])
        results = evaluate_test_split(self.task, self.model, self.splits["test"], **self._evaluation_options())
        tracker.log_metrics(results.metrics, self.step)
        for path, text in results.texts.items():
            tracker.log_text(text, path)
        if results.tags:
            tracker.set_tags(results.tags)
        for path, draw in results.figures.items():
            tracker.log_figure(draw(), path)
        return results.metrics

    def run(self) -> int:
        cfg = self.cfg
        fresh = self.run_dir is None
        tracker = Tracker(cfg, self.run_id, enabled=self.dist.is_main)  # the store answered preflight's check
        self.run_id = self.dist.broadcast(tracker.run_id)
        stop = StopSignal()
        try:
            if fresh and self.dist.is_main:
                self.run_dir = new_run_dir(Path(cfg.output_dir), cfg.run_name)
                (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
            self.run_dir = self.dist.broadcast(self.run_dir)
            self._log_run_info(tracker, fresh or tracker.continued_from is not None)
            try:
                if fresh and self.init_report is not None:
                    if cfg.trainer.stage1_steps:
                        self._fit_new_attention(tracker)
                    self._validate(tracker)  # the initial weights' score, at step 0
                if self.dist.world_size > 1:  # wrapped after stage 1: DDP starts every rank from rank 0's weights
                    self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)
                outcome = self._train(tracker, stop)
            except Diverged as error:
                self._stop_after_divergence(error, tracker)
                outcome = "diverged"
            if outcome == "stopped":
                tracker.end("KILLED")
                self._print(f"stopped at step {self.step}; run the same command again to resume")
                return 128 + (stop.received or signal.SIGTERM)
            if outcome == "diverged":
                tracker.end("FAILED")
                return 1
            metrics = self._test(tracker)
            if cfg.tracking.log_checkpoint and (self.run_dir / "best.pt").exists():
                tracker.log_artifact(self.run_dir / "best.pt", "checkpoints")
        except BaseException:
            tracker.end("FAILED")
            raise
        finally:
            stop.restore()
            self.dist.close()
        tracker.end("FINISHED")
        if self.dist.world_size > 1:
            self._print(f"the model is identical on all {self.dist.world_size} ranks (sha256 {self.state_digest[:16]})")
        self._print("test: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        self._print(tracker.ui_hint())
        return 0

    def _log_run_info(self, tracker: Tracker, new_run: bool) -> None:
        cfg = self.cfg
        num_params = sum(p.numel() for p in self.model.parameters())
        tracker.log_params({**flatten(cfg.to_dict()), "model.num_parameters": num_params, **self.task.describe()})
        # identity tags, always set: reports group runs by these, never by parsing run names
        tracker.set_tags({"task": cfg.task.name, "attention": cfg.attention.name, "seed": cfg.seed,
                          "pooling": cfg.pooling.name or pooling_in_use(self.model), "model": cfg.model.name,
                          "experiment": cfg.experiment or "none", "sweep": cfg.tracking.sweep or "none",
                          "fingerprint": self.fingerprint, "git_commit": git_commit(), "device": str(self.device),
                          "run_dir": str(self.run_dir.resolve()), "world_size": self.dist.world_size})
        if self.init_report is not None:
            tracker.set_tags(self.init_report.tags())
        if new_run:
            tracker.log_text(cfg.to_yaml(), "config.yaml")
        self._print(f"{cfg.run_name}: {num_params / 1e6:.2f}M parameters on {self.device}, "
                    f"{self.planned_steps} optimizer steps ({self.steps_per_epoch}/epoch), checkpoints in {self.run_dir}")

    # -- post-hoc conversion: init= and LOTFormer's stage 1 -----------------------------------------
    def _load_init(self) -> None:
        """Load `init` into the model (backbones/pretrained.py); every refusal happens here, before MLflow."""
        self.init_report = load_initial_weights(self.model, self.cfg.init)
        check = getattr(self.task, "check_preprocessing", None)
        if self.init_report.preprocessing and check is not None:
            check(self.init_report.preprocessing, self.init_report.source)
        if self.cfg.trainer.stage1_steps and not self._new_parameters():
            raise ConfigError(f"trainer.stage1_steps: attention '{self.cfg.attention.name}' adds no trainable "
                              f"tensors to {self.cfg.init}; nothing to fit")
        self._print(self.init_report.summary())

    def _new_parameters(self) -> list[torch.nn.Parameter]:
        new = set(self.init_report.new)
        return [p for name, p in self.model.named_parameters() if name in new]

    def _fit_new_attention(self, tracker: Tracker) -> None:
        """Stage 1 (attention/distill.py): only the new attention tensors learn, to reproduce softmax."""
        cfg, tc = self.cfg, self.cfg.trainer
        train_set = self.splits["train"]

        def batches():  # epochs -1, -2, ...: orders and crops of their own, apart from stage 2's
            for epoch in itertools.count(-1, -1):
                if hasattr(train_set, "set_epoch"):
                    train_set.set_epoch(epoch, cfg.seed)
                sampler = EpochBatchSampler(len(train_set), tc.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                            rank=self.dist.rank, world_size=self.dist.world_size)
                yield from make_loader(train_set, sampler, self.task.collate, tc.num_workers, self.device)

        stream = batches()

        def forward(step: int) -> None:
            generator = torch.Generator().manual_seed(step_seed(cfg.seed, -1, step))
            with autocast_context(self.device, tc.precision):
                self.task.training_loss(self.model, to_device(next(stream), self.device), generator)

        def report(step: int, loss: float) -> None:
            tracker.log_metrics({"stage1/loss": loss}, step)
            if step % tc.log_every == 0 or step == tc.stage1_steps:
                self._print(f"stage 1 step {step}/{tc.stage1_steps}: {tc.stage1_target} loss {loss:.4f}")

        self.model.train()
        try:
            fit_to_softmax(self.model, self._new_parameters(), steps=tc.stage1_steps, lr=tc.stage1_lr,
                           target=tc.stage1_target, forward=forward, report=report)
        finally:
            stream.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    print_config = "--print-config" in argv
    args = [a for a in argv if a != "--print-config"]
    try:
        cfg = load_config(args)
        if print_config:
            print(cfg.to_yaml(), end="")
            return 0
        preflight(cfg)
        trainer = Trainer(cfg)
    except (ConfigError, DataError) as error:  # the user's input; anything else is a bug: its traceback shows
        print(f"error: {error}", file=sys.stderr)
        return 2
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
