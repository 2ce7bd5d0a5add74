"""prefix-tuning: adapt a frozen seq2seq model by training only a prefix, with peft and the HF Trainer.

Importing this package applies every patch in :mod:`prefix_tuning_utils.patching`: :mod:`prefix_tuning_utils.compat`
makes peft prefix models use their prefix in ``generate()`` on transformers >= 5.24 (a no-op where upstream is
right), and :mod:`prefix_tuning_utils.all_layer_prefix` saves and restores ``--prefix_scope all`` adapters through
peft's ``save_pretrained`` / ``from_pretrained``; it also registers the ``--prefix_scope all`` attention functions
with transformers.
"""

from . import all_layer_prefix, compat, patching


all_layer_prefix.register_attention_functions()
patching.apply()

__version__ = "0.1.0"
__all__ = ["all_layer_prefix", "compat", "patching", "__version__"]
