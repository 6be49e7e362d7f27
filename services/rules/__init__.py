"""Colour rules (赋码规则, R5, R6, R8): versioned rule-set files, validated against the source
catalogue and compiled to the plain dicts `healthcode_matcher.Plan` takes.

    >>> from services.rules import load_rule_set, DEFAULT_RULE_SET_PATH
    >>> rs = load_rule_set(DEFAULT_RULE_SET_PATH)
    >>> rs.rule("close-contact").colour
    'red'
    >>> all(r.scope == "shared" for r in rs.shared_only().rules)
    True

The file format is described in README.md beside this file. No grpc and no matcher import here:
the colour service compiles `rs.plan_rules()` itself.
"""

from __future__ import annotations

from .model import (
    MAX_CHECKS_PER_DISPLAY,
    MAX_RULES,
    Check,
    Colour,
    Match,
    Rule,
    RuleSet,
    Scope,
    Window,
    select_active,
)
from .parse import DEFAULT_RULE_SET_PATH, RuleSetError, load_rule_set, parse_rule_set

__all__ = [
    "DEFAULT_RULE_SET_PATH",
    "MAX_CHECKS_PER_DISPLAY",
    "MAX_RULES",
    "Check",
    "Colour",
    "Match",
    "Rule",
    "RuleSet",
    "RuleSetError",
    "Scope",
    "Window",
    "load_rule_set",
    "parse_rule_set",
    "select_active",
]
