"""LightningModule: the LoRA-wrapped target model, its causal-LM loss, and held-out evaluation."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

import egcfg_pl.lightning.checkpoint_types  # noqa: F401 (allow-lists our settings for resume)
from egcfg_pl.lightning import rng_state
from egcfg_pl.lightning.datamodule import RecordBatch
from egcfg_pl.lightning.held_out import HeldOutEvaluator
from egcfg_pl.lightning.run_folder import ADAPTER_DIR, PUBLIC_BASE_IDS, eval_json, print_summary
from egcfg_pl.metrics.independence import refuse_dependent_pass_k
from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, enable_gradient_checkpointing, load_model, load_tokenizer
from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.replay.buffer import ReplaySettings
from egcfg_pl.sampling.api import ApiSettings
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sampling.factory import build_sampler
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import SandboxConfig

log = logging.getLogger(__name__)
Mode = Literal["finetune", "btp_only"]


class BTPModule(L.LightningModule):
    def __init__(
        self,
        model: ModelSpec | None = None,
        lora: LoraSettings | None = LoraSettings(),  # noqa: B008 (a frozen-in-use default shown by --print_config)
        mode: Mode = "finetune",
        template: PromptTemplate | None = None,
        evaluation: GenerationSettings | None = None,
        sandbox: SandboxConfig | None = None,
        pass_k: list[int] | None = None,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        scheduler: Literal["constant", "linear", "cosine"] = "constant",
        gradient_checkpointing: bool = False,
        results_dir: str | None = None,
        api: ApiSettings | None = None,
        scoring: ReplaySettings | None = None,
    ) -> None:
        """
        Args:
            model: the target model (alias ``smollm2-135m``, a folder, a .gguf file or a hub id).
            lora: LoRA settings (r 16, alpha 32 by default); ``null`` trains nothing (evaluation / btp_only).
            mode: ``finetune`` trains the adapter on replay batches; ``btp_only`` samples, tests and fills the
                buffer each epoch without training.
            template: prompt template shared by sampling, training and evaluation.
            evaluation: how held-out problems are generated (greedy by default; sample n for pass@k > 1).
            sandbox: executor settings for held-out tests.
            pass_k: the k of pass@k (each k must be <= the candidates per problem).
            learning_rate: AdamW learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps.
            scheduler: learning-rate schedule after warm-up.
            gradient_checkpointing: trade compute for memory on long programs.
            results_dir: where evaluation JSON goes (default: the run folder, ``trainer.default_root_dir``).
            api: the ``openai`` / ``deepseek`` modes: an OpenAI-compatible API is the model — it writes the
                refresh candidates and the held-out answers, and no local model is loaded (needs
                ``mode: btp_only``). For ``hybrid`` (API source, local LoRA target) set the refresh
                callback's ``source_api`` instead.
            scoring: how held-out P2Value is scored (α and possibility form of these replay settings); the CLI
                links it from ``data.replay``, so held-out statistics follow the buffer's (not a separate
                ``replay`` key: Lightning merges module and datamodule hyper-parameters by name).
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = model or ModelSpec()
        if api is not None and mode != "btp_only":
            raise ValueError(
                "model.api makes an API the model (openai / deepseek modes) and needs model.mode: btp_only; "
                "to fine-tune a local target on API samples (hybrid), set refresh.source_api instead"
            )
        self.api = api
        self._api_sampler: Any = None
        self.lora = None if mode == "btp_only" else lora
        self.template = template or PromptTemplate()
        self.evaluation = evaluation or GenerationSettings(strategy="greedy", num_return_sequences=1, num_beams=1)
        self.sandbox = sandbox or SandboxConfig()
        self.pass_k = pass_k or [1]
        self.scoring = scoring or ReplaySettings()
        self._check_pass_k()
        # checkpoints hold only the trainable (LoRA) weights; on_load_checkpoint checks those keys exactly
        self.strict_loading = False
        self.model: Any = None
        self.tokenizer: Any = None
        self.evaluators: dict[str, HeldOutEvaluator] = {}
        self._fit_start_step = 0  # global_step when this fit's training started (after a resume)
        self._validated_step: int | None = None  # global_step of the last validation inside fit

    def _check_pass_k(self) -> None:
        if self.api is not None:
            per_problem, source, fix = self.api.n, f"model.api.n = {self.api.n}", "raise model.api.n"
        else:
            per_problem = self.evaluation.candidates_per_problem
            source = (
                f"model.evaluation: strategy {self.evaluation.strategy}, "
                f"num_return_sequences {self.evaluation.num_return_sequences}"
            )
            fix = "raise model.evaluation.num_return_sequences (with strategy sample or beam)"
        bad = [k for k in self.pass_k if k < 1]
        if bad:
            raise ValueError(f"model.pass_k must hold k >= 1, got {bad}")
        too_big = [k for k in self.pass_k if k > per_problem]
        if too_big:
            raise ValueError(
                f"model.pass_k {too_big} exceed the {per_problem} held-out candidates per problem ({source}); "
                f"{fix} or lower k in model.pass_k"
            )
        if self.api is None:
            refuse_dependent_pass_k(self.pass_k, self.evaluation.strategy, "model.pass_k", "model.evaluation.strategy")

    # -- model -----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is None and self.api is None:
            self._load_model()
        datamodule = getattr(self._trainer, "datamodule", None)  # hand it what training batches need, before
        if hasattr(datamodule, "connect"):  # configure_optimizers counts the steps (its train_dataloader)
            datamodule.connect(self.tokenizer, self.template, self.hparams.mode)

    def _load_model(self) -> None:
        self.tokenizer = load_tokenizer(self.spec)
        model = load_model(self.spec)
        if self.lora is None:  # evaluation / btp_only: nothing is trained
            model.requires_grad_(False)
        else:
            model = apply_lora(model, self.lora)
            if self.hparams.gradient_checkpointing:
                enable_gradient_checkpointing(model)
            model.train()  # LoRA dropout active in training steps; samplers restore this mode after generating
        self.model = model

    def sampler(self, settings: GenerationSettings, name: str = "") -> Sampler:
        """The model as a sampler: the current local weights (LoRA active), or the API of the openai /
        deepseek modes (whose own settings then decide n and decoding). Used by refresh and evaluation."""
        if self.api is None:
            return build_sampler(settings, self.template, model=self.model, tokenizer=self.tokenizer,
                                 name=name or self.spec.name)
        if self._api_sampler is None:
            self._api_sampler = build_sampler(settings, self.template, api=self.api)
        return self._api_sampler

    # -- training --------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if self.hparams.mode == "btp_only":
            return None
        start = time.perf_counter()
        out = self.model(**batch)  # HF shifts labels; IGNORE_INDEX masks prompt and padding
        tokens = int((batch["labels"] != -100).sum())
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/program_tokens", float(tokens), reduce_fx="sum", batch_size=1)
        self.log("train/forward_tokens_per_s", batch["attention_mask"].sum() / (time.perf_counter() - start))
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The learning rate of this step and the gradient's global 2-norm (before any clipping)."""
        grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.stack(grads).norm(), batch_size=1)
        if optimizer.param_groups:  # btp_only runs Lightning's empty stand-in optimizer
            self.log("train/lr", float(optimizer.param_groups[0]["lr"]), batch_size=1)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.hparams.mode == "btp_only" or not params:
            return None
        opt = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        warm = self.hparams.warmup_steps
        if step < warm:
            return (step + 1) / warm
        total = max(self.trainer.estimated_stepping_batches - warm, 1)
        progress = min((step - warm) / total, 1.0)
        schedule = self.hparams.scheduler
        return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[schedule]

    # -- checkpoints and adapter ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights: the frozen base model is reloaded from its source on resume. Add every
        rank's random states (a collective under DDP), so the resumed fit draws what the uninterrupted one did."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[rng_state.KEY] = rng_state.capture_all_ranks()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint must hold exactly this module's trainable (LoRA) weights.

        ``strict_loading`` is off because the frozen base model is not saved, so Lightning would silently
        skip an adapter that this configuration does not have (``lora: null``) or one with other
        ``target_modules``; compare the names here instead.
        """
        self.configure_model()  # no-op inside a Trainer; needed for load_from_checkpoint
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        saved = set(checkpoint.get("state_dict") or {})
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        if missing or unexpected:
            raise ValueError(
                "the checkpoint's weights do not match this model's trainable (LoRA) weights: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
                "Set model.lora (and model.mode) as in the run that wrote the checkpoint: lora: null loads no "
                "adapter and would evaluate the base model, and r / target_modules must be the same"
            )
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            if not rng_state.restore_rank(checkpoint.get(rng_state.KEY), trainer.global_rank, trainer.world_size):
                rank_zero_warn("the checkpoint holds no random states for this rank (an older checkpoint or another "
                               "world size): the resumed fit draws other LoRA-dropout masks than an uninterrupted one")

    def adapter_dir(self) -> Path:
        return self.output_dir() / ADAPTER_DIR

    def output_dir(self) -> Path:
        """The run folder (``trainer.default_root_dir``), or ``results_dir`` when set."""
        if self.hparams.results_dir:
            return Path(self.hparams.results_dir)
        trainer = self._trainer
        return Path(trainer.default_root_dir if trainer is not None else "checkpoints")

    def on_train_epoch_end(self) -> None:
        if self.lora is not None and self.trainer.is_global_zero:
            self.save_adapter(self.adapter_dir())

    def save_adapter(self, path: Path) -> None:
        """``save_pretrained``; for a local alias of a public model (the embedded GGUF) the adapter names the
        hub id as its base, so ``AutoPeftModelForCausalLM.from_pretrained(path)`` works with the hub."""
        public = PUBLIC_BASE_IDS.get(self.spec.name)
        config = getattr(self.model, "peft_config", {}).get("default")
        if public is None or config is None:
            self.model.save_pretrained(path)
            return
        local, config.base_model_name_or_path = config.base_model_name_or_path, public
        try:
            self.model.save_pretrained(path)
        finally:
            config.base_model_name_or_path = local

    def on_fit_end(self) -> None:
        print_summary(self.trainer, self)

    # -- held-out evaluation --------------------------------------------------------------------------
    def _evaluator(self, stage: str) -> HeldOutEvaluator:
        if stage not in self.evaluators:
            self.evaluators[stage] = HeldOutEvaluator(self.sandbox, self.pass_k, stage, replay=self.scoring)
        return self.evaluators[stage]

    def _eval_step(self, stage: str, batch: RecordBatch) -> None:
        self._evaluator(stage).step(self.sampler(self.evaluation), batch.items)

    def _eval_epoch_end(self, stage: str) -> None:
        evaluator = self._evaluator(stage)
        metrics = evaluator.compute()  # collective under DDP: every rank computes
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, rank_zero_only=True)
        if not self.trainer.sanity_checking:
            self._write_eval(stage, self.current_epoch, metrics)
        evaluator.reset()

    def _write_eval(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        """Collective under DDP: the evaluation JSON (rank 0 writes it), the result a caller reads."""
        evaluator = self._evaluator(stage)
        path = eval_json(self.output_dir(), stage, epoch)
        replay = evaluator.replay
        config = {
            "model": self.api.model if self.api else self.spec.name, "stage": stage, "epoch": epoch,
            "mode": self.hparams.mode, "p2value_alpha": replay.p2value_alpha, "possibility_form": replay.possibility_form,
        }
        evaluator.write_report(path, config)
        log.info("%s results: %s (%s)", stage, metrics, path)

    def validation_step(self, batch: RecordBatch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self._validated_step = self.global_step

    # -- the fine-tuned weights are always evaluated ---------------------------------------------------
    def on_train_start(self) -> None:
        self._fit_start_step, self._validated_step = self.global_step, None

    def on_train_end(self) -> None:
        """Validate the final weights when ``trainer.check_val_every_n_epoch`` (or ``val_check_interval``,
        ``max_steps``) left them unvalidated, e.g. max_epochs 2 with check_val_every_n_epoch 3."""
        trainer = self.trainer
        if self.hparams.mode != "finetune" or self.lora is None or not trainer.enable_validation:
            return  # btp_only / nothing trained, or validation disabled (limit_val_batches: 0)
        if self.global_step == self._fit_start_step or self._validated_step == self.global_step:
            return  # no step taken in this fit, or the final weights were validated already
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None  # its public hook
        problems = [p for batch in loader for p in batch.items] if loader is not None else []
        if not problems:
            rank_zero_warn(
                f"the fine-tuned weights were not validated (trainer.max_epochs {trainer.max_epochs}, "
                f"trainer.check_val_every_n_epoch {trainer.check_val_every_n_epoch}) and there is no datamodule "
                "with held-out problems to evaluate them; run `python cli.py test --config ... --ckpt_path last`"
            )
            return
        epoch = max(self.current_epoch - 1, 0)  # the last completed epoch (the counter has moved on)
        log.info(
            "validating the final weights of epoch %d (trainer.check_val_every_n_epoch %s skipped them)",
            epoch, trainer.check_val_every_n_epoch,
        )
        self._validate_final_weights(problems, loader.batch_size, epoch)

    def _validate_final_weights(self, problems: list[Any], batch_size: int, epoch: int) -> None:
        """A validation pass run directly (Lightning's loop cannot run from ``on_train_end``): this rank's
        shard of the held-out problems, ``trainer.limit_val_batches`` honoured, logged at the final step."""
        trainer = self.trainer
        shard = problems[trainer.global_rank :: trainer.world_size]
        batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
        limit = trainer.limit_val_batches
        if isinstance(limit, float) and limit < 1.0:
            batches = batches[: max(int(len(batches) * limit), 1)]
        elif isinstance(limit, int):
            batches = batches[:limit]
        evaluator = self._evaluator("val")
        evaluator.reset()
        with trainer.precision_plugin.val_step_context():
            for batch in batches:
                self._eval_step("val", RecordBatch(batch))
        metrics = evaluator.compute()  # collective under DDP
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=self.global_step)
        self._write_eval("val", epoch, metrics)
        self._validated_step = self.global_step
        evaluator.reset()

    def test_step(self, batch: RecordBatch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def teardown(self, stage: str) -> None:
        for evaluator in self.evaluators.values():
            evaluator.close()
        self.evaluators.clear()
