"""Read and validate a rule-set file (TOML). Two passes: the pydantic schema checks shapes and
types; then the rules are checked against the source catalogue and against each other. Every
violation names the file, the rule id and the field, so a policy author can fix the file without
reading code."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from services._common.sources import SOURCES, Source

from .model import (
    MAX_CHECKS_PER_DISPLAY,
    MAX_RULES,
    Check,
    Rule,
    RuleSet,
    Window,
)

DEFAULT_RULE_SET_PATH = Path(__file__).with_name("default.toml")

# Generous upper bounds: they catch a slipped digit (1400 days), not policy.
_MAX_DAYS = 366
_MAX_HOURS = _MAX_DAYS * 24


class RuleSetError(ValueError):
    """A rule-set file that cannot be used. `violations` lists (field path, message), e.g.
    ("rules[close-contact].window_days", "Input should be greater than 0")."""

    def __init__(self, filename: str, violations: list[tuple[str, str]]) -> None:
        self.filename = filename
        self.violations = violations
        super().__init__("\n".join(f"{filename}: {path}: {msg}" for path, msg in violations))


# --- pass 1: the file's shape ------------------------------------------------------------------

_Text = Annotated[str, Field(min_length=1)]
_Days = Annotated[int, Field(gt=0, le=_MAX_DAYS)]
_Hours = Annotated[int, Field(gt=0, le=_MAX_HOURS)]


class _Strict(BaseModel):
    # strict: a quoted "14" or a true where a number belongs is an error, not a guess.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _CheckFile(_Strict):
    source: _Text
    min_level: Annotated[int, Field(ge=1, le=3)] | None = None
    window_days: _Days | None = None
    window_hours: _Hours | None = None


class _RuleFile(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=64)]
    colour: Literal["yellow", "red"]
    match: Literal["any", "all"] = "any"
    # No default: whether a rule may leave the city is a decision, not an accident (R6).
    scope: Literal["local", "shared"]
    window_days: _Days | None = None
    window_hours: _Hours | None = None
    text_zh: _Text
    text_en: _Text
    what_clears_zh: _Text
    what_clears_en: _Text
    checks: Annotated[list[_CheckFile], Field(min_length=1)]
    clears: list[_CheckFile] = []


class _RuleSetFile(_Strict):
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=64)]
    # TOML gives a datetime; a quoted ISO string is accepted too. Naive times are refused:
    # "midnight" must say whose midnight.
    valid_from: Annotated[AwareDatetime, Field(strict=False)] | None = None
    title: str = ""
    rules: Annotated[list[_RuleFile], Field(min_length=1)]


# --- entry points ------------------------------------------------------------------------------


def load_rule_set(path: str | Path) -> RuleSet:
    """Read and validate a rule-set file; RuleSetError names the file on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RuleSetError(str(p), [("", f"cannot read: {e}")]) from e
    return parse_rule_set(text, filename=str(p))


def parse_rule_set(text: str, filename: str = "<text>") -> RuleSet:
    """Parse and validate rule-set TOML. Raises RuleSetError listing every violation found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RuleSetError(filename, [("", f"not valid TOML: {e}")]) from e
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables: a few hundred
        # levels (no rule set has more than four) would otherwise fail the call unexplained.
        raise RuleSetError(filename, [("", "arrays or tables nested too deeply")]) from None
    try:
        parsed = _RuleSetFile.model_validate(raw)
    except ValidationError as e:
        raise RuleSetError(filename, _schema_violations(e, raw)) from None
    violations = _semantic_violations(parsed)
    if violations:
        raise RuleSetError(filename, violations)
    return _build(parsed, filename)


# --- pass 1 errors, with rule ids in the paths -------------------------------------------------


def _schema_violations(err: ValidationError, raw: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for e in err.errors(include_url=False):
        out.append((_path(e["loc"], raw), _message(e)))
    return out


def _path(loc: tuple[int | str, ...], raw: Any) -> str:
    """('rules', 2, 'checks', 0, 'min_level') -> 'rules[close-contact].checks[0].min_level'.
    Rules are named by id, not position: the author searches the file for the id."""
    parts: list[str] = []
    node = raw
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label = str(part)
            if i == 1 and loc[0] == "rules":
                rid = node[part].get("id") if isinstance(node[part], dict) else None
                label = rid if isinstance(rid, str) and rid else f"#{part + 1}"
            parts.append(f"[{label}]")
        else:
            parts.append(part if not parts else f".{part}")
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return "".join(parts)


def _message(e: Any) -> str:
    if e["type"] == "model_type":
        return "should be a TOML table: [[rules]] or { source = ... }"
    if e["type"] == "extra_forbidden":
        return "unknown field (a typo? see services/rules/README.md)"
    if e["type"] == "literal_error" and e["loc"][-1:] == ("colour",):
        return "colour must be 'yellow' or 'red' (green is no rule firing, never a rule's colour)"
    return str(e["msg"])


# --- pass 2: against the catalogue and each other ----------------------------------------------


class _Violations(list[tuple[str, str]]):
    def add(self, path: str, message: str) -> None:
        self.append((path, message))


def _semantic_violations(rs: _RuleSetFile) -> list[tuple[str, str]]:
    out = _Violations()
    if len(rs.rules) > MAX_RULES:
        out.add(
            f"rules[{rs.rules[MAX_RULES].id}]",
            f"{len(rs.rules)} rules; the matcher holds at most {MAX_RULES} in one plan",
        )
    first_seen: dict[str, int] = {}
    display_checks: set[tuple[str, int | None, int | None]] = set()
    over_limit_reported = False
    for n, rule in enumerate(rs.rules, start=1):
        at = f"rules[{rule.id}]"
        if rule.id in first_seen:
            out.add(f"{at}.id", f"duplicate rule id (rule #{first_seen[rule.id]} and #{n})")
        else:
            first_seen[rule.id] = n
        _rule_violations(rule, at, out)
        display_checks.update(_keys(rule))
        if len(display_checks) > MAX_CHECKS_PER_DISPLAY and not over_limit_reported:
            # Name the rule that crosses the line: that is where the author has to choose.
            over_limit_reported = True
            out.add(
                f"{at}.checks",
                f"this rule brings the set to {len(display_checks)} distinct checks; "
                f"a display runs at most {MAX_CHECKS_PER_DISPLAY}",
            )
    return out


def _rule_violations(rule: _RuleFile, at: str, out: _Violations) -> None:
    if rule.window_days is not None and rule.window_hours is not None:
        out.add(f"{at}.window_hours", "give window_days or window_hours, not both")
    rule_window = _window(rule.window_days, rule.window_hours)
    any_dated = False
    phone_raised = False
    seen: dict[tuple[str, int | None, int | None], int] = {}
    for i, c in enumerate(rule.checks):
        where = f"{at}.checks[{i}]"
        src = _check_violations(c, where, out)
        if src is None:
            continue
        if src.clearing:
            out.add(
                f"{where}.source",
                f"{c.source!r} is a clearing source: list it under clears, not checks",
            )
            continue
        any_dated |= src.dated
        phone_raised |= src.keyed_by == "phone"
        own = _window(c.window_days, c.window_hours)
        if src.dated and own is None and rule_window is None:
            out.add(
                f"{where}.window_days",
                f"{c.source!r} is dated: give the rule or the check a window_days or window_hours",
            )
        if not src.dated and own is not None:
            field = "window_days" if c.window_days is not None else "window_hours"
            out.add(
                f"{where}.{field}",
                f"{c.source!r} is undated (its rows are current list entries): "
                "a window has no effect",
            )
        key = _key(c, rule_window)
        if key in seen:
            out.add(where, f"same check as checks[{seen[key]}]")
        seen.setdefault(key, i)
    if rule_window is not None and not any_dated:
        field = "window_days" if rule.window_days is not None else "window_hours"
        out.add(f"{at}.{field}", "every source of this rule is undated: a window has no effect")
    for i, c in enumerate(rule.clears):
        where = f"{at}.clears[{i}]"
        src = _check_violations(c, where, out)
        if src is None:
            continue
        if not src.clearing:
            out.add(
                f"{where}.source",
                f"{c.source!r} raises risk; only a clearing source "
                f"({', '.join(_clearing_names())}) can clear a rule",
            )
            continue
        if src.dated and _window(c.window_days, c.window_hours) is None:
            out.add(
                f"{where}.window_hours",
                "a clearing check needs its own window (e.g. a negative test within 48 hours)",
            )
        if src.keyed_by == "phone" and not phone_raised:
            out.add(
                f"{where}.source",
                f"{c.source!r} clears single phones, but no check of this rule is on a "
                "phone source: it could never clear anything",
            )


def _check_violations(c: _CheckFile, where: str, out: _Violations) -> Source | None:
    """Checks common to raising and clearing entries; the catalogue entry if the source exists."""
    src = SOURCES.get(c.source)
    if src is None:
        out.add(
            f"{where}.source",
            f"unknown source {c.source!r}; known sources: {', '.join(sorted(SOURCES))}",
        )
        return None
    if src.attribute:
        # Where a person lives is not a risk: colouring people by district would be a label
        # on a place, not on a person's own exposure. The what-if report uses it for counts.
        out.add(
            f"{where}.source",
            f"{c.source!r} is an attribute ({src.title_en}), not a risk source: rules can "
            "neither check it nor clear with it (what-if uses it for districts)",
        )
        return None
    if c.window_days is not None and c.window_hours is not None:
        out.add(f"{where}.window_hours", "give window_days or window_hours, not both")
    if c.min_level is not None and not src.has_county:
        counties = ", ".join(n for n, s in SOURCES.items() if s.has_county and s.raising)
        out.add(
            f"{where}.min_level",
            f"{c.source!r} rows carry no county: min_level applies only to county sources "
            f"({counties})",
        )
    return src


def _clearing_names() -> list[str]:
    return [n for n, s in SOURCES.items() if s.clearing]


def _window(days: int | None, hours: int | None) -> Window | None:
    if days is not None:
        return Window(days, "days")
    if hours is not None:
        return Window(hours, "hours")
    return None


def _effective(c: _CheckFile, rule_window: Window | None) -> Check:
    src = SOURCES[c.source]
    window = _window(c.window_days, c.window_hours) or rule_window
    # Undated rows match whatever the window; dropping it keeps equal checks equal.
    return Check(c.source, window if src.dated else None, c.min_level, src.hourly)


def _key(c: _CheckFile, rule_window: Window | None) -> tuple[str, int | None, int | None]:
    if c.source not in SOURCES:
        return (c.source, None, c.min_level)
    return _effective(c, rule_window).key()


def _keys(rule: _RuleFile) -> list[tuple[str, int | None, int | None]]:
    w = _window(rule.window_days, rule.window_hours)
    # Clears never inherit the rule's window: "within 48 hours" is part of the clearing policy.
    return [_key(c, w) for c in rule.checks] + [_key(c, None) for c in rule.clears]


def _build(rs: _RuleSetFile, filename: str) -> RuleSet:
    rules = []
    for r in rs.rules:
        w = _window(r.window_days, r.window_hours)
        rules.append(
            Rule(
                id=r.id,
                colour=r.colour,
                match=r.match,
                scope=r.scope,
                text_zh=r.text_zh.strip(),
                text_en=r.text_en.strip(),
                what_clears_zh=r.what_clears_zh.strip(),
                what_clears_en=r.what_clears_en.strip(),
                checks=tuple(_effective(c, w) for c in r.checks),
                clears=tuple(_effective(c, None) for c in r.clears),
                window=w,
            )
        )
    valid_from: datetime | None = rs.valid_from
    return RuleSet(
        version=rs.version,
        rules=tuple(rules),
        valid_from=valid_from,
        filename=filename,
        title=rs.title,
    )
