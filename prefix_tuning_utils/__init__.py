"""prefix-tuning: adapt a frozen seq2seq model by training only a prefix, with peft and the HF Trainer.

Importing this package applies :mod:`prefix_tuning_utils.compat`, which makes peft prefix models use their
prefix in ``generate()`` on transformers >= 5.24 (a no-op where upstream is right), and
:mod:`prefix_tuning_utils.all_layer_prefix`, which saves and restores ``--prefix_scope all`` adapters through peft's
``save_pretrained`` / ``from_pretrained``.
"""

from . import all_layer_prefix, compat


compat.apply()
all_layer_prefix.apply()

__version__ = "0.1.0"
__all__ = ["all_layer_prefix", "compat", "__version__"]
