"""MPDistil's data: the tasks of a run, each split into training records and a held-out quiz set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kdlens.distill._onpolicy import step_generator

__all__ = ["STAGES", "TaskSplit", "split_tasks", "task_labels"]

#: stage directory names under ``<output_dir>/stages/``, in order
STAGES = ("1_teacher", "2_student", "3_meta_teacher", "4_curriculum")


@dataclass
class TaskSplit:
    """The records of a run by task.

    Attributes
    ----------
    tasks : list of str
        Task names (``Record.task``) in order of first appearance.
    train : list of Record
        Every task's training records, in the loaded order (stages 1-2 train on them).
    quiz : dict of str -> list of Record
        Each task's quiz set (stages 3-4), never trained on in stages 1-2.
    """

    tasks: list[str]
    train: list
    quiz: dict[str, list]


def split_tasks(records: Sequence, *, quiz_size: int, seed: int) -> TaskSplit:
    """Hold ``quiz_size`` records of each task out as its quiz set (seeded, per task).

    Raises
    ------
    ValueError
        A task with no more records than ``quiz_size`` (nothing left to train on).
    """
    tasks = list(dict.fromkeys(r.task for r in records))
    train_ids: set[int] = set()
    quiz: dict[str, list] = {}
    for index, task in enumerate(tasks):
        members = [i for i, r in enumerate(records) if r.task == task]
        if quiz_size >= len(members):
            raise ValueError(f"mpdistil.quiz_size={quiz_size} holds out all {len(members)} examples of task {task!r}; "
                             "lower mpdistil.quiz_size or add data (n_examples, or a larger task spec)")
        order = torch.randperm(len(members), generator=step_generator(seed, index, "holdout")).tolist()
        quiz[task] = [records[members[i]] for i in sorted(order[:quiz_size])]
        train_ids.update(members[i] for i in order[quiz_size:])
    return TaskSplit(tasks, [r for i, r in enumerate(records) if i in train_ids], quiz)


def task_labels(records: Sequence, tasks: Sequence[str], *, max_labels: int) -> dict[str, list[str]]:
    """Each task's label set for an encoder classifier: its distinct gold answers, sorted.

    Raises
    ------
    ValueError
        A task with more than ``max_labels`` distinct answers (not a classification task), or
        with a single one (nothing to classify).
    """
    out = {}
    for task in tasks:
        labels = sorted({r.answer.strip() for r in records if r.task == task})
        if len(labels) > max_labels:
            raise ValueError(f"task {task!r} has {len(labels)} distinct answers; an encoder classifier needs a small "
                             f"label set (mpdistil.max_labels={max_labels}): use a task with choice answers "
                             "(e.g. syllogism, ransom_note, course_schedule, acre) or a causal LM")
        if len(labels) < 2:
            raise ValueError(f"every record of task {task!r} has the answer {labels[0]!r}: there is nothing to "
                             "classify; add data or drop the task")
        out[task] = labels
    return out
