use super::*;
use crate::jobs::Catalog;
use kinds::OpKind;

fn saga(def: &KindDef) -> Saga {
    Saga {
        state: OpState::Pending,
        cursor: 0,
        steps: new_steps(def),
        cancel_requested: false,
        error: None,
        node_offline: false,
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
                let attempt = s.mark_started(step, undo, 0, None);
                let outcome = if !undo && Some(step) == fail_at {
                    StepOutcome::Failed {
                        error: "boom".into(),
                        permanent: true,
                        refusal: None,
                    }
                } else {
                    OK
                };
                assert!(s.apply_result(step, attempt, undo, &outcome, 3, 0));
            }
            Next::Wait => panic!("nothing is out, yet the saga waits"),
            Next::Abandon { .. } => panic!("no node is offline, yet a step is abandoned"),
            Next::Interrupt { .. } => panic!("no cancel, yet a step is interrupted"),
            Next::Finished(st) => return (trail, st),
        }
    }
    panic!("saga never finished");
}

#[test]
fn forward_run_executes_every_step_once_in_order() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let (trail, st) = drive(def, None);
    assert_eq!(st, OpState::Succeeded);
    let expect: Vec<_> = (0..def.steps.len()).map(|i| (i, false)).collect();
    assert_eq!(trail, expect);
}

#[test]
fn failure_unwinds_completed_steps_in_reverse_including_the_failed_one() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    // fail "build" (index 2): undo build, allocate, place
    let (trail, st) = drive(def, Some(2));
    assert_eq!(st, OpState::Failed);
    let undo: Vec<_> = trail.iter().filter(|(_, u)| *u).map(|(i, _)| *i).collect();
    assert_eq!(undo, vec![2, 1, 0]);
}

#[test]
fn stale_and_duplicate_results_are_ignored() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestStart);
    let mut s = saga(def);
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    let a1 = s.mark_started(0, false, 0, None);
    // lease runs out: dispatched again with a new attempt
    assert_eq!(
        s.next(def, LEASE, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    let a2 = s.mark_started(0, false, LEASE, None);
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
    let def = c.get(OpKind::GuestStart);
    let mut s = saga(def);
    let transient = StepOutcome::Failed {
        error: "busy".into(),
        permanent: false,
        refusal: None,
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
        let a = s.mark_started(0, false, 0, None);
        assert!(s.apply_result(0, a, false, &transient, 3, 0));
    }
    assert_eq!(s.next(def, 0, LEASE), Next::Finished(OpState::Failed));
    assert!(s.error.as_deref().unwrap_or("").contains("busy"));
}

#[test]
fn cancel_takes_effect_at_the_next_step_boundary() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let mut s = saga(def);
    // place runs, then a cancel arrives
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    s.mark_started(0, false, 0, None);
    s.mark_finished(0, false, None, 0);
    s.cancel_requested = true;
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: true
        }
    );
    s.mark_started(0, true, 0, None);
    s.mark_finished(0, true, None, 0);
    assert_eq!(s.next(def, 0, LEASE), Next::Finished(OpState::Cancelled));
}

#[test]
fn resuming_from_stored_state_repeats_nothing_done() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let mut s = saga(def);
    for _ in 0..3 {
        let Next::Execute { step, undo } = s.next(def, 0, LEASE) else {
            panic!()
        };
        s.mark_started(step, undo, 0, None);
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
fn a_steps_sub_steps_move_the_percent_in_proportion() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let s = create_dispatched_at(def, 2);
    let before = s.percent(def);
    let mut last = before;
    for done in 1..=5 {
        let p = s.percent_within(def, Some((2, done, 5)));
        assert!(p > last, "{done}/5: {p} after {last}");
        last = p;
    }
    // All sub-steps done is the step done.
    let mut finished = s.clone();
    finished.mark_finished(2, false, None, 0);
    assert_eq!(last, finished.percent(def));
    assert_eq!(
        s.percent_within(def, Some((2, 9, 0))),
        before,
        "no sub-steps: no share"
    );
}

#[test]
fn percent_and_eta() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let mut s = saga(def);
    assert_eq!(s.percent(def), 0);
    s.next(def, 0, LEASE);
    s.mark_started(0, false, 0, None);
    s.mark_finished(0, false, None, 0);
    assert!(s.percent(def) > 0 && s.percent(def) < 100);
    assert_eq!(eta_seconds(Some(0), 10_000, 50), Some(10));
    assert_eq!(eta_seconds(None, 10_000, 50), None);
}

/// Runs a create forward until node step `running` is dispatched (everything before it done).
fn create_dispatched_at(def: &KindDef, running: usize) -> Saga {
    let mut s = saga(def);
    loop {
        match s.next(def, 0, LEASE) {
            Next::Execute { step, undo: false } => {
                let a = s.mark_started(step, false, 0, None);
                if step == running {
                    return s;
                }
                assert!(s.apply_result(step, a, false, &OK, 3, 0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_step_waiting_on_an_offline_node_waits_until_cancelled_then_is_abandoned() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    // place, allocate done; build (2) out when the node dies.
    let mut s = create_dispatched_at(def, 2);
    s.node_offline = true;
    assert_eq!(s.next(def, 1, LEASE), Next::Wait, "no cancel: it waits");
    s.cancel_requested = true;
    let mut trail = Vec::new();
    for _ in 0..20 {
        match s.next(def, 2, LEASE) {
            Next::Abandon { step, undo } => {
                trail.push(("abandon", step, undo));
                s.mark_abandoned(step, "abandoned: test", 2);
            }
            Next::Execute { step, undo } => {
                assert!(undo, "nothing runs forward after a cancel");
                assert_eq!(def.steps[step].runs_on, RunsOn::Controller);
                trail.push(("undo", step, undo));
                let a = s.mark_started(step, true, 2, None);
                assert!(s.apply_result(step, a, true, &OK, 3, 2));
            }
            Next::Interrupt { .. } => panic!("no pivot here"),
            Next::Finished(st) => {
                assert_eq!(st, OpState::Cancelled);
                assert_eq!(
                    trail,
                    vec![("abandon", 2, false), ("undo", 1, true), ("undo", 0, true),]
                );
                assert!(!s.keep_leases(), "an abandoned step frees the leases");
                return;
            }
            Next::Wait => panic!("a cancelled saga on an offline node must not wait"),
        }
    }
    panic!("saga never finished");
}

#[test]
fn an_undo_waiting_on_an_offline_node_is_abandoned_on_cancel() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let mut s = create_dispatched_at(def, 2);
    // build fails: the unwind starts with its undo, dispatched, then the node dies.
    let a = s.steps[2].attempt;
    let failed = StepOutcome::Failed {
        error: "boom".into(),
        permanent: true,
        refusal: None,
    };
    assert!(s.apply_result(2, a, false, &failed, 3, 0));
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 2,
            undo: true
        }
    );
    s.mark_started(2, true, 0, None);
    s.node_offline = true;
    assert_eq!(s.next(def, 1, LEASE), Next::Wait);
    s.cancel_requested = true;
    assert_eq!(
        s.next(def, 1, LEASE),
        Next::Abandon {
            step: 2,
            undo: true
        }
    );
}

#[test]
fn a_failed_undo_keeps_leases_and_fails_the_operation() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestCreate);
    let mut s = create_dispatched_at(def, 2);
    let failed = StepOutcome::Failed {
        error: "cannot start".into(),
        permanent: true,
        refusal: None,
    };
    let a = s.steps[2].attempt;
    assert!(s.apply_result(2, a, false, &failed, 3, 0));
    // The build's undo (stop, undefine, remove files) cannot complete.
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 2,
            undo: true
        }
    );
    assert!(!s.keep_leases());
    let a = s.mark_started(2, true, 0, None);
    let down = StepOutcome::Failed {
        error: "libvirt is down".into(),
        permanent: true,
        refusal: None,
    };
    assert!(s.apply_result(2, a, true, &down, 3, 0));
    assert_eq!(s.steps[2].state, StepState::UndoFailed);
    assert!(
        s.keep_leases(),
        "the node may still use what the leases name"
    );
    let st = drive_undo(def, &mut s);
    assert_eq!(st, OpState::Failed);
    let err = s.error.clone().unwrap_or_default();
    assert!(
        err.contains("cannot start") && err.contains("libvirt is down"),
        "{err}"
    );
}

/// Finishes an unwind with every remaining undo succeeding.
fn drive_undo(def: &KindDef, s: &mut Saga) -> OpState {
    for _ in 0..20 {
        match s.next(def, 0, LEASE) {
            Next::Execute { step, undo: true } => {
                let a = s.mark_started(step, true, 0, None);
                assert!(s.apply_result(step, a, true, &OK, 3, 0));
            }
            Next::Finished(st) => return st,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("unwind never finished");
}

#[test]
fn a_step_lease_outlasts_its_actions_own_time_limit() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestShutdown);
    let mut s = saga(def);
    assert_eq!(
        s.next(def, 0, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
    // A shutdown that may wait 600 s gets a lease beyond that.
    s.mark_started(0, false, 0, Some(660_000));
    assert_eq!(s.next(def, LEASE * 2, LEASE), Next::Wait);
    assert_eq!(
        s.next(def, 660_000, LEASE),
        Next::Execute {
            step: 0,
            undo: false
        }
    );
}

#[test]
fn a_cancel_gives_up_an_interruptible_node_step_in_flight_on_a_live_node() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::TemplateFromGuest);
    assert!(
        def.steps[0].interruptible,
        "the conversion is interruptible"
    );
    let mut s = saga(def);
    let Next::Execute {
        step: 0,
        undo: false,
    } = s.next(def, 0, LEASE)
    else {
        panic!("the conversion goes first");
    };
    s.mark_started(0, false, 0, None);
    assert_eq!(s.next(def, 1, LEASE), Next::Wait, "no cancel: it waits");
    s.cancel_requested = true;
    assert_eq!(
        s.next(def, 2, LEASE),
        Next::Abandon {
            step: 0,
            undo: false
        },
        "the node is online, yet the cancel does not wait"
    );
    s.mark_abandoned(0, "abandoned: test", 2);
    assert_eq!(s.next(def, 3, LEASE), Next::Finished(OpState::Cancelled));

    // A step that is not interruptible is still awaited on a live node.
    let def = c.get(OpKind::GuestCreate);
    let mut s = create_dispatched_at(def, 2);
    s.cancel_requested = true;
    assert_eq!(s.next(def, 3, LEASE), Next::Wait);
}

/// `guest.migrate` run up to its pivot, `migrate` (index 2), dispatched: the saga and the
/// pivot's attempt.
fn run_to_pivot(def: &KindDef) -> (Saga, u32) {
    assert!(def.steps[2].pivot && def.steps[2].interruptible);
    let mut s = saga(def);
    for i in 0..2 {
        let first = Next::Execute {
            step: i,
            undo: false,
        };
        assert_eq!(s.next(def, 0, LEASE), first);
        let a = s.mark_started(i, false, 0, None);
        assert!(s.apply_result(i, a, false, &OK, 3, 0));
    }
    let pivot = Next::Execute {
        step: 2,
        undo: false,
    };
    assert_eq!(s.next(def, 0, LEASE), pivot);
    let a = s.mark_started(2, false, 0, None);
    (s, a)
}

/// A cancel while the pivot runs is passed to its node, online or not, and its result is
/// awaited: a failure (the abort landed) unwinds what came before.
#[test]
fn a_cancel_during_a_pivot_interrupts_it_and_awaits_its_result() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestMigrate);
    // Cancelled mid-migration, on a node that is online or not: interrupted, awaited.
    let (mut s, a) = run_to_pivot(def);
    s.cancel_requested = true;
    s.node_offline = true;
    assert_eq!(s.next(def, 1, LEASE), Next::Interrupt { step: 2 });
    s.node_offline = false;
    assert_eq!(s.next(def, 1, LEASE), Next::Interrupt { step: 2 });
    // The abort landed: the guest stayed, everything before unwinds.
    let failed = StepOutcome::Failed {
        error: "interrupted by a cancel".into(),
        permanent: true,
        refusal: None,
    };
    assert!(s.apply_result(2, a, false, &failed, 3, 1));
    assert_eq!(
        s.next(def, 2, LEASE),
        Next::Execute {
            step: 1,
            undo: true
        }
    );
}

/// Once the pivot is done, a cancel changes nothing and a failure after it does not unwind
/// what it did.
#[test]
fn nothing_unwinds_past_a_pivot_that_happened() {
    let c = Catalog::builtin().unwrap();
    let def = c.get(OpKind::GuestMigrate);
    // The migration finished before the abort: the cancel no longer counts.
    let (mut s, a) = run_to_pivot(def);
    s.cancel_requested = true;
    assert!(s.apply_result(2, a, false, &OK, 3, 1));
    assert_eq!(
        s.next(def, 2, LEASE),
        Next::Execute {
            step: 3,
            undo: false
        }
    );
    let a = s.mark_started(3, false, 2, None);
    assert!(s.apply_result(3, a, false, &OK, 3, 2));
    assert_eq!(
        s.next(def, 3, LEASE),
        Next::Execute {
            step: 4,
            undo: false
        }
    );

    // A failure after the pivot ends the operation without undoing the move.
    let a = s.mark_started(4, false, 3, None);
    let failed = StepOutcome::Failed {
        error: "boom".into(),
        permanent: true,
        refusal: None,
    };
    assert!(s.apply_result(4, a, false, &failed, 3, 3));
    assert_eq!(s.next(def, 4, LEASE), Next::Finished(OpState::Failed));
    assert!(
        s.steps[1].state == StepState::Done,
        "prepare was not undone"
    );
}
