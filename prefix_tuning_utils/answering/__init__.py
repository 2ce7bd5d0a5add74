"""The answering core: from sentences to label answers, for one model or for many adapters of one base model.

* :mod:`.scorer` (:class:`LabelScorer`): the model side, rank classification over the label words and generation,
  for a batch; with an :class:`AdapterBank`, each row of the batch answered by its own adapter;
* :mod:`.answers` (:class:`Answerer`): the label side, ranked labels (score mode) or the label word written
  (generate mode), the one answering path of evaluation, ``--do_predict``, the model card, the API and the server;
* :mod:`.bank` (:class:`AdapterBank`): many adapters' virtual tokens stacked beside one frozen base model.

The input format (:class:`~prefix_tuning_utils.input_format.InputFormat`) is the library's own small typed object;
the command line converts its arguments into it.
"""

from .answers import MODES, Answerer
from .bank import AdapterBank, BankedAdapter, VirtualTokens, bankable, read_adapter, read_adapter_config
from .scorer import LabelScorer


__all__ = [
    "MODES",
    "AdapterBank",
    "Answerer",
    "BankedAdapter",
    "LabelScorer",
    "VirtualTokens",
    "bankable",
    "read_adapter",
    "read_adapter_config",
]
