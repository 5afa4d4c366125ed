"""The two model kinds MPDistil trains, behind one interface: causal LMs and encoder classifiers.

A *view* turns records into training examples and batches, runs a model, and reads what every
stage needs from the output:

==================  ==========================================  =======================================
                    causal LM (:class:`CausalView`)             encoder classifier (:class:`EncoderView`)
==================  ==========================================  =======================================
example             prompt + response (stages 1-2); prompt +    the prompt's tokens, the gold label id
                    class tokens (``mpdistil.target``: the
                    gold answer or the whole response)
logits              ``[B, T-1, V]`` next-token logits           ``[B, L]`` over the union of labels
pooled state ``h``  final hidden states ``[B, T-1, D]``         the pooler output ``[B, D]``
head ``T'(h)``      ``lm_head(h)``                              ``classifier(h)``
``log p(y|x)``      sum of the class tokens' log-probabilities  log-softmax of the gold label over the
                                                                task's labels
CE (stages 1-2)     token mean over the response                example mean
soft MSE            per token over the vocabulary               per example over the task's labels
hidden-state MSE    response positions                          the ``[CLS]`` position
==================  ==========================================  =======================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kdlens.losses import mse_soft, pkd_loss
from kdlens.losses._common import compute_dtype
from kdlens.teacher import response_mask

__all__ = ["ViewOutput", "CausalView", "EncoderView"]


@dataclass
class ViewOutput:
    """What one forward pass gives the stages.

    Attributes
    ----------
    logits : Tensor
        ``[B, T - 1, V]`` (causal) or ``[B, L]`` (encoder), unmasked.
    pooled : Tensor
        The states the head reads: ``[B, T - 1, D]`` (causal) or ``[B, D]`` (encoder).
    hidden_states : tuple of Tensor or None
        Embeddings then every layer's output (when asked for).
    """

    logits: torch.Tensor
    pooled: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class CausalView:
    """Causal LMs: the class of a record is its gold answer (or response) as tokens after the prompt.

    Parameters
    ----------
    tokenizer
    max_length : int
    system : str or None
        System prompt of the chat template.
    target : {"answer", "response"}
        The class tokens of stages 3-4 (see :class:`kdlens.config.MPDistilConfig`).
    vocab_size : int
        Common logit width of teacher and student.
    """

    kind = "causal"

    def __init__(self, tokenizer: Any, *, max_length: int, system: str | None, target: str, vocab_size: int) -> None:
        self.tokenizer, self.max_length, self.system = tokenizer, max_length, system
        self.target, self.vocab_size = target, vocab_size

    def encode(self, record: Any, task: int, *, purpose: str) -> dict[str, Any] | None:
        """One example (``purpose="train"``: the full response; ``"class"``: the class tokens), or
        None when truncation leaves no target token."""
        from kdlens.data import encode_for_training

        if purpose == "class" and self.target == "answer":
            record = dataclasses.replace(record, rationale=None)  # the response is then the answer alone
        feature = encode_for_training(self.tokenizer, record, max_length=self.max_length, system=self.system)
        if not any(label != -100 for label in feature["labels"][1:]):
            return None
        return {**feature, "task": task}

    def collate(self, features: Sequence[Mapping[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
        from kdlens.data import collate

        batch = collate([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features],
                        pad_token_id=self.tokenizer.pad_token_id, padding_side="right")
        batch["task"] = torch.tensor([f["task"] for f in features], dtype=torch.long)
        return _to(batch, device)

    def forward(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, hidden: bool = False) -> ViewOutput:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        # hidden_states[-1] is the final (normed) state that lm_head reads
        return ViewOutput(out.logits[:, :-1, : self.vocab_size], out.hidden_states[-1][:, :-1],
                          out.hidden_states if hidden else None)

    @staticmethod
    def head(model: torch.nn.Module) -> torch.nn.Module:
        return model.get_output_embeddings()

    def head_logits(self, model: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(model)(pooled)[..., : self.vocab_size]

    def _token_ce(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = response_mask(batch["labels"])
        target = batch["labels"][:, 1:].clamp_min(0)
        ce = F.cross_entropy(logits.to(compute_dtype(logits.dtype)).transpose(1, 2), target, reduction="none")
        return ce * mask, mask

    def class_logp(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``log p(class tokens | prompt)`` per example, ``[B]``."""
        ce, _ = self._token_ce(logits, batch)
        return -ce.sum(-1)

    def ce(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ce, mask = self._token_ce(logits, batch)
        return ce.sum() / mask.sum().clamp_min(1)

    def soft(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, torch.Tensor], *,
             tau: float) -> torch.Tensor:
        return mse_soft(student, teacher, mask=response_mask(batch["labels"]), temperature=tau,
                        scale_by_temperature_squared=True)

    def features(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                 batch: Mapping[str, torch.Tensor], *, layer_map: Any) -> torch.Tensor:
        mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
        mask[:, :-1] = response_mask(batch["labels"])  # the positions whose next token is a target
        return pkd_loss(student, teacher, layer_map=layer_map, mask=mask)


class EncoderView:
    """Encoder classifiers: the prompt is classified into its task's labels.

    Parameters
    ----------
    tokenizer
    label_ids : mapping of task name -> list of int
        Each task's label ids in the shared head (``config.kdlens_label_sets``).
    label_names : list of str
        ``"task:label"`` per label id (``config.id2label``).
    tasks : list of str
        Task names; an example's ``task`` is an index into it.
    max_length : int
    """

    kind = "encoder"

    def __init__(self, tokenizer: Any, *, label_ids: Mapping[str, Sequence[int]], label_names: Sequence[str],
                 tasks: Sequence[str], max_length: int) -> None:
        from kdlens.models._encoder import task_label_mask

        self.tokenizer, self.max_length, self.tasks = tokenizer, max_length, list(tasks)
        self.label_ids = {t: list(ids) for t, ids in label_ids.items()}
        self.label_names = list(label_names)
        self.allowed = task_label_mask(self.label_ids, self.tasks, len(self.label_names))  # [n_tasks, L]

    def encode(self, record: Any, task: int, *, purpose: str) -> dict[str, Any]:
        name = f"{record.task}:{record.answer.strip()}"
        if name not in self.label_names:
            raise ValueError(f"record {record.id!r} of task {record.task!r} has answer {record.answer!r}, which is not "
                             f"among the task's labels {self.label_names}")
        encoded = self.tokenizer(record.prompt, truncation=True, max_length=self.max_length)
        return {**{k: list(v) for k, v in encoded.items()}, "label": self.label_names.index(name), "task": task}

    def collate(self, features: Sequence[Mapping[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
        keys = [k for k in features[0] if k not in ("label", "task")]
        batch = dict(self.tokenizer.pad([{k: f[k] for k in keys} for f in features], return_tensors="pt"))
        batch["label"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        batch["task"] = torch.tensor([f["task"] for f in features], dtype=torch.long)
        return _to(batch, device)

    def forward(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, hidden: bool = False) -> ViewOutput:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        out = model.base_model(**inputs, output_hidden_states=hidden)
        pooled = out.pooler_output
        # BertForSequenceClassification.forward: classifier(dropout(pooled_output))
        logits = model.classifier(model.dropout(pooled))
        return ViewOutput(logits, pooled, out.hidden_states if hidden else None)

    @staticmethod
    def head(model: torch.nn.Module) -> torch.nn.Module:
        return model.classifier

    def head_logits(self, model: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        return model.classifier(pooled)

    def _masked(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        allowed = self.allowed.to(logits.device)[batch["task"]]
        return logits.to(compute_dtype(logits.dtype)).masked_fill(~allowed, float("-inf"))

    def class_logp(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``log p(gold label | prompt)`` over the task's labels, ``[B]``."""
        logp = torch.log_softmax(self._masked(logits, batch), dim=-1)
        return logp.gather(1, batch["label"].unsqueeze(1)).squeeze(1)

    def ce(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return -self.class_logp(logits, batch).mean()

    def soft(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, torch.Tensor], *,
             tau: float) -> torch.Tensor:
        # mse_soft averages over all L labels; the other tasks' labels hold 0 on both sides, so
        # rescale each example to the mean over its own task's labels (MPDistil's F.mse_loss)
        per_example = mse_soft(self._masked(student, batch), self._masked(teacher, batch), temperature=tau,
                               scale_by_temperature_squared=True, reduction="none")
        n_allowed = self.allowed.to(student.device)[batch["task"]].sum(-1)
        return (per_example * (student.shape[-1] / n_allowed)).mean()

    def features(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                 batch: Mapping[str, torch.Tensor], *, layer_map: Any) -> torch.Tensor:
        mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        mask[:, 0] = True  # [CLS], the position the pooler reads (PKD's choice)
        return pkd_loss(student, teacher, layer_map=layer_map, mask=mask)
