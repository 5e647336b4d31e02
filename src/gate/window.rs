//! Change windows: the days and hours, in the client's time zone, when production may change,
//! minus dated freezes.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::manifest::playbook::Window;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Open,
    /// Closed now; `next` is when it opens next (`None` if never within a year).
    Closed {
        why: String,
        next: Option<Zoned>,
    },
}

fn time(minutes: u16) -> Time {
    Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).expect("valid clock time")
}

fn frozen(w: &Window, date: Date) -> Option<&crate::manifest::playbook::Freeze> {
    w.freezes.iter().find(|f| f.from <= date && date <= f.to)
}

/// Whether the window is open at `now`, and if not, when it opens next.
pub fn check(w: &Window, now: Timestamp) -> State {
    let Ok(tz) = TimeZone::get(&w.tz) else {
        return State::Closed {
            why: format!("unknown time zone {}", w.tz),
            next: None,
        };
    };
    let local = now.to_zoned(tz.clone());
    let date = local.date();
    let t = local.time();
    let (from, to) = (time(w.from.0), time(w.to.0));
    let on = |d: Date| w.days.contains(&d.weekday());
    let open = if from < to {
        on(date) && from <= t && t < to
    } else {
        (on(date) && t >= from) || (date.yesterday().is_ok_and(on) && t < to)
    };
    // A window that began yesterday evening belongs to yesterday's date for freezes.
    let window_date = if from > to && t < to {
        date.yesterday().unwrap_or(date)
    } else {
        date
    };
    if open {
        match frozen(w, window_date) {
            None => return State::Open,
            Some(f) => {
                let why = format!(
                    "frozen from {} to {}{}",
                    f.from,
                    f.to,
                    f.reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                return State::Closed {
                    why,
                    next: next_open(w, &tz, now),
                };
            }
        }
    }
    State::Closed {
        why: "outside the change window".into(),
        next: next_open(w, &tz, now),
    }
}

/// The next opening after `now`: the first allowed day, not frozen, whose `from` time is later.
fn next_open(w: &Window, tz: &TimeZone, now: Timestamp) -> Option<Zoned> {
    let mut date = now.to_zoned(tz.clone()).date();
    for _ in 0..400 {
        if w.days.contains(&date.weekday())
            && frozen(w, date).is_none()
            && let Ok(start) = date.to_datetime(time(w.from.0)).to_zoned(tz.clone())
            && start.timestamp() > now
        {
            return Some(start);
        }
        date = date.tomorrow().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::playbook::{Freeze, Minutes};
    use jiff::civil::Weekday::*;

    fn paris_nights() -> Window {
        Window {
            days: vec![Monday, Tuesday, Wednesday, Thursday],
            from: Minutes(22 * 60),
            to: Minutes(5 * 60),
            tz: "Europe/Paris".into(),
            freezes: Vec::new(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse::<Zoned>().expect("zoned").timestamp()
    }

    #[test]
    fn open_across_midnight_and_closed_by_day() {
        let w = paris_nights();
        assert_eq!(
            check(&w, at("2026-11-30T23:00[Europe/Paris]")),
            State::Open,
            "Monday night"
        );
        assert_eq!(
            check(&w, at("2026-12-01T04:59[Europe/Paris]")),
            State::Open,
            "Tuesday early, Monday's window"
        );
        let closed = check(&w, at("2026-12-01T05:00[Europe/Paris]"));
        assert!(matches!(closed, State::Closed { .. }));
        // Friday 23:00 is closed (Friday is not a window day); Friday 02:00 is Thursday's window.
        assert_eq!(check(&w, at("2026-12-04T02:00[Europe/Paris]")), State::Open);
        match check(&w, at("2026-12-04T23:00[Europe/Paris]")) {
            State::Closed {
                next: Some(next), ..
            } => assert_eq!(next.to_string(), "2026-12-07T22:00:00+01:00[Europe/Paris]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn across_the_spring_dst_change() {
        // 2027-03-28 (Sunday) Paris goes from 02:00 to 03:00. A window 01:00-04:00 on Sundays is
        // three wall-clock hours but two real ones; 03:30 is inside, 04:00 is not.
        let w = Window {
            days: vec![Sunday],
            from: Minutes(60),
            to: Minutes(4 * 60),
            tz: "Europe/Paris".into(),
            freezes: vec![],
        };
        assert_eq!(check(&w, at("2027-03-28T03:30[Europe/Paris]")), State::Open);
        assert!(matches!(
            check(&w, at("2027-03-28T04:00[Europe/Paris]")),
            State::Closed { .. }
        ));
        // In UTC: 01:30Z is 03:30 local (CEST, +2).
        assert_eq!(
            check(&w, "2027-03-28T01:30:00Z".parse().unwrap()),
            State::Open
        );
    }

    #[test]
    fn a_freeze_closes_an_open_window_until_after_it() {
        let mut w = paris_nights();
        w.freezes.push(Freeze {
            from: "2026-12-21".parse().unwrap(),
            to: "2027-01-03".parse().unwrap(),
            reason: Some("year end".into()),
        });
        match check(&w, at("2026-12-22T23:00[Europe/Paris]")) {
            State::Closed {
                why,
                next: Some(next),
            } => {
                assert!(why.contains("year end"), "{why}");
                assert_eq!(next.date().to_string(), "2027-01-04");
            }
            other => panic!("{other:?}"),
        }
    }
}
