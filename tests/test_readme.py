"""The README's set-up commands and code example stay true."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readme_code_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes model.safetensors
    example = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 (our own README)
    assert (tmp_path / "model.safetensors").stat().st_size > 100_000


def test_the_benchmarks_readme_loop_runs_the_readmes_own_lines(monkeypatch):
    import inspect
    import textwrap

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # benchmarks/
    from benchmarks.mlp import readme_step

    body = inspect.getsource(readme_step).split('"""', 2)[2]
    lines = textwrap.dedent(body).strip().splitlines()
    lines = [line.split("  # noqa")[0] for line in lines]
    assert len(lines) == 4
    example = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    assert "\n".join(lines) in example


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


def common_mistakes() -> list[tuple[str, list[str]]]:
    """(what you did, [the quoted parts of what xpnn says]) for each row of the table."""
    section = README.split("## Common mistakes", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| what", "| ---")):
            continue
        did, says = (cell.strip() for cell in line.strip().strip("|").split(" | "))
        rows.append((did, re.findall(r"`([^`]+)`", says)))
    return rows


def test_common_mistakes_section_follows_benchmarks():
    titles = re.findall(r"^## (.+)$", README, re.M)
    assert "Common mistakes" in titles
    assert titles.index("Common mistakes") == titles.index("Benchmarks") + 1
    assert len(common_mistakes()) >= 10


def test_every_common_mistake_gets_the_message_the_readme_shows(tmp_path):
    """Rows whose first cell is a whole command are run (in an empty folder) and must exit
    2 printing the quoted text; the others (Ctrl-C, a missing library, ...) are pinned by
    tests/test_example_mnist.py, and their text must at least be in the code."""
    import os
    import shlex
    import subprocess
    import sys

    import xpnn

    root = Path(__file__).resolve().parents[1]
    code = "\n".join(path.read_text() for path in [*(root / "examples").glob("*.py"),
                                                   root / "backends" / "__main__.py"])
    (tmp_path / "results.png").write_bytes(b"not a folder")
    xpnn.io.save(xpnn.models.mnist_mlp(), tmp_path / "mlp.safetensors")
    env = {key: value for key, value in os.environ.items()
           if key not in ("XPNN_DATA", "XPNN_BACKEND", "XPNN_DARKNET53_WEIGHTS")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # no MNIST in a cache either
    ran = 0
    for did, quotes in common_mistakes():
        assert quotes, did
        command = re.fullmatch(r"`([^`]+)`(?: \(.*\))?", did)
        words = shlex.split(command.group(1)) if command else []
        if "python" not in words:
            for quote in quotes:
                fragment = quote.replace("run.ckpt", "").removeprefix("error: ").strip()
                templated = re.sub(r"^--[\w-]+", "{flag}", fragment)  # f"{flag} needs ..."
                assert fragment[:40] in code or templated[:40] in code, (did, quote)
            continue
        start = words.index("python")
        run_env = {**env, **dict(word.split("=", 1) for word in words[:start])}
        argv = [sys.executable, *words[start + 1:]]
        if argv[1].startswith("examples/"):
            argv[1] = str(root / argv[1])
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                             cwd=tmp_path, env=run_env)
        said = run.stdout + run.stderr
        assert run.returncode == 2, (did, said)
        assert "Traceback" not in said, did
        for quote in quotes:
            assert quote in said, (did, quote, said)
        ran += 1
    assert ran >= 8
