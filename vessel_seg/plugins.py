"""Extensions from outside the package: modules named in ``VS_PLUGINS`` are imported before a command runs.

A plugin is an ordinary Python module or file that registers what it adds (a loss with
:func:`vessel_seg.trainers.losses.register_loss`, ...) at import time::

    # my_losses.py
    from vessel_seg.trainers.losses import DiceCELoss, register_loss

    @register_loss("dice_ce_heavy", description="Dice + 2 x CE")
    def build(options):
        return DiceCELoss(batch_dice=options.batch_dice, weight_ce=2.0)

    $ VS_PLUGINS=/path/to/my_losses.py vs_train 501 3d_fullres 0 --loss dice_ce_heavy

``VS_PLUGINS`` holds module names (``mypackage.losses``) or paths of ``.py`` files, separated by
commas. Each is imported once per process; a failing import stops the command with one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from vessel_seg.errors import VesselSegError

PLUGINS_VARIABLE = "VS_PLUGINS"


def _import_file(path: Path) -> ModuleType:
    """Import the ``.py`` file ``path`` as module ``vs_plugin_<stem>`` (once)."""
    name = f"vs_plugin_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_plugins(value: str | None = None) -> list[ModuleType]:
    """Import every plugin named in ``value`` (default: the ``VS_PLUGINS`` environment variable).

    Raises
    ------
    VesselSegError
        One line naming the plugin and the reason, for a missing file or a failing import.
    """
    value = os.environ.get(PLUGINS_VARIABLE, "") if value is None else value
    modules = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            if item.endswith(".py"):
                path = Path(item).expanduser()
                if not path.is_file():
                    raise VesselSegError(f"{PLUGINS_VARIABLE}: plugin file {path} not found")
                modules.append(_import_file(path.resolve()))
            else:
                modules.append(importlib.import_module(item))
        except VesselSegError:
            raise
        except Exception as exc:  # a plugin's own bug or a missing module: one line, the plugin named
            raise VesselSegError(f"{PLUGINS_VARIABLE}: cannot import plugin {item!r}: {type(exc).__name__}: {exc}") from exc
    return modules
