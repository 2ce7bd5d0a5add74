"""prefix-tuning: adapt a frozen seq2seq model by training only a prefix, with peft and the HF Trainer.

Importing this package applies :mod:`prefix_tuning_utils.compat`, which makes peft prefix models use their
prefix in ``generate()`` on transformers >= 5.24 (a no-op where upstream is right).
"""

from . import compat


compat.apply()

__version__ = "0.1.0"
__all__ = ["compat", "__version__"]
