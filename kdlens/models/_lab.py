"""The lab models: micro Llama causal LMs with a character tokenizer, and the two trained lab teachers.

The kdlens lab (:mod:`kdlens.data._lab` tasks) runs the lecture's experiments on a CPU, so its
models are tiny: a 3-layer, d_model 128 teacher (0.65 M parameters) and 2-layer students of width
32, 64 and 96. All share one tokenizer, so any lab teacher distills into any lab student.

Tokenizer
---------
One token per character of printable ASCII and newline (ids 6..101), plus six special tokens:
``<|end|>`` (0, EOS: ends every turn), ``<|user|>`` (1), ``<|assistant|>`` (2), ``<|system|>`` (3),
``<pad>`` (4) and ``<unk>`` (5, any other character). The chat template is the shortest that keeps
roles apart: ``<|user|>32+85-7<|end|><|assistant|>32+85=18;18-7=47\\n47<|end|>``; three tokens of
template per exchange instead of ChatML's dozen, which matters when a lab task is 30 characters.

Untrained models
----------------
``lab-teacher`` and ``lab-student-{32,64,96}`` are deterministic initialisations (seed 0, like
``tiny``) saved once into ``<cache>/models/lab/NAME-<hash>`` and loaded from there with
``from_pretrained``, like any checkpoint. A sweep's seeds therefore vary a student's data and data
order, not its initial weights.

Trained teachers
----------------
``lab-teacher-base``: ``lab-teacher`` after SFT on ``lab_add`` (the *task-unaware* teacher: it knows
the notation and addition but was never trained on the target ``lab_chain``); ``lab-teacher-aware``:
that teacher after SFT on ``lab_chain`` (the *task-aware* teacher). Both are kdlens run directories
made by ``kdlens finetune`` from the recipes ``kdlens/configs/lab_teacher_base.yaml`` and
``lab_teacher_aware.yaml``, and are looked up, in order, in

1. ``data/lab/NAME`` of a kdlens source checkout: the copies the repository ships, so that every
   clone and CI job uses the very same teacher weights (a rebuild on another CPU can differ in the
   last float bits and therefore in every downstream number);
2. ``<cache>/models/lab/NAME-<hash>``, where ``<hash>`` covers the recipe, the task generator and
   the model definitions (for installs without the repository).

A run directory is used only when it is finished and its ``config.yaml`` agrees with the recipe on
every key the recipe sets. :func:`lab_teacher_commands` gives the commands that (re)build them.

Pretrained students
-------------------
``lab-base-l1``, ``lab-base-l2``, ``lab-base-l3``: ``lab-teacher-base`` cut to 1, 2 or 3 (all) of its
layers, saved into the cache on first use. They know the notation, copying and addition but not the
target, like the pretrained students of the paradox paper; untrained students (``lab-student-*``)
learn the format and copying from 1,000 ``lab_chain`` items but not the arithmetic (about 7 % after
1,000 steps, ``benchmarks/RESULTS.md``). Being cut from the task-UNAWARE teacher, they start from the
same weights whichever teacher they are distilled from (``prune:N`` of ``lab-teacher-aware`` would
carry the aware teacher's task tuning into the student).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdlens._io import atomic_directory, read_yaml, sha256_file, sha256_json
from kdlens.data._lab import LAB_VERSION
from kdlens.models._tiny import seeded_model, tiny_config, wrap_tokenizer

__all__ = [
    "LAB_ARCHS",
    "LAB_CHARS",
    "LAB_CHAT_TEMPLATE",
    "LAB_SPECIAL_TOKENS",
    "LAB_PRUNED",
    "LAB_TEACHERS",
    "find_lab_teacher",
    "lab_config",
    "lab_model",
    "lab_parameter_count",
    "lab_teacher_commands",
    "lab_teacher_dir",
    "lab_teacher_recipe",
    "lab_tokenizer",
    "prepare_lab_init",
    "prepare_lab_pruned",
]

#: bump when a change alters the weights or tokenizer a lab name resolves to
LAB_MODEL_VERSION = 1

LAB_SPECIAL_TOKENS: tuple[str, ...] = ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<pad>", "<unk>")
#: newline then printable ASCII: every character any lab task writes (ids 6..101)
LAB_CHARS: tuple[str, ...] = ("\n", *(chr(c) for c in range(32, 127)))
_EOS_ID, _PAD_ID = 0, 4
_MAX_POSITIONS = 256

LAB_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('lab models know the roles system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

#: untrained lab model name -> (layers, d_model, heads, MLP width, description)
LAB_ARCHS: dict[str, tuple[int, int, int, int, str]] = {
    "lab-teacher": (3, 128, 4, 384, "the lab teacher's architecture, untrained"),
    "lab-student-32": (2, 32, 2, 96, "untrained student, the smallest"),
    "lab-student-64": (2, 64, 4, 192, "untrained student"),
    "lab-student-96": (2, 96, 4, 288, "untrained student, the largest"),
}

#: trained lab teacher -> (recipe file in kdlens/configs, the teacher it starts from, description)
LAB_TEACHERS: dict[str, tuple[str, str, str]] = {
    "lab-teacher-base": ("lab_teacher_base.yaml", "lab-teacher",
                         "task-UNAWARE lab teacher: lab-teacher after SFT on the related task lab_add"),
    "lab-teacher-aware": ("lab_teacher_aware.yaml", "lab-teacher-base",
                          "task-AWARE lab teacher: lab-teacher-base after SFT on the target lab_chain"),
}

#: pretrained lab student -> (the teacher it is cut from, layers kept, description)
LAB_PRUNED: dict[str, tuple[str, int, str]] = {
    f"lab-base-l{k}": ("lab-teacher-base", k, f"lab-teacher-base cut to {k} of its 3 layers (prune_layers)"
                       + (", i.e. a copy of it" if k == 3 else ""))
    for k in (1, 2, 3)
}

_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
_SHIPPED = Path(__file__).resolve().parents[2] / "data" / "lab"


def lab_tokenizer():
    """The character tokenizer of every lab model (see the module docstring).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        102 tokens; EOS ``<|end|>``, pad ``<pad>``, unk ``<unk>``; the lab chat template.
    """
    from tokenizers import Tokenizer, decoders, models

    vocab = {token: i for i, token in enumerate(LAB_SPECIAL_TOKENS)}
    vocab.update({char: len(LAB_SPECIAL_TOKENS) + i for i, char in enumerate(LAB_CHARS)})
    # no pre-tokenizer and no merges: BPE splits the text into single characters, unknown ones to <unk>
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return wrap_tokenizer(backend, LAB_SPECIAL_TOKENS, eos="<|end|>", pad="<pad>", unk="<unk>",
                          additional=("<|user|>", "<|assistant|>", "<|system|>"), chat_template=LAB_CHAT_TEMPLATE,
                          max_length=_MAX_POSITIONS)


def _arch(name: str) -> tuple[int, int, int, int, str]:
    if name not in LAB_ARCHS:
        raise KeyError(f"unknown lab architecture {name!r}; known: {', '.join(LAB_ARCHS)}")
    return LAB_ARCHS[name]


def lab_config(name: str):
    """The ``LlamaConfig`` of the untrained lab model ``name`` (tied embeddings, full multi-head attention)."""
    layers, width, heads, mlp, _ = _arch(name)
    return tiny_config("llama", vocab_size=len(LAB_SPECIAL_TOKENS) + len(LAB_CHARS), hidden_size=width,
                       intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, max_position_embeddings=_MAX_POSITIONS,
                       eos_token_id=_EOS_ID, pad_token_id=_PAD_ID)


def lab_parameter_count(name: str) -> int:
    """Parameters of the lab model ``name``: tied embeddings ``V d``, per layer ``4 d^2 + 3 d m + 2 d``, final norm ``d``.

    Computed from :data:`LAB_ARCHS` without building the model (``kdlens models`` lists it); a lab
    teacher has the ``lab-teacher`` architecture, a pruned student its teacher's with fewer layers.
    """
    if name in LAB_PRUNED:
        _, layers, _ = LAB_PRUNED[name]
        _, width, _, mlp, _ = _arch("lab-teacher")
    else:
        layers, width, _, mlp, _ = _arch("lab-teacher" if name in LAB_TEACHERS else name)
    vocab = len(LAB_SPECIAL_TOKENS) + len(LAB_CHARS)
    return vocab * width + layers * (4 * width * width + 3 * width * mlp + 2 * width) + width


def lab_model(name: str, seed: int = 0):
    """The untrained lab model ``name`` built in memory: ``(model, tokenizer)``, float32, eval mode.

    ``lab_model(name)`` has the weights ``load_model(name)`` loads (both use seed 0).
    """
    return seeded_model(lab_config(name), seed, name=name), lab_tokenizer()


def _init_identity(name: str) -> str:
    return sha256_json({"arch": list(_arch(name)[:4]), "specials": list(LAB_SPECIAL_TOKENS), "chars": list(LAB_CHARS),
                        "template": LAB_CHAT_TEMPLATE, "max_positions": _MAX_POSITIONS, "version": LAB_MODEL_VERSION})


def prepare_lab_init(name: str, cache: Path) -> Path:
    """Save the untrained lab model ``name`` under ``cache/models/lab`` (once) and return its directory."""
    target = cache / "models" / "lab" / f"{name}-{_init_identity(name)[:12]}"
    if not (target / "config.json").is_file():
        from kdlens.models._hf import quiet_progress

        model, tokenizer = lab_model(name)
        # overwrite: a concurrent first use (another sweep worker) may finish first
        with quiet_progress(), atomic_directory(target, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def lab_init_cached(name: str, cache: Path) -> bool:
    return (cache / "models" / "lab" / f"{name}-{_init_identity(name)[:12]}" / "config.json").is_file()


def _teacher(name: str) -> tuple[str, str, str]:
    if name not in LAB_TEACHERS:
        raise KeyError(f"unknown lab teacher {name!r}; known: {', '.join(LAB_TEACHERS)}")
    return LAB_TEACHERS[name]


def lab_teacher_recipe(name: str) -> dict[str, Any]:
    """The :class:`kdlens.config.DistillConfig` keys that train the lab teacher ``name`` (no ``output_dir``)."""
    return dict(read_yaml(_CONFIGS / _teacher(name)[0], what="lab teacher recipe"))


def _teacher_identity(name: str) -> str:
    parent = _teacher(name)[1]
    parent_id = _teacher_identity(parent) if parent in LAB_TEACHERS else _init_identity(parent)
    return sha256_json({"recipe": lab_teacher_recipe(name), "tasks_version": LAB_VERSION, "parent": parent_id})


def lab_teacher_dir(name: str, cache: Path) -> Path:
    """Where the lab teacher ``name`` is built in the cache: ``cache/models/lab/NAME-<hash>``."""
    return cache / "models" / "lab" / f"{name}-{_teacher_identity(name)[:12]}"


def _agrees(run: Path, recipe: Mapping[str, Any]) -> bool:
    if not (run / "done").is_file() or not (run / "checkpoint" / "config.json").is_file():
        return False
    config = read_yaml(run / "config.yaml", what="run config") or {}
    return all(config.get(key) == value for key, value in recipe.items())


def find_lab_teacher(name: str, cache: Path) -> Path | None:
    """The finished run directory of the lab teacher ``name`` that agrees with its recipe, or None.

    Looks in the repository's ``data/lab/NAME`` first, then in :func:`lab_teacher_dir`.
    """
    recipe = lab_teacher_recipe(name)
    for run in (_SHIPPED / name, lab_teacher_dir(name, cache)):
        if run.is_dir() and _agrees(run, recipe):
            return run
    return None


def lab_teacher_commands(cache: Path, *, shipped: bool = False) -> list[str]:
    """The ``kdlens finetune`` commands that build both lab teachers, base first.

    ``shipped=True`` writes them into the repository's ``data/lab`` (run from a source checkout, then
    commit the result); otherwise into the cache directories :func:`find_lab_teacher` reads.
    """
    commands = []
    for name, (recipe, _, _) in LAB_TEACHERS.items():
        out = _SHIPPED / name if shipped else lab_teacher_dir(name, cache)
        commands.append(f"kdlens finetune {_CONFIGS / recipe} output_dir={out}")
    return commands


def prepare_lab_teacher(name: str, cache: Path) -> Path:
    """The checkpoint directory of the lab teacher ``name``; a one-line error with the build commands if absent."""
    run = find_lab_teacher(name, cache)
    if run is None:
        stale = (_SHIPPED / name).is_dir()
        why = (f"{_SHIPPED / name} was built from another recipe" if stale
               else f"it is neither in {_SHIPPED} (a kdlens checkout) nor in {lab_teacher_dir(name, cache)}")
        raise FileNotFoundError(f"lab teacher {name!r} is not built: {why}. Build both lab teachers (a few "
                                f"minutes on one core) with: {' && '.join(lab_teacher_commands(cache))}")
    return run / "checkpoint"


def _pruned_dir(name: str, cache: Path, source: Path) -> Path:
    teacher, keep, _ = LAB_PRUNED[name]
    digest = sha256_json({"weights": sha256_file(source / "model.safetensors"), "keep": keep})
    return cache / "models" / "lab" / f"{name}-{digest[:12]}"


def prepare_lab_pruned(name: str, cache: Path) -> Path:
    """Save the pretrained lab student ``name`` (its teacher with fewer layers) into the cache once; its directory.

    The directory name holds a hash of the teacher's weights, so a rebuilt teacher gives a new student.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdlens.models._hf import quiet_progress
    from kdlens.models._prune import prune_layers

    teacher, keep, _ = LAB_PRUNED[name]
    source = prepare_lab_teacher(teacher, cache)
    target = _pruned_dir(name, cache, source)
    if not (target / "config.json").is_file():
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
            with atomic_directory(target, overwrite=True) as tmp:
                prune_layers(model, keep).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    return target


def lab_pruned_cached(name: str, cache: Path) -> bool:
    run = find_lab_teacher(LAB_PRUNED[name][0], cache)
    return run is not None and (_pruned_dir(name, cache, run / "checkpoint") / "config.json").is_file()
