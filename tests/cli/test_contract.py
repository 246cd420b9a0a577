"""docs/cli.md is the CLI's contract: its tables, checked against the Typer app and real runs.

The doc's tables are parsed by their header rows (see the doc's introduction for the
quoting): §3 implemented commands (every one registered, with exactly the listed
arguments and flags, every listed ``--json`` key emitted), §2 sampler flags (against
``SGLDConfig``), §4 sweep spec fields (against ``SweepSpec``), §5 what is planned (not
registered or emitted yet: when it lands, the doc moves it), §6 benchmark keys.
Commands run in-process on ``tiny_run`` with tiny settings; the sweep runs one cell on a
one-CPU Ray runtime started here.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from rllc.cli.main import app
from rllc.estimators import SGLDConfig
from rllc.estimators.dln import DLN_SAMPLER
from rllc.jobs.spec import SweepSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli.md"

COMMANDS = ("command", "arguments", "flags", "`--json` keys", "does")
SAMPLER = ("flag", "field", "default", "dln default", "meaning")
SPEC_FIELDS = ("field", "default", "meaning")
ADDITIONS = ("command", "kind", "name", "meaning", "comes with")
BENCHMARKS = ("script", "`--json` keys (at least)")


# ---- reading the doc -------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    """The cells of a table row; ``\\|`` is a literal bar inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def tables(text: str) -> dict[tuple[str, ...], list[dict[str, str]]]:
    """Every markdown table of ``text``: header → rows (column → cell text)."""
    out: dict[tuple[str, ...], list[dict[str, str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            header = tuple(_cells(lines[i]))
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=True)))
                i += 1
            assert header not in out, f"two tables with columns {header} in {DOC.name}"
            out[header] = rows
        else:
            i += 1
    return out


def ticks(cell: str) -> list[str]:
    """The backtick-quoted names of a cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


def command_path(cell: str) -> tuple[str, ...]:
    """``rllc sweep plan`` → ("sweep", "plan")."""
    words = ticks(cell)[0].split()
    assert words[0] == "rllc", cell
    return tuple(words[1:])


def flag_names(cell: str, sampler_flags: list[str]) -> set[str]:
    """Flags of a flags cell (the first word of each quoted name: ``--widths M,H,N``)."""
    flags = {t.split()[0] for t in ticks(cell) if t.startswith("--")}
    if "sampler flags" in cell:
        flags |= set(sampler_flags)
    return flags


def argument_names(cell: str) -> set[tuple[str, bool]]:
    """(name, required) of each argument: ``CHECKPOINT``, or ``[CONFIG]`` if optional."""
    return {(t.strip("[]").lower(), not t.startswith("[")) for t in ticks(cell)}


def key_paths(cell: str) -> list[tuple[str, ...]]:
    """JSON keys of a keys cell: ``a`` → ("a",); ``a[].{b, c}`` → ("a", "[]", "b"), …;
    ``a.{b}`` → ("a", "b"). Quoted flags (``--timing``) are not keys."""
    paths = []
    for tok in ticks(cell):
        if tok.startswith("-"):
            continue
        m = re.fullmatch(r"(\w+)(\[\])?\.\{(.*)\}", tok)
        if m:
            head = (m[1], "[]") if m[2] else (m[1],)
            paths += [(*head, k.strip()) for k in m[3].split(",")]
        else:
            assert re.fullmatch(r"\w+", tok), f"not a key: {tok!r}"
            paths.append((tok,))
    return paths


def has_key(obj: Any, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    if path[0] == "[]":
        return isinstance(obj, list) and bool(obj) and all(has_key(x, path[1:]) for x in obj)
    return isinstance(obj, dict) and path[0] in obj and has_key(obj[path[0]], path[1:])


@dataclass
class Doc:
    commands: list[dict[str, str]]
    planned: list[dict[str, str]]
    sampler: list[dict[str, str]]
    spec_fields: list[dict[str, str]]
    additions: list[dict[str, str]]
    benchmarks: list[dict[str, str]]
    text: str

    @property
    def sampler_flags(self) -> list[str]:
        return [ticks(r["flag"])[0] for r in self.sampler if ticks(r["flag"])]


@pytest.fixture(scope="module")
def doc() -> Doc:
    text = DOC.read_text()
    # planned commands (none now) would share §3's columns: split the text at §5's heading
    implemented, planned = text.split("## 5. Planned", 1)
    t, p = tables(implemented), tables(planned)
    return Doc(t[COMMANDS], p.get(COMMANDS, []), t[SAMPLER], t[SPEC_FIELDS], p[ADDITIONS],
               p[BENCHMARKS], text)


# ---- the Typer app ---------------------------------------------------------------------

ROOT_COMMAND = typer.main.get_command(app)


def is_group(cmd: Any) -> bool:
    return hasattr(cmd, "commands")


def default_command(group: Any) -> str | None:
    """The hidden subcommand a group runs when its first argument names none
    (``rllc tune SPEC`` beside ``rllc tune dln``: ``cli.tune.SpecOrSubcommand``)."""
    return getattr(group, "default_command", None)


def resolve(path: tuple[str, ...]) -> Any | None:
    """The click command at ``path`` under ``rllc``, or None if there is none; a group
    with a default command stands for that command."""
    cmd = ROOT_COMMAND
    for name in path:
        if not is_group(cmd) or name not in cmd.commands:
            return None
        cmd = cmd.commands[name]
    if is_group(cmd) and default_command(cmd):
        return cmd.commands[default_command(cmd)]
    return cmd


def leaves(cmd: Any = ROOT_COMMAND, prefix: tuple[str, ...] = ()):
    """(path, command) of every registered command that is not a group; a group's default
    command has the group's path."""
    for name, sub in cmd.commands.items():
        if is_group(sub):
            yield from leaves(sub, (*prefix, name))
        elif name == default_command(cmd):
            yield prefix, sub
        else:
            yield (*prefix, name), sub


def flags_of(cmd: Any) -> set[str]:
    """Its options as the doc writes them (``--timing/--no-timing``), without --help."""
    return {"/".join([*p.opts, *p.secondary_opts]) for p in cmd.params
            if p.param_type_name == "option"}


def arguments_of(cmd: Any) -> set[tuple[str, bool]]:
    return {(p.name, bool(p.required)) for p in cmd.params if p.param_type_name == "argument"}


# ---- structure: no runs ----------------------------------------------------------------


def test_documented_commands_have_exactly_their_arguments_and_flags(doc):
    seen = set()
    for row in doc.commands:
        path = command_path(row["command"])
        assert path not in seen, f"rllc {' '.join(path)} is documented twice"
        seen.add(path)
        cmd = resolve(path)
        assert cmd is not None, f"docs/cli.md §3 lists `rllc {' '.join(path)}`, not registered"
        where = f"`rllc {' '.join(path)}` (docs/cli.md §3)"
        assert flags_of(cmd) == flag_names(row["flags"], doc.sampler_flags), where
        assert arguments_of(cmd) == argument_names(row["arguments"]), where


def test_every_registered_command_is_documented_and_takes_json(doc):
    documented = {command_path(r["command"]) for r in doc.commands}
    for path, cmd in leaves():
        assert path in documented, f"`rllc {' '.join(path)}` is missing from docs/cli.md §3"
        assert "--json" in flags_of(cmd), f"`rllc {' '.join(path)}` has no --json"

    def groups(cmd, prefix=()):
        for name, sub in cmd.commands.items():
            if is_group(sub):
                yield (*prefix, name), sub
                yield from groups(sub, (*prefix, name))

    for path, group in groups(ROOT_COMMAND):  # a group's own flags would be undocumented
        assert not group.params, f"`rllc {' '.join(path)}` has options of its own"


def test_planned_commands_are_not_registered_yet(doc):
    implemented = {command_path(r["command"]) for r in doc.commands}
    for row in doc.planned:
        path = command_path(row["command"])
        assert path not in implemented
        assert resolve(path) is None, (
            f"`rllc {' '.join(path)}` is registered now: list it in docs/cli.md §3")


def test_planned_flags_and_fields_do_not_exist_yet(doc):
    for row in doc.additions:
        name = ticks(row["name"])[0]
        if row["kind"] == "flag":
            cmd = resolve(command_path(row["command"]))
            assert cmd is not None
            assert name not in {f.split("/")[0] for f in flags_of(cmd)}, (
                f"{row['command']} has {name} now: move it from docs/cli.md §5 to §3")
        elif row["kind"] == "field":
            assert row["command"] == "sweep spec"
            assert name not in SweepSpec.model_fields, (
                f"sweep specs have {name!r} now: move it from docs/cli.md §5 to §4")
        else:
            assert row["kind"] in ("key", "value"), row  # keys: test_json_keys_are_emitted


def _same(doc_value: str, actual: Any) -> bool:
    """A documented default (YAML, as in a spec) equals the model's."""
    value = yaml.safe_load(doc_value)
    if isinstance(actual, float) and not isinstance(actual, bool):
        return value is not None and float(value) == actual
    return value == actual


def test_sampler_flags_match_the_sampler_config(doc):
    fields = [ticks(r["field"])[0] for r in doc.sampler]
    assert sorted(fields) == sorted(SGLDConfig.model_fields), "docs/cli.md §2 vs SGLDConfig"
    defaults, dln = SGLDConfig().model_dump(mode="json"), DLN_SAMPLER.model_dump(mode="json")
    model_cmd = resolve(("estimate", "model"))
    for row, field in zip(doc.sampler, fields, strict=True):
        (default,), (dln_default,) = ticks(row["default"]), ticks(row["dln default"])
        assert _same(default, defaults[field]), (field, default, defaults[field])
        assert _same(dln_default, dln[field]), (field, dln_default, dln[field])
        if ticks(row["flag"]):  # the flag sets that field
            (param,) = [p for p in model_cmd.params if ticks(row["flag"])[0] in p.opts]
            assert param.name == field


def _spec_fields() -> dict[str, Any]:
    """SweepSpec's fields, nested option models flattened (``data.n_sequences``); the
    sampler's are §2's."""
    out = {}
    for name, info in SweepSpec.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not SGLDConfig:
            out |= {f"{name}.{k}": v for k, v in sub.model_fields.items()}
        else:
            out[name] = info
    return out


def test_spec_fields_match_the_sweep_spec(doc):
    fields = _spec_fields()
    documented = [ticks(r["field"])[0] for r in doc.spec_fields]
    assert sorted(documented) == sorted(fields), "docs/cli.md §4 vs SweepSpec"
    for row, name in zip(doc.spec_fields, documented, strict=True):
        info = fields[name]
        if row["default"] == "required":
            assert info.is_required(), name
        elif ticks(row["default"]) == [row["default"].strip("`")]:  # one quoted value
            assert not info.is_required(), name
            actual = info.get_default(call_default_factory=True)
            actual = actual.value if hasattr(actual, "value") else actual  # enums
            assert _same(row["default"].strip("`"), actual), (name, row["default"], actual)
    example = re.search(r"## 4\. Sweep spec.*?```yaml\n(.*?)```", doc.text, re.S)
    spec = parse_spec(yaml.safe_load(example[1]))  # the example is a valid spec
    assert spec.name == "heads-over-training"


def _dict_keys(path: Path) -> set[str]:
    """Every string key of a dict literal in a Python file."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            keys |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    return keys


def test_benchmark_json_keys_are_in_their_scripts(doc):
    for row in doc.benchmarks:
        script = ROOT / ticks(row["script"])[0]
        missing = {p[0] for p in key_paths(row["`--json` keys (at least)"])} - _dict_keys(script)
        assert not missing, f"{script.name} does not emit {sorted(missing)} (docs/cli.md §6)"


# ---- keys: real runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def outputs(tiny_run, quick_demo, tmp_path_factory) -> dict[tuple[str, ...], dict[str, Any]]:
    """The ``--json`` object of one cheap run of every implemented command (``rllc demo``:
    the session's quick demo)."""
    import logging

    import ray

    tmp = tmp_path_factory.mktemp("contract")
    store = str(tmp / "store")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "contract", "checkpoints": [f"{tiny_run}/ckpt-0000004"], "components": ["0:0"],
        "datasets": ["dyck"], "sampler": {"chains": 2, "draws": 5, "batch_size": 8},
        "store": store, "data": {"n_sequences": 16}, "resources": {"max_workers": 1},
    }))
    tune_spec = tmp / "tune.yaml"
    tune_spec.write_text(yaml.safe_dump({
        **yaml.safe_load(spec.read_text()), "name": "contract-tune",
        "search": {"trials": 2, "step_size": [1e-5, 1e-3], "localization": [10, 1000]},
    }))
    submit_spec = tmp / "submit.yaml"  # rllc submit without a server: its own store
    submit_spec.write_text(yaml.safe_dump({
        **yaml.safe_load(spec.read_text()), "name": "contract-submit",
        "store": str(tmp / "store-submit"),
    }))
    os.environ["RLLC_TUNE_STATE"] = str(tmp / "ray-tune")
    tiny = ["--chains", "2", "--draws", "5", "--batch-size", "8"]
    runs = {
        ("estimate", "dln"): ["estimate", "dln", "--widths", "4,3,8", "--true-rank", "1",
                              "--samples", "2000", "--chains", "2", "--draws", "20",
                              "--burnin", "5", "--steps-per-draw", "1"],
        ("estimate", "model"): ["estimate", "model", tiny_run, "--component", "1:0",
                                "--dataset", "dyck", "--sequences", "16", "--threads", "1",
                                *tiny],
        ("heads",): ["heads", tiny_run, "--sequences", "8"],
        ("baselines",): ["baselines", tiny_run, "--component", "1:0", "--dataset", "dyck",
                         "--sequences", "3", "--probes", "4"],
        ("train",): ["train", "--quick", "--steps", "2", "--out", str(tmp / "train")],
        ("sweep", "plan"): ["sweep", "plan", str(spec)],  # with timing: all its keys
        ("sweep", "run"): ["sweep", "run", str(spec), "--num-cpus", "1"],
        ("sweep", "resume"): ["sweep", "resume", str(spec), "--num-cpus", "1"],
        ("query",): ["query", store],
        ("report",): ["report", quick_demo["store"], "--out", str(tmp / "report")],
        ("submit",): ["submit", str(submit_spec), "--num-cpus", "1"],
        ("status",): ["status", "contract", "--store", store],
        ("cancel",): ["cancel", "contract", "--store", store],  # done: reported as it is
        ("tune",): ["tune", str(tune_spec)],
        ("tune", "dln"): ["tune", "dln", "--widths", "3,2,8", "--true-rank", "0", "--trials",
                          "2", "--chains", "4", "--draws", "50", "--store", store,
                          "--step-size-range", "1e-5,1e-3"],
    }
    runner = CliRunner(env={"RLLC_SERVER": None})  # the client commands work locally
    out = {("demo",): quick_demo}
    started = not ray.is_initialized()  # run and resume share one runtime
    if started:
        ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        for path, args in runs.items():
            res = runner.invoke(app, [*args, "--json"])
            assert res.exit_code == 0, (path, res.output)
            out[path] = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        if started:
            ray.shutdown()
    res = runner.invoke(app, ["query", store, "--format", "json"])
    assert res.exit_code == 0, res.output
    out["query --format json"] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_json_keys_are_emitted(doc, outputs):
    for row in doc.commands:
        path = command_path(row["command"])
        keys = key_paths(row["`--json` keys"])
        if not keys:
            continue
        assert path in outputs, f"no test run of `rllc {' '.join(path)}`: add one to `outputs`"
        missing = [".".join(k) for k in keys if not has_key(outputs[path], k)]
        assert not missing, f"`rllc {' '.join(path)} --json` lacks {missing} (docs/cli.md §3)"
    for row in doc.additions:
        if row["kind"] == "key":
            path, name = command_path(row["command"]), ticks(row["name"])[0]
            assert name not in outputs[path], (
                f"`rllc {' '.join(path)} --json` emits {name} now: move it from docs/cli.md "
                "§5 to §3")
    assert outputs["query --format json"].keys() == outputs[("query",)].keys()
    assert outputs[("sweep", "run")]["cells_done"] == 1
    assert outputs[("sweep", "resume")]["cells_skipped"] == 1
