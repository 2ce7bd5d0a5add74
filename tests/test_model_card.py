"""The model card (prefix_tuning_utils/model_card.py, templates/model_card.md) of a `--prefix_scope all` run: it says
what the adapter is, and its own usage snippet, run as written, loads the adapter with every prefix."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import pytest
import torch
import yaml
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from prefix_tuning_utils import cli, model_card
from prefix_tuning_utils.all_layer_prefix import ADAPTER_CONFIG_KEY, WEIGHTS_NAME, get_all_layer_prefix
from tests.conftest import REPO


@pytest.fixture(scope="module")
def all_scope_run(tmp_path_factory):
    """The quickstart recipe with --prefix_scope all, a few steps (the base model is the local examples/tiny-t5)."""
    out = tmp_path_factory.mktemp("card") / "quickstart-all"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        torch.set_num_threads(1)
        trainer = cli.main(
            ["recipes/quickstart.yaml", "--output_dir", str(out), "--prefix_scope", "all", "--max_steps", "4",
             "--eval_strategy", "no"]
        )  # fmt: skip
    return out, trainer


def test_card_of_an_all_scope_run_says_so(all_scope_run):
    out, _ = all_scope_run
    assert (model_card.SCOPE_WEIGHTS, model_card.SCOPE_KEY) == (WEIGHTS_NAME, ADAPTER_CONFIG_KEY)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.count("## Prefix scope: all") == 1  # one writer: no note appended next to the card
    assert "encoder self-attention and cross-attention prefixes" in card
    assert "`import prefix_tuning_utils` is needed to load them" in card
    values = sum(t.numel() for t in load_file(out / WEIGHTS_NAME).values())
    assert f"| adapter file | `{WEIGHTS_NAME}`: {values:,} float32 values" in card
    assert "| prefix scope | `all`" in card
    assert json.loads((out / model_card.RUN_RECORD).read_text())["prefix"]["prefix_scope"] == "all"
    # The scope is read from adapter_config.json: the same record with a decoder adapter gives a decoder card.
    config = json.loads((out / "adapter_config.json").read_text())
    config.pop(ADAPTER_CONFIG_KEY)
    (out / "decoder").mkdir()
    (out / "decoder" / "adapter_config.json").write_text(json.dumps(config))
    record = json.loads((out / model_card.RUN_RECORD).read_text())
    record["prefix"]["prefix_scope"] = "decoder"
    (out / "decoder" / model_card.RUN_RECORD).write_text(json.dumps(record))
    decoder_card = str(model_card.render_model_card(out / "decoder"))
    assert "Prefix scope" not in decoder_card and WEIGHTS_NAME not in decoder_card


def test_card_snippet_loads_the_adapter_with_all_its_prefixes(all_scope_run, monkeypatch):
    out, trainer = all_scope_run
    card = (out / "README.md").read_text(encoding="utf-8")
    usage = re.findall(r"```python\n(.*?)```", card, re.S)[0]
    assert usage.startswith("import prefix_tuning_utils") and f'adapter = "{out}"' in usage
    monkeypatch.chdir(REPO)  # the base model is the recipe's local examples/tiny-t5
    namespace, stdout = {}, io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(usage, "model card: usage", "exec"), namespace)
    loaded = namespace["model"]
    # Every prefix: the encoder self-attention and cross-attention ones ...
    prefixes = get_all_layer_prefix(loaded)
    assert prefixes is not None, "the snippet loaded the decoder prefix only"
    saved, trained = load_file(out / WEIGHTS_NAME), get_all_layer_prefix(trainer.model).flat_state()
    got = prefixes.flat_state()
    assert set(got) == set(saved) == set(trained) and got
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
        torch.testing.assert_close(tensor, trained[name].detach().cpu(), rtol=0, atol=0)
    # ... and peft's decoder prefix.
    decoder = get_peft_model_state_dict(loaded)
    for name, tensor in load_file(out / "adapter_model.safetensors").items():
        torch.testing.assert_close(decoder[name], tensor, rtol=0, atol=0)
    # It answers what the card's comment says the trained model answered.
    expected = re.search(r"skip_special_tokens=True\)\)  # (.*)\n", usage).group(1)
    assert stdout.getvalue().strip() == expected


def test_card_of_a_base_without_pretrained_weights_says_so_first_and_publishes_no_scores(all_scope_run, tmp_path):
    """The quickstart's base (examples/tiny-t5: a config, no weights) is random: the card says so under its title, and
    its model-index (the Hub's evaluation results) is left out; the same run on a pretrained base keeps both."""
    out, _ = all_scope_run
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", card, re.S).group(1))
    assert "model-index" not in meta and meta["library_name"] == "peft"
    body = card.split("\n---\n", 1)[1]
    assert body.startswith(
        f"\n# {out.name}\n\n> **The base model has no pretrained weights.** `examples/tiny-t5` holds a config and no "
        "weights, so the base\n> model was initialised at random (and saved next to the adapter, in `base_model/`)."
    ), body[:400]
    assert "its scores are not those of a useful model" in body
    assert "| accuracy |" in body  # the scores are still shown, under the warning
    assert json.loads((out / model_card.RUN_RECORD).read_text())["base_model_pretrained"] is False

    pretrained = tmp_path / "pretrained"
    shutil.copytree(out, pretrained)
    record = json.loads((pretrained / model_card.RUN_RECORD).read_text())
    record["base_model_pretrained"] = True
    (pretrained / model_card.RUN_RECORD).write_text(json.dumps(record))
    other = str(model_card.render_model_card(pretrained))
    (index,) = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", other, re.S).group(1))["model-index"]
    results = json.loads((out / "all_results.json").read_text())
    assert index["results"][0]["metrics"][0]["value"] == results["eval_accuracy"]
    assert "no pretrained weights" not in other
