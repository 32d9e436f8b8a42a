"""Zero-shot accuracy of the in-memory (pruned) model through lm-evaluation-harness.

    tasks = ZeroShot(["boolq", "rte"])          # checks names and data before any pruning
    tasks.evaluate(model, tokenizer)            # {"boolq": {"acc": 0.62, "acc_stderr": ...}, ...}

The model is wrapped with lm_eval.models.huggingface.HFLM(pretrained=model, ...) and run by
lm_eval.simple_evaluate, so the numbers are lm-eval's own. Local tasks (a task YAML and its data
file) are found in `tasks_dirs` through lm_eval.tasks.TaskManager(include_path=...); the standard
tasks (STANDARD_TASKS, as in the Wanda/OWL papers) download their data from the Hugging Face hub.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

from dsa.core.errors import UserError

STANDARD_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
INSTALL = "pip install 'lm-eval[hf]>=0.4.13'"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError as err:
        raise UserError(f"zero-shot evaluation needs lm-evaluation-harness ({err}): {INSTALL}")
    return lm_eval, HFLM, TaskManager, get_task_dict


def parse_tasks(items: Sequence[str]) -> list[str]:
    """['boolq,rte', 'arc_easy'] -> ['boolq', 'rte', 'arc_easy']; 'standard' -> STANDARD_TASKS."""
    names: list[str] = []
    for item in items:
        for name in item.split(","):
            name = name.strip()
            for task in STANDARD_TASKS if name == "standard" else [name] if name else []:
                if task not in names:
                    names.append(task)
    if not names:
        raise UserError("--eval-zero-shot needs at least one task name (or 'standard')")
    return names


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


class ZeroShot:
    """A checked set of lm-eval tasks; `evaluate` runs them on a model as it is now."""

    def __init__(self, tasks: Sequence[str], tasks_dirs: Sequence[str] = (), limit: int | None = None,
                 batch_size: int = 4):
        if limit is not None and limit < 1:
            raise UserError("--zero-shot-limit must be >= 1")
        dirs = [Path(d).expanduser() for d in tasks_dirs]
        for d in dirs:
            if not d.is_dir():
                raise UserError(f"--tasks-dir {d}: not a directory")
        self.lm_eval, self._hflm, task_manager, get_task_dict = _lm_eval()
        self.tasks = parse_tasks(tasks)
        self.limit, self.batch_size = limit, batch_size
        include = [str(d.resolve()) for d in dirs] or None
        # Local tasks alone need no index of lm-eval's ~15k built-in configs (seconds saved).
        self.manager = task_manager(include_path=include, include_defaults=False) if include else None
        if self.manager is None or not set(self.tasks) <= set(self.manager.all_tasks):
            self.manager = task_manager(include_path=include)
        unknown = [t for t in self.tasks if t not in self.manager.all_tasks]
        if unknown:
            where = f" nor in {', '.join(map(str, dirs))}" if dirs else ""
            raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}: not built into lm-eval{where} "
                            "(lm-eval ls tasks lists them)")
        try:  # load the data now: an offline machine fails here, before any pruning
            if hasattr(self.manager, "load"):  # newer lm-eval; get_task_dict is deprecated there
                self.manager.load(self.tasks)
            else:
                get_task_dict(self.tasks, self.manager)
        except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
            hint = "" if os.environ.get("HF_DATASETS_OFFLINE") else "; offline? use a local task with --tasks-dir"
            raise UserError(f"could not load the data of {', '.join(self.tasks)} ({_first_line(err)}){hint}")

    def evaluate(self, model, tokenizer) -> dict[str, dict[str, float]]:
        """Task -> {metric: value, ..., 'samples': docs evaluated} for the model's current weights."""
        # lm-eval may set a pad token; a copy keeps the caller's tokenizer (and any save) unchanged.
        lm = self._hflm(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=self.batch_size)
        out = self.lm_eval.simple_evaluate(model=lm, tasks=self.tasks, task_manager=self.manager, num_fewshot=0,
                                           limit=self.limit, log_samples=False)
        counts = out.get("n-samples", {})
        results = {}
        for task, metrics in out["results"].items():
            row = {name.split(",")[0]: float(value) for name, value in metrics.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
            if task in counts:
                row["samples"] = int(counts[task].get("effective", counts[task].get("original", 0)))
            results[task] = row
        model.eval()
        return results
