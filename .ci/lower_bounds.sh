#!/usr/bin/env bash
# The oldest versions pyproject.toml allows, tested: a fresh venv with torch 2.13.0 (the only torch CI's
# machines have) and every other dependency at its lower bound (`>=X` read as `==X`), then a quick
# subset of the suite: config, store, training and LoRA through peft, evaluation, report, the CLI.
# A bound that fails here is raised in pyproject.toml, with what failed below it. About 4-5 minutes
# (2-3 to install, 2 to test).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${LOWER_BOUNDS_VENV:-}" ]]; then
  venv="$LOWER_BOUNDS_VENV"  # kept, to look into afterwards
else
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT  # torch alone is ~1 GB
  venv="$scratch/venv"
fi
python3 -m venv "$venv"
lower="$venv/lower-bounds.txt"
"$venv/bin/python" - >"$lower" <<'EOF'
import re, tomllib

for dependency in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.match(r"[A-Za-z0-9_.-]+", dependency).group()
    bound = re.search(r"(?:>=|==)\s*([^,;\s]+)", dependency)
    if name == "torch":
        print("torch==2.13.0")
    elif bound is None:
        raise SystemExit(f"pyproject.toml: {dependency!r} has no lower bound")
    else:
        print(f"{name}=={bound.group(1)}")
EOF
echo "lower bounds: $(tr '\n' ' ' <"$lower")"
# The bounds are constraints: learnforget's own requirements bring them in at exactly these versions, and
# pip fails if they cannot resolve together. pytest at the version the suite is tested with.
"$venv/bin/pip" install -q -c "$lower" -e . "$(grep '^pytest==' constraints.txt)"
"$venv/bin/python" -m pip check
"$venv/bin/python" -m pytest -q \
  tests/test_config.py tests/test_store.py tests/test_study.py tests/test_peft_arms.py \
  tests/test_targets.py tests/test_choice_generate.py tests/test_eval_device.py tests/test_report.py \
  tests/test_cli_tools.py
