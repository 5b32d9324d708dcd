"""The trainer: one loop for every backbone, objective and method combination.

Run folders are numbered (``runs/003-name``) and hold the resolved config, checkpoints, TensorBoard
events, a JSON-lines log of every loss term, sample grids, the loss-curve plot and, after a resume,
``resumes.jsonl`` (see :mod:`ccua.runs`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ccua.build import (build_methods, build_model, build_objective, build_optimizer, check_config, check_model_fits,
                        stored_config)
from ccua.checkpoint import (RESUME_KEYS, CheckpointError, check_weights, checked_header, checkpoint_path,
                             list_checkpoints, load_checkpoint, preserved_rng, remove_stale_temporaries, rng_state,
                             save_checkpoint, set_rng_state)
from ccua.config import Config, ConfigError, save_config
from ccua.data import build_training_set, is_latent
from ccua.data.batches import ResumableBatchSampler, batch_generator_seed, seed_everything
from ccua.files import write_text_atomic
from ccua.generate import generate_uint8, grid_labels, vae_decoder
from ccua.methods.base import batch_problem
from ccua.models import BACKBONES
from ccua.images import save_grid
from ccua.progress import progress_bar
from ccua.runs import (LOSS_LOG, RunFolder, auto_resume, check_writable, checkpoint_folder, claim_run_dir,
                       record_resume, refuse_changes, resume_candidates, resume_changes, run_checkpoints, run_folder_of,
                       truncate_loss_log)
from ccua.distributed import (DistInfo, PeerLost, all_reduce_mean, barrier, cleanup, collective, gather_objects,
                              init_distributed, on_main)
from ccua.training.ema import EMA
from ccua.training.performance import configure_backends, maybe_compile, to_memory_format
from ccua.stopping import STOP_MARKER, StopSignals, TrainingInterrupted
from ccua.reporters import Reporters
from ccua.training.step import PassRunner, training_losses

log = logging.getLogger(__name__)


def ema_decay(decay: float, step: int, start: int = 0) -> float:
    """The EMA decay after optimiser step ``step``: 0 (a copy) until ``start``, then warmed up.

    min(decay, (1 + n) / (10 + n)) with n steps since ``start``: early on the average forgets the
    random initial weights quickly, so a short run's EMA is not dominated by them
    (0.999 ** 1000 would still leave 37% of the initialisation).
    """
    if step <= start:
        return 0.0
    n = step - start
    return min(decay, (1 + n) / (10 + n))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _keeps_training_rng(method):
    """Run ``method`` on a saved-and-restored random state: in-training sampling (grids, proxy FID)
    then neither moves the training's generators nor depends on how often it runs."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with preserved_rng():
            return method(*args, **kwargs)
    return wrapper


class _IntervalMeter:
    """Running sums of the loss terms over the steps since the last log line, and their speed."""

    def __init__(self) -> None:
        self._restart()

    def _restart(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, terms: dict[str, float]) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def take(self) -> tuple[dict[str, float], float, int]:
        """(the interval's mean terms, its seconds, its steps); starts the next interval."""
        elapsed, steps = time.perf_counter() - self.start, self.steps
        means = {key: value / steps for key, value in self.sums.items()}
        self._restart()
        return means, elapsed, steps


class Trainer:
    """Trains ``config`` in a new numbered run folder (or ``run_dir``), or resumes a checkpoint exactly.

    ``resume``: ``auto`` (the newest checkpoint of this run if it has one, else a fresh start; see
    :func:`ccua.runs.auto_resume`), ``latest``, a run folder or a checkpoint file.
    """

    def __init__(self, config: Config, resume: str | None = None, run_dir: str | Path | None = None,
                 device: str | None = None):
        # 1. everything that can be checked before any data is read: names, shapes, batch sizes
        self.config = config = check_config(config)
        self.dist: DistInfo = init_distributed(device, config.train.dist_timeout_minutes)
        self.device = self.dist.device
        self.local_batch, self.micro_batch = self._batch_sizes()
        self.methods = build_methods(config.method)
        self._check_methods()
        # 2. the checkpoint to resume, if any (read, not yet applied), and the run folder it belongs to
        self.resume_from: Path | None = None
        self.resume_changes: dict[str, list] = {}
        self.unreadable: list[Path] = []  # newer checkpoints of the run that could not be read
        resume_state, run_dir = self._resume_state(resume, run_dir)
        check_writable(checkpoint_folder(run_dir) if run_dir is not None else Path(config.train.out_dir))
        # 3. data, model and optimiser, with the same initial weights in every process
        seed_everything(config.train.seed)
        self._build_parts()
        # 4. the run folder, then the resumed state (or a released model's weights) on top
        self.run_dir = self._claim_run_dir(run_dir)
        self.checkpoint_dir = checkpoint_folder(self.run_dir)
        self._start_weights(resume_state)
        if resume_state is None:  # different noise, times and dropout in every process
            seed_everything(batch_generator_seed(config.train.seed, self.dist.rank))
        # 5. what the loop uses: the (DDP-wrapped, compiled) forward runner and the outputs made while training
        runner = PassRunner(self.model)
        self.runner = maybe_compile(DistributedDataParallel(runner) if self.dist.enabled else runner,
                                    config.train.compile)
        self.class_counts_tensor = torch.tensor(self.class_counts, dtype=torch.float32, device=self.device)
        self.reporters: Reporters | None = None  # TensorBoard, W&B (process 0, while training)
        self._proxy = None
        self._decode = None
        self._grid_noise_seed = config.train.seed + 12345
        self.signals: StopSignals | None = None  # while training: the stop signals received
        self.stop_agreed = False  # set by train_step: some process received a stop signal

    def _build_parts(self) -> None:
        """The training set, the model (checked to fit the device first), the objective, the EMA,
        the optimiser and its schedule; step 0."""
        config, train = self.config, self.config.train
        self.dataset = build_training_set(config.data)
        self.class_counts = self.dataset.class_counts()
        x_example, _ = self.dataset[0]
        self.data_shape = tuple(x_example.shape)
        configure_backends(train.tf32)
        channels, classes, side = self.data_shape[0], self.dataset.num_classes, self.data_shape[1]
        check_model_fits(config, channels, classes, side, self.micro_batch, self.device)
        self.model = to_memory_format(build_model(config.model, channels, classes, side).to(self.device),
                                      train.channels_last)
        self.objective = build_objective(config.diffusion)
        self.latent = is_latent(config.data)
        self.ema = EMA(self.model, train.ema_decay)
        self.optimizer = build_optimizer(self.model.parameters(), train.optimizer, train.lr, train.weight_decay,
                                         self.device)
        warmup = max(train.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.step = 0

    def _claim_run_dir(self, run_dir: Path | None) -> Path:
        """``run_dir``, or a new numbered folder claimed by process 0 and shared with the others."""
        if run_dir is None:
            run_dir = claim_run_dir(self.config.train.out_dir, self.config.name) if self.dist.is_main else None
            run_dir = gather_objects(run_dir, self.dist)[0]
        return Path(run_dir)

    # ------------------------------------------------------------------ set-up helpers
    def _batch_sizes(self) -> tuple[int, int]:
        """(images per process and step, images per micro-batch) of ``train.batch_size`` and
        ``train.accumulate`` over the processes; ConfigError when they do not divide."""
        train, processes = self.config.train, self.dist.world_size
        if train.batch_size % processes:
            raise ConfigError(f"train.batch_size={train.batch_size} is not divisible by {processes} processes")
        local = train.batch_size // processes
        if local % train.accumulate:
            raise ConfigError(f"train.accumulate={train.accumulate} does not divide the {local} images per process "
                              f"(train.batch_size={train.batch_size} over {processes} processes)")
        return local, local // train.accumulate

    def _start_weights(self, resume_state: dict | None) -> None:
        """The checkpoint's state on a resume; else what the backbone starts from (a released
        DiT/SiT's weights with its ``init_from``), else the model's own initialisation."""
        model = self.config.model
        if resume_state is not None:
            self._restore(self.resume_from, resume_state)
        elif BACKBONES[model.arch].load_initial_weights(self.model, model.chosen_settings()):
            self.ema = EMA(self.model, self.config.train.ema_decay)  # the average starts from the loaded weights

    def _check_methods(self) -> None:
        # Names and combinations were checked with the config; the batch needs the process count.
        problem = batch_problem(self.methods, self.micro_batch)
        if problem:
            raise ConfigError(f"{problem}: train.batch_size={self.config.train.batch_size} over "
                              f"{self.dist.world_size} processes in {self.config.train.accumulate} micro-batch(es)")

    def _resume_state(self, resume: str | None, run_dir: str | Path | None) -> tuple[dict | None, Path | None]:
        """The checkpoint contents to resume (None: a fresh start) and the run folder (None: a new one)."""
        if resume == "auto":  # decided once, by process 0: every process resumes the same checkpoint
            out_dir, name = self.config.train.out_dir, self.config.name
            resume, run_dir = on_main(lambda: auto_resume(out_dir, name, run_dir), self.dist)
        elif run_dir is not None and not resume and run_checkpoints(run_dir):
            raise ConfigError(f"run folder {run_dir} already has checkpoints: continue it with --resume auto, or "
                              "train into another folder")
        if not resume:
            return None, None if run_dir is None else Path(run_dir)
        self.resume_from, state = self._load_resume(resume)
        return state, run_folder_of(self.resume_from)

    def _load_resume(self, resume: str) -> tuple[Path, dict]:
        """The checkpoint ``--resume`` names and its contents.

        For ``latest`` or a run folder an unreadable newest checkpoint (truncated by a crash,
        overwritten by something else) gives way to the newest readable one, with a warning
        naming both; the unreadable files are set aside when training starts. A checkpoint named
        as a file must be readable.
        """
        candidates, may_fall_back = resume_candidates(resume, self.config.train.out_dir, self.config.name)
        problems = []
        for path in candidates:
            try:
                state = load_checkpoint(path, required=RESUME_KEYS)
            except CheckpointError as error:
                if not may_fall_back:
                    raise
                problems.append(str(error))
                self.unreadable.append(path)
                continue
            if problems and self.dist.is_main:
                log.warning("%s; resuming from the previous checkpoint %s instead", "; ".join(problems), path)
            return path, state
        raise CheckpointError(f"no readable checkpoint to resume: {'; '.join(problems)}")

    def _restore(self, path: Path, state: dict) -> None:
        allowed, refused = resume_changes(stored_config(state["config"]), self.config)
        refuse_changes(path, refused)
        step, saved_counts, _ = checked_header(state, path)
        if saved_counts != list(self.class_counts):
            raise ConfigError(f"checkpoint {path} was trained on per-class counts {saved_counts}, but the data now "
                              f"gives {list(self.class_counts)} (data.root={self.config.data.root!r})")
        self.resume_changes = allowed
        # the model's (this model) and the EMA's (the same shapes) weights checked entry by entry
        self.model.load_state_dict(check_weights(state["model"], self.model, path, "model"))
        self.ema.load_state_dict(check_weights(state["ema"], self.model, path, "ema"))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {str(error).splitlines()[0]}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = step
        states = state["rng"]
        if len(states) != self.dist.world_size:
            log.warning("checkpoint has RNG states of %d processes, this run has %d: noise will differ "
                        "from an uninterrupted run", len(states), self.dist.world_size)
            seed_everything(batch_generator_seed(self.config.train.seed + self.step, self.dist.rank))
        else:
            set_rng_state(states[self.dist.rank])
        if self.dist.is_main:
            log.info("resumed %s at step %d", path, self.step)

    def _loader(self) -> DataLoader:
        batches = ResumableBatchSampler(
            self.dataset.labels, self.dataset.num_classes, self.config.train.batch_size, seed=self.config.train.seed,
            rank=self.dist.rank, world_size=self.dist.world_size, start_step=self.step,
            balanced_rho=self.config.data.balanced_resampling)
        # A private generator: DataLoader would otherwise draw its worker seed from the global RNG,
        # which would make a resumed run diverge from an uninterrupted one.
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.config.data.num_workers,
                          generator=torch.Generator().manual_seed(self.config.train.seed),
                          persistent_workers=self.config.data.num_workers > 0)

    # ------------------------------------------------------------------ checkpoints and outputs
    def checkpoint_state(self) -> dict:
        rng_states = gather_objects(rng_state(), self.dist)
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "rng": rng_states, "config": self.config.to_dict(),
            "class_counts": list(self.class_counts), "data_shape": list(self.data_shape),
        }

    def save(self) -> Path | None:
        """Write the checkpoint of this step (every process takes part; process 0 writes it)."""
        state = self.checkpoint_state()  # a collective: every process takes part
        path = None
        if self.dist.is_main:
            path = save_checkpoint(state, self.checkpoint_dir, self.step, self.config.train.keep_checkpoints)
        barrier(self.dist)
        return path

    def _decoder(self):
        """Latent runs: the VAE decoder, loaded once; pixel runs: None."""
        if self.latent and self._decode is None:
            self._decode = vae_decoder(self.config.data.vae, self.device)
        return self._decode

    @_keeps_training_rng
    @torch.no_grad()
    def write_sample_grid(self) -> Path | None:
        """Per-class grid (rows head to tail) from fixed noise and labels, with the EMA weights.
        Every process draws its share; process 0 writes the grid (and returns its path)."""
        sample = self.config.sample
        labels = grid_labels(self.class_counts, sample.grid_per_class)
        images = generate_uint8(self.ema.shadow, self.objective, labels, self.data_shape, sample,
                                seed=self._grid_noise_seed, dist=self.dist, progress=False, decode=self._decoder())
        if images is None:
            return None
        rows = [images[i: i + sample.grid_per_class] for i in range(0, len(images), sample.grid_per_class)]
        scale = max(1, 64 // self.data_shape[1])
        path = save_grid(rows, self.run_dir / "samples" / f"grid_{self.step:07d}.png", scale=scale, pad=2 * scale)
        if self.reporters is not None:
            with Image.open(path) as grid:
                self.reporters.image("samples/grid", np.asarray(grid.convert("RGB")), self.step)
        return path

    @_keeps_training_rng
    @torch.no_grad()
    def log_proxy_fid(self) -> float | None:
        """FID of a few hundred EMA samples with the fast feature network (a trend, not a result).
        Every process draws its share of the samples; process 0 scores them."""
        train = self.config.train
        num_classes = len(self.class_counts)
        labels = torch.arange(train.proxy_samples) % num_classes
        sample = replace(self.config.sample, steps=train.proxy_sampler_steps)
        images = generate_uint8(self.ema.shadow, self.objective, labels, self.data_shape, sample,
                                seed=self._grid_noise_seed, dist=self.dist, progress=False, decode=self._decoder())
        if images is None:
            return None
        if self._proxy is None:
            from ccua.metrics import ProxyFID, Reference, build_feature_net
            from ccua.metrics.weights import DEFAULT_CACHE, feature_weights_path

            path = feature_weights_path(train.proxy_features, train.proxy_feature_path, self.config.data)
            net = build_feature_net(train.proxy_features, path=path, device=self.device, progress=False)
            self._proxy = ProxyFID(Reference.from_config(self.config.data, "train"), net, num_samples=2000,
                                   cache_dir=DEFAULT_CACHE / "features")
        value = self._proxy(images, labels.numpy())
        if self.reporters is not None:
            self.reporters.scalars({"eval/proxy_fid": value}, self.step)
        log.info("step %d: proxy FID %.3f (%d samples, %s features)", self.step, value, train.proxy_samples,
                 train.proxy_features)
        return value

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        """Train to ``train.steps``; returns the run folder.

        SIGTERM or SIGUSR1 ends the run early: every process finishes its step, one checkpoint is
        written, and :class:`TrainingInterrupted` (exit status 75) is raised; ``--resume auto``
        continues from that checkpoint exactly.
        """
        with self._hold_run_folder():
            return self._train()

    def _hold_run_folder(self):
        """Process 0 holds the run folder while training: a second training of the same run (say,
        ``--resume latest`` launched twice) stops with one line instead of writing beside this one."""
        if not self.dist.is_main:
            return contextlib.nullcontext()
        return RunFolder(self.run_dir).lock(f"a training of {self.config.name}")

    def _train(self) -> Path:
        train = self.config.train
        log_file = self._open_outputs()
        progress = progress_bar(total=train.steps, initial=self.step,
                                disable=not (train.progress and self.dist.is_main), desc=self.config.name,
                                dynamic_ncols=True)
        try:
            # a lost peer ends the launch: torchrun's SIGTERM to the survivors must not cut its report short
            with StopSignals(ending=(PeerLost,)) as self.signals, self._naming_a_lost_peer():
                self._loop(log_file, progress)
                if self.stop_agreed and self.step < train.steps:
                    self._stop()
                self.save()
                self.write_sample_grid()
            if self.dist.is_main:
                from ccua.training.curves import plot_loss_curves

                plot_loss_curves(self.run_dir / LOSS_LOG, self.run_dir / "loss_curves.png")
        finally:
            self.signals = None
            progress.close()
            if log_file:
                log_file.close()
            if self.reporters is not None:
                self.reporters.close()
        barrier(self.dist)  # not after an error: a lost peer would replace the error that says so
        return self.run_dir

    @contextlib.contextmanager
    def _naming_a_lost_peer(self):
        """A collective that fails because another process died (including DDP's gradient
        all-reduce inside backward) ends this one with one line: who was lost, how to go on."""
        try:
            with collective(self.dist, "training"):
                yield
        except PeerLost as error:
            kept = list_checkpoints(self.checkpoint_dir)
            newest = f"the newest checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
            raise PeerLost(f"{error} after step {self.step}; {newest}: relaunch the same command with --resume "
                           "auto") from None

    def _open_outputs(self):
        """The run folder, the reporters (TensorBoard, W&B) and the loss log (process 0; None elsewhere)."""
        if self.dist.is_main:
            self._prepare_run_folder()
            train = self.config.train
            self.reporters = Reporters(train.report_to, self.run_dir, self.config.to_dict(), self.step,
                                       train.wandb_project)
            log.info("run folder %s; %d training images, %d classes, per-class counts %s",
                     self.run_dir, len(self.dataset), self.dataset.num_classes, self.class_counts)
        barrier(self.dist)
        return open(self.run_dir / LOSS_LOG, "a") if self.dist.is_main else None

    def _loop(self, log_file, progress) -> None:
        """Steps until ``train.steps`` or until the processes agree to stop on a signal, with two
        periodic hooks: the loss log (every ``log_every`` steps) and the run's outputs (checkpoint,
        sample grid, proxy FID, each at its own interval)."""
        train = self.config.train
        data = iter(self._loader())
        meter = _IntervalMeter()
        while self.step < train.steps:
            x0, labels = next(data)
            meter.add(self.train_step(x0.to(self.device), labels.to(self.device)))
            progress.update(1)
            if self.step % train.log_every == 0 or self.step == train.steps:
                self._log_interval(*meter.take(), log_file, progress)
            if self.stop_agreed:
                break  # to the checkpoint at once: the time until the kill is short
            self._periodic_outputs()

    def _log_interval(self, means: dict[str, float], seconds: float, steps: int, log_file, progress) -> None:
        """The mean loss terms and speed of the steps since the last log line (process 0 writes)."""
        record = {**means, "step": self.step, "lr": self.scheduler.get_last_lr()[0], "steps_per_sec": steps / seconds,
                  "images_per_sec": steps * self.config.train.batch_size / seconds}
        if self.dist.is_main:
            self._log(record, log_file)
            # refresh=False: shown at the bar's next redraw, which keeps its interval in a log file
            progress.set_postfix(loss=f"{record['total']:.4f}", refresh=False)

    def _periodic_outputs(self) -> None:
        """A checkpoint, a sample grid and a proxy FID, each every N steps of its own setting (the
        last step's checkpoint and grid are written after the loop)."""
        train, step = self.config.train, self.step
        if train.ckpt_every and step % train.ckpt_every == 0 and step < train.steps:
            self.save()
        if train.sample_every and step % train.sample_every == 0 and step < train.steps:
            self.write_sample_grid()
            barrier(self.dist)
        if train.proxy_every and step % train.proxy_every == 0:
            self.log_proxy_fid()
            barrier(self.dist)

    def _stop(self) -> None:
        """After a stop signal: one checkpoint of this step, then exit 75."""
        path = self.save() or checkpoint_path(self.checkpoint_dir, self.step)  # process 0 knows the path
        received = self.signals.received if self.signals and self.signals.received else "a signal to another process"
        message = (f"stopped by {received} after step {self.step}: wrote checkpoint {path}; the same command with "
                   "--resume auto continues the run")
        if self.dist.is_main:
            log.warning(message)
            # torchrun reports a stopped worker as a failure (exit 1): this file tells a job script it was a stop
            write_text_atomic(self.run_dir / STOP_MARKER, json.dumps(
                {"step": self.step, "signal": received, "checkpoint": str(path)}) + "\n")
        raise TrainingInterrupted(message)

    def _prepare_run_folder(self) -> None:
        """The run folder before the first step: config.yaml of a new run (a resume never rewrites
        it), no partial files of an interrupted write, no log rows past the step it starts from,
        and a resume record."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / STOP_MARKER).unlink(missing_ok=True)  # this launch was not stopped (yet)
        remove_stale_temporaries(self.checkpoint_dir)
        if self.resume_from is None or not (self.run_dir / "config.yaml").exists():
            save_config(self.config, self.run_dir / "config.yaml")
        truncate_loss_log(self.run_dir / LOSS_LOG, self.step)
        if self.resume_from is None:
            return
        set_aside = []
        for path in self.unreadable:
            if path.parent == self.checkpoint_dir and path.exists():
                target = path.with_name(path.name + ".unreadable")
                path.rename(target)  # kept for inspection, no longer taken for a checkpoint
                set_aside.append(str(target))
        if set_aside:
            log.warning("set aside unreadable checkpoint(s): %s", ", ".join(set_aside))
        record_resume(self.run_dir, self.step, self.resume_from, self.resume_changes, set_aside)
        if self.resume_changes:
            log.info("resumed with changed settings: %s", ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in self.resume_changes.items()))

    def train_step(self, x0: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimiser step; returns the loss terms averaged over processes."""
        config, train = self.config, self.config.train
        self.model.train()
        if config.data.hflip and not self.latent:
            flip = torch.rand(x0.shape[0], device=x0.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        if train.channels_last and x0.dim() == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        terms = self._accumulated_gradients(x0, labels)
        # A stop signal rides along with the loss terms, so every process learns of it in the same step.
        stop = float(self.signals is not None and self.signals.received is not None)
        values = torch.stack([v.detach().float() for v in terms.values()]
                             + [torch.tensor(stop, device=self.device)])
        values = all_reduce_mean(values, self.dist)
        self.stop_agreed, values = bool(values[-1] > 0), values[:-1]
        if not torch.isfinite(values).all():
            kept = list_checkpoints(self.checkpoint_dir)
            where = f"; last good checkpoint: {kept[-1]}" if kept else "; no checkpoint was written yet"
            bad = [k for k, v in zip(terms, values.tolist()) if not math.isfinite(v)]
            raise TrainingDiverged(f"non-finite loss ({', '.join(bad)}) at step {self.step + 1}{where}")
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.ema.update(self.model, ema_decay(train.ema_decay, self.step, train.ema_start))
        return dict(zip(terms, values.tolist()))

    def _accumulated_gradients(self, x0: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backward through the batch in ``train.accumulate`` micro-batches (the gradients add up, each
        micro-batch's loss scaled by 1/k; DDP synchronises after the last); the loss terms averaged."""
        config, parts = self.config, self.config.train.accumulate
        totals: dict[str, torch.Tensor] = {}
        for index, (x_part, y_part) in enumerate(zip(x0.chunk(parts), labels.chunk(parts))):
            last = index == parts - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.runner, "no_sync") else self.runner.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.train.bf16):
                    terms = training_losses(self.runner, self.objective, self.methods, x_part, y_part,
                                            self.model.null_label, self.class_counts_tensor,
                                            config.diffusion.label_drop_prob, config.diffusion.label_drop_mode,
                                            config.method.batched_passes)
                (terms["total"] / parts).backward()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + value.detach() / parts
        return totals

    def _log(self, record: dict, log_file) -> None:
        step = record["step"]
        self.reporters.scalars({(f"loss/{key}" if key not in ("lr", "steps_per_sec", "images_per_sec")
                                 else f"train/{key}"): value for key, value in record.items() if key != "step"}, step)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()


def train(config: Config, resume: str | None = None, device: str | None = None,
          run_dir: str | Path | None = None) -> Path:
    """Train ``config`` (resuming if asked; see :class:`Trainer`) and return the run folder.
    Cleans up the process group."""
    trainer = None
    try:
        trainer = Trainer(config, resume=resume, run_dir=run_dir, device=device)
        run = trainer.train()
    except BaseException:
        cleanup(None)  # at once: a barrier could wait for processes that never come (see process_group)
        raise
    cleanup(trainer.dist)
    return run
