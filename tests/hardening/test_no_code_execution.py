"""No code execution from data: the sources never unpickle, eval or exec anything.

Loading weights, checkpoints, datasets or images must never run code from the file.
safetensors and IDX are plain data formats; this test keeps it that way by scanning the
Python sources (tokens, so words in docstrings and comments do not count) for:

* any name containing ``pickle`` (``pickle``, ``cPickle``, ``cloudpickle``,
  ``read_pickle``), and ``dill``, ``marshal``, ``shelve``, ``joblib``;
* calls of the built-ins ``eval``, ``exec``, ``compile`` and ``__import__`` (a method such as
  ``net.eval()`` of a torch module is an attribute, not the built-in, and is allowed);
* ``torch.load`` and ``torch.jit.load`` (both unpickle), ``yaml.load`` (use
  ``yaml.safe_load``), ``os.system`` and ``os.popen``;
* ``np.load`` / ``numpy.load`` calls that do not pass ``allow_pickle=False``, and
  ``allow_pickle=True`` anywhere.

Every finding is listed as ``file:line: what``. Downloads are covered by
``tests/datasets/test_mnist.py`` (pinned SHA-256, a mismatch deletes the file); here we
check that every pinned hash is a full SHA-256 and that every ``pooch.retrieve`` call
passes ``known_hash``.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("xpnn", "backends", "models", "examples", "weights", "scripts", "benchmarks")

BANNED_MODULES = {"dill", "marshal", "shelve", "joblib"}
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
BANNED_ATTRIBUTES = {("torch", "load"), ("jit", "load"), ("yaml", "load"), ("os", "system"),
                     ("os", "popen")}


def code_tokens(source: str) -> list[tokenize.TokenInfo]:
    """The tokens of ``source`` that are code: no comments, strings or layout."""
    skip = {tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    skip |= {getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE",
                                                  "FSTRING_END") if hasattr(tokenize, name)}
    return [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in skip]


def call_arguments(tokens, open_index: int) -> list[tokenize.TokenInfo]:
    """The tokens between the parenthesis at ``open_index`` and its match."""
    depth = 0
    for index in range(open_index, len(tokens)):
        if tokens[index].string in "([{":
            depth += 1
        elif tokens[index].string in ")]}":
            depth -= 1
            if depth == 0:
                return tokens[open_index + 1:index]
    return tokens[open_index + 1:]


def findings(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for every dangerous construct in ``source``."""
    tokens = code_tokens(source)
    found = []
    for i, token in enumerate(tokens):
        if token.type != tokenize.NAME:
            continue
        name, line = token.string, token.start[0]
        before = tokens[i - 1].string if i > 0 else ""
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        if "pickle" in name.lower():
            if name == "allow_pickle":
                value = tokens[i + 2].string if i + 2 < len(tokens) else ""
                if after == "=" and value != "False":
                    found.append((line, f"allow_pickle={value}"))
            else:
                found.append((line, f"uses {name}"))
        elif name in BANNED_MODULES and before in ("import", "from", ",", ""):
            found.append((line, f"imports {name}"))
        elif name in BANNED_BUILTINS and after == "(" and before not in (".", "def"):
            found.append((line, f"calls the built-in {name}()"))
        elif before == "." and i >= 2 and (tokens[i - 2].string, name) in BANNED_ATTRIBUTES \
                and after == "(":
            found.append((line, f"calls {tokens[i - 2].string}.{name}()"))
        elif name == "load" and before == "." and i >= 2 \
                and tokens[i - 2].string in ("np", "numpy") and after == "(":
            arguments = call_arguments(tokens, i + 1)
            text = " ".join(t.string for t in arguments)
            if not re.search(r"\ballow_pickle = False\b", text):
                found.append((line, f"calls {tokens[i - 2].string}.load() without "
                                    f"allow_pickle=False"))
    return found


def python_files() -> list[Path]:
    files = []
    for folder in FOLDERS:
        files += sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []
    return files


def test_the_scanner_catches_each_construct_and_ignores_words_in_text():
    source = '''
"""Docstring that mentions pickle, eval(x) and torch.load(f): words, not code."""
import pickle  # comment: exec(code)
from dill import loads
data = np.load(path)
safe = np.load(path, allow_pickle=False)
unsafe = numpy.load(path, allow_pickle=True)
value = eval(text)
exec(code)
module = __import__(name)
weights = torch.load(f)
config = yaml.load(stream)
net.eval()
os.system(command)
frame = pd.read_pickle(path)
'''
    got = findings(source)
    assert [line for line, _ in got] == [3, 4, 5, 7, 7, 8, 9, 10, 11, 12, 14, 15], got
    assert "calls np.load() without allow_pickle=False" in dict(got)[5]
    assert "allow_pickle=True" in [what for line, what in got if line == 7]


def test_the_scan_covers_the_package():
    names = {path.relative_to(ROOT).as_posix() for path in python_files()}
    assert {"xpnn/io/reading.py", "xpnn/io/darknet.py", "xpnn/datasets/mnist.py",
            "backends/selector.py", "models/preprocess.py", "examples/darknet53.py"} <= names


def test_no_pickle_eval_exec_or_unsafe_loads_in_the_sources():
    problems = []
    for path in python_files():
        for line, what in findings(path.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not problems, "code execution from data is possible:\n" + "\n".join(problems)


def test_every_download_is_pinned_to_a_sha256():
    from xpnn.datasets.mnist import DATASETS, FILES

    for spec in DATASETS.values():
        assert set(spec.sha256) == {stem + ".gz" for stem in FILES.values()}
        for digest in spec.sha256.values():
            assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
    for path in python_files():
        tokens = code_tokens(path.read_text(encoding="utf-8"))
        for i, token in enumerate(tokens):
            if token.string == "retrieve" and i + 1 < len(tokens) and tokens[i + 1].string == "(":
                arguments = " ".join(t.string for t in call_arguments(tokens, i + 1))
                assert "known_hash =" in arguments and "known_hash = None" not in arguments, (
                    f"{path.relative_to(ROOT)}:{token.start[0]}: pooch.retrieve without a hash")
