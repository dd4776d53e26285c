"""The training step of self-distillation (the `sdft` method, laffi/methods/sdft.py): the student samples a completion
of its own prompt, the teacher (the model with the feedback in its prompt) and the student read it, and the loss is
the divergence of their next-token distributions at every completion token, as TRL's SDFTTrainer computes it.
`laffi.training.loop.train` runs it for examples that carry a teacher prompt."""

from __future__ import annotations

from typing import Any

from laffi import prompts
from laffi.config import TrainConfig
from laffi.errors import LaffiError
from laffi.training.examples import Example


def check_settings(cfg: TrainConfig) -> None:
    """The combinations of sdft settings TRL refuses too, as one line naming the setting."""
    if cfg.sdft_distillation_mode == "sampled_token" and cfg.sdft_distillation_alpha != 1.0:
        raise LaffiError("train.sdft_distillation_alpha: sdft_distillation_mode 'sampled_token' is the reverse KL "
                         f"only: set it to 1.0 (got {cfg.sdft_distillation_alpha})")  # fmt: skip
    if cfg.sdft_temperature <= 0:
        raise LaffiError(f"train.sdft_temperature: must be > 0, got {cfg.sdft_temperature}")
    if cfg.max_length <= cfg.sdft_max_completion_length:
        raise LaffiError(f"train.max_length ({cfg.max_length}) must exceed train.sdft_max_completion_length "
                         f"({cfg.sdft_max_completion_length}): the prompts are cut to the difference")  # fmt: skip


def prompt_ids(texts: list[str], tokenizer: Any, cfg: TrainConfig) -> list[list[int]]:
    """Prompts as the step runs them: tokenized as at answer time, cut from the left to `max_length` minus the
    completion length."""
    room = cfg.max_length - cfg.sdft_max_completion_length
    return [row[-room:] for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def divergence(student_logps: Any, teacher_logps: Any, alpha: float) -> Any:
    """Per-position divergence of two log-distributions over the last dimension: alpha 0 the forward KL
    KL(teacher || student), 1 the reverse KL(student || teacher), between them the generalised Jensen-Shannon
    divergence (1 - alpha) KL(student || M) + alpha KL(teacher || M), M = (1 - alpha) student + alpha teacher."""
    import torch
    import torch.nn.functional as F

    if alpha == 0.0:
        kl = F.kl_div(student_logps, teacher_logps, reduction="none", log_target=True)
    elif alpha == 1.0:
        kl = F.kl_div(teacher_logps, student_logps, reduction="none", log_target=True)
    else:
        a = torch.tensor(alpha, dtype=student_logps.dtype, device=student_logps.device)
        mixture = torch.logsumexp(torch.stack([student_logps + torch.log(1 - a), teacher_logps + torch.log(a)]), dim=0)
        kl_teacher = F.kl_div(mixture, teacher_logps, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture, student_logps, reduction="none", log_target=True)
        kl = torch.lerp(kl_student, kl_teacher, alpha)
    return kl.sum(-1)


def _with_tail(logps: Any) -> Any:
    """A top-k support plus one bucket holding the probability mass outside it."""
    import torch

    captured = torch.logsumexp(logps, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([logps, torch.log(-torch.expm1(captured))], dim=-1)


def token_losses(student_logits: Any, teacher_logits: Any, targets: Any, cfg: TrainConfig) -> Any:
    """The divergence at each completion position ([tokens, vocabulary] logits, already divided by the
    temperature), as `train.sdft_distillation_mode` defines it."""
    import torch

    mode, alpha = cfg.sdft_distillation_mode, cfg.sdft_distillation_alpha
    if mode == "full_logits":
        return divergence(torch.log_softmax(student_logits, -1), torch.log_softmax(teacher_logits, -1), alpha)
    if mode == "sampled_token":  # reverse KL on the sampled tokens only (a score-function estimate)
        s = torch.log_softmax(student_logits, -1).gather(-1, targets[:, None]).squeeze(-1)
        t = torch.log_softmax(teacher_logits, -1).gather(-1, targets[:, None]).squeeze(-1)
        return (s - t).detach() * s
    # topk_logits: the student's top k tokens are the support; the teacher's log-probabilities on the same tokens
    k = min(cfg.sdft_distillation_topk, student_logits.shape[-1])
    top, index = torch.topk(student_logits, k=k, dim=-1)
    s = top - torch.logsumexp(student_logits, -1, keepdim=True)
    t = torch.gather(teacher_logits, -1, index) - torch.logsumexp(teacher_logits, -1, keepdim=True)
    if cfg.sdft_distillation_add_tail:
        s, t = _with_tail(s), _with_tail(t)
    else:  # the distributions within the support
        s = s - torch.logsumexp(s, -1, keepdim=True)
        t = t - torch.logsumexp(t, -1, keepdim=True)
    return divergence(s, t, alpha)


class SelfDistillation:
    """The sdft step inside `laffi.training.loop.train`: for a micro-batch of examples, sample the student's
    completions, run student and teacher on them and return the summed per-example loss.

    Each example's loss is the mean over its completion's loss tokens (the first `sdft_num_loss_tokens_to_skip` left
    out); the loop divides the sum by the examples of the step, so a step's loss is their mean (TRL's reduction with
    `steps_per_generation` = gradient accumulation). Prompts are cut from the left to `max_length` minus the
    completion length."""

    def __init__(self, model: Any, tokenizer: Any, examples: list[Example], cfg: TrainConfig) -> None:
        import torch

        from laffi.engines.generation import stop_token_ids

        check_settings(cfg)
        self.model, self.cfg = model, cfg
        self.stops = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        self.student = prompt_ids([ex.prompt for ex in examples], tokenizer, cfg)
        self.teacher = prompt_ids([ex.teacher_prompt or "" for ex in examples], tokenizer, cfg)
        # What the loop's schedule orders by length: the student prompts (no completion is fixed in advance).
        self.rows = [{"input_ids": s, "completion_mask": [0] * len(s)} for s in self.student]
        self.adapter = [p for p in model.parameters() if p.requires_grad]
        # The EMA teacher's adapter weights, from zero (TRL's PEFTAdapterEMACallback); checkpointed with the run.
        self.shadow = [torch.zeros_like(p, dtype=torch.float32) for p in self.adapter] \
            if cfg.sdft_teacher_model_kind == "ema" else None  # fmt: skip

    # ---- one micro-batch

    def loss_sum(self, indices: list[int]) -> tuple[Any, int, int]:
        """(summed per-example loss with its graph, loss tokens, token positions run) of examples `indices`."""
        completions = self.sample([self.student[i] for i in indices])
        return self.batch_loss([self.student[i] for i in indices], [self.teacher[i] for i in indices], completions)

    def sample(self, prompts_ids: list[list[int]]) -> list[list[int]]:
        """One completion per prompt from the student as it is now (no dropout), up to and with its first end of
        turn (TRL's completion mask)."""
        import torch
        from transformers import GenerationConfig

        from laffi.models import model_device

        cfg, device = self.cfg, model_device(self.model)
        width = max(len(p) for p in prompts_ids)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts_ids], dtype=torch.long,
                           device=device)  # fmt: skip
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts_ids], dtype=torch.long,
                                 device=device)  # fmt: skip
        generation = GenerationConfig(max_new_tokens=cfg.sdft_max_completion_length, do_sample=True,
                                      temperature=cfg.sdft_temperature, top_p=1.0, top_k=0, eos_token_id=self.stops,
                                      pad_token_id=self.pad_id, disable_compile=True)  # fmt: skip
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=attention, generation_config=generation)
        finally:
            self.model.train()
        completions = []
        for row in out[:, width:].tolist():
            end = next((j for j, t in enumerate(row) if t in self.stops), len(row) - 1)
            completions.append(row[: end + 1])
        return completions

    def batch_loss(self, student: list[list[int]], teacher: list[list[int]],
                   completions: list[list[int]]) -> tuple[Any, int, int]:  # fmt: skip
        """The loss of given prompt and completion token ids (see `loss_sum`)."""
        import contextlib

        import torch

        from laffi.models import model_device

        cfg, device = self.cfg, model_device(self.model)
        student_logits = self.completion_logits([s + c for s, c in zip(student, completions, strict=True)],
                                                [len(s) for s in student], completions)  # fmt: skip
        teacher_context = self.model.disable_adapter() if cfg.sdft_teacher_model_kind == "base" else \
            contextlib.nullcontext()  # fmt: skip
        self.model.eval()
        try:
            with torch.no_grad(), teacher_context, self._ema_weights():
                teacher_logits = self.completion_logits([t + c for t, c in zip(teacher, completions, strict=True)],
                                                        [len(t) for t in teacher], completions)  # fmt: skip
        finally:
            self.model.train()
        targets = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=device)
        per_token = token_losses(student_logits, teacher_logits, targets, cfg)
        skip = cfg.sdft_num_loss_tokens_to_skip
        keep = torch.tensor([float(j >= skip) for c in completions for j in range(len(c))], device=device)
        owner = torch.tensor([i for i, c in enumerate(completions) for _ in c], dtype=torch.long, device=device)
        sums = torch.zeros(len(completions), dtype=per_token.dtype, device=device).index_add(0, owner, per_token * keep)
        counts = torch.tensor([max(0, len(c) - skip) for c in completions], dtype=per_token.dtype, device=device)
        loss = (sums / counts.clamp(min=1.0)).sum()
        positions = sum(len(s) + len(t) + 2 * len(c) for s, t, c in zip(student, teacher, completions, strict=True))
        return loss, int(counts.sum().item()), positions

    def completion_logits(self, rows: list[list[int]], starts: list[int], completions: list[list[int]]) -> Any:
        """[completion tokens, vocabulary] logits predicting each completion token (rows right-padded; the LM head
        only on those positions), divided by the sampling temperature."""
        import torch

        from laffi.models import model_device
        from laffi.training.loss import batch_tensors

        cfg = self.cfg
        # Under the loop's bf16 autocast (`loop._lora_in_base_dtype`) casts of the adapter's weights are cached for
        # the whole region (sampling, student, teacher): the EMA teacher, whose weights are swapped in place, would
        # read the student's casts, and the student's checkpointed layers would recompute casts their forward pass
        # took from the cache (backward then fails). Each pass casts afresh.
        torch.clear_autocast_cache()
        masks = [[0] * (s - 1) + [1] * len(c) + [0] for s, c in zip(starts, completions, strict=True)]
        ids, attention, predict = batch_tensors([{"input_ids": r, "completion_mask": m} for r, m in
                                                 zip(rows, masks, strict=True)], self.pad_id,
                                                model_device(self.model))  # fmt: skip
        causal_lm = self.model.get_base_model()
        body = getattr(causal_lm, causal_lm.base_model_prefix)
        hidden = body(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
        return causal_lm.get_output_embeddings()(hidden[predict]).float() / cfg.sdft_temperature

    # ---- the EMA teacher

    def _ema_weights(self) -> Any:
        """The adapter's weights swapped for the EMA teacher's while the teacher runs (a no-op for other kinds)."""
        import contextlib

        @contextlib.contextmanager
        def swapped() -> Any:
            saved = [p.detach().clone() for p in self.adapter]
            for p, s in zip(self.adapter, self.shadow, strict=True):
                p.data.copy_(s)
            try:
                yield
            finally:
                for p, s in zip(self.adapter, saved, strict=True):
                    p.data.copy_(s)

        return swapped() if self.shadow is not None else contextlib.nullcontext()

    def after_step(self, step: int) -> None:
        """After optimizer step `step` (from 1): the EMA teacher moves towards the adapter every
        `sdft_teacher_sync_steps` steps by `sdft_teacher_update_rate`."""
        import torch

        if self.shadow is None or step % self.cfg.sdft_teacher_sync_steps:
            return
        rate = self.cfg.sdft_teacher_update_rate
        with torch.no_grad():
            for s, p in zip(self.shadow, self.adapter, strict=True):
                s.copy_((1 - rate) * s + rate * p.detach().float())

    def state(self) -> dict[str, Any] | None:
        return {"shadow": self.shadow} if self.shadow is not None else None

    def load_state(self, state: dict[str, Any] | None) -> None:
        if self.shadow is None:
            return
        if not state or len(state.get("shadow", [])) != len(self.shadow):
            raise ValueError("no EMA teacher in the checkpoint")
        for s, saved in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(saved)

    def summary(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"teacher": cfg.sdft_teacher_model_kind, "distillation_mode": cfg.sdft_distillation_mode,
                "distillation_alpha": cfg.sdft_distillation_alpha, "examples": len(self.student),
                "teacher_prompt": cfg.sdft_teacher_prompt,
                "template_versions": {"student": prompts.QA_TEMPLATE_VERSION,
                                      "teacher": prompts.revise_version(cfg.sdft_teacher_prompt)}}  # fmt: skip


