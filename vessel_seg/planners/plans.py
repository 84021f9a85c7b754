"""Plans: the single source of truth for every configuration, as typed dataclasses saved to JSON.

Trainers and predictors read nothing else about how to treat the data: spacing, patch and batch
size, normalisation, resampling and the network topology all live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vessel_seg.errors import PlansError, VesselSegError
from vessel_seg.planners.plans_checks import plans_problem
from vessel_seg.serialization import from_dict, read_json, write_json_atomic

CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
SPACING_MODES = ("mm", "finest_voxel")


@dataclass
class NetworkTopology:
    """A ResU-Net with bottleneck residual blocks; lists are per resolution stage, top to bottom.

    ``kernel_sizes`` and ``strides`` have one entry per stage with ``dim`` values each, in array
    axis order (``(z, y, x)`` in 3D, ``(y, x)`` in 2D). ``strides[0]`` is all ones (no downsampling at
    the input stage). Each encoder stage has ``blocks_per_stage[i]`` bottleneck residual blocks
    (1x1x1 reduce -> kxkxk -> 1x1x1 expand), the decoder ``blocks_per_stage_decoder[i]`` for stages
    ``0..n-2``. The inner width of a bottleneck block is ``features // bottleneck_divisor`` (at least
    ``min_bottleneck_features``).
    """

    dim: int
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    blocks_per_stage: list[int]
    blocks_per_stage_decoder: list[int]
    bottleneck_divisor: int = 2
    min_bottleneck_features: int = 8
    norm: str = "instance"
    negative_slope: float = 0.01
    deep_supervision: bool = True
    # Residual branches start at zero (expand norm scale 0): every block begins as its shortcut.
    # Off by default: on the CPU preset it learned more slowly in the first 50 iterations
    # (pseudo Dice 0.40 / 0.67 against 0.61 / 0.74 after 25 / 50 iterations, 2026-11-30).
    zero_init_residual: bool = False
    # Registered network class that reads this topology (vessel_seg.networks.registry); the planner plans "ResUNet".
    network_class: str = "ResUNet"

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)


@dataclass
class ChannelIntensity:
    """Foreground intensity statistics of one input channel (from the fingerprint)."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float
    median: float = 0.0
    min: float = 0.0
    max: float = 0.0


@dataclass
class ConfigurationPlan:
    """Everything needed to preprocess, train and predict one configuration.

    ``normalization`` has one scheme per channel: ``"ct_soft"`` (z-score with the dataset's foreground
    mean/std, logarithmic compression outside its 0.5/99.5 percentiles; the planner's choice for CT),
    ``"ct"`` (nnU-Net's hard clip to those percentiles), ``"zscore"`` (per image) or ``"percentile"``
    (per image, modality-free); see :mod:`vessel_seg.planners.normalization`.

    ``spacing_mode`` says what ``spacing`` is measured in: ``"mm"`` (every planned model) or
    ``"finest_voxel"``: multiples of each image's own finest voxel size, so ``[1, 1, 1]`` resamples
    every image to isotropic voxels of its smallest spacing. Models meant for any scanner or
    microscope (the built-in model) work this way, because vessels are then measured in voxels,
    whatever the unit or field of view of the image.
    """

    name: str
    data_identifier: str
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    normalization: list[str]
    network: NetworkTopology
    resampling_order_image: int = 3
    resampling_order_label: int = 1
    anisotropy_threshold: float = 3.0
    batch_dice: bool = False
    previous_stage: str | None = None
    next_stage: str | None = None
    spacing_mode: str = "mm"

    @property
    def dim(self) -> int:
        return self.network.dim


@dataclass
class Plans:
    """All configurations of one dataset under one plans name (``vs_plans`` by default)."""

    dataset_name: str
    plans_name: str
    preset: str
    gpu_memory_gb: float
    original_median_spacing: list[float]
    original_median_shape: list[int]
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    intensity_properties: dict[str, ChannelIntensity]
    configurations: dict[str, ConfigurationPlan] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise PlansError(
                f"configuration {name!r} is not in plans {self.plans_name!r} of {self.dataset_name}; "
                f"available: {', '.join(self.configurations)}"
            )
        return self.configurations[name]

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self)

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        if not path.is_file():
            raise PlansError(f"{path}: plans not found; run vs_plan_and_preprocess first")
        try:
            plans = from_dict(cls, read_json(path))
        except VesselSegError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plans file is untrusted: any failure to parse it is the file's
            raise PlansError(f"{path}: invalid plans file ({type(exc).__name__}: {str(exc)[:160]}); re-run "
                             "vs_plan_and_preprocess") from exc
        problem = plans_problem(plans)
        if problem:
            raise PlansError(f"{path}: {problem}; fix the value or re-run vs_plan_and_preprocess")
        return plans


NOT_PLANS = {"dataset.json", "fingerprint.json", "splits.json"}  # the other JSON files of a preprocessed dataset


def find_plans_name(preprocessed_dataset_dir: Path, requested: str | None, default: str) -> str:
    """The plans name to use: ``requested``, else ``default`` when its file exists, else the only plans file.

    Raises :class:`PlansError` naming the folder and the plans found when the choice is ambiguous
    or nothing is planned (``vs_plan_and_preprocess -pl cpu`` then ``vs_train ...`` without ``-pl``
    just works, as in nnU-Net where the plans identifier is optional).
    """
    if requested is not None:
        return requested
    folder = Path(preprocessed_dataset_dir)
    if (folder / f"{default}.json").is_file():
        return default
    found = sorted(p.stem for p in folder.glob("*.json") if p.name not in NOT_PLANS) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise PlansError(f"{folder}: no plans found; run vs_plan_and_preprocess first")
    raise PlansError(f"{folder}: several plans ({', '.join(found)}); choose one with -pl")
