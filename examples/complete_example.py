"""The reference document's Complete Example, with its imports changed to `runner`.

Run it from a directory holding data.csv with a "target" column, e.g.:
    python examples/complete_example.py
"""

from pathlib import Path

from runner import CodeGenerator, ExperimentRunner, ExperimentSpec, PreprocessingConfig

# Create specification
spec = ExperimentSpec(
    experiment_name="logistic_baseline",
    hypothesis="Establish baseline with logistic regression",
    model_type="LogisticRegression",
    model_params={"C": 1.0, "max_iter": 1000},
    preprocessing=PreprocessingConfig(
        missing_values="median", scaling="standard", encoding="onehot"
    ),
    reasoning="Starting with simple linear model",
)

# Generate script
generator = CodeGenerator()
script_path = generator.generate(
    spec=spec, data_path=Path("data.csv"), target_column="target", task_type="classification"
)

# Run experiment
runner = ExperimentRunner(timeout=300)
result = runner.run(script_path=script_path, spec=spec, iteration=0)

# Check results
if result.success:
    print(f"✓ Experiment succeeded in {result.execution_time:.2f}s")
    print(f"Metrics: {result.metrics}")

    if "accuracy" in result.metrics:
        print(f"Accuracy: {result.metrics['accuracy']:.4f}")
else:
    print(f"✗ Experiment failed: {result.error_message}")
