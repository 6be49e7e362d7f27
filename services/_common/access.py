"""Who may call what: the one table every service's AuthInterceptor applies (issue 10, R15).

Keys are full gRPC method names; values the roles whose credential may call the method. A
method missing here is refused to everyone (tests/unit/test_access_matrix.py checks that every
RPC of every service has an entry and that each role reaches only what its row allows). The
services' own checks (a citizen acts only for themself, a proxy only under a mandate) come on
top: this table says which doors a role may knock on, the logic what it may do inside.

A person's token carries CITIZEN and may act as FAMILY_PROXY; platform services, feeds and
partners are known by their certificates; staff by their tokens.
"""

from __future__ import annotations

from services._common.actors import Role

# Health checks and reflection: any connection with a platform certificate, an edge without a
# token too.
ANY_CALLER = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Signing in is how one gets a token: these methods too take an edge without one (and read no
# actor). Exact names: every other method of AccountService needs a credential.
SIGN_IN = frozenset(
    {
        "/healthcode.v1.AccountService/RequestSignInCode",
        "/healthcode.v1.AccountService/SignIn",
        "/healthcode.v1.AccountService/SignInStaff",
    }
)

C, FP, GW, V = Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER, Role.VERIFIER
FEED, PARTNER, ADMIN, SERVICE, SUPPORT = (
    Role.FEED,
    Role.PARTNER,
    Role.ADMIN,
    Role.SERVICE,
    Role.SUPPORT,
)
# Acting for a person: themself, a family member, a grid worker (under a mandate).
PEOPLE = frozenset({C, FP, GW})
EVERYONE = frozenset(Role)

_DECLARATION = "/healthcode.v1.DeclarationService/"
_RISK_INDEX = "/healthcode.v1.RiskIndexService/"
_COLOUR = "/healthcode.v1.ColourService/"
_DISPLAY = "/healthcode.v1.DisplayService/"
_ACCOUNT = "/healthcode.v1.AccountService/"

ACCESS: dict[str, frozenset[Role]] = {
    # declaration: people register and declare; the support desk corrects phone links after an
    # appeal; services read the masked holder of a code.
    _DECLARATION + "Register": PEOPLE,
    _DECLARATION + "Declare": PEOPLE,
    _DECLARATION + "AddPhone": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "RemovePhone": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "LinkTransitCard": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "GetPerson": PEOPLE | {ADMIN, SERVICE, SUPPORT},
    _DECLARATION + "ImportPeople": frozenset({ADMIN}),
    # mandates (who may act for whom): granted by the holder or an admin, revoked by either
    # side or the support desk, checked by the display before a proxy's Show.
    _DECLARATION + "GrantMandate": frozenset({C, ADMIN}),
    _DECLARATION + "RevokeMandate": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "ListMandates": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "CheckMandate": frozenset({SERVICE, ADMIN}),
    # printed cards (R3, docs/cards.md): the holder, a proxy (under a mandate, checked by the
    # service) and staff issue, revoke and list; the display checks each scanned card; the
    # card keys are public.
    _DECLARATION + "IssuePrintedCard": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "RevokePrintedCard": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "ListPrintedCards": PEOPLE | {ADMIN, SUPPORT},
    _DECLARATION + "CheckPrintedCard": frozenset({SERVICE}),
    _DECLARATION + "ListCardKeys": EVERYONE,
    # risk index: feeds write their sources; the registry is the declaration service's.
    _RISK_INDEX + "IngestBatch": frozenset({FEED, SERVICE, ADMIN}),
    _RISK_INDEX + "SetCountyLevel": frozenset({ADMIN, FEED}),
    _RISK_INDEX + "RegisterPerson": frozenset({SERVICE, ADMIN}),
    _RISK_INDEX + "LinkPhone": frozenset({SERVICE, ADMIN}),
    _RISK_INDEX + "UnlinkPhone": frozenset({SERVICE, ADMIN}),
    _RISK_INDEX + "LinkCard": frozenset({SERVICE, ADMIN}),
    _RISK_INDEX + "RegisterPeople": frozenset({SERVICE, ADMIN}),
    _RISK_INDEX + "ListSources": frozenset({FEED, SERVICE, ADMIN, SUPPORT}),
    _RISK_INDEX + "GetIndexVersion": frozenset({FEED, PARTNER, SERVICE, ADMIN, SUPPORT}),
    _RISK_INDEX + "WatchIndex": frozenset({SERVICE, ADMIN}),
    _RISK_INDEX + "PublishRuleSet": frozenset({SERVICE, ADMIN}),
    # manual colour overrides (the support desk's correction after an appeal): set, cleared and
    # audited by the support desk and administrators only.
    _RISK_INDEX + "OverrideColour": frozenset({SUPPORT, ADMIN}),
    _RISK_INDEX + "ClearOverride": frozenset({SUPPORT, ADMIN}),
    _RISK_INDEX + "ListOverrides": frozenset({SUPPORT, ADMIN}),
    # cold chain and other provinces (issue 11, items 9 and 10; served by the risk index): the
    # access table admits partners, the services check their kind (cold_chain, other_province;
    # a province's partner exchanges its own province only). Enrolling exchange hashes takes
    # raw ID numbers: platform services and operators only.
    "/healthcode.v1.ColdChainService/PostExposure": frozenset({PARTNER, ADMIN}),
    "/healthcode.v1.ColdChainService/ListBatchPeople": frozenset({PARTNER, ADMIN, SUPPORT}),
    "/healthcode.v1.ProvinceExchangeService/EnrolExchangeHashes": frozenset({SERVICE, ADMIN}),
    "/healthcode.v1.ProvinceExchangeService/ExportStatus": frozenset({PARTNER, ADMIN}),
    "/healthcode.v1.ProvinceExchangeService/ImportStatus": frozenset({PARTNER, ADMIN}),
    "/healthcode.v1.ProvinceExchangeService/ListProvinces": frozenset(
        {PARTNER, ADMIN, SUPPORT, SERVICE}
    ),
    # colour: a person's own colour comes through Show; Evaluate answers staff and partners
    # about anyone, so people may not call it. Reasons (Explain) only for the holder, their
    # proxies and the support desk.
    # Evaluate answers any person's whole verdict, reasons included: platform services and
    # staff only. Verifiers and partners get their context's minimal verdict from the display
    # (Scan, PartnerService); exam organisers check lists through EvaluateStream's colours.
    _COLOUR + "Evaluate": frozenset({SERVICE, ADMIN, SUPPORT}),
    _COLOUR + "EvaluateStream": frozenset({PARTNER, SERVICE, ADMIN}),
    _COLOUR + "SetRuleSet": frozenset({ADMIN}),
    _COLOUR + "GetStatus": frozenset({SERVICE, ADMIN, SUPPORT}),
    _COLOUR + "Explain": PEOPLE | {SERVICE, ADMIN, SUPPORT},
    _COLOUR + "WhatIf": frozenset({ADMIN}),
    # display: people show their code; verifiers and partners scan; counters for operators.
    _DISPLAY + "Show": PEOPLE,
    _DISPLAY + "Scan": frozenset({V, PARTNER}),
    _DISPLAY + "WatchCounters": frozenset({SERVICE, ADMIN, SUPPORT}),
    _DISPLAY + "GetVerificationKey": EVERYONE,
    # partners at the edges (issue 11, items 6 and 8; served by the display): bus scanners and
    # hospital triage. The table admits verifiers and partners; the service checks the kind (a
    # bus_operator or a verifier at a bus; a hospital or a verifier at a hospital).
    "/healthcode.v1.PartnerService/BusScan": frozenset({V, PARTNER}),
    "/healthcode.v1.PartnerService/Triage": frozenset({V, PARTNER}),
    # consent for partner look-ups (issue 11, item 11; served by the declaration process): the
    # display asks before each partner look-up; the holder, a proxy (under a mandate, checked
    # by the service) and the support desk see and withdraw partners' access.
    "/healthcode.v1.ConsentService/CheckPartnerAccess": frozenset({SERVICE}),
    "/healthcode.v1.ConsentService/ListPartnerAccess": PEOPLE | {SUPPORT},
    "/healthcode.v1.ConsentService/RevokePartnerAccess": PEOPLE | {SUPPORT},
    "/healthcode.v1.ConsentService/RestorePartnerAccess": PEOPLE | {SUPPORT},
    # signing in (also without a token: SIGN_IN); staff accounts are the administrator's.
    _ACCOUNT + "RequestSignInCode": EVERYONE,
    _ACCOUNT + "SignIn": EVERYONE,
    _ACCOUNT + "SignInStaff": EVERYONE,
    _ACCOUNT + "CreateStaffAccount": frozenset({ADMIN}),
    _ACCOUNT + "DisableStaffAccount": frozenset({ADMIN}),
}
