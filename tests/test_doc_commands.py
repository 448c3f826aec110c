"""Every shell command shown in README.md and docs/**/*.md can still be run as written.

Collected from fenced and indented code blocks (continuation lines joined; in a block with `$ `
prompts only the prompted lines) and from inline `code` spans: commands that run
`slt-superposition ...` (or `python -m slt_superposition[.commands.launch] ...`),
`python -m experiments.X / analysis.X / benchmarks.X ...`, `python X.py ...`, `make ...` or
`bash X.sh ...`. Nothing is run; each is checked in this process against what would read it:

- the CLI: every option and argument, parsed by the typer app's own click command objects; for
  `reproduce NAME`, the name, the size flags, every `--set KEY=VALUE` through
  `experiments.registry.check_request` (what `reproduce` checks before it creates anything), and
  `--only CASE` against the experiment's case names (its `run` is called with `run_cases` /
  `select_cases` replaced by a stub that stops it there);
- modules and scripts: they exist and have a `__main__` block; with an argparse parser, `main()` is
  called with `ArgumentParser.parse_args` replaced by one that parses the shown arguments for real
  and then stops; without one, they must be given no arguments;
- make targets and `VAR=value` overrides against the Makefile; shell scripts: they exist, pass
  `bash -n`, get as many positional arguments as they read, and read the variables set before them.

Placeholders (all-capital words such as OUT, DIR, CASE, N; `...`) stand for any value; `[--opt X]`
is checked as if given, `[--a | --b]` once per alternative. An inline mention that leaves out a
required argument (`slt-superposition llc` in prose) is a reference to the command, not a broken one.

Known limits: option values are checked only as far as the parsers check them (a path need not
exist, a `--set` value given as a placeholder is not checked); a typo written in capitals reads as a
placeholder; `python -c "..."`, `pip`, `git` and other programs are not checked; case names are
not checked for an experiment whose `run` computes before it reaches `run_cases`/`select_cases`;
a script without `main()` has its arguments unchecked; only the commands' shape is checked, never
that they finish or what they print.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import io
import itertools
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# --------------------------------------------------------------------------------------------
# Snippets: the code of a markdown file, with where it is


@dataclasses.dataclass
class Snippet:
    file: str
    line: int
    text: str
    inline: bool  # an inline `code` span (prose), not a code block


FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^\s{0,3}([-*+]|\d+[.)])\s")
INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def inline_spans(file: str, para: list[tuple[int, str]]) -> list[Snippet]:
    """The `code` spans of one paragraph (a span may cross lines), each at the line it starts on."""
    text = "\n".join(line for _, line in para)
    starts = list(itertools.accumulate([0] + [len(line) + 1 for _, line in para]))
    spans = []
    for m in INLINE.finditer(text):
        k = max(i for i, s in enumerate(starts[:-1]) if s <= m.start(2))
        spans.append(Snippet(file, para[k][0], " ".join(m.group(2).split()), True))
    return spans


def block_commands(file: str, block: list[tuple[int, str]]) -> list[Snippet]:
    """A code block's commands: with `$ ` prompts only the prompted lines (the rest is output); a
    line ending in `\\`, or one that goes on with `-`/`[-` (a usage line), continues the previous."""
    prompted = any(line.startswith("$ ") for _, line in block)
    joined: list[list] = []  # [first line number, text, last line number]
    cont = False
    for lineno, line in block:
        if prompted and not line.startswith("$ ") and not cont:
            continue
        body = line[2:] if line.startswith("$ ") else line
        goes_on = body.startswith(("-", "[-")) and joined and joined[-1][2] == lineno - 1
        if (cont or goes_on) and joined:
            joined[-1][1] += " " + body.rstrip("\\").rstrip()
            joined[-1][2] = lineno
        else:
            joined.append([lineno, body.rstrip("\\").rstrip(), lineno])
        cont = body.endswith("\\")
    return [Snippet(file, lineno, text, False) for lineno, text, _ in joined]


def snippets(path: Path) -> list[Snippet]:
    """Code-block commands and inline code spans of a markdown file."""
    file = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    out: list[Snippet] = []
    para: list[tuple[int, str]] = []
    block: list[tuple[int, str]] = []

    def flush_para() -> None:
        out.extend(inline_spans(file, para) if para else [])
        para.clear()

    def flush_block() -> None:
        out.extend(block_commands(file, block) if block else [])
        block.clear()

    in_fence, indented, prev_blank, in_list = False, False, True, False
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            flush_para()
            flush_block()
            in_fence = not in_fence
            prev_blank = not in_fence
            continue
        lead = len(line) - len(line.lstrip(" "))
        if not in_fence and line.strip() and lead < 4 and not indented:
            in_list = bool(LIST_ITEM.match(line)) or (in_list and (lead > 0 or not prev_blank))
        need = 6 if in_list else 4  # inside a list item an indented code block sits deeper
        if (in_fence or (lead >= need and (prev_blank or indented))) and line.strip():
            flush_para()
            indented = not in_fence
            block.append((lineno, line.strip()))
        elif not line.strip():
            flush_para()
            prev_blank = True  # a blank line may sit inside an indented block
        else:
            flush_block()
            indented = prev_blank = False
            para.append((lineno, line))
    flush_block()
    flush_para()
    return out


# --------------------------------------------------------------------------------------------
# Commands: a snippet split at ;, &&, |, ... and classified by what runs it

STARTERS = re.compile(r"(^|[\s;&|(`])(slt-superposition|python3?|make|bash|[\w./$()]*/(python3?|slt-superposition))(\s|$)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
REDIRECT = re.compile(r"(?<![\w=])\d?(>>?|<)(&\d|\s*[^\s&;|]+)")
BRACKET = re.compile(r"\[((?:-|[A-Z]{2,}|\.\.\.)[^\[\]]*)\]")
SEPARATORS = {"&&", "||", ";", "|", "&"}
SUBCOMMANDS = ("train", "llc", "sae", "plot", "reproduce", "launch")
BARE = re.compile(rf"^({'|'.join(SUBCOMMANDS)}) (-|[a-z][a-z0-9]*-[a-z0-9-]+)")  # `reproduce tms-pentagon`


@dataclasses.dataclass
class Command:
    kind: str  # cli, module, script, make, bash
    target: str  # module / script / make goals / sh path ("" for the CLI)
    argv: list[str]  # what follows the target
    env: dict[str, str]
    text: str  # as shown (normalised)
    inline: bool
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    fragment: bool = False  # an inline mention without a required argument: prose, not a command
    cwd: str = "."  # where a preceding `cd` left the shell, relative to the repository

    def incomplete(self, message: str) -> None:
        """A required argument is missing: a fragment inline, a problem in a code block."""
        if self.inline:
            self.fragment = True
            self.notes.append(f"incomplete: {message}")
        else:
            self.problems.append(message)


def variants(text: str) -> list[str]:
    """`[--a X]` kept (checked as if given); `[--a | --b]`: one text per alternative."""
    groups = list(BRACKET.finditer(text))
    if not groups:
        return [text]
    alts = [[a.strip() for a in m.group(1).split(" | ")] for m in groups]

    def build(choice: list[int]) -> str:
        pieces, last = [], 0
        for m, a, c in zip(groups, alts, choice):
            pieces += [text[last:m.start()], a[c]]
            last = m.end()
        return "".join(pieces) + text[last:]

    first = [0] * len(groups)
    return [build(first)] + [build(first[:g] + [j] + first[g + 1:]) for g, a in enumerate(alts)
                             for j in range(1, len(a))]


def tokens(text: str) -> list[str] | None:
    """Shell words of `text` (redirections dropped); None for unbalanced quotes (a span cut short)."""
    lex = shlex.shlex(REDIRECT.sub(" ", text), posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return ["..." if t == "…" else t for t in lex]
    except ValueError:
        return None


def commands_in(snip: Snippet) -> list[Command]:
    """The distinct commands of a snippet, over its `[...]` variants, each with the `cd` before it."""
    if snip.inline and BARE.match(snip.text):  # `reproduce tms-pentagon`, `llc --calibrate`: the CLI's
        snip = dataclasses.replace(snip, text="slt-superposition " + snip.text)
    if not STARTERS.search(snip.text):
        return []
    found: dict[tuple, Command] = {}
    for toks in filter(None, map(tokens, variants(snip.text))):
        segment: list[str] = []
        cwd = "."
        for t in toks + [";"]:
            if t not in SEPARATORS:
                segment.append(t)
                continue
            if segment[:1] == ["cd"] and len(segment) > 1:
                cwd = "." if segment[1].startswith("/") or segment[1] == "-" else str(Path(cwd) / segment[1])
            for c in classify(segment, snip.inline) if segment[:1] != ["cd"] else []:
                c.cwd = cwd
                found.setdefault((c.kind, c.target, tuple(c.argv), tuple(sorted(c.env.items())), cwd), c)
            segment = []
    return list(found.values())


def classify(seg: list[str], inline: bool) -> list[Command]:
    """The command a shell segment runs, if it is one this test checks (else [])."""
    env: dict[str, str] = {}
    seg = list(seg)
    while seg:
        if ENV.match(seg[0]):
            env.update([seg.pop(0).split("=", 1)])
        elif seg[0] in ("time", "nohup", "exec", "env"):
            seg.pop(0)
        elif seg[0] == "srun":
            seg.pop(0)
            while seg and seg[0].startswith("-"):
                seg.pop(0)
        else:
            break
    if not seg:
        return []
    base, args = seg[0].rsplit("/", 1)[-1], seg[1:]

    def make(kind, target, argv):
        return [Command(kind, target, list(argv), env, " ".join(map(shlex.quote, seg)), inline)]

    if base == "slt-superposition":
        return make("cli", "", args)
    if base == "make":
        return make("make", "", args)
    if base == "bash":
        if args[:1] == ["-c"] and len(args) > 1:
            return commands_in(Snippet("", 0, args[1], inline))
        return make("bash", args[0], args[1:]) if args and args[0].endswith(".sh") else []
    if base not in ("python", "python3"):
        return []
    while args and (args[0] in ("-u", "-O", "-B", "-X") or args[0].startswith("-X")):
        args = args[1:]
    if args[:1] == ["-m"] and len(args) > 1:
        module, rest = args[1], args[2:]
        if module in ("slt_superposition", "slt_superposition.cli"):
            return make("cli", "", rest)
        if module == "slt_superposition.commands.launch":
            return make("cli", "", ["launch", *rest])
        if module.split(".")[0] in ("experiments", "analysis", "benchmarks"):
            return make("module", module, rest)
        return []
    return make("script", args[0], args[1:]) if args and args[0].endswith(".py") else []


def is_placeholder(token: str) -> bool:
    """An all-capital word (OUT, DIR, N), alone or in a path / KEY=VALUE / list; `$VAR`; `...`."""
    if "$" in token or token == "...":
        return True
    token = token.strip("[]")
    return not token.startswith("-") and any(PLACEHOLDER.match(p) for p in re.split(r"[/=,]", token) if p)


# --------------------------------------------------------------------------------------------
# The CLI: the typer app's click commands parse the arguments; reproduce asks the registry


def cli_group():
    import typer.main

    from slt_superposition.cli import app

    return typer.main.get_command(app)


def click_exceptions():
    try:
        from typer._click import exceptions  # typer vendors click in recent versions
    except ImportError:
        from click import exceptions
    return exceptions


def option_values(message: str, args: list[str]) -> list[str]:
    """The values given to the option(s) a click error message names."""
    names = [n for part in re.findall(r"'(-[-\w]+)'", message) + re.findall(r"'(-[-\w]+) / ", message)
             for n in part.split(" / ")]
    values = []
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                values.append(args[i + 1])
            elif a.startswith(n + "="):
                values.append(a.split("=", 1)[1])
    return values


def check_cli(cmd: Command, argv: list[str], group) -> None:
    ex = click_exceptions()
    if not argv or argv[0] in ("--version", "--help"):
        return
    sub, rest = argv[0], argv[1:]
    if sub.startswith("-"):
        cmd.problems.append(f"unknown option {sub} before the subcommand")
        return
    if is_placeholder(sub):
        return
    command = group.commands.get(sub)
    if command is None:
        cmd.problems.append(f"no subcommand '{sub}' (known: {', '.join(group.commands)})")
        return
    if "--help" in rest:
        return
    parent = group.make_context("slt-superposition", [sub], resilient_parsing=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            params = command.make_context(sub, list(rest), parent=parent).params
    except ex.MissingParameter as err:
        return cmd.incomplete(err.format_message())
    except ex.BadParameter as err:
        if not any(is_placeholder(v) for v in option_values(err.format_message(), rest)):
            cmd.problems.append(err.format_message())
        return
    except ex.UsageError as err:
        message = err.format_message()
        if "requires an argument" in message and rest and message.startswith(f"Option '{rest[-1]}'"):
            return cmd.incomplete(message)  # `reproduce --set` in prose: a mention of the option
        cmd.problems.append(message)
        return
    except ex.Exit:
        return
    if sub == "launch":
        inner = list(params.get("command") or ())
        if inner and inner[0].endswith(".py"):
            check_program(cmd, inner[0], inner[1:], script=True)
        elif inner:
            check_cli(cmd, inner, group)
    elif sub == "reproduce":
        check_reproduce(cmd, params)


def check_reproduce(cmd: Command, params: dict) -> None:
    from experiments import registry
    from slt_superposition.errors import InputError

    name = params.get("name")
    if params.get("list_") or (name is not None and is_placeholder(name)):
        return
    if name is None:
        return cmd.incomplete("no experiment name")
    if params.get("quick") and params.get("full"):
        cmd.problems.append("--quick and --full exclude each other")
        return
    size = "quick" if params.get("quick") else "full" if params.get("full") else "default"
    only = list(params.get("only") or ())
    try:
        options = registry.parse_options(list(params.get("set_") or ()))
        known = registry.option_names(registry.load_runner(name))
        # every unknown key, whatever its value; a known one's value unless it is a placeholder
        checked = {k: v for k, v in options.items() if k not in known or not (isinstance(v, str) and is_placeholder(v))}
        registry.check_request(name, size, only or None, checked)  # what `reproduce` checks first
    except InputError as err:
        cmd.problems.append(str(err))
        return
    real_cases = [c for c in only if not is_placeholder(c)]
    if real_cases and registry.get_experiment(name).cases:
        names = case_names(registry, name, size, checked)
        if names is None:
            cmd.notes.append("case names not checked")
        elif set(real_cases) - set(names):
            bad = [c for c in real_cases if c not in names]
            cmd.problems.append(f"{name} has no case {', '.join(bad)} at size {size} (known: {', '.join(names)})")


class _Cases(Exception):
    def __init__(self, names):
        super().__init__()
        self.names = list(names)


def _alarm(signum, frame):
    raise TimeoutError("case listing took too long")


def case_names(registry, name: str, size: str, options: dict) -> list[str] | None:
    """The experiment's case names at `size`: its run() called up to run_cases/select_cases, which
    are replaced by a stub that raises with the names; None where it does not get there."""
    experiment = registry.get_experiment(name)
    module = importlib.import_module(experiment.module)
    run = getattr(module, experiment.function)
    source = inspect.getsource(run)
    if "run_cases(" not in source and "select_cases(" not in source:
        return None

    def stub_run(_name, _out, _settings, _cases, names, *a, **k):
        raise _Cases(names)

    def stub_select(_name, _cases, names, _only):
        raise _Cases(names)

    saved = {(m, attr): getattr(m, attr) for m in (module, registry) for attr in ("run_cases", "select_cases")
             if hasattr(m, attr)}
    for (m, attr) in saved:
        setattr(m, attr, stub_run if attr == "run_cases" else stub_select)
    use_alarm = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGALRM, _alarm) if use_alarm else None
    try:
        if use_alarm:
            signal.alarm(20)
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            run(Path(tmp) / "out", size=size, progress=False, **options)
    except _Cases as found:
        return found.names
    except Exception:  # could not list them: say so, do not guess
        return None
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        for (m, attr), value in saved.items():
            setattr(m, attr, value)
    return None


# --------------------------------------------------------------------------------------------
# Modules and scripts: their argparse parser parses the arguments, then the program stops


class _Parsed(Exception):
    pass


class _Refused(Exception):
    def __init__(self, code, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@contextlib.contextmanager
def parse_only():
    """ArgumentParser.parse_args / parse_known_args / parse_intermixed_args parse for real (a
    parser inside one parses on as usual), then stop the program: `_Parsed`, or `_Refused`
    with the parser's last line of error."""
    originals = {name: getattr(argparse.ArgumentParser, name)
                 for name in ("parse_args", "parse_known_args", "parse_intermixed_args")}
    state = threading.local()

    def wrap(orig):
        def patched(self, args=None, namespace=None):
            if getattr(state, "inside", False):
                return orig(self, args, namespace)
            state.inside = True
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    orig(self, args, namespace)
            except SystemExit as exit_:
                lines = err.getvalue().strip().splitlines()
                raise _Refused(exit_.code, lines[-1] if lines else f"exit {exit_.code}") from None
            finally:
                state.inside = False
            raise _Parsed()

        return patched

    for name, orig in originals.items():
        setattr(argparse.ArgumentParser, name, wrap(orig))
    try:
        yield
    finally:
        for name, orig in originals.items():
            setattr(argparse.ArgumentParser, name, orig)


def top_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def installed_packages() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]", text)
    return {s.strip().strip('"').rstrip("*") for s in m.group(1).split(",")} if m else set()


def script_module(cmd: Command, target: str) -> tuple[Path, str] | None:
    """`python X.py`: its file and module name, or None (a problem or note says why)."""
    path = (ROOT / cmd.cwd / target).resolve()
    if not path.is_file():
        cmd.problems.append(f"no script {target}")
        return None
    if not path.is_relative_to(ROOT):
        cmd.notes.append("script outside the repository: not checked")
        return None
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    folder = path.parent.name
    if folder in top_imports(path) and folder not in installed_packages():
        cmd.problems.append(f"imports {folder}.* but `python {target}` puts {folder}/, not the repository root, "
                            f"on sys.path (run it as python -m {module})")
    return path, module


def module_file(cmd: Command, module: str) -> Path | None:
    """`python -m X`: its file, or None (a problem says why)."""
    exists = (ROOT / (module.replace(".", "/") + ".py")).exists()
    spec = importlib.util.find_spec(module) if exists else None
    if spec is None:
        near = sorted(p.stem for p in (ROOT / module.split(".")[0]).glob("*.py"))
        close = difflib.get_close_matches(module.rsplit(".", 1)[-1], near, n=2)
        cmd.problems.append(f"no module {module}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        return None
    path = Path(spec.origin)
    siblings = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    bare = top_imports(path) & siblings - {"benchmarks"} if module.startswith("benchmarks.") else set()
    if bare:
        cmd.problems.append(f"imports sibling module(s) {', '.join(sorted(bare))} by bare name: works as "
                            f"`python benchmarks/{path.name}`, not with -m")
    return path


def check_program(cmd: Command, target: str, argv: list[str], *, script: bool) -> None:
    """`target`: a script path (python X.py) or a module name (python -m X)."""
    if script and is_placeholder(Path(target).stem):
        return
    found = script_module(cmd, target) if script else (module_file(cmd, target), target)
    if found is None or found[0] is None:
        return
    path, module = found
    source = path.read_text()
    if "__main__" not in source:
        cmd.problems.append(f"{target} has no `if __name__ == \"__main__\"` block: running it does nothing")
    elif "ArgumentParser" not in source:
        if argv and "sys.argv" not in source:
            cmd.problems.append(f"{target} takes no arguments (no parser; sys.argv unread), given: {' '.join(argv)}")
    else:
        check_parser(cmd, module, target, argv)


def check_parser(cmd: Command, module: str, target: str, argv: list[str]) -> None:
    """`module`'s main() up to its parser, with `argv` as the command line."""
    saved_argv = sys.argv
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main = getattr(importlib.import_module(module), "main", None)
        if not callable(main):
            cmd.notes.append("no main(): arguments not checked")
            return
        sys.argv = [target, *argv]
        with parse_only():
            main(list(argv)) if inspect.signature(main).parameters else main()
        cmd.notes.append("main() returned without parsing arguments")
    except _Parsed:
        pass
    except _Refused as refused:
        message = refused.message.split(": error: ", 1)[-1]
        if refused.code in (0, None) or any(f"'{t}'" in message for t in argv if is_placeholder(t)):
            return
        if message.startswith("the following arguments are required"):
            return cmd.incomplete(message)
        cmd.problems.append(message)
    except Exception as err:
        cmd.problems.append(f"{module} failed before its parser: {type(err).__name__}: {err}")
    finally:
        sys.argv = saved_argv


# --------------------------------------------------------------------------------------------
# make and bash


def check_make(cmd: Command) -> None:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", text))
    for a in cmd.argv:
        override = ENV.match(a)
        if override and override.group(1) not in variables:
            cmd.problems.append(f"make variable {override.group(1)} is not used by the Makefile")
        elif not override and not a.startswith("-") and a not in targets:
            known = ", ".join(sorted(t for t in targets if t[0] != "."))
            cmd.problems.append(f"no make target '{a}' (targets: {known})")


def check_bash(cmd: Command) -> None:
    path = ROOT / cmd.target
    if not path.is_file():
        cmd.problems.append(f"no script {cmd.target}")
        return
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if syntax.returncode:
        cmd.problems.append(f"bash -n: {syntax.stderr.strip()}")
    text = path.read_text()
    top = "\n".join(line for line in text.splitlines() if line and not line[0].isspace() and not line.startswith("#"))
    if not re.search(r"\"?\$[@*]", top):  # a script that passes "$@" on takes any number
        most = max((int(n) for n in re.findall(r"\$\{?([1-9])", top)), default=0)
        required = max((int(n) for n in re.findall(r"\$\{([1-9]):\?", top)), default=0)
        if len(cmd.argv) < required:
            cmd.incomplete(f"{cmd.target} requires {required} positional argument(s), given {len(cmd.argv)}")
        if len(cmd.argv) > most:
            cmd.problems.append(f"{cmd.target} reads {most} positional argument(s), given {len(cmd.argv)}")
    for name in cmd.env:
        if not re.search(rf"\${{?{name}\b", text) and not any(
                name in p.read_text() for p in ROOT.rglob("*.py") if ".venv" not in p.parts):
            cmd.problems.append(f"environment variable {name} is read neither by {cmd.target} nor by any module")


# --------------------------------------------------------------------------------------------
# Putting it together


def check_one(cmd: Command, group) -> None:
    if cmd.kind == "cli":
        check_cli(cmd, cmd.argv, group)
    elif cmd.kind in ("module", "script"):
        check_program(cmd, cmd.target, cmd.argv, script=cmd.kind == "script")
    elif cmd.kind == "make":
        check_make(cmd)
    elif cmd.kind == "bash":
        check_bash(cmd)


def check(cmd: Command, group) -> None:
    """Check `cmd`; a `...` in it is tried first as nothing, then as one placeholder value."""
    if "..." not in cmd.argv:
        return check_one(cmd, group)
    tries = []
    for replacement in ([], ["VALUE"]):
        trial = copy.deepcopy(cmd)
        trial.argv = [r for a in cmd.argv for r in (replacement if a == "..." else [a])]
        check_one(trial, group)
        tries.append(trial)
        if not trial.problems and not trial.fragment:
            break
    best = next((t for t in tries if not t.problems and not t.fragment), None) or \
        next((t for t in tries if not t.problems), tries[0])
    cmd.problems, cmd.notes, cmd.fragment = best.problems, best.notes, best.fragment


@contextlib.contextmanager
def importable():
    """The repository's top folders importable (`python -m benchmarks.X` from a clone), and
    benchmarks/ itself (`python benchmarks/X.py` imports its siblings by name), while it lasts."""
    saved = list(sys.path)
    sys.path[:0] = [str(ROOT)]
    sys.path.append(str(ROOT / "benchmarks"))
    try:
        yield
    finally:
        sys.path[:] = saved


def checked_commands(paths: list[Path]) -> list[tuple[list[str], Command]]:
    """Each distinct command of the markdown files at `paths`, checked, with every place
    ("file:line") it is shown."""
    places: dict[tuple, tuple[list[str], Command]] = {}
    for path in paths:
        for snip in snippets(path):
            for cmd in commands_in(snip):
                key = (cmd.kind, cmd.target, tuple(cmd.argv), tuple(sorted(cmd.env.items())), cmd.cwd, cmd.inline)
                places.setdefault(key, ([], cmd))[0].append(f"{snip.file}:{snip.line}")
    group = cli_group()
    with importable():
        for _, cmd in places.values():
            check(cmd, group)
    return list(places.values())


def broken(results: list[tuple[list[str], Command]]) -> str:
    """One paragraph per broken command: where, the command, what is wrong."""
    return "\n".join(f"{', '.join(where)}: {cmd.text}\n" + "".join(f"    - {p}\n" for p in cmd.problems)
                     for where, cmd in results if cmd.problems)


# --------------------------------------------------------------------------------------------
# Tests


def test_every_command_in_the_docs_runs_as_written():
    results = checked_commands(DOCS)
    assert len(results) > 100, "the extractor found hardly any commands: it no longer reads the docs"
    report = broken(results)
    assert not report, "commands in the docs that would not run as written:\n" + report


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_a_wrong_command_is_reported_with_its_place(tmp_path):
    results = checked_commands([_page(tmp_path, "Run\n\n    slt-superposition reproduce tms-pentagon --quick "
                                                "--bogus\n\nor `python -m experiments.sae_recovery --diagnose`.\n")])
    report = broken(results)
    assert f"{tmp_path / 'page.md'}:3: slt-superposition reproduce tms-pentagon --quick --bogus\n" in report
    assert "No such option: --bogus" in report
    assert f"{tmp_path / 'page.md'}:5: python -m experiments.sae_recovery --diagnose\n" in report
    assert "experiments.sae_recovery has no `if __name__" in report


def test_reproduce_options_are_checked_by_the_registry(tmp_path):
    results = checked_commands([_page(tmp_path, """
    slt-superposition reproduce sae-recovery --full --set settings=resample,fixed-b-pre --out DIR
    slt-superposition reproduce per-feature-basis --set settings=1 --out DIR
    slt-superposition reproduce weights-vs-activations --set seeds='x' --out DIR
    slt-superposition reproduce dln-validation --quick --only no-such-case --out DIR
""")])
    problems = {cmd.argv[1]: cmd.problems for _, cmd in results}
    assert problems["sae-recovery"] == []
    assert problems["per-feature-basis"] == ["experiment 'per-feature-basis' has no option settings (its options: "
                                             "none; settings takes a settings object, from Python only)"]
    assert problems["weights-vs-activations"] == ["--set seeds: expected int (like 8), got 'x'"]
    assert problems["dln-validation"][0].startswith("dln-validation has no case no-such-case")


def test_a_mention_in_prose_without_its_path_is_not_a_command(tmp_path):
    text = ("See `slt-superposition llc` and `python -m analysis.check_power`, or `reproduce --set`;"
            "\n\n    slt-superposition llc --metropolis\n")
    results = checked_commands([_page(tmp_path, text)])
    inline = [cmd for _, cmd in results if cmd.inline]
    assert len(inline) == 3 and all(cmd.fragment and not cmd.problems for cmd in inline)
    (block,) = [cmd for _, cmd in results if not cmd.inline]  # in a code block it is a command, and broken
    assert block.problems == ["Missing argument 'path'."]


@pytest.mark.parametrize("text, expected", [
    ("    slt-superposition reproduce NAME [--quick | --full] --out DIR\n",
     [["reproduce", "NAME", "--quick", "--out", "DIR"], ["reproduce", "NAME", "--full", "--out", "DIR"]]),
    ("```\n$ cd benchmarks && python quick_times.py > out.txt\nslt-superposition 0.1.0\n```\n",
     [["quick_times.py"]]),
    ("    slt-superposition llc run.nc \\\n        --calibrate\n", [["llc", "run.nc", "--calibrate"]]),
])
def test_commands_are_read_as_a_shell_would(tmp_path, text, expected):
    """`[--a | --b]` alternatives, `$ ` prompts (output lines skipped), `cd`, redirections and `\\` continuations."""
    commands = [cmd for snip in snippets(_page(tmp_path, text)) for cmd in commands_in(snip)]
    assert [([cmd.target] if cmd.kind == "script" else []) + cmd.argv for cmd in commands] == expected
