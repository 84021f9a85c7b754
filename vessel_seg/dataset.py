"""The raw dataset contract (nnU-Net v2's layout) and the list of cases it holds.

::

    DatasetNNN_Name/
        dataset.json            channel_names, labels, numTraining, file_ending
        imagesTr/CASE_0000.ext  one file per channel, 4-digit channel suffix
        labelsTr/CASE.ext
        imagesTs/CASE_0000.ext  optional held-out images (labelsTs/ optional too)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vessel_seg.errors import DatasetError
from vessel_seg.imageio.formats import SUPPORTED_EXTENSIONS

CT_CHANNEL_NAMES = {"ct", "cta", "ctangiography"}


@dataclass
class DatasetInfo:
    """The typed content of ``dataset.json``."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    name: str = ""
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background, sorted."""
        return sorted(v for v in self.labels.values() if v != 0)

    def is_ct(self, channel: int) -> bool:
        return self.channel_names[str(channel)].strip().lower().replace(" ", "") in CT_CHANNEL_NAMES

    def to_json(self) -> dict:
        data = dict(self.extra)
        data.update(
            {
                "name": self.name,
                "description": self.description,
                "channel_names": self.channel_names,
                "labels": self.labels,
                "numTraining": self.num_training,
                "file_ending": self.file_ending,
            }
        )
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, data: object, source: str = "dataset.json") -> DatasetInfo:
        """Validate and convert parsed JSON; each problem is a :class:`DatasetError` naming ``source``."""
        if not isinstance(data, dict):
            raise DatasetError(f"{source}: must hold a JSON object")
        for key in ("channel_names", "labels", "numTraining", "file_ending"):
            if key not in data:
                raise DatasetError(
                    f"{source}: missing key {key!r}; add it (nnU-Net v2 format needs channel_names, labels, "
                    "numTraining and file_ending)"
                )
        channels = data["channel_names"]
        if not isinstance(channels, dict) or not channels:
            raise DatasetError(f"{source}: 'channel_names' must be a non-empty object such as {{\"0\": \"CT\"}}")
        if sorted(channels) != [str(i) for i in range(len(channels))]:
            raise DatasetError(f"{source}: 'channel_names' keys must be \"0\", \"1\", ... without gaps")
        labels = data["labels"]
        if not isinstance(labels, dict) or not labels:
            raise DatasetError(f"{source}: 'labels' must be an object such as {{\"background\": 0, \"vessel\": 1}}")
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                raise DatasetError(f"{source}: label {name!r} is a region (list); only plain integer labels are supported")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 32768:
                raise DatasetError(f"{source}: label {name!r} must be an integer in 0..32767, got {value!r}")
        if 0 not in labels.values():
            raise DatasetError(f"{source}: 'labels' must declare the background as 0")
        if len(set(labels.values())) != len(labels):
            raise DatasetError(f"{source}: two labels share the same value")
        num = data["numTraining"]
        if not isinstance(num, int) or isinstance(num, bool) or num < 0:
            raise DatasetError(f"{source}: 'numTraining' must be a non-negative integer, got {num!r}")
        ending = data["file_ending"]
        if not isinstance(ending, str) or ending.lower() not in SUPPORTED_EXTENSIONS:
            raise DatasetError(f"{source}: 'file_ending' must be one of {', '.join(SUPPORTED_EXTENSIONS)}, got {ending!r}")
        known = {"channel_names", "labels", "numTraining", "file_ending", "name", "description"}
        return cls(
            channel_names={str(k): str(v) for k, v in channels.items()},
            labels={str(k): int(v) for k, v in labels.items()},
            num_training=num,
            file_ending=ending,
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def load(cls, path: str | Path) -> DatasetInfo:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: dataset.json not found; every raw dataset needs one (nnU-Net v2 format)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc}); fix the syntax") from exc
        except Exception as exc:  # noqa: BLE001 - an unreadable file (permissions, device errors) is the file's problem
            raise DatasetError(f"{path}: cannot read dataset.json ({type(exc).__name__}: {str(exc)[:160]})") from exc
        try:
            return cls.from_json(data, str(path))
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - values of an untrusted file
            raise DatasetError(f"{path}: invalid dataset.json ({type(exc).__name__}: {str(exc)[:160]}); fix the "
                               "values (nnU-Net v2 format)") from exc


@dataclass
class Case:
    """One case: its identifier, channel files in channel order, and label file (if any)."""

    case_id: str
    images: list[Path]
    label: Path | None = None


def _channel_files(folder: Path, info: DatasetInfo) -> dict[str, dict[int, Path]]:
    by_case: dict[str, dict[int, Path]] = {}
    ending = info.file_ending
    for path in sorted(folder.iterdir()):
        name = path.name
        if not name.endswith(ending) or name.startswith("."):
            continue
        stem = name[: -len(ending)]
        if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
            raise DatasetError(f"{path}: image names must end in _NNNN{ending} (4-digit channel), e.g. case_0000{ending}")
        by_case.setdefault(stem[:-5], {})[int(stem[-4:])] = path
    return by_case


def list_cases(folder: str | Path, info: DatasetInfo, labels_folder: str | Path | None = None) -> list[Case]:
    """Cases in an images folder, with every channel present; labels attached from ``labels_folder``.

    Raises :class:`DatasetError` naming the case when a channel file or a label file is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: images folder not found")
    cases = []
    for case_id, channels in sorted(_channel_files(folder, info).items()):
        missing = [c for c in range(info.num_channels) if c not in channels]
        if missing:
            raise DatasetError(
                f"{folder / (case_id + f'_{missing[0]:04d}' + info.file_ending)}: channel {missing[0]} of case "
                f"{case_id!r} is missing (dataset.json declares {info.num_channels} channels); add it or remove the case"
            )
        extra = sorted(set(channels) - set(range(info.num_channels)))
        if extra:
            raise DatasetError(f"{channels[extra[0]]}: channel {extra[0]} is not declared in dataset.json")
        label = None
        if labels_folder is not None:
            label = Path(labels_folder) / f"{case_id}{info.file_ending}"
            if not label.is_file():
                raise DatasetError(f"{label}: label file of case {case_id!r} is missing")
        cases.append(Case(case_id, [channels[c] for c in range(info.num_channels)], label))
    return cases


def training_cases(raw_dataset_dir: str | Path) -> tuple[DatasetInfo, list[Case]]:
    """``dataset.json`` and the labelled training cases of a raw dataset folder."""
    raw_dataset_dir = Path(raw_dataset_dir)
    if not raw_dataset_dir.is_dir():
        raise DatasetError(f"{raw_dataset_dir}: raw dataset folder not found")
    info = DatasetInfo.load(raw_dataset_dir / "dataset.json")
    cases = list_cases(raw_dataset_dir / "imagesTr", info, raw_dataset_dir / "labelsTr")
    if not cases:
        raise DatasetError(f"{raw_dataset_dir / 'imagesTr'}: no training images ending in {info.file_ending}")
    return info, cases
