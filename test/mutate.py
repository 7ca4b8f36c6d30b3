#!/usr/bin/env python3
"""Mutation testing of nvr's crash-safety and codec code: do the tests notice a bug?

    python3 test/mutate.py [--budget SEC] [--per-function N] [--only NAME ...] [--list]
                           [--report PATH] [--match TEXT ...] [--tests ARGS] [--show]

A small runner of our own (no dependency): for each target below (functions of one
module, and the test files that should catch a bug in them) it makes mutants of those
functions, one small change each, runs the target's tests against each mutant in a
scratch copy of the checkout (`nice -n 19`, `pytest -x`, a time limit per mutant), and
lists the mutants no test killed: the survivors. A survivor is either a missing test or
an equivalent mutant (a change that can't alter behaviour, such as `<` for `<=` where the
two values are never equal); docs/testing.md keeps the last run's figures and the
verdict on each survivor.

Mutations are made on the AST and spliced into the source text at the mutated node's
exact span (so the rest of the file, comments included, is untouched):
- comparisons: `<`<->`<=`, `>`<->`>=`, `==`<->`!=`, `in`<->`not in`, `is`<->`is not`;
- arithmetic: `+`<->`-`, `*`->`//`, `//`->`*`, `%`->`//`, `&`<->`|`, `<<`<->`>>`, and
  the same in augmented assignments (`+=` -> `-=`...);
- boolean: `and`<->`or`, `not x` -> `x`, an `if`/`while` condition negated;
- constants: an integer n -> n + 1, `True`<->`False`;
- statements: a call made for its effect (`os.fsync(fd)`, `f.sync()`, `db.flush(...)`)
  removed.
Not mutated: docstrings, f-strings and message strings, logging calls (removing one is
an equivalent mutant by construction).

Mutants are sampled deterministically (`--seed`), at most `--per-function` per function,
within `--budget` seconds in all, shared equally by the targets (time a target leaves
unused goes to the next ones); a mutant whose tests exceed `--timeout` counts as
killed (a hang is noticed). Each target's tests must pass unmutated first.

To check that a new test kills one mutant (a survivor of an earlier run), pick it
by its text and run just that test against it:

    python3 test/mutate.py --match "stream_id << 32 -> stream_id >> 32" \
        --tests "test/test_db.py::test_retention_of_one_stream_never_touches_another"

`--match` (repeatable) takes every mutant whose "module function what" line (as
`--list` prints it) contains the text, unsampled; `--tests` replaces the targets'
test lists (the unmutated run first shows the test passes on the real code);
`--list --show` prints each chosen mutant's changed lines.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Target:
    name: str
    module: str               # path relative to the checkout
    functions: list[str]      # qualified names: "func" or "Class.method"
    tests: list[str]          # pytest arguments (files or node ids)


TARGETS = [
    Target("db: flush, retention, garbage collection", "db.py",
           ["Database._flush_locked", "Database.delete_oldest_recordings",
            "Database.delete_garbage", "Database.collect_garbage", "Database.mark_synced"],
           ["test/test_db.py", "test/test_writer.py"]),
    Target("dir: open, recovery, syncer", "dir.py",
           ["SampleFileDir._open_locked", "SampleFileDir._verify", "SampleFileDir.begin_open",
            "SampleFileDir.complete_open", "recover", "collect", "Syncer.iter",
            "Syncer._flush_if_due", "Syncer._handle", "Syncer._save"],
           ["test/test_dir.py", "test/test_writer.py", "test/test_db.py"]),
    Target("writer: rotation and time", "writer.py",
           ["Writer.write", "Writer._open", "Writer._index_unindexed",
            "Writer._close_recording"],
           ["test/test_writer.py"]),
    Target("recording: the index codec", "recording.py",
           ["SampleIndexEncoder.add_sample", "encode_index", "_long_varint", "decode_columns",
            "frames_in_range"],
           ["test/test_recording.py"]),
    Target("mp4: edit lists and ranges", "mp4.py",
           ["_maybe_append_edts", "FileBuilder.append", "_build"],
           ["test/test_mp4.py"]),
    Target("auth: sessions and CSRF", "auth.py",
           ["Session.check_csrf", "parse_session_cookie", "Auth.authenticate", "Auth._lookup",
            "Auth.revoke", "Auth._revoke", "Auth.make_session"],
           ["test/test_api.py", "test/test_sessions.py"]),
    Target("upgrade: file operations", "upgrade/fsops.py",
           ["RealDir.write_atomic", "RealDir.rename", "RealDir.unlink", "RealDir.read"],
           ["test/test_upgrade.py"]),
    Target("upgrade: the v1->v2 step", "upgrade/v1_to_v2.py",
           ["verify_dir_contents", "run"], ["test/test_upgrade.py"]),
]

CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
            ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv,
            ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr,
            ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift, ast.RShift: ast.LShift}
LOG_NAMES = {"log", "logger", "logging", "_log", "warnings"}


@dataclasses.dataclass
class Mutant:
    target: str
    module: str
    function: str
    line: int
    what: str                 # "line 123: a < b -> a <= b"
    source: str               # the whole mutated module
    outcome: str = ""         # killed | survived | timeout
    seconds: float = 0.0
    killed_by: str = ""


def find_function(tree: ast.Module, qualname: str):
    parts = qualname.split(".")
    body = tree.body
    node = None
    for p in parts:
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.ClassDef)) and n.name == p), None)
        if node is None:
            raise SystemExit(f"mutate.py: no function {qualname}")
        body = node.body
    return node


def _is_log_call(node: ast.AST) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    while isinstance(f, ast.Attribute):
        f = f.value
    return isinstance(f, ast.Name) and f.id in LOG_NAMES


def _excluded(fn) -> set[int]:
    """ids of nodes not to mutate: docstrings, f-strings, logging calls, annotations,
    and what is inside them."""
    out = set()
    for node in ast.walk(fn):
        skip = isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Call)
                                                    and _is_log_call(node))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and \
                isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0]))
            out.update(id(n) for n in ast.walk(node.body[0]))
        if skip:
            out.update(id(n) for n in ast.walk(node))
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            annotations = [node.returns] + [x.annotation for x in (
                a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]) if x]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for ann in annotations:
            if ann is not None:
                out.update(id(n) for n in ast.walk(ann))
    return out


def _negation_elsewhere(test) -> bool:
    """Negating this condition is the same mutant as one made on it already."""
    return (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)) or (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(
            test.ops[0], (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)))


def _mutations(fn):
    """(node to replace, replacement text, description) for each mutation point of fn."""
    excluded = _excluded(fn)
    for node in ast.walk(fn):
        if id(node) in excluded:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in CMP_SWAP:
                    new = ast.Compare(node.left, list(node.ops), node.comparators)
                    new.ops[i] = CMP_SWAP[type(op)]()
                    yield node, f"({ast.unparse(new)})", f"{ast.unparse(node)} -> {ast.unparse(new)}"
        elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP:
            new = ast.BinOp(node.left, BIN_SWAP[type(node.op)](), node.right)
            yield node, f"({ast.unparse(new)})", f"{ast.unparse(node)} -> {ast.unparse(new)}"
        elif isinstance(node, ast.AugAssign) and type(node.op) in BIN_SWAP:
            new = ast.AugAssign(node.target, BIN_SWAP[type(node.op)](), node.value)
            yield node, ast.unparse(new), f"{ast.unparse(node)} -> {ast.unparse(new)}"
        elif isinstance(node, ast.BoolOp):
            new = ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(),
                             node.values)
            yield node, f"({ast.unparse(new)})", f"{ast.unparse(node)} -> {ast.unparse(new)}"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, f"({ast.unparse(node.operand)})", f"{ast.unparse(node)} -> " \
                f"{ast.unparse(node.operand)}"
        elif isinstance(node, (ast.If, ast.While)) and id(node.test) not in excluded \
                and not _negation_elsewhere(node.test):
            t = ast.unparse(node.test)
            yield node.test, f"(not ({t}))", f"if {t} -> if not ({t})"
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            yield node, f"({node.value + 1})", f"{node.value} -> {node.value + 1}"
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield node, f"{not node.value}", f"{node.value} -> {not node.value}"
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and not _is_log_call(node.value):
            yield node, "pass", f"{ast.unparse(node)} removed"


def _splice(src: bytes, line_starts: list[int], node, text: str) -> bytes:
    # AST columns are UTF-8 byte offsets.
    a = line_starts[node.lineno - 1] + node.col_offset
    b = line_starts[node.end_lineno - 1] + node.end_col_offset
    return src[:a] + text.encode() + src[b:]


def mutants_of(target: Target) -> list[Mutant]:
    path = os.path.join(ROOT, target.module)
    with open(path, "rb") as f:
        src = f.read()
    line_starts = [0]
    for line in src.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    tree = ast.parse(src)
    out = []
    for qual in target.functions:
        fn = find_function(tree, qual)
        for node, text, what in _mutations(fn):
            mutated = _splice(src, line_starts, node, text).decode()
            try:
                compile(mutated, path, "exec")
            except SyntaxError:
                continue
            short = what if len(what) <= 100 else what[:97] + "..."
            out.append(Mutant(target.name, target.module, qual, node.lineno,
                              f"line {node.lineno}: {short}", mutated))
    return out


def run_tests(scratch: str, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """(outcome, first failing test, seconds): outcome "passed", "failed" or "timeout"."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    began = time.monotonic()
    cmd = ["nice", "-n", "19", sys.executable, "-m", "pytest", "-x", "-q", "-p",
           "no:cacheprovider", "--no-header", "-rf", *tests]
    try:
        r = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.monotonic() - began
    took = time.monotonic() - began
    if r.returncode == 0:
        return "passed", "", took
    failed = next((ln.split()[1] for ln in r.stdout.splitlines()
                   if ln.startswith(("FAILED ", "ERROR "))), f"exit {r.returncode}")
    return "failed", failed, took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=1800, help="seconds in all (1800)")
    ap.add_argument("--per-function", type=int, default=6, help="mutants per function (6)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant (300)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", default=[],
                    help="targets whose name contains this (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--report", help="write the results as JSON there")
    ap.add_argument("--match", action="append", default=[],
                    help="only mutants whose 'module function what' contains this "
                         "(repeatable; every match, unsampled)")
    ap.add_argument("--tests", help="pytest arguments to run instead of the targets' "
                                    "(space-separated)")
    ap.add_argument("--show", action="store_true", help="with --list: each mutant's diff")
    opts = ap.parse_args()

    targets = [t for t in TARGETS if not opts.only or any(o in t.name for o in opts.only)]
    rng = random.Random(opts.seed)
    plan: list[tuple[Target, list[Mutant]]] = []
    for t in targets:
        chosen = []
        every = mutants_of(t)
        if opts.match:
            chosen = [m for m in every if any(x in f"{m.module} {m.function} {m.what}"
                                              for x in opts.match)]
        else:
            for fn in t.functions:
                of_fn = [m for m in every if m.function == fn]
                chosen += sorted(rng.sample(of_fn, min(len(of_fn), opts.per_function)),
                                 key=lambda m: m.line)
        if opts.match and not chosen:
            continue
        if opts.tests:
            t = dataclasses.replace(t, tests=opts.tests.split())
        print(f"{t.name}: {len(every)} mutants, {len(chosen)} chosen", flush=True)
        plan.append((t, chosen))
    if opts.match and not plan:
        print(f"mutate.py: no mutant matches {opts.match}", file=sys.stderr)
        return 2
    if opts.list:
        for t, ms in plan:
            if opts.show:
                with open(os.path.join(ROOT, t.module)) as f:
                    original = f.read().splitlines()
            for m in ms:
                print(f"  {t.module} {m.function} {m.what}")
                if opts.show:
                    for line in difflib.unified_diff(original, m.source.splitlines(),
                                                     t.module, t.module, n=0, lineterm=""):
                        if not line.startswith(("---", "+++")):
                            print(f"    {line}")
        return 0

    began = time.monotonic()
    results: list[Mutant] = []
    with tempfile.TemporaryDirectory(prefix="nvr-mutate-") as tmp:
        scratch = os.path.join(tmp, "nvr")
        shutil.copytree(ROOT, scratch, ignore=shutil.ignore_patterns(
            ".git", ".venv-debian", "__pycache__", ".pytest_cache", ".hypothesis",
            "nvr-data", "artifacts"))
        for i, (t, ms) in enumerate(plan):
            # Each target gets an equal share of what is left of the budget.
            left = opts.budget - (time.monotonic() - began)
            deadline = time.monotonic() + left / (len(plan) - i)
            path = os.path.join(scratch, t.module)
            with open(path) as f:
                original = f.read()
            outcome, failed, took = run_tests(scratch, t.tests, opts.timeout)
            if outcome != "passed":
                print(f"{t.name}: its tests fail unmutated ({failed or outcome}); skipped",
                      flush=True)
                continue
            print(f"{t.name}: unmutated tests pass in {took:.0f} s", flush=True)
            for m in ms:
                if time.monotonic() + took > deadline:
                    print(f"{t.name}: its share of the budget is spent", flush=True)
                    break
                with open(path, "w") as f:
                    f.write(m.source)
                try:
                    outcome, failed, m.seconds = run_tests(scratch, t.tests, opts.timeout)
                finally:
                    with open(path, "w") as f:
                        f.write(original)
                m.outcome = {"failed": "killed", "passed": "survived"}.get(outcome, outcome)
                m.killed_by = failed
                results.append(m)
                print(f"  {m.outcome:8} {t.module} {m.function} {m.what}"
                      + (f"  [{failed}]" if failed else ""), flush=True)

    killed = [m for m in results if m.outcome in ("killed", "timeout")]
    survived = [m for m in results if m.outcome == "survived"]
    print(f"\n{len(results)} mutants run: {len(killed)} killed "
          f"({sum(m.outcome == 'timeout' for m in results)} by timeout), "
          f"{len(survived)} survived")
    for m in survived:
        print(f"SURVIVED {m.module} {m.function} {m.what}")
    if opts.report:
        with open(opts.report, "w") as f:
            json.dump([{k: v for k, v in dataclasses.asdict(m).items() if k != "source"}
                       for m in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
