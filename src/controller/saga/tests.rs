use super::*;
use crate::jobs::Catalog;

fn saga(def: &KindDef) -> Saga {
    Saga {
        state: OpState::Pending,
        cursor: 0,
        steps: new_steps(def),
        cancel_requested: false,
        error: None,
    }
}

const LEASE: i64 = 60_000;
const OK: StepOutcome = StepOutcome::Ok {
    guest_state: None,
    domain_xml: None,
    output: None,
};

/// Drives a saga, failing step `fail_at` permanently; returns the executed (step, undo) trail.
fn drive(def: &KindDef, fail_at: Option<usize>) -> (Vec<(usize, bool)>, OpState) {
    let mut s = saga(def);
    let mut trail = Vec::new();
    for _ in 0..100 {
        match s.next(def, 0, LEASE) {
            Next::Execute { step, undo } => {
                trail.push((step, undo));
                let attempt = s.mark_started(step, undo, 0);
                let outcome = if !undo && Some(step) == fail_at {
                    StepOutcome::Failed {
                        error: "boom".into(),
                        permanent: true,
                    }
                } else {
                    OK
                };
                assert!(s.apply_result(step, attempt, undo, &outcome, 3, 0));
            }
            Next::Wait => panic!("nothing is out, yet the saga waits"),
            Next::Finished(st) => return (trail, st),
        }
    }
    panic!("saga never finished");
}

#[test]
fn forward_run_executes_every_step_once_in_order() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.create").unwrap();
    let (trail, st) = drive(def, None);
    assert_eq!(st, OpState::Succeeded);
    let expect: Vec<_> = (0..def.steps.len()).map(|i| (i, false)).collect();
    assert_eq!(trail, expect);
}

#[test]
fn failure_unwinds_completed_steps_in_reverse_including_the_failed_one() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.create").unwrap();
    // fail "define" (index 4): undo define, build_seed, create_disk, allocate, place
    let (trail, st) = drive(def, Some(4));
    assert_eq!(st, OpState::Failed);
    let undo: Vec<_> = trail.iter().filter(|(_, u)| *u).map(|(i, _)| *i).collect();
    assert_eq!(undo, vec![4, 3, 2, 1, 0]);
}

#[test]
fn stale_and_duplicate_results_are_ignored() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.start").unwrap();
    let mut s = saga(def);
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    let a1 = s.mark_started(0, false, 0);
    // lease runs out: dispatched again with a new attempt
    assert_eq!(
        s.next(def, LEASE, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    let a2 = s.mark_started(0, false, LEASE);
    assert!(
        !s.apply_result(0, a1, false, &OK, 3, 1),
        "old attempt must be ignored"
    );
    assert!(s.apply_result(0, a2, false, &OK, 3, 1));
    assert!(
        !s.apply_result(0, a2, false, &OK, 3, 1),
        "duplicate must be ignored"
    );
    assert_eq!(s.next(def, 2, LEASE), Next::Finished(OpState::Succeeded));
}

#[test]
fn transient_failures_are_retried_then_unwound() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.start").unwrap();
    let mut s = saga(def);
    let transient = StepOutcome::Failed {
        error: "busy".into(),
        permanent: false,
    };
    for round in 1..=3 {
        assert_eq!(
            s.next(def, 0, LEASE),
            Next::Execute {
                step: 0,
                undo: false
            },
            "round {round}"
        );
        let a = s.mark_started(0, false, 0);
        assert!(s.apply_result(0, a, false, &transient, 3, 0));
    }
    assert_eq!(s.next(def, 0, LEASE), Next::Finished(OpState::Failed));
    assert!(s.error.as_deref().unwrap_or("").contains("busy"));
}

#[test]
fn cancel_takes_effect_at_the_next_step_boundary() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.create").unwrap();
    let mut s = saga(def);
    // place runs, then a cancel arrives
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    s.mark_started(0, false, 0);
    s.mark_finished(0, false, None, 0);
    s.cancel_requested = true;
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: true
        }
    );
    s.mark_started(0, true, 0);
    s.mark_finished(0, true, None, 0);
    assert_eq!(s.next(def, 0, LEASE), Next::Finished(OpState::Cancelled));
}

#[test]
fn resuming_from_stored_state_repeats_nothing_done() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.create").unwrap();
    let mut s = saga(def);
    for _ in 0..3 {
        let Next::Execute { step, undo } = s.next(def, 0, LEASE) else {
            panic!()
        };
        s.mark_started(step, undo, 0);
        s.mark_finished(step, undo, None, 0);
    }
    // "crash": rebuild from what was stored
    let mut resumed = s.clone();
    assert_eq!(
        resumed.next(def, 0, LEASE),
        Next::Execute {
            step: 3,
            undo: false
        }
    );
}

#[test]
fn percent_and_eta() {
    let c = Catalog::builtin().unwrap();
    let def = c.get("guest.create").unwrap();
    let mut s = saga(def);
    assert_eq!(s.percent(def), 0);
    s.next(def, 0, LEASE);
    s.mark_started(0, false, 0);
    s.mark_finished(0, false, None, 0);
    assert!(s.percent(def) > 0 && s.percent(def) < 100);
    assert_eq!(eta_seconds(Some(0), 10_000, 50), Some(10));
    assert_eq!(eta_seconds(None, 10_000, 50), None);
}
