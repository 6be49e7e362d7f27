//! Plans evaluated over an index through the public core API: colours, clearing (per person and
//! per phone), hourly windows, batches, and the what-if transitions between two plans.

use std::sync::Arc;

use healthcode_matcher::index::{Index, KeyedBy, UNDATED};
use healthcode_matcher::plan::{Check, Now, Plan, Rule, Verdicts, GREEN, RED, YELLOW};

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

fn plan(version: &str, rules: Vec<Rule>) -> Arc<Plan> {
    Arc::new(Plan::new(version.into(), rules).unwrap())
}

/// Ten persons; 0..4 close contacts on day 100, person 4's second phone roamed in a high-risk
/// county on day 99, everyone resident in one of two districts.
fn city() -> (Arc<Index>, Vec<u32>, u32) {
    let mut b = Index::new([1; 32]).builder();
    b.define_source("close_contact", KeyedBy::Person, false, false)
        .unwrap();
    b.define_source("roaming", KeyedBy::Phone, true, false)
        .unwrap();
    b.define_source("phone_verified", KeyedBy::Phone, false, false)
        .unwrap();
    b.define_source("residence", KeyedBy::Person, true, false)
        .unwrap();
    let ps: Vec<u32> = (0..10u128).map(|k| b.add_person_key(k + 1)).collect();
    b.add_phone_key(100, Some(ps[4])).unwrap();
    let second = b.add_phone_key(101, Some(ps[4])).unwrap();
    b.add_rows("close_contact", &ps[..4], 100, None).unwrap();
    b.add_rows("roaming", &[second], 99, Some(&[120116]))
        .unwrap();
    b.set_county_level(120116, 3).unwrap();
    let districts: Vec<u32> = (0..10).map(|i| 120101 + (i % 2)).collect();
    b.add_rows("residence", &ps, UNDATED, Some(&districts))
        .unwrap();
    (Arc::new(b.finish()), ps, second)
}

fn active() -> Arc<Plan> {
    plan(
        "active",
        vec![
            rule(
                "close-contact",
                RED,
                vec![check("close_contact", Some(14))],
                vec![],
            ),
            rule(
                "roaming-high",
                YELLOW,
                vec![Check {
                    min_level: Some(3),
                    ..check("roaming", Some(14))
                }],
                vec![check("phone_verified", Some(7))],
            ),
        ],
    )
}

#[test]
fn colours_come_from_the_most_severe_rule_and_risk_reaches_through_a_linked_phone() {
    let (index, ps, second) = city();
    let v = Verdicts::new(index.clone(), active(), 101).unwrap();
    assert_eq!(v.colour_counts(), [5, 1, 4]);
    assert_eq!(v.rule_counts(), &[4, 1]);
    let roamer = v.evaluate(ps[4]).unwrap();
    assert_eq!((roamer.colour, roamer.fired), (YELLOW, 0b10));
    let ev = v.explain(ps[4]).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].phone, ev[0].county, ev[0].day, ev[0].role),
        (Some(second), Some(120116), Some(99), "fired")
    );
    let (colours, masks) = v.evaluate_many(&ps).unwrap();
    assert_eq!(colours, [RED, RED, RED, RED, YELLOW, 0, 0, 0, 0, 0]);
    assert_eq!(masks[4], 0b10);
    assert!(v.evaluate_many(&[10]).is_err(), "no person 10");
    // out of the 14-day window everyone is green
    assert_eq!(
        Verdicts::new(index, active(), 114).unwrap().colour_counts(),
        [10, 0, 0]
    );
}

#[test]
fn a_verified_phone_clears_only_the_risk_that_came_through_it() {
    let (index, ps, second) = city();
    let mut b = index.builder();
    b.add_rows("phone_verified", &[second], 100, None).unwrap();
    let v = Verdicts::new(Arc::new(b.finish()), active(), 101).unwrap();
    let got = v.evaluate(ps[4]).unwrap();
    assert_eq!((got.colour, got.fired, got.cleared), (GREEN, 0, 0b10));
    assert_eq!(v.explain(ps[4]).unwrap()[0].role, "phone_cleared");
}

#[test]
fn hourly_windows_end_at_the_hour() {
    let mut b = Index::new([1; 32]).builder();
    b.define_source("contact", KeyedBy::Person, false, false)
        .unwrap();
    b.define_source("nat", KeyedBy::Person, false, true)
        .unwrap();
    let p = b.add_person_key(1);
    let now = Now {
        today: 100,
        hour: 2410,
    };
    b.add_rows("contact", &[p], 99, None).unwrap();
    b.add_rows("nat", &[p], now.hour - 47, None).unwrap();
    let index = Arc::new(b.finish());
    let within_48_hours = Check {
        days: None,
        hours: Some(48),
        ..check("nat", None)
    };
    let p48 = plan(
        "h",
        vec![rule(
            "contact",
            RED,
            vec![check("contact", Some(14))],
            vec![within_48_hours],
        )],
    );
    let at = |hour| Verdicts::at(index.clone(), p48.clone(), Now { today: 100, hour });
    assert_eq!(at(now.hour).unwrap().colour_counts(), [1, 0, 0]);
    assert_eq!(at(now.hour + 1).unwrap().colour_counts(), [0, 0, 1]);
    assert!(at(24 * 101).is_err(), "not an hour of day 100");
}

#[test]
fn transitions_count_by_colour_pair_rule_and_district() {
    let (index, _, _) = city();
    let a = Verdicts::new(index.clone(), active(), 101).unwrap();
    // the draft makes close contacts yellow, drops the roaming rule and adds none
    let draft = plan(
        "draft",
        vec![rule(
            "close-contact",
            YELLOW,
            vec![check("close_contact", Some(14))],
            vec![],
        )],
    );
    let d = Verdicts::new(index.clone(), draft, 101).unwrap();
    let t = a.transitions(&d, Some("residence")).unwrap();
    let (g, y, r) = (GREEN as usize, YELLOW as usize, RED as usize);
    assert_eq!(t.colours[r][y], 4);
    assert_eq!(t.colours[y][g], 1);
    assert_eq!(t.colours[g][g], 5);
    assert_eq!(t.changed(), 5);
    assert_eq!(t.rules["close-contact"], (0, 0));
    assert_eq!(
        t.rules["roaming-high"],
        (0, 1),
        "stops firing for the roamer"
    );
    // persons 0 and 2 live in 120101, 1 and 3 in 120102; the roamer (4) in 120101
    assert_eq!(t.districts[&120101][r][y], 2);
    assert_eq!(t.districts[&120101][y][g], 1);
    assert_eq!(t.districts[&120102][r][y], 2);
    assert_eq!(a.transitions(&d, None).unwrap().districts.len(), 0);
    assert!(a.transitions(&d, Some("close_contact")).is_err());
    // the same plan changes nothing
    let same = a.transitions(&a, Some("residence")).unwrap();
    assert_eq!(same.changed(), 0);
    assert!(same.districts.is_empty());
    // another index version is refused
    let other = Verdicts::new(Arc::new(index.builder().finish()), active(), 101).unwrap();
    assert!(a.transitions(&other, None).is_err());
}
