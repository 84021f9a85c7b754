"""Plans of one model applied to another dataset (nnU-Net's "move plans between datasets").

Fine-tuning a pretrained network needs the target dataset preprocessed exactly as the network
was trained: same spacing rule, normalisation, patch and topology. :func:`transferred_plans`
copies the source's configurations and takes only the dataset's own facts (name, labels,
channels, file ending, fingerprint statistics) from the target.
"""

from __future__ import annotations

import copy

from vessel_seg.dataset import DatasetInfo
from vessel_seg.errors import PlansError
from vessel_seg.planners.fingerprint import DatasetFingerprint
from vessel_seg.planners.planner import dataset_facts
from vessel_seg.planners.plans import Plans


def transferred_plans(source: Plans, fingerprint: DatasetFingerprint, info: DatasetInfo, dataset_name: str,
                      plans_name: str) -> Plans:
    """``source``'s configurations for ``dataset_name``; one-line :class:`PlansError` when channels or labels differ.

    A label set of another size would change the network's output layer, and another channel count
    its input layer: the pretrained weights would not fit, so both are refused.
    """
    if info.num_channels != len(source.channel_names):
        raise PlansError(
            f"{dataset_name} has {info.num_channels} channel(s), the model's plans {source.plans_name!r} "
            f"{len(source.channel_names)}; plan it with its own plans (vs_plan_and_preprocess without --plans-from)"
        )
    if len(info.labels) != len(source.labels):
        raise PlansError(
            f"{dataset_name} has labels {info.labels}, the model's plans {source.plans_name!r} {source.labels} "
            "(a different count); plan it with its own plans"
        )
    configurations = {}
    for name, config in source.configurations.items():
        copied = copy.deepcopy(config)
        copied.data_identifier = f"{plans_name}_{name}"
        configurations[name] = copied
    return Plans(
        dataset_name=dataset_name, plans_name=plans_name, preset=source.preset, gpu_memory_gb=source.gpu_memory_gb,
        configurations=configurations,
        notes=[f"configurations transferred from plans {source.plans_name!r} of {source.dataset_name}"],
        **dataset_facts(fingerprint, info),
    )
