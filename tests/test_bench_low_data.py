"""benchmarks/bench_low_data.py: nested stratified subsets, the step rule, one `--quick` cell on a tiny Llama, resume."""

import json
from collections import Counter

import bench_low_data as bench  # benchmarks/ is on pytest's pythonpath (setup.cfg)
import pytest
from transformers import AutoConfig

from prefix_tuning_utils.arguments import DataTrainingArguments
from prefix_tuning_utils.data import read_data_file, stratified_split


@pytest.fixture
def phrasebank_env(phrasebank_dir, monkeypatch):
    monkeypatch.setenv("FINANCIAL_PHRASEBANK_DIR", str(phrasebank_dir))
    return phrasebank_dir


def test_held_out_is_bench_quality_split_and_subsets_are_nested_and_stratified(phrasebank_env):
    pool, held = bench.splits("sentences_allagree", "test")
    path = phrasebank_env / "Sentences_AllAgree.txt"
    data = read_data_file(str(path), DataTrainingArguments(train_file=str(path)), bench.LABELS)
    _, expected = stratified_split(data, 10, 42)
    assert (len(pool), len(held)) == (2037, 227) and held.texts == expected.texts
    sizes = [*bench.SIZES, len(pool)]
    one, two = bench.nested_subsets(pool.labels, sizes, 1), bench.nested_subsets(pool.labels, sizes, 2)
    share = Counter(pool.labels)
    for small, large in zip(sizes, sizes[1:]):
        assert set(one[small]) < set(one[large]), f"{small} is not inside {large}"
    for size in bench.SIZES:
        assert len(one[size]) == size and one[size] != two[size], "the seed must change the subset"
        counts = Counter(pool.labels[i] for i in one[size])
        for label, n in share.items():
            assert abs(counts[label] - size * n / len(pool)) <= 1, (size, label, counts)
    inner_pool, inner_held = bench.splits("sentences_allagree", "inner")
    assert (len(inner_pool), len(inner_held)) == (1833, 204) and not set(inner_held.texts) & set(held.texts)


def test_step_rule_gives_at_least_min_steps_and_two_epochs():
    assert [bench.epochs_for(n) for n in (32, 64, 128, 256, 512, 2037, 4361)] == [25, 13, 7, 4, 2, 2, 2]
    assert [bench.epochs_for(n, 100, 1) for n in (32, 64, 128, 256, 512, 2037)] == [25, 13, 7, 4, 2, 1]
    for n in (32, 100, 2037):
        assert bench.epochs_for(n) * -(-n // bench.BATCH_SIZE) >= 100 and bench.epochs_for(n) >= 2


@pytest.mark.slow
def test_quick_cell_runs_once_and_a_rerun_resumes(tmp_path, tiny_llama_dir, phrasebank_env, capsys):
    results = tmp_path / "low_data.jsonl"
    argv = [
        "--quick", "--model_dir", str(tiny_llama_dir), "--results", str(results), "--work_dir", str(tmp_path / "w"),
        "--run_args", "--max_steps 2 --num_virtual_tokens 8 --max_eval_samples 32",
    ]  # fmt: skip
    bench.main(argv)
    rows = bench.load_results(results)
    assert len(rows) == 1
    row = rows[0]
    assert (row["method"], row["size"], row["seed"], row["epochs"]) == ("prefix", 32, 1, 25)
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
    # The evaluation size: the cell writes the 227 held-out sentences, and --max_eval_samples 32 (the run's own
    # flag) evaluates the first 32 of them; the 2-step training saw the 32 sentences of the size-32 subset.
    run = json.loads((tmp_path / "w" / bench.cell_name(row) / "run" / "all_results.json").read_text())
    assert (run["eval_samples"], run["train_samples"], row["heldout"]) == (32, 32, 227)
    held_out = (tmp_path / "w" / bench.cell_name(row) / "heldout.txt").read_bytes()
    assert len(held_out.decode("iso-8859-1").splitlines()) == 227
    per_token = bench.parameters_per_virtual_token(AutoConfig.from_pretrained(tiny_llama_dir))
    assert row["trainable"] == 8 * per_token, "the per-token count must match what peft trains"
    assert row["virtual_tokens"] == 8, "the row records the prefix length the run trained, not the recipe's"
    train = (tmp_path / "w" / bench.cell_name(row) / "train.txt").read_bytes()
    assert len(train.decode("iso-8859-1").splitlines()) == 32
    capsys.readouterr()
    bench.main(argv)
    assert "skip (finished)" in capsys.readouterr().out
    assert bench.load_results(results) == rows, "a rerun must not run or append a finished cell"
    # A setting tried on the inner split runs through the script with the method's conflicting flag dropped.
    setting = "--prefix_init_text - --prefix_projection True"
    bench.main([*argv, "--holdout", "inner", "--settings", setting])
    tried = bench.load_results(results)[-1]
    assert (tried["holdout"], tried["heldout"], tried["setting"]) == ("inner", 204, setting)
    assert tried["trainable"] > row["trainable"], "the projection's MLP trains on top of the prefix"
    # A cell whose run fails stops the bench with the run's own last line; the finished cells stay.
    kept = results.read_bytes()
    with pytest.raises(SystemExit) as err:
        bench.main([*argv, "--holdout", "inner", "--model_dir", str(tmp_path / "missing")])
    message = str(err.value.code)
    assert "failed (exit code 2)" in message and "missing" in message.splitlines()[0], message
    assert "rerun the same command" in message and results.read_bytes() == kept


def test_settings_are_tried_on_the_inner_split_only(capsys):
    settings = ["--learning_rate 3e-2", "--prefix_init_text - --prefix_projection True"]
    args = bench.parse_args(["--holdout", "inner", "--methods", "prefix", "full", "--sizes", "32", "--seeds", "1",
                             "--settings", *settings, "--model_dir", "unused"])  # fmt: skip
    cells = bench.cells(args, 1833)
    assert [(c["method"], c["setting"]) for c in cells] == [(m, s) for m in ("prefix", "full") for s in settings]
    default = {k: v for k, v in cells[0].items() if k != "setting"}
    assert len({bench.cell_key(c) for c in [*cells, default]}) == 5, "a tried setting must not resume the default cell"

    def values(flags, name):
        return [flags[i + 1] for i, f in enumerate(flags) if f == name]

    full = bench.cell_flags(cells[2], None)  # full at 3e-2: the method's two rates (recipe's, full's) replaced
    assert values(full, "--learning_rate") == ["3e-2"] and values(full, "--num_train_epochs")[-1] == "25"
    projected = bench.cell_flags(cells[1], None)
    assert "--prefix_init_text" not in projected and values(projected, "--prefix_projection") == ["True"]
    recipe = bench.cell_flags(default, None)
    assert values(recipe, "--learning_rate")[-1] == "0.01" and len(values(recipe, "--prefix_init_text")) == 1
    assert recipe[recipe.index("--prompt_template") + 1] == projected[projected.index("--prompt_template") + 1]
    long = [{**cells[0], "setting": f'--prefix_init_text "{"x" * 300}{end}"'} for end in "ab"]
    names = [bench.cell_name(c) for c in long]
    assert names[0] != names[1] and max(map(len, names)) < 120, "a folder name must stay short and unique"
    capsys.readouterr()
    for argv, says in (
        (["--settings", "--learning_rate 3e-2"], "add `--holdout inner`"),
        (["--holdout", "inner", "--settings", "--learnin_rate 3e-2"], "did you mean --learning_rate?"),
        (["--holdout", "inner", "--settings", "3e-2"], "give run_prefix_tuning.py flags"),
        (["--holdout", "inner", "--settings", "--num_train_epochs 3"], "change it with --min_steps"),
    ):
        with pytest.raises(SystemExit) as err:
            bench.parse_args([*argv, "--model_dir", "unused"])
        assert err.value.code == 2 and says in capsys.readouterr().err.splitlines()[-1], argv


def test_prefix_examples_is_the_recipe_with_another_init_text():
    cell = {
        "data": "sentences_allagree",
        "holdout": "test",
        "method": "prefix",
        "size": 32,
        "seed": 1,
        "min_steps": 100,
    }
    recipe, examples = bench.cell_flags(cell, None), bench.cell_flags({**cell, "method": "prefix-examples"}, None)
    texts = [f[i + 1] for f in (recipe, examples) for i, flag in enumerate(f) if flag == "--prefix_init_text"]
    assert texts[1:] == [bench.EXAMPLES_INIT_TEXT] and texts[0] != texts[1]
    without = [[x for x in f if x not in texts] for f in (recipe, examples)]
    assert sorted(without[0]) == sorted(without[1]), "only the initialisation text may differ from the recipe"


def test_tokens_for_a_thousandth_of_the_parameters(tiny_llama_dir):
    share = bench.tokens_for_share(str(tiny_llama_dir), None, share=0.02)
    assert share["per_token"] == 64 and share["model_parameters"] == 24096
    assert share["tokens"] == round(0.02 * 24096 / 64)


def test_table_and_plot_from_rows(tmp_path):
    rows = [
        {"data": "sentences_allagree", "holdout": "test", "method": "zero-shot", "size": 0, "seed": 0,
         "min_steps": 0, "accuracy": 0.3},
        *({"data": "sentences_allagree", "holdout": "test", "method": "prefix", "size": 32, "seed": s,
           "min_steps": 100, "accuracy": a} for s, a in ((1, 0.6), (2, 0.8), (3, 0.7))),
        {"data": "sentences_allagree", "holdout": "test", "method": "full", "size": 32, "seed": 1,
         "min_steps": 50, "accuracy": 0.9},  # another step rule: not in the table
    ]  # fmt: skip
    summary = bench.summarise(rows)
    text = bench.markdown_table(summary, [32, 2037])
    # Each cell: the mean, its 95 % Wilson interval over the 227 sentences (by hand: 0.637-0.756 and 0.244-0.363),
    # the seeds' range.
    assert "| prefix | 0.7000 [0.637–0.756] (0.6000–0.8000, 3 seeds) | not run |" in text
    assert "| zero-shot | 0.3000 [0.244–0.363] | 0.3000 [0.244–0.363] |" in text and "full" not in text
    goals = bench.goals(summary, rows, 2037)
    assert "32: prefix 0.7000 vs full" not in goals and "32: not yet measured" in goals  # full's cell is another rule
    assert "FinBERT's 0.86 accuracy on Sentences_50Agree: **not yet measured**" in goals
    assert "**not run yet**" in bench.inner_table(rows)
    inner = [{"data": "sentences_allagree", "holdout": "inner", "method": "prefix", "size": 32, "seed": 1,
              "min_steps": m, "epochs": e, "heldout": 204, "accuracy": a, "macro_f1": a - 0.1}
             for m, e, a in ((200, 50, 0.85), (50, 13, 0.8))]  # fmt: skip
    table = bench.inner_table(rows + inner)
    assert (
        "(204 held out" in table
        and "| prefix | 32 | 50 | 13 | the method's | 1 | 0.8000 [0.740–0.849] | 0.7000 |" in table
    )
    assert table.index("| 50 | 13 |") < table.index("| 200 | 50 |")  # ordered by floor of steps
    tried = {**inner[0], "min_steps": 100, "epochs": 25, "setting": "--learning_rate 3e-2", "accuracy": 0.9}
    assert "| prefix | 32 | 100 | 25 | `--learning_rate 3e-2` | 1 | 0.9000 [0.851–0.934] |" in bench.inner_table(
        rows + inner + [tried]
    )
    text = {**tried, "setting": '--prefix_init_text "a | b\nc' + " long" * 30 + '"'}
    row = bench.inner_table([text]).splitlines()[-1]
    assert '`--prefix_init_text "a \\| b\\nc long' in row and row.count(" | ") == 7 and "…`" in row and len(row) < 160
    assert "0.3000" not in table  # cells scored on the 227 are not part of the check
    bench.plot(summary, [32, 2037], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("sizes", [["0"], ["ten"], ["5000"]])
def test_bad_sizes_are_refused(sizes, tmp_path, tiny_llama_dir, phrasebank_env):
    argv = ["--model_dir", str(tiny_llama_dir), "--results", str(tmp_path / "r.jsonl"), "--work_dir", str(tmp_path)]
    argv += ["--sizes", *sizes]
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    assert err.value.code != 0 and not (tmp_path / "r.jsonl").exists()


def test_readme_table_goes_between_its_markers_and_nothing_else_changes(tmp_path):
    from common import replace_block

    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n\nbefore\n<!-- bench_low_data:start -->\nold table\n<!-- bench_low_data:end -->\nafter\n"
    )
    replace_block(readme, "bench_low_data", "| a | b |")
    replace_block(readme, "bench_low_data", "| new | table |")  # again: replaced, not stacked
    expected = "# Top\n\nbefore\n<!-- bench_low_data:start -->\n| new | table |\n<!-- bench_low_data:end -->\nafter\n"
    assert readme.read_text() == expected
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="must hold the lines <!-- bench_low_data:start -->"):
        replace_block(readme, "bench_low_data", "| a | b |")
    assert readme.read_text() == "no markers here\n"  # left as it was


def test_cells_run_with_other_run_args_do_not_count_as_finished():
    cell = {"data": "sentences_allagree", "holdout": "test", "method": "prefix", "size": 32, "seed": 1,
            "min_steps": 100}  # fmt: skip
    tiny = {**cell, "accuracy": 0.4, "run_args": "--max_steps 2"}
    assert bench.cell_key(cell) not in bench.finished_cells([tiny], "")  # the real cell still runs
    assert bench.cell_key(cell) in bench.finished_cells([tiny], "--max_steps 2")  # the same test command resumes
    assert bench.cell_key(cell) in bench.finished_cells([{**cell, "accuracy": 0.9}], "")


@pytest.mark.parametrize(
    ("prefix", "full", "verdict"),
    [
        ((0.97, 0.97, 0.97), (0.98, 0.98, 0.98), "**met: prefix 1.0 points behind full**"),
        ((0.97, 0.97, 0.97), (0.99, 0.98, 0.99), "**not met: prefix 1.7 points behind full**"),
        ((0.99, 0.99, 0.99), (0.98, 0.98, 0.98), "**met: prefix 1.0 points ahead of full**"),
        ((0.97,), (0.98, 0.99, 0.99), "**not met: prefix 1.7 points behind full (fewer than 3 seeds: provisional)**"),
    ],
)
def test_goal_at_full_size_compares_the_means(prefix, full, verdict):
    rows = [
        {"data": "sentences_allagree", "holdout": "test", "method": method, "size": 2037, "seed": seed,
         "min_steps": 100, "epochs": bench.epochs_for(2037), "accuracy": accuracy}
        for method, values in (("prefix", prefix), ("full", full)) for seed, accuracy in enumerate(values, 1)
    ]  # fmt: skip
    assert verdict in bench.goals(bench.summarise(rows), rows, 2037).splitlines()[0]


@pytest.mark.parametrize(
    ("prefix", "full", "verdict"),
    [
        ({32: 0.90, 64: 0.93, 128: 0.95}, {32: 0.90, 64: 0.92, 128: 0.94}, "**met**"),
        ({32: 0.85, 64: 0.93, 128: 0.95}, {32: 0.90, 64: 0.92, 128: 0.94}, "**not met**"),
        ({32: 0.85}, {32: 0.90}, "**not met**"),  # one size below already decides it
        ({32: 0.95, 64: 0.95}, {32: 0.90, 64: 0.90}, "**not yet measured**"),  # 128 missing: not "met" yet
    ],
)
def test_goal_with_little_data_needs_every_size_at_or_above_full(prefix, full, verdict):
    rows = [
        {"data": "sentences_allagree", "holdout": "test", "method": method, "size": size, "seed": 1,
         "min_steps": 100, "epochs": bench.epochs_for(size), "accuracy": accuracy}
        for method, values in (("prefix", prefix), ("full", full)) for size, accuracy in values.items()
    ]  # fmt: skip
    line = bench.goals(bench.summarise(rows), rows, 2037).splitlines()[1]
    assert line.startswith("2. ") and line.endswith(f": {verdict}.")


def test_floor_of_epochs_changes_only_the_sizes_it_reaches():
    assert [bench.epochs_for(n, 100, 2) for n in (32, 64, 128, 256, 512, 2037, 4361)] == [25, 13, 7, 4, 2, 2, 2]
    args = bench.parse_args(["--holdout", "inner", "--sizes", "32", "all", "--seeds", "1", "--methods", "prefix",
                             "--min_steps", "100", "300", "--min_epochs", "2", "--gguf_file", bench.GGUF_NAME,
                             "--model_dir", "unused"])  # fmt: skip
    todo = bench.cells(args, 1833)
    assert [bench.cell_epochs(c) for c in todo] == [25, 75, 2, 2]
    # at 1,833 sentences both floors give 2 epochs: the same run, one key (the second resumes from the first)
    assert len({bench.cell_key(c) for c in todo}) == 3
    old = {**todo[3], "min_steps": 300, "epochs": 2}  # a row written before the floor of epochs existed
    del old["min_epochs"]
    assert bench.cell_key(old) in bench.finished_cells([old], "")
    assert bench.cell_key(todo[2]) in bench.finished_cells([old], "")
    assert "e2" in bench.cell_name(todo[2]) and "e2" not in bench.cell_name(old)


@pytest.mark.parametrize("flags", [["--min_epochs", "0"], ["--min_steps", "-1"]])
def test_floors_below_one_epoch_or_zero_steps_are_refused(flags, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(flags)
    assert "--min_epochs integers >= 1" in capsys.readouterr().err


def test_table_keeps_the_rows_of_the_step_rule_only(monkeypatch):
    def row(method, size, epochs, accuracy, data="sentences_allagree"):
        return {"data": data, "holdout": "test", "method": method, "size": size, "seed": 1, "min_steps": 100,
                "epochs": epochs, "accuracy": accuracy, "macro_f1": accuracy - 0.02,
                "heldout": 485 if data == "sentences_50agree" else 227}  # fmt: skip

    rows = [row("prefix", 32, 25, 0.8), row("prefix", 2037, 1, 0.96), row("prefix", 2037, 2, 0.98),
            row("prefix", 4361, 1, 0.83, "sentences_50agree")]  # fmt: skip
    monkeypatch.setattr(bench, "MIN_EPOCHS", 2)
    summary = bench.summarise(rows)
    assert summary["prefix"] == {32: [0.8], 2037: [0.98]}  # the 1-epoch cell is another rule's
    fin = bench.finbert_table(rows)
    assert "| prefix | 1 (the step rule: 2; not run yet) | 1 | 0.8300" in fin
    assert "0.8300 (1 seed, 1 epoch(s), not yet by the step rule): **not met**" in bench.goals(summary, rows, 2037)
    monkeypatch.setattr(bench, "MIN_EPOCHS", 1)
    assert bench.summarise(rows)["prefix"] == {32: [0.8], 2037: [0.96]}
    assert "| prefix | 1 | 1 | 0.8300" in bench.finbert_table(rows)
    rows.append(row("prefix", 4361, 2, 0.87, "sentences_50agree"))  # once the rule's cell is run, it alone counts
    monkeypatch.setattr(bench, "MIN_EPOCHS", 2)
    assert "| prefix | 2 | 1 | 0.8700 [0.837–0.897] (0.8700–0.8700)" in bench.finbert_table(rows)  # Wilson, 485
    assert "0.8700 (1 seed): **met**" in bench.goals(bench.summarise(rows), rows, 2037)


def test_rows_of_another_model_are_neither_finished_cells_nor_in_the_readme_nor_in_its_folder(tmp_path, monkeypatch):
    args = bench.parse_args(["--sizes", "32", "--seeds", "1", "--methods", "prefix", "--model_dir", str(tmp_path)])
    (cell,) = bench.cells(args, 2037)
    other = {**cell, "epochs": 25, "accuracy": 0.5, "macro_f1": 0.4}  # run with --model_dir, into the same file
    assert cell["model"] == str(tmp_path) and bench.cell_key(cell) in bench.finished_cells([other], "")
    smol = {**cell, "model": bench.GGUF_NAME}
    assert bench.cell_key(smol) not in bench.finished_cells([other], "")  # SmolLM2's cell still runs
    legacy = {k: v for k, v in smol.items() if k != "model"}  # rows written before the model was named: SmolLM2's
    assert bench.cell_key(smol) in bench.finished_cells([{**legacy, "epochs": 25}], "")
    folders = {bench.cell_name(c) for c in (cell, smol, legacy)}  # SmolLM2's folder is not another model's
    assert len(folders) == 2 and bench.cell_name(smol) == bench.cell_name(legacy)
    assert bench.cell_name(cell).endswith(bench.cell_name(smol)) and len(bench.cell_name(cell)) < 150
    written = {}
    monkeypatch.setattr(bench, "write_readme_block", lambda *a: written.setdefault("bench", a[2]))
    monkeypatch.setattr(bench, "PLOT", tmp_path / "p.png")
    bench.write_readme([other, {**legacy, "epochs": 25, "accuracy": 0.75, "macro_f1": 0.7}])
    # benchmarks/README.md holds the one copy of the table (docs/quality.md links to it; README.md has no block now)
    assert "| prefix | 0.7500 [0.690–0.802] (1 seed) |" in written["bench"] and "0.5000" not in written["bench"]
