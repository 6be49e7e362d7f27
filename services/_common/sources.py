"""The catalogue of risk data sources (R4): what each feed is, how its rows are keyed, how stale
it may get before verdicts that depend on it are flagged. Feeds naming any other source are
refused; a new source is added here (the seed's four phases kept adding them).

Most sources raise risk or clear it. An *attribute* source describes people without saying
anything about risk (where they live): the risk index ingests it like any feed, but a rule may
neither check it nor clear with it. It places people in districts for the what-if report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    """One authoritative feed (or declaration-derived list) the rules can check."""

    name: str
    keyed_by: str  # "person" (resident ID number) or "phone" (mobile number)
    has_county: bool  # rows carry a county code (travel, roaming)
    dated: bool  # rows carry a day; undated rows are "currently on the list"
    max_staleness_hours: int  # a verdict depending on an older feed is flagged stale
    title_zh: str
    title_en: str
    clearing: bool = False  # a source that clears rules rather than raising them
    # Describes people (e.g. where they live) and is never a risk: rules may not use it.
    attribute: bool = False
    # Rows carry a time, not only a date: the matcher buckets them by hour, so a window of N
    # hours on this source is exact ("a negative test within 48 hours"). Only for dated sources.
    hourly: bool = False

    def __post_init__(self) -> None:
        if self.hourly and not self.dated:
            raise ValueError(f"source {self.name!r}: an hourly source must be dated")

    @property
    def raising(self) -> bool:
        """A source whose rows can make a rule fire."""
        return not (self.clearing or self.attribute)


_S = Source

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        _S("confirmed", "person", False, True, 24, "确诊病例", "confirmed case"),
        _S("suspected", "person", False, True, 24, "疑似病例", "suspected case"),
        _S("close_contact", "person", False, True, 24, "密切接触者", "close contact"),
        _S("secondary_contact", "person", False, True, 24, "次密切接触者", "secondary contact"),
        _S("inbound_traveller", "person", False, True, 48, "入境人员", "inbound traveller"),
        _S(
            "inbound_co_traveller",
            "person",
            False,
            True,
            48,
            "入境病例同行人员",
            "co-traveller of an inbound case",
        ),
        _S("province_red", "person", False, True, 24, "外省红码", "another province's red code"),
        _S(
            "province_yellow",
            "person",
            False,
            True,
            24,
            "外省黄码",
            "another province's yellow code",
        ),
        _S(
            "rail_co_passenger",
            "person",
            False,
            True,
            48,
            "铁路病例同行人员",
            "railway co-passenger of a case",
        ),
        _S(
            "flight_co_passenger",
            "person",
            False,
            True,
            48,
            "民航病例同行人员",
            "flight co-passenger of a case",
        ),
        _S("home_quarantine", "person", False, False, 48, "居家隔离管控", "home quarantine"),
        _S("sealed_compound", "person", False, False, 48, "封控小区", "sealed compound"),
        _S("grassroots_screening", "person", False, True, 72, "基层排查", "grassroots screening"),
        _S("cold_chain_exposure", "person", False, True, 48, "冷链暴露人员", "cold-chain exposure"),
        _S("fever_clinic", "person", False, True, 24, "发热门诊就诊", "fever-clinic visit"),
        _S("declared_fever", "person", False, True, 24, "申报发热", "declared fever"),
        _S("declared_symptoms", "person", False, True, 24, "申报症状", "declared symptoms"),
        _S(
            "declared_case_contact",
            "person",
            False,
            True,
            24,
            "申报接触病例",
            "declared contact with a case",
        ),
        _S("declared_travel", "person", True, True, 24, "申报行程", "declared travel"),
        _S("telecom_roaming", "phone", True, True, 24, "电信漫游", "telecom roaming"),
        _S(
            "nat_negative",
            "person",
            False,
            True,
            24,
            "核酸检测阴性",
            "negative nucleic-acid test",
            clearing=True,
            hourly=True,  # a test result carries the time the sample was taken
        ),
        _S(
            "community_verified",
            "person",
            False,
            True,
            72,
            "社区报备核实",
            "community verification",
            clearing=True,
        ),
        _S(
            "phone_community_verified",
            "phone",
            False,
            True,
            72,
            "手机号社区核实",
            "community verification of a phone",
            clearing=True,
        ),
        _S(
            "quarantine_released",
            "person",
            False,
            True,
            72,
            "解除隔离",
            "released from quarantine",
            clearing=True,
        ),
        # The public-security household feed (公安户籍/居住登记): the county a person lives in,
        # one undated row per person, sent as a full list (IngestBatch.replace). Districts of
        # the what-if report; the household registry changes slowly, so a week is not stale.
        _S("residence", "person", True, False, 168, "居住地", "residence", attribute=True),
    )
}


def get_source(name: str) -> Source | None:
    """The catalogue entry, or None for a source this deployment does not know."""
    return SOURCES.get(name)
