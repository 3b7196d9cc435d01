"""process_docs helpers of the qjax_* lm-eval task configs."""

import os


def piqa_with_labels(dataset):
    """Adds `label` from piqa/valid-labels.lst (aligned with the JSONL lines) of $QJAX_DATA_DIR."""
    path = os.path.join(os.environ["QJAX_DATA_DIR"], "piqa", "valid-labels.lst")
    with open(path, encoding="utf-8") as f:
        labels = [int(line) for line in f if line.strip()]
    if len(labels) != len(dataset):
        raise ValueError(f"{path}: {len(labels)} labels for {len(dataset)} PIQA records")
    return dataset.add_column("label", labels)
