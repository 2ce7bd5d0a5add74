#!/usr/bin/env bash
# Mutation testing (mutmut 3.x) of one module against the fast tests that cover it, in a scratch copy of the repo:
#
#   tools/mutation.sh MODULE [GIT_REF|-] [FUNCTION...]
#
# MODULE: readers, metrics, hub, predict, answering.scorer, answering.answers, answering.bank, classifier, trainer,
# setup_checks, checkpointing, cli, serving.batching, serving.app, serving.guard (a dotted name for a module of a
# subpackage). FUNCTION names (a function, or a method as Class.method) limit the run to the mutants of those
# functions (`-` for no GIT_REF):
#   tools/mutation.sh hub - _refuse_secrets upload _select files_to_publish
#
# The settings shared by every module are setup.cfg's [mutmut] section; which tests cover each module is its
# [mutation] section (pytest node ids or -k expressions). With GIT_REF, the tests come from that commit instead of
# the working tree (to measure a suite before a change); the code is always the working tree's. The copy and
# mutmut's state live in build/mutation/MODULE[-REF]/ (run `mutmut results` or `mutmut browse` there); the last
# line printed is the tally: mutants, killed, survived, no tests, timeout, suspicious. Install: pip install -e ".[mutation]".
# MUTATION_TIMEOUT_MULTIPLIER=N replaces setup.cfg's timeout_multiplier (20: a mutant that hangs costs 20x its
# tests' time; on an idle machine 4 is plenty), MUTATION_PROCESSES=N the 2 mutants run at once.
# Slow by design (each mutant reruns its tests): run one module at a time, under `nice`, never in .ci/run.
set -euo pipefail
module=${1:?usage: tools/mutation.sh MODULE [GIT_REF]}
ref=${2:-}
[ "$ref" = "-" ] && ref=""
shift $(( $# < 2 ? $# : 2 ))
patterns=()
for function in "$@"; do  # mutmut names a function's mutants module.x_name__mutmut_N, a method's module.xǁClassǁname__mutmut_N
    if [[ $function == *.* ]]; then
        patterns+=("prefix_tuning_utils.$module.xǁ${function%%.*}ǁ${function#*.}__mutmut_*")
    else
        patterns+=("prefix_tuning_utils.$module.x_${function}__mutmut_*")
    fi
done
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work="$root/build/mutation/$module${ref:+-$(git -C "$root" rev-parse --short "$ref")}"
file="prefix_tuning_utils/${module//.//}.py"
[ -f "$root/$file" ] || { echo "no module $file" >&2; exit 2; }

rm -rf "$work"
mkdir -p "$work"
# What the tests read: the package, the tests, the example model and data, the recipes (tracked files only).
git -C "$root" ls-files -z prefix_tuning_utils tests examples recipes accelerate_configs benchmarks run_prefix_tuning.py \
    setup.cfg | (cd "$root" && xargs -0 cp --parents -t "$work")
if [ -n "$ref" ]; then
    rm -rf "$work/tests"
    git -C "$root" archive "$ref" tests | tar -x -C "$work"
fi
# setup.cfg's [mutmut] section, narrowed to the module and the tests that cover it.
(cd "$work" && python - setup.cfg "$module" "$file") <<'PY'
import configparser, os, shlex, sys

path, module, file = sys.argv[1], sys.argv[2], sys.argv[3]
config = configparser.ConfigParser(interpolation=None)
config.read(path)
selection = config.get("mutation", module, fallback=None)
if selection is None:
    sys.exit(f"setup.cfg's [mutation] section names no tests for {module}")
def present(test: str) -> bool:  # a node id of a test function the checked-out suite has (an older one may not)
    file, _, name = test.partition("::")
    try:
        source = open(file).read()
    except FileNotFoundError:
        return False
    return not name or f"def {name.split('[')[0]}(" in source

tests = [test for test in shlex.split(selection) if present(test)]
print(f"{module}: {len(tests)} test files or functions selected")
config.set("mutmut", "only_mutate", file)
if os.environ.get("MUTATION_TIMEOUT_MULTIPLIER"):  # setup.cfg's 20 is for a loaded machine; an idle one needs less
    config.set("mutmut", "timeout_multiplier", os.environ["MUTATION_TIMEOUT_MULTIPLIER"])
config.set("mutmut", "pytest_add_cli_args_test_selection", "\n" + "\n".join(tests))
with open(path, "w") as handle:
    config.write(handle)
PY
cd "$work"
export FINANCIAL_PHRASEBANK_DIR=${FINANCIAL_PHRASEBANK_DIR:-$root/../shared/data/financial_phrasebank}
unset PYTHONPATH  # mutmut puts its mutated copy first on sys.path
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # setup.cfg's [mutmut] says why
nice -n 15 mutmut run --max-children "${MUTATION_PROCESSES:-2}" "${patterns[@]}" > mutmut.log 2>&1 ||
    { tail -c 3000 mutmut.log; exit 1; }
mutmut results --all true > results.txt
python - <<'PY'
import collections, re
counts = collections.Counter(line.rsplit(": ", 1)[1].strip() for line in open("results.txt") if ": " in line)
skipped = counts.pop("not checked", 0)  # mutants of functions outside the FUNCTION names
print(f"mutants {sum(counts.values())}, " + ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
      + (f" ({skipped} of other functions not run)" if skipped else ""))
PY
