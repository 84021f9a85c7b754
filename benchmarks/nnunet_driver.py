"""Drive nnU-Net v2 for the benchmark through its Python API; runs with nnU-Net's own interpreter.

Usage (``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set in the environment)::

    python nnunet_driver.py add-config -d 501 --ours-plans cpu.json --name 3d_vs -np 2
    python nnunet_driver.py train -d 501 -c 3d_vs --epochs 1 --iterations 10 --val-iterations 2 --timings t.json
    python nnunet_driver.py predict -d 501 -c 3d_vs -i imagesTs -o out [--disable-tta] -np 2 --timings p.json

This file must not import vessel_seg (it runs in a separate environment) and imports nnunetv2
only inside functions, so :func:`same_settings_configuration` is testable without nnU-Net.

Why the Python API and not ``nnUNetv2_train``/``nnUNetv2_predict``: both look the trainer class up by
name, importing every shipped trainer variant on the way; where torchvision is broken (a CPU torch
beside timm's CUDA-only torchvision) some variants fail to import. Here ``nnUNetTrainer`` is imported
directly and the predictor is initialised manually from the checkpoint, so no lookup happens. The
checkpoint is nnU-Net's usual ``checkpoint_final.pth`` (trainer name ``nnUNetTrainer``), so
``nnUNetv2_predict`` also works on it where the lookup does.

Timings written by ``train`` (seconds, ``time.perf_counter``): per training iteration ``wait_s``
(from the end of the previous step, or of the epoch set-up, to the start of this step: the time
spent in the data loader's ``next()``) and ``step_s`` (forward, backward and optimiser step).
``predict`` writes ``predict_s`` (model set-up plus prediction of all cases, start-up excluded)
and ``num_cases``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SAME_SETTINGS_CONFIGURATION = "3d_vs"


def same_settings_configuration(plans: dict, ours: dict, name: str = SAME_SETTINGS_CONFIGURATION,
                                source: str = "3d_fullres") -> dict:
    """A copy of nnU-Net ``plans`` with configuration ``name``: ``source`` with our sizes.

    Parameters
    ----------
    plans : dict
        Content of ``nnUNetPlans.json``.
    ours : dict
        One configuration of a vessel_seg plans file (``patch_size``, ``batch_size``, ``spacing`` and
        ``network`` with ``features_per_stage``, ``kernel_sizes`` and ``strides``).
    name, source : str
        The new configuration and the nnU-Net configuration it copies (network class, convolutions
        per stage, normalisation, resampling stay nnU-Net's).

    Returns
    -------
    dict
        New plans; ``plans`` is not modified. The new configuration's ``data_identifier`` is
        ``<plans_name>_<name>`` because its spacing may differ from ``source``'s.
    """
    if source not in plans.get("configurations", {}):
        raise ValueError(f"nnU-Net plans have no {source!r} configuration to copy")
    network = ours["network"]
    dims = len(ours["patch_size"])
    base = copy.deepcopy(plans["configurations"][source])
    if "architecture" not in base or len(base["patch_size"]) != dims:
        raise ValueError(f"{source!r} is not a full {dims}D nnU-Net configuration")
    stages = len(network["features_per_stage"])
    kwargs = base["architecture"]["arch_kwargs"]
    convs = (kwargs.get("n_conv_per_stage") or [2])[0]
    convs_decoder = (kwargs.get("n_conv_per_stage_decoder") or [2])[0]
    kwargs.update(n_stages=stages, features_per_stage=[int(f) for f in network["features_per_stage"]],
                  kernel_sizes=[list(map(int, k)) for k in network["kernel_sizes"]],
                  strides=[list(map(int, s)) for s in network["strides"]],
                  n_conv_per_stage=[convs] * stages, n_conv_per_stage_decoder=[convs_decoder] * (stages - 1))
    base.update(patch_size=[int(p) for p in ours["patch_size"]], batch_size=int(ours["batch_size"]),
                spacing=[float(s) for s in ours["spacing"]],
                data_identifier=f"{plans.get('plans_name', 'nnUNetPlans')}_{name}")
    new = copy.deepcopy(plans)
    new["configurations"][name] = base
    return new


RESENC_M_ENCODER_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnUNetPlannerResEncM's blocks per stage


def residual_encoder_configuration(config: dict) -> dict:
    """A copy of an nnU-Net configuration whose network is the ResEnc-M preset's ``ResidualEncoderUNet``.

    Sizes (patch, batch, spacing, stages, features, kernels, strides) and the preprocessed data stay;
    the encoder gets ResEnc-M's residual blocks per stage and the decoder one convolution per stage.
    """
    new = copy.deepcopy(config)
    kwargs = new["architecture"]["arch_kwargs"]
    stages = int(kwargs["n_stages"])
    kwargs.pop("n_conv_per_stage", None)
    kwargs.update(n_blocks_per_stage=list(RESENC_M_ENCODER_BLOCKS[:stages]), n_conv_per_stage_decoder=[1] * (stages - 1))
    new["architecture"]["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet")
    return new


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(content, handle, indent=2)
    os.replace(tmp, path)


def _device(name: str):
    """``torch.device(name)``; on CUDA with the settings of ``nnUNetv2_train``/``nnUNetv2_predict``'s entry
    points (one CPU thread, cudnn autotuning)."""
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    return device


def _cuda_peak() -> dict:
    """This process's peak CUDA memory in GiB (torch's caching allocator); ``{}`` when CUDA was not used."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"cuda_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "cuda_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


def _dataset_dir(root_env: str, dataset_id: int) -> Path:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    return Path(os.environ[root_env]) / convert_id_to_dataset_name(dataset_id)


def add_config(args: argparse.Namespace) -> int:
    """Add the same-settings configuration to ``nnUNetPlans.json`` and preprocess the training cases for it."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    plans_path = _dataset_dir("nnUNet_preprocessed", args.dataset) / f"{args.plans}.json"
    ours = json.loads(Path(args.ours_plans).read_text())["configurations"][args.ours_configuration]
    plans = same_settings_configuration(json.loads(plans_path.read_text()), ours, args.name)
    if args.network == "resenc":
        plans["configurations"][args.name] = residual_encoder_configuration(plans["configurations"][args.name])
    _write_json(plans_path, plans)
    data_dir = plans_path.parent / plans["configurations"][args.name]["data_identifier"]
    if not data_dir.is_dir():  # a second network on the same sizes shares the preprocessed data
        preprocess_dataset(args.dataset, args.plans, [args.name], [args.num_processes], show_progress_bar=False)
    return 0


def _timed_trainer(trainer, records: list[dict]) -> None:
    """Wrap the instance's epoch start and ``train_step`` to log data wait and step time per iteration."""
    state = {"mark": 0.0, "index": 0}
    epoch_start, train_step = trainer.on_train_epoch_start, trainer.train_step

    def on_train_epoch_start() -> None:
        epoch_start()
        state["index"] = 0
        state["mark"] = time.perf_counter()

    def timed_step(batch: dict) -> dict:
        began = time.perf_counter()
        out = train_step(batch)
        ended = time.perf_counter()
        records.append({"epoch": trainer.current_epoch, "index": state["index"], "wait_s": began - state["mark"],
                        "step_s": ended - began})
        state["index"] += 1
        state["mark"] = ended
        return out

    trainer.on_train_epoch_start, trainer.train_step = on_train_epoch_start, timed_step


def _fold(text: str) -> int | str:
    return "all" if text == "all" else int(text)


def _snapshots(trainer, every: int) -> None:
    """Save ``checkpoint_epochNNNN.pth`` (NNNN = epochs done) after every ``every``-th epoch."""
    epoch_end = trainer.on_epoch_end

    def on_epoch_end() -> None:
        epoch_end()  # increments current_epoch
        if trainer.current_epoch % every == 0:
            trainer.save_checkpoint(str(Path(trainer.output_folder) / f"checkpoint_epoch{trainer.current_epoch:04d}.pth"))

    trainer.on_epoch_end = on_epoch_end


def _logged(trainer, key: str) -> list[float]:
    """Every epoch's value of ``key`` in the trainer's log (2.8's ``MetaLogger`` or the older ``nnUNetLogger``)."""
    try:
        return [float(v) for v in trainer.logger.get_value(key, None) or []]
    except (AttributeError, KeyError):
        return []


def train(args: argparse.Namespace) -> int:
    """Train ``nnUNetTrainer`` on ``--device`` (default CPU) for ``epochs x iterations``; no final validation.

    The timings also hold the pseudo Dice of every epoch (``mean_fg_dice``, as nnU-Net logs it, and
    its moving average) and, on CUDA, the peak memory.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pre = _dataset_dir("nnUNet_preprocessed", args.dataset)
    plans = json.loads((pre / f"{args.plans}.json").read_text())
    plans["continue_training"] = False  # 2.8.x's __init__ pops this key, which run_training.py normally adds
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = nnUNetTrainer(plans, args.configuration, args.fold, dataset_json, device=_device(args.device))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    records: list[dict] = []
    _timed_trainer(trainer, records)
    if args.snapshot_every:
        _snapshots(trainer, args.snapshot_every)
    started = time.perf_counter()
    trainer.run_training()  # perform_actual_validation (the final validation) is left out
    _write_json(Path(args.timings), {"iterations": records, "run_training_s": time.perf_counter() - started,
                                     "output_folder": str(trainer.output_folder), "torch_threads": torch.get_num_threads(),
                                     "pseudo_dice": _logged(trainer, "mean_fg_dice"),
                                     "ema_pseudo_dice": _logged(trainer, "ema_fg_dice"), **_cuda_peak()})
    return 0


def predict(args: argparse.Namespace) -> int:
    """Predict a folder of images with fold ``--fold``'s final checkpoint, with or without mirroring."""
    started = time.perf_counter()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    imported = time.perf_counter()
    model_dir = _dataset_dir("nnUNet_results", args.dataset) / f"nnUNetTrainer__{args.plans}__{args.configuration}"
    checkpoint = torch.load(model_dir / f"fold_{args.fold}" / args.checkpoint, map_location="cpu", weights_only=False)
    plans_manager = PlansManager(json.loads((model_dir / "plans.json").read_text()))
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    config = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, config, determine_num_input_channels(plans_manager, config, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    device = _device(args.device)
    predictor = nnUNetPredictor(use_mirroring=not args.disable_tta, perform_everything_on_device=device.type == "cuda",
                                device=device, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, config, [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"], checkpoint.get("inference_allowed_mirroring_axes"))
    predictor.predict_from_files(str(args.input), str(args.output), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=args.num_processes,
                                 num_processes_segmentation_export=args.num_processes)
    ended = time.perf_counter()
    cases = len(list(Path(args.input).glob("*_0000.*")))
    _write_json(Path(args.timings), {"predict_s": ended - imported, "import_s": imported - started, "num_cases": cases,
                                     "use_mirroring": not args.disable_tta, "torch_threads": torch.get_num_threads(),
                                     **_cuda_peak()})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="nnU-Net v2 side of benchmarks/compare_nnunet.py")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-d", "--dataset", type=int, required=True)
    common.add_argument("-p", "--plans", default="nnUNetPlans")
    add = sub.add_parser("add-config", parents=[common], help="add our sizes as a new configuration and preprocess it")
    add.add_argument("--ours-plans", required=True, help="vessel_seg plans file (e.g. cpu.json)")
    add.add_argument("--ours-configuration", default="3d_fullres")
    add.add_argument("--name", default=SAME_SETTINGS_CONFIGURATION)
    add.add_argument("--network", choices=("plain", "resenc"), default="plain",
                     help="plain: nnU-Net's PlainConvUNet; resenc: its ResEnc-M network (ResidualEncoderUNet)")
    add.add_argument("-np", "--num-processes", type=int, default=2)
    tr = sub.add_parser("train", parents=[common], help="train nnUNetTrainer on the CPU, timing every iteration")
    tr.add_argument("-c", "--configuration", required=True)
    tr.add_argument("-f", "--fold", type=_fold, default=0, help="fold index or 'all'")
    tr.add_argument("--snapshot-every", type=int, default=0,
                    help="also save checkpoint_epochNNNN.pth every N epochs (held-out learning curves; 0: never)")
    tr.add_argument("--epochs", type=int, required=True)
    tr.add_argument("--iterations", type=int, required=True)
    tr.add_argument("--val-iterations", type=int, default=1)
    tr.add_argument("--timings", required=True)
    tr.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    pr = sub.add_parser("predict", parents=[common], help="predict a folder with the final checkpoint")
    pr.add_argument("-c", "--configuration", required=True)
    pr.add_argument("-f", "--fold", type=_fold, default=0, help="fold index or 'all'")
    pr.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file in the fold folder")
    pr.add_argument("-i", "--input", type=Path, required=True)
    pr.add_argument("-o", "--output", type=Path, required=True)
    pr.add_argument("--disable-tta", action="store_true")
    pr.add_argument("-np", "--num-processes", type=int, default=2)
    pr.add_argument("--timings", required=True)
    pr.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"add-config": add_config, "train": train, "predict": predict}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
