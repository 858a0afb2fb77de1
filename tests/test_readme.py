"""The README's set-up commands and code example stay true."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readme_code_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes model.safetensors
    example = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 (our own README)
    assert (tmp_path / "model.safetensors").stat().st_size > 100_000


def test_exactly_two_setup_commands_open_the_readme():
    head = README.split("## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", head, re.S)
    assert commands == ['pip install -e ".[examples]" && python examples/mnist.py',
                        'pip install -e ".[test]" && pytest']


def test_ci_installs_and_tests_the_readme_way():
    """CI runs the README's test command after installing the test extra, so a green CI
    means a reader's ``pip install -e ".[test]" && pytest`` works too."""
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert 'python -m pip install --quiet -e ".[test]"' in commands
    assert commands[-1] == "pytest"
