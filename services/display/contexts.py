"""What a verifier may see and do, per context (issue 11, item 5): one table.

A scan answers a verifier with a decision (pass, refer or deny), the colour and the masked name,
never the reasons or sources behind the colour: those are the holder's (Show, Explain), their
proxies' and the support desk's. The decision depends on where the verifier works, as the seed
describes each place:

| context    | green | yellow | red   | a fever (>= 37.3 °C) counts as |
|------------|-------|--------|-------|--------------------------------|
| venue      | pass  | deny   | deny  | yellow                         |
| bus        | pass  | deny   | deny  | yellow                         |
| exam       | pass  | refer  | refer | yellow                         |
| hospital   | pass  | refer  | refer | yellow                         |
| staff_desk | pass  | refer  | deny  | yellow                         |

- Venues and buses: "持绿码全市通行" (a green code passes everywhere in the city); a code that is
  not green is not let in or on board (the bus scanner alerts the driver, R11).
- Exam halls refer a candidate who is not green to the separate exam room ("合理安排考场"); the
  seed's red-code candidate still sat the exam once verified.
- Hospitals never deny care: a yellow or red patient goes to the fever clinic / key-group
  pathway (预检分诊, 分级诊疗, R13).
- A staff desk (代查 by ID card, R10) holds a yellow code for a check (a test result or a
  community verification may be missing) and turns a red one away.

A verifier's context is in their token (`Caller.context`); a partner's kind maps to one. A
development run without credentials has no caller: it is treated as a venue.
"""

from __future__ import annotations

import enum

from services._common.actors import Role
from services._common.auth import VERIFIER_CONTEXTS, Caller


class Decision(enum.IntEnum):
    """Ordered by severity, so a fever can only make a decision stricter."""

    PASS = 1
    REFER = 2
    DENY = 3


P, R, D = Decision.PASS, Decision.REFER, Decision.DENY

# (green, yellow, red) decisions per context; a fever counts as yellow.
DECISIONS: dict[str, tuple[Decision, Decision, Decision]] = {
    "venue": (P, D, D),
    "bus": (P, D, D),
    "exam": (P, R, R),
    "hospital": (P, R, R),
    "staff_desk": (P, R, D),
}

# What a REFER or DENY means at each place, in one line for the verifier.
INSTRUCTIONS: dict[tuple[str, Decision], str] = {
    ("venue", D): "Do not admit; the person checks their code and its reasons in their own app.",
    ("bus", D): "Do not board; the passenger checks their code and its reasons in their own app.",
    ("exam", R): "Seat the candidate in the separate exam room and tell the exam office.",
    ("hospital", R): "Send the patient to the fever clinic (预检分诊); do not refuse care.",
    ("staff_desk", R): "Hold for a check: the person may owe a test or a community verification.",
    ("staff_desk", D): "Do not admit; report to the community following the local procedure.",
}

# A partner scanning codes acts in the context its kind works in.
PARTNER_CONTEXTS: dict[str, str] = {
    "bus_operator": "bus",
    "hospital": "hospital",
    "exam_organiser": "exam",
    "cold_chain": "venue",
    "other_province": "venue",
}

# Without credentials (a development run) there is no caller to read a context from.
DEFAULT_CONTEXT = "venue"

assert set(DECISIONS) == VERIFIER_CONTEXTS, "every verifier context needs a row"
assert set(PARTNER_CONTEXTS.values()) <= VERIFIER_CONTEXTS


def context_of(caller: Caller | None) -> str:
    """The context a caller scans in: a verifier's workplace, a partner's kind's; the default
    for a development run without credentials or a token naming no known workplace."""
    if caller is None:
        return DEFAULT_CONTEXT
    if caller.role is Role.PARTNER:
        return PARTNER_CONTEXTS.get(caller.context, DEFAULT_CONTEXT)
    return caller.context if caller.context in DECISIONS else DEFAULT_CONTEXT


def decide(context: str, colour: int, fever: bool = False) -> Decision:
    """The decision for a live colour (0 green, 1 yellow, 2 red) and a measured fever."""
    row = DECISIONS[context]
    decision = row[colour]
    return max(decision, row[1]) if fever else decision


def instruction(context: str, decision: Decision) -> str:
    """One line saying what the decision means here; empty for PASS."""
    return INSTRUCTIONS.get((context, decision), "")
