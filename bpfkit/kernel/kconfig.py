"""Kernel .config fragments: parse them, merge them, and check that kconfig kept
what they asked for.

`make olddefconfig` silently drops any option whose dependencies are not met, so
a fragment line is only a request; `missing_options` compares the request with
the resulting .config and `explain_option` says why kconfig may have said no.
"""

import re
from dataclasses import dataclass
from pathlib import Path

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Map CONFIG_X -> value ('y', 'm', '"str"', '123'); '# CONFIG_X is not set' -> 'n'.
    Works for fragments and full .config files alike."""
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SET_RE.match(line):
            options[match.group(1)] = match.group(2)
        elif match := _UNSET_RE.match(line):
            options[match.group(1)] = "n"
    return options


def read_fragments(paths: list[Path]) -> dict[str, str]:
    """The options a list of fragments requests; a later fragment overrides an
    earlier one, as in merge_config.sh."""
    requested: dict[str, str] = {}
    for path in paths:
        requested.update(parse_config(path.read_text()))
    return requested


@dataclass(frozen=True)
class DroppedOption:
    name: str  # CONFIG_X
    wanted: str
    got: str  # 'n' when absent from .config

    def __str__(self) -> str:
        return f"{self.name}: wanted {self.wanted}, got {self.got}"


def missing_options(requested: dict[str, str], actual: dict[str, str]) -> list[DroppedOption]:
    """Options whose final value differs from the request. An absent option counts
    as 'n' (kconfig omits symbols whose menu is disabled)."""
    dropped = []
    for name, wanted in requested.items():
        got = actual.get(name, "n")
        if got != wanted and not (wanted == "m" and got == "y"):  # built in is what mod2yesconfig makes of m
            dropped.append(DroppedOption(name, wanted, got))
    return dropped


_CONFIG_BLOCK_RE = r"^\s*(?:menu)?config\s+{name}\s*$"
_DEPENDS_RE = re.compile(r"^\s*depends\s+on\s+(.+?)\s*$")
_SYMBOL_RE = re.compile(r"\b[A-Z][A-Z0-9_]+\b")


def find_dependencies(source_tree: Path, name: str) -> list[str]:
    """'depends on' expressions of CONFIG_<name> in the tree's Kconfig files
    (a cheap grep, not a Kconfig parser: enough to point at the culprit)."""
    symbol = name.removeprefix("CONFIG_")
    block_start = re.compile(_CONFIG_BLOCK_RE.format(name=re.escape(symbol)))
    expressions: list[str] = []
    for kconfig in source_tree.rglob("Kconfig*"):
        try:
            lines = kconfig.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for index, line in enumerate(lines):
            if not block_start.match(line):
                continue
            for body in lines[index + 1 :]:
                stripped = body.strip()
                # The block ends at the next entry; its help text may say anything.
                if re.match(r"^(?:menu)?config\s|^(?:end)?(?:menu|choice|if)\b|^source\s|^help\b|^---help---",
                            stripped):
                    break
                if match := _DEPENDS_RE.match(body):
                    expressions.append(match.group(1))
    return expressions


def explain_option(source_tree: Path, dropped: DroppedOption, actual: dict[str, str]) -> str:
    """One line: the dropped option, its dependencies, and the values those have."""
    expressions = find_dependencies(source_tree, dropped.name)
    if not expressions:
        return f"{dropped} (no such symbol in this tree's Kconfig? renamed or removed)"
    values = []
    for symbol in sorted({s for expr in expressions for s in _SYMBOL_RE.findall(expr)}):
        if symbol in {"y", "m", "n"}:
            continue
        values.append(f"{symbol}={actual.get('CONFIG_' + symbol, 'n')}")
    return f"{dropped} (depends on {' && '.join(expressions)}; now {', '.join(values)})"
