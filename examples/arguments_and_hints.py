"""A hand-written script with command-line options, and what a failed run tells you.

Run it from any directory (it writes ./experiments/argparse_forest/):
    python examples/arguments_and_hints.py
"""

import shutil
import textwrap
from pathlib import Path

from runner import ExperimentRunner, ExperimentSpec
from runner.cli.demo import demo_data

SCRIPT = textwrap.dedent(
    """
    import argparse, json
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--trees", type=int, default=100)
    options = parser.parse_args()

    frame = pd.get_dummies(pd.read_csv(options.data), drop_first=True)
    y = frame.pop(options.target + "_yes")
    model = RandomForestClassifier(n_estimators=options.trees, random_state=0)
    accuracy = cross_val_score(model, frame, y, cv=5).mean()
    print(json.dumps({"success": True, "metrics": {"accuracy": float(accuracy)}}))
    """
)

directory = Path("experiments") / "argparse_forest"
directory.mkdir(parents=True, exist_ok=True)
shutil.copy(demo_data(), directory / "churn.csv")
script = directory / "experiment.py"
script.write_text(SCRIPT)

spec = ExperimentSpec(experiment_name="argparse_forest", model_type="RandomForestClassifier")
runner = ExperimentRunner(timeout=120)

# args become the script's sys.argv[1:], exactly as given (no shell in between).
# Command line: runner run experiments/argparse_forest/experiment.py -- --data churn.csv ...
result = runner.run(
    script, spec, 0, args=["--data", "churn.csv", "--target", "churned", "--trees", "50"]
)
print(f"with arguments: success={result.success} metrics={result.metrics}")

# A failure the sandbox explains comes with a "Hint: ..." line after the script's error.
(directory / "plot.py").write_text("import seaborn\n")
failed = runner.run(directory / "plot.py", spec, 1)
print(f"without seaborn:\n{failed.error_message}")
