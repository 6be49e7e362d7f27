//! Rule plans and their evaluation.
//!
//! A plan is evaluated over a whole index version for one day at once: every check becomes a
//! bitmap of persons (window unions of day buckets; phone sources projected onto holders), every
//! rule a bitmap of the persons it fires for. The result, [`Verdicts`], keeps the (fired,
//! cleared) masks of every person who is not plain green, in blocks of 512 persons with a bit
//! each, so the per-person question ("what colour, and which rules?") is a bit test and an
//! array read, and a batch is the same in parallel. It also keeps each check's window union,
//! from which [`Verdicts::update`] carries it to the next index version for only the persons a
//! change touches. Why a rule fired (source, day, which phone) is worked out on demand by
//! [`Verdicts::explain`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::blocks::Blocks;
use crate::bucket::{self, Bucket};
use crate::errors::{MatcherError, Result};
use crate::index::{Index, KeyedBy, Source, NO_COUNTY, UNDATED};

/// Colours, by severity.
pub const GREEN: u8 = 0;
/// Yellow.
pub const YELLOW: u8 = 1;
/// Red.
pub const RED: u8 = 2;
/// Rules in one plan: one bit each in a u64 mask.
pub const MAX_RULES: usize = 64;
/// Checks in one plan (raising and clearing together).
pub const MAX_CHECKS: usize = 1024;

/// One condition: a person (or one of their phones) is in a source within a window.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Check {
    /// The source name.
    pub source: String,
    /// The window in days ending today; `None` covers every bucket (unless `hours` is set).
    pub days: Option<u32>,
    /// Hourly sources only: the window in hours ending at the current hour.
    pub hours: Option<u32>,
    /// County sources only: counties whose current level is at least this.
    pub min_level: Option<u8>,
}

/// One rule: a colour, its checks, and what clears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// A stable id, shown to people and support staff.
    pub id: String,
    /// `YELLOW` or `RED`.
    pub colour: u8,
    /// True: every check must hold; false: any one.
    pub match_all: bool,
    /// The raising checks.
    pub checks: Vec<Check>,
    /// The clearing checks: person-keyed ones clear the rule, phone-keyed ones the phone.
    pub clears: Vec<Check>,
}

/// A validated rule plan.
///
/// ```
/// use healthcode_matcher::plan::{Check, Plan, Rule, GREEN, RED, YELLOW};
///
/// let check = |source: &str, days| Check {
///     source: source.into(),
///     days,
///     hours: None,
///     min_level: None,
/// };
/// let rule = |id: &str, colour, source| Rule {
///     id: id.into(),
///     colour,
///     match_all: false,
///     checks: vec![check(source, Some(14))],
///     clears: vec![],
/// };
/// let plan = Plan::new(
///     "2022-04".into(),
///     vec![rule("fever", YELLOW, "declared_fever"), rule("contact", RED, "close_contact")],
/// )?;
/// // bit i of a fired mask is rule i; the most severe fired rule gives the colour
/// assert_eq!(plan.colour_of(0b00), GREEN);
/// assert_eq!(plan.colour_of(0b01), YELLOW);
/// assert_eq!(plan.colour_of(0b11), RED);
/// assert_eq!(plan.check_count(), 2);
///
/// let twice = Plan::new("x".into(), vec![rule("a", RED, "s"), rule("a", RED, "t")]);
/// assert!(twice.unwrap_err().to_string().contains("rule \"a\" (id)"));
/// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Plan {
    /// A label of the rule set it came from.
    pub version: String,
    /// The rules, in mask-bit order.
    pub rules: Vec<Rule>,
    red_mask: u64,
    yellow_mask: u64,
}

impl Plan {
    /// Validate and compile rules. Errors name the rule and the field.
    pub fn new(version: String, rules: Vec<Rule>) -> Result<Self> {
        if rules.len() > MAX_RULES {
            return Err(MatcherError::Plan(format!(
                "a plan holds at most {MAX_RULES} rules, this one has {}",
                rules.len()
            )));
        }
        let total: usize = rules.iter().map(|r| r.checks.len() + r.clears.len()).sum();
        if total > MAX_CHECKS {
            return Err(MatcherError::Plan(format!(
                "a plan holds at most {MAX_CHECKS} checks, this one has {total}"
            )));
        }
        let (mut red_mask, mut yellow_mask) = (0u64, 0u64);
        for (i, r) in rules.iter().enumerate() {
            let at = |f: &str| format!("rule {:?} ({f})", r.id);
            if r.id.is_empty() {
                return Err(MatcherError::Plan(format!(
                    "rule #{i}: the id must not be empty"
                )));
            }
            if rules[..i].iter().any(|o| o.id == r.id) {
                return Err(MatcherError::Plan(format!(
                    "{}: the id is used twice",
                    at("id")
                )));
            }
            match r.colour {
                YELLOW => yellow_mask |= 1 << i,
                RED => red_mask |= 1 << i,
                _ => {
                    return Err(MatcherError::Plan(format!(
                        "{}: a rule is yellow or red",
                        at("colour")
                    )))
                }
            }
            if r.checks.is_empty() {
                return Err(MatcherError::Plan(format!(
                    "{}: a rule needs a check",
                    at("checks")
                )));
            }
            for (field, list) in [("checks", &r.checks), ("clears", &r.clears)] {
                for (j, c) in list.iter().enumerate() {
                    if c.days == Some(0) {
                        return Err(MatcherError::Plan(format!(
                            "{}: days must be at least 1",
                            at(&format!("{field}[{j}].days"))
                        )));
                    }
                    if c.hours == Some(0) {
                        return Err(MatcherError::Plan(format!(
                            "{}: hours must be at least 1",
                            at(&format!("{field}[{j}].hours"))
                        )));
                    }
                    if c.days.is_some() && c.hours.is_some() {
                        return Err(MatcherError::Plan(format!(
                            "{}: give days or hours, not both",
                            at(&format!("{field}[{j}]"))
                        )));
                    }
                    if matches!(c.min_level, Some(l) if l == 0 || l > 3) {
                        return Err(MatcherError::Plan(format!(
                            "{}: min_level is 1 (low), 2 (medium) or 3 (high)",
                            at(&format!("{field}[{j}].min_level"))
                        )));
                    }
                }
            }
        }
        Ok(Plan {
            version,
            rules,
            red_mask,
            yellow_mask,
        })
    }

    /// The colour of a fired mask: the most severe rule in it.
    #[inline]
    pub fn colour_of(&self, fired: u64) -> u8 {
        if fired & self.red_mask != 0 {
            RED
        } else if fired & self.yellow_mask != 0 {
            YELLOW
        } else {
            GREEN
        }
    }

    /// Number of checks, raising and clearing.
    pub fn check_count(&self) -> usize {
        self.rules
            .iter()
            .map(|r| r.checks.len() + r.clears.len())
            .sum()
    }

    /// Check every source a plan names against an index (kind, counties).
    pub fn bind_check(&self, index: &Index) -> Result<()> {
        for r in &self.rules {
            for (field, list) in [("checks", &r.checks), ("clears", &r.clears)] {
                for (j, c) in list.iter().enumerate() {
                    let s = index
                        .source(&c.source)
                        .map_err(|e| e.at(&format!("rule {:?} ({field}[{j}].source)", r.id)))?;
                    if c.min_level.is_some() && !s.has_county {
                        return Err(MatcherError::Plan(format!(
                            "rule {:?} ({field}[{j}].min_level): source {:?} has no counties",
                            r.id, c.source
                        )));
                    }
                    if c.hours.is_some() && !s.hourly {
                        return Err(MatcherError::Plan(format!(
                            "rule {:?} ({field}[{j}].hours): source {:?} is daily; give days",
                            r.id, c.source
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// When a plan is evaluated: the day ends the windows of daily sources, the hour (one of that
/// day's) those of hourly sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Day number (Asia/Shanghai).
    pub today: u32,
    /// Hour number (Asia/Shanghai); `hour / 24 == today`.
    pub hour: u32,
}

impl Now {
    /// The last hour of `today`: for callers that only know the day.
    pub fn end_of(today: u32) -> Self {
        Now {
            today,
            hour: today.saturating_mul(24).saturating_add(23),
        }
    }
}

/// Whether a bucket time `t` (a day, or an hour for an hourly source) is in the check's window:
/// the last `n` units ending now. Undated rows are always in.
pub(crate) fn in_window(t: u32, hourly: bool, c: &Check, now: Now) -> bool {
    if t == UNDATED {
        return true;
    }
    let (end, n) = match (hourly, c.days, c.hours) {
        (_, None, None) => return true,
        (false, Some(d), _) => (now.today, d),
        (true, Some(d), _) => (now.hour, d.saturating_mul(24)),
        (_, None, Some(h)) => (now.hour, h),
    };
    // `end - t` cannot overflow once `t <= end`; `t + n` could
    t <= end && end - t < n
}

/// The buckets of a source that a check covers now.
fn buckets<'a>(
    index: &'a Index,
    s: &'a Source,
    c: &'a Check,
    now: Now,
) -> impl Iterator<Item = (u32, u32, &'a Bucket)> + 'a {
    s.buckets.iter().filter_map(move |(&(county, t), b)| {
        (level_ok(index, c, county) && in_window(t, s.hourly, c, now)).then_some((
            county,
            t,
            b.as_ref(),
        ))
    })
}

/// Whether a county's current level satisfies the check's `min_level` (any county does
/// without one).
pub(crate) fn level_ok(index: &Index, c: &Check, county: u32) -> bool {
    match c.min_level {
        None => true,
        Some(l) => county != NO_COUNTY && index.level(county) >= l,
    }
}

pub(crate) fn window_union(index: &Index, c: &Check, now: Now) -> RoaringBitmap {
    let s = &index.sources[&c.source];
    bucket::union(buckets(index, s, c, now).map(|(_, _, b)| b))
}

fn holders_of(index: &Index, phones: &RoaringBitmap) -> RoaringBitmap {
    let mut ids: Vec<u32> = phones
        .iter()
        .filter_map(|f| index.registry.phone_holder(f))
        .collect();
    ids.par_sort_unstable();
    ids.dedup();
    RoaringBitmap::from_sorted_iter(ids).expect("sorted and deduplicated")
}

/// Where each check of a plan finds its window union: checks that read the same source through
/// the same window and level share one slot, so their union is computed (and kept) once.
#[derive(Debug)]
pub(crate) struct Slots {
    /// The distinct checks, one per slot.
    pub(crate) checks: Vec<Check>,
    /// Per rule: the slot of each raising check, then of each clearing check.
    pub(crate) of_rule: Vec<(Vec<usize>, Vec<usize>)>,
}

impl Slots {
    pub(crate) fn of(plan: &Plan) -> Self {
        fn slot<'p>(
            c: &'p Check,
            at: &mut HashMap<&'p Check, usize>,
            all: &mut Vec<Check>,
        ) -> usize {
            *at.entry(c).or_insert_with(|| {
                all.push(c.clone());
                all.len() - 1
            })
        }
        let mut checks = Vec::new();
        let mut at = HashMap::new();
        let mut of_rule = Vec::with_capacity(plan.rules.len());
        for r in &plan.rules {
            let raise = r
                .checks
                .iter()
                .map(|c| slot(c, &mut at, &mut checks))
                .collect();
            let clear = r
                .clears
                .iter()
                .map(|c| slot(c, &mut at, &mut checks))
                .collect();
            of_rule.push((raise, clear));
        }
        Slots { checks, of_rule }
    }
}

/// A check's persons after phone clears, and before them when they differ.
type CheckPersons<'a> = (Cow<'a, RoaringBitmap>, Option<RoaringBitmap>);

/// (fired, cleared) persons of one rule, from the window unions of its checks (`raise`,
/// `clear`: their slots in `unions`). Unions restricted to some persons and their phones give
/// the rule's sets restricted to those persons.
pub(crate) fn rule_sets(
    index: &Index,
    r: &Rule,
    (raise, clear): (&[usize], &[usize]),
    unions: &[Arc<RoaringBitmap>],
) -> (RoaringBitmap, RoaringBitmap) {
    let keyed = |c: &Check| index.sources[&c.source].keyed_by;
    let mut phone_clear = RoaringBitmap::new();
    let mut person_clear = RoaringBitmap::new();
    for (c, &slot) in r.clears.iter().zip(clear) {
        match keyed(c) {
            KeyedBy::Phone => phone_clear |= unions[slot].as_ref(),
            KeyedBy::Person => person_clear |= unions[slot].as_ref(),
        }
    }
    // each check as persons, with phone clears applied and (if they removed anything) without
    let per_check: Vec<CheckPersons<'_>> = r
        .checks
        .iter()
        .zip(raise)
        .map(|(c, &slot)| {
            let u = unions[slot].as_ref();
            match keyed(c) {
                KeyedBy::Person => (Cow::Borrowed(u), None),
                KeyedBy::Phone if phone_clear.is_empty() => {
                    (Cow::Owned(holders_of(index, u)), None)
                }
                KeyedBy::Phone => {
                    let raw = holders_of(index, u);
                    let kept = holders_of(index, &(u - &phone_clear));
                    (Cow::Owned(kept), Some(raw))
                }
            }
        })
        .collect();
    fn combine<'b>(
        per_check: &'b [CheckPersons<'_>],
        match_all: bool,
        pick: impl Fn(&'b CheckPersons<'_>) -> &'b RoaringBitmap,
    ) -> RoaringBitmap {
        let mut it = per_check.iter().map(pick);
        let first = it.next().cloned().unwrap_or_default();
        it.fold(first, |acc, b| if match_all { acc & b } else { acc | b })
    }
    let matched = combine(&per_check, r.match_all, |(w, _)| w.as_ref());
    let matched_raw = if per_check.iter().any(|(_, raw)| raw.is_some()) {
        combine(&per_check, r.match_all, |(w, raw)| {
            raw.as_ref().unwrap_or(w.as_ref())
        })
    } else {
        matched.clone()
    };
    let fired = matched - &person_clear;
    let cleared = matched_raw - &fired;
    (fired, cleared)
}

/// The window union of every slot, in parallel.
pub(crate) fn slot_unions(index: &Index, slots: &Slots, now: Now) -> Vec<Arc<RoaringBitmap>> {
    slots
        .checks
        .par_iter()
        .map(|c| Arc::new(window_union(index, c, now)))
        .collect()
}

/// Every rule's (fired, cleared) persons, rules in parallel.
pub(crate) fn all_rule_sets(
    index: &Index,
    plan: &Plan,
    slots: &Slots,
    unions: &[Arc<RoaringBitmap>],
) -> Vec<(RoaringBitmap, RoaringBitmap)> {
    plan.rules
        .par_iter()
        .zip(&slots.of_rule)
        .map(|(r, (raise, clear))| rule_sets(index, r, (raise, clear), unions))
        .collect()
}

/// One person's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The person.
    pub person: u32,
    /// `GREEN`, `YELLOW` or `RED`.
    pub colour: u8,
    /// Rules that fired and were not cleared (bit i = rule i).
    pub fired: u64,
    /// Rules whose checks matched but that a clearing source cleared.
    pub cleared: u64,
}

/// Why one check matched, or what cleared it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Index of the rule in the plan.
    pub rule: usize,
    /// The source.
    pub source: String,
    /// The latest matching day (`None`: an undated row).
    pub day: Option<u32>,
    /// For an hourly source, the latest matching hour.
    pub hour: Option<u32>,
    /// The linked phone the row was about.
    pub phone: Option<u32>,
    /// The county of the row.
    pub county: Option<u32>,
    /// "fired", "cleared" or "phone_cleared".
    pub role: &'static str,
}

/// The day of a bucket time (`None` for undated rows).
fn day_of(s: &Source, t: u32) -> Option<u32> {
    (t != UNDATED).then_some(if s.hourly { t / 24 } else { t })
}

/// The hour of a bucket time of an hourly source.
fn hour_of(s: &Source, t: u32) -> Option<u32> {
    (s.hourly && t != UNDATED).then_some(t)
}

/// A plan evaluated over an index on one day.
///
/// ```
/// use std::sync::Arc;
/// use healthcode_matcher::index::{Index, KeyedBy};
/// use healthcode_matcher::plan::{Check, Plan, Rule, Verdicts, GREEN, RED};
///
/// let mut b = Index::new([7; 32]).builder();
/// b.define_source("close_contact", KeyedBy::Person, false, false)?;
/// b.define_source("nat_negative", KeyedBy::Person, false, false)?;
/// let (ann, bo, cy) = (b.add_person_key(1), b.add_person_key(2), b.add_person_key(3));
/// b.add_rows("close_contact", &[ann, bo], 100, None)?;
/// b.add_rows("nat_negative", &[bo], 101, None)?;
/// let index = Arc::new(b.finish());
///
/// let check = |source: &str, days| Check {
///     source: source.into(),
///     days: Some(days),
///     hours: None,
///     min_level: None,
/// };
/// let plan = Arc::new(Plan::new(
///     "t".into(),
///     vec![Rule {
///         id: "close-contact".into(),
///         colour: RED,
///         match_all: false,
///         checks: vec![check("close_contact", 14)],
///         clears: vec![check("nat_negative", 2)],
///     }],
/// )?);
/// let v = Verdicts::new(index, plan, 102)?;
/// assert_eq!(v.evaluate(ann)?.colour, RED);
/// let cleared = v.evaluate(bo)?;
/// assert_eq!((cleared.colour, cleared.fired, cleared.cleared), (GREEN, 0, 0b1));
/// assert_eq!(v.explain(bo)?.iter().map(|e| e.role).collect::<Vec<_>>(), ["fired", "cleared"]);
/// assert_eq!(v.colour_counts(), [2, 0, 1]);
/// assert_eq!(v.non_green().iter().collect::<Vec<_>>(), [ann]);
/// assert!(v.evaluate(cy + 1).is_err(), "an unknown person is an error, not green");
/// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
/// ```
pub struct Verdicts {
    /// The index evaluated.
    pub index: Arc<Index>,
    /// The plan evaluated.
    pub plan: Arc<Plan>,
    /// The day (Asia/Shanghai day number).
    pub today: u32,
    /// The hour (Asia/Shanghai hour number, one of `today`'s).
    pub hour: u32,
    /// Which slot each check of the plan reads.
    pub(crate) slots: Arc<Slots>,
    /// The window union of every slot (over persons or phones, as the source is keyed), kept
    /// so that [`Verdicts::update`] re-evaluates only the persons a change touches.
    pub(crate) unions: Vec<Arc<RoaringBitmap>>,
    /// Every person's masks.
    pub(crate) blocks: Blocks,
    pub(crate) rule_counts: Vec<u64>,
    pub(crate) colour_counts: [u64; 3],
}

impl Verdicts {
    /// Evaluate every person. Rules run in parallel.
    pub fn new(index: Arc<Index>, plan: Arc<Plan>, today: u32) -> Result<Self> {
        Self::at(index, plan, Now::end_of(today))
    }

    /// Evaluate every person at an hour (which ends the windows of hourly sources).
    pub fn at(index: Arc<Index>, plan: Arc<Plan>, now: Now) -> Result<Self> {
        if now.hour / 24 != now.today {
            return Err(MatcherError::Invalid(format!(
                "hour {} is not an hour of day {}",
                now.hour, now.today
            )));
        }
        let Now { today, hour } = now;
        plan.bind_check(&index)?;
        let slots = Arc::new(Slots::of(&plan));
        let unions = slot_unions(&index, &slots, now);
        let per_rule = all_rule_sets(&index, &plan, &slots, &unions);
        let universe = index.registry.persons.len() as u32;
        let blocks = Blocks::from_rule_sets(universe, &per_rule);
        let rule_counts = per_rule.iter().map(|(f, _)| f.len()).collect();
        let mut colour_counts = [0u64; 3];
        let mut listed = 0u64;
        for (_, (fired, _)) in blocks.iter() {
            colour_counts[plan.colour_of(fired) as usize] += 1;
            listed += 1;
        }
        colour_counts[GREEN as usize] += u64::from(universe) - listed;
        Ok(Verdicts {
            index,
            plan,
            today,
            hour,
            slots,
            unions,
            blocks,
            rule_counts,
            colour_counts,
        })
    }

    /// When these verdicts hold.
    pub fn now(&self) -> Now {
        Now {
            today: self.today,
            hour: self.hour,
        }
    }

    /// The verdict of one person (an unknown id is an error).
    #[inline]
    pub fn evaluate(&self, person: u32) -> Result<Verdict> {
        self.index.check_person(person)?;
        Ok(self.evaluate_unchecked(person))
    }

    #[inline]
    fn evaluate_unchecked(&self, person: u32) -> Verdict {
        let (fired, cleared) = self.blocks.get(person);
        Verdict {
            person,
            colour: self.plan.colour_of(fired),
            fired,
            cleared,
        }
    }

    /// Colours and fired masks of many persons, in parallel when the batch is large.
    pub fn evaluate_many(&self, persons: &[u32]) -> Result<(Vec<u8>, Vec<u64>)> {
        let universe = self.index.registry.persons.len();
        if let Some(bad) = persons.iter().find(|&&p| p as usize >= universe) {
            return Err(MatcherError::Invalid(format!("no person with id {bad}")));
        }
        let one = |p: u32| {
            let v = self.evaluate_unchecked(p);
            (v.colour, v.fired)
        };
        Ok(if persons.len() >= 1 << 16 {
            persons.par_iter().map(|&p| one(p)).unzip()
        } else {
            persons.iter().map(|&p| one(p)).unzip()
        })
    }

    /// (green, yellow, red) over every registered person.
    pub fn colour_counts(&self) -> [u64; 3] {
        self.colour_counts
    }

    /// Persons for whom each rule fired, in plan order.
    pub fn rule_counts(&self) -> &[u64] {
        &self.rule_counts
    }

    /// Yellow and red persons.
    pub fn non_green(&self) -> RoaringBitmap {
        let ids = self
            .blocks
            .iter()
            .filter(|&(_, (fired, _))| fired != 0)
            .map(|(p, _)| p);
        RoaringBitmap::from_sorted_iter(ids).expect("ascending")
    }

    /// Why each fired or cleared rule of a person matched, and what cleared it.
    pub fn explain(&self, person: u32) -> Result<Vec<Evidence>> {
        let v = self.evaluate(person)?;
        let index = &self.index;
        let phones = index.registry.phones_of(person);
        let mut out = Vec::new();
        for (i, r) in self.plan.rules.iter().enumerate() {
            if (v.fired | v.cleared) & (1 << i) == 0 {
                continue;
            }
            let phone_clears: Vec<&Check> = r
                .clears
                .iter()
                .filter(|c| index.sources[&c.source].keyed_by == KeyedBy::Phone)
                .collect();
            let phone_cleared = |f: u32| {
                phone_clears.iter().any(|c| {
                    let s = &index.sources[&c.source];
                    buckets(index, s, c, self.now()).any(|(_, _, b)| b.contains(f))
                })
            };
            for c in &r.checks {
                let s = &index.sources[&c.source];
                let subjects: Vec<Option<u32>> = match s.keyed_by {
                    KeyedBy::Person => vec![None],
                    KeyedBy::Phone => phones.iter().map(|&f| Some(f)).collect(),
                };
                for phone in subjects {
                    let member = phone.unwrap_or(person);
                    let latest = buckets(index, s, c, self.now())
                        .filter(|(_, _, b)| b.contains(member))
                        .max_by_key(|&(_, day, _)| if day == UNDATED { 0 } else { day + 1 });
                    if let Some((county, day, _)) = latest {
                        let role = match phone {
                            Some(f) if phone_cleared(f) => "phone_cleared",
                            _ => "fired",
                        };
                        out.push(Evidence {
                            rule: i,
                            source: c.source.clone(),
                            day: day_of(s, day),
                            hour: hour_of(s, day),
                            phone,
                            county: (county != NO_COUNTY).then_some(county),
                            role,
                        });
                    }
                }
            }
            for c in &r.clears {
                let s = &index.sources[&c.source];
                if s.keyed_by == KeyedBy::Phone {
                    continue; // shown as "phone_cleared" on the phone's own evidence
                }
                let latest = buckets(index, s, c, self.now())
                    .filter(|(_, _, b)| b.contains(person))
                    .max_by_key(|&(_, day, _)| if day == UNDATED { 0 } else { day + 1 });
                if let Some((county, day, _)) = latest {
                    out.push(Evidence {
                        rule: i,
                        source: c.source.clone(),
                        day: day_of(s, day),
                        hour: hour_of(s, day),
                        phone: None,
                        county: (county != NO_COUNTY).then_some(county),
                        role: "cleared",
                    });
                }
            }
        }
        Ok(out)
    }
}

/// How a draft plan would change colours, against the active plan over the same index.
///
/// ```
/// use std::sync::Arc;
/// use healthcode_matcher::index::{Index, KeyedBy, UNDATED};
/// use healthcode_matcher::plan::{Check, Plan, Rule, Verdicts, GREEN, RED, YELLOW};
///
/// let mut b = Index::new([7; 32]).builder();
/// b.define_source("close_contact", KeyedBy::Person, false, false)?;
/// b.define_source("residence", KeyedBy::Person, true, false)?;
/// let ps: Vec<u32> = (0..5).map(|k| b.add_person_key(k)).collect();
/// b.add_rows("close_contact", &ps[..2], 100, None)?;
/// b.add_rows("residence", &ps, UNDATED, Some(&[120101, 120102, 120101, 120101, 120101]))?;
/// let index = Arc::new(b.finish());
///
/// let plan = |colour| -> Result<_, healthcode_matcher::errors::MatcherError> {
///     let check = Check { source: "close_contact".into(), days: Some(14), hours: None, min_level: None };
///     let rule = Rule { id: "cc".into(), colour, match_all: false, checks: vec![check], clears: vec![] };
///     Ok(Arc::new(Plan::new("p".into(), vec![rule])?))
/// };
/// let active = Verdicts::new(index.clone(), plan(RED)?, 100)?;
/// let draft = Verdicts::new(index, plan(YELLOW)?, 100)?;
/// let t = active.transitions(&draft, Some("residence"))?;
/// assert_eq!(t.colours[RED as usize][YELLOW as usize], 2);
/// assert_eq!(t.colours[GREEN as usize][GREEN as usize], 3);
/// assert_eq!(t.changed(), 2);
/// assert_eq!(t.rules["cc"], (0, 0), "the rule fires in both; only its colour moved");
/// assert_eq!(t.districts[&120102][RED as usize][YELLOW as usize], 1);
/// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Persons by (active colour, draft colour).
    pub colours: [[u64; 3]; 3],
    /// Per rule id: persons whose colour changes and for whom the rule starts firing in the
    /// draft, and those for whom it stops.
    pub rules: std::collections::BTreeMap<String, (u64, u64)>,
    /// Per district (a county of the district source): persons whose colour changes, by
    /// (active colour, draft colour).
    pub districts: std::collections::BTreeMap<u32, [[u64; 3]; 3]>,
}

impl Transitions {
    /// Persons whose colour changes (off the diagonal of `colours`).
    pub fn changed(&self) -> u64 {
        changed_in(&self.colours)
    }
}

/// Persons off the diagonal of a (from colour, to colour) matrix.
pub fn changed_in(m: &[[u64; 3]; 3]) -> u64 {
    (0..3)
        .flat_map(|a| (0..3).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .map(|(a, b)| m[a][b])
        .sum()
}

impl Verdicts {
    /// Compare these (active) verdicts with a draft's over the same index and day. Only persons
    /// yellow or red under either plan are visited; the rest stay green in both.
    /// `district_source` names a person-keyed county source that places each person in a
    /// district (their residence); changes are also counted per district.
    pub fn transitions(
        &self,
        draft: &Verdicts,
        district_source: Option<&str>,
    ) -> Result<Transitions> {
        if !Arc::ptr_eq(&self.index, &draft.index) && self.index.version != draft.index.version {
            return Err(MatcherError::Invalid(
                "compare verdicts of the same index version".into(),
            ));
        }
        let district = match district_source {
            None => None,
            Some(name) => {
                let s = self.index.source(name)?;
                if s.keyed_by != KeyedBy::Person || !s.has_county {
                    return Err(MatcherError::Invalid(format!(
                        "district source {name:?} must be person-keyed with counties"
                    )));
                }
                Some(s)
            }
        };
        // rule ids may be shared, added or dropped between the two plans
        let mut names: Vec<&str> = self.plan.rules.iter().map(|r| r.id.as_str()).collect();
        for r in &draft.plan.rules {
            if !names.contains(&r.id.as_str()) {
                names.push(r.id.as_str());
            }
        }
        let bit_in = |plan: &Plan, name: &str| plan.rules.iter().position(|r| r.id == name);
        let old_bits: Vec<Option<usize>> = names.iter().map(|n| bit_in(&self.plan, n)).collect();
        let new_bits: Vec<Option<usize>> = names.iter().map(|n| bit_in(&draft.plan, n)).collect();
        let has = |mask: u64, bit: Option<usize>| bit.is_some_and(|b| mask & (1 << b) != 0);

        let mut out = Transitions::default();
        let mut per_rule = vec![(0u64, 0u64); names.len()];
        let mut changed: [[Vec<u32>; 3]; 3] = Default::default();
        let mut visited = 0u64;
        let words = self.blocks.word_count().max(draft.blocks.word_count());
        for w in 0..words {
            let word = |v: &Verdicts| v.blocks.word(w);
            let mut bits = word(self) | word(draft);
            while bits != 0 {
                let p = ((w as u32) << 6) | bits.trailing_zeros();
                bits &= bits - 1;
                visited += 1;
                let (a, b) = (self.evaluate_unchecked(p), draft.evaluate_unchecked(p));
                out.colours[a.colour as usize][b.colour as usize] += 1;
                if a.colour == b.colour {
                    continue;
                }
                changed[a.colour as usize][b.colour as usize].push(p);
                for (k, counts) in per_rule.iter_mut().enumerate() {
                    let (was, now) = (has(a.fired, old_bits[k]), has(b.fired, new_bits[k]));
                    if now && !was {
                        counts.0 += 1;
                    } else if was && !now {
                        counts.1 += 1;
                    }
                }
            }
        }
        let universe = self.index.registry.persons.len() as u64;
        out.colours[0][0] += universe - visited;
        out.rules = names.iter().map(|n| n.to_string()).zip(per_rule).collect();
        if let Some(s) = district {
            let changed: Vec<(usize, usize, RoaringBitmap)> = (0..3)
                .flat_map(|a| (0..3).map(move |b| (a, b)))
                .filter(|&(a, b)| a != b)
                .map(|(a, b)| {
                    let v = std::mem::take(&mut changed[a][b]);
                    (a, b, RoaringBitmap::from_sorted_iter(v).expect("ascending"))
                })
                .collect();
            for (&(county, _), bucket) in &s.buckets {
                for (a, b, set) in &changed {
                    let n = bucket.intersection_len(set);
                    if n > 0 {
                        out.districts.entry(county).or_default()[*a][*b] += n;
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    fn check(source: &str, days: Option<u32>) -> Check {
        Check {
            source: source.into(),
            days,
            hours: None,
            min_level: None,
        }
    }

    fn rule(id: &str, colour: u8, checks: Vec<Check>, clears: Vec<Check>) -> Rule {
        Rule {
            id: id.into(),
            colour,
            match_all: false,
            checks,
            clears,
        }
    }

    /// The seed's two-SIM case: a second phone in a person's name roamed in a high-risk county.
    #[test]
    fn risk_through_a_linked_phone_names_the_phone_and_clears_per_phone() {
        let mut b = Index::new([9; 32]).builder();
        b.define_source("telecom_roaming", KeyedBy::Phone, true, false)
            .unwrap();
        b.define_source("phone_community_verified", KeyedBy::Phone, false, false)
            .unwrap();
        b.define_source("confirmed", KeyedBy::Person, false, false)
            .unwrap();
        let holder = b.add_person_key(1);
        let other = b.add_person_key(2);
        let sim1 = b.add_phone_key(10, Some(holder)).unwrap();
        let sim2 = b.add_phone_key(11, Some(holder)).unwrap();
        b.set_county_level(120116, 3).unwrap();
        b.add_rows("telecom_roaming", &[sim2], 100, Some(&[120116]))
            .unwrap();
        let index = Arc::new(b.finish());
        let plan = Arc::new(
            Plan::new(
                "t".into(),
                vec![
                    rule("confirmed", RED, vec![check("confirmed", Some(28))], vec![]),
                    rule(
                        "roaming-high",
                        YELLOW,
                        vec![Check {
                            source: "telecom_roaming".into(),
                            days: Some(14),
                            hours: None,
                            min_level: Some(3),
                        }],
                        vec![check("phone_community_verified", Some(7))],
                    ),
                ],
            )
            .unwrap(),
        );
        let v = Verdicts::new(index.clone(), plan.clone(), 105).unwrap();
        assert_eq!(v.evaluate(holder).unwrap().colour, YELLOW);
        assert_eq!(v.evaluate(other).unwrap().colour, GREEN);
        let ev = v.explain(holder).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].phone, ev[0].county, ev[0].day),
            (Some(sim2), Some(120116), Some(100))
        );
        // outside the 14-day window it is green again
        assert_eq!(
            Verdicts::new(index.clone(), plan.clone(), 114)
                .unwrap()
                .colour_counts(),
            [2, 0, 0]
        );
        // the county's level drops: the union changes, no row is rewritten
        let mut b = index.builder();
        b.set_county_level(120116, 1).unwrap();
        let lowered = Arc::new(b.finish());
        assert_eq!(
            Verdicts::new(lowered, plan.clone(), 105)
                .unwrap()
                .colour_counts(),
            [2, 0, 0]
        );
        // community verification of that phone clears it, and says so
        let mut b = index.builder();
        b.add_rows("phone_community_verified", &[sim2], 104, None)
            .unwrap();
        let verified = Arc::new(b.finish());
        let v = Verdicts::new(verified, plan, 105).unwrap();
        let got = v.evaluate(holder).unwrap();
        assert_eq!((got.colour, got.fired, got.cleared), (GREEN, 0, 0b10));
        assert_eq!(v.explain(holder).unwrap()[0].role, "phone_cleared");
        let _ = sim1;
    }

    #[test]
    fn most_severe_uncleared_rule_wins() {
        let mut b = Index::new([9; 32]).builder();
        for s in ["close_contact", "declared_fever", "nat_negative"] {
            b.define_source(s, KeyedBy::Person, false, false).unwrap();
        }
        let p = b.add_person_key(1);
        b.add_rows("close_contact", &[p], 50, None).unwrap();
        b.add_rows("declared_fever", &[p], 50, None).unwrap();
        let index = Arc::new(b.finish());
        let plan = Arc::new(
            Plan::new(
                "t".into(),
                vec![
                    rule(
                        "fever",
                        YELLOW,
                        vec![check("declared_fever", Some(1))],
                        vec![],
                    ),
                    rule(
                        "close-contact",
                        RED,
                        vec![check("close_contact", Some(14))],
                        vec![check("nat_negative", Some(2))],
                    ),
                ],
            )
            .unwrap(),
        );
        assert_eq!(
            Verdicts::new(index.clone(), plan.clone(), 50)
                .unwrap()
                .evaluate(p)
                .unwrap()
                .colour,
            RED
        );
        let mut b = index.builder();
        b.add_rows("nat_negative", &[p], 50, None).unwrap();
        let v = Verdicts::new(Arc::new(b.finish()), plan, 50).unwrap();
        let got = v.evaluate(p).unwrap();
        assert_eq!((got.colour, got.fired, got.cleared), (YELLOW, 0b01, 0b10));
        assert_eq!(v.rule_counts(), &[1, 0]);
        assert_eq!(v.colour_counts(), [0, 1, 0]);
    }

    #[test]
    fn plans_are_validated_with_the_rule_and_field() {
        let e = Plan::new(
            "t".into(),
            vec![rule("a", 7, vec![check("x", None)], vec![])],
        )
        .unwrap_err();
        assert!(e.to_string().contains("rule \"a\" (colour)"), "{e}");
        let e = Plan::new(
            "t".into(),
            vec![rule("a", RED, vec![check("x", Some(0))], vec![])],
        )
        .unwrap_err();
        assert!(e.to_string().contains("checks[0].days"), "{e}");
        let too_many: Vec<Rule> = (0..65)
            .map(|i| rule(&format!("r{i}"), RED, vec![check("x", None)], vec![]))
            .collect();
        assert!(Plan::new("t".into(), too_many).is_err());
        let p = Plan::new(
            "t".into(),
            vec![rule("a", RED, vec![check("nope", None)], vec![])],
        )
        .unwrap();
        let e = Verdicts::new(Arc::new(Index::new([0; 32])), Arc::new(p), 1)
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown source \"nope\""), "{e}");
    }

    #[test]
    fn transitions_count_what_a_draft_changes() {
        let mut b = Index::new([9; 32]).builder();
        b.define_source("close_contact", KeyedBy::Person, false, false)
            .unwrap();
        b.define_source("residence", KeyedBy::Person, true, false)
            .unwrap();
        let ps: Vec<u32> = (0..10).map(|k| b.add_person_key(k)).collect();
        b.add_rows("close_contact", &ps[..4], 10, None).unwrap();
        b.add_rows(
            "residence",
            &ps,
            UNDATED,
            Some(&[120101, 120101, 120102, 120102, 1, 1, 1, 1, 1, 1]),
        )
        .unwrap();
        let index = Arc::new(b.finish());
        let active = Plan::new(
            "a".into(),
            vec![rule(
                "cc",
                RED,
                vec![check("close_contact", Some(14))],
                vec![],
            )],
        );
        let draft = Plan::new(
            "d".into(),
            vec![rule(
                "cc",
                YELLOW,
                vec![check("close_contact", Some(14))],
                vec![],
            )],
        );
        let a = Verdicts::new(index.clone(), Arc::new(active.unwrap()), 10).unwrap();
        let d = Verdicts::new(index, Arc::new(draft.unwrap()), 10).unwrap();
        let t = a.transitions(&d, Some("residence")).unwrap();
        assert_eq!(t.colours[RED as usize][YELLOW as usize], 4);
        assert_eq!(t.colours[GREEN as usize][GREEN as usize], 6);
        assert_eq!(
            t.rules["cc"],
            (0, 0),
            "the same rule fires in both, only its colour moved"
        );
        assert_eq!(t.districts[&120102][2][1], 2);
        assert!(a.transitions(&d, Some("close_contact")).is_err());
    }

    /// A negative test within 48 hours clears; one 48 hours old does not.
    #[test]
    fn hourly_windows_are_exact_to_the_hour() {
        let mut b = Index::new([9; 32]).builder();
        b.define_source("close_contact", KeyedBy::Person, false, false)
            .unwrap();
        b.define_source("nat_negative", KeyedBy::Person, false, true)
            .unwrap();
        let (fresh, stale) = (b.add_person_key(1), b.add_person_key(2));
        let now = Now {
            today: 100,
            hour: 100 * 24 + 10,
        };
        b.add_rows("close_contact", &[fresh, stale], 99, None)
            .unwrap();
        b.add_rows("nat_negative", &[fresh], now.hour - 47, None)
            .unwrap();
        b.add_rows("nat_negative", &[stale], now.hour - 48, None)
            .unwrap();
        let index = Arc::new(b.finish());
        let clears = vec![Check {
            source: "nat_negative".into(),
            days: None,
            hours: Some(48),
            min_level: None,
        }];
        let plan = Plan::new(
            "t".into(),
            vec![rule(
                "close-contact",
                RED,
                vec![check("close_contact", Some(14))],
                clears,
            )],
        )
        .unwrap();
        let v = Verdicts::at(index.clone(), Arc::new(plan.clone()), now).unwrap();
        assert_eq!(v.evaluate(fresh).unwrap().colour, GREEN);
        assert_eq!(v.evaluate(stale).unwrap().colour, RED);
        let ev = v.explain(fresh).unwrap();
        let cleared = ev.iter().find(|e| e.role == "cleared").unwrap();
        assert_eq!(
            (cleared.hour, cleared.day),
            (Some(now.hour - 47), Some((now.hour - 47) / 24))
        );
        // one hour later the fresh test is 48 hours old too
        let later = Now {
            today: 100,
            hour: now.hour + 1,
        };
        assert_eq!(
            Verdicts::at(index.clone(), Arc::new(plan.clone()), later)
                .unwrap()
                .colour_counts(),
            [0, 0, 2]
        );
        // hours on a daily source, both units, and an hour outside the day are refused
        let bad = vec![rule(
            "x",
            RED,
            vec![Check {
                source: "close_contact".into(),
                days: None,
                hours: Some(5),
                min_level: None,
            }],
            vec![],
        )];
        assert!(Verdicts::at(
            index.clone(),
            Arc::new(Plan::new("t".into(), bad).unwrap()),
            now
        )
        .is_err());
        let both = vec![rule(
            "x",
            RED,
            vec![Check {
                source: "nat_negative".into(),
                days: Some(1),
                hours: Some(5),
                min_level: None,
            }],
            vec![],
        )];
        assert!(Plan::new("t".into(), both).is_err());
        assert!(Verdicts::at(
            index,
            Arc::new(plan),
            Now {
                today: 99,
                hour: now.hour
            }
        )
        .is_err());
    }
}
