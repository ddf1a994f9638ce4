"""Safety: pickles from user folders are read with an allowlist (nothing in them is called),
no unsafe deserialisation or eval/exec in the shipped code, and every server the project starts
or documents binds to 127.0.0.1 only."""

from __future__ import annotations

import ast
import gzip
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hgbench import registry
from hgbench.plugins.dataset import cifar10, mnist
from hgbench.plugins.dataset.cifar10 import UnsafePickleError
from helpers import dotted

ROOT = Path(__file__).resolve().parent.parent
ANY_ADDRESS = ".".join(["0"] * 4)  # the wildcard address, spelled so this file does not contain it


# --- pickles --------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls ``func(*args)`` — what a tampered pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def batch(n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def write_cifar(folder: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / f).write_bytes(pickle.dumps(batch(4, i), protocol=protocol))
    names = [n.encode() for n in cifar10.CLASSES]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_cases_per_batch": 4}, protocol=protocol))
    return folder


class Python2Pickler(pickle._Pickler):
    """Writes bytes and str the way Python 2's cPickle wrote ``str`` (BINSTRING), as in the real
    CIFAR-10 files (Python 3 would use ``_codecs.encode`` at protocol 2)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write((pickle.SHORT_BINSTRING + bytes([len(raw)]) if len(raw) < 256 else pickle.BINSTRING + struct.pack("<i", len(raw))) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def python2_style(obj) -> bytes:
    import io

    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump(obj)
    # Python 2's numpy is numpy.core (numpy 2 writes numpy._core)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_real_file_format_loads_with_the_restricted_unpickler(tmp_path):
    """Every way a CIFAR-10 batch can be written: Python 2's protocol-2 files (the download) and
    Python 3's protocols 3-5 (protocol 5 writes arrays with ``_frombuffer``)."""
    b = batch(5)
    raw = python2_style(b)
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    files = {"py2": raw, **{f"p{p}": pickle.dumps(b, protocol=p) for p in (3, 4, 5)}}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        x, y = cifar10.read_batch(tmp_path / name)
        assert x.shape == (5, 3, 32, 32) and y.tolist() == b[b"labels"], name
        assert np.array_equal(x.reshape(5, -1).numpy(), b[b"data"]), name
    (tmp_path / "meta").write_bytes(python2_style({b"label_names": [n.encode() for n in cifar10.CLASSES]}))
    with open(tmp_path / "meta", "rb") as f:
        assert cifar10.restricted_load(f, tmp_path / "meta", "a CIFAR-10 batch")[b"label_names"][0] == b"airplane"


def attacks(marker: Path) -> dict[str, tuple[object, str]]:
    """name -> (payload, the global the error must name); each would create ``marker`` if run."""
    return {
        "os.system": (Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "builtins.eval": (Payload(eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"),
        "builtins.exec": (Payload(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
        "subprocess.call": (Payload(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
    }


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call"])
@pytest.mark.parametrize("where", ["whole file", "inside a valid batch"])
def test_malicious_pickle_is_refused_without_running_anything(tmp_path, attack, where):
    marker = tmp_path / "pwned"
    payload, name = attacks(marker)[attack]
    obj = payload if where == "whole file" else {**batch(3), b"labels": payload}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(UnsafePickleError) as err:
        cifar10.read_batch(path)
    assert str(path) in str(err.value) and f"'{name}'" in str(err.value), str(err.value)
    assert "it was not called" in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI reports it in one line, like bad input
    assert not marker.exists(), "the payload ran"


def test_a_module_named_in_a_pickle_is_not_even_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "hgbench_evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "test_batch"
    path.write_bytes(b"\x80\x02chgbench_evil_mod\nf\n)R.")  # GLOBAL hgbench_evil_mod.f, call it
    with pytest.raises(UnsafePickleError, match="'hgbench_evil_mod.f'"):
        cifar10.read_batch(path)
    assert "hgbench_evil_mod" not in sys.modules and not marker.exists()


def test_the_dataset_refuses_a_tampered_batch_or_meta_file_naming_it(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    d = registry.get("dataset", "cifar10")(root=str(folder), train_size=16, val_size=4, test_size=None).load()
    assert len(d.train.x) == 16 and d.meta["classes"][0] == "airplane"  # the genuine folder loads
    marker = tmp_path / "pwned"
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(pickle.dumps({**batch(4), b"data": Payload(os.system, f"touch {marker}")}))
    with pytest.raises(UnsafePickleError, match=re.escape(f"{folder / 'data_batch_3'}: refused to load the global '{os.system.__module__}.system'")):
        registry.get("dataset", "cifar10")(root=str(folder), train_size=16, val_size=4, test_size=None).load()
    (folder / "data_batch_3").write_bytes(good)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Payload(eval, f"open({str(marker)!r}, 'w')")}))
    with pytest.raises(UnsafePickleError, match=re.escape(str(folder / "batches.meta")) + ".*'builtins.eval'"):
        registry.get("dataset", "cifar10")(root=str(folder), train_size=16, val_size=4, test_size=None).load()
    assert not marker.exists()


def test_a_damaged_batch_is_a_clear_error_naming_the_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch(4))[:200])
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a readable pickle of a CIFAR-10 python batch"):
        cifar10.read_batch(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="is not a CIFAR-10 python batch"):
        cifar10.read_batch(path)


@pytest.mark.slow
def test_the_cli_reports_a_tampered_cifar_folder_in_one_line(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps(Payload(os.system, f"touch {marker}")))
    from helpers import hgbench_in_process  # the command's main(), in this process: the payload would run here too

    out = hgbench_in_process(tmp_path, "dataset=cifar10", f"dataset.root={folder}", "dataset.train_size=16", "dataset.val_size=4",
                             "dataset.test_size=4", "model.hidden=[8]", "hyper_steps=1", "mlflow.enabled=false")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in text, text[-3000:]
    assert "refused to load the global" in text and str(folder / "test_batch") in text, text[-3000:]
    assert not marker.exists()


def test_mnist_reads_only_the_packaged_pickle_and_through_the_allowlist(tmp_path, monkeypatch):
    # no user path: the dataset has no folder/file parameter and read_pickle takes no arguments
    fields = set(registry.get("dataset", "mnist").__dataclass_fields__)
    assert not fields & {"root", "path", "file", "dir", "url"}, fields
    assert mnist.read_pickle.__wrapped__.__code__.co_argcount == 0
    # ... and even a planted package (importlib.resources resolves 'mnist' on sys.path) is refused
    marker = tmp_path / "pwned"
    (tmp_path / "data").mkdir()
    with gzip.open(tmp_path / "data" / "mnist.pkl.gz", "wb") as f:
        pickle.dump(Payload(os.system, f"touch {marker}"), f, protocol=2)
    monkeypatch.setattr(mnist.importlib.resources, "files", lambda name: tmp_path)
    with pytest.raises(UnsafePickleError, match="mnist.pkl.gz.*refused to load the global"):
        mnist.read_pickle.__wrapped__()
    assert not marker.exists()


# --- no unsafe loads / eval in the shipped code ---------------------------------------------
SHIPPED = ("framework", "plugins", "conf", "examples")


def shipped_python_files():
    for top in SHIPPED:
        for p in sorted((ROOT / top).rglob("*.py")):
            if not any(part in (".venv", "build", "__pycache__") or part.endswith(".egg-info") for part in p.parts):
                yield p



def keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value for k in call.keywords)


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "_pickle.load", "dill.load", "dill.loads",
                    "marshal.load", "marshal.loads", "shelve.open", "joblib.load", "cloudpickle.load", "cloudpickle.loads",
                    "pandas.read_pickle", "pd.read_pickle", "numpy.lib.format.read_array"):
            found.append((node.lineno, f"{name}() deserialises arbitrary objects"))
        elif name in ("torch.load",) and not keyword_is(node, "weights_only", True):
            found.append((node.lineno, "torch.load() without weights_only=True"))
        elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append((node.lineno, f"{name}() (use yaml.safe_load)"))
        elif name in ("np.load", "numpy.load") and keyword_is(node, "allow_pickle", True):
            found.append((node.lineno, f"{name}(allow_pickle=True)"))
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile", "os.system", "os.popen"):
            found.append((node.lineno, f"{name}()"))
        elif name.startswith("subprocess.") and keyword_is(node, "shell", True):
            found.append((node.lineno, f"{name}(shell=True)"))
    return found


def test_the_checker_finds_what_it_looks_for():
    bad = "import pickle, torch, yaml\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nyaml.load(s)\neval('1')\nexec('x')\n"
    assert [line for line, _ in unsafe_calls(bad)] == [2, 3, 4, 5, 6, 7]
    ok = "torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(s)\nmodel.eval()\nRestrictedUnpickler(f, p, 'x').load()\n"
    assert unsafe_calls(ok) == []


def test_no_unsafe_deserialisation_or_eval_in_the_shipped_code():
    problems = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in shipped_python_files()
                for line, what in unsafe_calls(p.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


# --- servers bind to 127.0.0.1 --------------------------------------------------------------
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "multirun", "outputs", "mlruns", "mlartifacts",
             "node_modules", "build", "dist"}
SERVER_CMD = re.compile(r"\bmlflow\s+(?:ui|server)\b(?=[^\n`]*\s-)")  # a command line: mlflow ui/server with options
HOST_ARG = re.compile(r"--host(?:=|\s+|[\"']\s*,\s*[\"'])([^\s\"',\]\)`]+)")  # --host X, --host=X, "--host", "X"
WILDCARD_BIND = re.compile(re.escape(ANY_ADDRESS) + r"|(?:--host|--bind|host\s*[=:])\s*[\"']?::(?![\w:])")


def text_files():
    """Every text file of the project (README, docs, code, configs, CI), not the virtualenv."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for f in filenames:
            p = Path(dirpath) / f
            if p.suffix in (".png", ".jpg", ".gz", ".db", ".pt", ".pkl", ".whl", ".so", ".pyc") or p.stat().st_size > 2_000_000:
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if "\0" not in text:
                yield p, text


def logical_lines(text: str):
    """(line number, line) with shell continuations (a trailing backslash) joined."""
    buf, start = "", 0
    for i, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = i
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield start, buf + line
        buf = ""
    if buf:
        yield start, buf


def code_parts(path: Path, text: str):
    """What is code: all of a non-Markdown file; in Markdown, fenced blocks and `inline code`."""
    if path.suffix.lower() not in (".md", ".rst"):
        yield from logical_lines(text)
        return
    fenced, block, start = False, [], 0
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            if fenced:
                for j, logical in logical_lines("\n".join(block)):
                    yield start + j, logical
            fenced, block, start = not fenced, [], i
            continue
        if fenced:
            block.append(line)
        else:
            for m in re.finditer(r"`([^`]+)`", line):
                yield i, m.group(1)


def python_strings(nodes: list[ast.AST]):
    """(line, text) of each string literal of a Python file (f-strings with {…} for the values),
    except substrings looked for in output (``"…" in out``): those start nothing. ``nodes``: the
    file's ``ast.walk(tree)``, walked once for all the checks."""
    searched = {id(n.left) for n in nodes if isinstance(n, ast.Compare) and isinstance(n.ops[0], (ast.In, ast.NotIn))}
    inner = {id(v) for n in nodes if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in nodes:
        if id(node) in searched or id(node) in inner:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{…}" for v in node.values)


def binding_problems(path: Path, text: str) -> list[str]:
    rel, out = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path, []
    for line, code in code_parts(path, text):
        for m in HOST_ARG.finditer(code):
            if m.group(1) != "127.0.0.1":
                out.append(f"{rel}:{line}: binds {m.group(1)!r}, not 127.0.0.1: {code.strip()[:160]}")
        if WILDCARD_BIND.search(code):
            out.append(f"{rel}:{line}: the wildcard address: {code.strip()[:160]}")
    nodes = list(ast.walk(ast.parse(text))) if path.suffix == ".py" else []
    commands = code_parts(path, text) if path.suffix != ".py" else python_strings(nodes)
    for line, code in commands:
        if SERVER_CMD.search(code) and not re.search(r"(?:--host[= ]|(?<![\w-])-h )127\.0\.0\.1\b", code):
            out.append(f"{rel}:{line}: starts a server without --host 127.0.0.1: {code.strip()[:160]}")
    if path.suffix == ".py":  # commands built as lists: ["mlflow", "server", ..., "--host", "127.0.0.1"]
        for node in nodes:
            if isinstance(node, (ast.List, ast.Tuple)):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if {"server", "ui"} & set(words) and any(w.startswith("--") for w in words):
                    if "--host" not in words or words[words.index("--host") + 1:][:1] != ["127.0.0.1"]:
                        out.append(f"{rel}:{node.lineno}: server command {words[:6]}… without '--host', '127.0.0.1'")
    return out


def test_the_binding_checker_finds_what_it_looks_for(tmp_path):
    cases = {
        "a.md": (f"```bash\nmlflow server --backend-store-uri x \\\n  --host {ANY_ADDRESS} --port 5000\n```\n", 3),
        "b.md": ("run `mlflow ui --backend-store-uri sqlite:///x.db` to browse\n", 1),
        "c.py": ('cmd = ["mlflow", "server", "--port", "5000"]\n', 1),
        "d.yaml": (f"host: {ANY_ADDRESS}\n", 1),
        "e.md": ("the `mlflow server` and `mlflow ui` commands:\n```\nmlflow ui --host 127.0.0.1 -w 1\nmlflow server -h 127.0.0.1\n```\n", 0),
        "f.py": ('cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", "5000"]\nprint(f"mlflow ui --backend-store-uri {u} --host 127.0.0.1")\n', 0),
        "g.sh": ("mlflow server --host=localhost\n", 2),
        "h.py": ('assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout\nCMD = "mlflow ui --port 5000"\n', 1),
    }
    for name, (text, n) in cases.items():
        (tmp_path / name).write_text(text)
        assert len(binding_problems(tmp_path / name, text)) == n, (name, binding_problems(tmp_path / name, text))


def test_every_documented_or_started_server_binds_127_0_0_1():
    checked, problems = 0, []
    for path, text in text_files():
        if path == Path(__file__).resolve():
            continue  # this file holds the patterns it looks for
        checked += 1
        problems += binding_problems(path, text)
    assert checked > 50, "walked the repository"
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_browse_line_printed_after_a_run_binds_127_0_0_1(tmp_path, mlflow_db):
    from helpers import hgbench_in_process

    out = hgbench_in_process(tmp_path, "dataset=digits", "model.hidden=[8]", "hyper_steps=1",
                             "inner_steps=1", "eval_every=1", "dataset.train_size=50", "dataset.val_size=50")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if "mlflow ui" in line]
    assert lines, out.stdout
    for line in lines:
        assert "--host 127.0.0.1" in line and ANY_ADDRESS not in line, line
